"""What a worker does: plain functions, called by the Ray executor's remote tasks (and
testable without Ray).

A worker re-creates the run's :class:`~vlprobe.feature_source.RunFeatureSource` from the
run config (datasets and models load on first use; the activation store root is resolved
in the worker's own environment: ``cache_dir`` or its ``VLPROBE_CACHE``), so only the
config, an extraction group or a planned analysis travel to it, and only logs and results
travel back. A worker process keeps the source of the last run config it served (Ray reuses
worker processes), so the tasks of one run share loaded datasets and model weights.
"""

from __future__ import annotations

import os
import pickle
import socket
import uuid
from pathlib import Path
from typing import Any

from vlprobe.config import RunConfig

PROBE_DIR = ".probes"  # under the activation store root (hidden: not a store entry)

_SOURCE: tuple[str, Any] | None = None


def worker_source(cfg: RunConfig) -> Any:
    """The run's feature source in this process (the last config's source is reused)."""
    global _SOURCE
    from vlprobe.feature_source import RunFeatureSource

    key = f"{cfg.config_hash()}|{cfg.cache_dir}|{os.environ.get('VLPROBE_CACHE')}"
    if _SOURCE is None or _SOURCE[0] != key:
        _SOURCE = (key, RunFeatureSource(cfg, progress=False))
    return _SOURCE[1]


def extract_group(cfg: RunConfig, group: Any) -> dict[str, Any]:
    """Extract one :class:`~vlprobe.feature_source.ExtractionGroup` into the store (a store
    hit costs no forward pass). Returns ``{"errors": [...], "log": [ExtractionLog, ...]}``:
    errors are the user errors (bad data, missing weights) the local executor reports as
    run warnings; a bug raises (the task fails and its analyses are marked failed)."""
    source = worker_source(cfg)
    before = len(source.log)
    errors = source.extract_groups([group])
    return {"errors": errors, "log": source.log[before:], "host": socket.gethostname()}


def compute(cfg: RunConfig, item: Any, *after: Any) -> bytes:
    """Compute one planned ``todo`` analysis on the worker's source; returns a pickled
    :class:`~vlprobe.run_results.Computed` (:func:`unpack`) carrying the extraction log
    entries the analysis made itself (derived stimuli). Never raises for a failing
    analysis. ``after``: the results of the extraction tasks it waited for (unused: Ray
    passes them once done).

    Pickled here, not by Ray, because Ray hands numpy arrays back as read-only views of its
    object store, and the driver draws into the result's figures (their arrays must be
    writable)."""
    from vlprobe.run_results import Computed, compute_analysis

    source = worker_source(cfg)
    before = len(source.log)
    computed = compute_analysis(item, source)
    computed.extractions = source.log[before:]
    try:
        return pickle.dumps(computed, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # a result that cannot travel to the driver
        return pickle.dumps(Computed(error=f"the result cannot be sent to the driver "
                                           f"({type(exc).__name__}: {exc})"))


def unpack(payload: bytes) -> Any:
    """The :class:`~vlprobe.run_results.Computed` a :func:`compute` task returned."""
    return pickle.loads(payload)


def activation_root(cfg: RunConfig) -> Path:
    """The activation store root a :class:`RunFeatureSource` of ``cfg`` uses in this
    process (``cfg.cache_dir``, else ``VLPROBE_CACHE``, else the user cache dir)."""
    from vlprobe.feature_source import _activation_root
    from vlprobe.settings import cache_dir

    return Path(_activation_root(cfg.cache_dir or cache_dir()))


def write_probe(cfg: RunConfig, token: str) -> dict[str, str]:
    """Write a probe file into this process' activation store root (the shared-storage
    check): ``<root>/.probes/<token>-<random>``, holding the token. Returns where it wrote
    (or why it could not)."""
    root = activation_root(cfg)
    name = f"{token}-{uuid.uuid4().hex[:8]}"
    out = {"host": socket.gethostname(), "root": str(root), "name": name, "error": ""}
    try:
        (root / PROBE_DIR).mkdir(parents=True, exist_ok=True)
        (root / PROBE_DIR / name).write_text(token)
    except OSError as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def remove_probe(root: str, name: str) -> None:
    """Remove a probe file (run where it was written)."""
    (Path(root) / PROBE_DIR / name).unlink(missing_ok=True)
