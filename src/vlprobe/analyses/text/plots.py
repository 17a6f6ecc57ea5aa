"""Figure of T4 ``grounded_word_embeddings``: grounded vs baseline skip-gram per benchmark."""

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
