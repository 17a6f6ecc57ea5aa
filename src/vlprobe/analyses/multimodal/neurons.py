"""M5 ``multimodal_neurons``: units of a vision layer that answer to a concept in pictures AND
in writing (Goh et al. 2021, "Multimodal Neurons in Artificial Neural Networks"; seed 002).

Protocol (SCIENCE.md M5):

1. Two image sets, both read by the model's image tower at one ``layer`` or ``site`` (pooled
   with ``pooling``, default ``mean``: a unit is a channel of that layer, averaged over
   positions or tokens; or one dimension of an embedding site such as ``vision.proj``):

   - **pictures**: up to ``n_images`` images of each concept (a class of the dataset; the
     ``concepts`` param chooses some, default all) from ``split``, a seeded draw;
   - **word cards**: each concept's name rendered ``n_renders`` times on a neutral
     ``background`` (size jittered x U(0.75, 1.25), ``position: random`` by default), and,
     with ``nonword_controls``, as many cards of a random letter string of the same length
     and shape per concept (text that spells nothing).

2. Selectivity index of unit ``u`` for concept ``c`` in each modality (Cohen's d):
   ``d = (mean_concept - mean_control) / pooled_sd``, where ``concept`` = the pictures (or
   cards) of ``c`` and ``control`` = every other item of the same set (pictures of the other
   concepts; cards of the other names and the non-word cards). ``pooled_sd`` =
   ``sqrt(((n1-1) s1^2 + (n0-1) s0^2) / (n1+n0-2))``; a unit constant on a set gets d = 0.
   The cross-modal score is ``min(d_image, d_text)``: high only when the unit prefers the
   concept in both modalities.

3. Reported per concept: its top ``top_units`` units by cross-modal score (rows
   ``cross_modal``, ``selectivity_image``, ``selectivity_text``, with ``unit`` and ``rank``),
   ``max_cross_modal``, and a permutation null: ``null_cross_modal_q95`` = the 95th
   percentile over ``n_permutations`` label shuffles (within each set) of the best unit's
   score, and ``n_units_above_null``. The full unit x concept table is the extra table
   ``selectivity``.

Figures: ``selectivity_<model>`` (d_image vs d_text for every unit and concept) and
``top_units_<model>`` (the best units' most activating pictures and word cards).

Any model with an image tower works (compare a dual encoder's image tower with an ImageNet
classifier). Bad input: no image tower, a concept the dataset lacks, an empty or duplicate
concept name, a concept with fewer than 2 pictures, no font.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from vlprobe.analyses._common import check_layer_spec, select_layer_sites
from vlprobe.analyses.base import Analysis, FeatureRequest, FeatureSource, Result
from vlprobe.analyses.multimodal._attacks_common import check_positive_int, site_features
from vlprobe.analyses.multimodal._common import require_towers
from vlprobe.data.prompts.params import check_class_names
from vlprobe.data.typography import TextStyle, nonword_like, parse_colour, word_card_stimuli
from vlprobe.errors import AnalysisError, ConfigError, DataError


def selectivity(x: np.ndarray, member: np.ndarray) -> np.ndarray:
    """``[U]`` Cohen's d of every column of ``x`` ``[N, U]``: members vs the other rows
    (0 where the pooled sd is 0 or a side is empty)."""
    x = np.asarray(x, dtype=np.float64)
    member = np.asarray(member, dtype=bool)
    a, b = x[member], x[~member]
    n1, n0 = len(a), len(b)
    if n1 == 0 or n0 == 0:
        return np.zeros(x.shape[1])
    v1 = a.var(0, ddof=1) if n1 > 1 else np.zeros(x.shape[1])
    v0 = b.var(0, ddof=1) if n0 > 1 else np.zeros(x.shape[1])
    dof = max(n1 + n0 - 2, 1)
    sd = np.sqrt(((n1 - 1) * v1 + (n0 - 1) * v0) / dof)
    diff = a.mean(0) - b.mean(0)
    scale = np.maximum(np.abs(x).max(0), 1.0)
    return np.where(sd > 1e-12 * scale, diff / np.where(sd > 0, sd, 1.0), 0.0)


def selectivity_matrix(x: np.ndarray, concept: np.ndarray, n_concepts: int) -> np.ndarray:
    """``[C, U]``: :func:`selectivity` of each concept (``concept`` ``[N]``, -1 = control
    only) against every other row."""
    return np.stack([selectivity(x, concept == c) for c in range(n_concepts)])


class MultimodalNeurons(Analysis):
    """Units selective to a concept in pictures and in its written name (M5).

    Params:
        split: image split (``"test"``). layer: ``"last"`` or one layer index.
        site: an explicit site instead of ``layer`` (e.g. ``vision.proj``: the units of a
            dual encoder's image embedding, the part a ``vlprobe train`` model learns).
        pooling: how a unit's map is pooled (``"mean"``).
        concepts: class names to test (null = every class).
        n_images: pictures per concept (50; seeded). n_renders: cards per word (8).
        nonword_controls: add random-letter cards to the text controls (true).
        card_size, background: word cards (224 px, ``lightgray``).
        size, position, colour, stroke_colour, stroke_width, opacity, font: text style.
        top_units: units reported per concept (10). n_permutations: null shuffles (20).
        n_show, n_top_images: units and images per unit in the top-units figure.
    """

    name: ClassVar[str] = "multimodal_neurons"
    catalogue: ClassVar[tuple[str, ...]] = ("M5",)
    summary: ClassVar[str] = "Multimodal neurons: units selective to pictures and written names"
    defaults: ClassVar[dict[str, Any]] = {
        "split": "test",
        "layer": "last",
        "site": None,
        "pooling": "mean",
        "concepts": None,
        "n_images": 50,
        "n_renders": 8,
        "nonword_controls": True,
        "card_size": 224,
        "background": "lightgray",
        "size": 0.2,
        "position": "random",
        "colour": "black",
        "stroke_colour": None,
        "stroke_width": 0.0,
        "opacity": 1.0,
        "font": None,
        "top_units": 10,
        "n_permutations": 20,
        "n_show": 4,
        "n_top_images": 5,
    }

    def __init__(self, models, dataset, params=None, seed=0) -> None:
        super().__init__(models, dataset, params, seed)
        p = self.params
        self.style = TextStyle.from_params(p, self.name)
        self.background = parse_colour(p["background"], f"{self.name}: background")
        check_layer_spec(self.name, "layer", p["layer"], ("last",), many=False)
        if p["site"] is not None and (not isinstance(p["site"], str) or not p["site"]):
            raise ConfigError(f"{self.name}: site must be a site name or null, got "
                              f"{p['site']!r}")
        for key, low in (("n_images", 2), ("n_renders", 1), ("card_size", 16),
                         ("top_units", 1), ("n_permutations", 0), ("n_show", 0),
                         ("n_top_images", 1)):
            check_positive_int(p, key, self.name, low=low)
        if p["concepts"] is not None:
            if isinstance(p["concepts"], str) or not isinstance(p["concepts"], list):
                raise ConfigError(f"{self.name}: concepts must be a list of class names or null")
            p["concepts"] = check_class_names(p["concepts"], f"{self.name}: concepts")
            if len(p["concepts"]) < 2:
                raise ConfigError(f"{self.name}: concepts needs at least 2 names (the others "
                                  "are the controls)")

    def _site(self, source: FeatureSource, model: str) -> str:
        if self.params["site"]:
            return str(self.params["site"])
        sites = source.layer_sites(model, "image")
        return select_layer_sites({s: i for i, s in enumerate(sites)}, self.params["layer"],
                                  model, analysis=self.name)[0]

    def requests(self, source: FeatureSource) -> list[FeatureRequest]:
        for model in self.models:
            require_towers(source, self.name, model, towers=("image",))
            self._site(source, model)
        return []  # pictures and cards are built here and extracted in run (source.extract)

    def _stimuli(self, source: FeatureSource) -> tuple[Any, np.ndarray, Any, list[str], list]:
        """(pictures, their concept index, word cards, concept names, notes)."""
        p = self.params
        where = f"dataset {self.dataset!r} split {p['split']!r}"
        base = source.stimuli(FeatureRequest(self.models[0], self.dataset, p["split"]))
        if base.images is None or base.labels is None:
            raise DataError(f"{self.name}: {where} needs labelled images (pictures of concepts)")
        names = check_class_names(base.label_names, f"{self.name}: {where}", DataError)
        concepts = p["concepts"] or names
        lower = [n.lower() for n in names]
        missing = [c for c in concepts if c.lower() not in lower]
        if missing:
            raise AnalysisError(f"{self.name}: concepts {missing} are not classes of {where} "
                                f"(classes: {names})")
        cls = [lower.index(c.lower()) for c in concepts]
        idx, concept_of = [], []
        for k, c in enumerate(cls):
            mine = np.flatnonzero(base.labels == c)
            if len(mine) < 2:
                raise AnalysisError(f"{self.name}: concept {concepts[k]!r} has {len(mine)} "
                                    f"picture(s) in {where}; at least 2 are needed")
            if len(mine) > p["n_images"]:
                mine = np.sort(np.random.default_rng([self.seed, k]).choice(
                    mine, p["n_images"], replace=False))
            idx += mine.tolist()
            concept_of += [k] * len(mine)
        pictures = base.subset(idx, split=f"{p['split']}:concepts")
        words, ids, kinds = list(concepts), list(range(len(concepts))), ["name"] * len(concepts)
        if p["nonword_controls"]:
            for k, c in enumerate(concepts):
                rng = np.random.default_rng([self.seed, k, 3])
                words.append(nonword_like(c, rng, avoid=names))
                ids.append(-1)
                kinds.append("nonword")
        cards = word_card_stimuli(words, ids, kinds, int(p["n_renders"]), self.style, self.seed,
                                  int(p["card_size"]), self.background)
        notes = [
            f"{self.name}: selectivity d = (mean_concept - mean_control) / pooled sd per unit "
            "(Cohen's d), per modality: pictures of the concept vs pictures of the other "
            f"{len(concepts) - 1} concepts; cards of its name vs cards of the other names"
            + (" and of random letter strings" if p["nonword_controls"] else "")
            + "; cross-modal score = min(d_image, d_text)",
            f"{self.name}: {len(pictures)} pictures of {len(concepts)} concepts from {where} "
            f"(<= {p['n_images']} each), {len(cards)} word cards ({p['n_renders']} per word, "
            f"{p['card_size']} px); units are channels pooled with {p['pooling']!r}",
        ]
        return pictures, np.asarray(concept_of), cards, list(concepts), notes

    def run(self, source: FeatureSource) -> Result:
        import pandas as pd

        from vlprobe.analyses.multimodal.plots import (
            plot_selectivity_scatter,
            plot_unit_top_images,
        )

        p = self.params
        for model in self.models:
            require_towers(source, self.name, model, towers=("image",))
        pictures, y_img, cards, concepts, notes = self._stimuli(source)
        y_card = np.asarray(cards.descriptors["concept"])
        rows: list[dict[str, Any]] = []
        sel_rows: list[dict[str, Any]] = []
        figures: dict[str, Any] = {}
        n_c = len(concepts)
        for mi, model in enumerate(self.models):
            site = self._site(source, model)
            fi = source.extract(model, pictures, "image", (site,), p["pooling"])
            x_img = site_features(fi, site, model, "concept pictures")
            x_card = site_features(source.extract(model, cards, "image", (site,), p["pooling"]),
                                   site, model, "word cards")
            if x_img.ndim != 2 or x_card.shape[1] != x_img.shape[1]:
                raise AnalysisError(f"{self.name}: model {model!r} site {site!r}: expected "
                                    f"pooled [N, U] features, got {x_img.shape}")
            d_img = selectivity_matrix(x_img, y_img, n_c)
            d_txt = selectivity_matrix(x_card, y_card, n_c)
            cross = np.minimum(d_img, d_txt)
            null = self._null(x_img, y_img, x_card, y_card, n_c, [self.seed, mi])
            layer = fi.layers.get(site)
            base = dict(analysis=self.name, model=model, dataset=self.dataset, layer=layer,
                        site=site, seed=self.seed)
            for c, concept in enumerate(concepts):
                order = np.argsort(-cross[c], kind="stable")
                best = int(order[0])
                rows.append({**base, "metric": "max_cross_modal", "concept": concept,
                             "unit": best, "rank": 1, "value": float(cross[c, best])})
                if null is not None:
                    q = float(np.quantile(null[c], 0.95))
                    rows.append({**base, "metric": "null_cross_modal_q95", "concept": concept,
                                 "unit": None, "rank": None, "value": q})
                    rows.append({**base, "metric": "n_units_above_null", "concept": concept,
                                 "unit": None, "rank": None, "value": float((cross[c] > q).sum())})
                for r, u in enumerate(order[: int(p["top_units"])]):
                    for metric, arr in (("cross_modal", cross), ("selectivity_image", d_img),
                                        ("selectivity_text", d_txt)):
                        rows.append({**base, "metric": metric, "concept": concept,
                                     "unit": int(u), "rank": r + 1, "value": float(arr[c, u])})
                for u in range(cross.shape[1]):
                    sel_rows.append({"model": model, "site": site, "concept": concept, "unit": u,
                                     "d_image": float(d_img[c, u]), "d_text": float(d_txt[c, u]),
                                     "cross_modal": float(cross[c, u])})
            sel = pd.DataFrame(sel_rows)
            figures[f"selectivity_{model}"] = plot_selectivity_scatter(
                sel, model, title=f"{model} {site}: per-unit selectivity ({self.dataset})")
            if int(p["n_show"]):
                top = sel[sel["model"] == model].nlargest(int(p["n_show"]), "cross_modal")
                figures[f"top_units_{model}"] = plot_unit_top_images(
                    top.to_dict("records"), pictures, cards, x_img, x_card,
                    int(p["n_top_images"]), title=f"{model} {site}")
        return Result(
            analysis=self.name, catalogue=self.catalogue, table=pd.DataFrame(rows),
            figures=figures, params={**p, "style": self.style.record()}, notes=notes,
            extra_tables={"selectivity": pd.DataFrame(sel_rows)},
        )

    def _null(self, x_img: np.ndarray, y_img: np.ndarray, x_card: np.ndarray,
              y_card: np.ndarray, n_c: int, key: list[int]) -> np.ndarray | None:
        """``[C, P]`` best cross-modal score per concept with the concept labels shuffled
        within each set (None when ``n_permutations`` is 0)."""
        n_perm = int(self.params["n_permutations"])
        if not n_perm:
            return None
        rng = np.random.default_rng(key)
        out = np.empty((n_c, n_perm))
        for i in range(n_perm):
            cross = np.minimum(selectivity_matrix(x_img, rng.permutation(y_img), n_c),
                               selectivity_matrix(x_card, rng.permutation(y_card), n_c))
            out[:, i] = cross.max(1)
        return out


__all__ = ["MultimodalNeurons", "selectivity", "selectivity_matrix"]
