"""Figures of F4 (visual coreference) and F5 (coreference probers).

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global
figure registry, no backend change).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlprobe.analyses.plotting import new_figure


def head_heatmaps(table: Any, model: str) -> Any:
    """F4: mean link attention per head (rows: attention sites in order, columns: heads) over
    all links, one panel per column (``v2t``, ``t2v``, ``v2t_rand``, ``t2v_rand``)."""
    rows = table[(table["model"] == model) & (table["link_type"] == "all")]
    metrics = [m for m in ("v2t", "t2v", "v2t_rand", "t2v_rand") if m in set(rows["metric"])]
    fig, axes = new_figure(1, max(len(metrics), 1), (3.2 * max(len(metrics), 1), 3.2))
    vmax = float(np.nanmax(rows["value"])) if len(rows) else 1.0
    for ax, metric in zip(axes[0], metrics, strict=False):
        sub = rows[rows["metric"] == metric]
        sites = list(dict.fromkeys(sub["site"]))
        n_heads = int(sub["head"].max()) + 1
        grid = np.full((len(sites), n_heads), np.nan)
        for _, r in sub.iterrows():
            grid[sites.index(r["site"]), int(r["head"])] = r["value"]
        im = ax.imshow(grid, vmin=0, vmax=vmax, cmap="viridis", aspect="auto")
        ax.set_title(metric)
        ax.set_xlabel("head")
        ax.set_yticks(range(len(sites)))
        ax.set_yticklabels([s.removesuffix(".attn") for s in sites], fontsize=7)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"{model}: link attention per head (all links)")
    return fig


def best_head_bars(best: Any) -> Any:
    """F4 (seed 001 table 2): per model and link type the best head's ``v2t`` / ``t2v`` and
    the random ablation at that head, as grouped bars."""
    models = list(dict.fromkeys(best["model"])) if len(best) else []
    fig, axes = new_figure(max(len(models), 1), 1, (8.0, 3.0 * max(len(models), 1)))
    cols = [("v2t", "v→t"), ("v2t_rand_at_best", "v→t rand"), ("t2v", "t→v"),
            ("t2v_rand_at_best", "t→v rand")]
    for ax, model in zip(axes[:, 0], models, strict=False):
        sub = best[best["model"] == model]
        types = list(sub["link_type"])
        width = 0.8 / len(cols)
        for j, (col, label) in enumerate(cols):
            if col not in sub.columns:
                continue
            xs = np.arange(len(types)) + (j - (len(cols) - 1) / 2) * width
            ax.bar(xs, sub[col].to_numpy(dtype=float), width, label=label)
        ax.set_xticks(range(len(types)))
        ax.set_xticklabels(types, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("max attention (best head)")
        ax.set_title(model)
        ax.legend(fontsize=7, ncols=4)
    return fig


def prober_curves(table: Any) -> Any:
    """F5 (seed 001 table 3 / fig. 5): embedding-prober accuracy by layer, matched (solid)
    vs mismatched (dashed), the attention prober as horizontal lines, chance dotted; one
    panel per task, one colour per model."""
    tasks = [t for t in ("VCD", "VCC") if len(table) and t in set(table["task"])]
    fig, axes = new_figure(1, max(len(tasks), 1), (5.0 * max(len(tasks), 1), 3.6))
    for ax, task in zip(axes[0], tasks, strict=False):
        sub = table[table["task"] == task]
        for k, model in enumerate(dict.fromkeys(sub["model"])):
            colour = f"C{k}"
            m = sub[sub["model"] == model]
            for cond, style in (("matched", "-"), ("mismatched", "--")):
                e = m[(m["input"] == "embedding") & (m["condition"] == cond)]
                if len(e):
                    ax.errorbar(e["layer"].astype(float), e["value"], yerr=e["se"], ls=style,
                                marker="o", color=colour, label=f"{model} emb. ({cond})")
                a = m[(m["input"] == "attention") & (m["condition"] == cond)]
                if len(a):
                    ax.axhline(float(a["value"].iloc[0]), color=colour, ls=style, lw=0.8,
                               alpha=0.6, label=f"{model} attn. ({cond})")
            c = m[m["input"] == "chance"]
            if len(c):
                ax.axhline(float(c["value"].iloc[0]), color="black", ls=":", lw=1)
        ax.set_title(f"{task} (chance dotted)")
        ax.set_xlabel("layer")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=6)
    return fig


__all__ = ["best_head_bars", "head_heatmaps", "prober_curves"]
