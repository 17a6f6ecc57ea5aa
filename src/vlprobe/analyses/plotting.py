"""Figure helpers shared by the families' ``plots`` modules.

Every plot function in vlprobe returns a :class:`matplotlib.figure.Figure` built without
pyplot (no global figure registry, no ``matplotlib.use``), so figures can be built in any
thread and smoke-tested; :mod:`vlprobe.analyses.figure_style` styles them when a run saves
them. Plots used by one family live in that family's ``plots.py``; the ones here are shared.
"""

from __future__ import annotations

from typing import Any


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.0, 4.0)):
    """A constrained-layout Figure and its ``[nrows, ncols]`` axes array (never squeezed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def plot_accuracy_vs_layer(table: Any, x: str = "layer", title: str = "") -> Any:
    """Accuracy vs layer, one line per (model, probe); dashed chance line.

    ``x="relative"`` plots layer / last layer of that model (models of different depths).
    """
    fig, axes = new_figure()
    ax = axes[0, 0]
    if len(table):
        groups = table.groupby(["model", "probe"], sort=False)
        for (model, probe), g in groups:
            g = g.sort_values("layer")
            xs = g["layer"].to_numpy(dtype=float)
            if x == "relative":
                xs = xs / max(xs.max(), 1.0)
            label = model if table["probe"].nunique() == 1 else f"{model} ({probe})"
            ax.plot(xs, g["value"].to_numpy(), marker="o", ms=3,
                    ls="-" if probe == "linear" else "--", label=label)
        ax.axhline(float(table["chance"].max()), color="grey", ls=":", lw=1, label="chance")
        ax.legend(fontsize=7)
    ax.set_xlabel("relative depth" if x == "relative" else "layer")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    return fig


__all__ = ["new_figure", "plot_accuracy_vs_layer"]
