"""The Ray executor: the runs of a config (one, or a sweep's) as Ray tasks.

``vlprobe run CONFIG --executor ray [--address auto|HOST:PORT]``. The driver (this process)
plans every run with the local executor's planning code (:func:`vlprobe.runner.start_run`:
build and validate the analyses, ask the result cache, merge feature requests into
extraction groups; no model weights are loaded), then submits:

- one **extraction task** per :class:`~vlprobe.feature_source.ExtractionGroup` (one model
  forward pass over one stimuli view), requesting a GPU when the run's device is CUDA and
  the memory :func:`~vlprobe.executors.resources.extraction_memory` estimates. A group is
  the unit, not a shard range of it: :func:`~vlprobe.extract.extract_features` holds the
  store locks of every key of a group from its cache check to its read-back, and
  :meth:`~vlprobe.extract.store.ActivationStore.finalize` verifies and consolidates an
  entry once, after all its shards; shard-range tasks of one group would therefore run one
  after another on the same locks (no parallelism) and need a separate finalize step. Groups
  of different models / datasets / poolings run in parallel. Identical groups of several
  runs of a sweep (e.g. a seeds axis) are extracted once;
- one **analysis task** per analysis the result cache does not hold, depending on the
  extraction tasks of the features it requested (Ray starts it when they are done).

Workers re-create the run's feature source from the config
(:mod:`vlprobe.executors.tasks`). Results come back to the driver, which writes the result
tables, the result cache, ``run.json`` and the report exactly as the local executor does
(:func:`vlprobe.run_results.settle_analyses`).

Faults: a task whose worker dies (killed, out of memory, node lost) is retried up to
``max_retries`` times and gives the same numbers (seeded; a retried extraction resumes from
the shards its first attempt committed: the store's sidecars mark committed shards and its
file locks are released by the OS when a holder dies). An analysis that raises, or whose task
still dies after its retries, is marked failed in ``run.json``; the other analyses complete.
Exceptions are not retried (they would fail again).

Before anything runs, :func:`check_shared_storage` makes a task on every node write a probe
file into its activation store root and the driver read it: the store must be storage every
node sees, at the same path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlprobe.config import RunConfig
from vlprobe.errors import ConfigError, StoreError
from vlprobe.executors import tasks
from vlprobe.executors.resources import extraction_memory, wants_gpu
from vlprobe.run_plan import TODO
from vlprobe.run_results import Computed, settle_analyses
from vlprobe.runner import RunState, finish_run, start_run

log = logging.getLogger("vlprobe")

RAY_MISSING = (
    "--executor ray needs Ray, which is not installed: pip install 'vlprobe[ray]' "
    "(or pip install ray)"
)


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


@dataclass
class RayExecutor:
    """Runs configs as Ray tasks (see the module docstring).

    Attributes:
        address: the cluster: None = ``RAY_ADDRESS`` or a new local cluster on this machine;
            ``"auto"`` = the cluster this machine belongs to (``ray start``); ``HOST:PORT``.
            Ignored when this process already called ``ray.init``.
        max_retries: retries of a task whose worker died.
        runtime_env: Ray runtime environment of every task (e.g. ``{"env_vars": {...}}``).
        init_kwargs: further ``ray.init`` arguments when this executor connects.
        storage_timeout_s: how long the shared-storage probe may take.
    """

    address: str | None = None
    max_retries: int = 3
    runtime_env: dict[str, Any] | None = None
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    storage_timeout_s: float = 120.0

    def run(
        self,
        runs: list[tuple[RunConfig, dict[str, Any] | None]],
        *,
        skip_existing: bool = False,
        force: bool = False,
        progress: bool = True,
        report: bool = True,
        config_path: str | None = None,
    ) -> list[Path]:
        """Execute the runs (one config, or the points of a sweep) together; return their
        directories in order. Raises (before anything is written) :class:`StoreError` when
        the activation store is not shared by every node, :class:`ConfigError` for device
        ``cuda`` on a cluster without GPUs."""
        ray = import_ray()
        started_here = False
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, **self.init_kwargs}
            if self.address:
                kwargs["address"] = self.address
            try:
                ray.init(**kwargs)
            except ConnectionError as exc:
                raise ConfigError(f"--address {self.address}: no Ray cluster to connect to "
                                  f"({exc}); start one with `ray start --head`") from None
            started_here = True
        try:
            for cfg, _ in runs:  # refuse device: cuda on a cluster without GPUs up front
                wants_gpu(ray, cfg)
            check_shared_storage(ray, [cfg for cfg, _ in runs], runtime_env=self.runtime_env,
                                 timeout_s=self.storage_timeout_s)
            states = [start_run(cfg, skip_existing=skip_existing, force=force,
                                progress=progress, config_path=config_path, sweep=sweep,
                                executor="ray") for cfg, sweep in runs]
            submitted = self._submit(ray, states)
            return [self._settle(ray, state, *parts, report=report)
                    for state, parts in zip(states, submitted)]
        finally:
            if started_here:
                ray.shutdown()

    # -- submission ------------------------------------------------------------------------
    def _options(self, gpu: bool, **extra: Any) -> dict[str, Any]:
        opts: dict[str, Any] = {"max_retries": self.max_retries, "retry_exceptions": False,
                                "num_gpus": 1 if gpu else 0, **extra}
        if self.runtime_env:
            opts["runtime_env"] = self.runtime_env
        return opts

    def _submit(self, ray: Any, states: list[RunState]) -> list[tuple[list, dict, float]]:
        """Submit every run's extraction and analysis tasks. Per run: ``(extractions,
        analyses, t_submit)``: extractions are ``(ref, owned)`` (``owned``: this run is the
        first that needed the group; the others read it from the store); analyses map an
        analysis name to its task's ref."""
        extract = ray.remote(tasks.extract_group)
        compute = ray.remote(tasks.compute)
        shared: dict[str, Any] = {}
        out = []
        for state in states:
            cfg, plan = state.cfg, state.plan
            gpu = wants_gpu(ray, cfg)
            t_submit = time.perf_counter()
            extractions, by_view = [], {}
            for group in plan.groups:
                key = _group_identity(cfg, group)
                owned = key not in shared
                if owned:
                    memory = extraction_memory(ray, cfg, group, state.source)
                    shared[key] = extract.options(**self._options(
                        gpu, memory=memory, name=f"extract {group.model}/{group.dataset}"
                    )).remote(cfg, group)
                extractions.append((shared[key], owned))
                by_view.setdefault(_view(group), []).append(shared[key])
            analyses = {}
            for item in plan.by_state(TODO):
                deps = {id(ref): ref for r in item.requests for ref in by_view.get(_view(r), [])}
                analyses[item.entry.name] = compute.options(**self._options(
                    gpu, name=f"analysis {item.entry.name}"
                )).remote(cfg, item, *deps.values())
            out.append((extractions, analyses, t_submit))
        return out

    # -- collection ------------------------------------------------------------------------
    def _settle(
        self, ray: Any, state: RunState, extractions: list, analyses: dict, t_submit: float,
        *, report: bool,
    ) -> Path:
        """Collect one run's task results on the driver and write the run like the local
        executor does."""
        record, source = state.record, state.source
        errors = list(state.plan.errors)
        for (ref, owned), group in zip(extractions, state.plan.groups):
            try:
                done = ray.get(ref)
            except ray.exceptions.RayError as exc:
                errors.append(f"{group.model} on {group.dataset}/{group.split}: extraction "
                              f"task failed: {_ray_message(exc)}")
                continue
            errors.extend(done["errors"] if owned else [])
            source.log.extend(done["log"] if owned else [_from_store(e) for e in done["log"]])
        record["extraction_errors"] = errors
        for error in errors:
            log.error("extraction failed: %s", error)
        record["timings"]["extraction_s"] = round(time.perf_counter() - t_submit, 3)

        def fetch(item: Any) -> Computed:
            try:
                computed = tasks.unpack(ray.get(analyses[item.entry.name]))
            except ray.exceptions.RayError as exc:
                return Computed(error=f"Ray task failed: {_ray_message(exc)}")
            source.log.extend(computed.extractions)
            return computed

        settle_analyses(state.plan, fetch, run_dir=state.run_dir, record=record,
                        cache=state.cache, models=list(state.cfg.models),
                        previous=state.previous, force=state.force)
        return finish_run(state, report=report)


