"""``vlprobe train`` configs: what to train, on which data, from which frozen parts.

``kind`` chooses the trainer: ``aligned`` (M8, below) or ``fusion_single`` / ``fusion_two``
(a small VisualBERT- / LXMERT-style fusion transformer trained with ITM + MLM on frozen CNN
grid features; their config is documented in :mod:`vlprobe.train.fusion_config`).

```yaml
name: aligned_effnet_minilm
kind: aligned                  # M8: frozen towers + projection heads + InfoNCE
seed: 0
output_dir: null               # default: $VLPROBE_MODELS or ./vlprobe_models, then /<name>
data: {loader: flickr8k, path: ${reference}/captions/flickr8k}
image_tower: {adapter: efficientnet_lite0, sites: [vision.pooled]}
text_tower: {adapter: minilm_l6, sites: [text.pooled]}
head: {kind: linear, embed_dim: 256, hidden: 1024}
optim: {epochs: 30, batch_size: 256, lr: 0.001, weight_decay: 0.01, patience: 5}
```

A tower entry is a model entry of a run config (``adapter``, ``checkpoint``, ``random_init``,
``config``, ``seed``, ``dtype``, ``options``) plus ``sites`` (the frozen features: several
sites are pooled and concatenated, e.g. several layers of a CNN) and ``pooling`` (default: the
adapter's own for the tower).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vlprobe.config import ModelEntry, _check_keys, _expect_mapping, _parse_model, load_yaml
from vlprobe.errors import ConfigError

KINDS = ("aligned", "fusion_single", "fusion_two")


@dataclass(frozen=True)
class TowerEntry:
    """A frozen tower: the model, the sites whose pooled outputs feed a head, their pooling."""

    model: ModelEntry
    sites: tuple[str, ...] = ()
    pooling: str | None = None


@dataclass(frozen=True)
class HeadEntry:
    kind: str = "linear"
    embed_dim: int = 256
    hidden: int = 1024


@dataclass(frozen=True)
class OptimEntry:
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    patience: int = 5
    init_temperature: float = 0.07


@dataclass(frozen=True)
class TrainConfig:
    """A parsed, validated ``vlprobe train`` config (see the module docstring)."""

    name: str
    kind: str
    image_tower: TowerEntry
    text_tower: TowerEntry
    data: dict[str, Any]
    seed: int = 0
    output_dir: str | None = None
    head: HeadEntry = field(default_factory=HeadEntry)
    optim: OptimEntry = field(default_factory=OptimEntry)
    extraction: dict[str, Any] = field(default_factory=dict)

    def out_dir(self) -> Path:
        """Where the checkpoint goes: ``output_dir``, else ``$VLPROBE_MODELS/<name>``
        (default ``./vlprobe_models/<name>``)."""
        if self.output_dir:
            return Path(os.path.expandvars(self.output_dir)).expanduser()
        return Path(os.environ.get("VLPROBE_MODELS", "vlprobe_models")).expanduser() / self.name


_TOP = ("name", "kind", "seed", "output_dir", "data", "image_tower", "text_tower", "head",
        "optim", "extraction")


def _tower(raw: Any, where: str) -> TowerEntry:
    raw = dict(_expect_mapping(raw, where))
    if not raw:
        raise ConfigError(f"{where}: missing (a model entry with adapter and sites)")
    sites = raw.pop("sites", None)
    pooling = raw.pop("pooling", None)
    if isinstance(sites, str):
        sites = [sites]
    if sites is not None and (not sites or not all(isinstance(s, str) for s in sites)):
        raise ConfigError(f"{where}.sites: expected a non-empty list of site names")
    return TowerEntry(_parse_model(where, raw), tuple(sites or ()), pooling)


def _section(cls: type, raw: Any, where: str) -> Any:
    raw = _expect_mapping(raw, where)
    _check_keys(raw, cls, where, ())
    entry = cls(**raw)
    for f in fields(cls):
        value = getattr(entry, f.name)
        if f.type in ("int", "float") and (isinstance(value, bool) or not isinstance(
                value, (int, float))):
            raise ConfigError(f"{where}.{f.name}: expected a number, got {value!r}")
    return entry


def parse_train_config(data: dict[str, Any]) -> Any:
    """Validate a raw config tree; unknown keys and tower names give clear errors.

    Returns a :class:`TrainConfig` (``kind: aligned``) or a
    :class:`~vlprobe.train.fusion_config.FusionTrainConfig` (``fusion_single`` /
    ``fusion_two``)."""
    from vlprobe.config import _suggest
    from vlprobe.models import MODELS

    if not isinstance(data, dict):
        raise ConfigError("train config: expected a mapping at the top level")
    if data.get("kind") in (None, ""):
        raise ConfigError(f"train config: missing required key 'kind' (one of {KINDS})")
    if data["kind"] not in KINDS:
        raise ConfigError(f"train config: kind must be one of {KINDS}, got {data['kind']!r}")
    if data["kind"] != "aligned":
        from vlprobe.train.fusion_config import parse_fusion_config

        return parse_fusion_config(data)
    unknown = [k for k in data if k not in _TOP]
    if unknown:
        raise ConfigError(
            f"train config: unknown key {unknown[0]!r}{_suggest(unknown[0], list(_TOP))}"
        )
    for key in ("name", "kind", "data", "image_tower", "text_tower"):
        if data.get(key) in (None, ""):
            raise ConfigError(f"train config: missing required key {key!r}")
    kind = data["kind"]
    towers = {k: _tower(data[k], k) for k in ("image_tower", "text_tower")}
    for key, tower in towers.items():
        MODELS.get(tower.model.adapter)  # UnknownNameError with a suggestion
        if not tower.sites:
            raise ConfigError(f"{key}.sites: name the frozen feature site(s), e.g. vision.pooled")
    head = _section(HeadEntry, data.get("head"), "head")
    optim = _section(OptimEntry, data.get("optim"), "optim")
    if head.kind not in ("linear", "mlp"):
        raise ConfigError(f"head.kind must be linear or mlp, got {head.kind!r}")
    if optim.epochs < 1 or optim.batch_size < 2 or optim.lr <= 0:
        raise ConfigError("optim: epochs >= 1, batch_size >= 2 and lr > 0 are required")
    return TrainConfig(
        name=str(data["name"]), kind=kind, image_tower=towers["image_tower"],
        text_tower=towers["text_tower"], data=_expect_mapping(data["data"], "data"),
        seed=int(data.get("seed", 0)), output_dir=data.get("output_dir"), head=head,
        optim=optim, extraction=_expect_mapping(data.get("extraction"), "extraction"),
    )


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> Any:
    """Read, override (``dotted.key=value``) and validate a train config file."""
    from vlprobe.config import apply_overrides

    return parse_train_config(apply_overrides(load_yaml(path), overrides or []))
