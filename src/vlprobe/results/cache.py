"""The analysis-result cache: a rerun does not fit its probes again.

Where: ``<cache_dir>/results/`` beside the activation store (``<cache_dir>/activations/``),
not in the run directory. A result is a pure function of its key, so any run directory whose
analysis has the same key reuses it: adding an analysis to a config (a new config hash, a new
run directory) recomputes only the new analysis, and two configs sharing an analysis share
its result. ``vlprobe cache ls / gc`` see these entries too.

The key is the sha256 of the canonical JSON of everything that changes a result:

- the *plan* (:func:`plan_key_dict`): analysis name, its class and its ``version`` class
  attribute (bumped by hand when its numbers change), models, dataset, resolved params,
  seed, the device type, and the versions of vlprobe and the numeric libraries
  (numpy, scipy, scikit-learn, torch, pandas, matplotlib, ...);
- the *reads*: the activation-store key of every feature the analysis read through the
  :class:`~vlprobe.analyses.base.FeatureSource` (these hold the model identity, the data
  fingerprint, pooling, site and the extraction software versions) and the identity of
  every stimuli set it read directly.

The reads are known only after the analysis ran, so they are recorded (a
:class:`RecordingSource` wraps the run's source) and stored with the result: an entry lives
in ``results/<plan key>/<full key>/`` and a lookup recomputes the current keys of the
recorded reads (no model forward pass, no feature read) and accepts the entry whose full
key matches. ``result.pkl`` holds the :class:`~vlprobe.analyses.base.Result` (tables and
unrendered matplotlib figures, so each run styles them with its own palette); a pickle
that does not load (other library versions) is a miss. The cache directory is the user's
own: never point it at files from someone you do not trust (pickle).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlprobe.analyses.base import Analysis, FeatureRequest, LayerFeatures, Result
from vlprobe.extract.keys import canonical_json, hash_key

log = logging.getLogger("vlprobe")

#: bump when the layout of a cache entry changes.
RESULT_CACHE_FORMAT = 1


def _canonical(value: Any) -> Any:
    """``value`` as the JSON the keys hash (tuples as lists, numpy scalars as numbers)."""
    return json.loads(canonical_json(value))


def plan_key_dict(analysis: Analysis, device: str, versions: dict[str, str]) -> dict[str, Any]:
    """What changes a result besides the features it reads (see the module docstring)."""
    cls = type(analysis)
    return {
        "analysis": cls.name,
        "analysis_version": str(cls.version),
        "implementation": f"{cls.__module__}:{cls.__qualname__}",
        "models": list(analysis.models),
        "dataset": analysis.dataset,
        "params": _canonical(analysis.params),
        "seed": int(analysis.seed),
        "device": str(device).split(":", 1)[0],  # cuda:0 and cuda:1 compute alike
        "versions": {k: v for k, v in versions.items() if k != "python"},
        "format": RESULT_CACHE_FORMAT,
    }


def request_dict(request: FeatureRequest) -> dict[str, Any]:
    """A :class:`FeatureRequest` as JSON (tuples as lists)."""
    return _canonical(asdict(request))


def request_from_dict(data: dict[str, Any]) -> FeatureRequest:
    """Inverse of :func:`request_dict`."""
    data = dict(data)
    for name in ("sites", "templates", "attention", "class_names"):
        if data.get(name) is not None:
            data[name] = tuple(data[name])
    return FeatureRequest(**data)


def full_key(plan: dict[str, Any], reads: list[dict[str, Any]]) -> str:
    """The cache key of a result: its plan and what it read (order-free, counts dropped)."""
    keyed = sorted(
        ({k: v for k, v in r.items() if k not in ("n_items", "n_truncated")} for r in reads),
        key=lambda r: json.dumps(r, sort_keys=True),
    )
    return hash_key({"plan": plan, "reads": keyed})


class RecordingSource:
    """A :class:`~vlprobe.analyses.base.FeatureSource` that records what an analysis reads.

    ``reads`` collects one dict per distinct read: ``{"kind": "features", "request",
    "keys": {site: store key}, "n_items", "n_truncated"}`` or ``{"kind": "stimuli",
    "request", "identity"}``. ``cacheable`` turns False when a feature did not come from
    the store (no key to depend on).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reads: list[dict[str, Any]] = []
        self.cacheable = True

    def __getattr__(self, name: str) -> Any:  # device, splits, layer_sites, ...
        return getattr(self.inner, name)

    def _add(self, read: dict[str, Any]) -> None:
        if read not in self.reads:
            self.reads.append(read)

    def get(self, request: FeatureRequest) -> LayerFeatures:
        feats = self.inner.get(request)
        if not feats.keys:
            self.cacheable = False
        self._add({"kind": "features", "request": request_dict(request),
                   "keys": dict(feats.keys), "n_items": len(feats.ids),
                   "n_truncated": int(feats.n_truncated)})
        return feats

    def extract(self, model: str, stimuli: Any, modality: str, sites: tuple[str, ...],
                pooling: str | None = None) -> LayerFeatures:
        """Features of stimuli the analysis built; they are a function of the analysis'
        params (in the plan key), of what it read (recorded) and of the model, whose identity
        is recorded here."""
        feats = self.inner.extract(model, stimuli, modality, sites, pooling)
        if not feats.keys:
            self.cacheable = False
        self._add({"kind": "model", "model": model, "identity": self.inner.model_key(model)})
        return feats

    def stimuli(self, request: FeatureRequest) -> Any:
        stimuli = self.inner.stimuli(request)
        self._add({"kind": "stimuli", "request": request_dict(request),
                   "identity": self.inner.stimuli_key(request)})
        return stimuli


