"""Helpers of the M3 / M4 / M5 analyses: zero-shot scoring, input checks, the cluster bootstrap.

Zero-shot (CLIP, Radford et al. 2021): a class is the mean of its prompts' L2-normalised text
embeddings, renormalised (prompt ensembling); an image is assigned the class of highest cosine
similarity. The logit scale does not change the argmax, so it is not needed here.

NOTE for the merge: the M1 analysis (``zeroshot.py``, written in parallel) owns the
package's zero-shot logic; :func:`class_embeddings` / :func:`zero_shot` are this module's
private copy until both land, then they should be replaced by M1's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vlprobe.analyses._common import check_finite
from vlprobe.analyses.base import FeatureSource
from vlprobe.data.stimuli import Stimuli
from vlprobe.errors import AnalysisError, ConfigError, DataError

#: the dual-encoder sites compared by zero-shot (docs/SITES.md: ``*.proj``).
IMAGE_SITE = "vision.proj"
TEXT_SITE = "text.proj"


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``[N, D]`` scaled to unit norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def class_embeddings(text: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``[C, E]`` unit class vectors: the renormalised mean of each class' unit prompt
    embeddings (``text`` ``[P, E]``, ``labels`` ``[P]`` in ``0..C-1``)."""
    t = l2_normalize(text)
    labels = np.asarray(labels)
    missing = sorted(set(range(n_classes)) - set(labels.tolist()))
    if missing:
        raise AnalysisError(f"zero-shot: classes {missing} have no prompt embedding")
    means = np.stack([t[labels == c].mean(0) for c in range(n_classes)])
    return l2_normalize(means)


def zero_shot(image: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(pred [N], cosine [N, C])``: each image's class of highest cosine similarity
    (``image`` ``[N, E]``, ``classes`` ``[C, E]`` unit rows)."""
    cos = l2_normalize(image) @ np.asarray(classes, dtype=np.float64).T
    return cos.argmax(1), cos


def check_names(names: Sequence[Any] | None, what: str) -> list[str]:
    """Class / label names: present, non-empty strings, no duplicates (case and surrounding
    spaces ignored); else a :class:`DataError` naming ``what`` and the offending entry."""
    if not names:
        raise DataError(f"{what}: no class names (zero-shot needs one name per class)")
    seen: dict[str, int] = {}
    out = []
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{what}: name #{i} is empty ({name!r}); every class needs a name "
                            "to write into prompts")
        key = name.strip().lower()
        if key in seen:
            raise DataError(f"{what}: name {name!r} (#{i}) duplicates #{seen[key]}; class names "
                            "must be distinct for zero-shot")
        seen[key] = i
        out.append(name.strip())
    return out


def check_templates(templates: Any, what: str, allow_empty: bool = False) -> list[str]:
    """Prompt templates: a list of strings each holding ``{}`` (or ``{c}``)."""
    if isinstance(templates, str) or not isinstance(templates, list | tuple):
        raise ConfigError(f"{what} must be a list of templates, got {templates!r}")
    if not templates and not allow_empty:
        raise ConfigError(f"{what} must hold at least one template")
    for t in templates:
        if not isinstance(t, str) or ("{}" not in t and "{c}" not in t):
            raise ConfigError(f"{what}: template {t!r} must be a string containing '{{}}'")
    return [str(t) for t in templates]


def prompt_stimuli(names: Sequence[str], templates: Sequence[str], split: str) -> Stimuli:
    """One text item per (name, template), label = name index (class-major order)."""
    texts, labels, ids = [], [], []
    for c, name in enumerate(names):
        for t, template in enumerate(templates):
            texts.append(template.replace("{c}", "{}").format(name))
            labels.append(c)
            ids.append(f"label:{c}:template:{t}")
    return Stimuli(dataset="prompts", split=split, ids=ids, texts=texts,
                   labels=np.asarray(labels, dtype=np.int64), label_names=list(names),
                   source={"view": "prompts", "templates": list(templates)})


def require_towers(source: FeatureSource, model: str, analysis: str,
                   towers: Sequence[str] = ("image", "text")) -> None:
    """An :class:`AnalysisError` unless ``model`` has every modality in ``towers``."""
    have = tuple(source.model_modalities(model))
    missing = [t for t in towers if t not in have]
    if missing:
        need = ("a dual encoder (an image tower and a text tower)" if len(towers) == 2
                else f"an {towers[0]} tower")
        raise AnalysisError(
            f"{analysis}: model {model!r} has no {' / '.join(missing)} tower (it takes "
            f"{'/'.join(have) or 'nothing'}); this analysis needs {need}"
        )


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
