"""A planted differentiable image model and a feature source that hands out adapters, for the
V6 / V8 analysis tests (imported as ``from vision_fakes import ...``).

:class:`PlantedColorAdapter` is a real :class:`~vlprobe.models.base.ModelAdapter` with a known
answer: ``vision.blocks.0`` is a fixed 2x2-stride conv that copies the R, G, B channels (plus
their mean as a 4th channel), ``vision.pooled`` their spatial mean, and ``vision.logits`` =
``gain * (pooled_rgb - pooled_mean)``: the class of an image is its dominant colour channel
(0 red, 1 green, 2 blue). Images in :func:`color_stimuli` are flat colours with a dominant
channel ``margin`` above the others, so an L∞ attack needs ε of about ``margin / 2`` to flip
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from test_analysis_fakes import FakeSource

from vlprobe.analyses.base import FeatureRequest
from vlprobe.data._common import array_image_source
from vlprobe.data.stimuli import Stimuli
from vlprobe.models.base import Batch, ModelAdapter, ModelSpec, Trace, check_unit_pixels

SIZE = 16
COLORS = ["red", "green", "blue"]


class PlantedColorAdapter(ModelAdapter):
    """Dominant-colour classifier (see the module docstring)."""

    family: ClassVar[str] = "planted_color"

    def __init__(self, gain: float = 20.0) -> None:
        super().__init__(ModelSpec(adapter="planted_color"))
        import torch

        self.device = "cpu"
        self.gain = gain
        w = torch.zeros(4, 3, 2, 2)
        for c in range(3):
            w[c, c] = 0.25
            w[3, c] = 0.25 / 3
        self.weight = w

    @classmethod
    def load(cls, spec: ModelSpec, device: str = "cpu") -> PlantedColorAdapter:
        return cls()

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("image",)

    def sites(self) -> list[str]:
        return ["vision.blocks.0", "vision.pooled", "vision.logits"]

    def layer_sites(self, modality: str) -> list[str]:
        return ["vision.blocks.0"]

    def identity(self) -> dict[str, Any]:
        return {"adapter": self.family, "gain": self.gain}

    def prepare(self, payloads: Sequence[Any], modality: str) -> Batch:
        return Batch("image", {"pixel_values": self.normalize_pixels(self.image_pixels(payloads))})

    def image_pixels(self, images: Sequence[Any]) -> Any:
        import torch

        arr = np.stack([np.asarray(im.convert("RGB").resize((SIZE, SIZE)), np.float32)
                        for im in images]) / 255.0
        return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()

    def normalize_pixels(self, pixels: Any) -> Any:
        return (pixels - 0.5) / 0.25

    def _run(self, px: Any, sites: Sequence[str]) -> dict[str, Any]:
        import torch.nn.functional as F

        x = px * 0.25 + 0.5  # undo the normalisation: the planted maps work on [0, 1] pixels
        maps = F.conv2d(x, self.weight.to(x.device), stride=2)
        pooled = maps.mean(dim=(2, 3))
        logits = self.gain * (pooled[:, :3] - pooled[:, 3:])
        out = {"vision.blocks.0": maps, "vision.pooled": pooled, "vision.logits": logits}
        return {s: out[s] for s in sites}

    def forward(self, batch: Batch, sites: Sequence[str]) -> Trace:
        import torch

        self.check_sites(sites)
        with torch.no_grad():
            got = self._run(batch.inputs["pixel_values"], sites)
        return Trace(hidden={k: v.float().cpu() for k, v in got.items()})

    def forward_differentiable(self, pixels: Any, sites: Sequence[str]) -> dict[str, Any]:
        import torch

        self.check_sites(sites)
        check_unit_pixels(pixels, self.family)
        with torch.enable_grad():
            return self._run(self.normalize_pixels(pixels), sites)


def color_stimuli(n_per_class: int = 4, margin: float = 0.1, seed: int = 0,
                  split: str = "test") -> Stimuli:
    """Flat-colour images: channel ``label`` is ``margin`` above the other two (which differ
    by a little noise); labels 0..2, names red / green / blue."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class)
    pixels = []
    for y in labels:
        base = rng.uniform(0.3, 0.6)
        rgb = np.full(3, base) + rng.uniform(-0.01, 0.01, 3)
        rgb[y] = base + margin
        pixels.append(np.broadcast_to(rgb * 255, (SIZE, SIZE, 3)).round().astype(np.uint8))
    ids = [f"{split}/{i}" for i in range(len(labels))]
    return Stimuli("toy", split, ids, images=array_image_source(np.stack(pixels), ids),
                   labels=labels, label_names=list(COLORS))


