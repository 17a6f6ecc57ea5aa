"""Helpers shared by the probe / few-shot / RSA analyses.

- :func:`check_finite`: NaN/Inf features -> :class:`AnalysisError` naming model, site, the
  dataset / split (``where``) and the first affected item.
- :func:`is_constant`: a feature matrix whose rows are all identical (degenerate layer).
- :func:`standardize`: per-feature z-scoring with statistics from the training rows only;
  constant features (std = 0) are left centred at 0 instead of dividing by zero.
- :func:`carve_validation`: the seeded, stratified validation carve out of train
  (:func:`vlprobe.data.splits.train_val_split`).
- :func:`split_pair_duplicates`: notes on held-out items with the same content as fitted ones.
- :func:`resolve_modality` / :func:`select_layer_sites` / :func:`check_layer_spec`: which
  tower and which sites to use.
- :func:`run_device`: the torch device of the run (analyses put their tensors there).
- :func:`check_solver_params` / :func:`solver_options`: the logistic solver's parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vlprobe.analyses.base import FeatureRequest, FeatureSource, LayerFeatures
from vlprobe.data.duplicates import find_duplicates
from vlprobe.data.splits import train_val_split
from vlprobe.errors import AnalysisError, ConfigError, DataError
from vlprobe.modality import readable_modality

# kept for the modules that still import it under its old name; new code: carve_validation
stratified_split = train_val_split


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


def carve_validation(
    labels: np.ndarray, fraction: float, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(fit_idx, val_idx)``: the seeded, stratified validation carve of a training split
    (:func:`vlprobe.data.splits.train_val_split`, the package's one stratified carve).

    ``what`` names the analysis, model and split for the error raised when nothing can be
    held out (every class has a single item).
    """
    try:
        return train_val_split(labels, fraction, seed)
    except DataError as exc:
        if np.unique(labels, return_counts=True)[1].max(initial=0) < 2:
            raise AnalysisError(
                f"{what}: no validation items could be carved ({len(labels)} items, every "
                "class has < 2): the validation split chooses the hyper-parameters, so a "
                "class needs >= 2 train items"
            ) from None
        raise AnalysisError(f"{what}: {exc}") from None


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
    """The modality ``model`` runs on ``dataset``'s items (``prefer`` if given and possible),
    or None if it cannot read them: :func:`vlprobe.modality.readable_modality`, the one rule."""
    return readable_modality(
        source.model_modalities(model), source.dataset_modalities(dataset), prefer
    )


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
    """Keyword arguments of :func:`~vlprobe.estimators.logistic.fit_logistic_path` from an
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


def run_device(source: FeatureSource) -> str:
    """The torch device of the run (``source.device``; ``"cpu"`` for a source without one).

    Analyses create their tensors and modules there instead of choosing a device themselves.
    """
    return str(getattr(source, "device", None) or "cpu")


def split_pair_duplicates(
    source: FeatureSource, analysis: str, model: str, dataset: str, fit_split: str,
    held_split: str,
) -> list[str]:
    """Notes on items of ``held_split`` with the same content as items of ``fit_split``.

    Item ids cannot show this (they embed the split name); the payloads' content digests can
    (:mod:`vlprobe.data.duplicates`). Such items are scored on what was fitted (leakage): the
    note gives their count and examples and the dataset option that drops them. A note also
    says how many were already dropped at load (``drop_cross_split_duplicates: true``).
    """
    fit = source.stimuli(FeatureRequest(model, dataset, fit_split))
    held = source.stimuli(FeatureRequest(model, dataset, held_split))
    notes = []
    dropped = held.source.get("dropped_cross_split_duplicates")
    if dropped:
        notes.append(
            f"{analysis}: {dropped['n']} item(s) of split {held_split!r} of dataset "
            f"{dataset!r} were dropped at load for having the same content as items of "
            f"{', '.join(map(repr, dropped['with']))} (drop_cross_split_duplicates)"
        )
    found = find_duplicates(fit, held)
    if found is not None:
        notes.append(
            f"{analysis}: {found.describe(dataset)}: held-out items seen in fitting inflate "
            f"the held-out score; set drop_cross_split_duplicates: true on dataset "
            f"{dataset!r} to drop them"
        )
    return notes


class SplitPairPlan:
    """Planning of analyses that read two splits of one dataset for every model (mixin).

    Uses the analysis' ``params``: the two split names under ``split_params`` (default
    ``train_split`` / ``test_split``), ``modality`` and ``pooling``; every layer site. The
    plan's notes include the cross-split duplicates of the pair
    (:func:`split_pair_duplicates`).
    """

    split_params: tuple[str, str] = ("train_split", "test_split")

    def _plan(self, source: FeatureSource) -> tuple[dict[str, str], list[str]]:
        """model -> modality it is read in (+ notes); errors name unreadable models."""
        fit_split, held_split = (self.params[k] for k in self.split_params)
        plan, notes = readable_models(
            source, self.name, self.models, self.dataset, self.params["modality"],
            required_splits=(fit_split, held_split),
        )
        notes += split_pair_duplicates(source, self.name, next(iter(plan)), self.dataset,
                                       fit_split, held_split)
        return plan, notes

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


# --------------------------------------------------------------------------------------------
# which sites: one selector for every analysis
# --------------------------------------------------------------------------------------------

LAYER_WORDS = ("all", "last", "embedding")


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_layer_spec(
    analysis: str, key: str, value: Any, words: Sequence[str], many: bool = True,
    allow_none: bool = False,
) -> None:
    """Config-time check of a layer parameter: one of ``words`` (a subset of ``"all"``,
    ``"last"``, ``"embedding"``), an int, or (``many``) a non-empty list of ints; ``None``
    when ``allow_none`` (the analysis' default selection)."""
    if value is None and allow_none:
        return
    if isinstance(value, str) and value in words:
        return
    if _is_int(value):
        return
    if many and isinstance(value, list | tuple) and value and all(_is_int(v) for v in value):
        return
    options = [repr(w) for w in words] + ["an int"] + (["a list of ints"] if many else [])
    raise ConfigError(f"{analysis}: {key} must be {', '.join(options[:-1])} or {options[-1]}"
                      f"{' (or null)' if allow_none else ''}, got {value!r}")


def embedding_site(feats: LayerFeatures | Mapping[str, int | None]) -> str | None:
    """The model's final vector (a non-layer site, preferring the projected ``*.proj``, then
    the pooled ``*.pooled``), or None."""
    layers = feats.layers if isinstance(feats, LayerFeatures) else feats
    emb = [s for s, i in layers.items() if i is None]
    named = [s for s in emb if s.endswith(".proj")] or [s for s in emb if s.endswith(".pooled")]
    return (named or emb or [None])[0]


def select_layer_sites(
    feats: LayerFeatures | Mapping[str, int | None],
    layers: Any,
    model: str,
    default: Any = "all",
    *,
    fallback: str | None = None,
    notes: list[str] | None = None,
    analysis: str = "",
) -> list[str]:
    """The sites chosen by a layer parameter (every analysis selects its sites here).

    Args:
        feats: extracted features, or a mapping site -> catalogue layer index (None for
            non-layer sites such as the embedding) when choosing before extraction.
        layers: ``"all"``, ``"last"``, ``"embedding"`` (the model's final embedding site, see
            :func:`embedding_site`), an int or a list of ints; ``None`` = ``default``. Layer
            indices follow the catalogue convention (0 = embedding output, L = last block);
            negative ints count from the end (``-1`` = last). Repeated layers count once.
        model: model key (in errors).
        default: the selection used when ``layers`` is None.
        fallback: for ``"embedding"`` on a model without an embedding site: this selection
            instead (with a note in ``notes``); None = an :class:`AnalysisError`.
        analysis: analysis name (in notes and errors).

    Raises:
        AnalysisError: the model has no layer sites (or no embedding site, without fallback).
        ConfigError: a malformed selection or a layer the model does not have.
    """
    layer_of = feats.layers if isinstance(feats, LayerFeatures) else dict(feats)
    who = f"{analysis + ': ' if analysis else ''}model {model!r}"
    spec = default if layers is None else layers
    if isinstance(spec, str) and spec == "embedding":
        site = embedding_site(layer_of)
        if site is not None:
            return [site]
        if fallback is None:
            raise AnalysisError(f"{who} has no embedding site among {sorted(layer_of)}")
        if notes is not None:
            notes.append(f"{who} has no embedding site; used {fallback!r} instead")
        spec = fallback
    sites = sorted((s for s, i in layer_of.items() if i is not None), key=lambda s: layer_of[s])
    if not sites:
        raise AnalysisError(f"{who} has no layer sites (sites: {sorted(layer_of)})")
    if isinstance(spec, str) and spec == "all":
        return sites
    if isinstance(spec, str) and spec == "last":
        return [sites[-1]]
    wanted = [spec] if _is_int(spec) or isinstance(spec, str) else list(spec)
    by_index = {layer_of[s]: s for s in sites}
    available = sorted(by_index)  # type: ignore[type-var]
    chosen = []
    for w in wanted:
        if not _is_int(w):
            raise ConfigError(f"{who}: layers must be 'all', 'last', 'embedding', an int or a "
                              f"list of ints; got {w!r}")
        idx = available[w] if w < 0 and -len(available) <= w else w
        if idx not in by_index:
            raise ConfigError(f"{who} has no layer {w}; available layers: {available}")
        chosen.append(by_index[idx])
    return list(dict.fromkeys(chosen))
