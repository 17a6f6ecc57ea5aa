"""Helpers of the M3 / M4 / M5 analyses: their sites, input checks, the cluster bootstrap.

Zero-shot classification itself is M1's: :mod:`vlprobe.analyses.multimodal.zeroshot_classifier`
(prompt ensemble, prediction); class names and templates are checked by
:mod:`vlprobe.data.prompts.params`, prompts built by :func:`vlprobe.data.prompt_stimuli`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlprobe.analyses._common import check_finite
from vlprobe.errors import AnalysisError, ConfigError

#: the dual-encoder sites compared by zero-shot (docs/SITES.md: ``*.proj``).
IMAGE_SITE = "vision.proj"
TEXT_SITE = "text.proj"


def site_features(feats: Any, site: str, model: str, where: str) -> np.ndarray:
    """``feats.features[site]`` as a finite float array, or a clear error."""
    if site not in feats.features:
        raise AnalysisError(f"model {model!r}: site {site!r} missing from the features of "
                            f"{where} (has {sorted(feats.features)})")
    x = np.asarray(feats.features[site])
    check_finite(x, model, site, where, feats.ids)
    return x


def check_positive_int(params: dict[str, Any], key: str, what: str, low: int = 1,
                       allow_none: bool = False) -> None:
    value = params[key]
    if value is None and allow_none:
        return
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{what}: {key} must be an integer >= {low}"
                          f"{' or null' if allow_none else ''}, got {value!r}")


def check_ci(params: dict[str, Any], what: str) -> None:
    check_positive_int(params, "n_boot", what, low=0)
    ci = params["ci"]
    if not isinstance(ci, int | float) or not 0.0 < float(ci) < 1.0:
        raise ConfigError(f"{what}: ci must be a level in (0, 1), got {ci!r}")


def resample_weights(k: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot, k]`` counts: how often each of ``k`` units is drawn in each bootstrap
    resample (k draws with replacement)."""
    draws = rng.integers(0, k, size=(int(n_boot), k))
    weights = np.zeros((int(n_boot), k))
    np.add.at(weights, (np.repeat(np.arange(int(n_boot)), k), draws.ravel()), 1.0)
    return weights


def cluster_bootstrap(
    values: np.ndarray, clusters: np.ndarray, n_boot: int, ci: float, rng: np.random.Generator,
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` ``[M]`` and its percentile bootstrap
    interval at level ``ci``, resampling whole clusters (``clusters`` ``[M]`` ints, e.g. the
    image of each attack item, so the items of one image move together).

    With ``n_boot = 0`` or a single cluster the interval is ``(nan, nan)``.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    _, cl = np.unique(np.asarray(clusters), return_inverse=True)
    k = int(cl.max()) + 1
    sums = np.bincount(cl, weights=values, minlength=k)
    counts = np.bincount(cl, minlength=k).astype(np.float64)
    mean = float(sums.sum() / counts.sum())
    if n_boot <= 0 or k < 2:
        return mean, float("nan"), float("nan")
    weights = resample_weights(k, n_boot, rng)
    stats = (weights @ sums) / np.maximum(weights @ counts, 1e-300)
    alpha = (1.0 - float(ci)) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return mean, float(low), float(high)


def bootstrap_rates(
    indicators: np.ndarray, n_boot: int, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(rates [K], samples [n_boot, K] or None)``: the column means of ``indicators``
    ``[n, K]`` (0/1 per item and outcome) and their bootstrap replicates, items resampled
    with replacement (one resample serves every column, so replicates of different columns
    can be combined). None when ``n_boot = 0`` or ``n < 2``."""
    x = np.asarray(indicators, dtype=np.float64)
    rates = x.mean(0)
    if n_boot <= 0 or len(x) < 2:
        return rates, None
    return rates, resample_weights(len(x), n_boot, rng) @ x / len(x)


def percentile_ci(samples: np.ndarray | None, ci: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(low [K], high [K])`` percentile interval of bootstrap ``samples`` (NaN if None)."""
    if samples is None:
        return np.full(k, np.nan), np.full(k, np.nan)
    alpha = (1.0 - float(ci)) / 2.0
    low, high = np.quantile(samples, [alpha, 1.0 - alpha], axis=0)
    return low, high
