"""Projected gradient descent (Madry et al. 2018) in pixel space [0, 1].

The attack maximises the cross-entropy of a classifier ``logits_fn(pixels) -> [B, K]`` (or,
targeted, minimises the cross-entropy of a target class) over perturbations ``delta`` with
``||delta|| <= epsilon`` in the L∞ or L2 norm, keeping ``pixels + delta`` in [0, 1]:

- start: ``pixels`` itself, or (``random_start``) a uniform point of the ε-ball (L∞: each pixel
  ``U(-ε, ε)``; L2: a uniform direction times ``ε U^(1/d)``), clipped to [0, 1];
- step ``t``: L∞ ``x + α sign(g)``; L2 ``x + α g / ||g||_2`` (per item); then project back onto
  the ε-ball around ``pixels`` (L∞: clip each pixel; L2: rescale ``delta`` to norm ε when it is
  longer) and clip to [0, 1];
- ``restarts``: the attack is repeated from new random starts for the items not yet fooled.

The model's own normalisation happens inside ``logits_fn`` (adapters'
``forward_differentiable``), so ε is measured in the [0, 1] pixels of ``image_pixels``.

Success is checked at every iterate (the forward pass that computes the gradient also gives
the prediction): an item counts as fooled when ANY iterate of any restart is misclassified
(targeted: classified as its target). The kept adversarial image is the latest successful
iterate; with ``early_stop`` (the default) an item leaves the batch at its first success, so
it is the first. Either way a stronger attack on the same seed (more steps at the same step
size, more restarts) never fools fewer items: its first iterates and restarts are the same.
Random starts come from one generator per (seed, restart, item), so an item's start does not
depend on the batch it is in.

Why not captum's ``captum.robust.PGD`` (checked, version 0.9): its L2 attack takes FGSM sign
steps (``x + α sign(g)``) and only projects onto the L2 ball, which is not Madry's L2 step
(the normalised gradient); it has no restarts, draws its random start from torch's global RNG
(no local seeding), and returns the last iterate without tracking success. Its L∞ iterates are
the same as ours (a test compares them step for step on the same model, ε and start).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlprobe.errors import ConfigError, DataError

NORMS = ("linf", "l2")
#: Madry et al.'s step size rule: α = 2.5 ε / steps (the robustness library's default).
STEP_FACTOR = 2.5


@dataclass
class PGDResult:
    """Outcome of :func:`pgd_attack` for a batch of ``B`` items.

    Attributes:
        adversarial: ``[B, 3, S, S]`` the kept adversarial image (latest successful iterate),
            or the last iterate of the last restart where the attack failed.
        success: ``[B]`` bool, some iterate was misclassified (targeted: hit its target).
        prediction: ``[B]`` int64 predicted class of ``adversarial``.
        steps: ``[B]`` int64 gradient steps taken before the kept successful iterate
            (-1 where the attack failed).
        restart: ``[B]`` int64 restart of the kept iterate (-1 where the attack failed).
        final: ``[B, 3, S, S]`` the last iterate each item reached in its last restart (with
            ``early_stop``, a fooled item's first successful iterate).
    """

    adversarial: Any
    success: Any
    prediction: Any
    steps: Any
    restart: Any
    final: Any


def parse_epsilon(value: Any, norm: str, where: str) -> float:
    """An ε from a config: a number or a fraction string such as ``"4/255"``; L∞ ε must lie in
    [0, 1] (the pixel range), L2 ε must be >= 0. Raises :class:`ConfigError` otherwise."""
    if norm not in NORMS:
        raise ConfigError(f"{where}: unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    try:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, str):
            num, _, den = value.replace(" ", "").partition("/")
            eps = float(num) / float(den) if den else float(num)
        else:
            eps = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        raise ConfigError(f"{where}: epsilon {value!r} is not a number or a fraction such as "
                          "'4/255'") from None
    if not math.isfinite(eps) or eps < 0 or (norm == "linf" and eps > 1):
        bound = "[0, 1] (pixels are in [0, 1])" if norm == "linf" else ">= 0"
        raise ConfigError(f"{where}: {norm} epsilon {value!r} must lie in {bound}")
    return eps


def default_step_size(epsilon: float, steps: int) -> float:
    """Madry et al.'s rule ``2.5 ε / steps`` (ε itself for ``steps`` = 0)."""
    return STEP_FACTOR * epsilon / max(int(steps), 1)


def _check_inputs(pixels: Any, labels: Any, norm: str, epsilon: float, steps: int,
                  restarts: int, targets: Any) -> None:
    """Clear errors for bad arguments (pixels outside [0, 1], ε out of range, ...)."""
    shape = tuple(getattr(pixels, "shape", ()))
    if len(shape) != 4 or not pixels.is_floating_point():
        raise DataError(f"pgd: pixels must be a float tensor [B, C, H, W], got shape {shape}")
    lo, hi = float(pixels.min()), float(pixels.max())
    if lo < 0.0 or hi > 1.0 or not math.isfinite(lo + hi):
        raise DataError(f"pgd: pixels must lie in [0, 1] (image_pixels, before the model's "
                        f"normalisation), got min {lo:.4g}, max {hi:.4g}")
    parse_epsilon(epsilon, norm, "pgd")
    if norm == "l2" and epsilon > math.sqrt(math.prod(shape[1:])):
        raise ConfigError(f"pgd: l2 epsilon {epsilon} exceeds the diameter of the pixel cube "
                          f"({math.sqrt(math.prod(shape[1:])):.4g} for {list(shape[1:])})")
    if not isinstance(steps, int | np.integer) or steps < 0:
        raise ConfigError(f"pgd: steps must be an integer >= 0, got {steps!r}")
    if not isinstance(restarts, int | np.integer) or restarts < 1:
        raise ConfigError(f"pgd: restarts must be an integer >= 1, got {restarts!r}")
    for name, value in (("labels", labels), ("targets", targets)):
        if value is not None and tuple(value.shape) != (shape[0],):
            raise DataError(f"pgd: {name} must have shape [{shape[0]}], got "
                            f"{list(value.shape)}")


def item_generator(seed: int, restart: int, item: int) -> Any:
    """The torch CPU generator of one item's random start (seeded by all three)."""
    import torch

    state = np.random.SeedSequence([int(seed), int(restart), int(item)]).generate_state(1)
    return torch.Generator().manual_seed(int(state[0]))


def random_start(pixels: Any, norm: str, epsilon: float, seed: int, restart: int,
                 item_seeds: Sequence[int]) -> Any:
    """``pixels`` plus a uniform random point of the ε-ball (one generator per item), clipped
    to [0, 1]. ``[B, C, H, W]`` -> same shape."""
    import torch

    shape = tuple(pixels.shape[1:])
    d = math.prod(shape)
    noise = []
    for item in item_seeds:
        gen = item_generator(seed, restart, int(item))
        if norm == "linf":
            noise.append((torch.rand(shape, generator=gen) * 2 - 1) * epsilon)
        else:
            u = torch.randn(shape, generator=gen)
            radius = float(torch.rand((), generator=gen)) ** (1.0 / d) * epsilon
            noise.append(u / u.norm().clamp_min(1e-12) * radius)
    delta = torch.stack(noise).to(device=pixels.device, dtype=pixels.dtype)
    return (pixels + delta).clamp(0.0, 1.0)


def project(x: Any, origin: Any, norm: str, epsilon: float) -> Any:
    """Project ``x`` onto the ε-ball around ``origin`` (per item) and into [0, 1]."""
    delta = x - origin
    if norm == "linf":
        delta = delta.clamp(-epsilon, epsilon)
    else:
        length = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * (epsilon / length).clamp(max=1.0).view(-1, *([1] * (x.ndim - 1)))
    return (origin + delta).clamp(0.0, 1.0)


def ascent_step(x: Any, grad: Any, norm: str, step_size: float) -> Any:
    """One steepest-ascent step of length ``step_size`` in the attack's norm."""
    if norm == "linf":
        return x + step_size * grad.sign()
    length = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return x + step_size * grad / length.view(-1, *([1] * (x.ndim - 1)))


def pgd_attack(
    logits_fn: Callable[[Any], Any],
    pixels: Any,
    labels: Any,
    *,
    norm: str = "linf",
    epsilon: float,
    steps: int = 100,
    step_size: float | None = None,
    restarts: int = 1,
    random_init: bool = True,
    targets: Any = None,
    seed: int = 0,
    item_seeds: Sequence[int] | None = None,
    early_stop: bool = True,
) -> PGDResult:
    """Attack ``[B, C, H, W]`` pixels in [0, 1] with true ``labels`` ``[B]`` (see the module
    docstring).

    Args:
        logits_fn: pixels ``[b, C, H, W]`` in [0, 1] -> logits ``[b, K]`` (differentiable).
        norm: ``"linf"`` or ``"l2"``; epsilon: the radius (L∞ in [0, 1]).
        steps: gradient steps per restart; step_size: α (default ``2.5 ε / steps``).
        restarts: attempts from fresh random starts (the first starts at ``pixels`` itself
            when ``random_init`` is false, and further restarts are then skipped: they
            would repeat it).
        targets: ``[B]`` target classes for a targeted attack (success = predicted target),
            None for untargeted (success = predicted anything but the label).
        seed, item_seeds: random starts come from ``(seed, restart, item_seeds[i])``
            (default ``item_seeds`` = 0..B-1).
        early_stop: stop attacking an item at its first success.

    An ε of 0 returns the pixels unchanged with the model's own predictions.
    """
    import torch
    import torch.nn.functional as F

    epsilon = float(epsilon)
    _check_inputs(pixels, labels, norm, epsilon, steps, restarts, targets)
    pixels = pixels.detach()
    B = pixels.shape[0]
    device = pixels.device
    labels = labels.to(device)
    targeted = targets is not None
    goal = targets.to(device) if targeted else labels
    alpha = default_step_size(epsilon, steps) if step_size is None else float(step_size)
    if not math.isfinite(alpha) or alpha < 0:
        raise ConfigError(f"pgd: step_size must be a finite number >= 0, got {step_size!r}")
    seeds = list(range(B)) if item_seeds is None else [int(s) for s in item_seeds]
    if len(seeds) != B:
        raise DataError(f"pgd: {len(seeds)} item seeds for {B} items")

    adversarial = pixels.clone()
    final = pixels.clone()
    success = torch.zeros(B, dtype=torch.bool, device=device)
    prediction = torch.full((B,), -1, dtype=torch.long, device=device)
    taken = torch.full((B,), -1, dtype=torch.long, device=device)
    restart_of = torch.full((B,), -1, dtype=torch.long, device=device)

    def fooled(pred: Any, rows: Any) -> Any:
        return pred == goal[rows] if targeted else pred != goal[rows]

    if epsilon == 0.0 or B == 0:
        pred = predict_classes(logits_fn, pixels) if B else prediction
        ok = fooled(pred, torch.arange(B, device=device))
        return PGDResult(pixels.clone(), ok, pred, torch.where(ok, 0, -1),
                         torch.where(ok, 0, -1), pixels.clone())

    n_restarts = int(restarts) if random_init else 1
    for r in range(n_restarts):
        todo = (torch.nonzero(~success).flatten() if early_stop
                else torch.arange(B, device=device))
        if todo.numel() == 0:
            break
        origin = pixels[todo]
        x = (random_start(origin, norm, epsilon, seed, r, [seeds[i] for i in todo.tolist()])
             if random_init else origin.clone())
        active = torch.arange(len(todo), device=device)  # rows of `todo` still attacked
        for t in range(int(steps) + 1):
            rows = todo[active]
            xa = x[active].detach()
            last = t == int(steps)
            if last:  # the final iterate is only classified
                pred = predict_classes(logits_fn, xa)
                ok = fooled(pred, rows)
                keep = ~success[rows] & ~ok  # failures: their last iterate and prediction
                adversarial[rows[keep]] = xa[keep]
                prediction[rows[keep]] = pred[keep]
            else:
                with torch.enable_grad():
                    xa.requires_grad_(True)
                    logits = logits_fn(xa).float()
                    loss = F.cross_entropy(logits, goal[rows], reduction="sum")
                    (grad,) = torch.autograd.grad(-loss if targeted else loss, xa)
                pred = logits.argmax(1).detach()
                ok = fooled(pred, rows)
            hit = rows[ok]
            adversarial[hit] = xa[ok].detach()
            prediction[hit] = pred[ok]
            success[hit] = True
            taken[hit] = t
            restart_of[hit] = r
            if last:
                break
            with torch.no_grad():
                moved = project(ascent_step(xa.detach(), grad, norm, alpha), origin[active],
                                norm, epsilon)
            if early_stop:  # a fooled item keeps its successful iterate and leaves the batch
                moved, active = moved[~ok], active[~ok]
            x[active] = moved
            if active.numel() == 0:
                break
        final[todo] = x.detach()
    return PGDResult(adversarial, success, prediction, taken, restart_of, final)


def predict_classes(logits_fn: Callable[[Any], Any], pixels: Any) -> Any:
    """``[B]`` top-1 classes of ``pixels``. (Adapters' ``forward_differentiable`` enables
    gradients even under ``no_grad``, so a graph is built and dropped at once; not
    ``inference_mode``, which would turn weights that load lazily into inference tensors.)"""
    import torch

    with torch.no_grad():
        return logits_fn(pixels).argmax(1).detach()


def quantize_8bit(pixels: Any) -> Any:
    """Round [0, 1] pixels to the nearest of 256 levels (what saving as a PNG does)."""
    return (pixels * 255.0).round() / 255.0


def perturbation_norm(delta: Any, norm: str) -> Any:
    """``[B]`` norm of ``[B, ...]`` perturbations in the attack's norm."""
    flat = delta.flatten(1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)
