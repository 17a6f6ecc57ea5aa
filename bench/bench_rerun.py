"""Benchmark: a second ``vlprobe run`` of the same config performs zero model forward passes.

Runs the demo config twice into a fresh cache and run directory and prints, for each run,
the number of model forward batches and the wall time. Usage::

    .venv/bin/python bench/bench_rerun.py [--quick]

``--quick`` shrinks the demo subsample (train 200 / test 100) for a fast check.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VLPROBE_CACHE"] = str(Path(tmp) / "cache")
        from vlprobe.config import parse_config
        from vlprobe.demo import demo_config_dict
        from vlprobe.results.records import read_run
        from vlprobe.runner import run

        data = demo_config_dict()
        data["output_dir"] = str(Path(tmp) / "runs")
        if args.quick:
            data["datasets"]["fashion_mnist"]["subsample"] = {"train": 200, "test": 100}
        rows = []
        for attempt in (1, 2):
            start = time.perf_counter()
            run_dir = run(parse_config(data), progress=False, report=True)
            seconds = time.perf_counter() - start
            record = read_run(run_dir)
            rows.append((attempt, record["forward_batches"], seconds, record["status"]))
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus")
        print("| run | model forward batches | wall time (s) | status |")
        print("|---|---|---|---|")
        for attempt, batches, seconds, status in rows:
            print(f"| {attempt} | {batches} | {seconds:.1f} | {status} |")


if __name__ == "__main__":
    main()