@dataclass
class VisionSource(FakeSource):
    """FakeSource that also gives adapters (``adapter(model)``) and image stimuli."""

    adapters: dict[str, Any] = field(default_factory=dict)
    images: dict[str, Stimuli] = field(default_factory=dict)

    def adapter(self, model: str) -> Any:
        return self.adapters[model]

    def model_modalities(self, model: str) -> tuple[str, ...]:
        return tuple(self.adapters[model].modalities)

    def splits(self, dataset: str) -> list[str]:
        return list(self.images)

    def stimuli(self, request: FeatureRequest) -> Stimuli:
        return self.images[request.split]


def planted_source(margin: float = 0.1, n_per_class: int = 4) -> VisionSource:
    src = VisionSource(split_names=("test",))
    src.adapters["m"] = PlantedColorAdapter()
    src.images["test"] = color_stimuli(n_per_class, margin)
    return src


def stripe_filter(k: int = 9, colour: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Any:
    """A known ``[3, k, k]`` filter: vertical square-wave stripes of period ``k`` (+1 / -1)
    times a colour vector (default grey: the image that excites it most is white / black
    stripes)."""
    import torch

    stripes = torch.where(torch.cos(2 * torch.pi * torch.arange(k) / k) >= 0, 1.0, -1.0)
    return torch.tensor(colour).view(3, 1, 1) * stripes.view(1, 1, k).expand(3, k, k)


class PlantedFilterAdapter(ModelAdapter):
    """A one-layer model whose channel 0 is :func:`stripe_filter` (channels 1.. are seeded
    random filters): each ``k x k`` window is contrast-normalised (minus its mean, divided by
    its norm; the local normalisation of early CNNs) and correlated with the zero-mean filters.
    ``vision.blocks.0`` ``[B, C, h, w]`` is that response map (in [-1, 1]), ``vision.pooled``
    its spatial mean. The image that maximises channel 0 is the filter itself (any brightness
    and contrast), so a visualisation that finds the optimum correlates 1 with it. (A plain
    linear conv would be maximised by the filter's sign pattern saturated to 0 / 1, which the
    sigmoid-bounded Fourier image approaches only slowly.) Pixels go in as they are."""

    family: ClassVar[str] = "planted_filter"

    def __init__(self, k: int = 9, channels: int = 4) -> None:
        super().__init__(ModelSpec(adapter="planted_filter"))
        import torch

        self.device = "cpu"
        g = torch.Generator().manual_seed(0)
        w = torch.randn(channels, 3, k, k, generator=g) * 0.3
        w[0] = stripe_filter(k)
        self.weight = w

    @classmethod
    def load(cls, spec: ModelSpec, device: str = "cpu") -> PlantedFilterAdapter:
        return cls()

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("image",)

    def sites(self) -> list[str]:
        return ["vision.blocks.0", "vision.pooled"]

    def layer_sites(self, modality: str) -> list[str]:
        return ["vision.blocks.0"]

    def identity(self) -> dict[str, Any]:
        return {"adapter": self.family}

    def prepare(self, payloads: Sequence[Any], modality: str) -> Batch:
        return Batch("image", {"pixel_values": self.image_pixels(payloads)})

    def image_pixels(self, images: Sequence[Any]) -> Any:
        import torch

        arr = np.stack([np.asarray(im.convert("RGB").resize((32, 32)), np.float32)
                        for im in images]) / 255.0
        return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()

    def normalize_pixels(self, pixels: Any) -> Any:
        return pixels

    def _run(self, px: Any, sites: Sequence[str]) -> dict[str, Any]:
        import torch.nn.functional as F

        k = self.weight.shape[-1]
        windows = F.unfold(px, k)  # [B, 3 k k, L]
        windows = windows - windows.mean(1, keepdim=True)
        windows = windows / windows.norm(dim=1, keepdim=True).clamp_min(1e-6)
        w = self.weight.flatten(1).to(px.device)
        w = w - w.mean(1, keepdim=True)
        w = w / w.norm(dim=1, keepdim=True)
        maps = (w @ windows).view(px.shape[0], -1, px.shape[2] - k + 1, px.shape[3] - k + 1)
        out = {"vision.blocks.0": maps, "vision.pooled": maps.mean(dim=(2, 3))}
        return {s: out[s] for s in sites}

    def forward(self, batch: Batch, sites: Sequence[str]) -> Trace:
        import torch

        with torch.no_grad():
            return Trace(hidden=self._run(batch.inputs["pixel_values"], sites))

    def forward_differentiable(self, pixels: Any, sites: Sequence[str]) -> dict[str, Any]:
        import torch

        self.check_sites(sites)
        check_unit_pixels(pixels, self.family)
        with torch.enable_grad():
            return self._run(pixels, sites)
