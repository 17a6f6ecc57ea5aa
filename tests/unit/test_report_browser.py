"""Reports of tiny real runs (one analysis failing) read in Chromium: no console error,
every image loads and has alt text, every in-page link resolves, no horizontal overflow at
1280 px; the same for the comparison report of two runs. Skipped where no browser exists."""

from __future__ import annotations

import copy

import pytest
from test_runner import spec_dict, write_image_folder

from browser import assert_clean, check_report, chromium_or_skip
from vlprobe.config import parse_config
from vlprobe.report.compare import write_comparison
from vlprobe.results.records import read_run
from vlprobe.runner import run


@pytest.fixture(scope="module")
def browser():
    with chromium_or_skip() as b:
        yield b


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    # a long, unbreakable directory name: paths must wrap, not widen the page
    images = write_image_folder(root / ("images_" + "x" * 150))
    config = {
        "name": "browser",
        "seed": 0,
        "output_dir": str(root / "runs"),
        "cache_dir": str(root / "cache"),
        "models": {"vit": spec_dict("hf_vit", root), "bert": spec_dict("hf_text", root)},
        "datasets": {"colours": {"loader": "image_folder", "path": str(images)}},
        "analyses": [
            {"analysis": "V1", "models": ["vit"], "dataset": "colours",
             "params": {"Cs": [0.1, 1.0]}},
            {"analysis": "V3", "models": ["vit"], "dataset": "colours",
             "params": {"shots": [1, 5], "trials": 3}},
            {"analysis": "R1", "models": ["vit", "bert"], "dataset": "colours",
             "params": {"distance": "cosine"}},
            {"analysis": "V3", "name": "too_many_shots", "models": ["vit"],
             "dataset": "colours", "params": {"shots": [50]}},
        ],
        "extraction": {"batch_size": 8, "shard_size": 16},
    }
    first = run(parse_config(config), progress=False)
    other = copy.deepcopy(config)
    other["seed"] = 1
    second = run(parse_config(other), progress=False)
    return first, second


def test_report_with_a_failed_analysis_reads_cleanly(browser, tiny_runs, tmp_path):
    run_dir = tiny_runs[0]
    record = read_run(run_dir)
    assert record["analyses"]["too_many_shots"]["status"] == "failed"
    found = check_report(browser, run_dir / "report.html", screenshot=tmp_path / "first.png")
    assert_clean(found)
    assert found["images"] >= 4 and found["links"] >= 4
    assert (tmp_path / "first.png").stat().st_size > 10_000


def test_comparison_report_reads_cleanly(browser, tiny_runs, tmp_path):
    path = write_comparison(list(tiny_runs), tmp_path / "compare.html")
    found = check_report(browser, path)
    assert_clean(found)
    assert found["images"] >= 8
