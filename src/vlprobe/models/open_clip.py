"""OpenCLIP dual encoders (package ``open_clip_torch``; optional extra ``vlprobe[open_clip]``).

The model is built by open_clip itself, with open_clip's own names:
``open_clip.create_model_and_transforms(options.model, pretrained=...)``.

- ``options.model``: an open_clip model name (``open_clip.list_models()``, e.g. ``"ViT-B-32"``),
  ``"hf-hub:org/repo"``, or a local directory holding ``open_clip_config.json`` (read with
  open_clip's ``local-dir:`` schema; the prefix is optional).
- ``checkpoint``: the weights: an open_clip pretrained tag (``open_clip.list_pretrained()``,
  e.g. ``"laion2b_s34b_b79k"``; downloaded by open_clip, online), a hub id ``org/repo`` (its
  ``open_clip_config.json`` and weights; ``options.model`` is then not needed), a local weights
  file (``.pt`` / ``.pth`` / ``.bin`` / ``.safetensors``) or a directory holding one; empty for
  an ``hf-hub:`` / ``local-dir`` model that carries its weights. ``random_init: true`` builds
  ``options.model`` with seeded random weights.

open_clip needs torchvision built for the installed torch. On the project's CPU torch 2.13.0,
PyPI's torchvision 0.28.0 is a CUDA 13.0 build (``0.28.0+cu130``) whose ``_C.so`` links
``libc10_cuda.so``; ``import torchvision`` then fails with ``RuntimeError: operator
torchvision::nms does not exist``, so this adapter is not usable there (a clear
:class:`~vlprobe.errors.ModelLoadError` says so). It passes the adapter conformance tests in a
separate venv with torch 2.14.1 + torchvision 0.29.1 (CUDA builds, run on the CPU) and
open_clip_torch 3.3.0.

Supported towers: open_clip's own ``VisionTransformer`` and text transformer (``CLIP`` and
``CustomTextCLIP``); timm / ResNet image towers and Hugging Face text towers are refused with a
clear error (use the ``clip`` / ``siglip`` / ``hf_*`` adapters for those).

Sites (L = blocks of the tower; ``visual.transformer.resblocks`` / ``[text.]transformer``):

- ``vision.stem``: layer 0, the input of block 0 (after ``ln_pre``) ``[B, 1+P, D]``;
- ``vision.blocks.{i}``: output of block ``i`` ``[B, 1+P, D]`` (before ``ln_post``);
- ``vision.proj``: ``encode_image(normalize=False)`` ``[B, E]``;
- ``text.stem`` / ``text.blocks.{i}``: the same for the text tower ``[B, C, D]`` (C = context
  length, 77 for most models; every text is padded to it, as open_clip's tokenizer does);
- ``text.proj``: ``encode_text(normalize=False)`` ``[B, E]``.

No attention sites: open_clip's blocks call ``nn.MultiheadAttention(need_weights=False)``.
Default poolings follow the model's own: vision ``cls`` for ``pool_type: tok`` (else ``mean``);
text ``eos`` at the token open_clip pools (``argmax``: the largest id = end of text; ``eos``: the
first ``eos_id``; ``last``: ``C-1``), ``cls`` for ``pool_type: first``.
``Trace.attention_mask`` marks each text's tokens up to its last non-pad token.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from vlprobe.errors import ConfigError, ModelLoadError
from vlprobe.modality import check_sites_for
from vlprobe.models._hooks import (
    HookTarget,
    capture,
    dir_fingerprint,
    package_dir,
    seeded,
    to_device,
    torch_dtype,
)
from vlprobe.models._towers import tower_layer_sites, transformer_tower_sites
from vlprobe.models.base import Batch, ModelAdapter, ModelSpec, Trace, check_unit_pixels
from vlprobe.models.hf_preprocess import to_rgb
from vlprobe.models.hf_source import Source, describe_load_error, looks_like_path
from vlprobe.settings import expand_path

EXTRA = "vlprobe[open_clip]"
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
_TOWER = {"image": "vision", "text": "text"}


def import_open_clip() -> Any:
    """The ``open_clip`` module, or a ModelLoadError naming the extra and the torchvision
    requirement (a torchvision built for another torch fails with RuntimeError / OSError, not
    ImportError, so every exception of the import is caught)."""
    try:
        import open_clip
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelLoadError(
            f"open_clip adapter: importing open_clip failed ({type(exc).__name__}: {first}). "
            f"Install the optional extra: pip install '{EXTRA}' (open_clip_torch) together with "
            "a torchvision built for the installed torch. PyPI's torchvision 0.28.0 for torch "
            "2.13.0 is a CUDA build that fails to import beside the CPU torch wheel "
            "('operator torchvision::nms does not exist')."
        ) from exc
    return open_clip


class OpenCLIPAdapter(ModelAdapter):
    """OpenCLIP ViT dual encoders via ``open_clip.create_model_and_transforms``."""

    family: ClassVar[str] = "open_clip"
    name: ClassVar[str] = "open_clip"
    summary: ClassVar[str] = (
        f"OpenCLIP dual encoder (open_clip model/pretrained names; optional extra {EXTRA})"
    )
    default_pooling: ClassVar[str] = "cls"
    #: open_clip's tokenizer always pads to the context length.
    text_padding: ClassVar[str] = "max_length"
    masks_padding: ClassVar[bool] = False

    @classmethod
    def offline_status(cls) -> tuple[bool, str]:
        missing = [dist for mod, dist in (("open_clip", "open_clip_torch"),
                                          ("torchvision", "torchvision")) if not package_dir(mod)]
        if missing:
            return (False, f"needs extra {EXTRA}: {', '.join(missing)} not installed "
                           "(torchvision must be built for the installed torch)")
        return (False, "needs options.model + a pretrained tag / hf-hub id (online) or a local "
                       "weights file; or random_init")

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this adapter cannot run in this environment (open_clip / torchvision fail to
        import), or None."""
        try:
            import_open_clip()
        except ModelLoadError as exc:
            return str(exc)
        return None

    def __init__(
        self, spec: ModelSpec, model_name: str, weights: tuple[str, Any], cfg: dict[str, Any],
        device: str = "cpu",
    ) -> None:
        super().__init__(spec)
        self.model_name = model_name
        self.weights = weights  # (kind, value): random | bundled | hub | tag | file
        self.cfg = cfg
        self.device = device
        vision, text = cfg["vision_cfg"], cfg["text_cfg"]
        self.n_vision, self.n_text = int(vision["layers"]), int(text.get("layers", 12))
        self.context_length = int(text.get("context_length", 77))
        self.vision_pool = vision.get("pool_type", "tok")
        self.text_pool = text.get("pool_type", "argmax")
        self._sites = transformer_tower_sites(
            "vision", self.n_vision, attn=False, final="proj"
        ) + transformer_tower_sites("text", self.n_text, attn=False, final="proj")
        self._layer_sites = {
            "image": tower_layer_sites("vision", self.n_vision),
            "text": tower_layer_sites("text", self.n_text),
        }
        self._model: Any = None
        self._preprocess: Any = None
        self._tokenizer: Any = None
        self._identity: dict[str, Any] | None = None

    # -- construction ------------------------------------------------------------------
    @classmethod
    def load(cls, spec: ModelSpec, device: str = "cpu") -> OpenCLIPAdapter:
        torch_dtype(spec.dtype)
        oc = import_open_clip()
        model_name, weights = cls._resolve(spec)
        try:
            cfg = oc.get_model_config(model_name)
        except Exception as exc:
            ref = model_name.removeprefix("hf-hub:")
            kind = "hub" if model_name.startswith("hf-hub:") else "local"
            raise ModelLoadError(describe_load_error(exc, Source(kind, ref), None)) from exc
        if cfg is None:
            raise ConfigError(
                f"open_clip has no model {model_name!r}; use a name of open_clip.list_models() "
                "(e.g. 'ViT-B-32'), 'hf-hub:org/repo' or a local directory with "
                "open_clip_config.json"
            )
        cls._check_supported(model_name, cfg)
        if weights[0] == "tag" and not oc.get_pretrained_cfg(model_name, weights[1]):
            tags = oc.list_pretrained_tags_by_model(model_name)
            raise ModelLoadError(
                f"open_clip: {weights[1]!r} is not a pretrained tag of {model_name!r} "
                f"(tags: {', '.join(tags) or 'none'}) nor an existing weights file"
            )
        return cls(spec, model_name, weights, cfg, device)

    @staticmethod
    def _resolve(spec: ModelSpec) -> tuple[str, tuple[str, Any]]:
        """(open_clip model name, (weights kind, value)) from a spec."""
        model = spec.options.get("model")
        ckpt = spec.checkpoint
        is_schema = str(model).startswith(("hf-hub:", "local-dir:"))
        if model and not is_schema and (
            looks_like_path(str(model)) or expand_path(str(model)).is_dir()
        ):
            path = expand_path(str(model))
            if not (path / "open_clip_config.json").is_file():
                raise ModelLoadError(
                    f"open_clip: options.model {str(model)!r} is not a directory with "
                    "open_clip_config.json"
                )
            model = f"local-dir:{path}"
        hub_id = bool(ckpt) and "/" in ckpt and not looks_like_path(ckpt)
        if ckpt and not spec.random_init and hub_id and not expand_path(ckpt).exists():
            return f"hf-hub:{ckpt}", ("hub", ckpt)
        if not model:
            raise ConfigError(
                "open_clip: set options.model to an open_clip model name (open_clip.list_models"
                "(), e.g. 'ViT-B-32'), 'hf-hub:org/repo' or a directory with open_clip_config.json"
            )
        model = str(model)
        if spec.random_init:
            return model, ("random", None)
        if not ckpt:
            if model.startswith("local-dir:"):
                path = Path(model.removeprefix("local-dir:"))
                if not any(f.suffix in _WEIGHT_SUFFIXES for f in path.iterdir()):
                    raise ModelLoadError(
                        f"open_clip: {str(path)!r} has a config but no weights. If you mean "
                        "random weights, set random_init: true (and seed)"
                    )
                return model, ("bundled", None)
            if model.startswith("hf-hub:"):
                return model, ("bundled", None)
            raise ConfigError(
                f"open_clip: no weights for {model!r}: set checkpoint to a pretrained tag "
                "(open_clip.list_pretrained_tags_by_model) or a local weights file, or set "
                "random_init: true"
            )
        path = expand_path(ckpt)
        if path.is_file():
            return model, ("file", path)
        if path.is_dir():
            files = sorted(f for f in path.iterdir() if f.suffix in _WEIGHT_SUFFIXES)
            if len(files) == 1:
                return model, ("file", files[0])
            if files:
                raise ModelLoadError(
                    f"open_clip: {str(path)!r} holds several weight files "
                    f"({', '.join(f.name for f in files)}); give the file itself"
                )
            raise ModelLoadError(
                f"open_clip: {str(path)!r} has no weights ({', '.join(_WEIGHT_SUFFIXES)}). If "
                "you mean random weights, set random_init: true (and seed)"
            )
        if looks_like_path(ckpt):
            raise ModelLoadError(f"open_clip: checkpoint path {ckpt!r} does not exist")
        return model, ("tag", ckpt)

    @staticmethod
    def _check_supported(model_name: str, cfg: dict[str, Any]) -> None:
        vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
        why = None
        if "timm_model_name" in vision or not isinstance(vision.get("layers"), int):
            why = "its image tower is a timm model or a ResNet"
        elif vision.get("attentional_pool") or vision.get("pool_type", "tok") not in (
            "tok", "avg"
        ):
            why = "its image tower pools with an attention pooler"
        elif "hf_model_name" in text or text.get("embed_cls"):
            why = "its text tower is a Hugging Face model or has a CLS embedding"
        elif "multimodal_cfg" in cfg:
            why = "it is a captioner (CoCa)"
        if why:
            raise ModelLoadError(
                f"open_clip: model {model_name!r} is not supported by this adapter: {why}. "
                "Supported: open_clip ViT image towers with open_clip text transformers"
            )

    @property
    def model(self) -> Any:
        """The open_clip model (built on first use, eval mode, on ``device``)."""
        if self._model is None:
            self._model, self._preprocess = self._build()
        return self._model

    def _build(self) -> tuple[Any, Any]:
        oc = import_open_clip()
        kind, value = self.weights
        pretrained = value if kind == "tag" else None
        load_weights = kind in ("tag", "hub", "bundled")
        try:
            with seeded(self.spec.seed):
                model, _, preprocess = oc.create_model_and_transforms(
                    self.model_name, pretrained=pretrained, load_weights=load_weights
                )
            if kind == "file":
                oc.load_checkpoint(model, str(value), strict=True)
        except Exception as exc:
            ref = str(value) if kind in ("hub", "file") else self.model_name
            src = Source("local" if kind in ("file", "bundled", "random") else "hub", ref)
            raise ModelLoadError(describe_load_error(exc, src, None, "open_clip model")) from exc
        model.eval()
        model.to(device=self.device, dtype=torch_dtype(self.spec.dtype))
        return model, preprocess

    @property
    def preprocess(self) -> Any:
        """open_clip's inference image transform (resize, crop, to tensor, normalise)."""
        self.model  # noqa: B018 - builds model and transform together
        return self._preprocess

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = import_open_clip().get_tokenizer(self.model_name)
        return self._tokenizer

    # -- description -------------------------------------------------------------------
    @property
    def modalities(self) -> tuple[str, ...]:
        return ("image", "text")

    def sites(self) -> list[str]:
        return list(self._sites)

    def layer_sites(self, modality: str) -> list[str]:
        if modality not in self._layer_sites:
            raise ConfigError(f"model {self.family!r} has no {modality} tower (image + text)")
        return list(self._layer_sites[modality])

    def embedding_site(self, modality: str) -> str:
        return f"{_TOWER[modality]}.proj"

    def pooling_for(self, modality: str) -> str:
        if modality == "image":
            return "cls" if self.vision_pool == "tok" else "mean"
        return "cls" if self.text_pool == "first" else "eos"

    def max_text_length(self) -> int | None:
        return self.context_length

    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            import open_clip.model as oc_model

            kind, value = self.weights
            ident: dict[str, Any] = {
                "adapter": self.name,
                "model": self.model_name,
                "random_init": kind == "random",
                "dtype": self.spec.dtype,
                "open_clip": getattr(import_open_clip(), "__version__", None),
                "model_cfg": self.cfg,
                "preprocess": {
                    k: (list(v) if isinstance(v, tuple) else v)
                    for k, v in oc_model.get_model_preprocess_cfg(self.model).items()
                },
            }
            if kind == "random":
                ident["seed"] = int(self.spec.seed)
            elif kind == "file":
                ident["checkpoint"] = str(Path(value).resolve())
                ident["files"] = dir_fingerprint(value)
            else:
                ident["checkpoint"] = value or self.model_name
            self._identity = ident
        return dict(self._identity)

    def logit_scale(self) -> dict[str, float | None]:
        """``{"scale": exp(logit_scale), "bias": logit_bias or None}``."""
        bias = getattr(self.model, "logit_bias", None)
        return {
            "scale": float(self.model.logit_scale.detach().exp()),
            "bias": None if bias is None else float(bias.detach()),
        }

    # -- running -----------------------------------------------------------------------
    def prepare(self, payloads: Sequence[Any], modality: str) -> Batch:
        import torch

        if modality == "image":
            images = to_rgb(payloads)
            return Batch("image", {"pixel_values": torch.stack([self.preprocess(im)
                                                                 for im in images])})
        if modality != "text":
            raise ConfigError(f"model {self.family!r} does not take {modality} inputs")
        texts = [str(t) for t in payloads]
        ids = self.tokenizer(texts, context_length=self.context_length)
        n_truncated = sum(1 for n in self.text_lengths(texts) if n > self.context_length)
        pad = int(self._text_tower_attr("pad_id", 0))
        real = ids != pad
        pos = torch.arange(ids.shape[1]).expand_as(ids)
        last = torch.where(real, pos, torch.zeros_like(pos)).max(dim=1).values
        mask = (pos <= last[:, None]).long()
        return Batch("text", {"input_ids": ids, "attention_mask": mask}, n_truncated=n_truncated)

    def text_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token counts with start / end tokens, before truncation."""
        tok = self.tokenizer
        if hasattr(tok, "encode") and hasattr(tok, "sot_token_id"):
            return [len(tok.encode(str(t))) + 2 for t in texts]
        hf = tok.tokenizer  # open_clip's HFTokenizer wraps a transformers tokenizer
        return [len(hf(str(t))["input_ids"]) for t in texts]

    def _text_tower_attr(self, name: str, default: Any) -> Any:
        model = self.model
        tower = getattr(model, "text", model)
        return getattr(tower, name, default)

    def _eos_index(self, ids: Any) -> Any:
        import torch

        if self.text_pool == "eos":
            eos = self._text_tower_attr("text_eos_id", None) or self._text_tower_attr("eos_id", 0)
            return (ids == eos).int().argmax(dim=-1).long()
        if self.text_pool == "last":
            return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long)
        if self.text_pool == "first":
            return torch.zeros(ids.shape[0], dtype=torch.long)
        return ids.argmax(dim=-1).long()

    def _hook_table(self) -> dict[str, HookTarget]:
        text = "text.transformer" if hasattr(self.model, "text") else "transformer"
        table = {}
        for stream, path, n in (
            ("vision", "visual.transformer", self.n_vision), ("text", text, self.n_text)
        ):
            table[f"{stream}.stem"] = HookTarget(f"{path}.resblocks.0", "input")
            for i in range(n):
                table[f"{stream}.blocks.{i}"] = HookTarget(f"{path}.resblocks.{i}")
        return table

    def _run(self, modality: str, x: Any, sites: list[str], detach: bool) -> dict[str, Any]:
        """One pass of a tower with hooks on the requested blocks; ``[B, T, D]`` whatever
        the transformer's ``batch_first``."""
        model = self.model
        model.eval()
        table = self._hook_table()
        targets = {s: table[s] for s in sites if s in table}
        with capture(model, targets, detach=detach) as got:
            if modality == "image":
                emb = model.encode_image(x, normalize=False)
            else:
                emb = model.encode_text(x, normalize=False)
        blocks = model.visual.transformer if modality == "image" else (
            getattr(model, "text", model).transformer
        )
        out = {}
        for site in sites:
            if site in targets:
                value = got[site]
                out[site] = value if blocks.batch_first else value.transpose(0, 1)
            else:
                out[site] = emb.detach().float().cpu() if detach else emb
        return out

    def forward(self, batch: Batch, sites: Sequence[str]) -> Trace:
        """Run once under ``torch.no_grad``; float32 CPU tensors."""
        import torch

        sites = list(dict.fromkeys(sites))
        self.check_sites(sites)
        check_sites_for(batch.modality, sites, self.family)
        inputs = to_device(batch.inputs, self.device)
        if batch.modality == "image":
            x = inputs["pixel_values"].to(torch_dtype(self.spec.dtype))
        else:
            x = inputs["input_ids"]
        with torch.no_grad():
            got = self._run(batch.modality, x, sites, detach=True)
        trace = Trace()
        trace.hidden.update(got)
        if batch.modality == "text":
            trace.attention_mask = batch.inputs["attention_mask"].detach().cpu()
            trace.eos_index = self._eos_index(batch.inputs["input_ids"].cpu())
        return trace

    # -- the differentiable path -------------------------------------------------------
    def _normalize_transform(self) -> Any:
        from torchvision.transforms import Normalize

        found = [t for t in self.preprocess.transforms if isinstance(t, Normalize)]
        if len(found) != 1:
            raise ModelLoadError("open_clip: the image transform has no single Normalize step")
        return found[0]

    def image_pixels(self, images: Sequence[Any]) -> Any:
        """open_clip's inference transform without its ``Normalize``: ``[B, 3, S, S]`` in
        [0, 1]."""
        import torch

        norm = self._normalize_transform()
        steps = [t for t in self.preprocess.transforms if t is not norm]
        out = []
        for im in to_rgb(images):
            for step in steps:
                im = step(im)
            out.append(im)
        return torch.stack(out).float()

    def normalize_pixels(self, pixels: Any) -> Any:
        import torch

        norm = self._normalize_transform()
        shape = (1, 3, 1, 1)
        mean = torch.tensor(norm.mean, dtype=pixels.dtype, device=pixels.device).view(shape)
        std = torch.tensor(norm.std, dtype=pixels.dtype, device=pixels.device).view(shape)
        return (pixels - mean) / std

    def forward_differentiable(self, pixels: Any, sites: Sequence[str]) -> dict[str, Any]:
        import torch

        sites = list(dict.fromkeys(sites))
        self.check_sites(sites)
        check_sites_for("image", sites, self.family)
        check_unit_pixels(pixels, self.family)
        px = self.normalize_pixels(pixels.to(self.device)).to(torch_dtype(self.spec.dtype))
        with torch.enable_grad():
            return self._run("image", px, sites, detach=False)
