"""``vlprobe train`` configs of the fusion kinds: a small single-stream (``fusion_single``,
VisualBERT-style) or two-stream (``fusion_two``, LXMERT-style) transformer trained from scratch
with image-text matching (ITM) and masked language modelling (MLM) on frozen CNN grid
features and text tokens.

```yaml
name: fusion_single_flickr8k
kind: fusion_single        # or fusion_two
seed: 0
output_dir: null           # default: $VLPROBE_MODELS or ./vlprobe_models, then /<name>
data: {loader: flickr8k, name: flickr8k, path: ${reference}/captions/flickr8k}
regions: {adapter: efficientnet_lite0, site: vision.head}
text: {model: minilm_l6, max_length: 40, init_embeddings: true}
model: {layers: 4, width: 256, heads: 4, intermediate: 1024, dropout: 0.1}
objectives: {itm: 1.0, mlm: 1.0, mask_prob: 0.15, itc: 0.0}
optim: {epochs: 3, batch_size: 64, lr: 0.0003, weight_decay: 0.01, warmup: 0.1,
        patience: 2, grad_clip: 1.0, precision: float32}
eval: {batch_size: 128, val_captions_per_image: 1, test_captions_per_image: null,
       mlm_captions_per_image: 1}
```

- ``data``: a dataset entry of a run config (``loader``, ``name``, ``path``, ``options``,
  ``subsample``, ...) whose splits train / validation / test hold (image, captions) data;
  the trainer chooses the loader's views itself (``image`` for the region features and the
  training captions, ``itm`` for evaluation; the loader option ``view`` must not be set).
- ``regions``: the frozen image model (a model entry: ``adapter``, ``checkpoint``,
  ``random_init``, ``config``, ``seed``, ``options``) and its ``site``, a ``[B, C, g, g]``
  feature map: each of the ``g * g`` cells is one region token (raster order) with its box.
  Its features are cached once per split through the activation store (``grid<g>`` pooling,
  the identity on a g x g map), so training never runs the CNN. Default: EfficientNet-Lite0
  ``vision.head`` (1280-d, 7 x 7 at 224 px), the region source the ``visual_bert`` and
  ``lxmert`` adapters use by default.
- ``text``: ``model`` is a text model entry (or a registered adapter name) whose tokenizer is
  used (saved into the checkpoint); ``max_length`` tokens per caption incl. [CLS]/[SEP]
  (longer ones are cut and counted); ``init_embeddings``: initialise the word embeddings from
  that model's input embeddings (projected on their top principal components when the model
  is narrower).
- ``model``: ``fusion_single``: ``layers`` joint blocks; ``fusion_two``: ``text_layers``,
  ``vision_layers`` and ``cross_layers`` (LXMERT's l / r / x); both: ``width``, ``heads``,
  ``intermediate`` and ``dropout``.
- ``objectives``: loss weights (``itm``: half the training pairs get a caption of another
  image; ``mlm``: BERT masking of ``mask_prob`` of the text tokens, 80 / 10 / 10, scored on
  matched pairs only) and the masking rate; ``itc`` (default 0): weight of a contrastive loss
  between the mean text-token and mean region embeddings at layer 0 of the matched pairs
  (temperature ``itc_temperature``), which aligns the inputs before fusion.
- ``optim``: AdamW, linear warm-up over ``warmup`` of the steps then linear decay; one epoch
  visits every training image once with one of its captions; the best epoch by validation ITM
  accuracy is kept and training stops after ``patience`` epochs without improvement;
  ``precision: bfloat16`` runs the training forward under CPU autocast (evaluation stays
  float32).
- ``eval``: captions per image of the validation ITM pairs (each epoch), of the test ITM pairs
  (``null`` = all, the loader's standard ``itm`` view) and of the test MLM pairs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vlprobe.config import ModelEntry, _check_keys, _expect_mapping, _parse_model
from vlprobe.errors import ConfigError

FUSION_KINDS = ("fusion_single", "fusion_two")
#: the adapter that loads a checkpoint of each kind.
ADAPTER_OF = {"fusion_single": "visual_bert", "fusion_two": "lxmert"}


@dataclass(frozen=True)
class RegionEntry:
    """The frozen CNN whose feature-map cells are the region tokens."""

    model: ModelEntry
    site: str = "vision.head"


@dataclass(frozen=True)
class TextEntry:
    model: ModelEntry
    max_length: int = 40
    init_embeddings: bool = True


@dataclass(frozen=True)
class ArchEntry:
    layers: int | None = None
    text_layers: int | None = None
    vision_layers: int | None = None
    cross_layers: int | None = None
    width: int = 256
    heads: int = 4
    intermediate: int = 1024
    dropout: float = 0.1


@dataclass(frozen=True)
class ObjectiveEntry:
    itm: float = 1.0
    mlm: float = 1.0
    mask_prob: float = 0.15
    itc: float = 0.0
    itc_temperature: float = 0.07


@dataclass(frozen=True)
class FusionOptimEntry:
    epochs: int = 3
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: float = 0.1
    patience: int = 2
    grad_clip: float = 1.0
    precision: str = "float32"


@dataclass(frozen=True)
class EvalEntry:
    batch_size: int = 128
    val_captions_per_image: int | None = 1
    test_captions_per_image: int | None = None
    mlm_captions_per_image: int | None = 1


@dataclass(frozen=True)
class FusionTrainConfig:
    """A parsed, validated fusion train config (see the module docstring)."""

    name: str
    kind: str
    data: dict[str, Any]
    regions: RegionEntry
    text: TextEntry
    model: ArchEntry
    seed: int = 0
    output_dir: str | None = None
    objectives: ObjectiveEntry = field(default_factory=ObjectiveEntry)
    optim: FusionOptimEntry = field(default_factory=FusionOptimEntry)
    eval: EvalEntry = field(default_factory=EvalEntry)
    extraction: dict[str, Any] = field(default_factory=dict)

    @property
    def adapter(self) -> str:
        """The adapter that loads the checkpoint (``visual_bert`` / ``lxmert``)."""
        return ADAPTER_OF[self.kind]

    def out_dir(self) -> Path:
        """``output_dir``, else ``$VLPROBE_MODELS/<name>`` (default ``./vlprobe_models``)."""
        if self.output_dir:
            return Path(os.path.expandvars(self.output_dir)).expanduser()
        return Path(os.environ.get("VLPROBE_MODELS", "vlprobe_models")).expanduser() / self.name


_TOP = ("name", "kind", "seed", "output_dir", "data", "regions", "text", "model", "objectives",
        "optim", "eval", "extraction")
_ARCH_FIELDS = {
    "fusion_single": ("layers",),
    "fusion_two": ("text_layers", "vision_layers", "cross_layers"),
}


def _number_section(cls: type, raw: Any, where: str) -> Any:
    """A section of plain numbers: unknown keys, non-numbers and negatives are errors."""
    raw = _expect_mapping(raw, where)
    _check_keys(raw, cls, where, ())
    entry = cls(**raw)
    for f in fields(cls):
        value = getattr(entry, f.name)
        if (value is None and "None" in str(f.type)) or f.type == "str":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}.{f.name}: expected a number, got {value!r}")
        if "int" in str(f.type) and "float" not in str(f.type) and not isinstance(value, int):
            raise ConfigError(f"{where}.{f.name}: expected an integer, got {value!r}")
        if value < 0:
            raise ConfigError(f"{where}.{f.name}: expected a value >= 0, got {value!r}")
    return entry


def _model_entry(raw: Any, where: str) -> ModelEntry:
    if isinstance(raw, str):
        raw = {"adapter": raw}
    return _parse_model(where, _expect_mapping(raw, where))


def _regions(raw: Any) -> RegionEntry:
    raw = dict(_expect_mapping(raw, "regions")) or {"adapter": "efficientnet_lite0"}
    site = raw.pop("site", "vision.head")
    if not isinstance(site, str) or not site:
        raise ConfigError(f"regions.site: expected a site name (e.g. vision.head), got {site!r}")
    return RegionEntry(_model_entry(raw, "regions"), site)


def _text(raw: Any) -> TextEntry:
    raw = dict(_expect_mapping(raw, "text"))
    if not raw.get("model"):
        raise ConfigError("text.model: missing (the text model whose tokenizer is used, "
                          "e.g. minilm_l6)")
    unknown = sorted(set(raw) - {"model", "max_length", "init_embeddings"})
    if unknown:
        raise ConfigError(f"text: unknown key {unknown[0]!r}; known keys: model, max_length, "
                          "init_embeddings")
    entry = TextEntry(_model_entry(raw["model"], "text.model"),
                      raw.get("max_length", 40), raw.get("init_embeddings", True))
    if isinstance(entry.max_length, bool) or not isinstance(entry.max_length, int) or (
            entry.max_length < 3):
        raise ConfigError(f"text.max_length: expected an integer >= 3, got {entry.max_length!r}")
    if not isinstance(entry.init_embeddings, bool):
        raise ConfigError(f"text.init_embeddings: expected true or false, got "
                          f"{entry.init_embeddings!r}")
    return entry


def _arch(raw: Any, kind: str) -> ArchEntry:
    arch = _number_section(ArchEntry, raw, "model")
    mine = _ARCH_FIELDS[kind]
    for name in (n for names in _ARCH_FIELDS.values() for n in names):
        value = getattr(arch, name)
        if name in mine and value is None:
            raise ConfigError(f"model.{name}: missing (kind {kind} needs {', '.join(mine)})")
        if name not in mine and value is not None:
            raise ConfigError(f"model.{name}: not a setting of kind {kind} (it takes "
                              f"{', '.join(mine)})")
    if kind == "fusion_single" and arch.layers < 1:
        raise ConfigError("model.layers: expected >= 1")
    if kind == "fusion_two" and arch.cross_layers < 1:
        raise ConfigError("model.cross_layers: expected >= 1 (the co-attention layers)")
    if arch.width < 1 or arch.heads < 1 or arch.width % arch.heads:
        raise ConfigError(f"model: width ({arch.width}) must be a positive multiple of heads "
                          f"({arch.heads})")
    if arch.intermediate < 1 or not 0 <= arch.dropout < 1:
        raise ConfigError("model: intermediate >= 1 and 0 <= dropout < 1 are required")
    return arch


def parse_fusion_config(data: dict[str, Any]) -> FusionTrainConfig:
    """Validate a raw fusion config tree (``kind`` is one of :data:`FUSION_KINDS`)."""
    from vlprobe.config import _suggest
    from vlprobe.models import MODELS

    unknown = [k for k in data if k not in _TOP]
    if unknown:
        raise ConfigError(
            f"train config: unknown key {unknown[0]!r}{_suggest(unknown[0], list(_TOP))} "
            f"(kind {data.get('kind')})"
        )
    for key in ("name", "kind", "data", "model"):
        if data.get(key) in (None, ""):
            raise ConfigError(f"train config: missing required key {key!r}")
    kind = data["kind"]
    if kind not in FUSION_KINDS:
        raise ConfigError(f"train config: kind must be one of {FUSION_KINDS}, got {kind!r}")
    data_entry = _expect_mapping(data["data"], "data")
    if not data_entry.get("loader"):
        raise ConfigError("data: missing required key 'loader'")
    if "view" in (data_entry.get("options") or {}):
        raise ConfigError("data.options.view: the fusion trainer chooses the views itself "
                          "(image for training, itm for evaluation); remove it")
    regions, text = _regions(data.get("regions")), _text(data.get("text"))
    for entry in (regions.model, text.model):
        MODELS.get(entry.adapter)  # UnknownNameError with a suggestion
    objectives = _number_section(ObjectiveEntry, data.get("objectives"), "objectives")
    optim = _number_section(FusionOptimEntry, data.get("optim"), "optim")
    evaluation = _number_section(EvalEntry, data.get("eval"), "eval")
    if objectives.itm <= 0:
        raise ConfigError("objectives.itm: expected > 0 (ITM accuracy selects the epoch)")
    if objectives.itc_temperature <= 0:
        raise ConfigError("objectives.itc_temperature: expected > 0")
    if not 0 < objectives.mask_prob < 1:
        raise ConfigError(f"objectives.mask_prob: expected a value in (0, 1), got "
                          f"{objectives.mask_prob}")
    if optim.epochs < 1 or optim.batch_size < 2 or optim.lr <= 0 or optim.patience < 1:
        raise ConfigError("optim: epochs >= 1, batch_size >= 2, lr > 0 and patience >= 1 are "
                          "required")
    if optim.precision not in ("float32", "bfloat16"):
        raise ConfigError(f"optim.precision: float32 or bfloat16, got {optim.precision!r}")
    if optim.warmup >= 1:
        raise ConfigError(f"optim.warmup: a fraction of the steps in [0, 1), got {optim.warmup}")
    for f in fields(EvalEntry):
        value = getattr(evaluation, f.name)
        if value is not None and value < 1:
            raise ConfigError(f"eval.{f.name}: expected >= 1 (or null), got {value}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed: expected an integer, got {seed!r}")
    return FusionTrainConfig(
        name=str(data["name"]), kind=kind, data=data_entry, regions=regions, text=text,
        model=_arch(data["model"], kind), seed=seed, output_dir=data.get("output_dir"),
        objectives=objectives, optim=optim, eval=evaluation,
        extraction=_expect_mapping(data.get("extraction"), "extraction"),
    )
