"""Smoke tests of the probe / few-shot / RSA figure functions."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from vlprobe.analyses import plotting
from vlprobe.analyses.geometry import plots
from vlprobe.analyses.vision import plots as vision_plots


def _probe_table():
    rows = []
    for model, depth in (("a", 4), ("b", 2)):
        for layer in range(depth + 1):
            rows.append({"model": model, "layer": layer, "value": 0.5 + 0.1 * layer,
                         "probe": "linear", "chance": 0.1})
    return pd.DataFrame(rows)


def test_accuracy_vs_layer():
    fig = plotting.plot_accuracy_vs_layer(_probe_table())
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    assert len(fig.axes[0].lines) == 3  # two models + chance
    rel = plotting.plot_accuracy_vs_layer(_probe_table(), x="relative")
    assert max(rel.axes[0].lines[1].get_xdata()) == 1.0


def test_few_shot_bars():
    rows = [{"model": m, "classifier": c, "shots": n, "layer": 3, "value": 0.5, "se": 0.01,
             "chance": 0.1} for m in ("a", "b") for c in ("prototype", "1nn") for n in (1, 5, 10)]
    fig = vision_plots.plot_few_shot_bars(pd.DataFrame(rows))
    assert len(fig.axes) == 1 and len(fig.axes[0].patches) == 12
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["N=1", "N=5", "N=10"]


def test_model_matrix_figures():
    r = np.array([[1.0, 0.8, 0.2], [0.8, 1.0, 0.3], [0.2, 0.3, 1.0]])
    names = ["a", "b", "c"]
    heat = plots.plot_matrix_heatmap(r, names)
    assert len(heat.axes) == 2 and len(heat.axes[0].texts) == 9
    assert len(plots.plot_dendrogram(r, names).axes) == 1
    mds = plots.plot_mds(r, names, seed=0)
    assert len(mds.axes) == 1 and len(mds.axes[0].collections) == 1
    rdms = {m: np.abs(np.subtract.outer(np.arange(4.0), np.arange(4.0))) for m in names}
    fig = plots.plot_rdms(rdms, ["w", "x", "y", "z"])
    assert len(fig.axes) == 6  # 3 heatmaps + 3 colorbars
