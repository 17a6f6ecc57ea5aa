"""Benchmark: PGD steps per second vs the bare forward + backward of the same model.

EfficientNet-Lite0 (real packaged weights) at 224 px on one batch of seeded random images.
"bare" is the torch module itself: ``model(normalise(x))`` -> cross-entropy ->
``torch.autograd.grad`` w.r.t. the input (the work one PGD step needs; ``--param-grads`` also
times ``loss.backward()``, which computes the weight gradients too). "pgd" is
:func:`vlprobe.analyses.vision.pgd.pgd_attack` through the adapter's differentiable path
(``forward_differentiable``: input check, normalisation, hooks) with early stopping off, so
every step runs the whole batch; its time per gradient step includes the random start and the
final classification of the last iterate (one forward without backward per attack).
Measurements alternate (bare, pgd, bare, pgd, ...) after a warm-up; medians of wall and
process CPU time (the steadier measure on a shared machine) are printed.

    PYTHONPATH=src .venv/bin/python bench/bench_pgd.py                 # batch 8, 5 steps
    PYTHONPATH=src .venv/bin/python bench/bench_pgd.py --batch 16 --steps 10 --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from vlprobe.analyses.vision.pgd import pgd_attack
from vlprobe.models import ModelSpec, load_model


def timed(fn) -> tuple[float, float]:
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - start_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--param-grads", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    adapter = load_model(ModelSpec(adapter="efficientnet_lite0"))
    model = adapter.model
    x = torch.rand(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))

    def head(px):
        return adapter.forward_differentiable(px, ["vision.logits"])["vision.logits"]

    with torch.no_grad():
        y = head(x).argmax(1)

    def bare(param_grads: bool = False):
        for _ in range(args.steps):
            xa = x.detach().requires_grad_(True)
            loss = F.cross_entropy(model(adapter.normalize_pixels(xa)), y, reduction="sum")
            if param_grads:
                model.zero_grad(set_to_none=True)
                loss.backward()
            else:
                torch.autograd.grad(loss, xa)

    def pgd():
        pgd_attack(head, x, y, norm="linf", epsilon=1 / 255, steps=args.steps, seed=0,
                   early_stop=False)

    variants = {"bare fwd+bwd (input grad)": bare, "pgd_attack": pgd}
    if args.param_grads:
        variants["bare fwd+bwd (loss.backward)"] = lambda: bare(True)
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"EfficientNet-Lite0, batch {args.batch} x 224 px, {args.steps} steps, "
          f"{args.threads} thread(s), {args.repeats} repeats; {platform.processor() or '?'}; "
          f"load average {load:.1f}")
    print("| variant | wall s / step | CPU s / step | steps / s (wall) |")
    print("|---|---|---|---|")
    per_step = {}
    for name, runs in times.items():
        wall = statistics.median(w for w, _ in runs) / args.steps
        cpu = statistics.median(c for _, c in runs) / args.steps
        per_step[name] = (wall, cpu)
        print(f"| {name} | {wall:.3f} | {cpu:.3f} | {1 / wall:.3f} |")
    base, ours = per_step["bare fwd+bwd (input grad)"], per_step["pgd_attack"]
    print(f"PGD / bare throughput: {base[0] / ours[0]:.3f} (wall), {base[1] / ours[1]:.3f} (CPU)")


if __name__ == "__main__":
    main()
