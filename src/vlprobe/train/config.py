"""``vlprobe train`` configs: what to train, on which data, from which frozen parts.

``kind`` chooses the trainer: ``aligned`` (M8, below), ``captioner`` (a caption decoder on
frozen grid features) or ``fusion_single`` / ``fusion_two`` (a small
VisualBERT- / LXMERT-style fusion transformer trained with ITM + MLM on frozen CNN grid
features; their config is documented in :mod:`vlprobe.train.fusion_config`).

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

``unfreeze_last: k`` (aligned only; default 0 = frozen, features cached once) fine-tunes the
last k blocks of that tower together with the heads, as in LiT's ablations: the hidden state
at the input of the first unfrozen block is cached once and only the last k blocks run per
step (:mod:`vlprobe.train.tails`: ``efficientnet_lite0`` (last blocks + head conv) and
BERT-style text towers such as ``minilm_l6``). The checkpoint then holds those blocks too and
``aligned_dual`` loads them into the tower.

``kind: devise``: the DeViSE baseline (Frome et al. 2013; seed 004) on the same keys: a linear
map of the image features into the FROZEN text tower's embedding space, trained with
DeViSE's hinge rank loss (``optim.margin``, default 0.1; a batch's captions are the
classes); ``head`` must be ``{kind: linear, embed_dim: <text feature width>}``. Its
checkpoint loads as ``aligned_dual`` (the text head is the identity).

``kind: captioner`` (issue 11 part 5): a frozen image tower's grid features + a trained
caption decoder (:mod:`vlprobe.captioning`), selected on validation, decoded on test once::

```yaml
name: captioner_effnet_flickr8k
kind: captioner
seed: 0
data: {loader: flickr8k, name: flickr8k, path: ${reference}/captions/flickr8k}
image_tower: {adapter: efficientnet_lite0, sites: [vision.head], pooling: grid7}
decoder:                       # vlprobe.captioning.decoders: kind + that kind's keys
  kind: grid_transformer
  min_count: 5                 # word vocabulary of the TRAIN captions
  max_words: 30
  width: 256
  layers: 3
  heads: 4
  ffn: 1024
  dropout: 0.1
optim: {epochs: 10, batch_size: 64, lr: 0.0005, weight_decay: 0.01, patience: 3,
        warmup_steps: 200, label_smoothing: 0.0, grad_clip: 1.0, captions_per_image: 5,
        select_on: CIDEr}
decode: {max_length: 22, beams: [1, 3], meteor: true, batch_size: 100}
```

The captioner's data are one item per image with a ``captions`` descriptor: ``flickr8k`` gets
``view: image`` when its options name no view; ``coco_captions`` needs ``per: image``. Its
``image_tower`` names ONE site and a ``grid<g>`` pooling (default ``grid7``): the g x g cells
the decoder cross-attends to. ``optim.captions_per_image`` (1..5) is how many captions of each
image one epoch visits (a seeded draw per epoch); ``optim.select_on`` is the validation
criterion of the kept epoch (``CIDEr``, ``BLEU-1``..``BLEU-4``, ``ROUGE-L`` of greedy
captions, or ``loss``); ``decode.max_length`` counts the start token; ``decode.beams`` are the
beam widths decoded on test (1 = greedy).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vlprobe.config import ModelEntry, _check_keys, _expect_mapping, _parse_model, load_yaml
from vlprobe.errors import ConfigError

KINDS = ("aligned", "devise", "captioner", "fusion_single", "fusion_two")
SELECT_ON = ("CIDEr", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "loss")


@dataclass(frozen=True)
class TowerEntry:
    """A frozen tower: the model, the sites whose pooled outputs feed a head, their pooling."""

    model: ModelEntry
    sites: tuple[str, ...] = ()
    pooling: str | None = None
    unfreeze_last: int = 0


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
    #: learning rate of the unfrozen tower blocks (``unfreeze_last``); None = ``lr``
    tail_lr: float | None = None


@dataclass(frozen=True)
class DeviseOptimEntry(OptimEntry):
    """``optim`` of ``kind: devise``: :class:`OptimEntry` + the hinge ``margin``
    (``init_temperature`` is unused: DeViSE ranks by dot product)."""

    margin: float = 0.1


@dataclass(frozen=True)
class CaptionOptimEntry:
    """``optim`` of ``kind: captioner`` (AdamW, linear warmup then cosine decay)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.01
    patience: int = 3
    warmup_steps: int = 200
    label_smoothing: float = 0.0
    grad_clip: float = 1.0
    captions_per_image: int = 5
    select_on: str = "CIDEr"


