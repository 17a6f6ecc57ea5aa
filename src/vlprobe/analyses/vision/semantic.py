"""Semantic distance of a classifier's errors (V6 ★): how far, in WordNet, the wrong class is
from the true one.

Groups compared (each a mean similarity with a bootstrap 95 % CI):

- ``adversarial``: true class vs the class an untargeted attack reached, per (norm, ε);
- ``clean_error``: true class vs the model's own wrong answer on the clean image;
- ``random_class``: true class vs a uniformly drawn other head class (the chance level;
  ``n_random_pairs`` seeded draws, the true class taken from a random evaluated item).

Targeted attacks (random targets) add the thesis' §7.4 question: is a target harder to reach
the further it is from the true class? Success rate per tercile of the (true, target)
similarity (Wilson CIs) and the Spearman correlation of similarity and success.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlprobe.analyses.vision.stats import bootstrap_mean_ci, wilson_ci
from vlprobe.analyses.vision.wordnet import MEASURES


def _mean_row(values: list[float], seed: int) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    low, high = bootstrap_mean_ci(v, seed)
    return {"value": float(v.mean()) if len(v) else float("nan"), "ci_low": low,
            "ci_high": high, "n": len(v)}


def similarity_rows(items: Any, clean: Any, sim: Any, n_classes: int, n_random: int,
                    seed: int) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    """Semantic rows of one model (see the module docstring).

    Args:
        items: per (item, norm, ε) outcomes with columns ``norm, epsilon, head_label,
            adv_pred, success, targeted, target`` (attacked items only).
        clean: per evaluated item ``head_label, clean_pred`` (clean predictions).
        sim: ``(measure, a, b) -> similarity`` of head classes (ClassSimilarity).
        n_classes: number of head classes; n_random: draws of the chance level.

    Returns:
        (rows with ``group, norm, epsilon, metric, value, ci_low, ci_high, n`` and for
        targeted terciles ``similarity_bin``, ``bin_low``, ``bin_high``; per-row similarity
        columns to add to the items table: ``{"path_similarity": [...], ...}`` in the order of
        ``items``).
    """
    from scipy.stats import spearmanr

    rows: list[dict[str, Any]] = []
    per_item: dict[str, list[float]] = {f"{m}_similarity": [] for m in MEASURES}
    for _, r in items.iterrows():
        other = int(r["target"]) if r["targeted"] else int(r["adv_pred"])
        relevant = r["targeted"] or bool(r["success"])
        for m in MEASURES:
            per_item[f"{m}_similarity"].append(
                sim(m, int(r["head_label"]), other) if relevant else float("nan"))
    sims = {k: np.asarray(v) for k, v in per_item.items()}

    untargeted = ~items["targeted"].to_numpy(bool) if len(items) else np.zeros(0, bool)
    success = items["success"].to_numpy(bool) if len(items) else np.zeros(0, bool)
    groups = (items[untargeted].groupby(["norm", "epsilon"], sort=False).groups
              if untargeted.any() else {})
    for (norm, eps), idx in groups.items():
        pos = items.index.get_indexer(idx)
        pos = pos[success[pos]]
        for m in MEASURES:
            rows.append({"group": "adversarial", "norm": norm, "epsilon": float(eps),
                         "metric": f"{m}_similarity",
                         **_mean_row(sims[f"{m}_similarity"][pos].tolist(), seed)})

    wrong = clean[(clean["head_label"] >= 0) & (clean["clean_pred"] != clean["head_label"])]
    for m in MEASURES:
        values = [sim(m, int(a), int(b)) for a, b in zip(wrong["head_label"], wrong["clean_pred"])]
        rows.append({"group": "clean_error", "norm": "clean", "epsilon": 0.0,
                     "metric": f"{m}_similarity", **_mean_row(values, seed)})

    labels = clean["head_label"].to_numpy()
    labels = labels[labels >= 0]
    if n_random > 0 and len(labels) and n_classes > 1:
        rng = np.random.default_rng([seed, 7])
        true = labels[rng.integers(0, len(labels), n_random)]
        other = rng.integers(0, n_classes - 1, n_random)
        other = other + (other >= true)
        for m in MEASURES:
            values = [sim(m, int(a), int(b)) for a, b in zip(true, other)]
            rows.append({"group": "random_class", "norm": "chance", "epsilon": float("nan"),
                         "metric": f"{m}_similarity", **_mean_row(values, seed)})

    targeted = ~untargeted
    if targeted.any():
        rows += _targeted_rows(items[targeted], sims["wup_similarity"][targeted],
                               success[targeted], spearmanr)
    return rows, per_item


def _targeted_rows(items: Any, wup: np.ndarray, success: np.ndarray,
                   spearmanr: Any) -> list[dict[str, Any]]:
    """Targeted success by tercile of the (true, target) Wu-Palmer similarity, per (norm, ε),
    and its Spearman correlation with success."""
    rows = []
    for (norm, eps), idx in items.groupby(["norm", "epsilon"], sort=False).groups.items():
        pos = items.index.get_indexer(idx)
        w, s = wup[pos], success[pos]
        if len(w) == 0:
            continue
        edges = np.quantile(w, [0, 1 / 3, 2 / 3, 1])
        bins = np.clip(np.searchsorted(edges[1:-1], w, side="right"), 0, 2)
        for b in range(3):
            hit = s[bins == b]
            low, high = wilson_ci(int(hit.sum()), len(hit))
            rows.append({"group": "targeted", "norm": norm, "epsilon": float(eps),
                         "metric": "targeted_success_rate", "similarity_bin": b,
                         "bin_low": float(edges[b]), "bin_high": float(edges[b + 1]),
                         "value": float(hit.mean()) if len(hit) else float("nan"),
                         "ci_low": low, "ci_high": high, "n": len(hit)})
        rho = (float(spearmanr(w, s.astype(float)).statistic)
               if len(w) > 2 and np.ptp(w) > 0 and np.ptp(s) > 0 else float("nan"))
        rows.append({"group": "targeted", "norm": norm, "epsilon": float(eps),
                     "metric": "targeted_success_vs_wup_spearman", "value": rho,
                     "n": len(w)})
    return rows
