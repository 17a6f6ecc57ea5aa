"""Sweeps: one config file that expands into several runs.

A config with a top-level ``sweep:`` block is a sweep. Each axis lists values; the runs are
the cartesian product of the axes given (in the order models, datasets, seeds)::

    name: compare
    sweep:
      models: [vit_a, vit_b, [vit_a, vit_b]]   # an item: one model key or a list of keys
      datasets: [colours, shapes]              # an item: one dataset key
      seeds: [0, 1]                            # an item: an integer seed
    models: {vit_a: {...}, vit_b: {...}}
    datasets: {colours: {...}, shapes: {...}}
    analyses:
      - {analysis: V1, models: [vit_a, vit_b], dataset: colours}
      - {analysis: V1, models: [vit_a, vit_b], dataset: shapes}

For each point of the product, the run config is the file's config with:

- ``models`` axis: only the point's models in ``models``; every analysis keeps only the
  point's models of its ``models`` list (an analysis left with none is dropped);
- ``datasets`` axis: only the analyses whose ``dataset`` is the point's dataset; ``datasets``
  keeps the datasets those analyses use (``dataset`` and ``params.datasets``);
- ``seeds`` axis: ``seed`` set to the point's seed;
- ``name``: ``<name>-<model keys>-<dataset>-s<seed>`` (only the axes swept).

So every run of a sweep is an ordinary run (its own directory, run.json, report) that records
its place in the sweep (``run.json["sweep"]``: name, id, index, size, point); ``vlprobe ls``
shows a sweep's runs together. The local executor runs them one after the other; the Ray
executor schedules all their tasks together. A run of one point is the same run (same
config hash, same directory) as the expanded config run on its own.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from typing import Any

from vlprobe.config import RunConfig, apply_overrides, load_yaml, parse_config
from vlprobe.errors import ConfigError

AXES = ("models", "datasets", "seeds")


def is_sweep(data: dict[str, Any]) -> bool:
    """Whether a raw config tree is a sweep (has a ``sweep`` block)."""
    return isinstance(data, dict) and "sweep" in data


def expand_sweep(data: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The runs of a raw sweep config: ``(raw run config, sweep record)`` per point.

    The sweep record (``run.json["sweep"]``) is ``{"name", "id", "index", "size", "point"}``;
    ``id`` is ``<name>-<hash of the sweep config>``, the same for every run of the sweep.

    Raises:
        ConfigError: a malformed ``sweep`` block (naming the axis and item), or a point
            left without any analysis.
    """
    data = copy.deepcopy(data)
    sweep = data.pop("sweep")
    if not isinstance(sweep, dict) or not sweep:
        raise ConfigError(f"sweep: expected a mapping with one or more of {', '.join(AXES)}")
    for key in sweep:
        if key not in AXES:
            raise ConfigError(f"sweep: unknown axis {key!r}; known axes: {', '.join(AXES)}")
    models = data.get("models") if isinstance(data.get("models"), dict) else {}
    datasets = data.get("datasets") if isinstance(data.get("datasets"), dict) else {}
    axes: list[tuple[str, list[Any]]] = []
    if "models" in sweep:
        axes.append(("models", [_model_item(i, v, models) for i, v in
                                enumerate(_axis(sweep, "models"))]))
    if "datasets" in sweep:
        axes.append(("datasets", [_dataset_item(i, v, datasets) for i, v in
                                  enumerate(_axis(sweep, "datasets"))]))
    if "seeds" in sweep:
        axes.append(("seeds", [_seed_item(i, v) for i, v in enumerate(_axis(sweep, "seeds"))]))
    name = str(data.get("name", "sweep"))
    digest = hashlib.sha256(json.dumps({"sweep": sweep, "config": data}, sort_keys=True,
                                       default=str).encode()).hexdigest()[:10]
    points = list(itertools.product(*(values for _, values in axes)))
    runs = []
    for index, values in enumerate(points):
        point = dict(zip((axis for axis, _ in axes), values))
        raw = _apply_point(data, point, name)
        record = {"name": name, "id": f"{name}-{digest}", "index": index, "size": len(points),
                  "point": {("dataset" if k == "datasets" else "seed" if k == "seeds" else k): v
                            for k, v in point.items()}}
        runs.append((raw, record))
    return runs


