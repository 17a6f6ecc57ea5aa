"""F5 coreference probers: an attention prober (eq. 3) and a bilinear embedding prober (eq. 4).

Seed 001 §3.3.3, table 3 (and the mismatched baseline of fig. 5). Two tasks on the (region,
noun phrase) links of a dataset with links (loader ``coco_coref``):

- **VCD** (detection): linked vs not. Every link gives one positive and one negative: with
  probability 1/2 (seeded) the phrase with a random region of the same size outside the
  linked one, else the region with a random other noun phrase of the caption (the random
  region when the caption has none). Balanced: chance = 0.5.
- **VCC** (classification): the link type (COCO supercategory) of each positive link; types
  with fewer than ``min_links`` links are dropped. Chance: the majority-type rate.

Inputs (:mod:`vlprobe.analyses.fusion.coref_links` maps links to tokens):

- **attention prober** (eq. 3, ``p(c|i,j) ∝ Σ_k w_k α_ij^k + μ_k α_ji^k``): a multinomial
  logistic regression on the ``2 x n_heads`` values ``v2t`` and ``t2v`` of every head of every
  text<->image attention site;
- **embedding prober** (eq. 4, ``w^T (W_w e_i ⊙ W_μ e_j)``), per layer: the region embedding
  (mean over the region's tokens) and the phrase embedding (mean over its tokens, as the seed
  does). Eq. 4 with square ``W_w, W_μ`` is a bilinear form ``e_i^T M_c e_j`` per class; it is
  fit here as a logistic regression on the outer product ``vec([u; 1] [v; 1]^T)`` of the two
  embeddings reduced to ``bilinear_dim`` principal components each (PCA fit on the training
  fold; the constant keeps the terms linear in one embedding, as eq. 4 on uncentred
  embeddings has them), i.e. an unconstrained ``M_c`` in that subspace, with scikit-learn's
  solver instead of a new training loop.

Every prober: standardised features, ``LogisticRegressionCV`` (``Cs``, 3 inner folds) inside
``n_folds`` outer folds grouped by image (no image in both train and test); mean accuracy and
its standard error over the outer folds.

**Mismatched baseline** (fig. 5): the same links, labels and token positions, but every
caption is shown with the image of another item (a seeded derangement that prefers an image
without the link's categories). A prober that does as well there reads the text (the phrase
names its category: seed 001's "text embedding input can leak the link information"), not
the image-text alignment.

Why F5 runs the model itself (``source.adapter(model)``, ``batch_size`` pairs per forward,
at most ``max_items`` captions): the activation store keeps pooled vectors per item, and the
embedding prober needs the embeddings of individual region and phrase tokens; the mismatched
pairs are stimuli of F5's own making. Attention and hidden states come from the same forward.

Table rows: ``metric`` ``accuracy`` (with ``se``, ``n``) per ``task`` (VCD / VCC), ``input``
(``attention`` / ``embedding``), ``condition`` (``matched`` / ``mismatched``), ``layer``
(embedding layers; None for attention); ``chance`` rows. Extra table ``head_weights``: the
attention prober's mean |standardised coefficient| per head and direction (fit on all links,
matched), ranked — the heads the prober leans on.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd

from vlprobe.analyses.base import Analysis, FeatureRequest, Result
from vlprobe.analyses.fusion.coref_links import (
    DIRECTIONS,
    check_links,
    coref_sites,
    link_attention,
    link_splits,
    resolve_links,
    site_directions,
    token_counts,
)
from vlprobe.errors import ConfigError
from vlprobe.modality import TAG_IMAGE, TAG_TEXT, tags_for_site

TASKS = ("VCD", "VCC")


def embedding_layer_pairs(adapter: Any) -> list[tuple[int, str, str]]:
    """``(layer, text site, vision site)`` per embedding layer: a single-stream model's
    ``layer_sites("pair")`` hold both; a two-stream model (``stream_layer_sites``) pairs its
    text and vision paths from the top (cross layers with cross layers), layer = the text
    path's index."""
    if hasattr(adapter, "stream_layer_sites"):
        text, vision = adapter.stream_layer_sites("text"), adapter.stream_layer_sites("vision")
        n = min(len(text), len(vision))
        pairs = list(zip(text[-n:], vision[-n:], strict=True))
        return [(adapter.layer_index(t), t, v) for t, v in pairs]
    return [(adapter.layer_index(s), s, s) for s in adapter.layer_sites("pair")]


