"""Make an adapter's weights usable for gradients after an extraction loaded them.

Adapters load their weights lazily, on first use. Feature extraction runs the model under
``torch.inference_mode`` (:mod:`vlprobe.extract.extractor`), so a model first used by an
extraction holds *inference tensors* as parameters and buffers, and autograd refuses to save
them for backward ("Inference tensors cannot be saved for backward"): the differentiable image
path (V6 PGD, V8 feature visualisation) then fails in any run that extracted features from the
same model first (a linear-probe head, zero-shot class prompts).

:func:`release_inference_tensors` replaces every such parameter / buffer of the torch modules an
adapter holds (directly, in dicts / lists, or in the adapters it wraps, e.g. an aligned dual
encoder's towers) by a normal copy with the same values and ``requires_grad``; a parameter
shared by several modules (tied weights) stays shared.
"""

from __future__ import annotations

from typing import Any


def release_inference_tensors(obj: Any) -> int:
    """Replace the inference-mode parameters and buffers reachable from ``obj`` (an adapter,
    a module, or a container of them) by normal tensors; return how many were replaced."""
    return _release(obj, set(), {})


def _release(obj: Any, seen: set[int], copies: dict[int, Any]) -> int:
    import torch

    from vlprobe.models.base import ModelAdapter

    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.nn.Module):
        n = 0
        for module in obj.modules():
            for name, p in list(module._parameters.items()):
                if p is not None and p.is_inference():
                    if id(p) not in copies:
                        copies[id(p)] = torch.nn.Parameter(p.clone(),
                                                           requires_grad=p.requires_grad)
                        n += 1
                    module._parameters[name] = copies[id(p)]
            for name, b in list(module._buffers.items()):
                if b is not None and b.is_inference():
                    if id(b) not in copies:
                        copies[id(b)] = b.clone()
                        n += 1
                    module._buffers[name] = copies[id(b)]
        return n
    if isinstance(obj, ModelAdapter):
        return sum(_release(v, seen, copies) for v in vars(obj).values())
    if isinstance(obj, dict):
        return sum(_release(v, seen, copies) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_release(v, seen, copies) for v in obj)
    return 0
