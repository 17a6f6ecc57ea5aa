"""The Ray executor on a local Ray cluster (started once for the module): the same numbers
as the local executor, sweeps, killed workers retried, failures kept to their analysis,
nothing recomputed on a rerun, and the refusal of storage the workers do not share."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import yaml

ray = pytest.importorskip(
    "ray", reason="Ray is not installed (pip install 'vlprobe[ray]'; scripts/setup.sh test does)"
)

from test_runner import spec_dict, write_image_folder  # noqa: E402

from vlprobe.analyses import ANALYSES  # noqa: E402
from vlprobe.analyses.vision.probe import LayerProbe  # noqa: E402
from vlprobe.config import parse_config  # noqa: E402
from vlprobe.errors import StoreError  # noqa: E402
from vlprobe.executors import run_all  # noqa: E402
from vlprobe.executors.ray_executor import RayExecutor  # noqa: E402
from vlprobe.results.records import read_result_table, read_run  # noqa: E402
from vlprobe.sweep import expand_sweep  # noqa: E402


class KillWorkerProbe(LayerProbe):
    """V1 whose worker process dies at the start of the task: on the first attempt only
    (``kill: once``: it leaves ``marker`` behind first) or on every attempt (``always``)."""

    name: ClassVar[str] = "test_kill_worker"
    catalogue: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[dict[str, Any]] = {**LayerProbe.defaults, "kill": "once", "marker": ""}

    def run(self, source):
        marker = Path(self.params["marker"])
        if self.params["kill"] == "always" or not marker.exists():
            marker.touch()
            os._exit(1)  # the worker process dies: no exception, no cleanup
        return super().run(source)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local 2-CPU Ray cluster with a small object store, shut down after the module.
    The test analysis above travels to the workers by value (they cannot import tests)."""
    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ANALYSES.add(KillWorkerProbe.name, KillWorkerProbe)
    yield ray
    ANALYSES._entries.pop(KillWorkerProbe.name, None)
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Tiny models and a colour image folder, made once for the module."""
    root = tmp_path_factory.mktemp("ray_inputs")
    return {"images": str(write_image_folder(root / "images", n_train=8, n_test=4)),
            "vit": spec_dict("hf_vit", root), "bert": spec_dict("hf_text", root)}


def config(inputs, tmp_path, name: str, analyses: list[dict], **extra: Any) -> dict:
    return {
        "name": name, "seed": 0,
        "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
        "models": {"vit": inputs["vit"], "bert": inputs["bert"]},
        "datasets": {"colours": {"loader": "image_folder", "path": inputs["images"]}},
        "analyses": analyses,
        "extraction": {"batch_size": 8, "shard_size": 16},
        **extra,
    }


V1 = {"analysis": "V1", "models": ["vit"], "dataset": "colours", "params": {"Cs": [0.1, 10.0]}}


def test_a_sweep_on_ray_gives_the_local_numbers_and_reruns_from_the_caches(
    ray_cluster, inputs, tmp_path, capsys
):
    analyses = [V1, {"analysis": "R1", "models": ["vit", "bert"], "dataset": "colours"}]
    data = config(inputs, tmp_path / "local", "sweep", analyses, sweep={"seeds": [0, 1]})
    local = run_all([(parse_config(raw), rec) for raw, rec in expand_sweep(data)],
                    progress=False, report=False)
    data = config(inputs, tmp_path / "ray", "sweep", analyses, sweep={"seeds": [0, 1]})
    runs = [(parse_config(raw), rec) for raw, rec in expand_sweep(data)]
    on_ray = RayExecutor().run(runs, progress=False, report=False)

    assert [p.name for p in on_ray] == [p.name for p in local]  # same configs, same run ids
    records = [read_run(p) for p in on_ray]
    for record in records:
        assert record["status"] == "ok", record["analyses"]
        assert record["executor"] == "ray" and record["sweep"]["size"] == 2
    # the two seeds need the same features: extracted once, by the first run's task
    assert records[0]["forward_batches"] > 0 and records[1]["forward_batches"] == 0
    for a, b in zip(local, on_ray):
        for name in ("V1_colours", "R1_colours"):
            assert np.array_equal(read_result_table(a, name)["value"].to_numpy(),
                                  read_result_table(b, name)["value"].to_numpy()), name

    # the same sweep again, through the CLI: no forward pass, every result from the cache
    from vlprobe.cli import main

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path), "--executor", "ray", "--no-progress"]) == 0
    for record in (read_run(p) for p in on_ray):
        assert record["forward_batches"] == 0 and record["executor"] == "ray"
        assert record["cache"]["results_reused"] == 2, record["analyses"]
        assert Path(record["config_path"]) == path.resolve()

    capsys.readouterr()
    assert main(["ls", str(tmp_path / "ray" / "runs")]) == 0
    out = capsys.readouterr().out
    assert f"sweep {records[0]['sweep']['id']} (2 of 2 runs)" in out
    assert all(f"  {p.name}" in out for p in on_ray)


def test_a_killed_worker_is_retried_and_failures_stay_with_their_analysis(
    ray_cluster, inputs, tmp_path
):
    marker = tmp_path / "killed-once"
    analyses = [
        V1,
        {**V1, "analysis": "test_kill_worker", "name": "killed_once",
         "params": {**V1["params"], "kill": "once", "marker": str(marker)}},
        {**V1, "analysis": "test_kill_worker", "name": "killed_always",
         "params": {**V1["params"], "kill": "always", "marker": str(tmp_path / "k2")}},
        {"analysis": "V3", "models": ["vit"], "dataset": "colours",
         "params": {"shots": [50], "trials": 2}},  # more shots than training items
    ]
    cfg = parse_config(config(inputs, tmp_path, "faults", analyses))
    [run_dir] = RayExecutor(max_retries=1).run([(cfg, None)], progress=False, report=False)
    record = read_run(run_dir)
    status = {name: info["status"] for name, info in record["analyses"].items()}
    assert status == {"V1_colours": "ok", "killed_once": "ok", "killed_always": "failed",
                      "V3_colours": "failed"}
    assert record["status"] == "partial"
    # the first attempt died (it left the marker and never returned); the retry gave V1's
    # numbers
    assert marker.exists()
    assert np.array_equal(read_result_table(run_dir, "killed_once")["value"].to_numpy(),
                          read_result_table(run_dir, "V1_colours")["value"].to_numpy())
    assert "Ray task failed" in record["analyses"]["killed_always"]["error"]
    assert "shots" in record["analyses"]["V3_colours"]["error"]


def test_storage_the_workers_do_not_share_is_refused(ray_cluster, inputs, tmp_path, monkeypatch):
    # no cache_dir in the config: driver and workers resolve VLPROBE_CACHE, here different
    data = config(inputs, tmp_path, "unshared", [V1])
    del data["cache_dir"]
    monkeypatch.setenv("VLPROBE_CACHE", str(tmp_path / "driver-cache"))
    executor = RayExecutor(runtime_env={"env_vars": {"VLPROBE_CACHE":
                                                     str(tmp_path / "worker-cache")}})
    with pytest.raises(StoreError, match="not on storage every Ray node sees") as info:
        executor.run([(parse_config(data), None)], progress=False, report=False)
    assert str(tmp_path / "worker-cache") in str(info.value)
    assert not (tmp_path / "runs").exists()  # refused before any run directory was made
    # the workers' probe file was cleaned up where they wrote it
    assert not list((tmp_path / "worker-cache" / "activations" / ".probes").glob("*"))


def test_resource_requests(ray_cluster, inputs, tmp_path):
    from vlprobe.executors.resources import (
        FLOOR_BYTES,
        estimate_extraction_bytes,
        wants_gpu,
        weight_bytes,
    )
    from vlprobe.feature_source import ExtractionGroup

    cfg = parse_config(config(inputs, tmp_path, "res", [V1]))
    assert not wants_gpu(ray, cfg)  # cpu
    with pytest.raises(Exception, match="the Ray cluster has no GPU"):
        wants_gpu(ray, parse_config(config(inputs, tmp_path, "res", [V1], device="cuda")))
    assert weight_bytes(None) == 0  # random init: nothing on disk
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"0" * 1000)
    (ckpt / "README.md").write_text("not weights")
    assert weight_bytes(str(ckpt)) == 1000
    cfg = parse_config(config(inputs, tmp_path, "res", [V1]) | {"models": {
        "vit": {"adapter": "hf_vit", "checkpoint": str(ckpt)}}})
    weights = 1000
    group = ExtractionGroup(model="vit", dataset="colours", split="train", view="items",
                            templates=(), class_names=None, modality="image", pooling=None,
                            hidden_sites=tuple(f"s{i}" for i in range(300)))
    # weights twice plus one 16-row shard of 300 outputs at 4 KiB a row
    assert estimate_extraction_bytes(cfg, group, n_items=100) == max(
        2 * weights + 16 * 300 * 4096, FLOOR_BYTES)
