"""Weights that an extraction loaded under ``torch.inference_mode`` are made usable for the
differentiable image path again (``release_inference_tensors``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_models import tiny_spec
from vlprobe.models import load_model
from vlprobe.models.inference_tensors import release_inference_tensors


def _images(n=2):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


def _input_grad(adapter, site):
    px = adapter.image_pixels(_images()).requires_grad_(True)
    out = adapter.forward_differentiable(px, [site])[site]
    (grad,) = torch.autograd.grad((out ** 2).sum(), px)  # (a LayerNorm output sums to 0)
    return out.detach(), grad


@pytest.mark.parametrize("name,modality,site", [
    ("efficientnet_lite0", "image", "vision.logits"),
    ("hf_vit", "image", "vision.pooled"),
    ("aligned_dual", "text", "vision.proj"),  # a text extraction loads the trained heads
])
def test_weights_loaded_in_inference_mode_take_gradients_again(name, modality, site, tmp_path):
    adapter = load_model(tiny_spec(name, tmp_path))
    payloads = _images() if modality == "image" else ["a dog", "a cat"]
    batch = adapter.prepare(payloads, modality)
    with torch.inference_mode():  # what the extractor does; the weights load lazily here
        adapter.forward(batch, [adapter.embedding_site(modality)])
    with pytest.raises(RuntimeError, match="Inference tensors"):
        _input_grad(adapter, site)
    assert release_inference_tensors(adapter) > 0
    out, grad = _input_grad(adapter, site)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    fresh = load_model(tiny_spec(name, tmp_path))  # same seeded weights, loaded normally
    assert torch.allclose(out, _input_grad(fresh, site)[0], atol=1e-5)
    assert release_inference_tensors(adapter) == 0


def test_tied_parameters_stay_tied():
    with torch.inference_mode():
        a, b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
        b.weight = a.weight
        model = torch.nn.Sequential(a, b)
    assert release_inference_tensors({"m": [model]}) == 3  # weight once, two biases
    assert model[0].weight is model[1].weight and not model[0].weight.is_inference()
