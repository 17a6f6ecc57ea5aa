"""``run(cfg)``: models x datasets x analyses -> a run directory.

Order of work:
1. plan (:func:`vlprobe.run_plan.plan_run`): every analysis is built (its parameters
   validated) before anything heavy happens; the analysis-result cache
   (:mod:`vlprobe.results.cache`) is asked for each; the features the others request are
   merged into extraction groups, one forward pass per (model, stimuli view);
2. execute (:func:`execute_plan`, in this process): extract the groups through the
   activation store (store hits cost no forward pass), compute the analyses the result
   cache does not hold and cache their results; one failing analysis is recorded in
   ``run.json`` and does not lose the others' results;
3. ``run.json``, tables, figures and the HTML report are written.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from vlprobe import __version__
from vlprobe.config import RunConfig, dump_yaml
from vlprobe.results.cache import ResultCache
from vlprobe.results.records import atomic_write_text, result_exists
from vlprobe.run_plan import RunPlan, build_analysis, plan_run
from vlprobe.run_results import compute_analysis, settle_analyses, write_record

log = logging.getLogger("vlprobe")

_VERSIONED = (
    "torch",
    "transformers",
    "numpy",
    "scipy",
    "scikit-learn",
    "pandas",
    "safetensors",
    "matplotlib",
    "gguf",
    "gensim",
)


def package_versions() -> dict[str, str]:
    """Versions of vlprobe, Python and the libraries that change numbers."""
    versions = {"vlprobe": __version__, "python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_hash() -> str | None:
    """Commit of the vlprobe source tree when it is a git checkout (dirty marked)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_dir_for(cfg: RunConfig) -> Path:
    """``<output_dir>/<name>-<config hash>``: the same config always maps to the same dir."""
    from vlprobe.settings import runs_dir

    root = Path(cfg.output_dir).expanduser() if cfg.output_dir else runs_dir()
    return root / f"{cfg.name}-{cfg.config_hash()}"


def result_cache_for(cfg: RunConfig) -> ResultCache:
    """The analysis-result cache of a config: ``<cache_dir>/results``."""
    from vlprobe.settings import cache_dir

    return ResultCache(Path(cfg.cache_dir or cache_dir()).expanduser() / "results")


def build_analyses(cfg: RunConfig) -> list[tuple[Any, Any]]:
    """(entry, analysis instance) for every configured analysis."""
    return [(entry, build_analysis(cfg, entry)) for entry in cfg.analyses]


@dataclass
class RunState:
    """A planned run on the driver: its directory, ``run.json`` record (filled as the run
    goes), feature source, plan and result cache. Executors fill ``record`` through
    :func:`settle_analyses`; :func:`finish_run` closes it."""

    cfg: RunConfig
    run_dir: Path
    record: dict[str, Any]
    source: Any
    plan: RunPlan
    cache: ResultCache
    previous: dict[str, Any]
    force: bool
    started: float


