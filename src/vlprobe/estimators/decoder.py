"""The V5 decoder (used by :mod:`vlprobe.analyses.vision.reconstruction`): features -> pixels.

- :func:`build_decoder`: ``[B, C, g, g]`` -> ``[B, 3 or 1, S, S]`` conv decoder.
- :func:`fit_decoder`: seeded Adam / MSE training with early stopping on a validation split
  (local seeding: the global torch RNG is left as the caller had it).

Its figures are in :mod:`vlprobe.analyses.vision.plots`; the targets (images of a split) are
loaded by :func:`vlprobe.analyses.vision.reconstruction.load_targets`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np


def build_decoder(in_channels: int, grid: int, size: int, out_channels: int, width: int = 32):
    """``[B, C, g, g]`` -> ``[B, out, size, size]``.

    1x1 conv to ``width`` + ReLU; bilinear resize of the ``g x g`` map to ``size / 2**k``
    (``k = floor(log2(size / g))``: 7 -> 8 for 32 px); ``k`` stages of (nearest upsample x2 +
    3x3 conv + ReLU), channels halved each stage (at least 16); a bilinear resize to ``size``
    if the sides do not divide; final 3x3 conv + sigmoid. About 1 ms per 32 px image
    (forward + backward, one CPU thread) at the default width."""
    import math

    from torch import nn

    layers: list[Any] = [nn.Conv2d(in_channels, width, 1), nn.ReLU()]
    k = max(0, math.floor(math.log2(size / grid))) if size >= grid else 0
    side = max(1, round(size / 2**k))
    if side != grid:
        layers.append(nn.Upsample(size=(side, side), mode="bilinear", align_corners=False))
    ch = width
    for _ in range(k):
        nxt = max(ch // 2, 16)
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, nxt, 3, padding=1),
                   nn.ReLU()]
        side, ch = 2 * side, nxt
    if side != size:
        layers.append(nn.Upsample(size=(size, size), mode="bilinear", align_corners=False))
    layers += [nn.Conv2d(ch, out_channels, 3, padding=1), nn.Sigmoid()]
    return nn.Sequential(*layers)


@dataclass
class DecoderFit:
    """One trained decoder.

    Attributes:
        test_mse / val_mse: mean squared error per pixel (values in [0, 1]) of the best state.
        best_epoch: epoch (1-based) of the lowest val MSE; epochs_run: epochs trained.
        examples: ``[k, out, S, S]`` reconstructions of the first ``k`` test images.
    """

    test_mse: float
    val_mse: float
    best_epoch: int
    epochs_run: int
    examples: np.ndarray


def _mse(model: Any, x: Any, y: Any, batch: int = 256) -> float:
    import torch

    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            total += float(((model(x[i:i + batch]) - y[i:i + batch]) ** 2).sum())
    return total / float(y.numel())


def fit_decoder(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    epochs: int = 30,
    patience: int = 5,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 0.0,
    width: int = 32,
    seed: int = 0,
    n_keep: int = 6,
    device: str = "cpu",
) -> DecoderFit:
    """Train a decoder on ``(x [N, C, g, g], y [N, out, S, S])`` pairs, keep the state with the
    lowest val MSE (early stopping after ``patience`` epochs without improvement) and
    evaluate it on ``test``. Trained on the torch ``device``. Seeded: same inputs and seed ->
    same numbers (on one device).

    Torch's thread count is left as the process has it: these convolutions are small, and
    one thread is as fast as two on an idle machine and ~9x faster on a busy one (measured:
    0.55 vs 4.9 s per epoch, 400 images), so set it outside (``OMP_NUM_THREADS=1``)."""
    return _fit(train, val, test, epochs, patience, batch_size, lr, weight_decay, width,
                seed, n_keep, device)


def _fit(train, val, test, epochs, patience, batch_size, lr, weight_decay, width, seed,
         n_keep, device) -> DecoderFit:
    import torch

    def tensors(pair):
        return (torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)
                for a in pair)

    xtr, ytr = tensors(train)
    xva, yva = tensors(val)
    xte, yte = tensors(test)
    if xtr.ndim != 4 or xtr.shape[2] != xtr.shape[3] or ytr.ndim != 4:
        raise ValueError(f"expected x [N, C, g, g] and y [N, out, S, S], got {tuple(xtr.shape)} "
                         f"and {tuple(ytr.shape)}")
    # nn.Conv2d draws its initial weights from the global RNG: seed it inside fork_rng, which
    # restores the caller's state afterwards (same weights as seeding globally, no side effect)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_decoder(xtr.shape[1], xtr.shape[2], ytr.shape[2], ytr.shape[1], width)
    gen = torch.Generator().manual_seed(seed)  # mini-batch order
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.to(device)  # in place: the optimizer keeps the same parameter objects
    best, best_state, best_epoch, epoch = np.inf, None, 0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        for idx in torch.randperm(len(xtr), generator=gen).to(device).split(batch_size):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
        model.eval()
        val_mse = _mse(model, xva, yva)
        if val_mse < best - 1e-7:
            best, best_epoch, best_state = val_mse, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        examples = model(xte[:n_keep]).cpu().numpy()
    return DecoderFit(test_mse=_mse(model, xte, yte), val_mse=float(best),
                      best_epoch=best_epoch, epochs_run=epoch, examples=examples)


# -- figures ------------------------------------------------------------------------------------
