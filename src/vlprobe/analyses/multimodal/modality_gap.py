"""M6 ``modality_gap``: the modality gap of a dual encoder (Liang et al., NeurIPS 2022).

On L2-normalised embeddings (``vision.proj`` / ``text.proj``) of one split:

- ``gap_distance`` = ``||mean(images) - mean(texts)||`` (Liang's Delta_gap norm), with the
  norms of both centroids (``image_centroid_norm`` / ``text_centroid_norm``: 1 = every
  embedding identical, the "cone effect"; ~0 = spread over the sphere).
- ``modality_separability``: held-out accuracy of a logistic regression (sklearn lbfgs,
  C = 1) telling image from text embeddings; fit and held-out sets are seeded random splits
  (``probe_fraction`` held out) balanced to equal counts per modality, so chance is 0.5.
- Closing the gap (Liang's procedure): every image embedding moves by ``-lambda * Delta/2``
  and every text embedding by ``+lambda * Delta/2``, both renormalised; ``lambda = 1``
  brings the centroids together before renormalising (Liang's shift delta =
  ``lambda * ||Delta||`` along the unit gap direction). For each ``lambdas`` value the gap
  distance after the shift and the task score are recomputed: Recall@1 both ways on a
  paired split, zero-shot top-1 (prompt ensembles of the shifted prompts) on a labelled
  image split. The table gives the score as trained (lambda 0), with the gap closed
  (lambda 1) and the change; the ``shift_sweep`` extra table and figure give every lambda.
- A 2-D view of both clouds: PCA fitted on the union (at most ``max_points`` per modality,
  seeded); UMAP is not used (not a dependency).

``mode``: ``"pairs"`` (a split with captions: every caption and every distinct image),
``"class_prompts"`` (a labelled image split: the images and the C x T class prompts, as in
M1; ``class_names`` / ``templates`` as there), ``"auto"`` (pairs when the dataset has texts).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses.base import Analysis, FeatureRequest, FeatureSource, Result
from vlprobe.analyses.multimodal._common import (
    embedding_requests,
    only_site,
    paired_embeddings,
    paired_requests,
    require_towers,
    unit_rows,
)
from vlprobe.analyses.multimodal.zeroshot_classifier import (
    class_ranks,
    ensemble_classifier,
)
from vlprobe.data.prompts.params import resolve_class_names, resolve_template_param
from vlprobe.errors import AnalysisError, ConfigError
from vlprobe.metrics.retrieval import best_positive_ranks, image_text_positives


def gap_vector(images: np.ndarray, texts: np.ndarray) -> np.ndarray:
    """``Delta = mean(images) - mean(texts)`` of unit embeddings ``[N, E]`` / ``[M, E]``."""
    return (np.asarray(images, np.float64).mean(0) - np.asarray(texts, np.float64).mean(0))


def shift(images: np.ndarray, texts: np.ndarray, delta: np.ndarray, lam: float
          ) -> tuple[np.ndarray, np.ndarray]:
    """Liang's shift: images ``- lam * delta / 2``, texts ``+ lam * delta / 2``, renormalised."""
    img = np.asarray(images, np.float64) - lam * delta / 2
    txt = np.asarray(texts, np.float64) + lam * delta / 2
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return img.astype(np.float32), txt.astype(np.float32)


