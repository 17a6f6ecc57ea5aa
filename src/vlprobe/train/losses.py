"""Contrastive and regression losses for aligning two towers.

Shapes: ``image [B, E]``, ``text [B, E]``; row ``i`` of both is a matching pair.
"""

from __future__ import annotations

from typing import Any


def info_nce(image: Any, text: Any, logit_scale: Any) -> Any:
    """CLIP's symmetric InfoNCE loss (Radford et al. 2021, fig. 3).

    ``logits = exp(logit_scale) * normalize(image) @ normalize(text).T`` ``[B, B]``; the loss is
    the mean of the cross-entropy of each image over texts and of each text over images, with
    the diagonal as the targets. ``logit_scale`` is the log temperature inverse (a scalar).
    """
    import torch
    import torch.nn.functional as F

    img = F.normalize(image, dim=-1)
    txt = F.normalize(text, dim=-1)
    logits = logit_scale.exp() * img @ txt.T
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def devise_hinge(image: Any, class_text: Any, labels: Any, margin: float = 0.1) -> Any:
    """DeViSE's ranking loss (Frome et al. 2013): for each image, sum over wrong classes of
    ``max(0, margin - s(true) + s(wrong))`` with ``s`` the dot product of the projected image
    ``[B, E]`` and the class-name text embeddings ``[C, E]`` (fixed, L2-normalised)."""
    import torch.nn.functional as F

    txt = F.normalize(class_text, dim=-1)
    scores = image @ txt.T  # [B, C]
    true = scores.gather(1, labels[:, None])
    hinge = (margin - true + scores).clamp(min=0)
    hinge = hinge.scatter(1, labels[:, None], 0.0)
    return hinge.sum(1).mean()
