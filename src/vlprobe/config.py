"""The run configuration: one tree (YAML, CLI overrides, Python), validated once.

A config names models, datasets and analyses::

    name: demo
    seed: 0
    models:
      effnet: {adapter: efficientnet_lite0}
    datasets:
      fmnist: {loader: fashion_mnist, subsample: {train: 1000, test: 500}}
    analyses:
      - {analysis: V1, models: [effnet], dataset: fmnist}

Validation happens once, in :func:`parse_config`, and every message names the offending field
by its path (``analyses[2].models[0]``) and says what was expected.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from vlprobe.errors import ConfigError, UnknownNameError

CONFIG_FORMAT = 1


@dataclass(frozen=True)
class ModelEntry:
    """One model of the run (see :class:`vlprobe.models.base.ModelSpec` for the fields)."""

    adapter: str
    checkpoint: str | None = None
    revision: str | None = None
    random_init: bool = False
    config: str | None = None
    seed: int = 0
    dtype: str = "float32"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of the run (see :class:`vlprobe.data.DatasetSpec` for the fields)."""

    loader: str
    path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    subsample: dict[str, int] = field(default_factory=dict)
    test_fraction: float | None = None
    seed: int = 0
    on_error: str = "raise"
    drop_cross_split_duplicates: bool = False


@dataclass(frozen=True)
class AnalysisEntry:
    """One analysis of the run.

    Attributes:
        analysis: registered name or catalogue id (``layer_probe`` or ``V1``).
        models: model keys from ``models``.
        dataset: a dataset key from ``datasets``.
        name: unique result name in the run (default: ``<analysis>_<dataset>``).
        params: analysis parameters (validated by the analysis).
    """

    analysis: str
    models: tuple[str, ...]
    dataset: str
    name: str = ""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExtractionEntry:
    """How activations are extracted.

    Attributes:
        batch_size: items per forward pass.
        shard_size: items per on-disk shard (the unit of resumption).
        text_shard_size: the shard size of text-only extractions whose outputs are pooled
            vectors (no token-level ``none`` pooling, no attention): texts are sorted by
            token count within a shard, so larger shards pad less (class-major zero-shot
            prompts: +3.9 % padded tokens against a global sort at 1,024, +0.9 % at 4,096).
            A guard of speed, not a result setting: not part of the config hash.
        bucket_by_length: sort texts by token count within a shard before batching.
        pooling: override pooling for every hidden-state site (None = adapter defaults).
        raw_attention_limit_gb: an extraction refuses raw attention (``attention: raw``)
            whose estimated size exceeds this many GB (10^9 bytes); the limit does not
            change any number, so it is not part of the config hash.
    """

    batch_size: int = 32
    shard_size: int = 1024
    text_shard_size: int = 4096
    bucket_by_length: bool = True
    pooling: str | None = None
    raw_attention_limit_gb: float = 2.0


