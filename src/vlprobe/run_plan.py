"""Planning a run: which analyses to compute, which results the cache holds, and which
extraction groups (one model forward pass each) the computed ones need.

:func:`plan_run` does all the cheap work (build and validate every analysis, look up the
result cache, collect and merge feature requests) and touches no model weights;
:func:`vlprobe.runner.execute_plan` then does the heavy work locally. A distributed executor
takes the same :class:`RunPlan` and ships its groups and analyses elsewhere.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vlprobe.analyses.base import Analysis, FeatureRequest
from vlprobe.config import AnalysisEntry, RunConfig
from vlprobe.errors import VLProbeError
from vlprobe.results.cache import CachedResult, ResultCache, current_read, plan_key_dict

if TYPE_CHECKING:
    from vlprobe.feature_source import ExtractionGroup

log = logging.getLogger("vlprobe")

#: states of a planned analysis
TODO, CACHED, FAILED, KEPT = "todo", "cached", "failed", "kept"


@dataclass
class PlannedAnalysis:
    """One configured analysis and what the run will do with it.

    Attributes:
        entry: its config entry (``entry.name`` names its result files).
        analysis: the built analysis (None when building failed).
        state: ``todo`` (compute), ``cached`` (the result cache has it), ``failed``
            (building or planning failed: ``error``) or ``kept`` (``--skip-existing`` and
            its result files exist).
        plan_key: the result-cache plan key dict (see :mod:`vlprobe.results.cache`).
        cached: the cache hit (state ``cached``).
        requests: the features it asked for (state ``todo``).
        error: why it failed.
        traceback: the traceback where the failure was a bug (not a :class:`VLProbeError`).
    """

    entry: AnalysisEntry
    analysis: Analysis | None
    state: str
    plan_key: dict[str, Any] | None = None
    cached: CachedResult | None = None
    requests: list[FeatureRequest] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None

    def fail(self, exc: BaseException) -> None:
        """Mark failed: a :class:`VLProbeError` by its message, a bug with its traceback."""
        self.state = FAILED
        if isinstance(exc, VLProbeError):
            self.error = str(exc)
        else:
            self.error = f"{type(exc).__name__}: {exc}"
            self.traceback = traceback.format_exc()


@dataclass
class RunPlan:
    """Analyses with their states and the extraction groups the ``todo`` ones need.

    ``groups`` holds one :class:`~vlprobe.feature_source.ExtractionGroup` per (model, stimuli
    view, modality, pooling) with explicit sites (attention sites join the first pooling's
    group): extracting a group is one forward pass over its items.
    ``errors`` are requests that could not be resolved (reported as run warnings; the
    analyses that made them fail again, with the same error, when they run).
    """

    analyses: list[PlannedAnalysis]
    groups: list[ExtractionGroup]
    errors: list[str] = field(default_factory=list)

    def by_state(self, state: str) -> list[PlannedAnalysis]:
        return [p for p in self.analyses if p.state == state]


def build_analysis(cfg: RunConfig, entry: AnalysisEntry) -> Analysis:
    """The analysis instance of a config entry (its params validated)."""
    from vlprobe.analyses import ANALYSES

    return ANALYSES.get(entry.analysis)(
        list(entry.models), entry.dataset, entry.params, seed=cfg.seed
    )


def plan_run(
    cfg: RunConfig,
    source: Any,
    *,
    cache: ResultCache | None,
    versions: dict[str, str],
    keep: set[str] = frozenset(),  # type: ignore[assignment]
) -> RunPlan:
    """Plan a run.

    Args:
        cfg: the run config.
        source: the run's feature source (``RunFeatureSource``: loads datasets and adapter
            identities on demand; no model forward pass happens here).
        cache: the result cache, or None to compute every analysis (``--force``).
        versions: package versions (part of every result-cache key).
        keep: names of analyses whose existing result files are kept (``--skip-existing``).

    Raises:
        ConfigError: an analysis' parameters are invalid (before anything is loaded).
    """
    built = [(entry, build_analysis(cfg, entry)) for entry in cfg.analyses]  # bad params raise
    planned: list[PlannedAnalysis] = []
    for entry, analysis in built:
        if entry.name in keep:
            planned.append(PlannedAnalysis(entry, analysis, KEPT))
            continue
        item = PlannedAnalysis(entry, analysis, TODO,
                               plan_key=plan_key_dict(analysis, source.device, versions))
        if cache is not None:
            item.cached = cache.lookup(item.plan_key, lambda read: current_read(source, read))
            if item.cached is not None:
                item.state = CACHED
                log.info("%s: result cache hit %s", entry.name, item.cached.key)
        if item.state == TODO:
            try:
                item.requests = list(analysis.requests(source))
            except Exception as exc:
                item.fail(exc)
        planned.append(item)
    requests = [r for p in planned if p.state == TODO for r in p.requests]
    groups, errors = source.group_requests(requests)
    return RunPlan(planned, groups, errors)
