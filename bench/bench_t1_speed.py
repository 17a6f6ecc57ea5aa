"""Benchmark: all ten SentEval tasks x every MiniLM-L6 layer in ONE ``vlprobe run``.

Writes a config with the ten tasks generated from the reference kit's treebanks (the
``probing_task`` loader: SentLen, WC, TreeDepth, TopConst, BShift, SOMO, CoordInv from the PTB
sample; Tense, SubjNum, ObjNum from UD English EWT; full generated sizes) and one T1 analysis
over all of them, runs ``vlprobe run`` on it with an empty activation cache, and splits the
wall time with ``run.json``:

- task generation (dataset loading),
- extraction: the model forward passes (``seconds_model`` of each extraction) and the rest of
  extraction (tokenising, pooling, writing and hashing shards),
- the probes (the T1 analysis: MLP probes with the dev sweep for nine tasks, logistic
  regression with the C sweep for WC, all layers at once).

Usage (needs the reference kit)::

    VLPROBE_REFERENCE=/path/to/reference .venv/bin/python bench/bench_t1_speed.py \\
        [--append bench/RESULTS.md] [--max-per-class N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASKS = {
    "ptb_sentlen": ("ptb_sample", "SentLen"), "ptb_wc": ("ptb_sample", "WC"),
    "ptb_treedepth": ("ptb_sample", "TreeDepth"), "ptb_topconst": ("ptb_sample", "TopConst"),
    "ptb_bshift": ("ptb_sample", "BShift"), "ud_tense": ("ud_english_ewt", "Tense"),
    "ud_subjnum": ("ud_english_ewt", "SubjNum"), "ud_objnum": ("ud_english_ewt", "ObjNum"),
    "ptb_somo": ("ptb_sample", "SOMO"), "ptb_coordinv": ("ptb_sample", "CoordInv"),
}  # fmt: skip


def config(reference: Path, out: Path, max_per_class: int | None) -> dict:
    options = {} if max_per_class is None else {"max_per_class": max_per_class}
    keys = list(TASKS)
    return {
        "name": "bench_t1_speed", "seed": 0, "output_dir": str(out),
        "models": {"minilm": {"adapter": "minilm_l6"}},
        "datasets": {
            key: {"loader": "probing_task", "path": str(reference / "text" / tb), "seed": 0,
                  "options": {"task": task, **options}}
            for key, (tb, task) in TASKS.items()
        },
        "analyses": [{"analysis": "T1", "name": "senteval_all", "models": ["minilm"],
                      "dataset": keys[0], "params": {"datasets": keys[1:]}}],
        "extraction": {"batch_size": 32, "shard_size": 1024},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--append", default=None)
    ap.add_argument("--max-per-class", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = ap.parse_args()
    reference = Path(os.environ.get("VLPROBE_REFERENCE", "")).expanduser()
    if not (reference / "text" / "ptb_sample").is_dir():
        sys.exit("set VLPROBE_REFERENCE to the reference kit (needs text/ptb_sample)")
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg_path = tmp / "t1.yaml"
        cfg_path.write_text(yaml.safe_dump(config(reference, tmp / "runs", a.max_per_class)))
        env = {**os.environ, "VLPROBE_CACHE": str(tmp / "cache")}
        if a.threads:
            env["OMP_NUM_THREADS"] = str(a.threads)
        vlprobe = Path(sys.executable).with_name("vlprobe")
        start = time.perf_counter()
        subprocess.run([str(vlprobe), "run", str(cfg_path)], check=True, env=env)
        wall = time.perf_counter() - start
        (run_dir,) = (tmp / "runs").iterdir()
        record = json.loads((run_dir / "run.json").read_text())
        table = __import__("pandas").read_parquet(run_dir / "results" / "senteval_all.parquet")
    t = record["timings"]
    load = sum(v for k, v in t["load_s"].items() if k.startswith("dataset:"))
    model_load = sum(v for k, v in t["load_s"].items() if k.startswith("model:"))
    ext = record["extractions"]
    forward = sum(e["seconds_model"] for e in ext)
    ext_total = sum(e["seconds_total"] for e in ext)
    n_items = sum(e["n_items"] for e in ext)
    probes = record["analyses"]["senteval_all"]["seconds"]
    rest = wall - load - model_load - ext_total - probes
    sizes = table.groupby("task")[["n_train", "n_val", "n_test"]].first()
    best = table.groupby("task")["value"].max()
    share = lambda s: f"{100 * s / wall:.0f}%"  # noqa: E731
    lines = [
        "## T1: ten SentEval tasks x all MiniLM-L6 layers in one `vlprobe run`",
        "",
        f"`bench/bench_t1_speed.py` ({dt.date.today().isoformat()}; {os.cpu_count()} CPUs, "
        "machine shared with other jobs; empty activation cache). Tasks generated from the "
        "reference kit (PTB WSJ sample, UD English EWT), "
        + ("full generated sizes" if a.max_per_class is None
           else f"max_per_class {a.max_per_class}")
        + f": {n_items} sentences in all; 7 sites (embeddings + 6 blocks), mean pooling; "
        "MLP probes (hidden 50/200 x weight decay 0/1e-3 on dev) for nine tasks, logistic "
        "regression (8 C values) for WC.",
        "",
        "| part | seconds | share of wall |",
        "|---|---|---|",
        f"| task generation (10 datasets) | {load:.1f} | {share(load)} |",
        f"| model load | {model_load:.1f} | {share(model_load)} |",
        f"| extraction: model forward | {forward:.1f} | {share(forward)} |",
        f"| extraction: tokenise, pool, write shards | {ext_total - forward:.1f} | "
        f"{share(ext_total - forward)} |",
        f"| probes (T1 analysis, 10 tasks x 7 layers) | {probes:.1f} | {share(probes)} |",
        f"| other (start-up, report, figures) | {rest:.1f} | {share(rest)} |",
        f"| **wall time** | **{wall:.1f}** | 100% |",
        "",
        "| task | train / dev / test | best layer accuracy |",
        "|---|---|---|",
    ]
    for task, row in sizes.iterrows():
        lines.append(f"| {task} | {row.n_train} / {row.n_val} / {row.n_test} | "
                     f"{best[task]:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.append:
        with open(a.append, "a") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
