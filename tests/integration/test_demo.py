"""The demo config end to end on the real packaged models (a smaller Fashion-MNIST subset).

The report test reads the demo report in Chromium and keeps a screenshot of its first screen
under the run directory (``report_first_screen.png``; also copied to ``$VLPROBE_ARTIFACTS``
when set, for CI to collect).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from vlprobe.config import parse_config
from vlprobe.demo import check_demo_requirements, demo_config_dict
from vlprobe.results.records import read_result_table, read_run
from vlprobe.runner import run


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    missing = check_demo_requirements()
    if missing:
        pytest.skip("demo requirements missing: " + "; ".join(missing))
    data = demo_config_dict()
    data["output_dir"] = str(tmp_path_factory.mktemp("runs"))
    data["datasets"]["fashion_mnist"]["subsample"] = {"train": 300, "test": 150}
    cfg = parse_config(data)
    with pytest.MonkeyPatch.context() as patch:  # module scope: set up before the autouse cache
        patch.setenv("VLPROBE_CACHE", str(tmp_path_factory.mktemp("cache")))
        first = run(cfg, progress=False)
        second = run(cfg, progress=False)
    return first, second


def test_demo_runs_every_analysis(demo_run):
    run_dir, _ = demo_run
    record = read_run(run_dir)
    assert record["status"] == "ok", record["analyses"]
    assert (run_dir / "report.html").stat().st_size > 10_000
    probe = read_result_table(run_dir, "probe_efficientnet_fashion_mnist")
    # EfficientNet-Lite0 has stem + 16 blocks + head = 18 layers; deep layers separate
    # Fashion-MNIST classes far above chance (0.1)
    assert probe["layer"].nunique() == 18
    assert probe["value"].max() > 0.6
    rsa = read_result_table(run_dir, "rsa_fashion_mnist")
    assert {"efficientnet", "minilm", "smollm2"} <= set(rsa["model"])
    # one distance for all three models: the text models get 80 prompts per class (CLIP's
    # ImageNet templates), so their RDMs are Welch-t RDMs like EfficientNet's
    assert set(rsa["distance"]) == set(rsa["distance_b"]) == {"welch_t"}
    assert set(rsa["metric"]) == {"spearman", "pearson"}
    notes = record["analyses"]["rsa_fashion_mnist"]["notes"]
    assert any("RDM distance welch_t for every model" in n for n in notes)
    text = read_result_table(run_dir, "probe_text_polarity")
    assert set(text["model"]) == {"minilm", "smollm2"}


def test_second_run_performs_no_forward_pass_and_fits_nothing(demo_run):
    first, second = demo_run
    assert first == second
    record = read_run(second)
    assert record["forward_batches"] == 0
    assert {a["cache"] for a in record["analyses"].values()} == {"hit"}


def test_demo_report_says_what_the_run_found_and_reads_cleanly_in_a_browser(demo_run):
    from browser import assert_clean, check_report, chromium_or_skip

    run_dir, _ = demo_run
    page = (run_dir / "report.html").read_text()
    summary = page[page.index("id=summary"):page.index("<section")]
    assert "best layer per model: efficientnet: accuracy" in summary
    assert "N = 10: efficientnet: prototype" in summary
    assert "spearman: efficientnet vs minilm" in summary
    with chromium_or_skip() as browser:
        # the first screen, kept as a CI artefact under the run directory
        shot = run_dir / "report_first_screen.png"
        found = check_report(browser, run_dir / "report.html", screenshot=shot)
    assert_clean(found)
    assert found["images"] >= 6
    artefacts = os.environ.get("VLPROBE_ARTIFACTS")
    if artefacts:  # CI: also copy it where the job collects artefacts
        Path(artefacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artefacts) / shot.name)
