"""Inputs of the unfrozen tails (:mod:`vlprobe.train.tails`) for ``kind: aligned`` with
``unfreeze_last: k > 0``: the hidden state at each tail's cut, computed once per split, and
the features of a batch with the tail run on it (differentiable).

Caching the cut state:

- image towers: through the activation store, as a ``grid<h>`` pooling of the cut site with
  ``h`` the map's own size (an ``h x h`` adaptive pool of an ``h x h`` map is the identity, so
  the stored ``[N, C*h*h]`` is the map itself), so a second run reads it back;
- text towers: the real tokens of every caption ``[T_i, D]`` (a
  :class:`~vlprobe.extract.ragged.RaggedArray` in memory; the store keeps pooled vectors only),
  computed in length-sorted batches.

A tower entry's sites before the cut stay frozen features (pooled, from the store); sites at
or after it come from the tail. Columns keep the order of the entry's ``sites``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlprobe.errors import ConfigError
from vlprobe.train.features import PairedFeatures, image_view, tower_features
from vlprobe.train.tails import Tail, pool_site


@dataclass
class TowerInputs:
    """One tower on one split, with a tail.

    Attributes:
        sites: the tower entry's sites (column order).
        pooling: the tower entry's pooling (None = the adapter's default).
        frozen: site -> ``[N, D_site]`` pooled features of the sites before the cut.
        cut: image ``[N, C, h, w]`` float32, or text: N items ``[T_i, D]`` (RaggedArray).
    """

    sites: tuple[str, ...]
    pooling: str | None
    frozen: dict[str, np.ndarray]
    cut: Any

    def _inputs(self, rows: np.ndarray) -> tuple[Any, Any]:
        import torch

        if isinstance(self.cut, np.ndarray):
            return torch.from_numpy(self.cut[rows]), None
        items = [self.cut[int(r)] for r in rows]
        t = max(len(x) for x in items)
        x = np.zeros((len(items), t, items[0].shape[1]), np.float32)
        mask = np.zeros((len(items), t), np.int64)
        for b, item in enumerate(items):
            x[b, : len(item)] = item
            mask[b, : len(item)] = 1
        return torch.from_numpy(x), torch.from_numpy(mask)

    def features(self, tail: Tail, rows: np.ndarray) -> Any:
        """``[len(rows), D]``: the frozen columns and the tail's pooled outputs, in site
        order (with gradients into the tail)."""
        import torch

        x, mask = self._inputs(np.asarray(rows))
        out = tail(x, mask)
        parts = [torch.from_numpy(self.frozen[s][rows]) if s in self.frozen
                 else pool_site(out[s], mask, self.pooling) for s in self.sites]
        return torch.cat([p.float() for p in parts], dim=1)

    def all_features(self, tail: Tail, chunk: int = 256) -> np.ndarray:
        """``[N, D]`` of every row, without gradients."""
        import torch

        n = len(self.cut)
        with torch.no_grad():
            return np.concatenate([self.features(tail, np.arange(s, min(s + chunk, n))).numpy()
                                   for s in range(0, n, chunk)])


def text_token_states(adapter: Any, texts: Sequence[str], site: str, batch_size: int = 64,
                      progress: bool = True, desc: str = "") -> Any:
    """Every text's real-token hidden states at ``site`` (N items ``[T_i, D]``)."""
    import torch
    from tqdm.auto import tqdm

    from vlprobe.extract.ragged import RaggedArray

    order = np.argsort(np.asarray(adapter.text_lengths(list(texts))), kind="stable")
    items: list[Any] = [None] * len(texts)
    starts = range(0, len(order), batch_size)
    for s in tqdm(starts, desc=desc or f"{site} tokens", disable=not progress):
        idx = order[s : s + batch_size]
        batch = adapter.prepare([texts[i] for i in idx], "text")
        with torch.no_grad():
            trace = adapter.forward(batch, [site])
        hid, mask = trace.hidden[site].float(), trace.attention_mask.bool()
        for b, i in enumerate(idx):
            items[i] = hid[b][mask[b]].numpy()
    return RaggedArray.from_arrays(items, dtype=np.float32)


