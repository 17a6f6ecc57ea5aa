"""The HTML report: self-contained, escapes user strings, a summary with key numbers, compact
tables (pivots, no constant column, CSV), provenance, ASCII glyphs, comparison of runs."""

from __future__ import annotations

import base64
import io
import json
import re

import pandas as pd

from vlprobe.analyses import plotting
from vlprobe.analyses.base import Result
from vlprobe.analyses.vision import plots as vision_plots
from vlprobe.cli import main
from vlprobe.report.compare import render_comparison, write_comparison
from vlprobe.report.html import render_report, write_report
from vlprobe.report.tables import pivot_dims
from vlprobe.results.records import read_result_table, write_result

EVIL = "<script>alert('x')</script>"


def probe_result(models=("effnet", "minilm"), layers=4, shift=0.0) -> Result:
    rows = [{"analysis": "layer_probe", "model": m, "dataset": "d", "layer": k,
             "site": f"blocks.{k}", "metric": "accuracy", "probe": "linear",
             "value": round(0.4 + 0.1 * k - 0.2 * i + shift, 3), "chance": 0.1}
            for i, m in enumerate(models) for k in range(layers)]
    table = pd.DataFrame(rows)
    fig = plotting.plot_accuracy_vs_layer(table, title="Layer-wise probe accuracy (d)")
    return Result("layer_probe", ("V1",), table, figures={"curve": fig}, params={"C": [1, 10]},
                  notes=[EVIL])


def fewshot_result() -> Result:
    table = pd.DataFrame([{"analysis": "few_shot", "model": "effnet", "dataset": "d",
                           "layer": 3, "site": "blocks.3", "metric": "accuracy",
                           "classifier": c, "shots": n, "value": 0.3 + 0.04 * n, "se": 0.01,
                           "chance": 0.1}
                          for c in ("prototype", "1nn") for n in (1, 5, 10)])
    bars = vision_plots.plot_few_shot_bars(table)
    return Result("few_shot", ("V3",), table, figures={"bars": bars})


def rsa_result() -> Result:
    models = ["effnet", "minilm", "smollm2"]
    r = {("effnet", "minilm"): 0.41, ("effnet", "smollm2"): 0.38, ("minilm", "smollm2"): 0.72}
    rows = [{"analysis": "rsa", "model": a, "model_b": b, "dataset": "d", "metric": "spearman",
             "value": 1.0 if a == b else r.get((a, b), r.get((b, a)))}
            for a in models for b in models]
    return Result("rsa", ("R1",), pd.DataFrame(rows),
                  extra_tables={"rdm": pd.DataFrame({"model": models, "distance": [1, 2, 3]})})


def make_run(tmp_path, name="run-abc", seed=0, shift=0.0):
    run_dir = tmp_path / name
    run_dir.mkdir()
    index = {}
    for key, result in (("probe", probe_result(shift=shift)), ("few", fewshot_result()),
                        ("rsa", rsa_result())):
        index[key] = {**write_result(run_dir, key, result, run_id=name, config_hash="abc"),
                      "status": "ok", "cache": "hit", "compute_seconds": 12.5, "seconds": 0.2,
                      "inputs": [{"model": "effnet", "dataset": "d", "split": "train"}]}
    record = {
        "run_id": name, "name": "demo", "status": "partial", "started": "2026-01-01",
        "config_hash": "abc", "seed": seed, "versions": {"vlprobe": "0.1.0", "torch": "2.13"},
        "config": {"seed": seed, "models": {"effnet": {"adapter": "efficientnet_lite0"}}},
        "analyses": {**index, "broken": {"status": "failed", "error": EVIL}},
        "models": {"effnet": {"adapter": "efficientnet_lite0", "checkpoint": "/w/effnet.pth",
                              "identity_hash": "f00dfeedcafe1234"}},
        "datasets": {"d": {"train": {"n_items": 600, "n_classes": 10,
                                     "fingerprint": "abcdef0123456789", "skipped": 2}}},
        "truncations": [{"model": "minilm", "dataset": "d", "split": "train",
                         "view": "items", "n_items": 600, "n_truncated": 7}],
        "cache": {"results_reused": 3, "results_computed": 0, "extraction_groups": 0,
                  "extraction_groups_from_store": 0},
        "forward_batches": 0,
        "warnings": ["7 of 600 texts of d/train were truncated"],
        "timings": {"total_s": 1.0, "plan_s": 0.5},
    }
    (run_dir / "run.json").write_text(json.dumps(record))
    (run_dir / "config.yaml").write_text(f"name: demo\nnote: {EVIL}\n")
    return run_dir


def test_report_escapes_user_strings_and_embeds_figures(tmp_path):
    run_dir = make_run(tmp_path)
    page = render_report(run_dir)
    assert EVIL not in page
    assert "&lt;script&gt;" in page
    assert "data:image/png;base64," in page
    assert "How to reproduce" in page
    assert "failed" in page and "V1" in page
    assert "http://" not in page and "https://" not in page  # nothing loads from the network
    path = write_report(run_dir)
    assert path.read_text() == page


