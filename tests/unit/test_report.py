"""The HTML report: self-contained, escapes user strings, shows every analysis."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from vlprobe.analyses.base import Result
from vlprobe.report.html import render_report, write_report
from vlprobe.results.records import read_result_table, write_result

EVIL = "<script>alert('x')</script>"


def make_run(tmp_path):
    run_dir = tmp_path / "run-abc"
    run_dir.mkdir()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0.5, 0.9])
    table = pd.DataFrame(
        {
            "analysis": ["layer_probe"] * 2,
            "model": [EVIL, "m2"],
            "dataset": ["d", "d"],
            "layer": [0, 1],
            "site": ["a", "b"],
            "metric": ["accuracy"] * 2,
            "value": [0.5, 0.9],
        }
    )
    result = Result("layer_probe", ("V1",), table, figures={"curve": fig}, notes=[EVIL],
                    params={"C": [1, 10]})
    index = write_result(run_dir, "probe", result, run_id="run-abc", config_hash="abc")
    record = {
        "run_id": "run-abc",
        "name": "demo",
        "status": "partial",
        "started": "2026-01-01",
        "config_hash": "abc",
        "seed": 0,
        "versions": {"vlprobe": "0.1.0"},
        "analyses": {
            "probe": {**index, "status": "ok"},
            "broken": {"status": "failed", "error": EVIL},
        },
        "timings": {"total_s": 1.0},
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
    path = write_report(run_dir)
    assert path.read_text() == page


def test_result_tables_round_trip(tmp_path):
    run_dir = make_run(tmp_path)
    table = read_result_table(run_dir, "probe")
    assert list(table["value"]) == [0.5, 0.9]
    assert set(table["run_id"]) == {"run-abc"}
    saved = json.loads((run_dir / "results" / "probe.json").read_text())
    assert saved["params"] == {"C": [1, 10]} and saved["catalogue"] == ["V1"]


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
