"""What the fusion analyses share: which sites of a model they read, and tidy rows."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from vlprobe.analyses.base import FeatureSource
from vlprobe.errors import ConfigError

_CROSS_TEXT = re.compile(r"cross\.blocks\.(\d+)\.text")


def require_pairs(source: FeatureSource, analysis: str, model: str, dataset: str) -> None:
    """A clear error unless ``model`` reads (image, text) pairs and ``dataset`` has them."""
    if "pair" not in source.model_modalities(model):
        raise ConfigError(f"{analysis}: model {model!r} does not read (image, text) pairs; "
                          "it needs a fusion model (ViLT, VisualBERT, LXMERT, a captioner)")
    if "pair" not in source.dataset_modalities(dataset):
        raise ConfigError(f"{analysis}: dataset {dataset!r} has no (image, text) pairs")


def fused_sequence_sites(source: FeatureSource, analysis: str, model: str) -> list[str]:
    """Hidden-state sites whose token sequence holds both modalities, in layer order:
    a single-stream model's ``fusion.stem, fusion.blocks.*`` (its pair layer sites); a
    two-stream model's ``cross.blocks.{k}`` (each cross-modality layer's text and vision
    outputs concatenated; seed 001 reads only those layers, the streams never meet before)."""
    layers = source.layer_sites(model, "pair")
    cross = [f"cross.blocks.{m.group(1)}" for s in layers if (m := _CROSS_TEXT.fullmatch(s))]
    if cross:
        return cross
    fused = [s for s in layers if s.startswith("fusion.")]
    if not fused:
        raise ConfigError(
            f"{analysis}: model {model!r} has no sequence that holds both modalities (its "
            f"pair layers are {', '.join(layers) or 'none'}); it needs a single-stream "
            "(fusion.blocks.*) or a two-stream (cross.blocks.*) fusion model"
        )
    return fused


def fused_attention_sites(source: FeatureSource, analysis: str, model: str, what: str
                          ) -> list[str]:
    """A single-stream model's ``fusion.blocks.{i}.attn`` sites, or a clear error naming
    ``what`` the analysis needs (a model without attention sites; a two-stream model; a
    captioner)."""
    sites = source.attention_sites(model, "pair")
    if not sites:
        raise ConfigError(f"{analysis}: model {model!r} gives no attention sites (*.attn); "
                          f"{what}")
    fused = [s for s in sites if s.startswith("fusion.")]
    if not fused:
        raise ConfigError(
            f"{analysis}: model {model!r} has no single-stream self-attention over a fused "
            f"[CLS] + text + image sequence (its attention sites are {sites[0]}, ...); {what}"
        )
    return fused


def mean_se(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, standard error, n)`` over ``axis`` of the finite entries (NaN where none /
    fewer than two), without numpy's empty-slice warnings."""
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    n = ok.sum(axis)
    x = np.where(ok, values, 0.0)
    mean = np.where(n > 0, x.sum(axis) / np.maximum(n, 1), np.nan)
    dev = np.where(ok, values - np.expand_dims(mean, axis), 0.0)
    var = (dev * dev).sum(axis) / np.maximum(n - 1, 1)
    se = np.where(n > 1, np.sqrt(var / np.maximum(n, 1)), np.nan)
    return mean, se, n


def head_rows(base: dict[str, Any], values: np.ndarray, metric: str) -> list[dict[str, Any]]:
    """Rows of one layer from ``values [N, H]``: one per head (``head`` = h; mean over items,
    NaN items left out) and the layer mean over heads (``head`` = None), each with ``n`` and
    the standard error over items."""
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    mean, se, n = mean_se(values, 0)
    rows = [{**base, "metric": metric, "head": h, "value": float(mean[h]), "se": float(se[h]),
             "n": int(n[h])} for h in range(values.shape[1])]
    per_item, _, _ = mean_se(values, 1)
    m, e, k = mean_se(per_item, 0)
    rows.append({**base, "metric": metric, "head": None, "value": float(m), "se": float(e),
                 "n": int(k)})
    return rows