@dataclass(frozen=True)
class DecodeEntry:
    """``decode`` of ``kind: captioner``."""

    max_length: int = 22
    beams: tuple[int, ...] = (1, 3)
    meteor: bool = True
    batch_size: int = 100


@dataclass(frozen=True)
class TrainConfig:
    """A parsed, validated ``vlprobe train`` config (see the module docstring).

    ``text_tower`` and ``head`` belong to ``kind: aligned``; ``decoder`` (the checked
    ``decoder`` section, :func:`vlprobe.captioning.decoders.check_decoder_config`) and
    ``decode`` to ``kind: captioner``; ``optim`` is an :class:`OptimEntry` or a
    :class:`CaptionOptimEntry` by kind."""

    name: str
    kind: str
    image_tower: TowerEntry
    data: dict[str, Any]
    text_tower: TowerEntry | None = None
    seed: int = 0
    output_dir: str | None = None
    head: HeadEntry = field(default_factory=HeadEntry)
    optim: OptimEntry | CaptionOptimEntry = field(default_factory=OptimEntry)
    extraction: dict[str, Any] = field(default_factory=dict)
    decoder: dict[str, Any] | None = None
    decode: DecodeEntry | None = None

    def out_dir(self) -> Path:
        """Where the checkpoint goes: ``output_dir``, else ``$VLPROBE_MODELS/<name>``
        (default ``./vlprobe_models/<name>``)."""
        if self.output_dir:
            return Path(os.path.expandvars(self.output_dir)).expanduser()
        return Path(os.environ.get("VLPROBE_MODELS", "vlprobe_models")).expanduser() / self.name


_COMMON = ("name", "kind", "seed", "output_dir", "data", "image_tower", "optim", "extraction")
_KIND_KEYS = {"aligned": ("text_tower", "head"), "devise": ("text_tower", "head"),
              "captioner": ("decoder", "decode")}
_TOP = (*_COMMON, *(k for keys in _KIND_KEYS.values() for k in keys))


def _tower(raw: Any, where: str) -> TowerEntry:
    raw = dict(_expect_mapping(raw, where))
    if not raw:
        raise ConfigError(f"{where}: missing (a model entry with adapter and sites)")
    sites = raw.pop("sites", None)
    pooling = raw.pop("pooling", None)
    unfreeze = raw.pop("unfreeze_last", 0)
    if isinstance(unfreeze, bool) or not isinstance(unfreeze, int) or unfreeze < 0:
        raise ConfigError(f"{where}.unfreeze_last: expected an integer >= 0 (blocks to "
                          f"fine-tune), got {unfreeze!r}")
    if isinstance(sites, str):
        sites = [sites]
    if sites is not None and (not sites or not all(isinstance(s, str) for s in sites)):
        raise ConfigError(f"{where}.sites: expected a non-empty list of site names")
    return TowerEntry(_parse_model(where, raw), tuple(sites or ()), pooling, unfreeze)


