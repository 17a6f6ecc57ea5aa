"""T2 ``chunking``: phrase-level probing with k-means on chunk-span representations.

Protocol (SCIENCE.md T2; seed 000 §3.4.1 after Jawahar et al., 2019):

1. Items are CoNLL-2000 chunks (loader ``conll2000``, ``per: span``): text = the sentence,
   label = the chunk tag, descriptor ``span_chars``. Every layer of the text tower of each
   model is pooled with ``span`` pooling: ``[h_first; h_last; h_first * h_last;
   h_first - h_last]`` of the first and last SUB-WORD token of the chunk (``4 D`` wide; one
   forward per sentence, see :mod:`vlprobe.extract.extractor`).
2. Same spans for every model: a span that the maximum length of ANY model of the analysis
   cuts, fully or partly (CLIP's 77 tokens cut long sentences), is dropped for ALL models, and
   the number dropped is reported (column ``n_dropped``, notes; ``n_cut``: spans this model
   cuts). Which spans are cut comes from ``LayerFeatures.truncated_items`` (the runner's
   feature source tokenizes the sentences again); a source that does not give it only lets
   fully cut spans (stored as all-zero vectors) be recognised (noted).
3. Seeded sampling of ``n_fit`` (3000) spans to cluster and ``n_eval`` (500) further spans
   for the held-out score, the same spans for every model and layer. With ``holdout:
   sentence`` (default) the two sets come from disjoint sentences (sentences are shuffled, the
   first ones fill the fit set, the next ones the held-out set; the sentence is the id up to
   the last ``:``); ``holdout: span`` samples spans independently. When fewer spans are
   available the two sizes shrink proportionally (noted).
4. ``sklearn.cluster.KMeans(n_clusters=k, n_init, random_state=seed)`` with ``k`` = the number
   of chunk tags (``len(label_names)``; ``k`` overrides) fitted on the fit spans. Headline
   metric ``nmi``: ``normalized_mutual_info_score(tags, clusters)`` (arithmetic mean) of the
   clusters of those same spans, the in-sample clustering NMI of the paper. Second metric
   ``nmi_heldout``: the held-out spans assigned to the nearest centroid, scored the same way
   (does the clustering generalise to unseen sentences?).
5. Layers where some fit spans have a norm over ``OUTLIER_RATIO`` (100) x the median are named
   in a note: k-means spends clusters on such outliers (e.g. the sentence-initial spans of
   causal LMs, whose first token carries a massive "attention sink" activation).

Table: ``model, layer, site, metric (nmi | nmi_heldout), value, n_fit, n_eval, k, n_dropped,
n_cut`` (+ the tidy columns). Figure ``chunking_nmi``: NMI per layer, one bar group per
layer, one bar per model (like the paper's fig. 2).
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses._common import (
    check_finite,
    check_labels,
    readable_models,
    select_layer_sites,
    standardize,
)
from vlprobe.analyses.base import (
    Analysis,
    FeatureRequest,
    FeatureSource,
    LayerFeatures,
    Result,
)
from vlprobe.analyses.text.plots import plot_nmi_bars
from vlprobe.errors import AnalysisError, ConfigError

HOLDOUT = ("sentence", "span")


def sentence_keys(ids: list[str]) -> list[str]:
    """The sentence of each span id (``test/12:3-5`` -> ``test/12``; ids without ``:`` are
    their own sentence)."""
    return [i.rsplit(":", 1)[0] if ":" in i else i for i in ids]


def split_fit_eval(
    groups: list[str], candidates: np.ndarray, n_fit: int, n_eval: int, seed: int,
    holdout: str = "sentence",
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint ``(fit, eval)`` index arrays drawn from ``candidates``.

    ``holdout="sentence"``: whole sentences (``groups``) are shuffled; fit takes the spans of
    the first sentences up to ``n_fit`` spans, eval those of the following sentences up to
    ``n_eval`` (no sentence contributes to both). ``holdout="span"``: a random permutation
    of the spans, first ``n_fit`` then ``n_eval``.
    """
    rng = np.random.default_rng(seed)
    candidates = np.asarray(candidates, dtype=np.int64)
    if holdout == "span":
        perm = candidates[rng.permutation(len(candidates))]
        return np.sort(perm[:n_fit]), np.sort(perm[n_fit : n_fit + n_eval])
    by_group: dict[str, list[int]] = {}
    for i in candidates.tolist():
        by_group.setdefault(groups[i], []).append(i)
    order = list(by_group)
    fit: list[int] = []
    ev: list[int] = []
    for g in (order[j] for j in rng.permutation(len(order))):
        if len(fit) < n_fit:
            fit.extend(by_group[g][: n_fit - len(fit)])
        elif len(ev) < n_eval:
            ev.extend(by_group[g][: n_eval - len(ev)])
        else:
            break
    return np.sort(np.asarray(fit, np.int64)), np.sort(np.asarray(ev, np.int64))


