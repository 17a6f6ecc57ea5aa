"""Trainable projection heads and the learnable temperature of an aligned dual encoder (M8).

Each head maps a frozen tower feature ``[B, D_tower]`` to the joint space ``[B, E]``: ``linear``
(one ``Linear``) or ``mlp`` (Linear -> GELU -> Linear, hidden width ``hidden``). The temperature
is CLIP's: ``logit_scale`` initialised at ``log(1 / 0.07)`` and clamped to ``log(100)``.
"""

from __future__ import annotations

import math
from typing import Any

from vlprobe.errors import ConfigError

HEAD_KINDS = ("linear", "mlp")
MAX_LOGIT_SCALE = math.log(100.0)


def make_head(in_dim: int, out_dim: int, kind: str = "linear", hidden: int = 1024) -> Any:
    """A projection head ``[B, in_dim] -> [B, out_dim]``."""
    import torch.nn as nn

    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
    raise ConfigError(f"head kind must be one of {HEAD_KINDS}, got {kind!r}")


def aligned_heads(
    image_dim: int, text_dim: int, embed_dim: int, kind: str = "linear", hidden: int = 1024,
    init_temperature: float = 0.07,
) -> Any:
    """An :class:`AlignedHeads` module (built lazily so that importing needs no torch)."""
    import torch
    import torch.nn as nn

    class AlignedHeads(nn.Module):
        """Standardise each frozen feature with train statistics (buffers ``*_mean``,
        ``*_std`` ``[D]``), project it (``image`` / ``text`` heads) and hold CLIP's
        ``logit_scale``. ``embed_image [B, D_image] -> [B, E]``, ``embed_text`` likewise."""

        def __init__(self) -> None:
            super().__init__()
            self.image = make_head(image_dim, embed_dim, kind, hidden)
            self.text = make_head(text_dim, embed_dim, kind, hidden)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
            for name, dim in (("image", image_dim), ("text", text_dim)):
                self.register_buffer(f"{name}_mean", torch.zeros(dim))
                self.register_buffer(f"{name}_std", torch.ones(dim))

        def set_standardisation(self, image: Any, text: Any) -> None:
            """Train-split mean / std of the frozen features (``[N, D]`` arrays)."""
            for name, x in (("image", image), ("text", text)):
                x = torch.as_tensor(x, dtype=torch.float32)
                getattr(self, f"{name}_mean").copy_(x.mean(0))
                getattr(self, f"{name}_std").copy_(x.std(0).clamp(min=1e-6))

        def embed_image(self, x: Any) -> Any:
            return self.image((x - self.image_mean) / self.image_std)

        def embed_text(self, x: Any) -> Any:
            return self.text((x - self.text_mean) / self.text_std)

    return AlignedHeads()


def clamp_logit_scale(module: Any) -> None:
    """Keep ``logit_scale`` in ``[0, log 100]`` (CLIP clips the temperature this way)."""
    import torch

    with torch.no_grad():
        module.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