def _section(cls: type, raw: Any, where: str) -> Any:
    raw = _expect_mapping(raw, where)
    _check_keys(raw, cls, where, ())
    entry = cls(**raw)
    for f in fields(cls):
        value = getattr(entry, f.name)
        if f.type in ("int", "float") and (isinstance(value, bool) or not isinstance(
                value, (int, float))):
            raise ConfigError(f"{where}.{f.name}: expected a number, got {value!r}")
        if f.type == "int" and value != int(value):
            raise ConfigError(f"{where}.{f.name}: expected an integer, got {value!r}")
        if f.type == "bool" and not isinstance(value, bool):
            raise ConfigError(f"{where}.{f.name}: expected true or false, got {value!r}")
    return entry


def parse_train_config(data: dict[str, Any]) -> Any:
    """Validate a raw config tree; unknown keys and tower names give clear errors.

    Returns a :class:`TrainConfig` (``kind: aligned``) or a
    :class:`~vlprobe.train.fusion_config.FusionTrainConfig` (``fusion_single`` /
    ``fusion_two``)."""
    from vlprobe.config import _suggest

    if not isinstance(data, dict):
        raise ConfigError("train config: expected a mapping at the top level")
    if data.get("kind") in (None, ""):
        raise ConfigError(f"train config: missing required key 'kind' (one of {KINDS})")
    if data["kind"] not in KINDS:
        raise ConfigError(f"train config: kind must be one of {KINDS}, got {data['kind']!r}")
    if data["kind"] in ("fusion_single", "fusion_two"):
        from vlprobe.train.fusion_config import parse_fusion_config

        return parse_fusion_config(data)
    unknown = [k for k in data if k not in _TOP]
    if unknown:
        raise ConfigError(
            f"train config: unknown key {unknown[0]!r}{_suggest(unknown[0], list(_TOP))}"
        )
    for key in ("name", "kind", "data", "image_tower"):
        if data.get(key) in (None, ""):
            raise ConfigError(f"train config: missing required key {key!r}")
    kind = data["kind"]
    foreign = [k for other, keys in _KIND_KEYS.items() if other != kind for k in keys
               if k in data and k not in _KIND_KEYS[kind]]
    if foreign:
        raise ConfigError(f"train config: key {foreign[0]!r} does not apply to kind {kind!r} "
                          f"(its keys: {', '.join((*_COMMON, *_KIND_KEYS[kind]))})")
    common = {
        "name": str(data["name"]), "kind": kind, "data": _expect_mapping(data["data"], "data"),
        "seed": int(data.get("seed", 0)), "output_dir": data.get("output_dir"),
        "extraction": _expect_mapping(data.get("extraction"), "extraction"),
    }
    if kind in ("aligned", "devise"):
        return _parse_aligned(data, common)
    return _parse_captioner(data, common)


def _checked_tower(raw: Any, key: str) -> TowerEntry:
    from vlprobe.models import MODELS

    tower = _tower(raw, key)
    MODELS.get(tower.model.adapter)  # UnknownNameError with a suggestion
    if not tower.sites:
        raise ConfigError(f"{key}.sites: name the frozen feature site(s), e.g. vision.pooled")
    return tower


def _parse_aligned(data: dict[str, Any], common: dict[str, Any]) -> TrainConfig:
    if data.get("text_tower") in (None, ""):
        raise ConfigError("train config: missing required key 'text_tower'")
    towers = {k: _checked_tower(data[k], k) for k in ("image_tower", "text_tower")}
    head = _section(HeadEntry, data.get("head"), "head")
    devise = common["kind"] == "devise"
    optim = _section(DeviseOptimEntry if devise else OptimEntry, data.get("optim"), "optim")
    if head.kind not in ("linear", "mlp"):
        raise ConfigError(f"head.kind must be linear or mlp, got {head.kind!r}")
    if devise and (head.kind != "linear" or any(t.unfreeze_last for t in towers.values())):
        raise ConfigError("devise: a linear map (head.kind linear) on frozen towers "
                          "(no unfreeze_last)")
    if optim.tail_lr is not None and (isinstance(optim.tail_lr, bool) or not isinstance(
            optim.tail_lr, (int, float)) or optim.tail_lr <= 0):
        raise ConfigError(f"optim.tail_lr: expected a learning rate > 0 (or null = lr), got "
                          f"{optim.tail_lr!r}")
    if devise and optim.margin <= 0:
        raise ConfigError(f"optim.margin must be > 0, got {optim.margin}")
    if optim.epochs < 1 or optim.batch_size < 2 or optim.lr <= 0:
        raise ConfigError("optim: epochs >= 1, batch_size >= 2 and lr > 0 are required")
    return TrainConfig(image_tower=towers["image_tower"], text_tower=towers["text_tower"],
                       head=head, optim=optim, **common)


