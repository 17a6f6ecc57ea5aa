"""Helpers shared by the probe / few-shot / RSA analyses.

- :func:`check_finite`: NaN/Inf features -> :class:`AnalysisError` naming model, site, the
  dataset / split (``where``) and the first affected item.
- :func:`is_constant`: a feature matrix whose rows are all identical (degenerate layer).
- :func:`standardize`: per-feature z-scoring with statistics from the training rows only;
  constant features (std = 0) are left centred at 0 instead of dividing by zero.
- :func:`stratified_split`: seeded, stratified carve of a validation split out of train.
- :func:`resolve_modality` / :func:`select_layer_sites`: which tower and which sites to use.
- :func:`check_solver_params` / :func:`solver_options`: the logistic solver's parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vlprobe.analyses.base import FeatureRequest, FeatureSource, LayerFeatures
from vlprobe.errors import AnalysisError, ConfigError


def check_finite(
    x: np.ndarray, model: str, site: str, where: str | None = None,
    ids: Sequence[str] | None = None,
) -> None:
    """Raise :class:`AnalysisError` if ``x`` has NaN or Inf values.

    The message names the model, the site, ``where`` (e.g. ``"dataset 'toy' split 'train'"``)
    and the first affected item (its id when ``ids`` is given, else its row index).
    """
    x = np.asarray(x)
    if not np.all(np.isfinite(x)):
        x2 = x.reshape(x.shape[0] if x.ndim else 1, -1)
        n_nan = int(np.isnan(x2).sum())
        n_inf = int(np.isinf(x2).sum())
        rows = np.flatnonzero((~np.isfinite(x2)).any(1))
        first = int(rows[0])
        item = (f"item {ids[first]!r}" if ids is not None and first < len(ids)
                else f"row {first}")
        raise AnalysisError(
            f"model {model!r} site {site!r}"
            + (f" ({where})" if where else "")
            + f": features contain {n_nan} NaN and {n_inf} Inf values in {len(rows)} of "
            f"{len(x2)} item(s) (first: {item}; shape {tuple(x.shape)}); expected finite "
            "features: check the extraction (overflow in float16?)"
        )


def is_constant(x: np.ndarray) -> bool:
    """True if every row of ``[N, D]`` ``x`` is the same (a layer that carries no
    information about the items; also true for N <= 1)."""
    x = np.asarray(x)
    return len(x) <= 1 or bool(np.all(x == x[:1]))


def check_labels(feats: LayerFeatures, model: str, what: str) -> np.ndarray:
    """The labels of ``feats`` as int64, or an error saying the analysis needs labels."""
    if feats.labels is None:
        raise AnalysisError(f"model {model!r}: {what} has no labels; this analysis needs them")
    return np.asarray(feats.labels).astype(np.int64)


def fit_standardizer(x_train: np.ndarray | tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (guarded) std of the training rows; std = 1 where a feature is constant.

    ``x_train`` is ``[N, D]``, or a tuple of row blocks ``([N1, D], [N2, D], ...)`` that
    stand for their concatenation (combined exactly, without building it).
    """
    if isinstance(x_train, tuple) and len(x_train) == 1:
        x_train = x_train[0]
    if isinstance(x_train, tuple):
        blocks = [np.asarray(b) for b in x_train]
        counts = np.array([len(b) for b in blocks], dtype=np.float64)
        means = np.stack([b.mean(axis=0, dtype=np.float64) for b in blocks])
        variances = np.stack([b.var(axis=0, dtype=np.float64) for b in blocks])
        mean = counts @ means / counts.sum()
        # pooled variance: within-block spread plus the spread of the block means
        std = np.sqrt(counts @ (variances + (means - mean) ** 2) / counts.sum())
    else:
        x = np.asarray(x_train)
        mean = x.mean(axis=0, dtype=np.float64)  # float64 accumulation without a float64 copy
        std = x.std(axis=0, dtype=np.float64)
    scale = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return mean, scale


