"""Shared code of the Hugging Face ``transformers`` adapters (CLIP, text, ViT, ResNet).

Where the weights come from (:func:`resolve_source`):

- ``random_init: true``: the architecture from ``spec.config`` (a directory or a
  ``config.json``; defaults to ``spec.checkpoint``), weights drawn with ``spec.seed``.
  Tokenizer / image processor files are taken from the config's directory where present.
- an existing local directory (or a ``.gguf`` file for text models): must hold weights; a
  directory with only a config is an error that says to set ``random_init: true``.
- anything else that looks like a path and does not exist: an error naming the path.
- otherwise a Hugging Face hub id (``from_pretrained`` with ``spec.revision``). Offline
  (``HF_HUB_OFFLINE=1`` or no network) an id that is not in the local cache raises a
  :class:`~vlprobe.errors.ModelLoadError` that says so.

:class:`HFAdapter` is cheap to ``load()``: it reads the config (a small json) and builds the
site lists; the weights, tokenizer and image processor are loaded on first use
(:attr:`HFAdapter.model`, :attr:`HFAdapter.tokenizer`, :attr:`HFAdapter.processor`).
Models are always built with ``attn_implementation="eager"`` so that attention weights exist.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from vlprobe.errors import ConfigError, ModelLoadError
from vlprobe.models._hooks import (
    HookTarget,
    capture,
    dir_fingerprint,
    seeded,
    to_device,
    torch_dtype,
)
from vlprobe.models.base import Batch, ModelAdapter, ModelSpec, Trace
from vlprobe.settings import expand_path

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PREPROCESS_KEYS = (
    "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale",
    "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb",
)


# -- where the weights come from ----------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """Resolved origin of a checkpoint.

    Attributes:
        kind: ``"hub"``, ``"local"`` or ``"random"``.
        ref: hub id, or local directory (for ``random``: the config's directory or hub id).
        config_file: explicit ``config.json`` path for ``random`` (else None).
        gguf: a local ``.gguf`` file (text models), else None.
    """

    kind: str
    ref: str
    config_file: str | None = None
    gguf: str | None = None

    @property
    def is_local(self) -> bool:
        return self.kind == "local" or (self.kind == "random" and Path(self.ref).is_dir())


def looks_like_path(value: str) -> bool:
    """True for strings that cannot be a hub id (absolute/relative paths, file names)."""
    return (
        value.startswith(("/", "./", "../", "~", "."))
        or "\\" in value
        or value.count("/") > 1
        or os.path.isabs(value)
        or value.endswith((".json", ".gguf", ".pth", ".pt", ".bin", ".safetensors"))
    )


def has_weights(directory: Path) -> bool:
    return any((directory / name).is_file() for name in WEIGHT_FILES) or any(
        directory.glob("*.safetensors")
    )


def resolve_source(
    spec: ModelSpec, *, default_checkpoint: str | None = None, allow_gguf: bool = False
) -> Source:
    """Decide hub / local / random from a spec (see the module docstring)."""
    if spec.random_init:
        ref = spec.config or spec.checkpoint or default_checkpoint
        if not ref:
            raise ModelLoadError(
                f"{spec.adapter}: random_init needs an architecture: set config (a directory "
                "or config.json) or checkpoint"
            )
        path = expand_path(ref)
        if path.is_file() and path.suffix == ".json":
            return Source("random", str(path.parent), config_file=str(path))
        if path.is_file() and path.suffix == ".gguf" and allow_gguf:
            return Source("random", str(path.parent), gguf=str(path))
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelLoadError(f"{spec.adapter}: no config.json in {path}")
            return Source("random", str(path))
        if path.exists() or looks_like_path(ref):
            raise ModelLoadError(f"{spec.adapter}: config path {ref!r} does not exist")
        return Source("random", ref)  # hub id: only its config is fetched

    ref = spec.checkpoint or default_checkpoint
    if not ref:
        raise ModelLoadError(
            f"{spec.adapter}: no checkpoint given. Set checkpoint to a hub id (e.g. "
            "'openai/clip-vit-base-patch32') or a local directory, or set random_init: true "
            "with a config"
        )
    gguf = spec.options.get("gguf_file") if allow_gguf else None
    path = expand_path(ref)
    if gguf:
        gpath = expand_path(gguf)
        if not gpath.is_absolute():
            gpath = path / gguf
        if not gpath.is_file():
            raise ModelLoadError(f"{spec.adapter}: GGUF file {str(gpath)!r} does not exist")
        return Source("local", str(gpath.parent), gguf=str(gpath))
    if path.is_file():
        if path.suffix == ".gguf" and allow_gguf:
            return Source("local", str(path.parent), gguf=str(path))
        if path.suffix == ".json":
            raise ModelLoadError(_weightless_message(spec, path.parent))
        raise ModelLoadError(
            f"{spec.adapter}: checkpoint {ref!r} is a file; give a checkpoint directory"
            + (" or a .gguf file" if allow_gguf else "")
        )
    if path.is_dir():
        if has_weights(path):
            return Source("local", str(path))
        ggufs = sorted(path.glob("*.gguf")) if allow_gguf else []
        if len(ggufs) == 1:
            return Source("local", str(path), gguf=str(ggufs[0]))
        if (path / "config.json").is_file():
            raise ModelLoadError(_weightless_message(spec, path))
        raise ModelLoadError(
            f"{spec.adapter}: checkpoint directory {str(path)!r} holds no model files "
            f"(expected config.json and one of {', '.join(WEIGHT_FILES)})"
        )
    if looks_like_path(ref):
        raise ModelLoadError(f"{spec.adapter}: checkpoint path {ref!r} does not exist")
    return Source("hub", ref)


def _weightless_message(spec: ModelSpec, directory: Path) -> str:
    return (
        f"{spec.adapter}: {str(directory)!r} has a config but no weights "
        f"({', '.join(WEIGHT_FILES[::2])}). If you mean to build this architecture with "
        "random weights, set random_init: true (and seed); random weights are never used "
        "silently."
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


@contextmanager
def hub_errors(source: Source, revision: str | None, what: str = "model") -> Iterator[None]:
    """Turn transformers / huggingface_hub exceptions into one clear ModelLoadError."""
    try:
        yield
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(describe_load_error(exc, source, revision, what)) from exc


def describe_load_error(
    exc: BaseException, source: Source, revision: str | None, what: str = "model"
) -> str:
    name = type(exc).__name__
    text = str(exc)
    ref = source.ref
    if source.kind == "local" or (source.kind == "random" and Path(ref).exists()):
        first = text.splitlines()[0] if text else ""
        return f"could not load the {what} from {ref!r}: {name}: {first}"
    rev = f" (revision {revision!r})" if revision else ""
    lowered = text.lower()
    if name == "RepositoryNotFoundError" or "is not a valid model identifier" in lowered:
        return (
            f"model {ref!r} was not found on the Hugging Face hub: check the id (private or "
            "gated repositories need `hf auth login`), or point checkpoint at a local directory"
        )
    if name == "RevisionNotFoundError" or "invalid git identifier" in lowered:
        return f"model {ref!r}: revision {revision!r} does not exist on the hub"
    offline_markers = ("offline", "couldn't connect", "connection", "cached files", "network")
    if _offline() or name in (
        "OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectionError", "ConnectTimeout",
    ) or any(m in lowered for m in offline_markers):
        return (
            f"model {ref!r}{rev} is not in the local Hugging Face cache and the hub cannot be "
            "reached (offline). Download it once with internet, or point checkpoint at a "
            "local directory"
        )
    first = text.splitlines()[0] if text else ""
    return f"could not load the {what} {ref!r}{rev} from the Hugging Face hub: {name}: {first}"


def dtype_kwarg() -> str:
    """``from_pretrained``'s dtype keyword: ``dtype`` (transformers >= 4.56) or ``torch_dtype``."""
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def config_digest(config: Any) -> str:
    """sha256 of a transformers config's content (without the library version)."""
    d = config.to_dict()
    for key in ("transformers_version", "_commit_hash", "_name_or_path", "_attn_implementation"):
        d.pop(key, None)
    blob = json.dumps(d, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "value"):  # enums (PIL resampling)
        return _jsonable(value.value)
    return str(value)


def processor_identity(processor: Any) -> dict[str, Any]:
    """The preprocessing parameters of a transformers image processor that change numbers."""
    d = processor.to_dict() if hasattr(processor, "to_dict") else dict(vars(processor))
    out = {k: _jsonable(d[k]) for k in _PREPROCESS_KEYS if k in d}
    out["class"] = type(processor).__name__.removesuffix("Pil")
    return out


def default_image_processor(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Any:
    """The documented fallback preprocessing for a bare config (random_init without a
    ``preprocessor_config.json``): bilinear resize to ``image_size``², rescale to [0, 1],
    normalise with the standard ImageNet mean / std. PIL/numpy only (no torchvision)."""
    try:
        from transformers import ViTImageProcessorPil as Proc  # transformers >= 5
    except ImportError:  # pragma: no cover - older transformers
        from transformers import ViTImageProcessor as Proc
    return Proc(
        do_resize=True,
        size={"height": int(image_size), "width": int(image_size)},
        resample=2,
        do_rescale=True,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
    )


def load_image_processor(source: Source, revision: str | None) -> Any | None:
    """The checkpoint's own image processor, or None where it has none."""
    from transformers import AutoImageProcessor

    if source.is_local and not (Path(source.ref) / "preprocessor_config.json").is_file():
        return None
    with hub_errors(source, revision, "image processor"):
        try:
            return AutoImageProcessor.from_pretrained(source.ref, revision=revision)
        except OSError:
            if source.kind == "random":
                return None
            raise


def to_rgb(images: Sequence[Any]) -> list[Any]:
    out = []
    for im in images:
        if hasattr(im, "mode") and im.mode != "RGB":
            im = im.convert("RGB")
        out.append(im)
    return out


def pool_tokens(hidden: Any, mask: Any, how: str, index: Any = None) -> Any:
    """Pool ``[B, T, D]`` to ``[B, D]``: ``cls`` (token 0), ``mean`` (mask-aware),
    ``eos`` / ``last`` (the token at ``index`` per row)."""
    import torch

    if how == "cls":
        return hidden[:, 0]
    if how in ("eos", "last"):
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
    if how == "mean":
        if mask is None:
            return hidden.mean(dim=1)
        m = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
    raise ConfigError(f"unknown pooling {how!r}; use cls, mean or eos")


# -- the base adapter ---------------------------------------------------------------------
class HFAdapter(ModelAdapter):
    """Common machinery of the transformers-based adapters.

    Subclasses set :attr:`name`, implement :meth:`_model_class`, :meth:`_setup` (sites from
    the config), :meth:`_hook_table` (site -> :class:`HookTarget`, may use the loaded model)
    and :meth:`_run` (call the model; return the sites that are computed rather than hooked).
    """

    #: canonical registry name (used in identity()).
    name: ClassVar[str] = ""
    #: allow ``.gguf`` checkpoints.
    allow_gguf: ClassVar[bool] = False

    def __init__(self, spec: ModelSpec, source: Source, config: Any, device: str = "cpu"):
        super().__init__(spec)
        self.source = source
        self.config = config
        self.device = device
        self._model: Any = None
        self._tokenizer: Any = None
        self._processor: Any = None
        self._identity: dict[str, Any] | None = None

    # -- construction ------------------------------------------------------------------
    @classmethod
    def default_checkpoint(cls, spec: ModelSpec) -> str | None:
        """Where weights come from when ``spec.checkpoint`` is None (presets override)."""
        return None

    @classmethod
    def load(cls, spec: ModelSpec, device: str = "cpu") -> HFAdapter:
        torch_dtype(spec.dtype)  # validate early
        source = resolve_source(
            spec, default_checkpoint=cls.default_checkpoint(spec), allow_gguf=cls.allow_gguf
        )
        config = cls._load_config(source, spec)
        adapter = cls(spec, source, config, device)
        adapter._setup()
        return adapter

    @classmethod
    def _config_class(cls) -> Any:
        from transformers import AutoConfig

        return AutoConfig

    @classmethod
    def _load_config(cls, source: Source, spec: ModelSpec) -> Any:
        config_cls = cls._config_class()
        with hub_errors(source, spec.revision, "config"):
            if source.config_file:
                if hasattr(config_cls, "from_json_file") and config_cls.__name__ != "AutoConfig":
                    return config_cls.from_json_file(source.config_file)
                return config_cls.from_pretrained(source.config_file)
            revision = spec.revision if source.kind != "local" else None
            return config_cls.from_pretrained(source.ref, revision=revision)

    def _setup(self) -> None:
        """Compute site lists from ``self.config`` (no weights)."""
        raise NotImplementedError

    def _model_class(self) -> Any:
        raise NotImplementedError

    def _model_kwargs(self) -> dict[str, Any]:
        return {}

    # -- lazy heavy parts --------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The torch module (built / loaded on first access, eval mode, on ``device``)."""
        if self._model is None:
            self._model = self._build_model()
            self._model.eval()
            self._model.to(self.device)
        return self._model

    def _build_model(self) -> Any:
        cls = self._model_class()
        dtype = torch_dtype(self.spec.dtype)
        kwargs = self._model_kwargs()
        if self.source.kind == "random":
            config = copy.deepcopy(self.config)
            with seeded(self.spec.seed):
                if hasattr(cls, "from_config"):  # Auto classes
                    model = cls.from_config(config, attn_implementation="eager", **kwargs)
                else:
                    model = cls._from_config(config, attn_implementation="eager", **kwargs)
            return model.to(dtype)
        revision = self.spec.revision if self.source.kind == "hub" else None
        kwargs[dtype_kwarg()] = dtype
        with hub_errors(self.source, revision, "model"):
            return cls.from_pretrained(
                self._weights_ref(), revision=revision, attn_implementation="eager", **kwargs
            )

    def _weights_ref(self) -> str:
        return self.source.ref

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer()
        return self._tokenizer

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        src = self.source
        revision = self.spec.revision if src.kind != "local" else None
        with hub_errors(src, revision, "tokenizer"):
            try:
                tok = AutoTokenizer.from_pretrained(self._tokenizer_ref(), revision=revision)
            except (OSError, ValueError, TypeError) as exc:
                raise ModelLoadError(
                    f"{self.name}: no usable tokenizer at {self._tokenizer_ref()!r} "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                    "A text model needs its tokenizer files next to the config."
                ) from exc
        tok.padding_side = "right"
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise ModelLoadError(f"{self.name}: the tokenizer has neither pad nor eos token")
            tok.pad_token = tok.eos_token
        return tok

    def _tokenizer_ref(self) -> str:
        return self.source.ref

    @property
    def processor(self) -> Any:
        if self._processor is None:
            proc = load_image_processor(self.source, self.spec.revision)
            self._processor = proc if proc is not None else self._default_processor()
        return self._processor

    def _default_processor(self) -> Any:
        raise ModelLoadError(f"{self.name}: the checkpoint has no image processor")

    # -- description -------------------------------------------------------------------
    def sites(self) -> list[str]:
        return list(self._sites)

    def layer_sites(self, modality: str) -> list[str]:
        if modality not in self.modalities:
            raise ConfigError(
                f"model {self.family!r} has no {modality} tower "
                f"(it takes {', '.join(self.modalities)})"
            )
        return list(self._layer_sites[modality])

    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            self._identity = self._compute_identity()
        return dict(self._identity)

    def _compute_identity(self) -> dict[str, Any]:
        src = self.source
        ident: dict[str, Any] = {
            "adapter": self.name,
            "random_init": bool(self.spec.random_init),
            "dtype": self.spec.dtype,
        }
        if src.kind == "hub":
            ident["checkpoint"] = src.ref
            ident["revision"] = self.spec.revision or getattr(self.config, "_commit_hash", None)
        elif src.kind == "local":
            ident["checkpoint"] = str(Path(src.gguf or src.ref).resolve())
            ident["files"] = dir_fingerprint(src.gguf or src.ref)
        else:
            ident["seed"] = int(self.spec.seed)
            ident["config_sha256"] = config_digest(self.config)
            if Path(src.ref).is_dir():
                ident["files"] = dir_fingerprint(src.ref)
            else:
                ident["revision"] = self.spec.revision or getattr(
                    self.config, "_commit_hash", None
                )
        ident["preprocess"] = self._preprocess_identity()
        if self.spec.options:
            ident["options"] = _jsonable(dict(self.spec.options))
        return ident

    def _preprocess_identity(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "image" in self.modalities:
            out["image"] = processor_identity(self.processor)
        if "text" in self.modalities:
            out["text"] = {
                "max_length": self.max_text_length(),
                "padding": "longest/right",
                "tokenizer": type(self.tokenizer).__name__,
                "pooling": self.pooling_for("text"),
            }
        return out

    # -- running -----------------------------------------------------------------------
    def prepare(self, payloads: Sequence[Any], modality: str) -> Batch:
        if modality not in self.modalities:
            raise ConfigError(f"model {self.family!r} does not take {modality} inputs")
        if modality == "image":
            px = self.processor(images=to_rgb(payloads), return_tensors="pt")["pixel_values"]
            return Batch("image", {"pixel_values": px})
        texts = [str(t) for t in payloads]
        max_len = self.max_text_length()
        lengths = self.text_lengths(texts)
        n_truncated = sum(1 for n in lengths if max_len is not None and n > max_len)
        tok = self.tokenizer
        want_offsets = bool(getattr(tok, "is_fast", False))  # slow tokenizers have none
        enc = dict(tok(
            texts, padding="longest", truncation=max_len is not None, max_length=max_len,
            return_tensors="pt", return_offsets_mapping=want_offsets,
        ))
        offsets = enc.pop("offset_mapping", None)  # [B, T, 2]; not a model input
        if offsets is not None:
            offsets = offsets.numpy()
        return Batch("text", enc, n_truncated=n_truncated, offsets=offsets)

    def text_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token counts including special tokens, BEFORE truncation."""
        if "text" not in self.modalities:
            return super().text_lengths(texts)
        enc = self.tokenizer([str(t) for t in texts], truncation=False, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]

    def _hook_table(self) -> dict[str, HookTarget]:
        raise NotImplementedError

    def _run(
        self, modality: str, inputs: dict[str, Any], want_attn: bool, computed: list[str]
    ) -> dict[str, Any]:
        raise NotImplementedError

    def _eos_index(self, inputs: dict[str, Any]) -> Any:
        """Default: the last real token of each row (right padding)."""
        mask = inputs["attention_mask"]
        return (mask.sum(dim=1) - 1).clamp(min=0).long().cpu()

    def forward(self, batch: Batch, sites: Sequence[str]) -> Trace:
        """Run once under ``torch.no_grad`` in eval mode; hooks only on requested sites.

        Returned tensors are ``float32`` on the CPU (whatever ``device`` / ``dtype``).
        """
        import torch

        sites = list(dict.fromkeys(sites))
        self.check_sites(sites)
        tower = "vision." if batch.modality == "image" else "text."
        wrong = [s for s in sites if not s.startswith(tower)]
        if wrong:
            raise ConfigError(
                f"sites {wrong} do not belong to the {batch.modality} tower of {self.family!r}"
            )
        model = self.model
        model.eval()
        table = self._hook_table()
        targets = {s: table[s] for s in sites if s in table}
        computed = [s for s in sites if s not in table]
        want_attn = any(s.endswith(".attn") for s in sites)
        inputs = to_device(batch.inputs, self.device)
        with torch.no_grad(), capture(model, targets) as got:
            extra = self._run(batch.modality, inputs, want_attn, computed)
        trace = Trace()
        for site in sites:
            value = got.get(site) if site in targets else extra.get(site)
            if value is None:
                raise RuntimeError(f"{self.family}: site {site} was not produced by the forward")
            if site not in targets:  # hooked values are already float32 on the CPU
                value = value.detach().float().cpu()
            (trace.attentions if site.endswith(".attn") else trace.hidden)[site] = value
        if batch.modality == "text":
            trace.attention_mask = batch.inputs["attention_mask"].detach().cpu()
            trace.eos_index = self._eos_index(batch.inputs)
        return trace


def transformer_tower_sites(prefix: str, n_layers: int, attn: bool = True) -> list[str]:
    """``prefix.embed``, then per block ``prefix.blocks.i.attn``, ``prefix.blocks.i``,
    then ``prefix.embedding`` (forward order)."""
    out = [f"{prefix}.embed"]
    for i in range(n_layers):
        if attn:
            out.append(f"{prefix}.blocks.{i}.attn")
        out.append(f"{prefix}.blocks.{i}")
    out.append(f"{prefix}.embedding")
    return out


_LAYER_LIST_FALLBACK = ("encoder.layer", "layers", "h", "transformer.h", "encoder.layers")
_ATTN_FALLBACK = ("attention.self", "attention", "attn", "self_attn")


def locate_blocks(model: Any, n_layers: int, name: str = "model") -> tuple[str, str | None]:
    """(dotted path of the ``ModuleList`` of transformer blocks, path of the attention module
    inside a block) found generically from transformers' ``_can_record_outputs`` (the classes
    whose outputs HF records as hidden states / attentions), with name fallbacks."""
    import torch.nn as nn

    rec = getattr(model, "_can_record_outputs", None) or {}

    def target(entry: Any) -> tuple[Any, str | None]:
        if entry is None:
            return None, None
        cls = getattr(entry, "target_class", entry)
        return (cls if isinstance(cls, type) else None), getattr(entry, "layer_name", None)

    block_cls, _ = target(rec.get("hidden_states"))
    layers = None
    for path, module in model.named_modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module) == n_layers
            and (block_cls is None or isinstance(module[0], block_cls))
        ):
            layers = path
            break
    if layers is None:
        names = dict(model.named_modules())
        layers = next((n for n in _LAYER_LIST_FALLBACK if n in names), None)
    if layers is None:
        raise ModelLoadError(f"{name}: cannot find the transformer blocks of {type(model)}")
    block = model.get_submodule(f"{layers}.0")
    attn_cls, layer_name = target(rec.get("attentions"))
    attn = None
    if attn_cls is not None:
        for path, module in block.named_modules():
            if path and isinstance(module, attn_cls) and (
                layer_name is None or f".{path}".endswith(layer_name)
            ):
                attn = path
                break
    if attn is None:
        sub = dict(block.named_modules())
        attn = next((n for n in _ATTN_FALLBACK if n in sub), None)
    return layers, attn
