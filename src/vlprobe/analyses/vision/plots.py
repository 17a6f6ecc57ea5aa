"""Figures of the vision family: V2 (transfer), V3 (few-shot), V4 (clustering), V5
(reconstruction), V6 (adversarial), V8 (feature visualisation); V1's accuracy-vs-layer is
shared with T3 (:func:`vlprobe.analyses.plotting.plot_accuracy_vs_layer`). Every function
returns a matplotlib Figure built without pyplot (no global figure registry)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vlprobe.analyses.plotting import new_figure as _figure


def _hwc(image: np.ndarray) -> np.ndarray:
    """``[3, H, W]`` in [0, 1] -> ``[H, W, 3]`` for imshow."""
    return np.clip(np.transpose(np.asarray(image), (1, 2, 0)), 0.0, 1.0)


def plot_accuracy_vs_epsilon(table: Any, title: str = "") -> Any:
    """Accuracy vs ε, one panel per norm, one line per model with its 95 % CI band; dashed:
    after 8-bit quantisation of the adversarial image."""
    acc = table[table["metric"].isin(["accuracy", "accuracy_after_quantization"])] \
        if len(table) else table
    norms = list(dict.fromkeys(acc["norm"])) if len(acc) else ["linf"]
    fig, axes = _figure(1, len(norms), (4.5 * len(norms), 3.6))
    for ax, norm in zip(axes[0], norms):
        sub = acc[acc["norm"] == norm] if len(acc) else acc
        for (model, metric), g in (sub.groupby(["model", "metric"], sort=False)
                                   if len(sub) else []):
            g = g.sort_values("epsilon")
            x = g["epsilon_255"].to_numpy(float) if norm == "linf" else g["epsilon"].to_numpy()
            quant = metric != "accuracy"
            line = ax.plot(x, g["value"], marker="o", ms=3, ls="--" if quant else "-",
                           label=f"{model}{' (8-bit)' if quant else ''}")[0]
            if not quant:
                ax.fill_between(x, g["ci_low"], g["ci_high"], alpha=0.2,
                                color=line.get_color())
        ax.set_xlabel("ε × 255" if norm == "linf" else "ε (L2, pixels in [0, 1])")
        ax.set_ylabel("accuracy under attack")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"PGD {'L∞' if norm == 'linf' else 'L2'}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def plot_examples(shown: dict[str, Any], title: str = "") -> Any:
    """Rows of (clean image, perturbation amplified to the full range, adversarial image)
    with the true and the predicted class."""
    n = len(shown["clean"])
    fig, axes = _figure(n, 3, (7.5, 2.5 * n))
    for i in range(n):
        clean, adv = np.asarray(shown["clean"][i]), np.asarray(shown["adversarial"][i])
        delta = adv - clean
        scale = float(np.abs(delta).max()) or 1.0
        panels = [(clean, f"clean: {shown['true'][i]}"),
                  (0.5 + delta / (2 * scale), f"perturbation (x{0.5 / scale:.0f})"),
                  (adv, f"adversarial: {shown['pred'][i]}")]
        for ax, (image, label) in zip(axes[i], panels):
            ax.imshow(_hwc(image))
            ax.set_title(label[:40], fontsize=7)
            ax.axis("off")
    eps = shown["epsilon"]
    shown_eps = f"{eps * 255:.3g}/255" if shown.get("norm") == "linf" else f"{eps:.3g}"
    fig.suptitle(f"{title} (ε = {shown_eps})", fontsize=9)
    return fig


def plot_similarity_vs_epsilon(table: Any, title: str = "") -> Any:
    """Mean Wu-Palmer and path similarity of (true, wrong class) vs ε for adversarial errors,
    with the clean errors and chance as horizontal bands (95 % CIs)."""
    sem = table[table["group"].notna()]
    measures = ["wup_similarity", "path_similarity"]
    fig, axes = _figure(1, 2, (9.0, 3.6))
    for ax, metric in zip(axes[0], measures):
        sub = sem[sem["metric"] == metric]
        adv = sub[sub["group"] == "adversarial"]
        for (model, norm), g in adv.groupby(["model", "norm"], sort=False):
            g = g.sort_values("epsilon")
            x = g["epsilon"].to_numpy(float) * (255 if norm == "linf" else 1)
            line = ax.errorbar(x, g["value"], yerr=[g["value"] - g["ci_low"],
                                                     g["ci_high"] - g["value"]],
                               marker="o", ms=3, capsize=2, label=f"{model} {norm} attack")
            colour = line[0].get_color()
            for group, style in (("clean_error", "--"), ("random_class", ":")):
                ref = sub[(sub["group"] == group) & (sub["model"] == model)]
                if len(ref):
                    r = ref.iloc[0]
                    ax.axhline(r["value"], color=colour, ls=style, lw=1,
                               label=f"{model} {group.replace('_', ' ')}")
                    ax.axhspan(r["ci_low"], r["ci_high"], color=colour, alpha=0.08)
        ax.set_xlabel("ε (× 255 for L∞)")
        ax.set_ylabel(metric.replace("_", " "))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    return fig


def plot_feature_grid(images: Sequence[np.ndarray], labels: Sequence[str],
                      title: str = "", ncols: int = 4) -> Any:
    """A grid of feature visualisations (``[3, S, S]`` in [0, 1]) with their unit labels."""
    n = max(len(images), 1)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = _figure(nrows, ncols, (2.4 * ncols, 2.5 * nrows))
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < len(images):
            ax.imshow(_hwc(images[k]))
            ax.set_title(str(labels[k])[:32], fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


# -- V2 transfer, V3 few-shot, V4 clustering ----------------------------------------------------


def plot_transfer_bars(table: Any, title: str = "") -> Any:
    """Grouped bars: one group per metric (top-1, top-5, mean per-class recall), one bar per
    (model, site); a dotted chance segment per metric (seed 004 fig 4.4)."""
    fig, axes = _figure(size=(7.0, 4.0))
    ax = axes[0, 0]
    metrics = list(dict.fromkeys(table["metric"])) if len(table) else []
    series = list(dict.fromkeys(zip(table["model"], table["site"]))) if len(table) else []
    width = 0.8 / max(len(series), 1)
    for k, (model, site) in enumerate(series):
        g = table[(table["model"] == model) & (table["site"] == site)].set_index("metric")
        vals = [float(g.loc[m, "value"]) if m in g.index else np.nan for m in metrics]
        xs = np.arange(len(metrics)) + (k - (len(series) - 1) / 2) * width
        label = model if table["site"].nunique() == 1 else f"{model} / {site}"
        ax.bar(xs, vals, width, label=label)
    for i, metric in enumerate(metrics):  # chance differs per metric (top-5 > top-1)
        chance = float(table.loc[table["metric"] == metric, "chance"].max())
        ax.hlines(chance, i - 0.45, i + 0.45, color="grey", ls=":", lw=1,
                  label="chance" if i == 0 else None)
    if len(table):
        ax.legend(fontsize=7)
    ax.set_xticks(np.arange(len(metrics)), metrics, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test score")
    ax.set_title(title)
    return fig


def plot_c_sweep(sweep: Any, title: str = "") -> Any:
    """Validation accuracy vs C (log x axis), one line per (model, site); chosen C marked."""
    fig, axes = _figure()
    ax = axes[0, 0]
    if len(sweep):
        for (model, site), g in sweep.groupby(["model", "site"], sort=False):
            g = g.sort_values("C")
            (line,) = ax.plot(g["C"], g["val_accuracy"], marker=".", ms=4,
                              label=f"{model} / {site}")
            chosen = g[g["chosen"]]
            ax.plot(chosen["C"], chosen["val_accuracy"], "*", ms=10, color=line.get_color())
        ax.set_xscale("log")
        ax.legend(fontsize=7)
    ax.set_xlabel("C (inverse L2 strength)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    return fig


def plot_few_shot_bars(table: Any, title: str = "") -> Any:
    """Grouped bars: one group per N, one bar per (model, classifier); error bars = se.

    Uses each model's last layer in the table when several layers were evaluated.
    """
    fig, axes = _figure(size=(7.0, 4.0))
    ax = axes[0, 0]
    last = table.groupby("model")["layer"].transform("max")
    t = table[(table["layer"] == last) | table["layer"].isna()]
    shots = sorted(t["shots"].unique())
    series = list(dict.fromkeys(zip(t["model"], t["classifier"])))
    width = 0.8 / max(len(series), 1)
    for k, (model, clf) in enumerate(series):
        g = t[(t["model"] == model) & (t["classifier"] == clf)].set_index("shots")
        vals = [float(g.loc[n, "value"]) if n in g.index else np.nan for n in shots]
        errs = [float(g.loc[n, "se"]) if n in g.index else 0.0 for n in shots]
        xs = np.arange(len(shots)) + (k - (len(series) - 1) / 2) * width
        ax.bar(xs, vals, width, yerr=errs, capsize=2, label=f"{model} / {clf}")
    if len(t):
        ax.axhline(float(t["chance"].max()), color="grey", ls=":", lw=1, label="chance")
    ax.set_xticks(np.arange(len(shots)), [f"N={n}" for n in shots])
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return fig


def plot_clustering_vs_layer(table: Any, title: str = "") -> Any:
    """One panel per metric (accuracy, NMI, ARI) vs layer, one line per model."""
    metrics = list(dict.fromkeys(table["metric"])) if len(table) else ["accuracy"]
    fig, axes = _figure(1, len(metrics), size=(3.2 * len(metrics), 3.4))
    for ax, metric in zip(axes[0], metrics):
        t = table[table["metric"] == metric] if len(table) else table
        for model, g in (t.groupby("model", sort=False) if len(t) else []):
            g = g.sort_values("layer")
            ax.plot(g["layer"].to_numpy(float), g["value"].to_numpy(float), marker="o", ms=3,
                    label=model)
        if metric == "accuracy" and len(t):
            ax.axhline(float(t["chance"].max()), color="grey", ls=":", lw=1, label="chance")
        ax.set_xlabel("layer")
        ax.set_title(metric, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig


# -- V5 reconstruction -------------------------------------------------------------------------


def plot_mse_vs_layer(table: Any, baseline: float, x: str = "relative", title: str = "") -> Any:
    """Test MSE vs layer, one line per model; dotted mean-training-image level (cf. fig 7)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    t = table[table["metric"] == "mse"] if len(table) else table
    for model, g in (t.groupby("model", sort=False) if len(t) else []):
        g = g.sort_values("layer")
        xs = g["layer"].to_numpy(dtype=float)
        if x == "relative":
            xs = xs / max(float(np.nanmax(xs)), 1.0)
        ax.plot(xs, g["value"].to_numpy(), marker="o", ms=4, label=model)
    ax.axhline(baseline, color="grey", ls=":", lw=1.2, label="mean training image")
    ax.set_xlabel("relative depth (layer / deepest probed)" if x == "relative" else "layer")
    ax.set_ylabel("test MSE per pixel (lower = more kept)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return fig


def plot_reconstruction_examples(originals: np.ndarray, recons: dict[str, np.ndarray],
                                 title: str = "") -> Any:
    """Grid of images: first row the originals ``[k, c, S, S]``, then one row per
    ``recons`` entry (label -> ``[k, c, S, S]`` reconstructions)."""
    from matplotlib.figure import Figure

    k = max(len(originals), 1)
    rows = [("original", originals), *recons.items()]
    fig = Figure(figsize=(1.1 * k + 1.4, 1.1 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), k, squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(k):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(imgs):
                img = np.clip(np.asarray(imgs[c]), 0.0, 1.0)
                if img.shape[0] == 1:
                    ax.imshow(img[0], cmap="gray", vmin=0.0, vmax=1.0)
                else:
                    ax.imshow(img.transpose(1, 2, 0))
            if c == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    return fig
