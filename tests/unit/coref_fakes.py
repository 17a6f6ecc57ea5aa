"""A tiny single-stream fusion "model" whose attention is planted by construction (F4 / F5).

:class:`PlantedCorefAdapter` reads (image, caption) pairs as ``[CLS] words [SEP]`` + a 2 x 2
grid of region tokens. Every head's rows are seeded random distributions, except head
``PLANTED_HEAD`` of block ``PLANTED_BLOCK`` (catalogue layer ``PLANTED_BLOCK + 1``):

- ``direction="v2t"``: the rows of a linked region's tokens put 0.9 of their mass on the
  linked phrase's tokens;
- ``direction="t2v"``: the rows of a linked phrase's tokens put 0.9 on the linked region.

The plant fires only when the caption is shown with ITS OWN image (a mismatched pair gets
random rows there too), as a real coreference head would need the object in the image.
:class:`CorefSource` is the FeatureSource the analyses see: stimuli with links, raw attention
of the model's attention sites (through the real ``batch_values`` cut), and the adapter.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from vlprobe.analyses.base import FeatureRequest, LayerFeatures
from vlprobe.data._common import array_image_source
from vlprobe.data.stimuli import Stimuli
from vlprobe.extract.attention import attention_output, batch_values
from vlprobe.extract.ragged import RaggedArray
from vlprobe.models.base import Batch, Trace

PLANTED_BLOCK, PLANTED_HEAD, N_BLOCKS, N_HEADS, GRID, DIM = 1, 1, 2, 2, 2, 8
PHRASES = [("a dog", "dog", "animal"), ("the cat", "cat", "animal"), ("a man", "person", "person"),
           ("two women", "person", "person"), ("the red car", "car", "vehicle"),
           ("a bus", "bus", "vehicle")]


class WhitespaceTokenizer:
    """A fast-tokenizer stand-in: one token per space-separated word, [CLS] / [SEP] around."""

    is_fast = True

    def __call__(self, texts, truncation=False, max_length=None, return_offsets_mapping=True,
                 return_special_tokens_mask=True):
        offsets, special = [], []
        for text in texts:
            off, pos = [(0, 0)], 0
            for word in text.split(" "):
                start = text.index(word, pos)
                off.append((start, start + len(word)))
                pos = start + len(word)
            off.append((0, 0))
            offsets.append(off)
            special.append([1] + [0] * (len(off) - 2) + [1])
        return {"offset_mapping": offsets, "special_tokens_mask": special}


def _cell_box(cell: int) -> list[float]:
    r, c = divmod(cell, GRID)
    return [c / GRID, r / GRID, (c + 1) / GRID, (r + 1) / GRID]


def planted_stimuli(n_images: int = 12, per_image: int = 2, seed: int = 0) -> Stimuli:
    """Captions "<p1> sits next to <p2> on the grass" with two links each (distinct cells)."""
    rng = np.random.default_rng(seed)
    ids, texts, image_ids, links, nps, pixels = [], [], [], [], [], []
    for m in range(n_images):
        for k in range(per_image):
            a, b = rng.choice(len(PHRASES), 2, replace=False)
            while PHRASES[a][1] == PHRASES[b][1]:
                a, b = rng.choice(len(PHRASES), 2, replace=False)
            p1, p2 = PHRASES[a], PHRASES[b]
            text = f"{p1[0]} sits next to {p2[0]} on the grass"
            cells = rng.choice(GRID * GRID, 2, replace=False)
            s2 = text.index(p2[0])
            item_links = [
                {"phrase": p1[0], "start": 0, "end": len(p1[0]), "category": p1[1],
                 "type": p1[2], "word": p1[1], "boxes": [_cell_box(int(cells[0]))]},
                {"phrase": p2[0], "start": s2, "end": s2 + len(p2[0]), "category": p2[1],
                 "type": p2[2], "word": p2[1], "boxes": [_cell_box(int(cells[1]))]},
            ]
            g = text.index("the grass")
            ids.append(f"test/{m}/{k}")
            texts.append(text)
            image_ids.append(m)
            links.append(item_links)
            nps.append([[0, len(p1[0])], [s2, s2 + len(p2[0])], [g, g + len("the grass")]])
            pixels.append(np.full((8, 8, 3), 10 * m, dtype=np.uint8))
    return Stimuli("coref", "test", ids, images=array_image_source(np.stack(pixels), ids),
                   texts=texts, descriptors={"image_id": image_ids, "links": links,
                                             "noun_phrases": nps,
                                             "image_size": [[8, 8]] * len(ids)})


class PlantedCorefAdapter:
    """See the module docstring. ``links_of[(image_id, text)]`` = the item's links."""

    family = "planted_coref"
    modalities = ("pair",)

    def __init__(self, stimuli: Stimuli, direction: str = "v2t") -> None:
        self.direction = direction
        self.tokenizer = WhitespaceTokenizer()
        self.regions = SimpleNamespace(cnn=SimpleNamespace(input_window=lambda w, h: (0, 0, w, h)))
        self.links_of = {(str(stimuli.descriptors["image_id"][i]), t): stimuli.descriptors[
            "links"][i] for i, t in enumerate(stimuli.texts)}
        self.n_forward = 0

    def max_text_length(self):
        return None

    def sites(self):
        out = ["fusion.stem"]
        for i in range(N_BLOCKS):
            out += [f"fusion.blocks.{i}", f"fusion.blocks.{i}.attn"]
        return out

    def layer_sites(self, modality):
        return ["fusion.stem"] + [f"fusion.blocks.{i}" for i in range(N_BLOCKS)]

    def layer_index(self, site):
        if site == "fusion.stem":
            return 0
        parts = site.split(".")
        return int(parts[2]) + 1 if len(parts) == 3 and parts[1] == "blocks" else None

    def prepare(self, pairs, modality):
        return Batch("pair", {"pairs": [(im.info["image_id"], t) for im, t in pairs]})

    def forward(self, batch, sites):
        self.n_forward += 1
        pairs = batch.inputs["pairs"]
        enc = self.tokenizer([t for _, t in pairs])
        lengths = [len(o) + GRID * GRID for o in enc["offset_mapping"]]
        t_max = max(lengths)
        b = len(pairs)
        tags = torch.full((b, t_max), -1, dtype=torch.int8)
        attn = torch.zeros(N_BLOCKS, b, N_HEADS, t_max, t_max)
        hidden = torch.zeros(N_BLOCKS + 1, b, t_max, DIM)
        for r, ((image_id, text), off) in enumerate(zip(pairs, enc["offset_mapping"], strict=True)):
            n_txt, n = len(off), lengths[r]
            tags[r, :n_txt] = 1
            tags[r, 0] = tags[r, n_txt - 1] = 0
            tags[r, n_txt:n] = 2
            rng = np.random.default_rng(zlib.crc32(f"{image_id}|{text}".encode()))
            rows = rng.dirichlet(np.ones(n), size=(N_BLOCKS, N_HEADS, n))
            hidden[:, r, :n] = torch.as_tensor(rng.normal(size=(N_BLOCKS + 1, n, DIM)))
            for link in self.links_of.get((str(image_id), text), []):
                words = [j for j, (s, e) in enumerate(off) if e > s and s < link["end"]
                         and e > link["start"]]
                x0, y0 = link["boxes"][0][:2]
                cell = n_txt + round(y0 * GRID) * GRID + round(x0 * GRID)
                queries, keys = ([cell], words) if self.direction == "v2t" else (words, [cell])
                for q in queries:
                    row = np.full(n, 0.1 / (n - len(keys)))
                    row[keys] = 0.9 / len(keys)
                    rows[PLANTED_BLOCK, PLANTED_HEAD, q] = row
            attn[:, r, :, :n, :n] = torch.as_tensor(rows, dtype=torch.float32)
        trace = Trace(modality_tags=tags, attention_mask=(tags != -1).long())
        for site in sites:
            if site.endswith(".attn"):
                trace.attentions[site] = attn[int(site.split(".")[2])]
            else:
                trace.hidden[site] = hidden[self.layer_index(site)]
        return trace


