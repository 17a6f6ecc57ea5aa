"""Classifier heads that PGD attacks through: pixels in [0, 1] -> logits ``[B, K]``.

Every head runs the model's differentiable image path
(:meth:`~vlprobe.models.base.ModelAdapter.forward_differentiable`, the model's own
normalisation inside) and ends in class logits:

- ``own``: the model's own classifier site (EfficientNet-Lite0's ``vision.logits``, the 1000
  ImageNet classes); dataset labels must be the head's class indices.
- ``zero_shot``: a dual encoder's image embedding (``vision.proj``) against one text embedding
  per class: the mean over the prompt templates of the L2-normalised text embeddings of
  ``template.format(class name)`` (CLIP's prompt ensemble), renormalised; logits
  ``scale * cos + bias`` with the model's own ``logit_scale()`` (CLIP: 100, no bias).
- ``linear_probe``: an L2-regularised logistic probe fitted on frozen features of a train
  split (the batched solver of :mod:`~vlprobe.estimators.logistic`, C chosen on a carved
  validation split, refitted on all of train), applied to the same site pooled the same way
  in torch (:func:`torch_pool`). The thesis' setting for CLIP vs supervised models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlprobe.analyses.multimodal.zeroshot_classifier import prompt_classifier
from vlprobe.errors import AnalysisError, ConfigError

HEADS = ("own", "zero_shot", "linear_probe")
TORCH_POOLINGS = ("none", "mean", "cls", "max")


@dataclass
class Head:
    """A differentiable classifier on pixels.

    Attributes:
        kind: one of :data:`HEADS`.
        site: the site the logits come from (the logits, the image embedding or the probed
            site).
        logits: pixels ``[B, 3, S, S]`` in [0, 1] -> float32 logits ``[B, K]``.
        classes: ``[K]`` the dataset label of each head class (-1 where the dataset has none:
            the own head's other ImageNet classes).
        class_names: ``K`` names (for figures), or None.
        info: what was fitted / used (C, templates, scale), recorded in the notes.
    """

    kind: str
    site: str
    logits: Callable[[Any], Any]
    classes: np.ndarray
    class_names: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def head_labels(self, labels: np.ndarray) -> np.ndarray:
        """Dataset labels -> head class indices (-1 for a label the head does not have)."""
        lookup = {int(c): i for i, c in enumerate(self.classes.tolist()) if c >= 0}
        return np.array([lookup.get(int(v), -1) for v in np.asarray(labels)], dtype=np.int64)


def torch_pool(x: Any, method: str) -> Any:
    """The pooling of :mod:`vlprobe.pooling` in torch (differentiable) for image sites:
    ``none`` (already ``[B, D]``), ``mean`` / ``max`` (over the spatial positions of a CNN map
    ``[B, C, h, w]`` or over the tokens of ``[B, T, D]``), ``cls`` (token 0)."""
    if method not in TORCH_POOLINGS:
        raise ConfigError(f"the differentiable path pools with {', '.join(TORCH_POOLINGS)}, "
                          f"not {method!r}")
    if x.ndim == 2:
        return x
    if method == "none":
        raise ConfigError(f"pooling 'none' needs a [B, D] site, got shape {list(x.shape)}")
    if x.ndim == 4:
        if method == "cls":
            raise ConfigError("pooling 'cls' needs a token sequence, not a CNN feature map")
        return x.mean(dim=(2, 3)) if method == "mean" else x.amax(dim=(2, 3))
    if method == "cls":
        return x[:, 0]
    return x.mean(dim=1) if method == "mean" else x.amax(dim=1)


def own_head(adapter: Any, site: str, label_names: Sequence[str] | None) -> Head:
    """The model's own classifier at ``site`` (e.g. ``vision.logits``)."""
    if site not in adapter.sites():
        raise AnalysisError(f"model {adapter.family!r} has no classifier site {site!r} (head "
                            "'own' needs one; use head zero_shot or linear_probe)")

    def logits(pixels: Any) -> Any:
        out = adapter.forward_differentiable(pixels, [site])[site]
        if out.ndim != 2:
            raise AnalysisError(f"model {adapter.family!r} site {site!r} gives shape "
                                f"{list(out.shape)}; head 'own' needs [B, n_classes] logits")
        return out.float()

    import torch

    probe = adapter.image_pixels([_gray_image()])
    with torch.no_grad():
        k = int(logits(probe).shape[1])
    names = list(label_names) if label_names is not None and len(label_names) == k else None
    return Head("own", site, logits, np.arange(k), names, {"n_classes": k})


def zero_shot_head(adapter: Any, class_features: np.ndarray, class_labels: np.ndarray,
                   label_names: Sequence[str], templates: Sequence[str]) -> Head:
    """Zero-shot head from the text embeddings of the class prompts (``[P, E]`` features of
    one prompt per (class, template), ``class_labels`` ``[P]`` their class in
    ``0..len(label_names)-1``, every class with every template). The class vectors are M1's
    (:func:`~vlprobe.analyses.multimodal.zeroshot_classifier.prompt_classifier`)."""
    import torch

    site = adapter.embedding_site("image")
    scale_bias = adapter.logit_scale() if hasattr(adapter, "logit_scale") else None
    scale = float((scale_bias or {}).get("scale") or 100.0)
    bias = (scale_bias or {}).get("bias")
    classes = np.arange(len(label_names))
    emb = prompt_classifier(np.asarray(class_features), np.asarray(class_labels), len(classes),
                            f"zero-shot head of {adapter.family!r}: class prompts")
    text = torch.as_tensor(emb, dtype=torch.float32)

    def logits(pixels: Any) -> Any:
        image = adapter.forward_differentiable(pixels, [site])[site].float()
        image = image / image.norm(dim=1, keepdim=True).clamp_min(1e-12)
        out = scale * image @ text.to(image.device).T
        return out + float(bias) if bias is not None else out

    info = {"scale": scale, "bias": bias, "n_templates": len(templates)}
    names = [str(name) for name in label_names]
    return Head("zero_shot", site, logits, classes.astype(np.int64), names, info)


def fit_probe(x: np.ndarray, y: np.ndarray, Cs: Sequence[float], val_fraction: float,
              seed: int, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Fit the logistic probe: C with the best validation accuracy (ties -> smaller C) on a
    seeded stratified carve, then refit on all rows. Returns (classes ``[K]``, weights
    ``[K, D]``, intercepts ``[K]``, info) in the ORIGINAL feature space; a binary probe is
    expanded to two classes (logits ``[0, z]``)."""
    from vlprobe.analyses._common import carve_validation
    from vlprobe.estimators.logistic import fit_logistic_path

    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        raise AnalysisError(f"{what}: the probe needs >= 2 classes in the train split")
    fit_idx, val_idx = carve_validation(y, val_fraction, seed, what)
    path = fit_logistic_path([x[fit_idx]], y[fit_idx], list(Cs))
    acc = path.score([x[val_idx]], y[val_idx])[0]
    best = int(np.flatnonzero(acc >= acc.max() - 1e-12)[0])  # Cs ascending: smallest C wins
    C = float(np.asarray(path.Cs)[best])
    refit = fit_logistic_path([x], y, [C])
    w, b = refit.coef_original(0, 0)
    if w.shape[0] == 1:  # binary: sklearn's single row scores the second class
        w = np.concatenate([np.zeros_like(w), w])
        b = np.concatenate([np.zeros_like(b), b])
    info = {"C": C, "val_accuracy": float(acc[best]), "converged": bool(refit.converged.all())}
    return refit.classes, w, b, info


def linear_probe_head(adapter: Any, site: str, pooling: str, x_train: np.ndarray,
                      y_train: np.ndarray, label_names: Sequence[str] | None,
                      Cs: Sequence[float], val_fraction: float, seed: int, what: str) -> Head:
    """Logistic probe on ``x_train`` (``[N, D]`` features of ``site`` pooled by ``pooling``)
    as a differentiable head."""
    import torch

    if pooling not in TORCH_POOLINGS:
        raise ConfigError(f"{what}: probe pooling {pooling!r} has no differentiable version; "
                          f"use one of {', '.join(TORCH_POOLINGS)}")
    Cs = sorted(float(c) for c in Cs)
    classes, w, b, info = fit_probe(np.asarray(x_train), np.asarray(y_train), Cs,
                                    val_fraction, seed, what)
    weight = torch.as_tensor(w, dtype=torch.float32)
    intercept = torch.as_tensor(b, dtype=torch.float32)

    def logits(pixels: Any) -> Any:
        feats = torch_pool(adapter.forward_differentiable(pixels, [site])[site], pooling)
        feats = feats.float()
        return feats @ weight.to(feats.device).T + intercept.to(feats.device)

    names = None
    if label_names is not None:
        names = [str(label_names[c]) if 0 <= c < len(label_names) else str(c)
                 for c in classes.tolist()]
    info.update({"pooling": pooling, "n_train": len(y_train)})
    return Head("linear_probe", site, logits, np.asarray(classes, dtype=np.int64), names, info)


def _gray_image() -> Any:
    from PIL import Image

    return Image.new("RGB", (64, 64), (128, 128, 128))
