"""Figures of the text family: T1 (accuracy vs layer per task, per category), T2 (chunking
NMI per layer), T4 (grounded vs baseline skip-gram per benchmark); T3 uses the shared
:func:`vlprobe.analyses.plotting.plot_accuracy_vs_layer`. Every function returns a
matplotlib Figure built without pyplot."""

from __future__ import annotations

from typing import Any

import numpy as np


def plot_grounded_bars(table: Any, metrics: list[str] | None = None, title: str = "") -> Any:
    """One panel per metric; bars = the baseline then each model's grounded skip-gram.

    ``table``: the tidy table of ``grounded_word_embeddings`` (``model, variant, metric,
    value, se``). The baseline is shared by all models (same corpus, vocabulary and seeds):
    drawn once. Error bars = s.e. over runs (absent with one run).
    """
    from matplotlib.figure import Figure

    metrics = metrics or list(dict.fromkeys(table["metric"]))
    fig = Figure(figsize=(2.2 * max(len(metrics), 1) + 1.0, 3.6), layout="constrained")
    axes = fig.subplots(1, max(len(metrics), 1), squeeze=False)[0]
    grounded = table[table["variant"] == "grounded"]
    models = list(dict.fromkeys(grounded["model"]))
    labels = ["baseline", *models]
    colors = ["black"] + [f"C{i}" for i in range(len(models))]
    for ax, metric in zip(axes, metrics, strict=False):
        t = table[table["metric"] == metric]
        base = t[t["variant"] == "baseline"].head(1)
        vals, errs = [], []
        for lab in labels:
            row = base if lab == "baseline" else grounded[(grounded["model"] == lab)
                                                          & (grounded["metric"] == metric)]
            vals.append(float(row["value"].iloc[0]) if len(row) else np.nan)
            se = float(row["se"].iloc[0]) if len(row) else np.nan
            errs.append(0.0 if not np.isfinite(se) else se)
        xs = np.arange(len(labels))
        ax.bar(xs, np.nan_to_num(vals), yerr=errs, color=colors, capsize=2)
        ax.set_xticks(xs, labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=8)
        ax.axhline(0.0, color="grey", lw=0.5)
    axes[0].set_ylabel("accuracy / correlation")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_sentence_probing(table: Any, x: str = "layer") -> Any:
    """Accuracy vs layer: one panel per task, one line per model (and probe); dotted chance.

    Works on the table of one run or on the concatenated tables of several tasks.
    """
    from matplotlib.figure import Figure

    tasks = list(dict.fromkeys(table["task"])) if len(table) else ["(empty)"]
    ncols = min(len(tasks), 5)
    nrows = int(np.ceil(len(tasks) / ncols))
    fig = Figure(figsize=(3.2 * ncols + 0.8, 2.8 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, task in enumerate(tasks):
        ax = axes[k // ncols, k % ncols]
        t = table[table["task"] == task] if len(table) else table
        several = len(t) and t["probe"].nunique() > 1
        for (model, probe), g in (t.groupby(["model", "probe"], sort=False) if len(t) else []):
            g = g.sort_values("layer")
            xs = g["layer"].to_numpy(dtype=float)
            if x == "relative":
                xs = xs / max(xs.max(), 1.0)
            ax.plot(xs, g["value"].to_numpy(), marker="o", ms=3,
                    ls="-" if probe == "mlp" else "--",
                    label=f"{model} ({probe})" if several else model)
        if len(t):
            ax.axhline(float(t["chance"].max()), color="grey", ls=":", lw=1, label="chance")
            cat = t["category"].iloc[0]
            ax.set_title(f"{task} ({cat})", fontsize=9)
            ax.legend(fontsize=6)
        ax.set_xlabel("relative depth" if x == "relative" else "layer")
        ax.set_ylabel("test accuracy")
    for k in range(len(tasks), nrows * ncols):
        axes[k // ncols, k % ncols].set_visible(False)
    return fig


def plot_category_accuracy(table: Any, x: str = "layer") -> Any:
    """Mean accuracy over each category's tasks vs layer (CSCI-566 report, figures 3-5):
    one panel per category, one line per model, dotted mean chance."""
    from matplotlib.figure import Figure

    from vlprobe.analyses.text.sentence_probing import CATEGORY_ORDER, category_means

    means = category_means(table)
    cats = [c for c in (*CATEGORY_ORDER, "unknown") if c in set(means["category"])]
    fig = Figure(figsize=(3.6 * max(len(cats), 1) + 0.6, 3.0), layout="constrained")
    axes = fig.subplots(1, max(len(cats), 1), squeeze=False)[0]
    for ax, cat in zip(axes, cats):
        m = means[means["category"] == cat]
        for model, g in m.groupby("model", sort=False):
            g = g.sort_values("layer")
            xs = g["layer"].to_numpy(dtype=float)
            if x == "relative":
                xs = xs / max(xs.max(), 1.0)
            ax.plot(xs, g["value"].to_numpy(), marker="o", ms=3, label=str(model))
        ax.axhline(float(m["chance"].mean()), color="grey", ls=":", lw=1, label="chance")
        tasks = sorted(set(table.loc[table["category"] == cat, "task"]))
        ax.set_title(f"{cat}: mean of {', '.join(tasks)}", fontsize=8)
        ax.set_xlabel("relative depth" if x == "relative" else "layer")
        ax.set_ylabel("mean test accuracy")
        ax.legend(fontsize=6)
    return fig


def plot_nmi_bars(table: Any, title: str = "Phrase-level chunking (k-means NMI)") -> Any:
    """Grouped bars: x = layer, one bar per model, y = the headline (in-sample) NMI."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.subplots()
    sub = table[table["metric"] == "nmi"] if len(table) else table
    models = list(dict.fromkeys(sub["model"])) if len(sub) else []
    layers = sorted(set(sub["layer"])) if len(sub) else []
    width = 0.8 / max(1, len(models))
    for m, model in enumerate(models):
        rows = sub[sub["model"] == model]
        xs = [layers.index(v) + (m - (len(models) - 1) / 2) * width for v in rows["layer"]]
        ax.bar(xs, rows["value"], width=width, label=model)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([str(v) for v in layers])
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("NMI (k-means clusters vs chunk tags)")
    ax.set_title(title)
    if models:
        ax.legend(fontsize=8)
    return fig
