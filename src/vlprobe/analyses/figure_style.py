"""Run-wide figure style, applied to every analysis' figures when a result is written.

Plot functions (here and in every analysis family's ``plots.py``) draw with matplotlib's
defaults; :func:`style_figure` then makes the figures of one run consistent, whatever module
drew them:

- **one colour per model** across all figures of a run (:func:`model_palette`, in config
  order): every line, bar group, scatter, legend entry, annotation (and the point it
  annotates) and tick label whose text names a model (``"clip"``, ``"clip (linear)"``,
  ``"clip / prototype"``) gets that model's colour; a model's second and later series in
  one panel get lighter / darker shades of it (bars also a hatch), so they stay apart;
- **integer layer axes**: an automatic axis labelled "layer" (or whose plotted data are all
  integers) only gets integer ticks (``MaxNLocator(integer=True)``), never 2.5.

:func:`alt_text` describes a figure (kind, title, axes, series) for the report's ``alt``
attribute. A plot function that wants its own description sets ``fig.vlprobe_alt``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: colours of models in config order (matplotlib's tab10, then tab20's lighter half)
_BASE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
         "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
         "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5")
_HATCHES = ("", "//", "..", "xx", "\\\\", "oo")
_SEPARATORS = (" (", " / ", " - ", ", ", ": ", " ")


def model_palette(models: Sequence[str]) -> dict[str, str]:
    """model -> hex colour, in config order (cycles after 20 models)."""
    return {m: _BASE[i % len(_BASE)] for i, m in enumerate(dict.fromkeys(models))}


def model_of(label: str, models: Sequence[str]) -> str | None:
    """The model a series label names: the label itself or its first part before a
    separator (``"clip (linear)"`` -> ``"clip"``); the longest model name wins."""
    label = str(label).strip()
    best = None
    for model in models:
        named = label == model or any(label.startswith(model + sep) for sep in _SEPARATORS)
        if named and (best is None or len(model) > len(best)):
            best = model
    return best


def _shade(colour: str, k: int) -> str:
    """The ``k``-th variant of a colour: 0 itself, 1 lighter, 2 darker, 3 lighter still..."""
    from matplotlib.colors import to_hex, to_rgb

    if k == 0:
        return colour
    rgb = np.asarray(to_rgb(colour))
    amount = min(0.3 * ((k + 1) // 2), 0.6)
    target = np.ones(3) if k % 2 else np.zeros(3)
    return to_hex(rgb + (target - rgb) * amount)


def style_figure(fig: Any, palette: Mapping[str, str]) -> Any:
    """Apply the run palette and integer layer ticks to ``fig`` (in place; returned)."""
    models = list(palette)
    for ax in fig.get_axes():
        _integer_ticks(ax)
        if models:
            _recolour(ax, palette, models)
    for legend in getattr(fig, "legends", []):
        _recolour_legend(legend, {}, palette, models)
    return fig


def _integer_ticks(ax: Any) -> None:
    from matplotlib.ticker import AutoLocator, MaxNLocator

    lines = [ln for ln in ax.get_lines() if ln.get_transform() == ax.transData]  # no axhline
    for axis, label, data in (
        (ax.xaxis, ax.get_xlabel(), [ln.get_xdata() for ln in lines]),
        (ax.yaxis, ax.get_ylabel(), [ln.get_ydata() for ln in lines]),
    ):
        if not isinstance(axis.get_major_locator(), AutoLocator):
            continue  # explicit ticks (bar groups, heatmap labels) stay as drawn
        if re.search(r"\blayers?\b", label, re.IGNORECASE) or _all_integers(data):
            axis.set_major_locator(MaxNLocator(integer=True))


def _all_integers(data: list[Any]) -> bool:
    values = []
    for d in data:
        try:
            arr = np.asarray(d, dtype=float).ravel()
        except (TypeError, ValueError):
            return False
        values.append(arr[np.isfinite(arr)])
    joined = np.concatenate(values) if values else np.zeros(0)
    if len(joined) < 2 or np.ptp(joined) == 0:
        return False
    return bool(np.all(joined == np.round(joined)))


def _recolour(ax: Any, palette: Mapping[str, str], models: list[str]) -> None:
    """Colour each model's series in one panel; remember label -> style for the legend."""
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer

    seen: dict[str, int] = {}
    styles: dict[str, tuple[str, str]] = {}

    def style_for(label: str) -> tuple[str, str] | None:
        model = model_of(label, models)
        if model is None:
            return None
        if label not in styles:
            k = seen.get(model, 0)
            seen[model] = k + 1
            styles[label] = (_shade(palette[model], k), _HATCHES[k % len(_HATCHES)])
        return styles[label]

    for container in ax.containers:
        if isinstance(container, BarContainer):
            style = style_for(container.get_label())
            if style:
                for patch in container.patches:
                    patch.set_facecolor(style[0])
                    patch.set_hatch(style[1] or None)
    for line in ax.get_lines():
        style = style_for(line.get_label())
        if style:
            line.set_color(style[0])
    for coll in ax.collections:
        if isinstance(coll, PathCollection):
            style = style_for(coll.get_label())
            if style:
                coll.set_color(style[0])
            else:
                _colour_annotated_points(ax, coll, palette)
    for text in ax.texts:  # annotations that name a model (MDS points, bar labels)
        model = model_of(text.get_text(), models)
        if model and text.get_text() == model:
            text.set_color(palette[model])
    for tick in (*ax.get_xticklabels(), *ax.get_yticklabels()):
        if tick.get_text() in palette:
            tick.set_color(palette[tick.get_text()])
    legend = ax.get_legend()
    if legend is not None:
        _recolour_legend(legend, styles, palette, models)