def image_cut_states(adapter: Any, view: Any, site: str, store: Any,
                     extraction: dict[str, Any] | None, progress: bool) -> np.ndarray:
    """``[N, C, h, h]`` maps at ``site``, through the store (exact ``grid<h>`` pooling)."""
    import torch

    from vlprobe.extract import extract_features

    with torch.no_grad():
        probe = adapter.forward(adapter.prepare(view.payloads("image", [0]), "image"), [site])
    shape = tuple(probe.hidden[site].shape)
    if len(shape) != 4 or shape[2] != shape[3]:
        raise ConfigError(f"unfreeze_last: the cut site {site!r} gives {list(shape)}, not a "
                          "square feature map [B, C, h, h]")
    c, h = shape[1], shape[2]
    res = extract_features(adapter, view, modality="image", sites=[site], pooling=f"grid{h}",
                           store=store, progress=progress, **(extraction or {}))
    return np.ascontiguousarray(np.asarray(res.features[site], np.float32).reshape(-1, c, h, h))


def tower_inputs(adapter: Any, stimuli: Any, modality: str, tail: Tail, sites: Sequence[str],
                 pooling: str | None, store: Any, extraction: dict[str, Any] | None,
                 progress: bool) -> TowerInputs:
    """The :class:`TowerInputs` of one paired split (the image side per distinct image, as
    :func:`~vlprobe.train.features.paired_features` orders it)."""
    bad = [s for s in sites if s not in tail.sites and _after_cut(s, tail)]
    if bad:
        raise ConfigError(f"unfreeze_last: site {bad[0]!r} lies after the cut but the tail "
                          f"does not produce it (it produces {tail.sites})")
    if not any(s in tail.sites for s in sites):
        raise ConfigError(f"unfreeze_last: {tail.k} block(s) of the {modality} tower change "
                          f"none of its sites {list(sites)}; unfreeze more blocks")
    frozen_sites = [s for s in sites if s not in tail.sites]
    view = image_view(stimuli)[0] if modality == "image" else stimuli
    frozen = {s: tower_features(adapter, view, modality, [s], pooling, store, extraction,
                                progress) for s in frozen_sites}
    if modality == "image":
        cut = image_cut_states(adapter, view, tail.cut_site, store, extraction, progress)
    else:
        batch = int((extraction or {}).get("batch_size", 64))
        cut = text_token_states(adapter, view.payloads("text", range(len(view))),
                                tail.cut_site, batch, progress,
                                f"{adapter.family} {view.dataset}/{view.split} tokens")
    return TowerInputs(tuple(sites), pooling, frozen, cut)


def _after_cut(site: str, tail: Tail) -> bool:
    """A layer site past the cut (``*.blocks.j`` with j >= the first unfrozen block), or a
    site computed from the last layer (embedding / logits)."""
    first = tail.sites[0]
    if site.endswith((".pooled", ".head", ".logits", ".proj")):
        return True
    prefix = first.rsplit(".", 1)[0] + "."
    if site.startswith(prefix) and site[len(prefix):].isdigit():
        return int(site[len(prefix):]) >= int(first.rsplit(".", 1)[1])
    return False


class TailSet:
    """The tails of the towers being fine-tuned and every split's inputs.

    ``frozen[split]`` is the :class:`PairedFeatures` of frozen towers (what ``k = 0`` trains
    on; with the tails at their pretrained weights it equals :meth:`paired`); ``inputs[split]``
    maps ``"image"`` / ``"text"`` to :class:`TowerInputs` for the towers with a tail."""

    def __init__(self, tails: dict[str, Tail], inputs: dict[str, dict[str, TowerInputs]],
                 frozen: dict[str, PairedFeatures]) -> None:
        self.tails, self.inputs, self.frozen = tails, inputs, frozen

    def parameters(self) -> list[Any]:
        return [p for t in self.tails.values() for p in t.parameters()]

    def batch(self, split: str, rows: np.ndarray, caps: np.ndarray) -> tuple[Any, Any]:
        """``(image [B, D_image], text [B, D_text])`` of a training batch."""
        import torch

        out = []
        for modality, idx in (("image", rows), ("text", caps)):
            if modality in self.tails:
                out.append(self.inputs[split][modality].features(self.tails[modality], idx))
            else:
                out.append(torch.from_numpy(getattr(self.frozen[split], modality)[idx]))
        return out[0], out[1]

    def paired(self, split: str) -> PairedFeatures:
        """The split's features with the tails' current weights."""
        base = self.frozen[split]
        new = {m: self.inputs[split][m].all_features(t) for m, t in self.tails.items()}
        return PairedFeatures(new.get("image", base.image), new.get("text", base.text),
                              base.image_of_text, base.image_ids, base.image_digests)

    def state(self) -> dict[str, dict[str, Any]]:
        return {m: {k: v.detach().clone() for k, v in t.tower_state().items()}
                for m, t in self.tails.items()}

    def load_state(self, state: dict[str, dict[str, Any]]) -> None:
        for m, t in self.tails.items():
            t.load_tower_state(state[m])
