"""``run(cfg)``: models x datasets x analyses -> a run directory.

Order of work:
1. every analysis is built (its parameters validated) before anything heavy happens;
2. the features all analyses request are extracted with one forward pass per
   (model, stimuli) through the activation store (cache hits cost no forward pass);
3. each analysis runs on cached features; one failing analysis is recorded in ``run.json``
   and does not lose the others' results;
4. ``run.json``, tables, figures and the HTML report are written.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import time
import traceback
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from vlprobe import __version__
from vlprobe.config import RunConfig, dump_yaml
from vlprobe.errors import VLProbeError
from vlprobe.results.records import atomic_write_text, result_exists, write_result

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


def build_analyses(cfg: RunConfig) -> list[tuple[Any, Any]]:
    """(entry, analysis instance) for every configured analysis."""
    from vlprobe.analyses import ANALYSES

    return [
        (
            entry,
            ANALYSES.get(entry.analysis)(
                list(entry.models), entry.dataset, entry.params, seed=cfg.seed
            ),
        )
        for entry in cfg.analyses
    ]


def run(
    cfg: RunConfig,
    *,
    skip_existing: bool = False,
    progress: bool = True,
    report: bool = True,
    config_path: str | None = None,
) -> Path:
    """Execute a run and return its directory.

    Args:
        cfg: a validated :class:`RunConfig`.
        skip_existing: keep results already written in this run's directory (resumable sweeps).
        progress: show progress bars.
        report: write ``report.html`` at the end.
        config_path: the config file the run came from (recorded for reproduction).
    """
    from vlprobe.feature_source import RunFeatureSource

    started = time.perf_counter()
    run_dir = run_dir_for(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = run_dir.name
    previous = _read_previous(run_dir)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    record: dict[str, Any] = {
        "run_id": run_id,
        "name": cfg.name,
        "config_hash": cfg.config_hash(),
        "config": cfg.to_dict(),
        "config_path": config_path,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "git": git_hash(),
        "host": {"platform": platform.platform(), "machine": platform.machine()},
        "seed": cfg.seed,
        "status": "running",
        "analyses": {},
        "timings": {},
    }
    _write_record(run_dir, record)

    analyses = build_analyses(cfg)
    source = RunFeatureSource(cfg, progress=progress)
    todo = []
    for entry, analysis in analyses:
        if skip_existing and result_exists(run_dir, entry.name):
            kept = previous.get("analyses", {}).get(entry.name, {})
            record["analyses"][entry.name] = {**kept, "status": "skipped (exists)"}
            log.info("skipping %s: result exists", entry.name)
            continue
        todo.append((entry, analysis))

    # one forward pass per (model, stimuli): gather every request, then extract
    t0 = time.perf_counter()
    requests = []
    for entry, analysis in todo:
        try:
            requests.extend(analysis.requests(source))
        except VLProbeError as exc:
            record["analyses"][entry.name] = {"status": "failed", "error": str(exc)}
    extraction_errors = source.prefetch(requests)
    for error in extraction_errors:
        log.error("extraction failed: %s", error)
    record["timings"]["extraction_s"] = round(time.perf_counter() - t0, 3)

    for entry, analysis in todo:
        if entry.name in record["analyses"]:  # failed while planning
            continue
        t1 = time.perf_counter()
        try:
            result = analysis.run(source)
            index = write_result(
                run_dir, entry.name, result, run_id=run_id, config_hash=cfg.config_hash()
            )
            record["analyses"][entry.name] = {
                **index,
                "status": "ok",
                "seconds": round(time.perf_counter() - t1, 3),
            }
        except VLProbeError as exc:
            record["analyses"][entry.name] = {"status": "failed", "error": str(exc)}
            log.error("analysis %s failed: %s", entry.name, exc)
        except Exception as exc:  # a bug: keep the traceback, keep the other results
            record["analyses"][entry.name] = {
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
            log.error("analysis %s crashed: %s", entry.name, exc)
        _write_record(run_dir, record)

    record["datasets"] = source.dataset_summary()
    record["extractions"] = [entry.__dict__ for entry in source.log]
    record["forward_batches"] = source.forward_batches()
    record["timings"]["load_s"] = {k: round(v, 3) for k, v in source.load_seconds.items()}
    record["timings"]["total_s"] = round(time.perf_counter() - started, 3)
    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    statuses = [a["status"] for a in record["analyses"].values()]
    record["status"] = "ok" if all(s != "failed" for s in statuses) else "partial"
    record["warnings"] = (
        extraction_errors
        + [
            f"{e.n_truncated} of {e.n_items} texts of {e.dataset}/{e.split} were truncated to "
            f"the maximum length of model {e.model}"
            for e in source.log
            if e.n_truncated
        ]
        + [
            f"dataset {name}/{split}: {info['skipped']} unreadable items skipped (on_error: skip)"
            for name, splits in record["datasets"].items()
            for split, info in splits.items()
            if info.get("skipped")
        ]
        + [
            f"dataset {name}/{split}: {dup['count']} item(s) have the same content as items of "
            f"split {other!r} (e.g. {', '.join(f'{a} = {b}' for a, b in dup['examples'])}); "
            f"set datasets.{name}.drop_cross_split_duplicates: true to drop them"
            for name, splits in record["datasets"].items()
            for split, info in splits.items()
            for other, dup in info.get("duplicates_of", {}).items()
        ]
    )
    _write_record(run_dir, record)
    if report:
        from vlprobe.report.html import write_report

        write_report(run_dir)
    return run_dir


def _write_record(run_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_text(run_dir / "run.json", json.dumps(record, indent=1, default=str))


def _read_previous(run_dir: Path) -> dict[str, Any]:
    """The ``run.json`` an earlier run of the same config left (empty if none)."""
    try:
        return json.loads((run_dir / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
