"""R1 ``rsa``: class-level RDMs per model and their correlations (seed 004 §4.4, eq. 4.1).

RDM distances between classes i, j (features of one site per model, raw, not standardised):

- ``welch_t`` (default, eq. 4.1): ``|| (mu_i - mu_j) / sqrt(s_i^2/n_i + s_j^2/n_j) ||_2`` with
  per-dimension class means ``mu`` and *unbiased* variances ``s^2`` (ddof = 1). Dimensions
  where the denominator is 0 (constant in both classes) have it floored at ``epsilon`` times
  the mean positive denominator of that pair (reported in the notes). Needs >= 2 samples per
  class.
- ``cosine``: ``1 - cos(mu_i, mu_j)``; ``correlation``: ``1 - pearson(mu_i, mu_j)`` (same as
  rsatoolbox ``calc_rdm(method="correlation")``); ``euclidean``: ``||mu_i - mu_j||_2``
  (rsatoolbox's ``"euclidean"`` is the *squared* distance divided by the number of channels).

One distance for every model. RDMs built with different distances live on different scales
and are not comparable without saying so, so a model that cannot use the analysis' distance
(``welch_t`` with one sample per class) stops the analysis with a :class:`ConfigError`. The
user may set a model's distance explicitly (``distances: {model: cosine}``); the notes and
the figure titles then state every model's distance.

Text models on an image dataset enter through class prompts (``view="class_prompts"``): one
sentence per (class, template). The default template set is the prompt-template ensemble of
CLIP (``templates: imagenet``, 80 templates, packaged in :mod:`vlprobe.data.prompts`), so a
text model has 80 vectors per class and per-class statistics (Welch-t) exist for it too.

Degenerate input (never a crash): a class mean that is a zero vector (``cosine``) or
constant over the dimensions (``correlation``) makes its distances undefined: NaN, noted. A
Welch pair whose denominators are all 0 (both classes constant) is floored at ``epsilon``
(absolute). An RDM whose distances are all equal (a layer constant over the items) is noted;
correlations with a constant or NaN-holding RDM are NaN. Fewer than 3 shared classes and
NaN/Inf features raise :class:`AnalysisError` naming the model, site and split.

Models are compared by the Spearman (default) and/or Pearson correlation of the RDM upper
triangles (rsatoolbox ``compare(method="spearman")`` / ``"corr"``). Spearman is the usual RSA
choice (Kriegeskorte et al. 2008): it assumes only a monotonic, not a linear, relation between
two models' distances.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses._common import (
    check_finite,
    check_labels,
    embedding_site,
    is_constant,
    resolve_modality,
)
from vlprobe.analyses.base import Analysis, FeatureRequest, FeatureSource, LayerFeatures, Result
from vlprobe.data.prompts import resolve_templates
from vlprobe.errors import AnalysisError, ConfigError

DISTANCES = ("welch_t", "cosine", "correlation", "euclidean")
COMPARISONS = ("spearman", "pearson")


# --------------------------------------------------------------------------------------------
# maths
# --------------------------------------------------------------------------------------------


def class_stats(x: np.ndarray, labels: np.ndarray, classes: np.ndarray):
    """Per class: mean ``[C, D]``, unbiased variance ``[C, D]`` (NaN if n = 1), counts ``[C]``."""
    x = np.asarray(x, dtype=np.float64)
    means, vars_, counts = [], [], []
    for c in classes:
        xc = x[labels == c]
        means.append(xc.mean(0))
        vars_.append(xc.var(0, ddof=1) if len(xc) > 1 else np.full(x.shape[1], np.nan))
        counts.append(len(xc))
    return np.stack(means), np.stack(vars_), np.asarray(counts)


def welch_t_rdm(
    x: np.ndarray, labels: np.ndarray, classes: np.ndarray, epsilon: float = 1e-8
) -> tuple[np.ndarray, int]:
    """Welch-t RDM (eq. 4.1) and the number of (pair, dimension) denominators floored."""
    mu, var, n = class_stats(x, labels, classes)
    if np.any(n < 2):
        raise AnalysisError("welch_t needs at least 2 samples per class")
    se2 = var / n[:, None]  # [C, D]
    C = len(classes)
    rdm = np.zeros((C, C))
    n_floored = 0
    for i in range(C):
        den = se2[i][None, :] + se2  # [C, D]
        pos = den > 0
        mean_pos = np.where(pos.any(1), (den * pos).sum(1) / np.maximum(pos.sum(1), 1), 1.0)
        floor = epsilon * np.maximum(mean_pos, np.finfo(float).tiny)[:, None]
        small = den < floor
        n_floored += int(small[np.arange(C) != i].sum())
        den = np.where(small, floor, den)
        rdm[i] = np.sqrt((((mu[i][None, :] - mu) ** 2) / den).sum(1))
    np.fill_diagonal(rdm, 0.0)
    return rdm, n_floored // 2


def undefined_classes(mu: np.ndarray, distance: str) -> np.ndarray:
    """``[C]`` mask of class means for which ``distance`` is undefined: a zero vector under
    ``cosine``; a vector constant over the dimensions (zero variance) under ``correlation``."""
    mu = np.asarray(mu, dtype=np.float64)
    norm = np.linalg.norm(mu, axis=1)
    if distance == "cosine":
        return norm < 1e-12
    if distance == "correlation":
        spread = np.linalg.norm(mu - mu.mean(1, keepdims=True), axis=1)
        return (spread < 1e-12) | (spread <= 1e-9 * norm)
    return np.zeros(len(mu), dtype=bool)


def mean_rdm(x: np.ndarray, labels: np.ndarray, classes: np.ndarray, distance: str) -> np.ndarray:
    """RDM between class means with ``cosine``, ``correlation`` or ``euclidean`` distance.

    Distances involving a class whose mean makes the distance undefined (a zero mean under
    ``cosine``, a mean constant over the dimensions under ``correlation``; see
    :func:`undefined_classes`) are NaN, as in rsatoolbox, not an arbitrary 1.
    """
    from scipy.spatial.distance import pdist, squareform

    mu, _, _ = class_stats(x, labels, classes)
    if distance == "cosine":
        z = mu / np.maximum(np.linalg.norm(mu, axis=1, keepdims=True), 1e-12)
        rdm = 1.0 - z @ z.T
    elif distance == "correlation":
        mc = mu - mu.mean(1, keepdims=True)
        mc = mc / np.maximum(np.linalg.norm(mc, axis=1, keepdims=True), 1e-12)
        rdm = 1.0 - mc @ mc.T
    elif distance == "euclidean":
        rdm = squareform(pdist(mu, "euclidean"))
    else:
        raise ConfigError(f"rsa: unknown distance {distance!r}; known: {DISTANCES}")
    rdm = np.maximum((rdm + rdm.T) / 2, 0.0)
    bad = undefined_classes(mu, distance)
    rdm[bad, :] = np.nan
    rdm[:, bad] = np.nan
    np.fill_diagonal(rdm, 0.0)
    return rdm


def upper(rdm: np.ndarray) -> np.ndarray:
    """Upper triangle (k = 1), row-major (the order of scipy's ``squareform``)."""
    return rdm[np.triu_indices(rdm.shape[0], k=1)]


def compare_rdms(a: np.ndarray, b: np.ndarray, method: str) -> float:
    """Pearson or Spearman correlation of two RDMs' upper triangles (NaN if one is constant
    or has a NaN distance)."""
    from scipy.stats import rankdata

    u, v = upper(a), upper(b)
    if method not in COMPARISONS:
        raise ConfigError(f"rsa: unknown comparison {method!r}; known: {COMPARISONS}")
    if not (np.all(np.isfinite(u)) and np.all(np.isfinite(v))):
        return float("nan")
    if method == "spearman":
        u, v = rankdata(u), rankdata(v)
    u, v = u - u.mean(), v - v.mean()
    den = np.linalg.norm(u) * np.linalg.norm(v)
    return float(u @ v / den) if den > 0 else float("nan")


def distance_summary(used: dict[str, str], comparison: list[str]) -> tuple[str, str]:
    """(note, figure-title line) naming the RDM distance of every model (``used``: model ->
    distance); with several distances (set explicitly by ``distances``) each model's."""
    kinds = sorted(set(used.values()))
    compared = " and ".join(comparison)
    if len(kinds) == 1:
        return (f"rsa: RDM distance {kinds[0]} for every model; RDMs compared by {compared} "
                "correlation", f"distance: {kinds[0]} (all models)")
    per_model = ", ".join(f"{m}: {d}" for m, d in used.items())
    note = (f"rsa: the RDMs use different distances, set explicitly by `distances` "
            f"({per_model}); a correlation between RDMs of different distances compares "
            f"different geometries (and, for pearson, scales); RDMs compared by {compared} "
            "correlation")
    return note, "MIXED distances: " + ", ".join(f"{m}={d}" for m, d in used.items())


# --------------------------------------------------------------------------------------------
# analysis
# --------------------------------------------------------------------------------------------


class RSA(Analysis):
    """Class-level RDMs and model x model RDM correlations (R1).

    Params:
        layer: ``"last"`` (default: last layer site), ``"embedding"`` (the model's embedding
            site) or a layer index (negative = from the end).
        split: split whose items give the image-model classes (default ``"test"``).
        templates: prompt templates for text models: a packaged set name (default
            ``"imagenet"``: CLIP's 80 templates, i.e. 80 sentences per class), one template
            or a list of templates, each containing ``{}``.
        distance: RDM distance of every model: ``"welch_t"`` (default), ``"cosine"``,
            ``"correlation"``, ``"euclidean"``.
        distances: explicit per-model distances overriding ``distance``, e.g.
            ``{minilm: cosine}``; the notes and figure titles then name each model's distance.
            Without it, a model that cannot use ``distance`` (welch_t with one sample per
            class) raises :class:`ConfigError`.
        comparison: ``"spearman"`` (default), ``"pearson"`` or a list of both (the first one
            drives the heatmap, dendrogram and MDS).
        epsilon: relative floor of zero Welch denominators (1e-8).
        pooling, modality: as for ``layer_probe``.
        prompt_models: models that enter through the class prompts (their text tower) even
            though they could read the dataset's items (e.g. a CLIP model as "CLIP-T").
    """

    name: ClassVar[str] = "rsa"
    catalogue: ClassVar[tuple[str, ...]] = ("R1",)
    summary: ClassVar[str] = "Class-level RDMs (Welch-t) and model x model RDM correlations"
    defaults: ClassVar[dict[str, Any]] = {
        "layer": "last",
        "split": "test",
        "templates": "imagenet",
        "distance": "welch_t",
        "distances": {},
        "comparison": ["spearman"],
        "epsilon": 1e-8,
        "pooling": None,
        "modality": None,
        "prompt_models": [],
    }

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        removed = sorted({"fallback_distance", "strict"} & set(params or {}))
        if removed:
            raise ConfigError(
                f"rsa: parameter(s) {removed} were removed: a model that cannot use the "
                "analysis' distance no longer falls back silently. Give text models several "
                "prompts per class (templates: imagenet, the default), use one distance for "
                "every model (distance: cosine), or set per-model distances explicitly "
                "(distances: {model: cosine})"
            )
        super().__init__(models, dataset, params, seed)
        p = self.params
        if p["distance"] not in DISTANCES:
            raise ConfigError(f"rsa: distance must be one of {DISTANCES}, got {p['distance']!r}")
        if not isinstance(p["distances"] or {}, dict):
            raise ConfigError(f"rsa: distances must map model keys to distances, "
                              f"got {p['distances']!r}")
        p["distances"] = dict(p["distances"] or {})
        for model, dist in p["distances"].items():
            if model not in self.models:
                raise ConfigError(f"rsa: distances: {model!r} is not one of the analysis' "
                                  f"models {self.models}")
            if dist not in DISTANCES:
                raise ConfigError(f"rsa: distances: {model!r}: distance must be one of "
                                  f"{DISTANCES}, got {dist!r}")
        comp = [p["comparison"]] if isinstance(p["comparison"], str) else list(p["comparison"])
        if not comp or any(c not in COMPARISONS for c in comp):
            raise ConfigError(f"rsa: comparison must be a subset of {COMPARISONS}, got {comp!r}")
        p["comparison"] = comp
        layer = p["layer"]
        if not (layer in ("last", "embedding") or isinstance(layer, int | np.integer)):
            raise ConfigError(f"rsa: layer must be 'last', 'embedding' or an int, got {layer!r}")
        # params keep what the user wrote (e.g. "imagenet"); the request carries the texts
        self.templates = resolve_templates(p["templates"], "rsa: templates")
        pm = [p["prompt_models"]] if isinstance(p["prompt_models"], str) else p["prompt_models"]
        p["prompt_models"] = list(pm or [])

    def distance_of(self, model: str) -> str:
        """The RDM distance of ``model``: its explicit ``distances`` entry, else ``distance``."""
        return self.params["distances"].get(model, self.params["distance"])

    def _welch_impossible(self, model: str, why: str) -> ConfigError:
        return ConfigError(
            f"rsa: model {model!r} {why}, so the welch_t distance (per-class variances) is "
            "undefined for it and its RDM would need another distance than the other models'. "
            "Give it several samples per class (text models: templates: imagenet, the 80 CLIP "
            "templates, or a list of >= 2 templates), use one other distance for every model "
            f"(distance: cosine), or set this model's distance explicitly (distances: "
            f"{{{model}: cosine}}; the result then states each model's distance)"
        )

    def _plan_request(self, source: FeatureSource, model: str) -> FeatureRequest | None:
        p = self.params
        modality = resolve_modality(source, model, self.dataset, p["modality"])
        if model in p["prompt_models"]:
            if "text" not in source.model_modalities(model):
                raise ConfigError(f"rsa: prompt_models: model {model!r} has no text tower")
            modality = None
        if modality is not None:
            return FeatureRequest(model, self.dataset, p["split"], sites=None,
                                  pooling=p["pooling"], modality=modality)
        if "text" in source.model_modalities(model):
            if self.distance_of(model) == "welch_t" and len(self.templates) < 2:
                raise self._welch_impossible(
                    model, f"enters through class prompts with {len(self.templates)} template "
                    f"({self.templates[0]!r}), i.e. one sentence per class")
            return FeatureRequest(model, self.dataset, p["split"], sites=None,
                                  pooling=p["pooling"], view="class_prompts",
                                  templates=tuple(self.templates), modality="text")
        return None

    def _plan(self, source: FeatureSource) -> tuple[dict[str, FeatureRequest], list[str]]:
        if self.params["split"] not in source.splits(self.dataset):
            raise AnalysisError(
                f"rsa: dataset {self.dataset!r} has no split {self.params['split']!r}; "
                f"available: {source.splits(self.dataset)}"
            )
        plan, notes = {}, []
        for model in self.models:
            req = self._plan_request(source, model)
            if req is None:
                notes.append(f"rsa: model {model!r} cannot read dataset {self.dataset!r}; skipped")
            else:
                plan[model] = req
        if not plan:
            raise AnalysisError(f"rsa: none of the models {self.models} can be used")
        return plan, notes

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        return list(self._plan(source)[0].values())

    def _site(self, feats: LayerFeatures, model: str) -> str:
        layer = self.params["layer"]
        sites = feats.layer_sites()
        if layer == "embedding":
            site = embedding_site(feats)
            if site is None:
                raise AnalysisError(f"rsa: model {model!r} has no embedding site in "
                                    f"{sorted(feats.features)}")
            return site
        if not sites:
            raise AnalysisError(f"rsa: model {model!r}: no layer sites")
        if layer == "last":
            return sites[-1]
        by_index = {feats.layers[s]: s for s in sites}
        idx = sorted(by_index)  # type: ignore[type-var]
        key = idx[layer] if layer < 0 and -len(idx) <= layer else layer
        if key not in by_index:
            raise ConfigError(f"rsa: model {model!r} has no layer {layer}; available: {idx}")
        return by_index[key]

    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        from vlprobe.analyses.geometry import plots

        p = self.params
        plan, notes = self._plan(source)
        data = {}
        for model, req in plan.items():
            feats = source.get(req)
            site = self._site(feats, model)
            x = feats.features[site]
            check_finite(x, model, site, f"dataset {self.dataset!r} split {p['split']!r} "
                         f"view {req.view!r}", feats.ids)
            labels = check_labels(feats, model, f"view {req.view!r}")
            data[model] = (feats, site, x, labels)
        common = sorted(set.intersection(*[set(np.unique(d[3]).tolist()) for d in data.values()]))
        if len(common) < 3:
            per_model = ", ".join(f"{m!r}: {len(np.unique(d[3]))}" for m, d in data.items())
            raise AnalysisError(
                f"rsa: the models share only {len(common)} class(es) in split "
                f"{p['split']!r} of dataset {self.dataset!r} (classes per model: {per_model}); "
                "an RDM comparison needs at least 3 classes"
            )
        classes = np.asarray(common)
        for model, (_, _, _, labels) in data.items():
            dropped = sorted(set(np.unique(labels).tolist()) - set(common))
            if dropped:
                notes.append(f"rsa: model {model!r}: classes {dropped} not shared by all models; "
                             "left out of the RDM")
        names_src = next((d[0].label_names for d in data.values() if d[0].label_names), None)
        class_names = [names_src[c] if names_src and c < len(names_src) else str(c)
                       for c in common]

        prompted = [m for m, req in plan.items() if req.view == "class_prompts"]
        if prompted:
            n_t = len(self.templates)
            named = isinstance(p["templates"], str) and n_t > 1  # a packaged set's name
            what = f"the {p['templates']!r} template set" if named else f"{n_t} template(s)"
            notes.append(f"rsa: text model(s) {prompted} enter through class prompts from "
                         f"{what}: {n_t} sentence(s) per class")
        rdms: dict[str, np.ndarray] = {}
        used: dict[str, str] = {}
        rdm_rows = []
        for model, (feats, site, x, labels) in data.items():
            mask = np.isin(labels, classes)
            xm, lm = x[mask], labels[mask]
            dist = self.distance_of(model)
            if dist == "welch_t":
                counts = {class_names[k]: int((lm == c).sum()) for k, c in enumerate(classes)}
                single = [name for name, count in counts.items() if count < 2]
                if single:
                    raise self._welch_impossible(
                        model, f"has a single sample for class(es) {single[:5]} in split "
                        f"{p['split']!r} of dataset {self.dataset!r}")
                rdm, n_floor = welch_t_rdm(xm, lm, classes, float(p["epsilon"]))
                if n_floor:
                    notes.append(f"rsa: model {model!r}: {n_floor} (class pair, dimension) Welch "
                                 "denominators were 0 and floored at epsilon")
            else:
                rdm = mean_rdm(xm, lm, classes, dist)
            if is_constant(xm):  # identical classes: exact 0 (not rounding noise) where defined
                rdm = np.where(np.isnan(rdm), np.nan, 0.0)
            tri = upper(rdm)
            nan_rows = [class_names[i] for i in range(len(classes))
                        if np.isnan(np.delete(rdm[i], i)).all()]
            if nan_rows:
                why = "a zero vector" if dist == "cosine" else "constant over the dimensions"
                notes.append(
                    f"rsa: model {model!r} site {site!r}: {dist} distance is undefined for "
                    f"class(es) {nan_rows} (class mean is {why}, e.g. constant or all-zero "
                    "features); those RDM entries are NaN, so this model's RDM correlations "
                    "are NaN (drawn as r = 0 in the dendrogram / MDS)"
                )
            elif len(tri) > 1 and np.ptp(tri) == 0:
                notes.append(
                    f"rsa: model {model!r} site {site!r}: all {len(tri)} class-pair "
                    f"{dist} distances are equal ({float(tri[0]):.3g}; e.g. features constant "
                    "over the items), so the RDM carries no structure and this model's RDM "
                    "correlations are NaN (drawn as r = 0 in the dendrogram / MDS)"
                )
            rdms[model], used[model] = rdm, dist
            for i, ci in enumerate(class_names):
                for j, cj in enumerate(class_names):
                    rdm_rows.append({"model": model, "site": site, "layer": feats.layers[site],
                                     "class_i": ci, "class_j": cj, "distance": float(rdm[i, j]),
                                     "distance_metric": dist})

        models = list(rdms)
        mats = {m: np.eye(len(models)) for m in p["comparison"]}
        rows = []
        for a_i, a in enumerate(models):
            for b_i, b in enumerate(models):
                for method in p["comparison"]:
                    r = compare_rdms(rdms[a], rdms[b], method)
                    mats[method][a_i, b_i] = r
                    fa, sa = data[a][0], data[a][1]
                    fb, sb = data[b][0], data[b][1]
                    rows.append({
                        "analysis": self.name, "model": a, "model_b": b, "dataset": self.dataset,
                        "layer": fa.layers[sa], "site": sa, "layer_b": fb.layers[sb],
                        "site_b": sb, "metric": method, "value": r,
                        "distance": used[a], "distance_b": used[b],
                        "n_classes": len(classes), "seed": self.seed,
                    })
        table = pd.DataFrame(rows)
        main = p["comparison"][0]
        dist_note, dist_title = distance_summary(used, p["comparison"])
        notes.insert(0, dist_note)
        figures = {
            "rdm_correlation": plots.plot_matrix_heatmap(
                mats[main], models, title=f"RDM {main} correlation ({self.dataset})\n{dist_title}"
            ),
            "rdms": plots.plot_rdms(rdms, class_names, distances=used,
                                    title=f"class RDMs ({self.dataset}), {dist_title}"),
        }
        if len(models) >= 2:
            figures["dendrogram"] = plots.plot_dendrogram(
                mats[main], models,
                title=f"Average-linkage clustering of RDMs ({main})\n{dist_title}")
        if len(models) >= 3:
            figures["mds"] = plots.plot_mds(
                mats[main], models, seed=self.seed,
                title=f"MDS of models (1 - RDM {main} correlation)\n{dist_title}")
        else:
            notes.append("rsa: MDS of models needs >= 3 models; figure skipped")
        return Result(
            analysis=self.name, catalogue=self.catalogue, table=table, figures=figures,
            params=dict(p), notes=notes,
            extra_tables={"rdm": pd.DataFrame(rdm_rows)},
        )