def test_summary_says_what_each_analysis_found_and_links_to_it(tmp_path):
    page = render_report(make_run(tmp_path))
    summary = page[page.index("id=summary"):page.index("<section")]
    assert "effnet: accuracy 0.7 at layer 3 (chance 0.1)" in summary
    assert "minilm: accuracy 0.5 at layer 3" in summary
    assert "N = 10: effnet: prototype 0.7 ± 0.01, 1nn 0.7 ± 0.01" in summary
    assert "effnet vs minilm 0.41" in summary and "minilm vs smollm2 0.72" in summary
    assert "failed: &lt;script&gt;" in summary
    ids = set(re.findall(r"id=['\"]?([\w-]+)", page))
    links = re.findall(r"href=['\"]#([^'\"]+)", page)
    assert len(links) >= 5 and set(links) <= ids


def test_tables_are_pivots_without_constant_columns_and_download_as_csv(tmp_path):
    run_dir = make_run(tmp_path)
    table = read_result_table(run_dir, "probe")
    assert pivot_dims(table) == ("layer", ["model"])
    assert pivot_dims(read_result_table(run_dir, "few")) == ("shots", ["model", "classifier"])
    assert pivot_dims(read_result_table(run_dir, "rsa")) == ("model", ["model_b"])
    page = render_report(run_dir)
    section = page[page.index("<section id=sec-probe"):page.index("</section>")]
    pivot = section[section.index("class=pivot"):]
    pivot = pivot[:pivot.index("</table>")]
    assert re.findall(r"<th scope=col>([^<]*)</th>", pivot) == ["layer \\ model", "effnet",
                                                               "minilm"]
    assert re.findall(r"<th scope=row>([^<]*)</th>", pivot) == ["0", "1", "2", "3"]
    full = section[section.index("Full table"):]
    headers = re.findall(r"<th scope=col>([^<]*)</th>", full[:full.index("</table>")])
    for constant in ("analysis", "dataset", "metric", "probe", "chance", "run_id", "result"):
        assert constant not in headers
    assert "Same in every row" in full and "dataset = <b>d</b>" in full
    csv = re.search(r"download='probe.csv' href='data:text/csv;charset=utf-8;base64,([^']+)'",
                    section)
    frame = pd.read_csv(io.StringIO(base64.b64decode(csv.group(1)).decode()))
    assert len(frame) == len(table) and "dataset" in frame.columns
    assert "rsa__rdm.csv" in page  # extra tables too


def test_glyphs_are_ascii_and_figures_have_alt_text(tmp_path):
    page = render_report(make_run(tmp_path))
    glyphs = re.findall(r"<span class=glyph aria-hidden=true>([^<]*)</span>", page)
    assert {"i", "!", "x"} <= set(glyphs) and all(g.isascii() for g in glyphs)
    assert "\u24d8" not in page and "&#9432;" not in page and "&#9888;" not in page
    alts = re.findall(r'<img alt="([^"]*)"', page)
    assert len(alts) == 2 and all(alts)
    assert "Line chart" in alts[0] and "test accuracy against layer" in alts[0]


def test_provenance_lists_models_data_versions_cache_and_forward_passes(tmp_path):
    page = render_report(make_run(tmp_path))
    prov = page[page.index("id=provenance"):]
    for text in ("efficientnet_lite0", "/w/effnet.pth", "f00dfeedcafe1234",  # models
                 "abcdef0123456789", "600", "minilm: 7 of 600",  # data, sizes, truncations
                 "torch 2.13", "seed", "3 from the result cache, 0 computed",
                 "model forward batches", "plan_s"):
        assert text in prov, text
    assert ">2<" in prov  # skipped items


def test_comparison_report_puts_the_same_analyses_side_by_side(tmp_path, capsys):
    a = make_run(tmp_path, "run-a", seed=0)
    b = make_run(tmp_path, "run-b", seed=1, shift=0.05)
    page = render_comparison([a, b])
    assert "2 runs compared" in page and "run-a" in page and "run-b" in page
    diff = page[page.index("How the configs differ"):page.index("id=summary")]
    assert "seed" in diff
    summary = page[page.index("id=summary"):page.index("<section")]
    assert "effnet: accuracy 0.7 at layer 3" in summary
    assert "effnet: accuracy 0.75 at layer 3" in summary
    section = page[page.index("<section id=sec-probe"):]
    section = section[:section.index("</section>")]
    assert section.count("<img") == 2
    pivot = section[section.index("class=pivot"):section.index("</table>")]
    assert "effnet / run-a" in pivot and "effnet / run-b" in pivot
    out = tmp_path / "cmp.html"
    assert main(["report", str(a), str(b), "-o", str(out)]) == 0
    assert out.read_text() == page
    default = write_comparison([a, b])
    assert default.parent == tmp_path and default.name.startswith("comparison-")
    assert main(["report", str(a)]) == 0
    assert (a / "report.html").is_file()


def test_result_tables_round_trip(tmp_path):
    run_dir = make_run(tmp_path)
    table = read_result_table(run_dir, "probe")
    assert list(table["value"])[:2] == [0.4, 0.5]
    assert set(table["run_id"]) == {"run-abc"}
    saved = json.loads((run_dir / "results" / "probe.json").read_text())
    assert saved["params"] == {"C": [1, 10]} and saved["catalogue"] == ["V1"]
    assert saved["figure_alt"]["curve"].startswith("Line chart")


def test_written_files_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        run_dir = make_run(tmp_path)
        write_report(run_dir)
    finally:
        os.umask(old)
    for path in (run_dir / "results" / "probe.parquet", run_dir / "report.html"):
        assert path.stat().st_mode & 0o777 == 0o644, path
