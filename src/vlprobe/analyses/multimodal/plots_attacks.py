"""Figures of M3 (typographic attack), M4 (bias audit) and M5 (multimodal neurons).

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global
figure registry).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.0, 4.0)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _errors(g: Any) -> np.ndarray | None:
    """``[2, n]`` error-bar lengths from ``value, ci_low, ci_high`` columns (None if no CI)."""
    if "ci_low" not in g or g["ci_low"].isna().all():
        return None
    v = g["value"].to_numpy(float)
    return np.abs(np.stack([v - g["ci_low"].to_numpy(float), g["ci_high"].to_numpy(float) - v]))


def _image_axes(ax: Any, image: Any, title: str, colour: str = "black") -> None:
    ax.imshow(np.asarray(image))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=7, color=colour)


# --------------------------------------------------------------------------------------------
# M3
# --------------------------------------------------------------------------------------------

SUMMARY_METRICS = ("clean_accuracy", "attack_accuracy", "control_accuracy", "flip_rate",
                   "control_target_rate")


def plot_typographic_summary(table: Any, title: str = "") -> Any:
    """Grouped bars with bootstrap CIs: accuracies (clean / attack / control) and the flip
    rate next to the control's rate of the same class; one bar per (model, prompt set)."""
    fig, axes = _figure(size=(8.0, 4.0))
    ax = axes[0, 0]
    t = table[table["metric"].isin(SUMMARY_METRICS)] if len(table) else table
    series = list(dict.fromkeys(zip(t["model"], t["prompts"]))) if len(t) else []
    width = 0.8 / max(len(series), 1)
    for k, (model, prompts) in enumerate(series):
        g = t[(t["model"] == model) & (t["prompts"] == prompts)].set_index("metric")
        g = g.reindex(SUMMARY_METRICS)
        xs = np.arange(len(SUMMARY_METRICS)) + (k - (len(series) - 1) / 2) * width
        ax.bar(xs, g["value"].to_numpy(float), width, yerr=_errors(g), capsize=2,
               label=f"{model} / {prompts}")
    if series:
        ax.legend(fontsize=7)
    ax.set_xticks(np.arange(len(SUMMARY_METRICS)),
                  [m.replace("_", "\n") for m in SUMMARY_METRICS], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rate over (image, written class) pairs")
    ax.set_title(title, fontsize=9)
    return fig


def plot_typographic_examples(
    rendered: Any, pred: np.ndarray, names: Sequence[str], chosen: np.ndarray,
    attack: np.ndarray, control: np.ndarray, pair_clean: np.ndarray, n: int, title: str = "",
) -> Any:
    """Rows = images (the first ``n`` chosen), columns = clean / attack / control with the
    zero-shot prediction of each (red = wrong). The attack shown is a successful one where
    the image has one."""
    labels = rendered.labels
    target = np.asarray(rendered.descriptors["target"])
    rows = []
    for j in range(min(n, len(chosen))):
        mine = np.flatnonzero(pair_clean == j)
        if not len(mine):
            continue
        flipped = [q for q in mine if pred[attack[q]] == target[attack[q]]]
        rows.append((j, flipped[0] if flipped else mine[0]))
    fig, axes = _figure(max(len(rows), 1), 3, size=(6.0, 2.1 * max(len(rows), 1)))
    for r, (j, q) in enumerate(rows):
        truth = int(labels[j])
        for c, (kind, item) in enumerate((("clean", j), ("attack", attack[q]),
                                          ("control", control[q]))):
            guess = int(pred[item])
            text = rendered.descriptors["text"][item]
            head = f"{kind}" + (f" '{text}'" if text else "") + f"\n-> {names[guess]}"
            _image_axes(axes[r, c], rendered.images[int(item)], head,
                        "black" if guess == truth else "red")
        axes[r, 0].set_ylabel(f"true: {names[truth]}", fontsize=7)
    if not rows:
        axes[0, 0].set_axis_off()
    fig.suptitle(title, fontsize=9)
    return fig


# --------------------------------------------------------------------------------------------
# M4
# --------------------------------------------------------------------------------------------


def plot_bias_rates(table: Any, model: str, title: str = "") -> Any:
    """Per label set (columns): top, the rate of each label category per group with
    bootstrap CIs; bottom, the rate of every label per group (heat map)."""
    t = table[table["model"] == model]
    sets = list(dict.fromkeys(t["label_set"])) or [""]
    fig, axes = _figure(2, len(sets), size=(5.5 * len(sets), 7.5))
    for s, name in enumerate(sets):
        ax = axes[0, s]
        cat = t[(t["label_set"] == name) & (t["metric"] == "category_rate")]
        groups = list(dict.fromkeys(cat["group"]))
        cats = list(dict.fromkeys(cat["category"]))
        width = 0.8 / max(len(groups), 1)
        for k, group in enumerate(groups):
            g = cat[cat["group"] == group].set_index("category").reindex(cats)
            xs = np.arange(len(cats)) + (k - (len(groups) - 1) / 2) * width
            ax.bar(xs, g["value"].to_numpy(float), width, yerr=_errors(g), capsize=2,
                   label=f"{group} (n={int(g['n'].max())})")
        ax.set_xticks(np.arange(len(cats)), cats, fontsize=7, rotation=20)
        ax.set_ylim(0, 1.0)
        ax.set_ylabel("share of the group's images")
        ax.set_title(f"label set {name!r}", fontsize=8)
        if groups:
            ax.legend(fontsize=7)
        ax = axes[1, s]
        lab = t[(t["label_set"] == name) & (t["metric"] == "label_rate")]
        labels = list(dict.fromkeys(lab["label"]))
        grid = np.full((len(groups), len(labels)), np.nan)
        for _, row in lab.iterrows():
            grid[groups.index(row["group"]), labels.index(row["label"])] = row["value"]
        if grid.size:
            im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0)
            fig.colorbar(im, ax=ax, shrink=0.8)
            for (r, c), v in np.ndenumerate(grid):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=5, color="w")
        ax.set_xticks(np.arange(len(labels)), labels, fontsize=6, rotation=60, ha="right")
        ax.set_yticks(np.arange(len(groups)), groups, fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


# --------------------------------------------------------------------------------------------
# M5
# --------------------------------------------------------------------------------------------


def plot_selectivity_scatter(sel: Any, model: str, title: str = "") -> Any:
    """Every (unit, concept): image selectivity (x) vs written-name selectivity (y); the
    top cross-modal pairs labelled."""
    fig, axes = _figure(size=(5.5, 5.0))
    ax = axes[0, 0]
    s = sel[sel["model"] == model]
    for concept, g in s.groupby("concept", sort=False):
        ax.scatter(g["d_image"], g["d_text"], s=4, alpha=0.5, label=str(concept))
    top = s.nlargest(5, "cross_modal")
    for _, row in top.iterrows():
        ax.annotate(f"u{int(row['unit'])} {row['concept']}", (row["d_image"], row["d_text"]),
                    fontsize=6)
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("selectivity to images of the concept (d)")
    ax.set_ylabel("selectivity to its written name (d)")
    if len(s) and s["concept"].nunique() <= 12:
        ax.legend(fontsize=6, markerscale=3)
    ax.set_title(title, fontsize=9)
    return fig


def plot_unit_top_images(
    units: Sequence[dict[str, Any]], images: Any, cards: Any, x_img: np.ndarray,
    x_card: np.ndarray, k: int, title: str = "",
) -> Any:
    """One row per unit: its ``k`` most activating images of the image set, then its ``k``
    most activating word cards (activation in each title)."""
    fig, axes = _figure(max(len(units), 1), 2 * k, size=(1.3 * 2 * k, 1.6 * max(len(units), 1)))
    for r, unit in enumerate(units):
        u = int(unit["unit"])
        for c, (source, x) in enumerate(((images, x_img), (cards, x_card))):
            order = np.argsort(-x[:, u], kind="stable")[:k]
            for j, item in enumerate(order):
                ax = axes[r, c * k + j]
                _image_axes(ax, source.images[int(item)], f"{x[item, u]:.2f}")
        axes[r, 0].set_ylabel(f"unit {u}\n{unit['concept']}\nx={unit['cross_modal']:.2f}",
                              fontsize=7)
    if not units:
        axes[0, 0].set_axis_off()
    fig.suptitle(title + f"  (left: top {k} images, right: top {k} word cards)", fontsize=9)
    return fig
