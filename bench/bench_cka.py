"""Benchmark: linear CKA through [n, n] Grams (before) vs in feature space (R2 ``cka`` now).

Both estimators (unbiased = Song et al. 2012, biased) on two related random feature
matrices ``x``, ``y`` ``[n, d]`` (float32, as the activation store holds them). "Gram" is the
path R2 used for the linear kernel before: centred Gram ``Xc Xc^T`` per input, U-centring
(or double centring), cosine of the flattened matrices (``O(n^2 d)`` time, ``O(n^2)``
memory). "feature space" is :func:`vlprobe.analyses.geometry.cka.cka` now (``O(n d^2)``, no
``[n, n]`` matrix). Timings are the median of ``--repeats`` runs after one warm-up; the two
paths' values are printed side by side.

    PYTHONPATH=src .venv/bin/python bench/bench_cka.py                   # 10k x 768
    PYTHONPATH=src .venv/bin/python bench/bench_cka.py --n 2000 --d 256  # smaller
    PYTHONPATH=src .venv/bin/python bench/bench_cka.py --threads 1       # one BLAS thread
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from vlprobe.analyses.geometry.cka import center_gram, cka, cka_from_centered, gram_linear


def gram_path_cka(x: np.ndarray, y: np.ndarray, estimator: str) -> float:
    """The linear CKA of R2 before the feature-space rewrite (kept in the module)."""
    return cka_from_centered(center_gram(gram_linear(x), estimator),
                             center_gram(gram_linear(y), estimator))


def timed(fn, repeats: int) -> tuple[float, float, float]:
    """(median wall seconds, median CPU seconds of this process (all its threads) over
    ``repeats`` runs after one warm-up, the value). On a shared machine the CPU time is the
    steadier measure of the work done."""
    value = fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS threads (threadpoolctl); default: the library's own")
    args = parser.parse_args()
    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)

    rng = np.random.default_rng(args.seed)
    x = rng.normal(size=(args.n, args.d)).astype(np.float32)
    mix = rng.normal(size=(args.d, args.d)) / np.sqrt(args.d)
    y = (x @ mix + rng.normal(size=(args.n, args.d))).astype(np.float32)

    print(f"linear CKA, x and y [{args.n}, {args.d}] float32; {platform.processor() or ''} "
          f"{os.cpu_count()} CPUs, BLAS threads {args.threads or 'default'}; numpy "
          f"{np.__version__}; median of {args.repeats} runs; load average before: "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print("\n| estimator | Gram path: wall / CPU (s) | feature space: wall / CPU (s) | "
          "speed-up (wall) | CKA Gram | CKA feature space | abs. difference |")
    print("|---|---|---|---|---|---|---|")
    for estimator in ("unbiased", "biased"):
        t_old, c_old, v_old = timed(lambda e=estimator: gram_path_cka(x, y, e), args.repeats)
        t_new, c_new, v_new = timed(lambda e=estimator: cka(x, y, "linear", e), args.repeats)
        print(f"| {estimator} | {t_old:.2f} / {c_old:.2f} | {t_new:.2f} / {c_new:.2f} | "
              f"{t_old / t_new:.1f}x | {v_old:.12f} | {v_new:.12f} | "
              f"{abs(v_old - v_new):.1e} |")


if __name__ == "__main__":
    main()
