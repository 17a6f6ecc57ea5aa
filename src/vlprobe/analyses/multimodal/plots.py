"""Figures of the multimodal analyses (M1 zero-shot, M2 retrieval, M6 modality gap).

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global
figure registry, no backend change).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.0, 4.0)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def plot_zero_shot(table: Any, title: str = "") -> Any:
    """Grouped bars per metric (zero-shot top-1 / top-k / mean per-class recall, with their
    confidence intervals), one bar per model; the linear probe's score on the same features
    as a black tick; chance as a dotted segment."""
    fig, axes = _figure(size=(7.0, 4.0))
    ax = axes[0, 0]
    zs = table[table["classifier"] == "zero_shot"] if len(table) else table
    metrics = list(dict.fromkeys(zs["metric"])) if len(zs) else []
    models = list(dict.fromkeys(zs["model"])) if len(zs) else []
    width = 0.8 / max(len(models), 1)
    for j, model in enumerate(models):
        g = zs[zs["model"] == model].set_index("metric")
        xs = np.arange(len(metrics)) + (j - (len(models) - 1) / 2) * width
        vals = np.array([float(g.loc[m, "value"]) for m in metrics])
        err = None
        if "ci_low" in g.columns:
            lo = np.array([float(g.loc[m, "ci_low"]) if np.isfinite(g.loc[m, "ci_low"])
                           else v for m, v in zip(metrics, vals)])
            hi = np.array([float(g.loc[m, "ci_high"]) if np.isfinite(g.loc[m, "ci_high"])
                           else v for m, v in zip(metrics, vals)])
            err = np.vstack([vals - lo, hi - vals])
        ax.bar(xs, vals, width, yerr=err, capsize=3, label=model)
        lp = table[(table["model"] == model) & (table["classifier"] == "linear_probe")]
        for i, metric in enumerate(metrics):
            hit = lp[lp["metric"] == f"linear_probe_{metric}"]
            if len(hit):
                ax.plot([xs[i] - width / 2, xs[i] + width / 2], [hit["value"].iloc[0]] * 2,
                        color="black", lw=2, label="linear probe" if (i, j) == (0, 0) else None)
    for i, metric in enumerate(metrics):
        chance = float(zs.loc[zs["metric"] == metric, "chance"].max())
        ax.hlines(chance, i - 0.45, i + 0.45, color="grey", ls=":", lw=1,
                  label="chance" if i == 0 else None)
    if models:
        ax.legend(fontsize=7)
    ax.set_xticks(np.arange(len(metrics)), metrics, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title(title)
    return fig


def plot_per_template(per_template: Any, title: str = "") -> Any:
    """Top-1 accuracy of each template used alone (sorted, horizontal bars) against the
    ensemble (vertical line); one panel per model."""
    models = list(dict.fromkeys(per_template["model"])) if len(per_template) else []
    n_tpl = int((per_template["template_index"] >= 0).sum() / max(len(models), 1)) \
        if len(per_template) else 0
    height = min(2.0 + 0.16 * n_tpl, 16.0)
    fig, axes = _figure(1, max(len(models), 1), size=(5.0 * max(len(models), 1), height))
    for ax, model in zip(axes[0], models):
        g = per_template[per_template["model"] == model]
        single = g[g["template_index"] >= 0].sort_values("top1_accuracy")
        ax.barh(np.arange(len(single)), single["top1_accuracy"], color="tab:blue")
        ax.set_yticks(np.arange(len(single)), single["template"],
                      fontsize=6 if len(single) > 20 else 8)
        ens = g[g["template_index"] < 0]
        if len(ens):
            ax.axvline(float(ens["top1_accuracy"].iloc[0]), color="tab:red", ls="--",
                       label=str(ens["template"].iloc[0]))
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xlabel("top-1 accuracy")
        ax.set_title(f"{model}", fontsize=9)
    fig.suptitle(title)
    return fig


def plot_recall_at_k(table: Any, title: str = "") -> Any:
    """Recall@K against K for both directions (image->text solid, text->image dashed), one
    colour per model; random-scoring chance as thin grey lines."""
    fig, axes = _figure()
    ax = axes[0, 0]
    rec = table[table["metric"].str.startswith("recall@")] if len(table) else table
    for j, (model, g) in enumerate(rec.groupby("model", sort=False)):
        colour = f"C{j}"
        for direction, style in (("image_to_text", "-"), ("text_to_image", "--")):
            d = g[g["direction"] == direction].sort_values("k")
            ax.plot(d["k"], d["value"], style, marker="o", color=colour,
                    label=f"{model}: {direction.replace('_', ' ')}")
            ax.plot(d["k"], d["chance"], style, color="grey", lw=0.8)
    if len(rec):
        ax.legend(fontsize=7)
        ax.set_xticks(sorted(rec["k"].unique()))
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_title(title)
    return fig


def plot_gap_view(points: dict[str, tuple[np.ndarray, np.ndarray]], title: str = "") -> Any:
    """A 2-D view (PCA) of both embedding clouds per model: ``points[model] = (image_2d
    [N, 2], text_2d [M, 2])``; centroids marked, the gap drawn between them."""
    n = max(len(points), 1)
    fig, axes = _figure(1, n, size=(4.2 * n, 4.0))
    for ax, (model, (img, txt)) in zip(axes[0], points.items()):
        ax.scatter(img[:, 0], img[:, 1], s=6, alpha=0.5, color="tab:blue", label="image")
        ax.scatter(txt[:, 0], txt[:, 1], s=6, alpha=0.5, color="tab:orange", label="text")
        ci, ct = img.mean(0), txt.mean(0)
        ax.plot(*zip(ci, ct), color="black", lw=1.5)
        ax.scatter(*ci, marker="X", s=80, color="navy", label="image centroid")
        ax.scatter(*ct, marker="X", s=80, color="darkred", label="text centroid")
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.legend(fontsize=6)
    fig.suptitle(title)
    return fig


def plot_gap_shift(sweep: Any, metric: str, title: str = "") -> Any:
    """``metric`` and the gap distance against the shift ``lambda`` (0 = as trained, 1 = the
    centroid difference removed), one colour per model."""
    fig, axes = _figure(1, 2, size=(9.0, 3.6))
    for j, (model, g) in enumerate(sweep.groupby("model", sort=False) if len(sweep) else []):
        g = g.sort_values("lambda")
        for ax, column in zip(axes[0], (metric, "gap_distance")):
            ax.plot(g["lambda"], g[column], marker="o", color=f"C{j}", label=model)
    for ax, column in zip(axes[0], (metric, "gap_distance")):
        ax.axvline(0.0, color="grey", ls=":", lw=1)
        ax.set_xlabel("shift lambda (1 = gap closed)")
        ax.set_ylabel(column)
        if len(sweep):
            ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig
