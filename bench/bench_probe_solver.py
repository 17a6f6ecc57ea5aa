"""Benchmark: batched logistic-probe solver vs a per-layer, per-C sklearn loop.

Protocol for both (CLIP linear probe, as V1 ``layer_probe`` runs it): fit every layer x C on
train, choose C per layer on val, refit on train + val at that C, report test accuracy.
Features are planted synthetic data (no model weights needed): each layer has the class
class means with a layer-dependent strength, correlated within-class noise (eigenvalues
spread over 3 decades in a random basis) and 10% label noise (so the classes are not
linearly separable, as with real features).

    .venv/bin/python bench/bench_probe_solver.py            # full size (13 x 8, 5000 x 768)
    .venv/bin/python bench/bench_probe_solver.py --quick    # smoke size
    .venv/bin/python bench/bench_probe_solver.py --append bench/RESULTS.md
    .venv/bin/python bench/bench_probe_solver.py --wide     # wide layers (N < D) only
    .venv/bin/python bench/bench_probe_solver.py --memory   # peak-memory estimate vs measured
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings

import numpy as np


def noise_root(r, dim):
    """``[dim, dim]`` root of a within-class noise covariance: eigenvalues log-spread over
    3 decades in a random basis drawn from ``r``."""
    q = np.linalg.qr(r.normal(size=(dim, dim)))[0]
    return q * np.sqrt(np.logspace(-1.5, 1.5, dim))[None, :]


def planted(n_layers, n, dim, n_classes, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    strengths = 0.3 + 0.7 * np.sin(np.linspace(0.2, np.pi - 0.2, n_layers))
    layers = []
    for k in range(n_layers):
        r = np.random.default_rng(1000 + k)
        # correlated within-class noise (eigenvalues log-spread over 3 decades, random basis):
        # the best probe has to "whiten" it, so the optimal C is inside the sweep rather than
        # at the strongest L2 (which degenerates to nearest class mean)
        root = noise_root(r, dim)
        means = r.normal(size=(n_classes, dim)) / np.sqrt(dim) * 3
        x = rng.normal(size=(n, dim)) @ root.T + strengths[k] * means[y] + r.normal(size=dim)
        layers.append(x.astype(np.float32))
    # 10% label noise: the classes overlap as in real features (not linearly separable)
    flip = rng.random(n) < 0.1
    y = np.where(flip, rng.integers(0, n_classes, n), y)
    return layers, y


def cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def sklearn_protocol(tr, va, te, Cs, max_iter, dtype=np.float64, tol=1e-4):
    from sklearn.linear_model import LogisticRegression

    from vlprobe.analyses._common import standardize

    (Xtr, ytr), (Xva, yva), (Xte, yte) = tr, va, te
    t0 = time.perf_counter()
    best_C, val_acc = [], []
    for x_tr, x_va in zip(Xtr, Xva):
        z_tr, z_va = standardize(x_tr, x_va, dtype=dtype)
        accs = []
        for C in Cs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf = LogisticRegression(C=C, max_iter=max_iter, tol=tol).fit(z_tr, ytr)
            accs.append(clf.score(z_va, yva))
        accs = np.asarray(accs)
        val_acc.append(accs)
        best_C.append(Cs[int(np.flatnonzero(accs >= accs.max() - 1e-12)[0])])
    t_path = time.perf_counter() - t0
    test_acc = []
    for x_tr, x_va, x_te, C in zip(Xtr, Xva, Xte, best_C):
        z_all, z_te = standardize(np.concatenate([x_tr, x_va]), x_te, dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = LogisticRegression(C=C, max_iter=max_iter, tol=tol).fit(
                z_all, np.concatenate([ytr, yva]))
        test_acc.append(clf.score(z_te, yte))
    return t_path, time.perf_counter() - t0, np.asarray(best_C), np.asarray(test_acc)


def ours_protocol(tr, va, te, Cs, max_iter, dtype, precondition="auto"):
    from vlprobe.estimators.logistic import fit_logistic_path, select_and_evaluate

    t0 = time.perf_counter()
    path = fit_logistic_path(tr[0], tr[1], Cs, dtype=dtype, max_iter=max_iter,
                             precondition=precondition)
    t_path = time.perf_counter() - t0
    t0 = time.perf_counter()
    sel = select_and_evaluate(tr, va, te, Cs, dtype=dtype, max_iter=max_iter,
                              precondition=precondition)
    t_total = time.perf_counter() - t0
    return t_path, t_total, sel, path


def wide_check(Cs):
    """Wide layers (N < D), where ``precondition='auto'`` solves in the row space to the
    optimum: the CLIP protocol with the default solve, plain L-BFGS and sklearn's lbfgs loop
    (default tol, and tol 1e-6). Planted data: 4 layers of 400 train / 100 val / 250 test x
    1280 dims, 10 classes, growing class signal."""
    from vlprobe.estimators.logistic import select_and_evaluate

    n_layers, ntr, nva, dim = 4, 400, 100, 1280
    rng = np.random.default_rng(0)
    n = ntr + nva + 250
    y = rng.integers(0, 10, n)
    X = []
    for k in range(n_layers):
        r = np.random.default_rng(100 + k)
        root = noise_root(r, dim)
        means = r.normal(size=(10, dim)) * (0.5 + 0.5 * k) / np.sqrt(dim) * 8
        X.append((rng.normal(size=(n, dim)) @ root.T + means[y]).astype(np.float32))
    y = np.where(rng.random(n) < 0.1, rng.integers(0, 10, n), y)
    tr = ([x[:ntr] for x in X], y[:ntr])
    va = ([x[ntr:ntr + nva] for x in X], y[ntr:ntr + nva])
    te = ([x[ntr + nva:] for x in X], y[ntr + nva:])
    rows = ["| solve | seconds | C per layer | test accuracy per layer (%) |", "|---|---|---|---|"]

    def row(name, seconds, best, acc):
        rows.append(f"| {name} | {seconds:.1f} | {', '.join(f'{c:g}' for c in best)} | "
                    f"{', '.join(f'{100 * v:.1f}' for v in acc)} |")

    for name, kw in (("vlprobe default (auto: row space, preconditioned, float64 to tol 1e-8)",
                      {}),
                     ("vlprobe plain L-BFGS (precondition=False)", {"precondition": False})):
        t0 = time.perf_counter()
        sel = select_and_evaluate(tr, va, te, Cs, **kw)
        row(name, time.perf_counter() - t0, sel.best_C, sel.test_accuracy)
    for name, max_iter, tol in (("sklearn lbfgs (tol 1e-4)", 1000, 1e-4),
                                ("sklearn lbfgs (tol 1e-6, max_iter 5000)", 5000, 1e-6)):
        t0 = time.perf_counter()
        _, _, best, acc = sklearn_protocol(tr, va, te, Cs, max_iter, tol=tol)
        row(name, time.perf_counter() - t0, best, acc)
    return "\n".join(["### Wide layers (N < D): 4 layers, 400 train x 1280 dims", "", *rows])


# (layers, C values, rows, width, classes, solve mode, budget GiB or None = default, max_iter)
MEMORY_CASES = [
    (3, 8, 4000, 256, 200, "plain", 64, 14),
    (4, 8, 1300, 100, 300, "plain", 64, 14),
    (2, 4, 3000, 256, 50, "eigen", 64, 14),
    (2, 8, 500, 1500, 20, "row_space", 64, 14),
    # SentEval WordContent size: 10k items, 1,000 classes, width 768, the default 8 C values
    (1, 8, 10_000, 768, 1000, "plain", 64, 3),  # one batched solve
    (2, 8, 10_000, 768, 1000, "plain", None, 3),  # chunked to the default 2 GiB budget
]


def memory_case(spec):
    """One fit in this (fresh) process: its peak resident memory above the starting point
    and the solver's estimate, as JSON."""
    L, P, N, D, K, mode, budget_gb, max_iter = json.loads(spec)
    import torch

    from vlprobe.estimators.logistic import DEFAULT_MEMORY_BUDGET, fit_logistic_path

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    y = rng.integers(0, K, N)
    y[:K] = np.arange(K)
    xs = [(rng.normal(size=(N, D)) + 0.5 * rng.normal(size=(K, D))[y]).astype(np.float32)
          for _ in range(L)]
    fit_logistic_path([x[:50, :4] for x in xs[:1]], y[:50] % 3, [1.0])  # warm-up (imports)
    with open("/proc/self/statm") as fh:
        start = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    precondition = {"plain": False, "eigen": True, "row_space": "auto"}[mode]
    budget = DEFAULT_MEMORY_BUDGET if budget_gb is None else int(budget_gb * 2**30)
    t0 = time.perf_counter()
    path = fit_logistic_path(xs, y, list(np.logspace(-3, 4, P)), max_iter=max_iter, tol=1e-12,
                             precondition=precondition, memory_budget=budget)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"measured": peak - start, "estimate": path.plan.peak_bytes,
                      "unchunked": path.plan.unchunked_bytes, "solves": path.plan.n_solves,
                      "budget": budget, "seconds": time.perf_counter() - t0}))


