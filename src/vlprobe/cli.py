"""``vlprobe`` command line: a thin shell over the Python API.

vlprobe models                     registered adapters, which are usable offline
vlprobe analyses                   registered analyses with their catalogue ids
vlprobe datasets                   registered dataset loaders
vlprobe validate CONFIG            check a config without running it
vlprobe run CONFIG [--set k=v]     models x datasets x analyses -> a run directory
                                   (cached analysis results are reused; --force recomputes;
                                   a config with a `sweep:` block runs every point;
                                   --executor ray [--address auto|HOST:PORT]: on Ray)
vlprobe ls [ROOT]                  past runs, one line each (a sweep's runs together)
vlprobe report RUN_DIR             (re)build the HTML report
vlprobe report RUN_A RUN_B ...     one comparison report across runs (same analyses side by side)
vlprobe query "SQL" [ROOT]         SQL over every run's result tables (view: results)
vlprobe demo                       the offline demo on real pretrained models
vlprobe train CONFIG... [--set k=v] train multimodal model(s): M8, DeViSE, captioner, fusion
vlprobe cache ls                   activation store entries (model, data, site, shape, size)
                                   and the number of cached analysis results
vlprobe cache gc [--dry-run]       remove temp files, incomplete / stale / old entries
                                   (activations and analysis results)
vlprobe cache verify [--delete]    rehash every entry; report (and remove) corrupted ones
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from vlprobe.errors import VLProbeError


def _cmd_models(args: argparse.Namespace) -> int:
    from vlprobe.models import MODELS

    rows = []
    for name in MODELS.names():
        cls = MODELS.get(name)
        ok, why = cls.offline_status()
        rows.append((name, "yes" if ok else "no", cls.summary, why))
    _print_table(("adapter", "offline", "what", "weights"), rows)
    return 0


def _cmd_analyses(args: argparse.Namespace) -> int:
    from vlprobe.analyses import ANALYSES

    rows = []
    for name in ANALYSES.names():
        cls = ANALYSES.get(name)
        rows.append((", ".join(cls.catalogue), name, cls.summary))
    rows.sort()
    _print_table(("id", "analysis", "what"), rows)
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    from vlprobe.data import DATASETS

    rows = []
    for name in DATASETS.names():
        doc = (DATASETS.get(name).__doc__ or "").strip().splitlines()
        rows.append((name, doc[0] if doc else ""))
    _print_table(("loader", "what"), rows)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from vlprobe.config import missing_local_paths
    from vlprobe.runner import run_dir_for
    from vlprobe.sweep import load_runs

    runs = load_runs(args.config, args.set)
    missing = sorted({p for cfg, _ in runs for p in missing_local_paths(cfg)})
    for problem in missing:
        print(f"{args.config}: {problem}", file=sys.stderr)
    if missing:
        return 2
    if runs[0][1] is not None:
        print(f"{args.config}: ok, a sweep of {len(runs)} runs ({runs[0][1]['id']})")
    for cfg, _ in runs:
        print(
            f"{args.config if runs[0][1] is None else '  ' + cfg.name}: ok ({len(cfg.models)} "
            f"models, {len(cfg.datasets)} datasets, {len(cfg.analyses)} analyses) -> "
            f"{run_dir_for(cfg)}"
        )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from vlprobe.executors import run_all
    from vlprobe.sweep import load_runs

    runs = load_runs(args.config, args.set)
    run_dirs = run_all(
        runs,
        executor=args.executor,
        address=args.address,
        skip_existing=args.skip_existing,
        force=args.force,
        progress=not args.no_progress,
        config_path=str(Path(args.config).resolve()),
    )
    return max(_summarise(run_dir) for run_dir in run_dirs)


def _summarise(run_dir: Path) -> int:
    from vlprobe.results.records import read_run

    record = read_run(run_dir)
    for name, info in record["analyses"].items():
        extra = f": {info.get('error')}" if info.get("status") == "failed" else ""
        print(f"  {name:32s} {info.get('status')}{extra}")
    print(f"model forward batches: {record.get('forward_batches')}")
    print(f"run directory: {run_dir}")
    print(f"report: {run_dir / 'report.html'}")
    return 0 if record["status"] == "ok" else 1


def _cmd_ls(args: argparse.Namespace) -> int:
    from vlprobe.results.records import list_runs
    from vlprobe.settings import runs_dir

    root = Path(args.root) if args.root else runs_dir()
    runs = list_runs(root)
    if not runs:
        print(f"no runs under {root}")
        return 0
    rows = []
    shown: set[str] = set()
    for r in runs:
        sweep = r.get("sweep") or {}
        if not sweep:
            rows.append(_ls_row(Path(r["dir"]).name, [r]))
            continue
        if sweep["id"] in shown:
            continue
        shown.add(sweep["id"])
        members = sorted((m for m in runs if (m.get("sweep") or {}).get("id") == sweep["id"]),
                         key=lambda m: m["sweep"]["index"])
        rows.append(_ls_row(f"sweep {sweep['id']} ({len(members)} of {sweep['size']} runs)",
                            members))
        rows.extend(_ls_row(f"  {Path(m['dir']).name}", [m]) for m in members)
    _print_table(("run", "started", "status", "analyses ok", "seconds"), rows)
    return 0


def _ls_row(label: str, runs: list[dict]) -> tuple:
    """One `vlprobe ls` row for a run, or for a sweep (its analyses summed; its seconds the
    wall time from the first start to the last finish, since a Ray sweep's runs overlap)."""
    analyses = [a for r in runs for a in r.get("analyses", {}).values()]
    ok = sum(1 for a in analyses if a.get("status") == "ok")
    statuses = {r.get("status", "") for r in runs}
    seconds = [r.get("timings", {}).get("total_s") for r in runs]
    if None in seconds:
        shown = ""
    elif len(runs) == 1:
        shown = f"{round(seconds[0], 3)}"
    else:
        span = _wall_span(runs)
        shown = f"{round(sum(seconds), 3)} (sum)" if span is None else f"{span:.0f} (wall)"
    return (
        label,
        min(r.get("started", "") for r in runs),
        statuses.pop() if len(statuses) == 1 else "partial",
        f"{ok}/{len(analyses)}",
        shown,
    )


def _wall_span(runs: list[dict]) -> float | None:
    """Seconds from the earliest ``started`` to the latest ``finished`` of ``runs`` (ISO
    timestamps of their records), or None where a record lacks one."""
    from datetime import datetime

    try:
        starts = [datetime.fromisoformat(r["started"]) for r in runs]
        ends = [datetime.fromisoformat(r["finished"]) for r in runs]
    except (KeyError, TypeError, ValueError):
        return None
    return (max(ends) - min(starts)).total_seconds()


def _cmd_report(args: argparse.Namespace) -> int:
    from vlprobe.report.html import write_report

    if len(args.run_dirs) == 1 and not args.output:
        print(write_report(args.run_dirs[0]))
        return 0
    from vlprobe.report.compare import write_comparison

    print(write_comparison(args.run_dirs, args.output))
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    import pandas as pd

    from vlprobe.results.query import query_runs
    from vlprobe.settings import runs_dir

    frame = query_runs(args.sql, Path(args.root) if args.root else runs_dir())
    with pd.option_context("display.max_rows", 200, "display.width", 160):
        print(frame.to_string(index=False))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from vlprobe.demo import run_demo

    run_dir = run_demo(output_dir=args.output_dir, progress=not args.no_progress,
                       force=args.force)
    return _summarise(run_dir)


def _cmd_train(args: argparse.Namespace) -> int:
    """Train each config in turn (one process, one activation store: a tower site that one
    model extracted is read from the store by the next); ``--summary`` writes the per-model
    wall times, checkpoints and test metrics as JSON."""
    import json
    import time

    from vlprobe.extract.store import atomic_write_json
    from vlprobe.train import load_train_config, train

    configs = [load_train_config(path, args.set) for path in args.config]  # fail early
    summary: dict[str, Any] = {"configs": list(args.config), "models": []}
    t_all = time.perf_counter()
    for path, cfg in zip(args.config, configs):
        t0 = time.perf_counter()
        out = train(cfg, progress=not args.no_progress)
        seconds = time.perf_counter() - t0
        record = json.loads((out / "training_record.json").read_text())
        _print_trained(out, record)
        print(f"{cfg.name}: {seconds:.0f} s")
        summary["models"].append({
            "config": path, "name": cfg.name, "kind": cfg.kind, "checkpoint": str(out),
            "seconds": seconds, "record_seconds": record.get("seconds"),
            "test": record.get("test"),
        })
        summary["seconds"] = time.perf_counter() - t_all
        if args.summary:  # rewritten after every model: a killed run keeps what it did
            atomic_write_json(Path(args.summary), summary)
    if len(configs) > 1:
        print(f"all {len(configs)} models: {summary['seconds']:.0f} s")
    return 0


def _print_trained(out: Path, record: dict[str, Any]) -> None:
    test = record["test"]
    print(f"checkpoint: {out}")
    print(f"best epoch {record['best_epoch']} (validation); test:")
    rows = (sorted(test.items(), key=lambda kv: (kv[0] != "greedy", kv[0]))
            if all(isinstance(v, dict) for v in test.values()) else [("", test)])
    for name, scores in rows:  # a captioner records one score dict per decoding
        scale = 100.0 if record.get("kind") == "captioner" else 1.0
        print(f"  {name + ': ' if name else ''}" + ", ".join(
            f"{k} {'n/a' if v is None else f'{scale * v:.1f}'}" for k, v in scores.items()))
    if record.get("adapter"):
        print(f"load it as a model: adapter: {record['adapter']}, checkpoint: {out}")


def _store(args: argparse.Namespace):
    from vlprobe.extract import ActivationStore
    from vlprobe.settings import cache_dir

    root = Path(args.cache_dir).expanduser() if args.cache_dir else cache_dir()
    return ActivationStore(root / "activations")


def _results_cache(args: argparse.Namespace):
    from vlprobe.results.cache import ResultCache

    return ResultCache(_store(args).root.parent / "results")


def _cmd_cache_ls(args: argparse.Namespace) -> int:
    from vlprobe.extract.cache_admin import LS_HEADER, human_bytes, ls_rows
    from vlprobe.results.cache import result_cache_summary

    store = _store(args)
    rows = ls_rows(store)
    if not rows:
        print(f"no entries under {store.root}")
    else:
        _print_table(LS_HEADER, rows)
    results = _results_cache(args)
    n, size = result_cache_summary(results)
    print(f"{n} cached analysis results ({human_bytes(size)}) under {results.root}")
    return 0


def _cmd_cache_gc(args: argparse.Namespace) -> int:
    from vlprobe.extract.cache_admin import collect_garbage, human_bytes

    store = _store(args)
    actions = collect_garbage(
        store, incomplete=not args.keep_incomplete, stale=args.stale,
        older_than_days=args.older_than, dry_run=args.dry_run,
    )
    freed = 0
    for a in actions:
        verb = "skipped" if a.reason.startswith("in use") else (
            "would remove" if args.dry_run else "removed"
        )
        freed += a.nbytes if verb != "skipped" else 0
        print(f"{verb:12s} {a.path.relative_to(store.root)}  ({a.reason}, {human_bytes(a.nbytes)})")
    from vlprobe.results.cache import collect_result_garbage

    results = _results_cache(args)
    for a in collect_result_garbage(results, stale=args.stale, older_than_days=args.older_than,
                                    dry_run=args.dry_run):
        freed += a.nbytes
        verb = "would remove" if args.dry_run else "removed"
        print(f"{verb:12s} results/{a.path.relative_to(results.root)}  "
              f"({a.reason}, {human_bytes(a.nbytes)})")
    print(f"{'would free' if args.dry_run else 'freed'} {human_bytes(freed)} under "
          f"{store.root.parent}")
    return 0


def _cmd_cache_verify(args: argparse.Namespace) -> int:
    from vlprobe.extract.cache_admin import verify_all

    store = _store(args)
    results = verify_all(store, repair=args.delete)
    for r in results:
        state = "complete" if r.complete else "incomplete"
        print(f"{r.status:9s} {r.key}  ({state})")
        for problem in r.problems:
            print(f"          {problem}")
    bad = [r for r in results if r.status in ("corrupt", "repaired")]
    print(f"{len(results)} entries, {len(bad)} corrupted"
          + (" (removed: they will be recomputed)" if bad and args.delete else ""))
    return 1 if any(r.status == "corrupt" for r in results) else 0


def _print_table(header: tuple[str, ...], rows: list[tuple]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    widths[-1] = 0  # last column unpadded
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlprobe",
        description="What does multimodal training put into a model's representations?",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="registered model adapters").set_defaults(fn=_cmd_models)
    sub.add_parser("analyses", help="registered analyses").set_defaults(fn=_cmd_analyses)
    sub.add_parser("datasets", help="registered dataset loaders").set_defaults(fn=_cmd_datasets)
    for name, fn, text in (
        ("run", _cmd_run, "run a config"),
        ("validate", _cmd_validate, "validate a config"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", help="YAML run config")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config field, e.g. --set seed=1 --set analyses.0.params.shots=[1,5]",
        )
        if name == "run":
            p.add_argument(
                "--skip-existing",
                action="store_true",
                help="keep results already in the run directory",
            )
            p.add_argument("--force", action="store_true",
                           help="recompute every analysis instead of reusing cached results")
            p.add_argument("--no-progress", action="store_true", help="hide progress bars")
            p.add_argument("--executor", choices=("local", "ray"), default="local",
                           help="where the work runs: this process (default) or Ray tasks "
                           "(needs vlprobe[ray])")
            p.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                           help="the Ray cluster (--executor ray): auto = the one this "
                           "machine joined with `ray start`; default: RAY_ADDRESS or a new "
                           "local cluster")
        p.set_defaults(fn=fn)
    p = sub.add_parser("ls", help="list past runs")
    p.add_argument(
        "root", nargs="?", help="runs directory (default VLPROBE_RUNS or ./vlprobe_runs)"
    )
    p.set_defaults(fn=_cmd_ls)
    p = sub.add_parser(
        "report", help="(re)build a run's HTML report; several runs: one comparison report"
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("-o", "--output", default=None,
                   help="where to write the comparison report (default: comparison-<hash>.html "
                   "beside the first run directory)")
    p.set_defaults(fn=_cmd_report)
    p = sub.add_parser("query", help="SQL over all result tables (view `results`)")
    p.add_argument("sql")
    p.add_argument("root", nargs="?")
    p.set_defaults(fn=_cmd_query)
    p = sub.add_parser("train", help="train a multimodal model: M8 aligned towers, a "
                       "captioner (kind: captioner) or a fusion model (kind: fusion_single / "
                       "fusion_two)")
    p.add_argument("config", nargs="+",
                   help="YAML train config(s); several are trained in turn, sharing the "
                        "activation store (examples/train_zoo.sh: the whole zoo)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (of every config), e.g. --set optim.epochs=10")
    p.add_argument("--summary", default=None, metavar="JSON",
                   help="write per-model wall times, checkpoints and test metrics here")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(fn=_cmd_train)
    p = sub.add_parser("demo", help="offline demo on real pretrained models")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--force", action="store_true",
                   help="recompute every analysis instead of reusing cached results")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=_cmd_demo)
    cache = sub.add_parser("cache", help="inspect and clean the activation store")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    cache_dir_help = "cache directory (default VLPROBE_CACHE or the user cache dir)"
    p = cache_sub.add_parser("ls", help="list entries")
    p.add_argument("--cache-dir", help=cache_dir_help)
    p.set_defaults(fn=_cmd_cache_ls)
    p = cache_sub.add_parser(
        "gc", help="remove temp files and incomplete entries no running process holds"
    )
    p.add_argument("--cache-dir", help=cache_dir_help)
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    p.add_argument("--keep-incomplete", action="store_true",
                   help="keep incomplete entries (a rerun resumes from their shards)")
    p.add_argument("--stale", action="store_true",
                   help="also remove entries made by another vlprobe/torch/transformers version")
    p.add_argument("--older-than", type=float, metavar="DAYS",
                   help="also remove entries finalized (analysis results: last used) more "
                   "than DAYS days ago")
    p.set_defaults(fn=_cmd_cache_gc)
    p = cache_sub.add_parser("verify", help="rehash every entry, report corrupted ones")
    p.add_argument("--cache-dir", help=cache_dir_help)
    p.add_argument("--delete", action="store_true",
                   help="remove corrupted entries / shards so they are recomputed")
    p.set_defaults(fn=_cmd_cache_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        # library progress bars ("Loading weights") and advisories drown vlprobe's own bars;
        # users who want them pass -v
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.fn(args) or 0)
    except VLProbeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted (finished shards and results are kept; rerun to resume)", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
