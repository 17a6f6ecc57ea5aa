"""Feature visualisation by activation maximisation (Olah et al. 2017, "Feature
Visualization", Distill; Goh et al. 2021, "Multimodal Neurons").

The recipe of Lucid / Lucent, written here because ``torch-lucent`` (0.1.8, PyPI) cannot be
used: it imports ``torchvision`` (whose PyPI build for torch 2.13 is a CUDA build that does not
import beside the CPU torch wheel, see the README's open_clip note) and pins
``kornia <= 0.4.1``, and it draws its transformations from numpy's global RNG.

- **Image parameterisation** (:class:`ImageParam`): per image a Fourier spectrum
  ``[3, H, W//2+1]`` (complex), scaled by ``1 / max(f, 1/max(H, W))^decay_power`` (so every
  frequency learns at the rate of natural-image statistics), inverse-FFT'd (``norm="ortho"``)
  and divided by 4 (Lucid's constant); colours decorrelated by Lucid's ImageNet colour
  correlation matrix (``COLOR_CORRELATION_SVD_SQRT``, normalised by its largest column norm);
  a sigmoid maps to (0, 1). ``fft: false`` optimises pixels directly (the baseline).
- **Transformation robustness** (:func:`random_transform`): every step sees the image under
  a random jitter (shift up to ``jitter`` px), scale (``U[0.9, 1.1]``) and rotation
  (``U[-10°, 10°]``), drawn from a local generator, applied as ONE affine warp (bilinear) with
  the out-of-image area filled with grey 0.5 (Lucid's ``pad(12, constant 0.5)``). Unlike
  Lucid's transforms the output keeps the input size, so fixed-size models (ViTs) take it.
- **Objectives** (:class:`Objective`) on a site's activation ``a`` of one image (CNN map
  ``[C, h, w]``, token sequence ``[T, D]``, or vector ``[D]``): ``channel`` (mean of unit ``c``
  over positions / tokens; a vector's entry ``c``: a class logit on ``vision.logits``),
  ``neuron`` (unit ``c`` at the central position / token), ``layer`` (DeepDream: mean of
  ``a^2``), ``direction`` (cosine between the position-averaged activation and a vector, e.g.
  a prompt's text embedding for a dual encoder's ``vision.proj``), and ``diversity``
  (``n_diverse`` images per objective, minus ``weight`` x the summed cosine similarity of their
  Gram matrices at the objective's site, divided by ``n_diverse``, as in Lucid).
- Optimiser: Adam (lr 0.05, Lucent's default) on the parameterisation; gradients are taken
  with respect to the image parameters only (the model's weights get no ``.grad``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlprobe.errors import ConfigError

OBJECTIVES = ("channel", "neuron", "layer", "direction")
#: Lucid's square root of the ImageNet colour correlation matrix (rows: R, G, B).
COLOR_CORRELATION_SVD_SQRT = ((0.26, 0.09, 0.02), (0.27, 0.00, -0.05), (0.27, -0.09, 0.03))
#: Lucid's constant dividing the inverse FFT ("reduces saturation").
FFT_SCALE = 4.0


def _color_matrix() -> np.ndarray:
    m = np.asarray(COLOR_CORRELATION_SVD_SQRT, dtype=np.float32)
    return m / np.max(np.linalg.norm(m, axis=0))


class ImageParam:
    """``batch`` images ``[3, height, width]`` in (0, 1) from Fourier (or pixel) parameters.

    Call it to render ``[batch, 3, height, width]``; :attr:`params` are the tensors to optimise.
    """

    def __init__(self, batch: int, height: int, width: int, *, fft: bool = True,
                 decorrelate: bool = True, decay_power: float = 1.0, sd: float = 0.01,
                 seed: int = 0, device: str = "cpu") -> None:
        import torch

        gen = torch.Generator().manual_seed(int(seed))
        self.shape = (batch, 3, height, width)
        self.fft = fft
        self.decorrelate = decorrelate
        self.color = torch.as_tensor(_color_matrix().T, device=device)
        if fft:
            fy = np.fft.fftfreq(height)[:, None]
            fx = np.fft.rfftfreq(width)[None, :]
            freqs = np.sqrt(fx * fx + fy * fy)
            scale = 1.0 / np.maximum(freqs, 1.0 / max(height, width)) ** decay_power
            self.scale = torch.as_tensor(scale, dtype=torch.float32, device=device)[..., None]
            spectrum = torch.randn(batch, 3, *freqs.shape, 2, generator=gen) * sd
            self.params = [spectrum.to(device).requires_grad_(True)]
        else:
            pixels = torch.randn(*self.shape, generator=gen) * sd
            self.params = [pixels.to(device).requires_grad_(True)]

    def __call__(self) -> Any:
        import torch

        if self.fft:
            spectrum = torch.view_as_complex((self.scale * self.params[0]).contiguous())
            image = torch.fft.irfftn(spectrum, s=self.shape[2:], norm="ortho") / FFT_SCALE
        else:
            image = self.params[0]
        if self.decorrelate:
            image = torch.einsum("bchw,cd->bdhw", image, self.color)
        return torch.sigmoid(image)


def random_transform(images: Any, generator: Any, *, jitter: float = 8.0,
                     scale: tuple[float, float] = (0.9, 1.1),
                     degrees: float = 10.0) -> Any:
    """One random affine warp per image (shift up to ``jitter`` px each way, scale and
    rotation), same size out, outside filled with 0.5. ``[B, 3, H, W]`` -> same shape."""
    import torch
    import torch.nn.functional as F

    B, _, H, W = images.shape

    def uniform(low: float, high: float) -> Any:
        return low + (high - low) * torch.rand(B, generator=generator)

    s = uniform(*scale)
    angle = uniform(-degrees, degrees) * math.pi / 180
    tx = uniform(-jitter, jitter) * 2 / W
    ty = uniform(-jitter, jitter) * 2 / H
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images - 0.5, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False) + 0.5


@dataclass
class Objective:
    """One image's objective (see the module docstring).

    Attributes:
        kind: one of :data:`OBJECTIVES`.
        site: the site it reads.
        unit: channel / neuron index (``channel`` / ``neuron``).
        vector: ``[D]`` direction (``direction``).
        label: a name for figures and tables.
    """

    kind: str
    site: str
    unit: int | None = None
    vector: Any = None
    label: str = ""


def n_units(shape: Sequence[int]) -> int:
    """Channels of one image's activation: C of a CNN map ``[C, h, w]``, D of a token
    sequence ``[T, D]`` or a vector ``[D]``."""
    return int(shape[0] if len(shape) in (1, 3) else shape[-1])


def evaluate(objective: Objective, a: Any) -> Any:
    """The scalar value of ``objective`` on one image's activation ``a``."""
    import torch

    if objective.kind == "layer":
        return (a.float() ** 2).mean()
    if objective.kind == "direction":
        v = torch.as_tensor(objective.vector, dtype=torch.float32, device=a.device)
        pooled = a.float().flatten(1).mean(1) if a.ndim == 3 else (
            a.float().mean(0) if a.ndim == 2 else a.float())
        return torch.nn.functional.cosine_similarity(pooled, v, dim=0)
    c = int(objective.unit)
    if a.ndim == 1:
        return a[c].float()
    if a.ndim == 3:  # [C, h, w]
        return a[c].float().mean() if objective.kind == "channel" else \
            a[c, a.shape[1] // 2, a.shape[2] // 2].float()
    # [T, D]: channel = mean over tokens; neuron = the central patch token
    if objective.kind == "channel":
        return a[:, c].float().mean()
    T = a.shape[0]
    side = math.isqrt(T - 1) if T > 1 else 0
    centre = 1 + (side // 2) * side + side // 2 if side * side == T - 1 else T // 2
    return a[centre, c].float()


def diversity_penalty(acts: Any) -> Any:
    """Lucid's diversity term for ``[n, ...]`` activations of n images of one objective: the
    summed cosine similarity of their Gram matrices over ordered pairs, divided by n."""
    import torch

    n = acts.shape[0]
    if n < 2:
        return acts.new_zeros(())
    if acts.ndim == 4:
        feats = acts.flatten(2)  # [n, C, hw]
    elif acts.ndim == 3:
        feats = acts.transpose(1, 2)  # [n, D, T]
    else:
        raise ConfigError("diversity needs a spatial site (a CNN map or a token sequence), not "
                          f"a vector of shape {list(acts.shape[1:])}")
    grams = torch.matmul(feats.float(), feats.float().transpose(1, 2)).flatten(1)
    grams = torch.nn.functional.normalize(grams, dim=1)
    sim = grams @ grams.T
    return (sim.sum() - sim.diagonal().sum()) / n


@dataclass
class VisResult:
    """Images ``[B, 3, H, W]`` (float32 in [0, 1]) and the objective values before (the
    initial random image) and after optimisation (the final image, untransformed)."""

    images: np.ndarray
    initial: np.ndarray
    final: np.ndarray
    history: list[float] = field(default_factory=list)


def objective_values(adapter: Any, images: Any, objectives: Sequence[Objective]) -> Any:
    """``[B]`` values of each image's objective (one forward pass for all their sites)."""
    import torch

    sites = list(dict.fromkeys(o.site for o in objectives))
    acts = adapter.forward_differentiable(images, sites)
    return torch.stack([evaluate(o, acts[o.site][b]) for b, o in enumerate(objectives)]), acts


def visualize(adapter: Any, objectives: Sequence[Objective], size: tuple[int, int], *,
              steps: int = 512, lr: float = 0.05, seed: int = 0, fft: bool = True,
              decorrelate: bool = True, transforms: bool = True, decay_power: float = 1.0,
              n_diverse: int = 1, diversity: float = 0.0, jitter: float = 8.0,
              device: str = "cpu") -> VisResult:
    """Optimise ``len(objectives) * n_diverse`` images (the copies of one objective are
    consecutive) for ``steps`` Adam steps; see the module docstring."""
    import torch

    per_image = [o for o in objectives for _ in range(n_diverse)]
    param = ImageParam(len(per_image), size[0], size[1], fft=fft, decorrelate=decorrelate,
                       decay_power=decay_power, seed=seed, device=device)
    opt = torch.optim.Adam(param.params, lr=lr)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    with torch.no_grad():
        initial, _ = objective_values(adapter, param(), per_image)
    history = []
    for _ in range(int(steps)):
        image = param()
        if transforms:
            image = random_transform(image, gen, jitter=jitter)
        values, acts = objective_values(adapter, image, per_image)
        loss = -values.sum()
        if diversity and n_diverse > 1:
            for k in range(len(objectives)):
                rows = slice(k * n_diverse, (k + 1) * n_diverse)
                loss = loss + diversity * diversity_penalty(acts[objectives[k].site][rows])
        grads = torch.autograd.grad(loss, param.params)
        for p, g in zip(param.params, grads):
            p.grad = g
        opt.step()
        history.append(float(values.detach().mean()))
    with torch.no_grad():
        final_image = param()
        final, _ = objective_values(adapter, final_image, per_image)
    return VisResult(final_image.detach().float().cpu().numpy(),
                     initial.detach().float().cpu().numpy(),
                     final.detach().float().cpu().numpy(), history)