def memory_check():
    """Peak resident memory of fits (each in a fresh process) vs the solver's estimate."""
    rows = ["| layers x Cs | rows x width | classes | mode | solves | estimate (GiB) | "
            "measured peak RSS (GiB) | measured / estimate | seconds |",
            "|---|---|---|---|---|---|---|---|---|"]
    for case in MEMORY_CASES:
        out = subprocess.run([sys.executable, __file__, "--memory-case", json.dumps(case)],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        L, P, N, D, K, mode = case[:6]
        rows.append(f"| {L} x {P} | {N} x {D} | {K} | {mode} | {r['solves']} | "
                    f"{r['estimate'] / 2**30:.3f} | {r['measured'] / 2**30:.3f} | "
                    f"{r['measured'] / r['estimate']:.2f} | {r['seconds']:.0f} |")
        print(rows[-1], flush=True)
    return "\n".join(["### Solver memory: estimate vs measured", "",
                      f"- date: {dt.date.today().isoformat()}; machine: nproc={os.cpu_count()}, "
                      f"CPU: {cpu_model()}; one torch thread; machine shared with other jobs",
                      "- each fit in a fresh process; measured = peak RSS (ru_maxrss) minus the "
                      "RSS before the fit; float32, tol 1e-12 so every probe runs max_iter "
                      "iterations: 14 (the L-BFGS history is full) on the small problems, 3 on "
                      "the WordContent-sized ones (10k x 768, 1,000 classes: there the logits "
                      "dominate and the estimate's full history is an upper bound)", "", *rows])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--layers", type=int, default=13)
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-iter", type=int, default=1000)
    ap.add_argument("--append", default=None, help="append a markdown section to this file")
    ap.add_argument("--converged-tol", type=float, default=None,
                    help="also run the sklearn loop to this tol (max_iter 20000): where the "
                         "exact optima put C and test accuracy (slow: ~6 min at 1e-7)")
    ap.add_argument("--wide", action="store_true",
                    help="only the wide-layer (N < D) comparison, about 1 min")
    ap.add_argument("--memory", action="store_true",
                    help="only the peak-memory estimate vs measured RSS, a few minutes")
    ap.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.memory_case:
        memory_case(a.memory_case)
        return
    if a.memory:
        text = memory_check()
        print(text)
        if a.append:
            with open(a.append, "a") as fh:
                fh.write("\n" + text + "\n")
        return
    if a.quick:
        a.layers, a.n_train, a.dim = 3, 1000, 128
    Cs = [float(c) for c in np.logspace(-3, 4, 8)]
    if a.wide:
        print(wide_check(Cs))
        return
    n_val, n_test = a.n_train // 5, a.n_train // 2
    X, y = planted(a.layers, a.n_train + n_val + n_test, a.dim, a.classes)
    s1, s2 = a.n_train, a.n_train + n_val
    tr = ([x[:s1] for x in X], y[:s1])
    va = ([x[s1:s2] for x in X], y[s1:s2])
    te = ([x[s2:] for x in X], y[s2:])

    import torch

    from vlprobe.estimators.logistic import fit_logistic_path

    fit_logistic_path([x[:200, :8] for x in X[:2]], y[:200], Cs[:2])  # warm-up (imports)
    # The machine's speed drifts (shared host), so vlprobe's runs are interleaved with the
    # long sklearn loops and their median is reported.
    runs, pre_runs = [], []
    runs.append(ours_protocol(tr, va, te, Cs, a.max_iter, a.dtype))
    pre_runs.append(ours_protocol(tr, va, te, Cs, a.max_iter, a.dtype, precondition=True))
    s_path, s_total, s_best, s_acc = sklearn_protocol(tr, va, te, Cs, a.max_iter)
    runs.append(ours_protocol(tr, va, te, Cs, a.max_iter, a.dtype))
    pre_runs.append(ours_protocol(tr, va, te, Cs, a.max_iter, a.dtype, precondition=True))
    s32_path, s32_total, s32_best, s32_acc = sklearn_protocol(tr, va, te, Cs, a.max_iter,
                                                              dtype=np.float32)
    runs.append(ours_protocol(tr, va, te, Cs, a.max_iter, a.dtype))
    pre_runs.append(ours_protocol(tr, va, te, Cs, a.max_iter, a.dtype, precondition=True))
    o_path = float(np.median([r[0] for r in runs]))
    o_total = float(np.median([r[1] for r in runs]))
    p_path = float(np.median([r[0] for r in pre_runs]))
    p_total = float(np.median([r[1] for r in pre_runs]))
    sel, o_fit = runs[-1][2], runs[-1][3]
    p_sel, p_fit = pre_runs[-1][2], pre_runs[-1][3]
    gap = 100 * np.abs(sel.test_accuracy - s_acc)
    gap32 = 100 * np.abs(s32_acc - s_acc)
    lines = [
        "## Probe solver",
        "",
        f"- date: {dt.date.today().isoformat()}; machine: nproc={os.cpu_count()}, "
        f"CPU: {cpu_model()}; torch {torch.__version__} ({torch.get_num_threads()} threads); "
        "machine shared with other jobs (timings are indicative)",
        f"- problem: {a.layers} layers x {len(Cs)} C values (1e-3 .. 1e4, log-spaced), "
        f"{a.n_train} train / {n_val} val / {n_test} test samples x {a.dim} dims, "
        f"{a.classes} classes (planted synthetic features); solver dtype {a.dtype}, "
        f"max_iter {a.max_iter}, tol 1e-4",
        "- protocol: fit all layer x C on train, choose C per layer on val, refit on "
        "train+val, test accuracy",
        "",
        "| | vlprobe batched L-BFGS (median of 3) | sklearn lbfgs loop, float64 | speedup "
        "| sklearn lbfgs loop, float32 | speedup |",
        "|---|---|---|---|---|---|",
        f"| C path ({a.layers * len(Cs)} fits) | {o_path:.1f} s | {s_path:.1f} s | "
        f"{s_path / o_path:.1f}x | {s32_path:.1f} s | {s32_path / o_path:.1f}x |",
        f"| full protocol (path + refit) | {o_total:.1f} s | {s_total:.1f} s | "
        f"{s_total / o_total:.1f}x | {s32_total:.1f} s | {s32_total / o_total:.1f}x |",
        "",
        "- vlprobe runs (path / full, s): "
        + ", ".join(f"{r[0]:.1f} / {r[1]:.1f}" for r in runs),
        f"- sklearn on float32 features (what it gets from float32 activations) against its "
        f"float64 run: same C in {int((s32_best == s_best).sum())}/{a.layers} layers, test "
        f"accuracy {100 * s32_acc.mean():.2f}% vs {100 * s_acc.mean():.2f}%, max |gap| "
        f"{gap32.max():.2f} points: the spread of sklearn's own early-stopped answers",
        f"- default `precondition='auto'` (plain L-BFGS here, since N >= D). Forcing the "
        f"principal-axes preconditioner (`precondition=True`): C path {p_path:.1f} s "
        f"({s_path / p_path:.1f}x), full protocol {p_total:.1f} s ({s_total / p_total:.1f}x); "
        f"L-BFGS iterations on the C path, summed over the {a.layers * len(Cs)} probes: "
        f"{int(p_fit.n_iter.sum())} preconditioned vs {int(o_fit.n_iter.sum())} plain (max "
        f"{int(p_fit.n_iter.max())} vs {int(o_fit.n_iter.max())}); test accuracy "
        f"{100 * p_sel.test_accuracy.mean():.2f}%, same C as sklearn in "
        f"{int((p_sel.best_C == s_best).sum())}/{a.layers} layers",
        f"- test accuracy at the selected C, mean over layers: vlprobe "
        f"{100 * sel.test_accuracy.mean():.2f}%, sklearn {100 * s_acc.mean():.2f}%; "
        f"max |gap| over layers {gap.max():.2f} points (mean {gap.mean():.2f})",
        f"- same C selected in {int((sel.best_C == s_best).sum())}/{a.layers} layers",
        "- stop reasons of the C path's probes (converged = gradient tol met): "
        + ", ".join(f"{r} {int((o_fit.stop_reason == r).sum())}"
                    for r in dict.fromkeys(o_fit.stop_reason.ravel())),
        "",
        "| layer | C (ours) | C (sklearn) | test acc ours | test acc sklearn |",
        "|---|---|---|---|---|",
    ]
    if a.converged_tol:
        _, _, c_best, c_acc = sklearn_protocol(tr, va, te, Cs, 20000, tol=a.converged_tol)
        lines[-3:-3] = [
            f"- sklearn run to tol {a.converged_tol:g} (near the exact optima): same C as its "
            f"default-tol run in {int((c_best == s_best).sum())}/{a.layers} layers, as vlprobe's "
            f"default in {int((c_best == sel.best_C).sum())}/{a.layers}, as the preconditioned "
            f"solve in {int((c_best == p_sel.best_C).sum())}/{a.layers}; test accuracy "
            f"{100 * c_acc.mean():.2f}%, max |gap| to sklearn's default-tol run "
            f"{100 * np.abs(c_acc - s_acc).max():.2f} points",
        ]
    for k in range(a.layers):
        lines.append(f"| {k} | {sel.best_C[k]:g} | {s_best[k]:g} | "
                     f"{100 * sel.test_accuracy[k]:.2f} | {100 * s_acc[k]:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.append:
        new_file = not os.path.exists(a.append)
        with open(a.append, "a") as fh:
            fh.write(("# vlprobe benchmarks\n" if new_file else "") + "\n" + text)


if __name__ == "__main__":
    main()
