"""Model adapters: the one place where every family is registered.

Entries are lazy (``"module:Class"``) so ``vlprobe models`` does not import torch.
"""

from __future__ import annotations

from vlprobe.models.base import Batch, ModelAdapter, ModelSpec, Trace
from vlprobe.registry import Registry

MODELS: Registry[type[ModelAdapter]] = Registry("model adapter")

# name -> "module:AdapterClass"  (filled in by the adapter modules' authors; one line each)


def load_model(spec: ModelSpec, device: str = "cpu") -> ModelAdapter:
    """Build the adapter named by ``spec.adapter`` (see ``vlprobe models``)."""
    return MODELS.get(spec.adapter).load(spec, device=device)


__all__ = ["MODELS", "Batch", "ModelAdapter", "ModelSpec", "Trace", "load_model"]
