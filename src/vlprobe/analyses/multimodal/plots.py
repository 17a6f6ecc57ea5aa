"""Figures of the multimodal family: M1 zero-shot, M2 retrieval, M3 typographic attack, M4
bias audit, M5 multimodal neurons, M6 modality gap, M7 human-centric probes.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global
figure registry, no backend change).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vlprobe.analyses.plotting import new_figure as _figure


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


# -- M3 typographic attack, M4 bias audit, M5 multimodal neurons --------------------------------


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


# -- M7 human-centric probes -------------------------------------------------------------------


def plot_human_centric(table: Any, dataset: str) -> Any:
    """Grouped bars: main metric per feature set, one bar per model (and probe)."""
    from matplotlib.figure import Figure

    from vlprobe.analyses.multimodal.human_centric_parts import FEATURE_SETS

    metric = "f1_samples" if (table["metric"] == "f1_samples").any() else "accuracy"
    sub = table[table["metric"] == metric]
    sets = [s for s in FEATURE_SETS if s in set(sub["feature_set"])]
    pairs = list(dict.fromkeys(zip(sub["pair"], sub["probe"])))
    fig = Figure(figsize=(max(4.0, 1.6 * len(sets) + 1), 3.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(pairs))
    for k, (pair, probe) in enumerate(pairs):
        vals = []
        for fset in sets:
            r = sub[(sub["feature_set"] == fset) & (sub["probe"] == probe) & (sub["pair"] == pair)]
            vals.append(float(r["value"].iloc[0]) if len(r) else np.nan)
        ax.bar(np.arange(len(sets)) + k * width, vals, width, label=f"{pair} ({probe})")
    ax.set_xticks(np.arange(len(sets)) + width * (len(pairs) - 1) / 2, sets)
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.set_title(f"Human-centric probes ({dataset})")
    ax.legend(fontsize=7)
    return fig