@dataclass
class CorefSource:
    """The FeatureSource of the F4 / F5 tests (one dataset ``coref``, split ``test``)."""

    stim: Stimuli
    adapters: dict = field(default_factory=dict)
    dataset: str = "coref"
    device: str = "cpu"
    calls: list = field(default_factory=list)

    def adapter(self, model):
        return self.adapters[model]

    def splits(self, dataset):
        return ["test"]

    def model_modalities(self, model):
        return ("pair",)

    def dataset_modalities(self, dataset):
        return ("image", "text")

    def attention_sites(self, model, modality):
        return [s for s in self.adapters[model].sites() if s.endswith(".attn")]

    def layer_sites(self, model, modality):
        return self.adapters[model].layer_sites(modality)

    def stimuli(self, request: FeatureRequest) -> Stimuli:
        return self.stim

    def get(self, request: FeatureRequest) -> LayerFeatures:
        self.calls.append(request)
        adapter = self.adapters[request.model]
        pairs = self.stim.payloads("pair", range(len(self.stim)))
        trace = adapter.forward(adapter.prepare(pairs, "pair"), list(request.sites))
        feats, layers = {}, {}
        for site in request.sites:
            got = batch_values(trace, site, ["raw", "raw_tags"])
            for method in ("raw", "raw_tags"):
                name = attention_output(site, method)
                feats[name] = RaggedArray.from_arrays(got[method])
                layers[name] = int(site.split(".")[2]) + 1
        return LayerFeatures(feats, layers, None, list(self.stim.ids))


def planted_source(direction: str = "v2t", models=("m",)) -> CorefSource:
    stim = planted_stimuli()
    return CorefSource(stim, {m: PlantedCorefAdapter(stim, direction) for m in models})