def mismatched_images(image_ids: list[str], categories: list[set[str]], seed: int) -> list[int]:
    """For each item the index of an item with another image (seeded), preferring images
    whose links share no category with the item's."""
    rng = np.random.default_rng(seed)
    n = len(image_ids)
    out = []
    for i in range(n):
        order = rng.permutation(n)
        other = [j for j in order if image_ids[j] != image_ids[i]]
        if not other:
            raise ConfigError("the mismatched baseline needs items of at least two images")
        clean = [j for j in other if not (categories[j] & categories[i])]
        out.append(int((clean or other)[0]))
    return out


class CoreferenceProber(Analysis):
    name: ClassVar[str] = "coreference_prober"
    catalogue: ClassVar[tuple[str, ...]] = ("F5",)
    summary: ClassVar[str] = (
        "F5: attention prober (all heads, both directions) and bilinear embedding prober for "
        "visual coreference detection / classification, with the mismatched-caption baseline"
    )
    version: ClassVar[str] = "2"  # 2: affine bilinear features (the constant term)
    defaults: ClassVar[dict[str, Any]] = {
        "splits": None,  # dataset splits to pool (None = all)
        "max_items": 400,  # captions (seeded subset)
        "batch_size": 16,
        "n_folds": 5,
        "Cs": [0.01, 0.1, 1.0, 10.0],
        "bilinear_dim": 16,
        "min_links": 10,
        "mismatched": True,
        "max_iter": 2000,
    }

    def requests(self, source: Any) -> list[FeatureRequest]:
        return []  # F5 runs the model itself (see the module docstring)

    def run(self, source: Any) -> Result:
        from vlprobe.analyses.fusion import coref_plots

        rows, weights, notes = [], [], []
        for model in self.models:
            m_rows, m_weights, m_notes = self._run_model(source, model)
            rows += m_rows
            weights += m_weights
            notes += m_notes
        table = pd.DataFrame(rows)
        figures = {"probers": coref_plots.prober_curves(table)}
        return Result(self.name, self.catalogue, table, figures, dict(self.params), notes,
                      {"head_weights": pd.DataFrame(weights)})

    # -- data ---------------------------------------------------------------------------
    def _items(self, source: Any) -> list[tuple[Any, list[int]]]:
        """(stimuli, item indices) per split: captions with links, a seeded subset of at
        most ``max_items`` over all splits."""
        chosen = []
        for split in link_splits(self, source):
            stim = source.stimuli(FeatureRequest(self.models[0], self.dataset, split))
            check_links(stim, f"{self.name} ({split})")
            chosen += [(stim, i) for i, ls in enumerate(stim.descriptors["links"]) if ls]
        limit = self.params["max_items"]
        if limit is not None and len(chosen) > int(limit):
            keep = np.sort(np.random.default_rng(self.seed).choice(len(chosen), int(limit),
                                                                   replace=False))
            chosen = [chosen[k] for k in keep]
        out: dict[int, tuple[Any, list[int]]] = {}
        for stim, i in chosen:
            out.setdefault(id(stim), (stim, []))[1].append(i)
        return list(out.values())

    def _features(self, adapter: Any, stim: Any, items: list[int], images: list[int],
                  where: str) -> tuple[list, dict, dict, list]:
        """Forward (caption of ``items[k]``, image of ``images[k]``) pairs; returns the links,
        attention features ``{direction: [n_links, heads]}`` (+ ``_rand`` variants), embedding
        features ``{layer: (region [n, D], phrase [n, D], rand region, rand phrase)}`` and
        head descriptors."""
        sites = coref_sites([s for s in adapter.sites() if s.endswith(".attn")])
        layers = embedding_layer_pairs(adapter)
        hidden = list(dict.fromkeys([t for _, t, _ in layers] + [v for _, _, v in layers]))
        bs = int(self.params["batch_size"])
        raws: dict[str, list] = {s: [] for s in sites}
        tags: dict[str, list] = {s: [] for s in sites}
        tok: dict[str, list] = {s: [] for s in hidden}
        for start in range(0, len(items), bs):
            rows = list(range(start, min(start + bs, len(items))))
            pairs = [(stim.payloads("image", [images[r]])[0], stim.texts[items[r]]) for r in rows]
            trace = adapter.forward(adapter.prepare(pairs, "pair"), [*sites, *hidden])
            from vlprobe.extract.attention import batch_values

            for s in sites:
                got = batch_values(trace, s, ["raw", "raw_tags"])
                raws[s] += got["raw"]
                tags[s] += got["raw_tags"]
            for s in hidden:
                h = trace.hidden[s].numpy()
                st, _ = tags_for_site(trace, s)
                st = np.asarray(st)
                for b in range(len(rows)):
                    tok[s].append((h[b][st[b] == TAG_TEXT], h[b][st[b] == TAG_IMAGE]))
        from vlprobe.extract.attention import split_raw_tags

        n_text, n_reg = [], []
        for k in range(len(items)):
            q, kt = split_raw_tags(np.asarray(tags[sites[0]][k]), raws[sites[0]][k])
            n_text.append(max(token_counts(q)[0], token_counts(kt)[0]))
            n_reg.append(max(token_counts(q)[1], token_counts(kt)[1]))
        links, _ = resolve_links(adapter, stim, items, n_text, n_reg, self.seed, where)
        row_of = {i: k for k, i in enumerate(items)}
        att: dict[str, list] = {}
        by_dir: dict[str, list[tuple[str, str, Any, int]]] = {d: [] for d in DIRECTIONS}
        for s in sites:
            for n, link in enumerate(links):
                k = row_of[link.item]
                q, kt = split_raw_tags(np.asarray(tags[s][k]), raws[s][k])
                dirs = site_directions(q, kt)
                if n == 0:
                    for d in dirs:
                        by_dir[d] += [(d, s, adapter_layer(adapter, s), h)
                                      for h in range(raws[s][k].shape[0])]
                for d in dirs:
                    rp = link.rand_phrase if link.rand_phrase is not None else link.phrase
                    rr = link.rand_region if link.rand_phrase is None else link.region
                    for key, ph, rg in ((d, link.phrase, link.region),
                                        (f"{d}_neg", rp, rr),
                                        (f"{d}_rreg", link.phrase, link.rand_region)):
                        att.setdefault(key, [[] for _ in links])[n].append(
                            link_attention(raws[s][k], q, kt, d, ph, rg))
        att_mat = {key: np.stack([np.concatenate(v) for v in vals]) for key, vals in att.items()}
        # the order of the prober's columns: every v2t head (sites in order), then every t2v
        heads = [h for d in DIRECTIONS for h in by_dir[d]]
        emb = {}
        for layer, ts, vs in layers:
            cols = []
            for link in links:
                k = row_of[link.item]
                text, _ = tok[ts][k]
                _, vis = tok[vs][k]
                rp = link.rand_phrase if link.rand_phrase is not None else link.phrase
                cols.append((vis[link.region].mean(0), text[link.phrase].mean(0),
                             vis[link.rand_region].mean(0), text[rp].mean(0)))
            emb[layer] = tuple(np.stack(c) for c in zip(*cols, strict=True))
        return links, att_mat, emb, heads

    # -- one model ----------------------------------------------------------------------
    def _run_model(self, source: Any, model: str) -> tuple[list, list, list]:
        adapter = source.adapter(model)
        parts = self._items(source)
        conditions = ["matched"] + (["mismatched"] if self.params["mismatched"] else [])
        data: dict[str, dict[str, Any]] = {}
        for cond in conditions:
            links_all, att_all, emb_all, heads = [], [], [], None
            for stim, items in parts:
                if cond == "matched":
                    images = list(items)
                else:
                    ids = [str(stim.descriptors["image_id"][i]) for i in items]
                    cats = [{lk["category"] for lk in stim.descriptors["links"][i]}
                            for i in items]
                    images = [items[j] for j in mismatched_images(ids, cats, self.seed)]
                links, att, emb, heads = self._features(
                    adapter, stim, items, images, f"{self.name} ({model}, {stim.split})")
                links_all += links
                att_all.append(att)
                emb_all.append(emb)
            data[cond] = {
                "links": links_all, "heads": heads,
                "att": {k: np.concatenate([a[k] for a in att_all]) for k in att_all[0]},
                "emb": {layer: tuple(np.concatenate([e[layer][j] for e in emb_all])
                                     for j in range(4)) for layer in emb_all[0]},
            }
        return self._probe(model, data)

    def _probe(self, model: str, data: dict) -> tuple[list, list, list]:
        from vlprobe.analyses.fusion.coref_fit import cv_accuracy, head_importance

        links = data["matched"]["links"]
        rng = np.random.default_rng(self.seed)
        neg_region = rng.random(len(links)) < 0.5
        neg_region |= np.asarray([lk.rand_phrase is None for lk in links])
        groups = np.asarray([lk.group for lk in links])
        types = np.asarray([lk.type for lk in links])
        names, counts = np.unique(types, return_counts=True)
        keep_types = set(names[counts >= int(self.params["min_links"])].tolist())
        vcc = np.asarray([t in keep_types for t in types])
        notes = []
        if len(keep_types) < 2:
            notes.append(f"{model}: VCC skipped (fewer than 2 link types with "
                         f">= {self.params['min_links']} links)")
        fit = {k: self.params[k] for k in ("n_folds", "Cs", "max_iter", "bilinear_dim")}
        rows: list[dict[str, Any]] = []

        def add(task, inp, cond, layer, acc, se, n):
            rows.append({"analysis": self.name, "model": model, "dataset": self.dataset,
                         "layer": layer, "site": inp, "metric": "accuracy", "value": acc,
                         "se": se, "n": n, "task": task, "input": inp, "condition": cond})

        for cond, d in data.items():
            att = d["att"]
            pos_a = np.concatenate([att[x] for x in DIRECTIONS if x in att], axis=1)
            neg_a = np.where(neg_region[:, None],
                             np.concatenate([att[f"{x}_rreg"] for x in DIRECTIONS if x in att], 1),
                             np.concatenate([att[f"{x}_neg"] for x in DIRECTIONS if x in att], 1))
            y_vcd = np.r_[np.ones(len(links)), np.zeros(len(links))].astype(int)
            g2 = np.r_[groups, groups]
            acc, se = cv_accuracy(np.r_[pos_a, neg_a], None, y_vcd, g2, self.seed, **fit)
            add("VCD", "attention", cond, None, acc, se, len(y_vcd))
            if len(keep_types) >= 2:
                acc, se = cv_accuracy(pos_a[vcc], None, types[vcc], groups[vcc], self.seed, **fit)
                add("VCC", "attention", cond, None, acc, se, int(vcc.sum()))
            for layer, (reg, phr, rreg, rphr) in d["emb"].items():
                nreg = np.where(neg_region[:, None], rreg, reg)
                nphr = np.where(neg_region[:, None], phr, rphr)
                acc, se = cv_accuracy(np.r_[reg, nreg], np.r_[phr, nphr], y_vcd, g2,
                                      self.seed, **fit)
                add("VCD", "embedding", cond, layer, acc, se, len(y_vcd))
                if len(keep_types) >= 2:
                    acc, se = cv_accuracy(reg[vcc], phr[vcc], types[vcc], groups[vcc],
                                          self.seed, **fit)
                    add("VCC", "embedding", cond, layer, acc, se, int(vcc.sum()))
        for task, y in (("VCD", None), ("VCC", types[vcc])):
            if task == "VCC" and len(keep_types) < 2:
                continue
            chance = 0.5 if y is None else float(np.max(np.unique(y, return_counts=True)[1])
                                                  / len(y))
            rows.append({"analysis": self.name, "model": model, "dataset": self.dataset,
                         "layer": None, "site": "chance", "metric": "chance", "value": chance,
                         "se": 0.0, "n": 2 * len(links) if y is None else len(y), "task": task,
                         "input": "chance", "condition": "matched"})
        # which heads the matched VCD attention prober leans on
        att = data["matched"]["att"]
        pos_a = np.concatenate([att[x] for x in DIRECTIONS if x in att], axis=1)
        neg_a = np.where(neg_region[:, None],
                         np.concatenate([att[f"{x}_rreg"] for x in DIRECTIONS if x in att], 1),
                         np.concatenate([att[f"{x}_neg"] for x in DIRECTIONS if x in att], 1))
        imp = head_importance(np.r_[pos_a, neg_a],
                              np.r_[np.ones(len(links)), np.zeros(len(links))].astype(int),
                              float(max(self.params["Cs"])), int(self.params["max_iter"]))
        heads = data["matched"]["heads"]
        order = np.argsort(-imp, kind="stable")
        weights = [{"model": model, "rank": r + 1, "direction": heads[h][0], "site": heads[h][1],
                    "layer": heads[h][2], "head": heads[h][3], "weight": float(imp[h])}
                   for r, h in enumerate(order)]
        return rows, weights, notes


def adapter_layer(adapter: Any, site: str) -> int | None:
    """Catalogue layer of attention ``site`` (its block's layer index)."""
    from vlprobe.extract.attention import attention_layer_index

    return attention_layer_index(adapter, site)


__all__ = ["CoreferenceProber", "embedding_layer_pairs", "mismatched_images"]
