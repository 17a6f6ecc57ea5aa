"""Shared code of the Hugging Face ``transformers`` adapters (CLIP, text, vision, fusion).

Where weights come from: :mod:`vlprobe.models.hf_source`; image preprocessing:
:mod:`vlprobe.models.hf_preprocess`.

:class:`HFAdapter` is cheap to ``load()``: it reads the config (a small json) and builds the
site lists; the weights, tokenizer and image processor are loaded on first use
(:attr:`HFAdapter.model`, :attr:`HFAdapter.tokenizer`, :attr:`HFAdapter.processor`).
Models are always built with ``attn_implementation="eager"`` so that attention weights exist.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vlprobe.errors import ConfigError, ModelLoadError
from vlprobe.models._hooks import (
    HookTarget,
    capture,
    dir_fingerprint,
    seeded,
    to_device,
    torch_dtype,
)
from vlprobe.models._payloads import count_truncated, split_pairs, text_tags
from vlprobe.models._towers import tower_layer_sites, transformer_tower_sites
from vlprobe.models.base import Batch, ModelAdapter, ModelSpec, Trace, check_unit_pixels
from vlprobe.models.hf_preprocess import (
    _jsonable,
    load_image_processor,
    processor_identity,
    processor_mean_std,
    processor_window,
    to_rgb,
)
from vlprobe.models.hf_source import (
    Source,
    config_digest,
    dtype_kwarg,
    hub_errors,
    resolve_source,
)
from vlprobe.models.hf_tokenizer import config_vocab_size, load_checked_tokenizer


# -- the base adapter ---------------------------------------------------------------------
class HFAdapter(ModelAdapter):
    """Common machinery of the transformers-based adapters.

    Subclasses set :attr:`name`, :attr:`hf_model` (and :attr:`hf_config`, or override
    :meth:`_model_class` / :meth:`_config_class`), implement :meth:`_setup` (sites from the
    config), :meth:`_hook_table` (site -> :class:`HookTarget`, may use the loaded model) and
    :meth:`_run` (call the model; return the sites that are computed rather than hooked).
    """

    #: canonical registry name (used in identity()).
    name: ClassVar[str] = ""
    #: the ``transformers`` config class (a name in the package), e.g. ``"ViltConfig"``.
    hf_config: ClassVar[str] = "AutoConfig"
    #: the ``transformers`` model class (a name in the package), e.g. ``"ViltModel"``.
    hf_model: ClassVar[str] = ""
    #: the ``spec.options`` keys the adapter knows; any other is a ConfigError at load time.
    #: None: options are not checked.
    known_options: ClassVar[tuple[str, ...] | None] = None
    #: allow ``.gguf`` checkpoints.
    allow_gguf: ClassVar[bool] = False
    #: tokenizer padding: ``"longest"`` (pad to the longest text of the batch) or
    #: ``"max_length"`` (always to :meth:`max_text_length`, for models trained that way).
    text_padding: ClassVar[str] = "longest"
    #: whether the model masks padded text positions out of attention. SigLIP (and
    #: open_clip) pad with EOS to a fixed length and attend to the padding, as published;
    #: their attention rows then sum to 1 over ALL keys, and ``Trace.attention_mask`` still
    #: marks each text's own tokens (for pooling and tag-based statistics).
    masks_padding: ClassVar[bool] = True

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
    def offline_status(cls) -> tuple[bool, str]:
        """transformers families need a checkpoint (hub id online, local dir) or a config for
        random_init; presets whose weights come from a package override this."""
        return (False, "needs checkpoint: hub id (online) or local dir; or random_init + config")

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
        adapter._check_options()
        adapter._setup()
        return adapter

    def _check_options(self) -> None:
        """Refuse ``spec.options`` keys outside :attr:`known_options` (where it is set)."""
        if self.known_options is None:
            return
        unknown = sorted(set(self.spec.options) - set(self.known_options))
        if unknown:
            raise ConfigError(
                f"{self.name}: unknown option(s) {', '.join(unknown)}; "
                f"known: {', '.join(self.known_options)}"
            )

    @classmethod
    def _config_class(cls) -> Any:
        """The config class named by :attr:`hf_config`."""
        import transformers

        return getattr(transformers, cls.hf_config)

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

    def _one_stack(self, prefix: str, modality: str) -> None:
        """``_setup`` of a model that is one stack of ``config.num_hidden_layers`` blocks
        (:attr:`n_layers`): :func:`~vlprobe.models._towers.transformer_tower_sites` under
        ``prefix``, and its layer sites for ``modality``."""
        self.n_layers = int(self.config.num_hidden_layers)
        self._sites = transformer_tower_sites(prefix, self.n_layers)
        self._layer_sites = {modality: tower_layer_sites(prefix, self.n_layers)}

    def _model_class(self) -> Any:
        """The model class named by :attr:`hf_model`."""
        if not self.hf_model:
            raise NotImplementedError(f"{type(self).__name__} sets no hf_model")
        import transformers

        return getattr(transformers, self.hf_model)

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
        """The checkpoint's own tokenizer (:meth:`_tokenizer_ref`), refused where it is
        missing or silently empty (:func:`~vlprobe.models.hf_tokenizer.tokenizer_problem`)."""
        revision = self.spec.revision if self.source.kind != "local" else None
        tok = load_checked_tokenizer(
            self.name, self._tokenizer_ref(), self.source, revision,
            config_vocab_size(self.config),
        )
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

    def input_window(self, width: int, height: int) -> tuple[float, float, float, float]:
        """``(left, top, right, bottom)``: the pixels of a ``width x height`` image that the
        image processor keeps (its feature maps cover exactly this window)."""
        if "image" not in self.modalities:
            raise ConfigError(f"model {self.family!r} takes no images")
        return processor_window(self.processor, width, height)

    # -- description -------------------------------------------------------------------
    def sites(self) -> list[str]:
        return list(self._sites)

    def layer_sites(self, modality: str) -> list[str]:
        if modality not in self.modalities:
            why = self.unsupported_modalities.get(modality)
            raise ConfigError(
                f"model {self.family!r} has no {modality} tower "
                f"(it takes {', '.join(self.modalities)})" + (f": {why}" if why else "")
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
                "padding": f"{self.text_padding}/right",
                "tokenizer": type(self.tokenizer).__name__,
                "pooling": self.pooling_for("text"),
            }
        return out

    # -- running -----------------------------------------------------------------------
    def prepare(self, payloads: Sequence[Any], modality: str) -> Batch:
        if modality not in self.modalities:
            raise self.modality_error(modality)
        if modality == "image":
            return Batch("image", self._image_inputs(payloads))
        if modality == "text":
            inputs, n_truncated, offsets = self._text_inputs(payloads)
            return Batch("text", inputs, n_truncated=n_truncated, offsets=offsets)
        images, texts = split_pairs(payloads, self.family)
        inputs, n_truncated, offsets = self._text_inputs(texts)
        inputs.update(self._image_inputs(images))
        return Batch("pair", inputs, n_truncated=n_truncated, offsets=offsets)

    def _image_inputs(self, images: Sequence[Any]) -> dict[str, Any]:
        """``{"pixel_values": [B, 3, S, S]}`` with the checkpoint's own preprocessing."""
        return {"pixel_values": self.processor(images=to_rgb(images), return_tensors="pt")[
            "pixel_values"]}

    def _text_inputs(self, texts: Sequence[Any]) -> tuple[dict[str, Any], int, Any]:
        """(tokenizer outputs, number of texts truncated, ``[B, T, 2]`` offsets or None)."""
        texts = [str(t) for t in texts]
        max_len = self.max_text_length()
        tok = self.tokenizer
        encoded = tok(
            texts, padding=self.text_padding, truncation=max_len is not None, max_length=max_len,
            return_tensors="pt", return_attention_mask=True,
        )
        n_truncated = count_truncated(self, texts, max_len, encoded)
        # [B, T, 2] character offsets (no model input; slow tokenizers have none) from the
        # padded encodings: return_offsets_mapping's values without its slow tensor conversion
        encodings = getattr(encoded, "encodings", None)
        offsets = None
        if encodings is not None and getattr(tok, "is_fast", False):
            offsets = np.asarray([e.offsets for e in encodings], dtype=np.int64).reshape(
                len(encodings), -1, 2)
        return dict(encoded), n_truncated, offsets

    def text_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token counts including special tokens, BEFORE truncation."""
        if "text" not in self.modalities and "pair" not in self.modalities:
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

    def _text_special_ids(self) -> list[int]:
        """Token ids tagged special in a text batch (default: every special token of the
        tokenizer; fusion models use the ids their pair tags mark special)."""
        return list(self.tokenizer.all_special_ids)

    def _modality_tags(self, batch: Batch, trace: Trace) -> None:
        """Fill ``trace.modality_tags`` (fused sequences) / ``trace.tags_by_stream``
        (two-stream models) for a pair batch. Single-tower adapters have none."""

    def _plan(
        self, sites: Sequence[str], modality: str
    ) -> tuple[list[str], dict[str, HookTarget], list[str], bool]:
        """Check ``sites`` (deduplicated, in order) for ``modality`` and split them:
        (sites, hooked site -> :class:`HookTarget`, sites :meth:`_run` computes, whether any
        attention is wanted). Puts the model in eval mode."""
        sites = list(dict.fromkeys(sites))
        self.check_sites(sites)
        self.check_modality_sites(modality, sites)
        self.model.eval()
        table = self._hook_table()
        targets = {s: table[s] for s in sites if s in table}
        computed = [s for s in sites if s not in table]
        want_attn = any(s.endswith(".attn") for s in sites)
        return sites, targets, computed, want_attn

    def forward(self, batch: Batch, sites: Sequence[str]) -> Trace:
        """Run once under ``torch.no_grad`` in eval mode; hooks only on requested sites.

        Returned tensors are ``float32`` on the CPU (whatever ``device`` / ``dtype``).
        """
        return self._forward(batch, sites, attached=False)

    def forward_attached(self, batch: Batch, sites: Sequence[str]) -> Trace:
        """:meth:`forward` WITH gradients, for any modality: the trace's ``hidden`` and
        ``attentions`` tensors stay in the autograd graph (on the model's device, in its
        dtype), so that gradients of a target w.r.t. attention weights can be taken
        (gradient-weighted attention relevance, V7). Tags, masks and extras as in
        :meth:`forward`. The model stays in eval mode; inputs are not differentiated."""
        return self._forward(batch, sites, attached=True)

    def _forward(self, batch: Batch, sites: Sequence[str], attached: bool) -> Trace:
        import torch

        sites, targets, computed, want_attn = self._plan(sites, batch.modality)
        model = self.model
        inputs = to_device(batch.inputs, self.device)
        grad = torch.enable_grad() if attached else torch.no_grad()
        with grad, capture(model, targets, detach=not attached) as got:
            extra = self._run(batch.modality, inputs, want_attn, computed)
        trace = Trace()
        for site in sites:
            value = got.get(site) if site in targets else extra.get(site)
            if value is None:
                raise RuntimeError(f"{self.family}: site {site} was not produced by the forward")
            if site not in targets and not attached:  # hooked values: already float32, CPU
                value = value.detach().float().cpu()
            (trace.attentions if site.endswith(".attn") else trace.hidden)[site] = value
        if "attention_mask" in batch.inputs:
            trace.attention_mask = batch.inputs["attention_mask"].detach().cpu()
        if batch.modality == "text":
            trace.eos_index = self._eos_index(batch.inputs)
            trace.modality_tags = text_tags(
                batch.inputs["input_ids"], trace.attention_mask, self._text_special_ids()
            )
        if batch.modality == "pair":
            self._modality_tags(batch, trace)
        trace.extras.update(batch.extras)
        return trace

    # -- the differentiable path ---------------------------------------------------------
    def image_pixels(self, images: Sequence[Any]) -> Any:
        if "image" not in self.modalities:
            raise self._no_gradient_path()
        proc = copy.copy(self.processor)
        proc.do_normalize = False
        return proc(images=to_rgb(images), return_tensors="pt")["pixel_values"].float()

    def normalize_pixels(self, pixels: Any) -> Any:
        if "image" not in self.modalities:
            raise self._no_gradient_path()
        import torch

        mean, std = processor_mean_std(self.processor)
        shape = (1, 3, 1, 1)
        m = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(shape)
        s = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(shape)
        return (pixels - m) / s

    def forward_differentiable(self, pixels: Any, sites: Sequence[str]) -> dict[str, Any]:
        if "image" not in self.modalities:
            raise self._no_gradient_path()
        import torch

        sites, targets, computed, want_attn = self._plan(sites, "image")
        check_unit_pixels(pixels, self.family)
        model = self.model
        px = self.normalize_pixels(pixels.to(self.device)).to(torch_dtype(self.spec.dtype))
        with torch.enable_grad(), capture(model, targets, detach=False) as got:
            extra = self._run("image", {"pixel_values": px}, want_attn, computed)
        return {s: (got[s] if s in targets else extra[s]) for s in sites}