def _parse_captioner(data: dict[str, Any], common: dict[str, Any]) -> TrainConfig:
    from vlprobe.captioning.decoders import check_decoder_config
    from vlprobe.pooling import check_pooling, grid_size

    tower = _checked_tower(data["image_tower"], "image_tower")
    if tower.unfreeze_last:
        raise ConfigError("image_tower.unfreeze_last applies to kind aligned only")
    if len(tower.sites) != 1:
        raise ConfigError(f"image_tower.sites: a captioner reads ONE grid site, got "
                          f"{list(tower.sites)}")
    pooling = tower.pooling or "grid7"
    if not grid_size(check_pooling(pooling)):
        raise ConfigError(f"image_tower.pooling: a captioner needs a grid pooling (e.g. grid7), "
                          f"got {pooling!r}")
    tower = TowerEntry(tower.model, tower.sites, pooling)
    decoder = check_decoder_config(_expect_mapping(data.get("decoder"), "decoder"))
    optim = _section(CaptionOptimEntry, data.get("optim"), "optim")
    raw_decode = dict(_expect_mapping(data.get("decode"), "decode"))
    beams = raw_decode.pop("beams", DecodeEntry.beams)
    beams = [beams] if isinstance(beams, int) and not isinstance(beams, bool) else beams
    if (not isinstance(beams, (list, tuple)) or not beams
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in beams)):
        raise ConfigError(f"decode.beams: expected a list of beam widths >= 1 (1 = greedy), "
                          f"got {beams!r}")
    decode = _section(DecodeEntry, raw_decode, "decode")
    decode = DecodeEntry(decode.max_length, tuple(dict.fromkeys(int(b) for b in beams)),
                         decode.meteor, decode.batch_size)
    if optim.epochs < 1 or optim.batch_size < 2 or optim.lr <= 0 or optim.patience < 1:
        raise ConfigError("optim: epochs >= 1, batch_size >= 2, lr > 0 and patience >= 1 are "
                          "required")
    if not 1 <= optim.captions_per_image <= 1000:
        raise ConfigError(f"optim.captions_per_image must be >= 1, got "
                          f"{optim.captions_per_image}")
    if optim.warmup_steps < 0 or not 0.0 <= optim.label_smoothing < 1.0 or optim.grad_clip < 0:
        raise ConfigError("optim: warmup_steps >= 0, label_smoothing in [0, 1) and grad_clip "
                          ">= 0 (0 = off) are required")
    if optim.select_on not in SELECT_ON:
        raise ConfigError(f"optim.select_on must be one of {SELECT_ON}, got "
                          f"{optim.select_on!r}")
    longest = decoder.get("max_words", 0) + 2
    if not 2 <= decode.max_length <= longest or decode.batch_size < 1:
        raise ConfigError(f"decode.max_length must lie in [2, {longest}] (<bos> + "
                          f"decoder.max_words + <eos>), got {decode.max_length}; "
                          "decode.batch_size >= 1")
    return TrainConfig(image_tower=tower, optim=optim, decoder=decoder, decode=decode,
                       **common)


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> Any:
    """Read, override (``dotted.key=value``) and validate a train config file."""
    from vlprobe.config import apply_overrides

    return parse_train_config(apply_overrides(load_yaml(path), overrides or []))