def check_shared_storage(
    ray: Any, cfgs: list[RunConfig], *, runtime_env: dict[str, Any] | None = None,
    timeout_s: float = 120.0,
) -> None:
    """Refuse (:class:`StoreError`) unless every node's workers see the driver's activation
    store: on every alive node a task writes a probe file into the store root it resolves
    (``cache_dir``, else its ``VLPROBE_CACHE``, else its user cache dir) and the driver must
    read it under its own root. One probe round per distinct ``cache_dir`` of ``cfgs``."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    write = ray.remote(tasks.write_probe)
    remove = ray.remote(tasks.remove_probe)
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    seen: set[str | None] = set()
    for cfg in cfgs:
        if cfg.cache_dir in seen:
            continue
        seen.add(cfg.cache_dir)
        token = uuid.uuid4().hex
        refs = {}
        for node in nodes:
            opts: dict[str, Any] = {"num_cpus": 0, "max_retries": 0, "scheduling_strategy":
                                    NodeAffinitySchedulingStrategy(node, soft=False)}
            if runtime_env:
                opts["runtime_env"] = runtime_env
            refs[node] = (write.options(**opts).remote(cfg, token), opts)
        try:
            probes = {node: ray.get(ref, timeout=timeout_s) for node, (ref, _) in refs.items()}
        except ray.exceptions.GetTimeoutError:
            raise StoreError(f"shared-storage check: the probe tasks did not finish within "
                             f"{timeout_s:.0f} s (are the nodes' workers starting?)") from None
        driver_root = tasks.activation_root(cfg)
        problems, removals = [], []
        for node, probe in probes.items():
            seen_path = driver_root / tasks.PROBE_DIR / probe["name"]
            if not probe["error"] and _reads(seen_path) == token:
                seen_path.unlink(missing_ok=True)
                continue
            problems.append(
                f"a worker on {probe['host']} (node {node[:8]}) "
                + (f"could not write into its store root {probe['root']}: {probe['error']}"
                   if probe["error"] else
                   f"wrote a probe file into its store root {probe['root']} that the driver "
                   f"does not see under its store root {driver_root}"))
            removals.append(remove.options(**refs[node][1]).remote(probe["root"], probe["name"]))
        if problems:
            with contextlib.suppress(ray.exceptions.RayError):
                ray.get(removals, timeout=timeout_s)  # tidy the workers' store roots
            raise StoreError(
                "the activation store is not on storage every Ray node sees: "
                + "; ".join(problems)
                + ". Put it on a shared directory mounted at the same path on every node "
                "(e.g. NFS) and name it in the config (cache_dir: /shared/vlprobe-cache) or "
                "in VLPROBE_CACHE on every node before `ray start`"
            )


def _reads(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _view(obj: Any) -> tuple[Any, ...]:
    """The stimuli view of a request or group: what links an analysis to its extractions."""
    return (obj.model, obj.dataset, obj.split, obj.view, tuple(obj.templates or ()),
            None if obj.class_names is None else tuple(obj.class_names))


def _group_identity(cfg: RunConfig, group: Any) -> str:
    """What makes two runs' groups the same extraction: the model and dataset entries (not
    their keys in the config), the extraction settings, device, store location and the
    group's sites and view."""
    data = {
        "model": dataclasses.asdict(cfg.models[group.model]),
        "dataset": dataclasses.asdict(cfg.datasets[group.dataset]),
        "extraction": dataclasses.asdict(cfg.extraction),
        "device": cfg.device, "cache_dir": cfg.cache_dir,
        "group": {**dataclasses.asdict(group), "model": None, "dataset": None},
    }
    return json.dumps(data, sort_keys=True, default=str)


def _from_store(entry: Any) -> Any:
    """Another run's extraction log entry as this run sees it: read from the store."""
    return dataclasses.replace(entry, n_forward_batches=0, n_items_computed=0,
                               seconds_model=0.0, seconds_total=0.0)


def _ray_message(exc: BaseException) -> str:
    """A Ray error in one line: its type and the first line of its message."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()
