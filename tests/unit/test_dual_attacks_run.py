"""End to end: M3, M4 and M5 through the runner on a tiny random CLIP and a tiny aligned_dual
checkpoint (the kind of model of the real runs): rendered stimuli and label prompts are
extracted through the activation store, and the second run is all cache hits; the example
config validates."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_runner import spec_dict, write_image_folder

from vlprobe.config import load_config, parse_config
from vlprobe.data.typography import find_font
from vlprobe.errors import DataError
from vlprobe.results.records import read_result_table, read_run
from vlprobe.runner import run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _setup():
    try:
        find_font()
    except DataError as exc:
        pytest.skip(f"no font: {exc}")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_m3_m4_m5_through_the_runner(tmp_path):
    images = write_image_folder(tmp_path / "images", n_train=1, n_test=4)
    cfg = {
        "name": "dual_attacks", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "cache_dir": str(tmp_path / "cache"),
        "models": {"clip": spec_dict("clip", tmp_path),
                   "aligned": spec_dict("aligned_dual", tmp_path)},
        "datasets": {"colours": {"loader": "image_folder", "path": str(images)}},
        "analyses": [
            {"analysis": "M3", "models": ["clip", "aligned"], "dataset": "colours",
             "params": {"n_images": 6, "targets": 1, "n_boot": 20, "min_size": 64}},
            {"analysis": "M4", "models": ["clip", "aligned"], "dataset": "colours",
             "params": {"groups_from": "labels", "min_group_size": 2, "n_boot": 20,
                        "label_sets": {"colours": {"colour": ["a red one", "a blue one"],
                                                   "other": ["a dog", "a car"]}}}},
            {"analysis": "M5", "models": ["clip"], "dataset": "colours",
             "params": {"n_images": 3, "n_renders": 2, "card_size": 32, "n_permutations": 2,
                        "n_show": 1, "n_top_images": 2}},
            {"analysis": "M5", "name": "M5_embedding", "models": ["aligned"],
             "dataset": "colours",
             "params": {"site": "vision.proj", "n_images": 3, "n_renders": 2, "card_size": 32,
                        "n_permutations": 2, "n_show": 1, "n_top_images": 2}},
        ],
        "extraction": {"batch_size": 16, "shard_size": 64},
    }
    run_dir = run(parse_config(cfg), progress=False)
    record = read_run(run_dir)
    assert record["status"] == "ok", record["analyses"]
    assert (run_dir / "report.html").is_file()
    m3 = read_result_table(run_dir, "M3_colours")
    assert set(m3["prompts"]) == {"plain", "defence", "defence-plain"}
    m4 = read_result_table(run_dir, "M4_colours")
    assert set(m4["group"].dropna()) >= {"red", "green", "blue"}
    assert set(m3["model"]) == set(m4["model"]) == {"clip", "aligned"}
    m5 = read_result_table(run_dir, "M5_colours")
    assert set(m5["site"]) == {"vision.blocks.1"}
    m5e = read_result_table(run_dir, "M5_embedding")
    assert set(m5e["site"]) == {"vision.proj"} and m5e["unit"].max() < 16  # 16-d heads
    derived = [e for e in record["extractions"] if e["view"] == "derived"]
    assert {e["modality"] for e in derived} == {"image", "text"} and record["forward_batches"]

    cfg["name"] = "dual_attacks_again"
    again = read_run(run(parse_config(cfg), progress=False))
    assert again["status"] == "ok" and again["forward_batches"] == 0  # all from the store


def test_example_config_validates(reference_dir, capsys):
    """``vlprobe validate`` accepts it (the checkpoint is a documented placeholder)."""
    from vlprobe.cli import main

    path = ROOT / "examples" / "dual_encoder_attacks.yaml"
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    cfg = load_config(str(path), [])
    assert {a.analysis for a in cfg.analyses} == {"M3", "M4", "M5"}
    assert cfg.models["aligned"].adapter == "aligned_dual"
