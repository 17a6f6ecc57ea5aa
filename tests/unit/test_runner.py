"""End to end on tiny seeded random models: config -> run directory -> report -> CLI."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image

from tiny_models import tiny_spec
from vlprobe.cli import main
from vlprobe.config import parse_config
from vlprobe.results.records import read_result_table, read_run
from vlprobe.runner import run

CLASSES = ("red", "green", "blue")


def write_image_folder(root, n_train=10, n_test=6, seed=0):
    """Noise images whose dominant colour channel is the class."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 90, size=(32, 32, 3))
                pixels[..., c] += 150
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def spec_dict(adapter: str, tmp_path) -> dict:
    spec = tiny_spec(adapter, tmp_path / adapter)
    data = {k: v for k, v in asdict(spec).items() if v not in (None, {}, False, 0, "float32")}
    data["adapter"] = spec.adapter
    return data


@pytest.fixture()
def tiny_config(tmp_path):
    images = write_image_folder(tmp_path / "images")
    return {
        "name": "tiny",
        "seed": 0,
        "output_dir": str(tmp_path / "runs"),
        "models": {
            "vit": spec_dict("hf_vit", tmp_path),
            "bert": spec_dict("hf_text", tmp_path),
        },
        "datasets": {"colours": {"loader": "image_folder", "path": str(images)}},
        "analyses": [
            {"analysis": "V1", "models": ["vit"], "dataset": "colours"},
            {"analysis": "V3", "models": ["vit"], "dataset": "colours",
             "params": {"shots": [1, 5], "trials": 3}},
            {"analysis": "R1", "models": ["vit", "bert"], "dataset": "colours",
             "params": {"distance": "cosine"}},
        ],
        "extraction": {"batch_size": 8, "shard_size": 16},
    }


def test_run_writes_tables_record_and_report_then_reuses_the_cache(tiny_config):
    cfg = parse_config(tiny_config)
    run_dir = run(cfg, progress=False)
    record = read_run(run_dir)
    assert record["status"] == "ok", record["analyses"]
    assert set(record["analyses"]) == {"V1_colours", "V3_colours", "R1_colours"}
    assert record["versions"]["torch"] and record["versions"]["vlprobe"]
    assert record["config"]["seed"] == 0 and record["config_hash"] == cfg.config_hash()
    assert record["forward_batches"] > 0
    assert (run_dir / "report.html").is_file() and (run_dir / "config.yaml").is_file()
    probe = read_result_table(run_dir, "V1_colours")
    for column in ("analysis", "model", "dataset", "layer", "site", "metric", "value"):
        assert column in probe.columns
    assert probe["layer"].nunique() >= 2
    # the colour is trivially decodable from the patch embedding
    assert probe["value"].max() > 0.8

    # same config again: every activation comes from the store
    run_dir_2 = run(parse_config(tiny_config), progress=False)
    assert run_dir_2 == run_dir
    assert read_run(run_dir_2)["forward_batches"] == 0
    probe_2 = read_result_table(run_dir, "V1_colours")
    assert np.allclose(probe["value"], probe_2["value"])  # seeded: identical numbers


def test_a_failing_analysis_keeps_the_others(tiny_config):
    tiny_config["analyses"][1]["params"]["shots"] = [50]  # more shots than training items
    run_dir = run(parse_config(tiny_config), progress=False)
    record = read_run(run_dir)
    assert record["status"] == "partial"
    assert record["analyses"]["V3_colours"]["status"] == "failed"
    assert record["analyses"]["V1_colours"]["status"] == "ok"
    assert read_result_table(run_dir, "V1_colours").shape[0] > 0


def test_skip_existing_keeps_results(tiny_config):
    cfg = parse_config(tiny_config)
    run_dir = run(cfg, progress=False, report=False)
    table = run_dir / "results" / "V1_colours.parquet"
    before = table.stat().st_mtime_ns
    run(cfg, progress=False, skip_existing=True, report=False)
    assert table.stat().st_mtime_ns == before
    statuses = {k: v["status"] for k, v in read_run(run_dir)["analyses"].items()}
    assert set(statuses.values()) == {"skipped (exists)"}


def test_cli_commands(tiny_config, tmp_path, capsys):
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    assert main(["validate", str(path)]) == 0
    assert main(["run", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "report:" in out
    run_dir = next((tmp_path / "runs").iterdir())
    assert main(["ls", str(tmp_path / "runs")]) == 0
    assert run_dir.name in capsys.readouterr().out
    assert main(["report", str(run_dir)]) == 0
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "efficientnet_lite0" in listing and "clip" in listing
    assert main(["analyses"]) == 0
    assert "V1" in capsys.readouterr().out
    # errors are one clear line, exit code 2, no traceback
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**tiny_config, "sed": 1}))
    assert main(["run", str(bad)]) == 2
    assert "unknown key 'sed'" in capsys.readouterr().err
    json.loads((run_dir / "run.json").read_text())


