"""Planted attention models for V7 / F6 tests: attention set by construction, so the maps,
rollout, relevance and grounding scores have known answers.

- :class:`PlantedViT`: an image "tower" of ``1 + g*g`` tokens (class token + patches) with
  ``L`` layers of planted attention (``[L, H, T, T]``, rows sum to 1); the hidden state is
  mixed by that attention (``x <- A_mean x``) and ``vision.logits = W x[0]``, so gradients of
  the logit w.r.t. the attention are real torch autograd gradients. It speaks the adapter
  interface V7 uses (``sites``, ``prepare``, ``forward``, ``forward_attached``,
  ``input_window``).
- :class:`PlantedCaptioner`: ``generate_with_attention`` returns fixed captions with planted
  cross-attention ``[L, H, n_tokens, g*g]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from vision_fakes import VisionSource

from vlprobe.captioning.decoding import Generation
from vlprobe.data._common import array_image_source
from vlprobe.data.stimuli import Stimuli
from vlprobe.models.base import Batch, Trace


def cls_attention(g: int, n_layers: int, n_heads: int, target: int) -> np.ndarray:
    """``[L, H, 1 + g*g, 1 + g*g]``: every row uniform, except the class token's row, which in
    every layer and head puts all its attention on patch ``target`` (token ``1 + target``)."""
    t = 1 + g * g
    a = np.full((n_layers, n_heads, t, t), 1.0 / t)
    a[:, :, 0, :] = 0.0
    a[:, :, 0, 1 + target] = 1.0
    return a


@dataclass
class PlantedViT:
    """See the module docstring. ``attention`` ``[L, H, T, T]``; ``key_mask`` ``[T]`` (0 =
    the token is masked out as a key everywhere: the planted attention is renormalised
    without it, so it cannot influence anything)."""

    attention: np.ndarray
    key_mask: np.ndarray | None = None
    width: int = 4
    family: str = "planted_vit"
    modalities: tuple[str, ...] = ("image",)
    vision_class_token: bool = True
    calls: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        a = np.asarray(self.attention, np.float64)
        if self.key_mask is not None:
            a = a * np.asarray(self.key_mask)[None, None, None, :]
            a = a / a.sum(-1, keepdims=True)
        self.attention = a
        n_layers, _, t, _ = a.shape
        gen = torch.Generator().manual_seed(0)
        self.embed = torch.randn(t, self.width, generator=gen, dtype=torch.float64)
        self.head = torch.randn(3, self.width, generator=gen, dtype=torch.float64)
        self.n_layers = n_layers

    def sites(self) -> list[str]:
        return [*(f"vision.blocks.{i}.attn" for i in range(self.n_layers)), "vision.logits"]

    def layer_index(self, site: str) -> int | None:
        return None

    def prepare(self, payloads: Any, modality: str) -> Batch:
        x = torch.stack([torch.as_tensor(np.asarray(im, np.float64)).mean() for im in payloads])
        return Batch(modality, {"brightness": x})

    def _run(self, batch: Batch) -> Trace:
        b = len(batch)
        x = self.embed[None].repeat(b, 1, 1) * (1 + batch.inputs["brightness"])[:, None, None]
        trace = Trace()
        for i in range(self.n_layers):
            a = torch.tensor(self.attention[i])[None].repeat(b, 1, 1, 1).requires_grad_(True)
            trace.attentions[f"vision.blocks.{i}.attn"] = a
            x = a.mean(dim=1) @ x
        trace.hidden["vision.logits"] = x[:, 0] @ self.head.T
        return trace

    def forward(self, batch: Batch, sites: Any) -> Trace:
        self.calls.append("forward")
        with torch.no_grad():
            trace = self._run(batch)
        trace.attentions = {k: v.detach().float() for k, v in trace.attentions.items()}
        return trace

    def forward_attached(self, batch: Batch, sites: Any) -> Trace:
        self.calls.append("forward_attached")
        return self._run(batch)

    def input_window(self, width: int, height: int) -> tuple[float, float, float, float]:
        return (0.0, 0.0, float(width), float(height))


@dataclass
class PlantedCaptioner:
    """A captioner whose every caption is ``words`` and whose cross-attention of the token at
    ``word_index`` puts all its mass on cell ``cell`` (every layer and head); other rows are
    uniform. ``n_layers`` x ``n_heads`` heads over a ``g x g`` grid (plus a class token when
    ``class_token``)."""

    words: list[str]
    word_index: int
    cell: int
    g: int = 4
    n_layers: int = 2
    n_heads: int = 2
    class_token: bool = False
    family: str = "planted_captioner"
    modalities: tuple[str, ...] = ("image", "pair")

    def sites(self) -> list[str]:
        return [f"cross.blocks.{i}.t2v.attn" for i in range(self.n_layers)]

    def layer_index(self, site: str) -> int | None:
        return None

    def input_window(self, width: int, height: int) -> tuple[float, float, float, float]:
        return (0.0, 0.0, float(width), float(height))

    def generate_with_attention(self, images: Any, num_beams: int = 1, **_: Any) -> Generation:
        k = self.g * self.g + int(self.class_token)
        n = len(self.words)
        a = torch.full((self.n_layers, self.n_heads, n, k), 1.0 / k)
        a[:, :, self.word_index] = 0.0
        a[:, :, self.word_index, int(self.class_token) + self.cell] = 1.0
        return Generation(texts=[" ".join(self.words)] * len(images),
                          token_ids=[list(range(n))] * len(images),
                          tokens=[list(self.words)] * len(images),
                          cross_attention=[a.clone() for _ in images])


def image_stimuli(n: int = 3, size: tuple[int, int] = (32, 32), boxes: list | None = None,
                  split: str = "test", captions: bool = False) -> Stimuli:
    """``n`` seeded random RGB images (``size`` = width, height), optional ``boxes``
    descriptor (one list per image) and captions."""
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, size=(n, size[1], size[0], 3), dtype=np.uint8)
    ids = [f"{split}/{i}" for i in range(n)]
    desc = {"boxes": boxes} if boxes is not None else {}
    texts = [f"a photo number {i}" for i in range(n)] if captions else None
    return Stimuli("toy", split, ids, images=array_image_source(px, ids), texts=texts,
                   descriptors=desc)


def source_with(adapters: dict[str, Any], stimuli: Stimuli) -> VisionSource:
    src = VisionSource(split_names=(stimuli.split,))
    src.adapters.update(adapters)
    src.images[stimuli.split] = stimuli
    return src