def load_runs(
    path: str, overrides: list[str] | None = None
) -> list[tuple[RunConfig, dict[str, Any] | None]]:
    """The runs of a config file: ``[(config, None)]`` for a plain config, one
    ``(config, sweep record)`` per point for a sweep (``--set`` overrides apply to the file
    before it is expanded). Every run config is validated before any runs."""
    data = apply_overrides(load_yaml(path), overrides or [])
    if not is_sweep(data):
        return [(parse_config(data), None)]
    runs = []
    for raw, record in expand_sweep(data):
        try:
            runs.append((parse_config(raw), record))
        except ConfigError as exc:
            raise ConfigError(f"sweep point {record['index']} ({raw.get('name')}): {exc}") from None
    return runs


def _axis(sweep: dict[str, Any], axis: str) -> list[Any]:
    values = sweep[axis]
    if not isinstance(values, list) or not values:
        raise ConfigError(f"sweep.{axis}: expected a non-empty list, got {values!r}")
    if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
        raise ConfigError(f"sweep.{axis}: an item is listed twice")
    return values


def _model_item(index: int, value: Any, models: dict[str, Any]) -> list[str]:
    keys = [value] if isinstance(value, str) else value
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise ConfigError(f"sweep.models[{index}]: expected a model key or a list of model "
                          f"keys, got {value!r}")
    for key in keys:
        if key not in models:
            raise ConfigError(f"sweep.models[{index}]: {key!r} is not a key of `models`; "
                              f"defined: {', '.join(models)}")
    return list(keys)


def _dataset_item(index: int, value: Any, datasets: dict[str, Any]) -> str:
    if not isinstance(value, str) or value not in datasets:
        raise ConfigError(f"sweep.datasets[{index}]: {value!r} is not a key of `datasets`; "
                          f"defined: {', '.join(datasets)}")
    return value


def _seed_item(index: int, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"sweep.seeds[{index}]: expected an integer, got {value!r}")
    return value


def _apply_point(data: dict[str, Any], point: dict[str, Any], name: str) -> dict[str, Any]:
    """The raw run config of one point (see the module docstring)."""
    raw = copy.deepcopy(data)
    analyses = [a for a in raw.get("analyses") or [] if isinstance(a, dict)]
    label = []
    if "models" in point:
        keep = point["models"]
        raw["models"] = {k: v for k, v in raw["models"].items() if k in keep}
        for entry in analyses:
            listed = entry.get("models")
            listed = [listed] if isinstance(listed, str) else list(listed or [])
            entry["models"] = [m for m in listed if m in keep]
        analyses = [a for a in analyses if a["models"]]
        label.append("+".join(keep))
    if "datasets" in point:
        analyses = [a for a in analyses if a.get("dataset") == point["datasets"]]
        used = {point["datasets"]}
        for entry in analyses:
            extra = (entry.get("params") or {}).get("datasets")
            used.update(extra if isinstance(extra, list) else [])
        raw["datasets"] = {k: v for k, v in raw["datasets"].items() if k in used}
        label.append(point["datasets"])
    if "seeds" in point:
        raw["seed"] = point["seeds"]
        label.append(f"s{point['seeds']}")
    raw["analyses"] = analyses
    raw["name"] = "-".join([name, *("".join(c if c.isalnum() or c in "-_" else "_" for c in part)
                                    for part in label)])
    if not analyses:
        raise ConfigError(f"sweep point {raw['name']}: no analysis uses "
                          f"{' and '.join(f'{k} {v}' for k, v in point.items())}")
    return raw