def _colour_annotated_points(ax: Any, coll: Any, palette: Mapping[str, str]) -> None:
    """In a scatter whose points are annotated with model names (an MDS of models), give
    each such point its model's colour."""
    from matplotlib.colors import to_rgba

    offsets = np.asarray(coll.get_offsets(), dtype=float)
    if offsets.ndim != 2 or not len(offsets):
        return
    colours = np.asarray(coll.get_facecolors(), dtype=float)
    colours = np.repeat(colours[:1], len(offsets), axis=0) if len(colours) == 1 else colours
    changed = False
    for text in ax.texts:
        xy = getattr(text, "xy", None)
        if xy is None or text.get_text() not in palette or len(colours) != len(offsets):
            continue
        distance = np.abs(offsets - np.asarray(xy, dtype=float)).sum(axis=1)
        i = int(np.argmin(distance))
        if distance[i] < 1e-9:
            colours[i] = to_rgba(palette[text.get_text()])
            changed = True
    if changed:
        coll.set_facecolors(colours)
        coll.set_edgecolors(colours)


def _recolour_legend(
    legend: Any, styles: Mapping[str, tuple[str, str]], palette: Mapping[str, str],
    models: list[str],
) -> None:
    handles = getattr(legend, "legend_handles", None)
    if handles is None:
        handles = getattr(legend, "legendHandles", [])
    for handle, text in zip(handles, legend.get_texts()):
        label = text.get_text()
        style = styles.get(label)
        if style is None:
            model = model_of(label, models)
            style = (palette[model], "") if model else None
        if style is None or handle is None:
            continue
        if hasattr(handle, "set_hatch") and hasattr(handle, "set_facecolor"):
            handle.set_facecolor(style[0])
            handle.set_hatch(style[1] or None)
        else:
            handle.set_color(style[0])


def alt_text(fig: Any, fallback: str = "") -> str:
    """A one-paragraph description of ``fig`` for the report's ``alt`` attribute: the
    figure title, then per panel its kind, title, axes, named series, categories and
    annotated points. Tick labels are complete once the figure was drawn (saved)."""
    explicit = getattr(fig, "vlprobe_alt", None)
    if explicit:
        return str(explicit)
    parts = []
    suptitle = getattr(fig, "_suptitle", None)
    if suptitle is not None and suptitle.get_text():
        parts.append(_one_line(suptitle.get_text()) + ".")
    for ax in fig.get_axes():
        if not ax.get_visible() or _is_colorbar(ax):
            continue
        desc = _describe_axes(ax)
        if desc:
            parts.append(desc)
    text = " ".join(parts).strip()
    return text or fallback or "figure"


def _is_colorbar(ax: Any) -> bool:
    return ax.get_label() == "<colorbar>" or hasattr(ax, "_colorbar")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _describe_axes(ax: Any) -> str:
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer
    from matplotlib.image import AxesImage

    scatter = any(isinstance(c, PathCollection) for c in ax.collections)
    if ax.images and any(isinstance(i, AxesImage) for i in ax.images):
        kind = "Heatmap"
    elif any(isinstance(c, BarContainer) for c in ax.containers):
        kind = "Bar chart"
    elif scatter and not ax.get_lines():
        kind = "Scatter plot"
    elif ax.get_lines():
        kind = "Line chart"
    elif ax.collections:
        kind = "Diagram"  # e.g. a dendrogram's link lines
    else:
        return ""
    title = _one_line(ax.get_title())
    desc = kind + (f" '{title}'" if title else "")
    ylabel, xlabel = _one_line(ax.get_ylabel()), _one_line(ax.get_xlabel())
    if ylabel and xlabel:
        desc += f": {ylabel} against {xlabel}"
    elif ylabel or xlabel:
        desc += f": {ylabel or xlabel}"
    labels = [str(t.get_text()) for t in ax.get_legend().get_texts()] if ax.get_legend() else []
    if labels:
        desc += "; series: " + _listing(labels)
    if kind != "Line chart":
        ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        if ticks and not all(_is_number(t) for t in ticks):
            desc += "; categories: " + _listing(ticks)
    points = [t.get_text() for t in ax.texts if hasattr(t, "xy") and t.get_text()]
    if scatter and points:
        desc += "; points: " + _listing(points)
    return desc + "."


def _listing(items: list[str], limit: int = 12) -> str:
    return ", ".join(items[:limit]) + (" ..." if len(items) > limit else "")


def _is_number(text: str) -> bool:
    try:
        float(text.replace("\u2212", "-"))  # matplotlib's minus sign
    except ValueError:
        return False
    return True
