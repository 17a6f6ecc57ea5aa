"""Computing one analysis and writing its outcome, shared by the executors.

:func:`compute_analysis` runs where the executor puts it (this process, a Ray worker) and
returns plain data (:class:`Computed`); :func:`settle_analyses` runs on the driver: it
writes each analysis' tables, figures, result-cache entry and ``run.json`` entry, in plan
order, the same way whichever executor computed the results.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlprobe.analyses.figure_style import model_palette
from vlprobe.errors import VLProbeError
from vlprobe.results.cache import RecordingSource, ResultCache
from vlprobe.results.records import atomic_write_text, write_result
from vlprobe.run_plan import CACHED, FAILED, KEPT, PlannedAnalysis, RunPlan

log = logging.getLogger("vlprobe")


@dataclass
class Computed:
    """What computing one analysis gave, in whichever process computed it (plain data: it
    travels from a worker to the driver).

    Attributes:
        result: the analysis result (None when it failed).
        reads: what it read (:class:`~vlprobe.results.cache.RecordingSource` ``reads``).
        cacheable: every feature it read came from the store.
        seconds: compute seconds.
        error: why it failed (None: it did not).
        traceback: the traceback when the failure was a bug.
        extractions: extraction log entries the computing process made (a worker's; the
            local executor's land in the run's source directly).
    """

    result: Any = None
    reads: list[dict[str, Any]] = field(default_factory=list)
    cacheable: bool = False
    seconds: float = 0.0
    error: str | None = None
    traceback: str | None = None
    extractions: list[Any] = field(default_factory=list)


def compute_analysis(item: PlannedAnalysis, source: Any) -> Computed:
    """Run one ``todo`` analysis on ``source``, recording what it reads. Never raises: a
    failure comes back in :attr:`Computed.error` (a :class:`VLProbeError` by its message, a
    bug with its traceback)."""
    recorder = RecordingSource(source)
    t0 = time.perf_counter()
    try:
        result = item.analysis.run(recorder)  # type: ignore[union-attr]
    except VLProbeError as exc:
        return Computed(error=str(exc))
    except Exception as exc:  # a bug: keep the traceback, keep the other results
        return Computed(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    return Computed(result=result, reads=recorder.reads, cacheable=recorder.cacheable,
                    seconds=time.perf_counter() - t0)


def settle_analyses(
    plan: RunPlan,
    compute: Callable[[PlannedAnalysis], Computed],
    *,
    run_dir: Path,
    record: dict[str, Any],
    cache: ResultCache | None,
    models: list[str],
    previous: dict[str, Any] | None = None,
    force: bool = False,
) -> None:
    """Write every planned analysis' outcome into ``run_dir`` and ``record`` (on the
    driver, whichever executor computed it): kept and failed ones as planned, cache hits
    from the cache, the ``todo`` ones from ``compute(item)`` (stored in the result cache).
    ``run.json`` is rewritten after each analysis."""
    palette = model_palette(models)
    for item in plan.analyses:
        name = item.entry.name
        if item.state == KEPT:
            kept = (previous or {}).get(name, {})
            record["analyses"][name] = {**kept, "status": "skipped (exists)"}
            log.info("skipping %s: result exists", name)
            continue
        if item.state == FAILED:
            record["analyses"][name] = _failure(item.error, item.traceback)
            continue
        t1 = time.perf_counter()
        earlier = (previous or {}).get(name, {})
        if _up_to_date(item, earlier, run_dir):
            # this run directory already holds exactly this result: nothing to write
            record["analyses"][name] = {**earlier, "cache": "hit",
                                        "seconds": round(time.perf_counter() - t1, 3)}
            continue
        try:
            if item.state == CACHED and item.cached is not None:
                entry = _from_cache(item.cached)
            else:
                computed = compute(item)
                if computed.error is not None:
                    record["analyses"][name] = _failure(computed.error, computed.traceback)
                    log.error("analysis %s failed: %s", name, computed.error)
                    write_record(run_dir, record)
                    continue
                entry = _store_computed(item, computed, cache, force)
            result = entry.pop("result")
            index = write_result(run_dir, name, result, run_id=record["run_id"],
                                 config_hash=record["config_hash"], palette=palette)
            record["analyses"][name] = {
                **index, "status": "ok", **entry,
                "seconds": round(time.perf_counter() - t1, 3),
            }
        except VLProbeError as exc:
            record["analyses"][name] = _failure(str(exc))
            log.error("analysis %s failed: %s", name, exc)
        except Exception as exc:  # a bug: keep the traceback, keep the other results
            record["analyses"][name] = _failure(f"{type(exc).__name__}: {exc}",
                                                traceback.format_exc())
            log.error("analysis %s crashed: %s", name, exc)
        write_record(run_dir, record)


def _up_to_date(item: PlannedAnalysis, earlier: dict[str, Any], run_dir: Path) -> bool:
    """Whether the run directory's files of this analysis are the cache hit's result
    (same cache key, written completely by an earlier run of this config)."""
    if item.state != CACHED or item.cached is None or earlier.get("status") != "ok":
        return False
    if earlier.get("cache_key") != item.cached.key:
        return False
    files = [earlier.get("table"), earlier.get("json"), *earlier.get("figures", {}).values(),
             *earlier.get("extra_tables", {}).values()]
    return all(f and (run_dir / f).is_file() for f in files)


def _from_cache(hit: Any) -> dict[str, Any]:
    """A cache hit's result and run.json fields."""
    return {"result": hit.result, "cache": "hit", "cache_key": hit.key,
            "compute_seconds": hit.seconds, "inputs": _inputs(hit.reads)}


def _store_computed(
    item: PlannedAnalysis, computed: Computed, cache: ResultCache | None, force: bool
) -> dict[str, Any]:
    """Store a computed result in the result cache (when every read was a store read) and
    return it with its run.json fields: cache state and key, compute seconds, inputs."""
    state, key = ("recomputed (--force)" if force else "computed"), None
    if cache is not None and computed.cacheable and item.plan_key is not None:
        try:
            key = cache.store(item.plan_key, computed.reads, computed.result, computed.seconds)
        except Exception as exc:  # an unwritable cache or an unpicklable figure: keep going
            state = f"{state}; not cached ({type(exc).__name__}: {exc})"
            log.warning("%s: result not cached: %s", item.entry.name, exc)
    return {"result": computed.result, "cache": state, "cache_key": key,
            "compute_seconds": round(computed.seconds, 3), "inputs": _inputs(computed.reads)}


def _inputs(reads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The features an analysis read, one compact row each (for run.json / the report)."""
    rows = []
    for read in reads:
        if read["kind"] != "features":
            continue
        req = read["request"]
        rows.append({"model": req["model"], "dataset": req["dataset"], "split": req["split"],
                     "view": req["view"], "n_items": read.get("n_items"),
                     "n_truncated": read.get("n_truncated", 0), "n_sites": len(read["keys"])})
    return rows


def _failure(error: str | None, trace: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"status": "failed", "error": error}
    if trace:
        out["traceback"] = trace
    return out


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_text(run_dir / "run.json", json.dumps(record, indent=1, default=str))
