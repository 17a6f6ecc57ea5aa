"""Data of the fusion trainer: cached region features, tokenized captions, ITM pairs and the
random parts of a training batch (mismatched captions, BERT masking), all from a local
``torch.Generator``.

Shapes: ``B`` pairs, ``T`` text tokens (incl. [CLS] / [SEP], right-padded), ``R = g * g``
regions of ``C`` channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlprobe.errors import DataError


@dataclass
class RegionSplit:
    """One split's images: frozen grid features and captions.

    Attributes:
        features: ``[N_images, C * R]`` float32, channel-major (``grid<g>`` pooling layout).
        grid: ``g`` (``R = g * g`` regions, raster order: cell (row i, column j) = ``i g + j``).
        image_ids, image_digests: per image (the digests are compared with the test split's).
        captions: per image, its token id arrays (``[T_k]`` int64 each).
        texts: per image, its caption strings (same order).
        n_truncated: captions cut at the maximum length.
    """

    features: np.ndarray
    grid: int
    image_ids: list[str]
    image_digests: list[str]
    captions: list[list[np.ndarray]]
    texts: list[list[str]]
    n_truncated: int = 0

    @property
    def channels(self) -> int:
        return self.features.shape[1] // (self.grid * self.grid)

    def regions(self, rows: Sequence[int]) -> Any:
        """``[B, R, C]`` float32 tensor of the images at ``rows``."""
        import torch

        x = np.asarray(self.features[np.asarray(rows, dtype=np.int64)], dtype=np.float32)
        x = x.reshape(len(rows), self.channels, self.grid * self.grid).transpose(0, 2, 1)
        return torch.from_numpy(np.ascontiguousarray(x))


@dataclass
class ItmPairs:
    """Evaluation pairs: ``image_rows [P]`` into a :class:`RegionSplit`, ``tokens`` (P token id
    arrays), ``labels [P]`` (1 = the image's own caption), ``ids`` (P item ids)."""

    image_rows: np.ndarray
    tokens: list[np.ndarray]
    labels: np.ndarray
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def cell_boxes(g: int) -> np.ndarray:
    """``[g * g, 4]`` float32 boxes ``(x0, y0, x1, y1)`` of the cells of a g x g grid in
    normalised coordinates, raster order: cell ``i * g + j`` is ``(j/g, i/g, (j+1)/g,
    (i+1)/g)`` (the boxes the ``lxmert`` adapter's grid region source gives)."""
    from vlprobe.models.regions import grid_cell_boxes

    return grid_cell_boxes(g, g).astype(np.float32)


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> tuple[list[np.ndarray],
                                                                          int]:
    """Token ids of each text (``[CLS] ... [SEP]``, at most ``max_length``) and how many texts
    were cut."""
    full = tokenizer([str(t) for t in texts], truncation=False, verbose=False)["input_ids"]
    cut = tokenizer([str(t) for t in texts], truncation=True, max_length=max_length)["input_ids"]
    n_truncated = sum(len(a) > max_length for a in full)
    return [np.asarray(ids, dtype=np.int64) for ids in cut], n_truncated


def pad_tokens(tokens: Sequence[np.ndarray], pad_id: int) -> tuple[Any, Any]:
    """``(input_ids [B, T], attention_mask [B, T])`` long tensors, right-padded to the longest."""
    import torch

    t = max(len(x) for x in tokens)
    ids = torch.full((len(tokens), t), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(tokens), t), dtype=torch.long)
    for i, x in enumerate(tokens):
        ids[i, : len(x)] = torch.from_numpy(x)
        mask[i, : len(x)] = 1
    return ids, mask


def mask_tokens(ids: Any, attention_mask: Any, special_ids: Sequence[int], prob: float,
                gen: Any, mask_id: int, vocab_size: int, bert_mix: bool = True) -> tuple[Any,
                                                                                       Any]:
    """BERT masking: each real, non-special token is chosen with probability ``prob``; with
    ``bert_mix`` a chosen token becomes [MASK] (80%), a random non-special token (10%) or
    stays (10%), else always [MASK] (the evaluation protocol). Returns ``(masked ids [B, T],
    labels [B, T])`` with label -100 where no token was chosen."""
    import torch

    candidates = attention_mask.bool() & ~torch.isin(ids, torch.tensor(sorted(special_ids)))
    chosen = (torch.rand(ids.shape, generator=gen) < prob) & candidates
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    out = ids.clone()
    if not bert_mix:
        out[chosen] = mask_id
        return out, labels
    u = torch.rand(ids.shape, generator=gen)
    out[chosen & (u < 0.8)] = mask_id
    allowed = torch.tensor(sorted(set(range(vocab_size)) - set(special_ids)))
    random_tok = allowed[torch.randint(len(allowed), ids.shape, generator=gen)]
    swap = chosen & (u >= 0.8) & (u < 0.9)
    out[swap] = random_tok[swap]
    return out, labels


def epoch_plan(split: RegionSplit, batch_size: int, gen: Any) -> list[dict[str, np.ndarray]]:
    """One epoch of ITM training: every image once (seeded order) with one of its captions;
    half the pairs (seeded) get instead a caption of ANOTHER image whose text (case and
    surrounding spaces ignored) is none of this image's own captions. Batches of
    ``batch_size`` (a last batch of one pair is dropped).

    Returns per batch ``{"rows": [B], "image_of_caption": [B], "caption": [B],
    "matched": [B] bool}`` (the caption is ``captions[image_of_caption][caption]``)."""
    import torch

    n = len(split.captions)
    if n < 2:
        raise DataError("fusion training needs at least two training images (mismatched "
                        "captions come from other images)")
    order = torch.randperm(n, generator=gen).numpy()
    pick = torch.rand(n, generator=gen).numpy()
    matched = (torch.rand(n, generator=gen) < 0.5).numpy()
    own = [{t.strip().lower() for t in texts} for texts in split.texts]
    src_img = order.copy()
    src_cap = np.array([int(p * len(split.captions[i])) for i, p in zip(order, pick)])
    for k in np.flatnonzero(~matched):
        image = order[k]
        for _ in range(1000):
            other = int(torch.randint(n, (1,), generator=gen))
            cap = int(torch.randint(len(split.captions[other]), (1,), generator=gen))
            if other != image and split.texts[other][cap].strip().lower() not in own[image]:
                src_img[k], src_cap[k] = other, cap
                break
        else:
            raise DataError(f"image {split.image_ids[image]!r}: no caption of another image "
                            "differs from its own captions")
    return [
        {"rows": order[s:s + batch_size], "image_of_caption": src_img[s:s + batch_size],
         "caption": src_cap[s:s + batch_size], "matched": matched[s:s + batch_size]}
        for s in range(0, n, batch_size) if min(n, s + batch_size) - s > 1
    ]


def itm_pairs(stimuli: Any, row_of: dict[str, int], tokenizer: Any,
              max_length: int) -> ItmPairs:
    """The pairs of a loader ``itm`` view (descriptor ``image_id``; labels 1 = match)."""
    missing = [i for i in stimuli.descriptors["image_id"] if i not in row_of]
    if missing:
        raise DataError(f"{stimuli.dataset}/{stimuli.split}: ITM pairs name image(s) without "
                        f"region features, e.g. {missing[:3]}")
    rows = np.array([row_of[i] for i in stimuli.descriptors["image_id"]], dtype=np.int64)
    tokens, _ = tokenize(tokenizer, stimuli.texts, max_length)
    return ItmPairs(rows, tokens, np.asarray(stimuli.labels, dtype=np.int64), list(stimuli.ids))
