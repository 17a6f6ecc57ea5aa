"""Benchmark: a sweep of 4 model x dataset runs, local executor vs Ray with 2 workers, and
Ray's overhead per task.

The sweep (``sweep: {models: [efficientnet, vit_small], datasets: [fashion_mnist, cifar10]}``):
EfficientNet-Lite0 (the packaged ImageNet weights) and a small random-init ViT (6 layers,
width 192, 64 px, patch 8; its config is written here) on Fashion-MNIST (Debian's
dataset-fashion-mnist) and CIFAR-10 (the reference kit's parquet files), each subsampled to
``--train`` / ``--test`` items (stratified); one V1 layer probe per run. Each
executor starts from an empty activation store and result cache (both in a temporary
directory), so both extract and fit everything. Ray runs a local cluster of 2 CPUs (2
worker processes; Ray gives each task one thread), started before the clock starts (its
start-up is reported on its own). The two executors' result tables are compared.

Overhead: ``--tasks`` empty tasks, one round trip at a time (submit, wait, get), and the
same number submitted at once (throughput).

Usage::

    OMP_NUM_THREADS=1 VLPROBE_REFERENCE=../shared/reference nice -n 10 \\
        .venv/bin/python bench/bench_ray.py [--train 200 --test 100 --tasks 200]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path


def sweep_config(tmp: Path, n_train: int, n_test: int) -> dict:
    from transformers import ViTConfig

    vit_dir = tmp / "vit_small"
    vit_dir.mkdir()
    ViTConfig(hidden_size=192, num_hidden_layers=6, num_attention_heads=3,
              intermediate_size=768, image_size=64, patch_size=8).save_pretrained(vit_dir)
    subsample = {"train": n_train, "test": n_test}
    return {
        "name": "bench_ray",
        "seed": 0,
        "sweep": {"models": ["efficientnet", "vit_small"],
                  "datasets": ["fashion_mnist", "cifar10"]},
        "models": {"efficientnet": {"adapter": "efficientnet_lite0"},
                   "vit_small": {"adapter": "hf_vit", "config": str(vit_dir),
                                 "random_init": True}},
        "datasets": {
            "fashion_mnist": {"loader": "fashion_mnist", "subsample": subsample},
            "cifar10": {"loader": "hf_parquet", "path": "${reference}/images/cifar10",
                        "subsample": subsample},
        },
        "analyses": [{"analysis": "V1", "models": ["efficientnet", "vit_small"],
                      "dataset": d, "params": {"Cs": [0.1, 1.0, 10.0]}}
                     for d in ("fashion_mnist", "cifar10")],
        "extraction": {"batch_size": 32, "shard_size": 512},
    }


def timed_sweep(label: str, data: dict, root: Path, execute) -> dict:
    from vlprobe.config import parse_config
    from vlprobe.results.records import read_run
    from vlprobe.sweep import expand_sweep

    data = {**data, "output_dir": str(root / "runs"), "cache_dir": str(root / "cache")}
    runs = [(parse_config(raw), record) for raw, record in expand_sweep(data)]
    load = os.getloadavg()[0]
    start, cpu = time.perf_counter(), time.process_time()
    dirs = execute(runs)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    records = [read_run(d) for d in dirs]
    return {"label": label, "dirs": dirs, "seconds": seconds, "driver_cpu": cpu,
            "load": (load, os.getloadavg()[0]),
            "forward": sum(r["forward_batches"] for r in records),
            "status": sorted({r["status"] for r in records}),
            "failed": [f"{r['run_id']}/{name}: {a.get('error')}" for r in records
                       for name, a in r["analyses"].items() if a["status"] == "failed"]}


def same_tables(a: list[Path], b: list[Path]) -> bool:
    import numpy as np

    from vlprobe.results.records import read_result_table

    for x, y in zip(a, b):
        for name in (p.stem for p in (x / "results").glob("*.parquet")):
            va, vb = (read_result_table(d, name)["value"].to_numpy() for d in (x, y))
            if va.shape != vb.shape or not np.allclose(va, vb, rtol=0, atol=1e-6):
                return False
    return True


def task_overhead(ray, n: int) -> tuple[float, float]:
    """(ms per empty task, one round trip at a time; ms per task, ``n`` submitted at once)."""

    @ray.remote
    def empty() -> None:
        return None

    ray.get([empty.remote() for _ in range(4)])  # warm the workers
    start = time.perf_counter()
    for _ in range(n):
        ray.get(empty.remote())
    one = (time.perf_counter() - start) / n
    start = time.perf_counter()
    ray.get([empty.remote() for _ in range(n)])
    batch = (time.perf_counter() - start) / n
    return 1e3 * one, 1e3 * batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=200)
    args = parser.parse_args()
    import ray

    from vlprobe.executors import run_all
    from vlprobe.executors.ray_executor import RayExecutor

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = sweep_config(tmp, args.train, args.test)
        local = timed_sweep("local executor (1 process)", data, tmp / "local",
                            lambda runs: run_all(runs, progress=False, report=False))
        t0 = time.perf_counter()
        ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False,
                 log_to_driver=False)
        ray_start = time.perf_counter() - t0
        on_ray = timed_sweep("Ray, 2 workers", data, tmp / "ray",
                             lambda runs: RayExecutor().run(runs, progress=False, report=False))
        one, batch = task_overhead(ray, args.tasks)
        ray.shutdown()
        identical = same_tables(local["dirs"], on_ray["dirs"])

    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
          f"{args.train} train / {args.test} test items per dataset; ray {ray.__version__}")
    print("| executor | wall time (s) | driver CPU (s) | forward batches | status "
          "| load avg at start / end |")
    print("|---|---|---|---|---|---|")
    for row in (local, on_ray):
        print(f"| {row['label']} | {row['seconds']:.1f} | {row['driver_cpu']:.1f} "
              f"| {row['forward']} | {', '.join(row['status'])} "
              f"| {row['load'][0]:.1f} / {row['load'][1]:.1f} |")
    for failure in local["failed"] + on_ray["failed"]:
        print(f"failed: {failure}")
    print(f"local / Ray wall time: {local['seconds'] / on_ray['seconds']:.2f}x; "
          f"result tables identical: {'yes' if identical else 'NO'}; "
          f"ray.init (local cluster start): {ray_start:.1f} s")
    print(f"empty task: {one:.2f} ms per round trip (one at a time), {batch:.2f} ms per task "
          f"({args.tasks} submitted at once)")


if __name__ == "__main__":
    main()
