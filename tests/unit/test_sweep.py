"""Sweeps (a config's ``sweep:`` block) and executor selection, without Ray."""

from __future__ import annotations

import sys

import pytest
import yaml
from test_runner import spec_dict, write_image_folder

from vlprobe.cli import main
from vlprobe.config import parse_config
from vlprobe.errors import ConfigError
from vlprobe.executors import run_all
from vlprobe.results.records import read_result_table, read_run
from vlprobe.sweep import expand_sweep, load_runs

MODEL = {"adapter": "hf_vit", "random_init": True}


def sweep_config(**sweep) -> dict:
    return {
        "name": "cmp",
        "sweep": sweep,
        "models": {"a": MODEL, "b": {**MODEL, "seed": 1}, "t": {"adapter": "hf_text"}},
        "datasets": {"x": {"loader": "image_folder", "path": "/x"},
                     "y": {"loader": "image_folder", "path": "/y"}},
        "analyses": [
            {"analysis": "V1", "models": ["a", "b"], "dataset": "x"},
            {"analysis": "R1", "models": ["a", "b", "t"], "dataset": "y"},
            {"analysis": "V1", "models": ["t"], "dataset": "y"},
        ],
    }


def test_axes_expand_into_the_product_of_their_points():
    runs = expand_sweep(sweep_config(models=["a", ["a", "b"]], datasets=["x", "y"],
                                     seeds=[0, 3]))
    assert len(runs) == 8
    names = [raw["name"] for raw, _ in runs]
    assert names[:4] == ["cmp-a-x-s0", "cmp-a-x-s3", "cmp-a-y-s0", "cmp-a-y-s3"]
    assert names[4] == "cmp-a_b-x-s0"  # "+" is not allowed in run names
    ids = {record["id"] for _, record in runs}
    assert len(ids) == 1 and ids.pop().startswith("cmp-")
    raw, record = runs[6]  # models [a, b], dataset y, seed 0
    assert record["point"] == {"models": ["a", "b"], "dataset": "y", "seed": 0}
    assert (record["index"], record["size"]) == (6, 8)
    assert raw["seed"] == 0 and list(raw["models"]) == ["a", "b"]
    assert list(raw["datasets"]) == ["y"]
    # R1 keeps the point's models; V1 on t is dropped (no model of the point left)
    assert raw["analyses"] == [{"analysis": "R1", "models": ["a", "b"], "dataset": "y"}]
    assert "sweep" not in raw


def test_a_seed_sweep_keeps_everything_else():
    data = sweep_config(seeds=[1, 2])
    runs = expand_sweep(data)
    for (raw, _), seed in zip(runs, (1, 2)):
        assert raw["seed"] == seed and raw["name"] == f"cmp-s{seed}"
        assert raw["models"] == data["models"] and raw["analyses"] == data["analyses"]


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"model": ["a"]}, "unknown axis 'model'"),
        ({"models": []}, "sweep.models: expected a non-empty list"),
        ({"models": ["zz"]}, r"sweep.models\[0\]: 'zz' is not a key of `models`"),
        ({"datasets": ["x", "x"]}, "sweep.datasets: an item is listed twice"),
        ({"seeds": [0, "1"]}, r"sweep.seeds\[1\]: expected an integer"),
        ({"models": ["t"], "datasets": ["x"]}, "sweep point cmp-t-x: no analysis uses"),
    ],
)
def test_bad_sweeps_are_refused_naming_the_item(sweep, message):
    with pytest.raises(ConfigError, match=message):
        expand_sweep(sweep_config(**sweep))


def test_without_ray_the_ray_executor_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    plain = {k: v for k, v in sweep_config().items() if k != "sweep"}
    cfg = parse_config(plain, check_registries=False)
    with pytest.raises(ConfigError, match=r"pip install 'vlprobe\[ray\]'"):
        run_all([(cfg, None)], executor="ray")
    with pytest.raises(ConfigError, match="unknown executor 'dask'"):
        run_all([(cfg, None)], executor="dask")


def test_a_sweep_runs_locally_one_run_per_point_and_ls_shows_it_as_one(tmp_path, capsys):
    images = write_image_folder(tmp_path / "images", n_train=6, n_test=3)
    data = {
        "name": "tiny",
        "sweep": {"seeds": [0, 1]},
        "output_dir": str(tmp_path / "runs"),
        "models": {"vit": spec_dict("hf_vit", tmp_path)},
        "datasets": {"colours": {"loader": "image_folder", "path": str(images)}},
        "analyses": [{"analysis": "V1", "models": ["vit"], "dataset": "colours",
                      "params": {"Cs": [1.0]}}],
        "extraction": {"batch_size": 8, "shard_size": 16},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    runs = load_runs(str(path))
    assert [cfg.seed for cfg, _ in runs] == [0, 1]

    assert main(["validate", str(path)]) == 0
    assert "a sweep of 2 runs" in capsys.readouterr().out
    assert main(["run", str(path), "--no-progress"]) == 0
    dirs = sorted((tmp_path / "runs").iterdir())
    records = {d.name: read_run(d) for d in dirs}
    assert sorted(r["config"]["seed"] for r in records.values()) == [0, 1]
    assert {r["sweep"]["id"] for r in records.values()} == {runs[0][1]["id"]}
    assert all(r["status"] == "ok" and r["executor"] == "local" for r in records.values())
    # one store: the second run reads the first one's features
    assert sorted(r["forward_batches"] for r in records.values())[0] == 0
    assert all(read_result_table(d, "V1_colours").shape[0] for d in dirs)

    assert main(["ls", str(tmp_path / "runs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    sweep_line = next(i for i, line in enumerate(lines) if line.startswith("sweep "))
    assert f"{runs[0][1]['id']} (2 of 2 runs)" in lines[sweep_line]
    assert "2/2" in lines[sweep_line]  # analyses ok, summed over the sweep's runs
    assert {lines[sweep_line + 1].split()[0], lines[sweep_line + 2].split()[0]} == {
        d.name for d in dirs}


def test_ls_shows_a_sweeps_wall_time_not_the_sum_of_overlapping_runs():
    """Two runs of a Ray sweep that overlap (100 s each, the second started 40 s after the
    first): the sweep row shows 140 s of wall time, each run its own seconds."""
    from vlprobe.cli import _ls_row

    def record(start: str, end: str) -> dict:
        return {"started": start, "finished": end, "status": "ok", "timings": {"total_s": 100.0},
                "analyses": {"V1": {"status": "ok"}}}

    runs = [record("2026-12-01T10:00:00+00:00", "2026-12-01T10:01:40+00:00"),
            record("2026-12-01T10:00:40+00:00", "2026-12-01T10:02:20+00:00")]
    row = _ls_row("sweep s", runs)
    assert row[1] == "2026-12-01T10:00:00+00:00"
    assert row[3] == "2/2" and row[4] == "140 (wall)"
    assert _ls_row("one", runs[:1])[4] == "100.0"
    del runs[1]["finished"]  # an older record: no finish time, the sum is labelled as such
    assert _ls_row("sweep s", runs)[4] == "200.0 (sum)"