def separability(images: np.ndarray, texts: np.ndarray, held_fraction: float, seed: int
                 ) -> dict[str, float]:
    """Held-out accuracy of a logistic regression telling the modalities apart (balanced
    fit and held-out sets: chance 0.5); ``{"accuracy", "n_fit", "n_held"}``."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    parts = []
    for x in (images, texts):
        order = rng.permutation(len(x))
        n_held = max(1, round(held_fraction * len(x)))
        parts.append((x[order[n_held:]], x[order[:n_held]]))
    n_fit = min(len(parts[0][0]), len(parts[1][0]))
    n_held = min(len(parts[0][1]), len(parts[1][1]))
    if n_fit < 1:
        raise AnalysisError("modality_gap: too few embeddings to fit the separability probe")
    x_fit = np.concatenate([parts[0][0][:n_fit], parts[1][0][:n_fit]])
    x_held = np.concatenate([parts[0][1][:n_held], parts[1][1][:n_held]])
    y_fit = np.repeat([0, 1], n_fit)
    y_held = np.repeat([0, 1], n_held)
    clf = LogisticRegression(C=1.0, max_iter=1000).fit(x_fit, y_fit)
    return {"accuracy": float(clf.score(x_held, y_held)), "n_fit": 2 * n_fit,
            "n_held": 2 * n_held}


class ModalityGap(Analysis):
    """The modality gap: centroid distance, separability, closing it, a 2-D view (M6).

    Params:
        split: the split (``"test"``).
        mode: ``"auto"``, ``"pairs"`` or ``"class_prompts"`` (module docstring).
        class_names / templates: the class prompts of ``class_prompts`` mode (as M1; default
            templates ``"imagenet"``).
        lambdas: shift amounts (0 = as trained, 1 = gap closed; both always included).
        probe_fraction: held-out fraction of the separability probe (0.3).
        max_points: points per modality in the 2-D view (1000).
    """

    name: ClassVar[str] = "modality_gap"
    catalogue: ClassVar[tuple[str, ...]] = ("M6",)
    summary: ClassVar[str] = "Modality gap: centroid distance, separability, closing the gap"
    defaults: ClassVar[dict[str, Any]] = {
        "split": "test",
        "mode": "auto",
        "class_names": None,
        "templates": "imagenet",
        "lambdas": [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5],
        "probe_fraction": 0.3,
        "max_points": 1000,
    }

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        super().__init__(models, dataset, params, seed)
        p = self.params
        if p["mode"] not in ("auto", "pairs", "class_prompts"):
            raise ConfigError(f"modality_gap: mode must be 'auto', 'pairs' or 'class_prompts', "
                              f"got {p['mode']!r}")
        self.class_names = resolve_class_names(p["class_names"], "modality_gap: class_names")
        self.templates = resolve_template_param(p["templates"], "modality_gap: templates")
        try:
            lambdas = [float(v) for v in np.atleast_1d(np.asarray(p["lambdas"], dtype=float))]
        except (TypeError, ValueError):
            raise ConfigError(f"modality_gap: lambdas must be numbers, got {p['lambdas']!r}") \
                from None
        if not all(np.isfinite(lambdas)):
            raise ConfigError(f"modality_gap: lambdas must be finite, got {p['lambdas']!r}")
        p["lambdas"] = sorted(set(lambdas) | {0.0, 1.0})
        if not 0.0 < float(p["probe_fraction"]) < 1.0:
            raise ConfigError(f"modality_gap: probe_fraction must be in (0, 1), got "
                              f"{p['probe_fraction']!r}")
        if not isinstance(p["max_points"], int) or p["max_points"] < 2:
            raise ConfigError(f"modality_gap: max_points must be an integer >= 2, got "
                              f"{p['max_points']!r}")

    def _mode(self, source: FeatureSource) -> str:
        if self.params["mode"] != "auto":
            return self.params["mode"]
        return "pairs" if "text" in source.dataset_modalities(self.dataset) else "class_prompts"

    def _requests(self, source: FeatureSource, model: str) -> tuple[FeatureRequest, ...]:
        require_towers(source, self.name, model)
        split = self.params["split"]
        if self._mode(source) == "pairs":
            return paired_requests(source, self.name, model, self.dataset, split)
        if split not in source.splits(self.dataset):
            raise AnalysisError(f"modality_gap: dataset {self.dataset!r} has no split "
                                f"{split!r}; available: {source.splits(self.dataset)}")
        return embedding_requests(source, model, self.dataset, split, self.templates,
                                  self.class_names)

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        return [r for m in self.models for r in self._requests(source, m)]

    # -- the task scores a shift changes --------------------------------------------------
    def _clouds(self, source: FeatureSource, model: str) -> tuple[np.ndarray, np.ndarray, Any]:
        """(unit images, unit texts, scorer(images, texts) -> {metric: value})."""
        if self._mode(source) == "pairs":
            pairs = paired_embeddings(source, self.name, model, self.dataset,
                                      self.params["split"])
            positives = image_text_positives(pairs.image_of_text, len(pairs.images))

            def score_pairs(img: np.ndarray, txt: np.ndarray) -> dict[str, float]:
                sim = img.astype(np.float64) @ txt.T.astype(np.float64)
                return {"image_to_text_recall@1":
                        float((best_positive_ranks(sim, positives) == 1).mean()),
                        "text_to_image_recall@1":
                        float((best_positive_ranks(sim.T, positives.T) == 1).mean())}

            return pairs.images, pairs.texts, score_pairs
        req_img, req_txt = self._requests(source, model)
        f_img, f_txt = source.get(req_img), source.get(req_txt)
        if f_img.labels is None:
            raise AnalysisError(f"modality_gap: dataset {self.dataset!r} split "
                                f"{self.params['split']!r} has neither captions nor labels")
        y = np.asarray(f_img.labels, dtype=np.int64)
        n_cls = len(f_txt.label_names or [])
        where = f"modality_gap: model {model!r} on {self.dataset!r}"
        img = unit_rows(only_site(f_img, req_img), f"{where} images", f_img.ids)
        txt = unit_rows(only_site(f_txt, req_txt), f"{where} prompts", f_txt.ids)

        def score_classes(im: np.ndarray, tx: np.ndarray) -> dict[str, float]:
            clf = ensemble_classifier(tx, n_cls, len(self.templates))
            ranks = class_ranks(im, clf, y, probabilities=False)["rank"]
            return {"zero_shot_top1_accuracy": float((ranks == 1).mean())}

        return img, txt, score_classes

    def run(self, source: FeatureSource) -> Result:
        import pandas as pd
        from sklearn.decomposition import PCA

        from vlprobe.analyses.multimodal.plots import plot_gap_shift, plot_gap_view

        p = self.params
        mode = self._mode(source)
        rows: list[dict[str, Any]] = []
        sweep: list[dict[str, Any]] = []
        views: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for model in self.models:
            require_towers(source, self.name, model)
            img, txt, score = self._clouds(source, model)
            delta = gap_vector(img, txt)
            base = {"analysis": self.name, "model": model, "dataset": self.dataset,
                    "layer": None, "site": source.embedding_site(model, "image"),
                    "text_site": source.embedding_site(model, "text"), "mode": mode,
                    "n_images": len(img), "n_texts": len(txt), "seed": self.seed}
            stats = {"gap_distance": float(np.linalg.norm(delta)),
                     "image_centroid_norm": float(np.linalg.norm(img.mean(0, dtype=np.float64))),
                     "text_centroid_norm": float(np.linalg.norm(txt.mean(0, dtype=np.float64)))}
            rows += [{**base, "metric": m, "value": v} for m, v in stats.items()]
            sep = separability(img, txt, float(p["probe_fraction"]), self.seed)
            rows.append({**base, "metric": "modality_separability", "value": sep["accuracy"],
                         "chance": 0.5, "n_fit": sep["n_fit"], "n_held": sep["n_held"]})
            by_lambda = {}
            for lam in p["lambdas"]:
                im, tx = shift(img, txt, delta, lam)
                scores = score(im, tx)
                by_lambda[lam] = scores
                sweep.append({"model": model, "lambda": lam,
                              "gap_distance": float(np.linalg.norm(gap_vector(im, tx))),
                              **scores})
            for metric in by_lambda[0.0]:
                before, after = by_lambda[0.0][metric], by_lambda[1.0][metric]
                rows.append({**base, "metric": metric, "value": before, "lambda": 0.0})
                rows.append({**base, "metric": f"{metric}_gap_closed", "value": after,
                             "lambda": 1.0})
                rows.append({**base, "metric": f"{metric}_change_gap_closed",
                             "value": after - before, "lambda": 1.0})
            closed = next(s for s in sweep if s["model"] == model and s["lambda"] == 1.0)
            rows.append({**base, "metric": "gap_distance_gap_closed",
                         "value": closed["gap_distance"], "lambda": 1.0})
            views[model] = self._view(img, txt, PCA)
        table = pd.DataFrame(rows)
        sweep_table = pd.DataFrame(sweep)
        metric = next(c for c in sweep_table.columns
                      if c not in ("model", "lambda", "gap_distance"))
        figures = {
            "gap_view": plot_gap_view(views, title=f"Image and text embeddings, PCA "
                                                   f"({self.dataset})"),
            "gap_shift": plot_gap_shift(sweep_table, metric, title=f"Closing the modality gap "
                                                                   f"({self.dataset})"),
        }
        notes = [
            "modality_gap: gap_distance = ||mean(image) - mean(text)|| of L2-normalised "
            "embeddings; the shift moves images by -lambda*Delta/2 and texts by +lambda*Delta/2 "
            "and renormalises (Liang et al. 2022; lambda 1 = gap closed)",
            f"modality_gap: mode {mode!r}"
            + (f" with {len(self.templates)} template(s) per class" if mode != "pairs" else ""),
        ]
        return Result(analysis=self.name, catalogue=self.catalogue, table=table, figures=figures,
                      params={**p, "templates": list(self.templates)}, notes=notes,
                      extra_tables={"shift_sweep": sweep_table})

    def _view(self, img: np.ndarray, txt: np.ndarray, pca_class: Any
              ) -> tuple[np.ndarray, np.ndarray]:
        """2-D PCA coordinates of (at most ``max_points`` of) each cloud, fitted on both."""
        rng = np.random.default_rng(self.seed)
        m = int(self.params["max_points"])
        a = img[np.sort(rng.permutation(len(img))[:m])]
        b = txt[np.sort(rng.permutation(len(txt))[:m])]
        both = np.concatenate([a, b]).astype(np.float64)
        n_comp = min(2, both.shape[0], both.shape[1])
        pts = pca_class(n_components=n_comp, svd_solver="full").fit_transform(both)
        if n_comp < 2:
            pts = np.pad(pts, ((0, 0), (0, 2 - n_comp)))
        return pts[:len(a)], pts[len(a):]