def current_read(source: Any, read: dict[str, Any]) -> dict[str, Any]:
    """``read`` with its keys recomputed from the run's source as it is now."""
    if read["kind"] == "model":
        return {**read, "identity": source.model_key(read["model"])}
    request = request_from_dict(read["request"])
    if read["kind"] == "features":
        return {**read, "keys": source.feature_keys(request)}
    if read["kind"] == "stimuli":
        return {**read, "identity": source.stimuli_key(request)}
    raise ValueError(f"unknown read kind {read['kind']!r}")


@dataclass
class CachedResult:
    """A cache hit: the result, its key, what it read and how long it took to compute."""

    result: Result
    key: str
    reads: list[dict[str, Any]]
    seconds: float
    created: str


class ResultCache:
    """Analysis results on disk under ``root`` (``<cache_dir>/results``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def lookup(
        self, plan: dict[str, Any], current: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> CachedResult | None:
        """The entry of ``plan`` whose recorded reads still have the same keys, or None.

        ``current(read)`` returns the read with today's keys; it may raise (a dataset or
        model that no longer loads): that entry is then a miss.
        """
        plan_dir = self.root / hash_key(plan)
        if not plan_dir.is_dir():
            return None
        entries = sorted(plan_dir.iterdir(), key=_mtime, reverse=True)  # newest first
        for entry in entries:
            meta = _read_json(entry / "meta.json")
            if meta is None or meta.get("plan") != _canonical(plan):
                continue
            try:
                now = [current(read) for read in meta["reads"]]
            except Exception as exc:  # cannot recompute a key: not a hit, not an error
                log.debug("result cache %s: %s", entry.name, exc)
                continue
            key = full_key(plan, now)
            if key != entry.name or key != meta.get("key"):
                continue
            try:
                with open(entry / "result.pkl", "rb") as fh:
                    result = pickle.load(fh)
            except Exception as exc:  # other library versions, a truncated file: recompute
                log.warning("result cache entry %s does not load (%s); recomputing", entry, exc)
                continue
            if not isinstance(result, Result):
                continue
            with contextlib.suppress(OSError):  # a read-only cache is used as it is
                os.utime(entry / "meta.json")  # for `cache gc --older-than`: last use
            return CachedResult(result, key, meta["reads"], float(meta.get("seconds", 0.0)),
                                str(meta.get("created", "")))
        return None

    def store(
        self, plan: dict[str, Any], reads: list[dict[str, Any]], result: Result, seconds: float
    ) -> str:
        """Write an entry (atomically: temp dir + rename) and return its key."""
        key = full_key(plan, reads)
        plan_dir = self.root / hash_key(plan)
        plan_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=plan_dir, prefix=f".{key}."))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0o700; entries are as readable as files
        try:
            with open(tmp / "result.pkl", "wb") as fh:
                pickle.dump(result, fh, protocol=pickle.HIGHEST_PROTOCOL)
            meta = {
                "key": key, "plan": _canonical(plan), "reads": reads,
                "seconds": round(seconds, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            final = plan_dir / key
            if final.exists():  # --force, or another process: the newest result wins
                # rename first (atomic), so a reader never sees a half-deleted entry
                old = plan_dir / f".old-{key}.{os.getpid()}.{time.monotonic_ns()}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return key


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mtime(path: Path) -> float:
    try:
        return (path / "meta.json").stat().st_mtime
    except OSError:
        return 0.0


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


@dataclass
class ResultGcAction:
    """One result-cache entry (or leftover temp dir) removed, or that would be removed."""

    path: Path
    reason: str
    nbytes: int
    removed: bool


def collect_result_garbage(
    cache: ResultCache, *, stale: bool = False, older_than_days: float | None = None,
    tmp_older_than_s: float = 3600.0, dry_run: bool = False,
) -> list[ResultGcAction]:
    """Remove result-cache entries no run can use: temp dirs of killed writers (older than
    ``tmp_older_than_s``), unreadable entries, entries made by another vlprobe version
    (``stale``) and entries not used for ``older_than_days`` days (a hit refreshes the
    time). An entry whose inputs changed is never hit again; ``older_than_days`` reclaims it.
    """
    from vlprobe import __version__

    actions: list[ResultGcAction] = []
    if not cache.root.is_dir():
        return actions
    now = time.time()
    for plan_dir in sorted(p for p in cache.root.iterdir() if p.is_dir()):
        for entry in sorted(p for p in plan_dir.iterdir() if p.is_dir()):
            why = None
            if entry.name.startswith("."):
                if now - entry.stat().st_mtime >= tmp_older_than_s:
                    why = "leftover temp dir"
            else:
                meta = _read_json(entry / "meta.json")
                version = ((meta or {}).get("plan") or {}).get("versions", {}).get("vlprobe")
                if meta is None:
                    why = "unreadable (no meta.json)"
                elif stale and version != __version__:
                    why = f"stale (vlprobe {version})"
                elif older_than_days is not None:
                    age = (now - _mtime(entry)) / 86400
                    if age > older_than_days:
                        why = f"last used {age:.1f} days ago"
            if why is None:
                continue
            size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
            actions.append(ResultGcAction(entry, why, size, not dry_run))
            if not dry_run:
                shutil.rmtree(entry, ignore_errors=True)
        if not dry_run and not any(plan_dir.iterdir()):
            plan_dir.rmdir()
    return actions


def result_cache_summary(cache: ResultCache) -> tuple[int, int]:
    """``(number of entries, bytes)`` of the result cache."""
    n = size = 0
    if cache.root.is_dir():
        for meta in cache.root.glob("*/*/meta.json"):
            n += 1
            size += sum(f.stat().st_size for f in meta.parent.iterdir() if f.is_file())
    return n, size
