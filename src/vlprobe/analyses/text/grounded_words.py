"""T4 ``grounded_word_embeddings``: skip-gram with visual-class words frozen to vision features.

Seed 004 §4.2 "Performance on linguistic tasks": a skip-gram word embedding is trained while
the vectors of words naming visual classes are set to (PCA-reduced) class-mean features of a
vision model and *frozen*; it is compared with an unconstrained skip-gram (the baseline, same
corpus, vocabulary, settings and seed) on word analogies (semantic vs syntactic sections of
the Google set) and word-pair similarity (WordSim353, SimLex-999, MEN).

Method, step by step, with the choices made:

1. **Class features.** For each model that can read the dataset's images, the features of
   the items of ``split`` (default ``"train"``) at ``layer`` (``"embedding"``: the model's
   output embedding site, default; ``"last"``: last layer; or a layer index).
2. **Class -> word.** Class names are lowercased, ``_`` -> space, and split on commas into
   synonyms (ImageNet style ``"great white shark, white shark"``). For each synonym in order
   the candidate is the synonym itself if it is one word, else (``multiword="last"``,
   default) its last word (the head noun of an English compound: "great white shark" ->
   "shark", an approximation of the thesis' one-word WordNet hypernym); with
   ``multiword="skip"`` multi-word synonyms are not used. The first candidate that occurs in
   the corpus is the class word. Classes with no candidate in the corpus are skipped and
   counted in the notes. Classes sharing a word form one hyperclass (thesis: "shark" =
   great white + tiger shark) whose vector is the mean over all its images.
3. **PCA.** Fitted (centred) on the features of *all* items of the split, as the thesis did on
   all ImageNet validation images; the hyperclass means are projected. The dimension is
   ``d = min(pca_dim, vector_size or pca_dim, n_items - 1, feature_dim)``; both skip-grams
   are trained with ``vector_size = d`` (a note says when ``d`` is below the request). Fitting
   on items rather than on class means is what allows more than ``n_classes - 1`` components.
4. **Scale.** The projected vectors are multiplied by one global factor (relative norms kept),
   ``scale``: ``"baseline"`` (default) gives them the mean norm of the same words' vectors
   in the trained baseline of the same seed (the norm distribution the words would have had
   if learned normally, so the frozen words are neither negligible nor dominant inputs);
   ``"init"`` the expected norm of gensim's initial vectors (uniform in ``[-1/d, 1/d)``:
   ``1/sqrt(3 d)``; tiny next to trained vectors); ``"none"`` keeps the PCA scale.
5. **Training.** gensim ``Word2Vec(sg=1, hs=0, negative, window, min_count, alpha, sample,
   epochs, seed, workers=1)``; the class words are kept in the vocabulary whatever their
   count (thesis: vocabulary extended by the visual words) in *both* variants; in the
   grounded one their input vectors are set and frozen with ``wv.vectors_lockf = 0`` (see
   :mod:`.text_eval.skipgram`). The thesis trained 5 epochs, window 5, lr 1e-3 on a
   Wikipedia dump; the offline default here is gensim's bundled Wikipedia excerpt
   (``corpus="enwiki"``, 466,907 tokens) with gensim's default ``alpha=0.025`` (the thesis'
   1e-3 was set for a full Wikipedia dump; pass ``alpha: 0.001`` to match it). Users pass
   ``corpus=<path>``: one sentence per line, whitespace tokens, lowercased
   (:mod:`.text_eval.corpus`).
6. **Runs.** ``n_runs`` repeats with seeds ``seed, seed+1, ...`` (word2vec on a small corpus
   is noisy); table values are means over runs, ``se`` = std (ddof 1) / sqrt(n_runs) (NaN
   with one run). The baseline of a seed is trained once and shared by all models.
7. **Evaluation** (lowercased vocabulary): analogies with 3CosAdd over the whole vocabulary
   (or the ``restrict_vocab`` most frequent words), accuracy over the covered questions and
   coverage (:mod:`.text_eval.analogy`); word pairs: cosine vs human scores, Pearson
   and Spearman over the covered pairs, with coverage (:mod:`.text_eval.pairs`).
   Pair sets come from the reference kit (``VLPROBE_REFERENCE``) when present, else gensim's
   bundled WordSim353 / SimLex-999 (MEN needs the kit; a note says when it was skipped).

Table (one row per number): ``analysis, model, dataset, layer, site, variant
(grounded/baseline), metric (analogy_semantic, analogy_syntactic, analogy_all,
<set>_pearson, <set>_spearman), value, se, coverage, n_covered, n_items, n_runs, dim,
n_visual_words, seed``. Baseline rows are repeated for each model (the same trained
baselines wherever models share the dimension ``d`` and the visual words).
One more row per model, ``variant="visual", metric="prototype_accuracy"`` (with ``chance``):
the thesis' legitimacy check, nearest-prototype (cosine) accuracy of the split's items
against the PCA'd hyperclass vectors (in-sample, as the thesis did on ImageNet val).
Extra tables: ``runs`` (per-run values) and ``visual_words`` (class -> word).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses._common import (
    check_finite,
    check_labels,
    check_layer_spec,
    resolve_modality,
    select_layer_sites,
)
from vlprobe.analyses.base import Analysis, FeatureRequest, FeatureSource, LayerFeatures, Result
from vlprobe.errors import AnalysisError, ConfigError

SCALES = ("baseline", "init", "none")
MULTIWORD = ("last", "skip")
PAIR_SETS = ("wordsim353", "simlex999", "men", "simverb3500", "rg65", "mc30")


# --------------------------------------------------------------------------------------------
# class names -> words, class vectors
# --------------------------------------------------------------------------------------------


def class_word(name: str, vocab: Any, multiword: str = "last") -> tuple[str | None, str]:
    """The word standing for class ``name`` and how it was found.

    Returns ``(word, how)`` with ``how`` in ``"word"`` (a one-word synonym), ``"last_word"``
    (last word of a multi-word synonym), or ``(None, "absent")`` / ``(None, "multiword")``
    (no usable candidate in ``vocab``; ``"multiword"`` = only multi-word synonyms with
    ``multiword="skip"``). Rules in the module docstring (step 2).
    """
    synonyms = [s.strip() for s in str(name).lower().replace("_", " ").split(",") if s.strip()]
    only_multi = True
    for syn in synonyms:
        tokens = syn.split()
        if len(tokens) == 1:
            only_multi = False
            if tokens[0] in vocab:
                return tokens[0], "word"
        elif multiword == "last":
            only_multi = False
            if tokens[-1] in vocab:
                return tokens[-1], "last_word"
    return None, ("multiword" if only_multi and synonyms else "absent")


def pca_project(x: np.ndarray, means: np.ndarray, dim: int) -> tuple[np.ndarray, float]:
    """Project ``means`` on the top ``dim`` principal axes of ``x`` (centred with x's mean).

    Returns the projections ``[K, dim]`` and the fraction of x's variance kept.
    """
    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(0)
    _, s, vt = np.linalg.svd(x - mu, full_matrices=False)
    var = s**2
    kept = float(var[:dim].sum() / var.sum()) if var.sum() > 0 else float("nan")
    return (np.asarray(means, dtype=np.float64) - mu) @ vt[:dim].T, kept


def prototype_accuracy(x_proj: np.ndarray, groups: np.ndarray, protos: np.ndarray) -> float:
    """Nearest-prototype (cosine) accuracy of items ``x_proj`` ``[N, d]`` whose true prototype
    index is ``groups`` ``[N]`` among ``protos`` ``[K, d]`` (thesis' check that the averaged,
    PCA'd class vectors remain useful visual representations; in-sample)."""
    xn = x_proj / np.maximum(np.linalg.norm(x_proj, axis=1, keepdims=True), 1e-12)
    pn = protos / np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
    return float(((xn @ pn.T).argmax(1) == groups).mean())


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (std ddof=1 / sqrt(n); NaN for n < 2) ignoring NaNs."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), se


# --------------------------------------------------------------------------------------------
# analysis
# --------------------------------------------------------------------------------------------


class GroundedWords(Analysis):
    """Visually-grounded skip-gram vs an unconstrained one on word analogy / similarity (T4).

    Params (details in the module docstring):
        layer: ``"embedding"`` (default), ``"last"`` or a layer index.
        split: split whose items give the class features (default ``"train"``).
        pooling: pooling of the requested features (None = the adapter's default).
        corpus: ``"enwiki"`` (default), ``"lee"`` or a path (one sentence per line).
        pca_dim: PCA dimension (300); vector_size: None (= the PCA dimension) or an int
            (caps the dimension).
        window (5), epochs (5), min_count (5), negative (5), alpha (0.025), sample (1e-3):
            gensim skip-gram settings.
        seed: None (= the run seed) or an int; n_runs: repeats with seeds seed, seed+1, ... (3).
        scale: ``"baseline"`` (default), ``"init"`` or ``"none"``.
        multiword: ``"last"`` (default) or ``"skip"``.
        pair_sets: word-pair sets (default wordsim353, simlex999, men; also simverb3500,
            rg65, mc30 from the reference kit).
        restrict_vocab: analogy candidates = this many most frequent words (None = all).
    """

    name: ClassVar[str] = "grounded_word_embeddings"
    catalogue: ClassVar[tuple[str, ...]] = ("T4",)
    summary: ClassVar[str] = ("Skip-gram with class words frozen to PCA'd visual class means vs "
                              "baseline: analogies, word-pair similarity")
    defaults: ClassVar[dict[str, Any]] = {
        "layer": "embedding",
        "split": "train",
        "pooling": None,
        "corpus": "enwiki",
        "pca_dim": 300,
        "vector_size": None,
        "window": 5,
        "epochs": 5,
        "min_count": 5,
        "negative": 5,
        "alpha": 0.025,
        "sample": 1e-3,
        "seed": None,
        "n_runs": 3,
        "scale": "baseline",
        "multiword": "last",
        "pair_sets": ["wordsim353", "simlex999", "men"],
        "restrict_vocab": None,
    }

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        super().__init__(models, dataset, params, seed)
        p = self.params
        if p["scale"] not in SCALES:
            raise ConfigError(f"{self.name}: scale must be one of {SCALES}, got {p['scale']!r}")
        if p["multiword"] not in MULTIWORD:
            raise ConfigError(f"{self.name}: multiword must be one of {MULTIWORD}, "
                              f"got {p['multiword']!r}")
        check_layer_spec(self.name, "layer", p["layer"], ("embedding", "last"), many=False)
        sets = [p["pair_sets"]] if isinstance(p["pair_sets"], str) else list(p["pair_sets"])
        bad = [s for s in sets if s not in PAIR_SETS]
        if bad:
            raise ConfigError(f"{self.name}: unknown pair_sets {bad}; known: {PAIR_SETS}")
        p["pair_sets"] = sets
        for key in ("pca_dim", "window", "epochs", "min_count", "negative", "n_runs"):
            if not isinstance(p[key], int | np.integer) or p[key] < 1:
                raise ConfigError(f"{self.name}: {key} must be a positive int, got {p[key]!r}")
        if p["vector_size"] is not None and (
            not isinstance(p["vector_size"], int | np.integer) or p["vector_size"] < 1
        ):
            raise ConfigError(f"{self.name}: vector_size must be None or a positive int, "
                              f"got {p['vector_size']!r}")

    # ---- planning ----------------------------------------------------------------------

    def _plan(self, source: FeatureSource) -> tuple[dict[str, FeatureRequest], list[str]]:
        p = self.params
        if p["split"] not in source.splits(self.dataset):
            raise AnalysisError(
                f"{self.name}: dataset {self.dataset!r} has no split {p['split']!r}; "
                f"available: {source.splits(self.dataset)}"
            )
        plan, notes = {}, []
        for model in self.models:
            if resolve_modality(source, model, self.dataset, "image") is None:
                notes.append(f"{self.name}: model {model!r} has no image tower able to read "
                             f"dataset {self.dataset!r}; skipped")
                continue
            plan[model] = FeatureRequest(model, self.dataset, p["split"], sites=None,
                                         pooling=p["pooling"], modality="image")
        if not plan:
            raise AnalysisError(f"{self.name}: none of the models {self.models} can read the "
                                f"images of dataset {self.dataset!r}")
        return plan, notes

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        return list(self._plan(source)[0].values())

    def _site(self, feats: LayerFeatures, model: str) -> str:
        return select_layer_sites(feats, self.params["layer"], model, analysis=self.name)[0]

    # ---- evaluation sets -----------------------------------------------------------------

    def _load_eval(self, notes: list[str]):
        from vlprobe.analyses.text.text_eval.analogy import read_analogies
        from vlprobe.analyses.text.text_eval.data import pair_file, questions_words_path
        from vlprobe.analyses.text.text_eval.pairs import SCORE_COLUMN, read_word_pairs
        from vlprobe.settings import reference_dir

        sections = read_analogies(questions_words_path())
        ref = reference_dir(required=False)
        pair_sets = {}
        for name in self.params["pair_sets"]:
            found = pair_file(name, ref)
            if found is None:
                notes.append(f"{self.name}: word-pair set {name!r} needs the reference kit "
                             "(VLPROBE_REFERENCE); skipped")
                continue
            path, origin = found
            col = SCORE_COLUMN.get(name, 2) if origin == "reference" else 2
            pair_sets[name] = read_word_pairs(path, name, score_col=col)
            notes.append(f"{self.name}: {name}: {len(pair_sets[name])} pairs from {origin} "
                         f"({path.name})")
        return sections, pair_sets

    @staticmethod
    def _evaluate(model: Any, sections, pair_sets, restrict_vocab) -> dict[str, tuple]:
        """metric -> (value, coverage, n_covered, n_items)."""
        from vlprobe.analyses.text.text_eval.analogy import evaluate_analogies
        from vlprobe.analyses.text.text_eval.pairs import score_pairs

        wv = model.wv
        out = {}
        scores = evaluate_analogies(list(wv.index_to_key), wv.vectors, sections,
                                    restrict_vocab=restrict_vocab)
        for kind in ("semantic", "syntactic", "all"):
            s = scores[kind]
            out[f"analogy_{kind}"] = (s.accuracy, s.coverage, s.covered, s.n)
        vocab = wv.key_to_index
        lookup = {w: wv.vectors[i] for w, i in vocab.items()}
        for name, pairs in pair_sets.items():
            ps = score_pairs(lookup, pairs)
            out[f"{name}_pearson"] = (ps.pearson, ps.coverage, ps.n_covered, ps.n_pairs)
            out[f"{name}_spearman"] = (ps.spearman, ps.coverage, ps.n_covered, ps.n_pairs)
        return out

    # ---- run -------------------------------------------------------------------------------

    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        from vlprobe.analyses.text.plots import plot_grounded_bars
        from vlprobe.analyses.text.text_eval.corpus import load_corpus
        from vlprobe.analyses.text.text_eval.skipgram import train_skipgram

        p = self.params
        plan, notes = self._plan(source)
        base_seed = int(self.seed if p["seed"] is None else p["seed"])
        seeds = [base_seed + r for r in range(int(p["n_runs"]))]
        corpus = load_corpus(p["corpus"])
        notes.append(f"{self.name}: corpus = {corpus.description}")
        counts = Counter(w for s in corpus.sentences for w in s)
        sections, pair_sets = self._load_eval(notes)
        w2v = {k: p[k] for k in ("window", "epochs", "min_count", "negative", "alpha", "sample")}

        baselines: dict[tuple, Any] = {}
        rows, run_rows, word_rows = [], [], []
        for model, req in plan.items():
            feats = source.get(req)
            site = self._site(feats, model)
            x = np.asarray(feats.features[site])
            check_finite(x, model, site)
            labels = check_labels(feats, model, f"split {p['split']!r}")
            if not feats.label_names:
                raise AnalysisError(
                    f"{self.name}: dataset {self.dataset!r} has no class names (label_names); "
                    "T4 maps classes to words by name, so it needs them"
                )
            # class -> word
            groups: dict[str, list[int]] = {}
            how_counts: Counter = Counter()
            skipped = []
            for c in np.unique(labels).tolist():
                name = feats.label_names[c] if c < len(feats.label_names) else str(c)
                word, how = class_word(name, counts, p["multiword"])
                how_counts[how] += 1
                word_rows.append({"model": model, "class_id": c, "class_name": name,
                                  "word": word, "how": how})
                if word is None:
                    skipped.append(name)
                else:
                    groups.setdefault(word, []).append(c)
            if skipped:
                notes.append(
                    f"{self.name}: model {model!r}: {len(skipped)} class(es) with no word in the "
                    f"corpus vocabulary were skipped, e.g. {skipped[:5]}"
                )
            if not groups:
                raise AnalysisError(
                    f"{self.name}: none of the {len(np.unique(labels))} class names of dataset "
                    f"{self.dataset!r} (e.g. {[r['class_name'] for r in word_rows[-3:]]}) "
                    f"occurs in the corpus {corpus.source!r}"
                )
            merged = {w: cs for w, cs in groups.items() if len(cs) > 1}
            notes.append(
                f"{self.name}: model {model!r}: {len(groups)} visual word(s) from "
                f"{sum(len(cs) for cs in groups.values())} class(es) ({how_counts['word']} "
                f"one-word, {how_counts['last_word']} last word of a multi-word name)"
                + (f"; {len(merged)} hyperclass(es) merge several classes, e.g. "
                   f"{dict(list(merged.items())[:3])}" if merged else "")
            )
            words = list(groups)
            means = np.stack([x[np.isin(labels, cs)].mean(0) for cs in groups.values()])
            requested = min(int(p["pca_dim"]), int(p["vector_size"] or p["pca_dim"]))
            dim = int(min(requested, x.shape[0] - 1, x.shape[1]))
            if dim < 1:
                raise AnalysisError(f"{self.name}: model {model!r}: PCA needs >= 2 items")
            if dim < requested:
                notes.append(f"{self.name}: model {model!r}: PCA dimension {dim} < requested "
                             f"{requested} (n_items - 1 = {x.shape[0] - 1}, feature dim = "
                             f"{x.shape[1]}); both skip-grams use vector_size = {dim}")
            proj, kept = pca_project(x, means, dim)
            in_words = np.isin(labels, [c for cs in groups.values() for c in cs])
            group_of = {c: k for k, cs in enumerate(groups.values()) for c in cs}
            x_proj, _ = pca_project(x, x[in_words], dim)
            proto_acc = prototype_accuracy(
                x_proj, np.asarray([group_of[c] for c in labels[in_words]]), proj)
            per_run: dict[tuple[str, str], list[tuple]] = {}
            for s in seeds:
                key = (dim, s, tuple(sorted(words)))
                if key not in baselines:
                    base = train_skipgram(corpus.sentences, vector_size=dim, seed=s,
                                          keep_words=words, **w2v)
                    baselines[key] = (base, self._evaluate(base, sections, pair_sets,
                                                           p["restrict_vocab"]))
                base, base_eval = baselines[key]
                factor = self._scale_factor(proj, base, words, dim)
                frozen = {w: (proj[i] * factor).astype(np.float32) for i, w in enumerate(words)}
                grounded = train_skipgram(corpus.sentences, vector_size=dim, seed=s,
                                          frozen=frozen, keep_words=words, **w2v)
                moved = sum(not np.array_equal(grounded.wv[w], frozen[w]) for w in words)
                if moved:
                    raise AnalysisError(f"{self.name}: {moved} frozen vector(s) changed during "
                                        "training (gensim lockf not honoured?)")
                g_eval = self._evaluate(grounded, sections, pair_sets, p["restrict_vocab"])
                for variant, ev in (("grounded", g_eval), ("baseline", base_eval)):
                    for metric, vals in ev.items():
                        per_run.setdefault((variant, metric), []).append(vals)
                        run_rows.append({"model": model, "variant": variant, "metric": metric,
                                         "seed": s, "value": vals[0], "coverage": vals[1]})
            notes.append(f"{self.name}: model {model!r}: site {site!r}, PCA {x.shape[1]} -> "
                         f"{dim} dims ({kept:.1%} of item variance), injected vectors scaled "
                         f"by scale={p['scale']!r}")
            for (variant, metric), vals in per_run.items():
                mean, se = mean_se([v[0] for v in vals])
                rows.append({
                    "analysis": self.name, "model": model, "dataset": self.dataset,
                    "layer": feats.layers[site], "site": site, "variant": variant,
                    "metric": metric, "value": mean, "se": se,
                    "coverage": float(np.mean([v[1] for v in vals])),
                    "n_covered": int(vals[0][2]), "n_items": int(vals[0][3]),
                    "n_runs": len(vals), "dim": dim, "n_visual_words": len(words),
                    "seed": base_seed,
                })
            rows.append({
                "analysis": self.name, "model": model, "dataset": self.dataset,
                "layer": feats.layers[site], "site": site, "variant": "visual",
                "metric": "prototype_accuracy", "value": proto_acc, "se": float("nan"),
                "coverage": float(in_words.mean()), "n_covered": int(in_words.sum()),
                "n_items": len(labels), "n_runs": 1, "dim": dim, "n_visual_words": len(words),
                "seed": base_seed, "chance": 1.0 / len(words),
            })
        table = pd.DataFrame(rows)
        main = [m for m in table["metric"].unique()
                if m.startswith("analogy_sem") or m.startswith("analogy_syn")
                or m.endswith("_spearman")]
        figures = {"grounded_vs_baseline": plot_grounded_bars(
            table, main, title=f"T4 grounded skip-gram ({self.dataset})")}
        return Result(
            analysis=self.name, catalogue=self.catalogue, table=table, figures=figures,
            params=dict(p), notes=notes,
            extra_tables={"runs": pd.DataFrame(run_rows),
                          "visual_words": pd.DataFrame(word_rows)},
        )

    def _scale_factor(self, proj: np.ndarray, base: Any, words: list[str], dim: int) -> float:
        """Global factor applied to the projected class vectors (``scale`` param)."""
        norm = float(np.linalg.norm(proj, axis=1).mean())
        if self.params["scale"] == "none" or norm == 0:
            return 1.0
        if self.params["scale"] == "init":
            return float(1.0 / np.sqrt(3.0 * dim) / norm)
        target = float(np.mean([np.linalg.norm(base.wv[w]) for w in words]))
        return target / norm