def standardize(
    x_train: np.ndarray, *others: np.ndarray, dtype: Any = np.float32
) -> list[np.ndarray]:
    """Z-score ``x_train`` and ``others`` with the statistics of ``x_train`` only."""
    mean, scale = fit_standardizer(x_train)
    return [((np.asarray(x, np.float64) - mean) / scale).astype(dtype) for x in (x_train, *others)]


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int, min_per_class: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of ``range(len(labels))`` into (keep, held_out) index arrays.

    Each class with ``n_c`` >= 2 samples gives ``max(min_per_class, round(fraction * n_c))``
    samples (but never all of them) to the held-out part; classes with 1 sample stay in keep.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        if len(idx) < 2:
            keep.append(idx)
            continue
        k = int(min(len(idx) - 1, max(min_per_class, round(fraction * len(idx)))))
        held.append(idx[:k])
        keep.append(idx[k:])
    keep_idx = np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    assert not set(keep_idx.tolist()) & set(held_idx.tolist()), "split is not disjoint"
    return keep_idx, held_idx


def assert_disjoint_ids(a: Sequence[str], b: Sequence[str], what_a: str, what_b: str) -> None:
    """Raise :class:`AnalysisError` if two id lists share an item (data leakage)."""
    shared = set(a) & set(b)
    if shared:
        example = sorted(shared)[:3]
        raise AnalysisError(
            f"{what_a} and {what_b} share {len(shared)} item id(s), e.g. {example}: "
            "held-out items must never be used for fitting"
        )


def resolve_modality(
    source: FeatureSource, model: str, dataset: str, prefer: str | None = None
) -> str | None:
    """The tower of ``model`` that can read ``dataset``'s items, or None if none can.

    When both towers can (a dual encoder on an image+text dataset), ``prefer`` decides
    (default: image).
    """
    common = [m for m in source.dataset_modalities(dataset) if m in source.model_modalities(model)]
    if not common:
        return None
    if prefer is not None:
        if prefer not in common:
            return None
        return prefer
    return "image" if "image" in common else common[0]


def check_solver_params(analysis: str, params: dict[str, Any], cs_key: str = "Cs") -> None:
    """Validate (in place) the parameters every solver-backed probe shares: the C grid
    ``params[cs_key]`` (positive, finite, non-empty; stored as floats) and ``dtype``."""
    Cs = np.atleast_1d(np.asarray(params[cs_key], dtype=float))
    if Cs.size == 0 or np.any(~np.isfinite(Cs)) or np.any(Cs <= 0):
        raise ConfigError(f"{analysis}: {cs_key} must be positive numbers, got {params[cs_key]!r}")
    params[cs_key] = [float(c) for c in Cs]
    if params["dtype"] not in ("float32", "float64"):
        raise ConfigError(
            f"{analysis}: dtype must be float32 or float64, got {params['dtype']!r}"
        )
    gb = params.get("solver_memory_gb", 1.0)
    if isinstance(gb, bool) or not isinstance(gb, int | float) or not 0 < gb < float("inf"):
        raise ConfigError(f"{analysis}: solver_memory_gb must be a positive number (GiB), "
                          f"got {gb!r}")


