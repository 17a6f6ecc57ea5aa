"""F4 visual coreference: which attention heads link an image region to its noun phrase.

Seed 001 §3.3.2, table 2. For every (region, noun phrase) link of a dataset with links
(loader ``coco_coref``: silver links from COCO instances + captions,
:mod:`vlprobe.data.silver_links`) and every head of every text<->image attention site:

- ``v2t``: the region's attention to the phrase; ``t2v``: the phrase's attention to the region
  (max over the phrase's tokens; :mod:`vlprobe.analyses.fusion.coref_links` defines both for
  regions of several grid cells);
- ablations: ``v2t_rand`` = the region's attention to a random OTHER noun phrase of the same
  caption (not naming the link's category), ``t2v_rand`` = the phrase's attention to a random
  region of the same size outside the linked one.

Per link type (COCO supercategory, plus ``all``) the mean over links per head; the best head
per type and column (table 2: the max over heads of each column, with its head) and the
random value AT the linked column's best head (a fairer ablation than each column's own max),
with the paired difference over links (mean, its standard error, and the fraction of links
where the linked value is higher: ``<dir>_minus_rand``, ``_minus_rand_se``, ``<dir>_win``).
The best head is chosen on the same links, which favours the linked column slightly.

Raw attention of the coreference sites (``FeatureRequest(..., attention=("raw",))``) comes
from the one extraction pass; size the dataset accordingly (a few hundred captions).

Table: one row per (link type, column, head): ``metric`` = the column (``v2t``, ``t2v``,
``v2t_rand``, ``t2v_rand``), ``site`` = the attention site, ``layer`` = its catalogue layer,
``head`` (0-based), ``link_type``, ``n`` (links). Extra table ``best_heads`` (table 2);
figures: per-head heatmaps of ``v2t`` / ``t2v`` and the table-2 bars.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from vlprobe.analyses.base import Analysis, FeatureRequest, Result
from vlprobe.analyses.fusion.coref_links import (
    DIRECTIONS,
    check_link_data,
    coref_sites,
    link_attention,
    link_splits,
    resolve_links,
    site_directions,
    token_counts,
)
from vlprobe.errors import ConfigError
from vlprobe.extract.attention import attention_output, split_raw_tags

COLUMNS = ("v2t", "t2v", "v2t_rand", "t2v_rand")


def head_label(layer: int | None, head: int) -> str:
    """``"L3.h1"``: catalogue layer 3, head 1 (0-based)."""
    return f"L{layer}.h{head}"


class VisualCoreference(Analysis):
    name: ClassVar[str] = "visual_coreference"
    catalogue: ClassVar[tuple[str, ...]] = ("F4",)
    summary: ClassVar[str] = (
        "F4: per-head attention between linked image regions and noun phrases (v->t, t->v), "
        "best head per link type, random phrase / region ablations (seed 001 table 2)"
    )
    version: ClassVar[str] = "2"  # 2: paired linked - random differences in best_heads
    defaults: ClassVar[dict[str, Any]] = {
        "splits": None,  # dataset splits to pool (None = all)
        "min_links": 5,  # link types with fewer links are reported under "all" only
    }

    def _request(self, source: Any, model: str, split: str) -> FeatureRequest:
        sites = coref_sites(source.attention_sites(model, "pair"))
        if not sites:
            raise ConfigError(
                f"{self.name}: model {model!r} has no text<->image attention site (it needs a "
                "fusion model: fusion.blocks.*.attn or cross.blocks.*.v2t/t2v.attn)"
            )
        return FeatureRequest(model, self.dataset, split, sites=tuple(sites),
                              attention=("raw",), modality="pair")

    def requests(self, source: Any) -> list[FeatureRequest]:
        return [self._request(source, m, s) for m in self.models for s in link_splits(self, source)]

    def run(self, source: Any) -> Result:
        from vlprobe.analyses.fusion import coref_plots

        rows, best, notes, figures = [], [], [], {}
        for model in self.models:
            values, heads, links, dropped = self._model_values(source, model)
            if dropped:
                notes.append(f"{model}: {dropped} link(s) dropped (phrase cut by truncation, "
                             "or the box outside every region the model sees)")
            if not links:
                raise ConfigError(f"{self.name}: model {model!r}: no link left to score")
            m_rows, m_best = self._summarise(model, values, heads, links)
            rows += m_rows
            best += m_best
            table = pd.DataFrame(m_rows)
            figures[f"{model}_heads"] = coref_plots.head_heatmaps(table, model)
        table = pd.DataFrame(rows)
        best_table = pd.DataFrame(best)
        figures["best_heads"] = coref_plots.best_head_bars(best_table)
        return Result(self.name, self.catalogue, table, figures, dict(self.params), notes,
                      {"best_heads": best_table})

    # -- gathering ----------------------------------------------------------------------
    def _model_values(self, source: Any, model: str) -> tuple[dict, list, list, int]:
        """column -> ``[n_links, n_heads]``, head descriptors ``(site, layer, head)`` per
        direction, the links, and the number dropped."""
        adapter = source.adapter(model)
        values: dict[str, list[np.ndarray]] = {c: [] for c in COLUMNS}
        heads: dict[str, list[tuple[str, int | None, int]]] = {d: [] for d in DIRECTIONS}
        all_links, dropped = [], 0
        for split in link_splits(self, source):
            request = self._request(source, model, split)
            stimuli = source.stimuli(request)
            check_link_data(stimuli, f"{self.name} ({model}, {split})")
            feats = source.get(request)
            sites = list(request.sites or ())
            raws = {s: feats.features[attention_output(s, "raw")] for s in sites}
            tags = {s: feats.features[attention_output(s, "raw_tags")] for s in sites}
            items = [i for i, links in enumerate(stimuli.descriptors["links"]) if links]
            n_text, n_reg = [], []
            for i in items:
                q, k = split_raw_tags(np.asarray(tags[sites[0]][i]), raws[sites[0]][i])
                nt_q, ni_q = token_counts(q)
                nt_k, ni_k = token_counts(k)
                n_text.append(max(nt_q, nt_k))
                n_reg.append(max(ni_q, ni_k))
            links, drop = resolve_links(adapter, stimuli, items, n_text, n_reg, self.seed,
                                        f"{self.name} ({model}, {split})")
            dropped += drop["truncated"] + drop["outside"]
            per_col: dict[str, list[list[np.ndarray]]] = {c: [[] for _ in links] for c in COLUMNS}
            split_heads: dict[str, list[tuple[str, int | None, int]]] = {d: [] for d in DIRECTIONS}
            for site in sites:
                layer = feats.layers.get(attention_output(site, "raw"))
                for n, link in enumerate(links):
                    raw = raws[site][link.item]
                    q, k = split_raw_tags(np.asarray(tags[site][link.item]), raw)
                    dirs = site_directions(q, k)
                    if n == 0:
                        for d in dirs:
                            split_heads[d] += [(site, layer, h) for h in range(raw.shape[0])]
                    for d in dirs:
                        per_col[d][n].append(link_attention(raw, q, k, d, link.phrase,
                                                            link.region))
                    if "v2t" in dirs:
                        rp = link.rand_phrase
                        per_col["v2t_rand"][n].append(
                            np.full(raw.shape[0], np.nan) if rp is None
                            else link_attention(raw, q, k, "v2t", rp, link.region))
                    if "t2v" in dirs:
                        per_col["t2v_rand"][n].append(
                            link_attention(raw, q, k, "t2v", link.phrase, link.rand_region))
            if not links:
                continue
            if (heads["v2t"] or heads["t2v"]) and split_heads != heads:
                raise ConfigError(f"{self.name}: model {model!r}: splits give different "
                                  "attention heads")
            heads = split_heads
            for c in COLUMNS:
                if per_col[c][0]:
                    values[c].append(np.stack([np.concatenate(v) for v in per_col[c]]))
            all_links += links
        out = {c: np.concatenate(v) for c, v in values.items() if v}
        return out, heads, all_links, dropped

    # -- summaries ----------------------------------------------------------------------
    def _summarise(self, model: str, values: dict, heads: dict, links: list) -> tuple[list, list]:
        types = np.asarray([link.type for link in links])
        names, counts = np.unique(types, return_counts=True)
        groups = [("all", np.ones(len(links), dtype=bool))] + [
            (str(t), types == t) for t, c in zip(names, counts, strict=True)
            if c >= int(self.params["min_links"])
        ]
        rows, best = [], []
        for link_type, mask in groups:
            means = {}
            for column, mat in values.items():
                direction = column.split("_")[0]
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN heads
                    mean = np.nanmean(mat[mask], axis=0)
                n_valid = np.sum(~np.isnan(mat[mask]), axis=0)
                means[column] = mean
                for h, (site, layer, head) in enumerate(heads[direction]):
                    rows.append({
                        "analysis": self.name, "model": model, "dataset": self.dataset,
                        "layer": layer, "site": site, "metric": column, "value": float(mean[h]),
                        "head": head, "link_type": link_type, "n": int(n_valid[h]),
                    })
            entry: dict[str, Any] = {"model": model, "link_type": link_type,
                                     "n": int(mask.sum())}
            for column, mean in means.items():
                direction = column.split("_")[0]
                if np.all(np.isnan(mean)):
                    continue
                h = int(np.nanargmax(mean))
                site, layer, head = heads[direction][h]
                entry[column] = float(mean[h])
                entry[f"{column}_head"] = head_label(layer, head)
                entry[f"{column}_site"] = site
                rand = f"{direction}_rand"
                if column in DIRECTIONS and rand in means:
                    entry[f"{rand}_at_best"] = float(means[rand][h])
                    diff = values[column][mask, h] - values[rand][mask, h]
                    diff = diff[~np.isnan(diff)]
                    if diff.size:
                        entry[f"{column}_minus_rand"] = float(diff.mean())
                        entry[f"{column}_minus_rand_se"] = (
                            float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1
                            else float("nan"))
                        entry[f"{column}_win"] = float(np.mean(diff > 0))
            best.append(entry)
        return rows, best


__all__ = ["COLUMNS", "VisualCoreference", "head_label"]