def start_run(
    cfg: RunConfig,
    *,
    skip_existing: bool = False,
    force: bool = False,
    progress: bool = True,
    config_path: str | None = None,
    sweep: dict[str, Any] | None = None,
    executor: str = "local",
) -> RunState:
    """Create the run directory, write the first ``run.json`` and plan the run (cheap: no
    model forward pass). ``sweep`` is the run's place in a sweep
    (:func:`vlprobe.sweep.expand_sweep`), recorded in ``run.json``."""
    from vlprobe.feature_source import RunFeatureSource

    started = time.perf_counter()
    run_dir = run_dir_for(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = _read_previous(run_dir)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    versions = package_versions()
    record: dict[str, Any] = {
        "run_id": run_dir.name,
        "name": cfg.name,
        "config_hash": cfg.config_hash(),
        "config": cfg.to_dict(),
        "config_path": config_path,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions,
        "git": git_hash(),
        "host": {"platform": platform.platform(), "machine": platform.machine()},
        "seed": cfg.seed,
        "status": "running",
        "forced": force,
        "executor": executor,
        "analyses": {},
        "timings": {},
    }
    if sweep is not None:
        record["sweep"] = sweep
    write_record(run_dir, record)

    source = RunFeatureSource(cfg, progress=progress)
    cache = result_cache_for(cfg)
    keep = {e.name for e in cfg.analyses if skip_existing and result_exists(run_dir, e.name)}
    t0 = time.perf_counter()
    plan = plan_run(cfg, source, cache=None if force else cache, versions=versions, keep=keep)
    record["timings"]["plan_s"] = round(time.perf_counter() - t0, 3)
    return RunState(cfg, run_dir, record, source, plan, cache,
                    previous.get("analyses", {}), force, started)


def finish_run(state: RunState, *, report: bool = True) -> Path:
    """Close the record (:func:`finish_record`), write ``run.json`` and the report."""
    finish_record(state.record, state.source, state.plan, state.started)
    write_record(state.run_dir, state.record)
    if report:
        from vlprobe.report.html import write_report

        write_report(state.run_dir)
    return state.run_dir


def run(
    cfg: RunConfig,
    *,
    skip_existing: bool = False,
    force: bool = False,
    progress: bool = True,
    report: bool = True,
    config_path: str | None = None,
    sweep: dict[str, Any] | None = None,
) -> Path:
    """Execute a run in this process (the local executor) and return its directory.

    Args:
        cfg: a validated :class:`RunConfig`.
        skip_existing: keep results already written in this run's directory (resumable sweeps).
        force: recompute every analysis instead of reusing cached results (the activation
            store is still used; the recomputed results replace the cached ones).
        progress: show progress bars.
        report: write ``report.html`` at the end.
        config_path: the config file the run came from (recorded for reproduction).
        sweep: the run's place in a sweep (recorded in ``run.json``; see :mod:`vlprobe.sweep`).
    """
    state = start_run(cfg, skip_existing=skip_existing, force=force, progress=progress,
                      config_path=config_path, sweep=sweep)
    execute_plan(state.plan, state.source, run_dir=state.run_dir, record=state.record,
                 cache=state.cache, previous=state.previous, force=force)
    return finish_run(state, report=report)


def execute_plan(
    plan: RunPlan,
    source: Any,
    *,
    run_dir: Path,
    record: dict[str, Any],
    cache: ResultCache | None,
    previous: dict[str, Any] | None = None,
    force: bool = False,
) -> None:
    """Execute a :class:`RunPlan` in this process: extract its groups (one forward pass per
    group unless the store has it), compute the ``todo`` analyses (storing their results in
    ``cache``), write every result into ``run_dir`` and its entry into ``record``.

    One failing analysis is recorded (message; traceback for bugs) and does not lose the
    others' results. ``previous`` is the ``analyses`` part of the run directory's earlier
    run.json (kept analyses keep their entries).
    """
    t0 = time.perf_counter()
    record["extraction_errors"] = plan.errors + source.extract_groups(plan.groups)
    for error in record["extraction_errors"]:
        log.error("extraction failed: %s", error)
    record["timings"]["extraction_s"] = round(time.perf_counter() - t0, 3)
    settle_analyses(plan, lambda item: compute_analysis(item, source), run_dir=run_dir,
                    record=record, cache=cache, models=list(source.cfg.models),
                    previous=previous, force=force)


def finish_record(
    record: dict[str, Any], source: Any, plan: RunPlan, started: float
) -> None:
    """Fill in what the run found about its inputs: datasets, models, extraction log,
    cache use, warnings, timings and the overall status."""
    record["datasets"] = source.dataset_summary()
    record["models"] = source.model_summary()
    record["extractions"] = [entry.__dict__ for entry in source.log]
    record["forward_batches"] = source.forward_batches()
    analyses = record["analyses"].values()
    record["cache"] = {
        "results_reused": sum(1 for a in analyses if a.get("cache") == "hit"),
        "results_computed": sum(1 for a in analyses if str(a.get("cache", "")).startswith(
            ("computed", "recomputed"))),
        "extraction_groups": len(plan.groups),
        "extraction_groups_from_store": sum(1 for e in source.log if not e.n_forward_batches),
    }
    record["truncations"] = truncation_rows(record["analyses"])
    record["timings"]["load_s"] = {k: round(v, 3) for k, v in source.load_seconds.items()}
    record["timings"]["total_s"] = round(time.perf_counter() - started, 3)
    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    statuses = [a["status"] for a in analyses]
    record["status"] = "ok" if all(s != "failed" for s in statuses) else "partial"
    record["warnings"] = run_warnings(record)


def truncation_rows(analyses: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, dataset, split, view) any analysis read with truncated texts."""
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for info in analyses.values():
        for row in info.get("inputs") or []:
            if row.get("n_truncated"):
                key = (row["model"], row["dataset"], row["split"], row["view"])
                rows[key] = {k: row[k] for k in ("model", "dataset", "split", "view",
                                                 "n_items", "n_truncated")}
    return list(rows.values())


def run_warnings(record: dict[str, Any]) -> list[str]:
    """The run's warnings: failed extractions, truncated texts, skipped items, duplicates."""
    datasets = record.get("datasets", {})
    return (
        list(record.get("extraction_errors", []))
        + [
            f"{t['n_truncated']} of {t['n_items']} texts of {t['dataset']}/{t['split']} were "
            f"truncated to the maximum length of model {t['model']}"
            for t in record.get("truncations", [])
        ]
        + [
            f"dataset {name}/{split}: {info['skipped']} unreadable items skipped (on_error: skip)"
            for name, splits in datasets.items()
            for split, info in splits.items()
            if info.get("skipped")
        ]
        + [
            f"dataset {name}/{split}: {dup['count']} item(s) have the same content as items of "
            f"split {other!r} (e.g. {', '.join(f'{a} = {b}' for a, b in dup['examples'])}); "
            f"set datasets.{name}.drop_cross_split_duplicates: true to drop them"
            for name, splits in datasets.items()
            for split, info in splits.items()
            for other, dup in info.get("duplicates_of", {}).items()
        ]
    )


def _read_previous(run_dir: Path) -> dict[str, Any]:
    """The ``run.json`` an earlier run of the same config left (empty if none)."""
    try:
        return json.loads((run_dir / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
