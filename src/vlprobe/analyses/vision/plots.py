"""Figures of the vision analyses (V6, V8). Every function returns a matplotlib Figure built
without pyplot (no global figure registry)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.0, 4.0)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


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