def solver_options(params: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`~vlprobe.analyses.probe_solver.fit_logistic_path` from an
    analysis' validated parameters (``dtype``, ``max_iter``, ``tol``; ``standardize`` and
    ``solver_memory_gb`` where the analysis has them)."""
    out: dict[str, Any] = {"dtype": params["dtype"], "max_iter": int(params["max_iter"]),
                           "tol": float(params["tol"])}
    if "standardize" in params:
        out["standardize"] = bool(params["standardize"])
    if "solver_memory_gb" in params:
        out["memory_budget"] = int(float(params["solver_memory_gb"]) * 2**30)
    return out


def readable_models(
    source: FeatureSource,
    analysis: str,
    models: list[str],
    dataset: str,
    prefer: str | None = None,
    required_splits: tuple[str, ...] = (),
) -> tuple[dict[str, str], list[str]]:
    """Which tower of each model reads ``dataset``: ``({model: modality}, notes)``.

    Models that cannot read the dataset are skipped with a note (a text model on an image
    dataset, say). Raises AnalysisError when a required split is missing or no model can
    read the dataset at all.
    """
    splits = source.splits(dataset)
    for split in required_splits:
        if split not in splits:
            raise AnalysisError(
                f"{analysis}: dataset {dataset!r} has no split {split!r}; available: {splits}"
            )
    plan: dict[str, str] = {}
    notes: list[str] = []
    for model in models:
        modality = resolve_modality(source, model, dataset, prefer)
        if modality is None:
            notes.append(
                f"{analysis}: model {model!r} ({'/'.join(source.model_modalities(model))}) "
                f"cannot read dataset {dataset!r} "
                f"({'/'.join(source.dataset_modalities(dataset))})"
                + (f" with modality {prefer!r}" if prefer else "")
                + "; skipped"
            )
        else:
            plan[model] = modality
    if not plan:
        raise AnalysisError(f"{analysis}: none of the models {models} can read dataset {dataset!r}")
    return plan, notes



class SplitPairPlan:
    """Planning of analyses that read two splits of one dataset for every model (mixin).

    Uses the analysis' ``params``: the two split names under ``split_params`` (default
    ``train_split`` / ``test_split``), ``modality`` and ``pooling``; every layer site.
    """

    split_params: tuple[str, str] = ("train_split", "test_split")

    def _plan(self, source: FeatureSource) -> tuple[dict[str, str], list[str]]:
        """model -> modality it is read in (+ notes); errors name unreadable models."""
        return readable_models(
            source, self.name, self.models, self.dataset, self.params["modality"],
            required_splits=tuple(self.params[k] for k in self.split_params),
        )

    def _request(self, model: str, split: str, modality: str) -> FeatureRequest:
        return FeatureRequest(model, self.dataset, split, sites=None,
                              pooling=self.params["pooling"], modality=modality)

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        plan, _ = self._plan(source)
        return [self._request(m, self.params[k], mod) for m, mod in plan.items()
                for k in self.split_params]


class SingleSplitPlan:
    """Planning of analyses that read one split (``params.split``) of every model (mixin),
    in ``params.modality`` with ``params.pooling``, every layer site."""

    def _plan(self, source: FeatureSource) -> tuple[dict[str, FeatureRequest], list[str]]:
        p = self.params
        modalities, notes = readable_models(
            source, self.name, self.models, self.dataset, p["modality"],
            required_splits=(p["split"],),
        )
        plan = {
            model: FeatureRequest(model, self.dataset, p["split"], sites=None,
                                  pooling=p["pooling"], modality=modality)
            for model, modality in modalities.items()
        }
        return plan, notes

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        return list(self._plan(source)[0].values())


def select_layer_sites(
    feats: LayerFeatures, layers: Any, model: str, default: str = "all"
) -> list[str]:
    """Layer sites chosen by ``layers``: ``"all"``, ``"last"``, an int or a list of ints.

    Layer indices follow the catalogue convention (0 = embedding output, L = last block);
    negative ints count from the end (``-1`` = last).
    """
    sites = feats.layer_sites()
    if not sites:
        raise AnalysisError(f"model {model!r}: no layer sites in the extracted features")
    spec = default if layers is None else layers
    if spec == "all":
        return sites
    if spec == "last":
        return [sites[-1]]
    wanted = [spec] if isinstance(spec, int | np.integer) else list(spec)
    by_index = {feats.layers[s]: s for s in sites}
    available = sorted(by_index)  # type: ignore[type-var]
    chosen = []
    for w in wanted:
        if not isinstance(w, int | np.integer):
            raise ConfigError(f"layers must be 'all', 'last', an int or a list of ints; got {w!r}")
        idx = available[w] if w < 0 and -len(available) <= w else w
        if idx not in by_index:
            raise ConfigError(f"model {model!r} has no layer {w}; available layers: {available}")
        chosen.append(by_index[idx])
    return chosen
