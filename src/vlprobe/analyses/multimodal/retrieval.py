"""M2 ``retrieval``: image-text retrieval with a dual encoder, Recall@K both ways.

Protocol (SCIENCE.md M2 / M8; CLIP_benchmark's rule):

- Items of ``split`` are (image, caption) pairs; captions sharing an ``image_id`` belong to
  one image, which runs through the image tower once (Flickr8k 1k test: 1,000 images x 5,000
  captions). Scores = cosine of the L2-normalised ``vision.proj`` / ``text.proj`` embeddings
  (a logit scale or bias would not change any rank).
- image->text: each image queries all captions; its positives are its own captions (5 for
  Flickr8k). text->image: each caption queries all images; one positive. A query is a hit
  at K when ANY positive is among the K best candidates (:mod:`vlprobe.metrics.retrieval`:
  ties broken by candidate order, deterministic; the brute-force sort gives the same ranks).
- Reported: ``recall@K`` per direction (``ks``, default 1, 5, 10), ``median_rank`` and
  ``mean_rank`` of the best positive, with ``chance`` = the expected recall of random scores
  (hypergeometric: ``1 - C(M - p, K) / C(M, K)`` for p positives among M candidates,
  averaged over queries). Extra table ``ranks``: every query's best-positive rank, its top
  candidate and whether that was a positive, for error analysis.

Captions with the same text that belong to different images are counted in the notes: under
the rule above each is a positive of its own image only, though they cannot be told apart.
A dataset without captions, a model without a text or image tower, or fewer than two images
are clear errors.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses.base import Analysis, FeatureRequest, FeatureSource, Result
from vlprobe.analyses.multimodal._common import (
    PairedEmbeddings,
    paired_embeddings,
    paired_requests,
    require_towers,
)
from vlprobe.errors import ConfigError
from vlprobe.metrics.retrieval import best_positive_ranks, image_text_positives, recall_at_k

DIRECTIONS = ("image_to_text", "text_to_image")


def chance_recall(n_positives: np.ndarray, n_candidates: int, k: int) -> float:
    """Expected Recall@K of random scores: mean over queries of ``1 - C(M-p, K) / C(M, K)``
    (the probability that a random K-subset of M candidates holds one of p positives)."""
    from scipy.special import gammaln

    p = np.asarray(n_positives, dtype=np.float64)
    m = float(n_candidates)
    k = min(int(k), n_candidates)
    # log C(M-p, K) - log C(M, K); zero when M - p < K (a positive is always in the top K)
    ok = m - p >= k
    log_ratio = (gammaln(m - p + 1) - gammaln(m - p - k + 1) - gammaln(m + 1)
                 + gammaln(m - k + 1))
    miss = np.where(ok, np.exp(np.where(ok, log_ratio, 0.0)), 0.0)
    return float(np.mean(1.0 - miss))


def retrieval_scores(pairs: PairedEmbeddings) -> dict[str, dict[str, np.ndarray]]:
    """Per direction: ``ranks`` (best positive, 1-based), ``top1`` (index of the first
    candidate), ``top1_positive`` (bool), ``n_positives`` per query."""
    sim = pairs.images.astype(np.float64) @ pairs.texts.T.astype(np.float64)  # [N_img, N_txt]
    pos = image_text_positives(pairs.image_of_text, len(pairs.images))
    out = {}
    for direction, s, q in (("image_to_text", sim, pos), ("text_to_image", sim.T, pos.T)):
        top1 = s.argmax(1)  # the first maximum: the same tie rule as the ranks
        out[direction] = {"ranks": best_positive_ranks(s, q), "top1": top1,
                          "top1_positive": q[np.arange(len(q)), top1],
                          "n_positives": q.sum(1)}
    return out


class Retrieval(Analysis):
    """Image-text retrieval, Recall@K both ways (M2).

    Params:
        split: the paired split (``"test"``: Flickr8k's official 1k test images).
        ks: the K of Recall@K (``[1, 5, 10]``).
    """

    name: ClassVar[str] = "retrieval"
    catalogue: ClassVar[tuple[str, ...]] = ("M2",)
    summary: ClassVar[str] = "Image-text retrieval: Recall@K both ways, per-query ranks"
    defaults: ClassVar[dict[str, Any]] = {"split": "test", "ks": [1, 5, 10]}

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        super().__init__(models, dataset, params, seed)
        ks = self.params["ks"]
        ks = [ks] if isinstance(ks, int) else ks
        if (not isinstance(ks, list | tuple) or not ks
                or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks)):
            raise ConfigError(f"retrieval: ks must be positive integers, got {ks!r}")
        self.params["ks"] = sorted(set(int(k) for k in ks))

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        out = []
        for model in self.models:
            require_towers(source, self.name, model)
            out += paired_requests(source, self.name, model, self.dataset, self.params["split"])
        return out

    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        from vlprobe.analyses.multimodal.plots import plot_recall_at_k

        p = self.params
        rows: list[dict[str, Any]] = []
        rank_tables = []
        notes: list[str] = []
        for model in self.models:
            require_towers(source, self.name, model)
            pairs = paired_embeddings(source, self.name, model, self.dataset, p["split"])
            scored = retrieval_scores(pairs)
            base = {"analysis": self.name, "model": model, "dataset": self.dataset,
                    "layer": None, "site": pairs.image_site, "text_site": pairs.text_site,
                    "n_images": len(pairs.images), "n_captions": len(pairs.texts),
                    "seed": self.seed}
            for direction, r in scored.items():
                n_cand = len(pairs.texts) if direction == "image_to_text" else len(pairs.images)
                common = {**base, "direction": direction, "n_queries": len(r["ranks"]),
                          "n_candidates": n_cand}
                for k, value in recall_at_k(r["ranks"], p["ks"]).items():
                    rows.append({**common, "metric": f"recall@{k}", "k": k, "value": value,
                                 "chance": chance_recall(r["n_positives"], n_cand, k)})
                rows.append({**common, "metric": "median_rank",
                             "value": float(np.median(r["ranks"]))})
                rows.append({**common, "metric": "mean_rank", "value": float(r["ranks"].mean())})
            rank_tables.append(self._rank_table(model, pairs, scored))
            if model == self.models[0]:
                notes += self._caption_notes(pairs)
        notes.append("retrieval: a query is a hit at K when any of its positives is among the "
                     "K best candidates (CLIP_benchmark); ties are ranked by candidate order")
        table = pd.DataFrame(rows)
        ranks = pd.concat(rank_tables, ignore_index=True)
        figures = {"recall_at_k": plot_recall_at_k(
            table, title=f"Image-text retrieval ({self.dataset}/{p['split']})")}
        return Result(analysis=self.name, catalogue=self.catalogue, table=table, figures=figures,
                      params=dict(p), notes=notes, extra_tables={"ranks": ranks})

    @staticmethod
    def _rank_table(model: str, pairs: PairedEmbeddings, scored: dict[str, Any]) -> Any:
        import pandas as pd

        sides = {  # direction: (query ids, query texts, candidate ids, candidate texts)
            "image_to_text": (pairs.image_ids, pairs.image_ids, pairs.text_ids, pairs.captions),
            "text_to_image": (pairs.text_ids, pairs.captions, pairs.image_ids, pairs.image_ids),
        }
        frames = []
        for direction, (query_ids, queries, cand_ids, cands) in sides.items():
            s = scored[direction]
            frames.append(pd.DataFrame({
                "model": model, "direction": direction, "query_id": query_ids,
                "query": queries, "rank": s["ranks"], "n_positives": s["n_positives"],
                "top1_id": [cand_ids[j] for j in s["top1"]],
                "top1": [cands[j] for j in s["top1"]], "top1_positive": s["top1_positive"]}))
        return pd.concat(frames, ignore_index=True)

    @staticmethod
    def _caption_notes(pairs: PairedEmbeddings) -> list[str]:
        """A note on caption texts shared by different images."""
        owners: dict[str, set[int]] = {}
        for text, image in zip(pairs.captions, pairs.image_of_text.tolist()):
            owners.setdefault(" ".join(text.casefold().split()), set()).add(image)
        shared = {t: o for t, o in owners.items() if len(o) > 1}
        if not shared:
            return []
        n = sum(1 for t in pairs.captions if " ".join(t.casefold().split()) in shared)
        example = next(iter(shared))
        return [f"retrieval: {n} caption(s) have the same text as a caption of another image "
                f"({len(shared)} distinct texts, e.g. {example!r}); each counts as a positive "
                "of its own image only, so image->text ranks may tie with a negative"]
