"""Benchmark: a rerun of the same config performs zero model forward passes and fits no probe.

Runs the demo config twice into a fresh cache and run directory, in one process, and
prints for each run the model forward batches, the analysis results taken from the result
cache, the plan / extraction seconds (run.json), the wall time and the process CPU time (all
threads; steadier than wall time on a shared machine), then the ratios.
Usage::

    .venv/bin/python bench/bench_rerun.py [--quick] [--runs 3]

``--quick`` shrinks the demo subsample (train 200 / test 100) for a fast check. A third run
(``--runs 3``) writes into a second run directory of the same analyses (the config's
``name`` changed): it shows that cached results serve any run directory.
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
    parser.add_argument("--runs", type=int, default=2, choices=(2, 3))
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
        for attempt in range(1, args.runs + 1):
            if attempt == 3:
                data["name"] = "demo_copy"  # another run directory, same analyses
            start, cpu = time.perf_counter(), time.process_time()
            run_dir = run(parse_config(data), progress=False, report=True)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            record = read_run(run_dir)
            timings = record["timings"]
            rows.append((attempt, record["forward_batches"],
                         record["cache"]["results_reused"], len(record["analyses"]),
                         timings.get("plan_s", 0.0), timings.get("extraction_s", 0.0),
                         seconds, cpu, record["status"]))
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus")
        print("| run | model forward batches | results from cache | plan (s) | extraction (s) "
              "| wall time (s) | CPU time (s) | status |")
        print("|---|---|---|---|---|---|---|---|")
        for attempt, batches, reused, n, plan_s, extract_s, seconds, cpu, status in rows:
            print(f"| {attempt} | {batches} | {reused} of {n} | {plan_s:.1f} | {extract_s:.1f} "
                  f"| {seconds:.1f} | {cpu:.1f} | {status} |")
        print(f"run 2 vs run 1: {rows[0][6] / rows[1][6]:.1f}x less wall time, "
              f"{rows[0][7] / rows[1][7]:.1f}x less CPU time")


if __name__ == "__main__":
    main()