@dataclass(frozen=True)
class RunConfig:
    """A whole run: models x datasets x analyses.

    Attributes:
        name: run name (letters, digits, ``-``, ``_``); the run directory is
            ``<output_dir>/<name>-<config hash>``.
        seed: global seed passed to every analysis.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        output_dir: parent of run directories (default: ``VLPROBE_RUNS`` or ``./vlprobe_runs``).
        cache_dir: activation store root (default: ``VLPROBE_CACHE`` or the user cache dir).
    """

    name: str
    models: dict[str, ModelEntry]
    datasets: dict[str, DatasetEntry]
    analyses: tuple[AnalysisEntry, ...]
    seed: int = 0
    device: str = "cpu"
    output_dir: str | None = None
    cache_dir: str | None = None
    extraction: ExtractionEntry = field(default_factory=ExtractionEntry)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-serialisable dict (the resolved config recorded with results)."""
        data = asdict(self)
        data["analyses"] = [dict(a, models=list(a["models"])) for a in data["analyses"]]
        return data

    def config_hash(self) -> str:
        """Hash of the settings that change results (not output/cache locations)."""
        data = self.to_dict()
        for key in ("output_dir", "cache_dir"):
            data.pop(key, None)
        for guard in ("raw_attention_limit_gb", "text_shard_size"):  # not result settings
            data["extraction"].pop(guard, None)
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


# --------------------------------------------------------------------------------------
# parsing and validation
# --------------------------------------------------------------------------------------
def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(data: dict[str, Any], cls: type, where: str, required: tuple[str, ...]) -> None:
    known = [f.name for f in fields(cls)]
    for key in data:
        if key not in known:
            raise ConfigError(
                f"{where}: unknown key {key!r}{_suggest(key, known)}; "
                f"known keys: {', '.join(known)}"
            )
    for key in required:
        if key not in data or data[key] in (None, ""):
            raise ConfigError(f"{where}: missing required key {key!r}")


def _expect_type(value: Any, types: type | tuple[type, ...], where: str, what: str) -> Any:
    if isinstance(value, bool) and types in (int, float, (int, float)):
        raise ConfigError(f"{where}: expected {what}, got {value!r}")
    if not isinstance(value, types):
        raise ConfigError(f"{where}: expected {what}, got {type(value).__name__} {value!r}")
    return value


def _expect_mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    return _expect_type(value, dict, where, "a mapping (key: value)")


def _parse_model(key: str, raw: Any) -> ModelEntry:
    where = f"models.{key}"
    raw = _expect_mapping(raw, where)
    _check_keys(raw, ModelEntry, where, ("adapter",))
    entry = ModelEntry(
        **{**raw, "options": _expect_mapping(raw.get("options"), f"{where}.options")}
    )
    _expect_type(entry.adapter, str, f"{where}.adapter", "an adapter name (see `vlprobe models`)")
    _expect_type(entry.random_init, bool, f"{where}.random_init", "true or false")
    _expect_type(entry.seed, int, f"{where}.seed", "an integer")
    if entry.dtype not in ("float32", "float16", "bfloat16"):
        raise ConfigError(
            f"{where}.dtype: expected float32, float16 or bfloat16, got {entry.dtype!r}"
        )
    return entry


def _parse_dataset(key: str, raw: Any) -> DatasetEntry:
    where = f"datasets.{key}"
    raw = _expect_mapping(raw, where)
    _check_keys(raw, DatasetEntry, where, ("loader",))
    subsample = _expect_mapping(raw.get("subsample"), f"{where}.subsample")
    for split, n in subsample.items():
        _expect_type(n, int, f"{where}.subsample.{split}", "a positive integer")
        if n <= 0:
            raise ConfigError(f"{where}.subsample.{split}: expected a positive integer, got {n}")
    entry = DatasetEntry(
        **{
            **raw,
            "options": _expect_mapping(raw.get("options"), f"{where}.options"),
            "subsample": dict(subsample),
        }
    )
    if entry.test_fraction is not None:
        _expect_type(entry.test_fraction, (int, float), f"{where}.test_fraction", "a number")
        if not 0 < entry.test_fraction < 1:
            raise ConfigError(f"{where}.test_fraction: expected a number in (0, 1)")
    if entry.on_error not in ("raise", "skip"):
        raise ConfigError(f"{where}.on_error: expected 'raise' or 'skip', got {entry.on_error!r}")
    _expect_type(entry.drop_cross_split_duplicates, bool,
                 f"{where}.drop_cross_split_duplicates", "true or false")
    return entry


def _parse_analysis(index: int, raw: Any, models: dict, datasets: dict) -> AnalysisEntry:
    where = f"analyses[{index}]"
    raw = _expect_mapping(raw, where)
    _check_keys(raw, AnalysisEntry, where, ("analysis", "models", "dataset"))
    model_list = raw["models"]
    if isinstance(model_list, str):
        model_list = [model_list]
    _expect_type(model_list, list, f"{where}.models", "a list of model keys")
    for j, model in enumerate(model_list):
        if model not in models:
            raise ConfigError(
                f"{where}.models[{j}]: {model!r} is not a key of `models`"
                f"{_suggest(str(model), list(models))}; defined: {', '.join(models)}"
            )
    dataset = raw["dataset"]
    if dataset not in datasets:
        raise ConfigError(
            f"{where}.dataset: {dataset!r} is not a key of `datasets`"
            f"{_suggest(str(dataset), list(datasets))}; defined: {', '.join(datasets)}"
        )
    params = _expect_mapping(raw.get("params"), f"{where}.params")
    name = raw.get("name") or ""
    return AnalysisEntry(
        analysis=str(raw["analysis"]),
        models=tuple(model_list),
        dataset=dataset,
        name=str(name),
        params=dict(params),
    )


def parse_config(data: dict[str, Any], *, check_registries: bool = True) -> RunConfig:
    """Validate a raw config tree and return a :class:`RunConfig`.

    Args:
        data: the parsed YAML (or a Python dict).
        check_registries: also check adapter, loader and analysis names and analysis
            parameters against the registries (imports the analysis classes, not torch).

    Raises:
        ConfigError: with the path of the offending field and what was expected.
    """
    data = _expect_mapping(copy.deepcopy(data), "config")
    _check_keys(data, RunConfig, "config", ("name", "models", "datasets", "analyses"))
    name = _expect_type(data["name"], str, "name", "a run name")
    if not all(c.isalnum() or c in "-_" for c in name):
        raise ConfigError(f"name: {name!r} may only contain letters, digits, '-' and '_'")
    models = {
        str(k): _parse_model(str(k), v)
        for k, v in _expect_mapping(data["models"], "models").items()
    }
    datasets = {
        str(k): _parse_dataset(str(k), v)
        for k, v in _expect_mapping(data["datasets"], "datasets").items()
    }
    for what, table in (("models", models), ("datasets", datasets)):
        if not table:
            raise ConfigError(f"{what}: at least one entry is required")
    raw_analyses = _expect_type(data["analyses"], list, "analyses", "a list of analyses")
    if not raw_analyses:
        raise ConfigError("analyses: at least one analysis is required")
    analyses = [_parse_analysis(i, a, models, datasets) for i, a in enumerate(raw_analyses)]
    extraction_raw = _expect_mapping(data.get("extraction"), "extraction")
    _check_keys(extraction_raw, ExtractionEntry, "extraction", ())
    extraction = ExtractionEntry(**extraction_raw)
    for key in ("batch_size", "shard_size", "text_shard_size"):
        value = getattr(extraction, key)
        _expect_type(value, int, f"extraction.{key}", "a positive integer")
        if value <= 0:
            raise ConfigError(f"extraction.{key}: expected a positive integer, got {value}")
    limit = extraction.raw_attention_limit_gb
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
        raise ConfigError(
            f"extraction.raw_attention_limit_gb: expected a positive number of GB, got {limit!r}"
        )
    seed = _expect_type(data.get("seed", 0), int, "seed", "an integer")
    device = data.get("device", "cpu")
    if device not in ("cpu", "cuda", "auto") and not str(device).startswith("cuda:"):
        raise ConfigError(f"device: expected cpu, cuda, cuda:N or auto, got {device!r}")
    cfg = RunConfig(
        name=name,
        models=models,
        datasets=datasets,
        analyses=tuple(_name_analyses(analyses)),
        seed=seed,
        device=device,
        output_dir=data.get("output_dir"),
        cache_dir=data.get("cache_dir"),
        extraction=extraction,
    )
    if check_registries:
        check_names(cfg)
    return cfg


def _name_analyses(analyses: list[AnalysisEntry]) -> list[AnalysisEntry]:
    """Give every analysis a unique result name (``<analysis>_<dataset>[_2]``)."""
    seen: dict[str, int] = {}
    named = []
    for entry in analyses:
        base = entry.name or f"{entry.analysis}_{entry.dataset}"
        base = "".join(c if c.isalnum() or c in "-_" else "_" for c in base)
        count = seen.get(base, 0)
        seen[base] = count + 1
        if entry.name and count:
            raise ConfigError(f"analyses: the name {entry.name!r} is used twice")
        name = base if count == 0 else f"{base}_{count + 1}"
        named.append(AnalysisEntry(**{**asdict(entry), "name": name, "models": entry.models}))
    return named


def check_names(cfg: RunConfig) -> None:
    """Check adapter, loader and analysis names and analysis parameters (did-you-mean errors)."""
    from vlprobe.analyses import ANALYSES
    from vlprobe.data import DATASETS
    from vlprobe.models import MODELS

    def lookup(registry, name: str, where: str) -> None:
        try:
            registry.canonical(name)
        except UnknownNameError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    for key, model in cfg.models.items():
        lookup(MODELS, model.adapter, f"models.{key}.adapter")
    for key, dataset in cfg.datasets.items():
        lookup(DATASETS, dataset.loader, f"datasets.{key}.loader")
    for i, entry in enumerate(cfg.analyses):
        lookup(ANALYSES, entry.analysis, f"analyses[{i}].analysis")
        extra = entry.params.get("datasets") if isinstance(entry.params, dict) else None
        for name in extra if isinstance(extra, list) else []:
            if name not in cfg.datasets:
                raise ConfigError(
                    f"analyses[{i}] ({entry.name}).params.datasets: {name!r} is not a key of "
                    f"`datasets`{_suggest(str(name), list(cfg.datasets))}; defined: "
                    f"{', '.join(cfg.datasets)}"
                )
        cls = ANALYSES.get(entry.analysis)
        try:
            cls(list(entry.models), entry.dataset, entry.params, seed=cfg.seed)
        except ConfigError as exc:
            raise ConfigError(f"analyses[{i}] ({entry.name}): {exc}") from None


# --------------------------------------------------------------------------------------
# YAML and overrides
# --------------------------------------------------------------------------------------
def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file (safe loader: no executable YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.path=value`` overrides (values parsed as YAML) to a raw config tree.

    List items are addressed by index: ``analyses.0.params.shots=[1,5]``.
    """
    data = copy.deepcopy(data)
    for override in overrides:
        path, sep, raw_value = override.partition("=")
        if not sep or not path:
            raise ConfigError(f"override {override!r}: expected key.path=value")
        value = yaml.safe_load(raw_value) if raw_value else None
        node: Any = data
        parts = path.split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(
                        f"override {override!r}: {part!r} is not an index of the list"
                    )
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"override {override!r}: cannot descend into {part!r}")
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a config file."""
    return parse_config(apply_overrides(load_yaml(path), overrides or []))


def dump_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML (what ``how to reproduce`` re-runs)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def missing_local_paths(cfg: RunConfig) -> list[str]:
    """Local files the config names that do not exist (``vlprobe validate`` reports them).

    Checked: dataset ``path`` (every loader except ``hf_hub``) and model ``checkpoint`` /
    ``config`` when they are clearly local (absolute, ``./``, ``../``, ``~`` or
    ``${reference}/...``; a bare ``org/name`` is a hub id and needs the network, not a file).
    Paths are expanded as the loaders expand them (``${reference}``, ``~``, ``$VARS``).
    """
    from vlprobe.settings import expand_path

    problems = []

    def check(where: str, value: str) -> None:
        try:
            path = expand_path(value)
        except ConfigError as exc:
            problems.append(f"{where}: {value}: {exc}")
            return
        if not path.exists():
            problems.append(f"{where}: {value} does not exist ({path})")

    for key, model in cfg.models.items():
        for field_name in ("checkpoint", "config"):
            value = getattr(model, field_name)
            if value and str(value).startswith(("/", "./", "../", "~", "${reference}")):
                check(f"models.{key}.{field_name}", str(value))
    for key, dataset in cfg.datasets.items():
        if dataset.path and dataset.loader != "hf_hub":
            check(f"datasets.{key}.path", str(dataset.path))
    return problems