def test_query_over_runs(tiny_config):
    pytest.importorskip("duckdb")
    from vlprobe.results.query import query_runs

    run(parse_config(tiny_config), progress=False, report=False)
    frame = query_runs(
        "SELECT model, max(value) AS best FROM results WHERE analysis = 'layer_probe' "
        "GROUP BY model",
        tiny_config["output_dir"],
    )
    assert list(frame["model"]) == ["vit"]


def test_truncation_and_skipped_items_are_reported(tmp_path):
    images = write_image_folder(tmp_path / "images", n_train=4, n_test=3)
    (images / "train" / "red" / "broken.png").write_bytes(b"not a png")
    sentences = tmp_path / "sentences.txt"
    long_text = " ".join(["word"] * 300)
    sentences.write_text(
        "\n".join(f"__label__{'a' if i % 2 else 'b'} short sentence {i}" for i in range(20))
        + f"\n__label__a {long_text}\n"
    )
    data = {
        "name": "edge",
        "output_dir": str(tmp_path / "runs"),
        "models": {"bert": spec_dict("hf_text", tmp_path), "vit": spec_dict("hf_vit", tmp_path)},
        "datasets": {
            "text": {"loader": "sentences", "path": str(sentences), "test_fraction": 0.3},
            "colours": {"loader": "image_folder", "path": str(images), "on_error": "skip"},
        },
        "analyses": [
            {"analysis": "V1", "models": ["bert"], "dataset": "text"},
            {"analysis": "V1", "models": ["vit"], "dataset": "colours"},
        ],
    }
    record = read_run(run(parse_config(data), progress=False, report=True))
    assert record["status"] == "ok", record["analyses"]
    warnings = " ".join(record["warnings"])
    assert "1 of" in warnings and "truncated" in warnings
    assert "1 unreadable items skipped" in warnings
    assert record["datasets"]["colours"]["train"]["skipped"] == 1
    assert any(t["model"] == "bert" and t["n_truncated"] == 1 for t in record["truncations"])
    # a rerun takes every result from the cache and extracts nothing: same warnings
    again = read_run(run(parse_config(data), progress=False, report=True))
    assert {a["cache"] for a in again["analyses"].values()} == {"hit"}
    assert again["extractions"] == [] and again["warnings"] == record["warnings"]


def test_corrupt_image_without_skip_names_the_file(tmp_path, tiny_config):
    broken = tmp_path / "images" / "train" / "red" / "broken.png"
    broken.write_bytes(b"not a png")
    record = read_run(run(parse_config(tiny_config), progress=False, report=False))
    assert record["status"] == "partial"
    errors = " ".join(a.get("error", "") for a in record["analyses"].values())
    assert "broken.png" in errors


def test_validate_reports_missing_local_paths_and_unknown_task_datasets(tiny_config, tmp_path,
                                                                       capsys, monkeypatch):
    import yaml

    from vlprobe.errors import ConfigError

    bad = copy.deepcopy(tiny_config)
    first_model = next(iter(bad["models"]))
    bad["models"][first_model]["config"] = str(tmp_path / "no_such_config")
    first_dataset = next(iter(bad["datasets"]))
    bad["datasets"][first_dataset]["path"] = str(tmp_path / "no_such_images")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"models.{first_model}.config: {tmp_path / 'no_such_config'} does not exist" in err
    assert f"datasets.{first_dataset}.path: {tmp_path / 'no_such_images'} does not exist" in err
    # ${reference} paths are expanded as the loaders expand them
    bad["datasets"][first_dataset]["path"] = "${reference}/no_such_dir"
    path.write_text(yaml.safe_dump(bad))
    monkeypatch.setenv("VLPROBE_REFERENCE", str(tmp_path))
    assert main(["validate", str(path)]) == 2
    assert f"{tmp_path / 'no_such_dir'})" in capsys.readouterr().err
    # an analysis naming further datasets by key: every key must exist
    bad = copy.deepcopy(tiny_config)
    bad["analyses"][0]["params"] = {"datasets": [first_dataset + "x"]}
    with pytest.raises(ConfigError, match=r"params\.datasets: .*did you mean"):
        parse_config(bad)
