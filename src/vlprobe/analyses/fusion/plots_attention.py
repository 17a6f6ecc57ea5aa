"""Figures of the attention-map analyses (V7 ``attention_maps``, F6 ``caption_grounding``).
Every function returns a matplotlib Figure built without pyplot (no global registry)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vlprobe.analyses.plotting import new_figure

_CMAP = "inferno"


def thumbnail(image: Any, size: int) -> np.ndarray:
    """An RGB PIL image -> ``[h, w, 3]`` uint8, longest side ``size``."""
    im = image.convert("RGB")
    scale = size / max(im.size)
    im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))))
    return np.asarray(im)


def paint(values: np.ndarray, boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Token values ``[n]`` on their normalised boxes ``[n, 4]`` -> an ``[h, w]`` map (mean
    where boxes overlap, NaN where no token lies), scaled to [0, 1] by its maximum."""
    h, w = shape
    total = np.zeros(shape)
    count = np.zeros(shape)
    v = np.asarray(values, np.float64)
    for value, (x0, y0, x1, y1) in zip(v, np.asarray(boxes, np.float64)):
        if not np.isfinite([x0, y0, x1, y1]).all():
            continue
        c0, c1 = int(np.floor(x0 * w)), max(int(np.ceil(x1 * w)), int(np.floor(x0 * w)) + 1)
        r0, r1 = int(np.floor(y0 * h)), max(int(np.ceil(y1 * h)), int(np.floor(y0 * h)) + 1)
        total[r0:r1, c0:c1] += value
        count[r0:r1, c0:c1] += 1
    out = np.divide(total, count, out=np.full(shape, np.nan), where=count > 0)
    top = np.nanmax(out) if np.isfinite(out).any() else 0.0
    return out / top if top > 0 else out


def _overlay(ax: Any, thumb: np.ndarray, values: np.ndarray | None, boxes: np.ndarray,
             title: str = "", fontsize: float = 6) -> None:
    ax.imshow(thumb)
    if values is not None and len(values):
        ax.imshow(paint(values, boxes, thumb.shape[:2]), cmap=_CMAP, alpha=0.6, vmin=0,
                  vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)


def plot_model_comparison(examples: dict[str, list[dict[str, Any]]], thumbs: list[np.ndarray],
                          title: str = "") -> Any:
    """Rows = example images; columns = the image, then per model its last-layer head-mean
    map, rollout and gradient relevance (where computed). ``examples[model][i]`` holds
    ``last``, ``rollout``, ``relevance`` (or None) and ``boxes`` of image ``i``."""
    models = list(examples)
    cols: list[tuple[str, str]] = []
    for m in models:
        cols += [(m, "last"), (m, "rollout")]
        if any(e["relevance"] is not None for e in examples[m]):
            cols.append((m, "relevance"))
    n = len(thumbs)
    fig, axes = new_figure(n, 1 + len(cols), (1.0 * (1 + len(cols)), 1.05 * n + 0.4))
    names = {"last": "last layer", "rollout": "rollout", "relevance": "relevance"}
    for i in range(n):
        _overlay(axes[i][0], thumbs[i], None, np.zeros((0, 4)), "image" if i == 0 else "")
        for j, (m, what) in enumerate(cols, start=1):
            e = examples[m][i]
            _overlay(axes[i][j], thumbs[i], e[what], e["boxes"],
                     f"{m}\n{names[what]}" if i == 0 else "")
    fig.suptitle(title, fontsize=8)
    fig.vlprobe_alt = (f"Attention maps overlaid on {n} images: for each of {', '.join(models)} "
                       "the last layer's [CLS] attention (head mean), rollout and relevance")
    return fig


def plot_heads(raw: np.ndarray, boxes: np.ndarray, thumb: np.ndarray, layers: Sequence[int],
               title: str = "") -> Any:
    """One image: rows = layers, columns = heads and their mean; each panel the query's
    attention over the image tokens (``raw`` ``[L, H, n]``) overlaid on the image."""
    n_layers, n_heads = raw.shape[:2]
    fig, axes = new_figure(n_layers, n_heads + 1, (0.55 * (n_heads + 1) + 0.4,
                                                0.55 * n_layers + 0.5))
    for li in range(n_layers):
        for h in range(n_heads + 1):
            values = raw[li].mean(axis=0) if h == n_heads else raw[li, h]
            _overlay(axes[li][h], thumb, values, boxes,
                     ("mean" if h == n_heads else f"h{h}") if li == 0 else "", fontsize=5)
        axes[li][0].set_ylabel(f"L{layers[li]}", fontsize=5)
    fig.suptitle(title, fontsize=7)
    fig.vlprobe_alt = f"{title}: per-head attention over image tokens, {n_layers} layers"
    return fig


def plot_grounding_by_layer(table: Any, title: str = "") -> Any:
    """Pointing accuracy and IoU of the head-mean cross-attention per layer, one line per
    model, with the random-map baseline dashed."""
    fig, axes = new_figure(1, 2, (7.0, 2.8))
    for ax, metric in zip(axes[0], ("pointing_accuracy", "iou")):
        sub = table[(table["metric"] == metric) & (table["head"] == "mean")] if len(table) \
            else table
        for model, g in (sub.groupby("model", sort=False) if len(sub) else []):
            g = g.sort_values("layer")
            line = ax.plot(g["layer"], g["value"], marker="o", ms=3, label=model)[0]
            ax.plot(g["layer"], g["baseline_random"], ls="--", color=line.get_color(),
                    label=f"{model} (random map)")
        ax.set_xlabel("decoder layer")
        ax.set_ylabel("pointing accuracy" if metric == "pointing_accuracy" else "mean IoU")
        ax.set_ylim(0, 1)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=8)
    return fig


def plot_grounding_examples(shown: list[dict[str, Any]], title: str = "") -> Any:
    """Per example: the image with the object's box and the head-mean cross-attention map of
    the word (last layer) over it."""
    n = max(1, len(shown))
    fig, axes = new_figure(1, n, (1.7 * n, 2.0))
    for ax, e in zip(axes[0], shown):
        _overlay(ax, e["thumb"], e["values"], e["boxes"], f"{e['word']}\n{e['caption'][:28]}",
                 fontsize=5)
        h, w = e["thumb"].shape[:2]
        for x0, y0, x1, y1 in e["targets"]:
            from matplotlib.patches import Rectangle

            ax.add_patch(Rectangle((x0 * w, y0 * h), (x1 - x0) * w, (y1 - y0) * h,
                                   fill=False, edgecolor="cyan", linewidth=1))
    for ax in axes[0][len(shown):]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=7)
    return fig