def kmeans_nmi(
    x_fit: np.ndarray, y_fit: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray, k: int,
    seed: int = 0, n_init: int = 10,
) -> dict[str, float]:
    """k-means fitted on ``x_fit`` ([N_fit, D]); NMI with the tags of the clusters of those
    same spans (``nmi``, the headline) and of the held-out ``x_eval`` ([N_eval, D]) assigned
    to the nearest centroid (``nmi_heldout``)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    km = KMeans(n_clusters=int(k), n_init=int(n_init), random_state=int(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on duplicate points
        fit_clusters = km.fit_predict(np.asarray(x_fit, np.float64))
        eval_clusters = km.predict(np.asarray(x_eval, np.float64))
    return {
        "nmi": float(normalized_mutual_info_score(y_fit, fit_clusters)),
        "nmi_heldout": float(normalized_mutual_info_score(y_eval, eval_clusters)),
    }


METRICS = ("nmi", "nmi_heldout")


def cut_spans(feats: LayerFeatures, sites: list[str], model: str) -> tuple[np.ndarray, bool]:
    """``([N] bool, known)``: the spans ``model``'s maximum length cuts.

    Fully cut spans are all-zero vectors (at some site of ``sites``); partly cut ones are only
    known from ``feats.truncated_items`` (``known`` says whether it was given).
    """
    n = len(feats.ids)
    cut = np.zeros(n, dtype=bool)
    for site in sites:
        cut |= ~(np.abs(np.asarray(feats.features[site])).sum(axis=1) > 0)
    if feats.truncated_items is None:
        return cut, False
    flags = np.asarray(feats.truncated_items)
    if flags.shape != (n,) or flags.dtype != bool:
        raise AnalysisError(f"chunking: model {model!r}: truncated_items must be a [{n}] bool "
                            f"array, got {flags.dtype} {flags.shape}")
    return cut | flags, True


def common_spans(
    feats: dict[str, LayerFeatures], sites: dict[str, list[str]]
) -> tuple[np.ndarray, dict[str, int], list[str]]:
    """``(keep [N] bool, cut per model, notes)``: the spans every model sees in full.

    Raises:
        AnalysisError: the models' features are not of the same items (ids differ).
    """
    models = list(feats)
    ref = feats[models[0]]
    keep = np.ones(len(ref.ids), dtype=bool)
    n_cut: dict[str, int] = {}
    notes: list[str] = []
    for model in models:
        f = feats[model]
        if list(f.ids) != list(ref.ids):
            raise AnalysisError(f"chunking: models {models[0]!r} and {model!r} have features of "
                                "different span items (ids differ); they must come from the "
                                "same dataset split")
        cut, known = cut_spans(f, sites[model], model)
        keep &= ~cut
        n_cut[model] = int(cut.sum())
        if n_cut[model]:
            notes.append(f"chunking: model {model!r}: {n_cut[model]} of {len(cut)} span(s) cut "
                         "(fully or partly) by its maximum length")
        if not known and f.n_truncated > n_cut[model]:
            notes.append(f"chunking: model {model!r}: {f.n_truncated} span(s) cut by truncation "
                         f"but only the {n_cut[model]} fully cut ones are recognised (the "
                         "features carry no per-item truncation flags); partly cut spans "
                         "may remain")
    n_dropped = int((~keep).sum())
    if n_dropped:
        notes.append(f"chunking: {n_dropped} of {len(keep)} span(s) dropped for every model "
                     "(cut by the maximum length of at least one model), so that all models "
                     "are scored on the same spans")
    return keep, n_cut, notes


OUTLIER_RATIO = 100.0


def count_norm_outliers(x: np.ndarray, ratio: float = OUTLIER_RATIO) -> int:
    """How many rows of ``x`` ([N, D]) have an L2 norm above ``ratio`` x the median norm."""
    norms = np.linalg.norm(np.asarray(x, dtype=np.float64), axis=1)
    median = float(np.median(norms)) if len(norms) else 0.0
    return int((norms > ratio * median).sum()) if median > 0 else 0


class Chunking(Analysis):
    """k-means on CoNLL-2000 span representations, NMI with chunk tags per layer (T2).

    Params:
        split: split of the chunk dataset (default ``"test"``: CoNLL-2000's test file has
            23,852 chunks of 2,012 sentences, enough for 3,000 + 500; use the loader's
            ``max_sentences`` to bound extraction cost).
        n_fit: spans k-means is fitted on and scored on (headline ``nmi``; 3000).
        n_eval: further spans assigned to the nearest centroid (``nmi_heldout``; 500).
        k: clusters; ``None`` (default) = number of chunk tags (``len(label_names)``).
        holdout: ``"sentence"`` (default: fit / eval spans from disjoint sentences) or
            ``"span"``.
        layers: ``"all"`` (default), ``"last"``, an int or a list of layer indices.
        n_init: k-means restarts (10).
        standardize: z-score features with fit-set statistics before k-means (default False,
            as in Jawahar et al.).
    """

    name: ClassVar[str] = "chunking"
    catalogue: ClassVar[tuple[str, ...]] = ("T2",)
    summary: ClassVar[str] = "Phrase-level probe: k-means on CoNLL-2000 span vectors, NMI"
    defaults: ClassVar[dict[str, Any]] = {
        "split": "test",
        "n_fit": 3000,
        "n_eval": 500,
        "k": None,
        "holdout": "sentence",
        "layers": "all",
        "n_init": 10,
        "standardize": False,
    }

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        super().__init__(models, dataset, params, seed)
        p = self.params
        for key in ("n_fit", "n_eval"):
            if not isinstance(p[key], int | np.integer) or p[key] < 2:
                raise ConfigError(f"chunking: {key} must be an integer >= 2, got {p[key]!r}")
        if p["k"] is not None and (not isinstance(p["k"], int | np.integer) or p["k"] < 2):
            raise ConfigError(f"chunking: k must be an integer >= 2 or null, got {p['k']!r}")
        if p["holdout"] not in HOLDOUT:
            raise ConfigError(f"chunking: holdout must be one of {HOLDOUT}, "
                              f"got {p['holdout']!r}")

    def _plan(self, source: FeatureSource) -> tuple[dict[str, FeatureRequest], list[str]]:
        p = self.params
        mods, notes = readable_models(source, "chunking", self.models, self.dataset,
                                      prefer="text", required_splits=(p["split"],))
        plan = {
            model: FeatureRequest(model, self.dataset, p["split"], sites=None, pooling="span",
                                  modality=modality)
            for model, modality in mods.items()
        }
        return plan, notes

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        return list(self._plan(source)[0].values())

    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        p = self.params
        plan, notes = self._plan(source)
        feats = {model: source.get(req) for model, req in plan.items()}
        labels = {m: check_labels(f, m, f"split {p['split']!r}") for m, f in feats.items()}
        sites = {m: select_layer_sites(f, p["layers"], m, default="all")
                 for m, f in feats.items()}
        keep, n_cut, cut_notes = common_spans(feats, sites)
        notes.extend(cut_notes)
        valid = np.flatnonzero(keep)
        n_fit, n_eval = int(p["n_fit"]), int(p["n_eval"])
        if len(valid) < n_fit + n_eval:
            n_fit = round(len(valid) * n_fit / (n_fit + n_eval))
            n_eval = len(valid) - n_fit
            notes.append(f"chunking: only {len(valid)} spans; using n_fit={n_fit}, "
                         f"n_eval={n_eval}")
        ref = feats[next(iter(feats))]
        fit, ev = split_fit_eval(sentence_keys(ref.ids), valid, n_fit, n_eval, self.seed,
                                 p["holdout"])
        rows: list[dict[str, Any]] = []
        for model, f in feats.items():
            y = labels[model]
            k = int(p["k"]) if p["k"] is not None else (
                len(f.label_names) if f.label_names else len(np.unique(y)))
            if len(fit) < k or len(ev) < 2:
                raise AnalysisError(f"chunking: model {model!r}: {len(fit)} fit / {len(ev)} "
                                    f"held-out spans are too few for k={k} clusters")
            outlier_layers = []
            for site in sites[model]:
                x = np.asarray(f.features[site])
                check_finite(x, model, site)
                x_fit, x_eval = x[fit], x[ev]
                n_out = count_norm_outliers(x_fit)
                if n_out:
                    outlier_layers.append(f"{f.layers[site]} ({n_out})")
                if p["standardize"]:
                    x_fit, x_eval = standardize(x_fit, x_eval, dtype=np.float64)
                m = kmeans_nmi(x_fit, y[fit], x_eval, y[ev], k, self.seed, int(p["n_init"]))
                for metric in METRICS:
                    rows.append({
                        "analysis": self.name, "model": model, "dataset": self.dataset,
                        "layer": f.layers[site], "site": site, "metric": metric,
                        "value": m[metric], "n_fit": len(fit), "n_eval": len(ev), "k": k,
                        "n_dropped": int(len(keep) - len(valid)), "n_cut": n_cut[model],
                        "holdout": p["holdout"], "seed": self.seed,
                    })
            if outlier_layers:
                notes.append(
                    f"chunking: model {model!r}: at layers {', '.join(outlier_layers)} that many "
                    f"fit spans have a norm > {OUTLIER_RATIO:g}x the median; k-means spends "
                    "clusters on them and the NMI there says little about chunk structure "
                    "(causal LMs put a massive 'attention sink' activation on the first token, "
                    "so spans starting a sentence are such outliers)"
                )
        table = pd.DataFrame(rows)
        fig = plot_nmi_bars(table, title=f"Phrase-level chunking ({self.dataset}, "
                                         f"k-means NMI, {len(fit)} spans)")
        return Result(analysis=self.name, catalogue=self.catalogue, table=table,
                      figures={"chunking_nmi": fig}, params=dict(p), notes=notes)
