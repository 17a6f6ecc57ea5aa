"""Run-wide figure style: one colour per model in every figure, integer layer ticks, alt text."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.colors import to_hex

from vlprobe.analyses import plotting
from vlprobe.analyses.figure_style import alt_text, model_of, model_palette, style_figure
from vlprobe.analyses.geometry import plots
from vlprobe.analyses.vision import plots as vision_plots


def probe_table(models=("clip", "clip_random"), layers=4):
    rows = [{"model": m, "probe": p, "layer": k, "value": 0.5 + 0.1 * k - 0.05 * i,
             "chance": 0.1}
            for i, m in enumerate(models) for p in ("linear", "mlp") for k in range(layers)]
    return pd.DataFrame(rows)


def fewshot_table(models=("clip_random",)):
    return pd.DataFrame([{"model": m, "classifier": c, "shots": n, "layer": 3, "value": 0.4,
                          "se": 0.01, "chance": 0.1}
                         for m in models for c in ("prototype", "1nn") for n in (1, 5, 10)])


def test_model_of_prefers_the_longest_model_name():
    models = ["clip", "clip_random"]
    assert model_of("clip_random (linear)", models) == "clip_random"
    assert model_of("clip / prototype", models) == "clip"
    assert model_of("clip", models) == "clip"
    assert model_of("chance", models) is None
    assert model_of("clipper", models) is None


def test_one_colour_per_model_across_figures_and_legends():
    palette = model_palette(["clip", "clip_random", "bert"])
    probe = style_figure(plotting.plot_accuracy_vs_layer(probe_table()), palette)
    bars = style_figure(vision_plots.plot_few_shot_bars(fewshot_table()), palette)
    ax = probe.get_axes()[0]
    colour = {ln.get_label(): to_hex(ln.get_color()) for ln in ax.get_lines()}
    assert colour["clip_random (linear)"] == palette["clip_random"]
    assert colour["clip (linear)"] == palette["clip"]
    # a model's second series is a shade of its colour, not another model's colour
    assert colour["clip (mlp)"] not in palette.values()
    legend = {t.get_text(): to_hex(h.get_color())
              for t, h in zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles)}
    assert legend["clip_random (linear)"] == palette["clip_random"]
    # the same model's bars in another figure have the same colour
    bar_ax = bars.get_axes()[0]
    by_label = {c.get_label(): c for c in bar_ax.containers}
    first = by_label["clip_random / prototype"]
    assert {to_hex(p.get_facecolor()) for p in first.patches} == {palette["clip_random"]}
    assert by_label["clip_random / 1nn"].patches[0].get_hatch()  # told apart by a hatch too


def test_layer_axes_get_integer_ticks_only():
    fig = plotting.plot_accuracy_vs_layer(probe_table(layers=4))
    style_figure(fig, model_palette(["clip", "clip_random"]))
    fig.canvas.draw()
    ticks = fig.get_axes()[0].get_xticks()
    assert len(ticks) >= 2 and np.allclose(ticks, np.round(ticks)), ticks
    # a relative-depth axis (fractions) keeps its fractional ticks
    rel = plotting.plot_accuracy_vs_layer(probe_table(layers=4), x="relative")
    style_figure(rel, {})
    rel.canvas.draw()
    assert not np.allclose(rel.get_axes()[0].get_xticks(), np.round(rel.get_axes()[0].get_xticks()))


def test_explicit_ticks_are_kept():
    fig = plots.plot_cka_heatmap(np.eye(3), [0, 1, 2], [0, 1, 2], "a", "b")
    style_figure(fig, model_palette(["a", "b"]))
    labels = [t.get_text() for t in fig.get_axes()[0].get_xticklabels()]
    assert labels == ["0", "1", "2"]


def test_alt_text_describes_kind_axes_and_series():
    fig = plotting.plot_accuracy_vs_layer(probe_table(), title="Probe accuracy (cifar)")
    text = alt_text(fig)
    assert text.startswith("Line chart 'Probe accuracy (cifar)'")
    assert "test accuracy against layer" in text
    assert "clip_random (linear)" in text and "chance" in text
    heat = plots.plot_matrix_heatmap(np.eye(2), ["a", "b"], title="RDM correlation")
    assert "Heatmap" in alt_text(heat) and "RDM correlation" in alt_text(heat)
    assert "categories: a, b" in alt_text(heat)
    mds = plots.plot_mds(np.eye(3) * 0.5 + 0.5, ["a", "b", "c"], title="MDS\nof models")
    assert alt_text(mds) == "Scatter plot 'MDS of models'; points: a, b, c."  # one line
    fig.vlprobe_alt = "my own words"
    assert alt_text(fig) == "my own words"


def test_mds_points_and_dendrogram_leaves_take_their_models_colours():
    palette = model_palette(["a", "b", "c"])
    sim = np.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.1], [0.2, 0.1, 1.0]])
    mds = style_figure(plots.plot_mds(sim, ["a", "b", "c"]), palette)
    ax = mds.get_axes()[0]
    colours = [to_hex(c) for c in ax.collections[0].get_facecolors()]
    assert colours == [palette["a"], palette["b"], palette["c"]]
    tree = style_figure(plots.plot_dendrogram(sim, ["a", "b", "c"]), palette)
    ax = tree.get_axes()[0]
    assert {to_hex(t.get_color()) for t in ax.get_xticklabels()} == set(palette.values())
    links = {to_hex(c) for coll in ax.collections for c in coll.get_colors()}
    assert not links & set(palette.values())  # links never look like a model
