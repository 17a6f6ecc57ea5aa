"""CLIP ViT-B/32 architecture + real tokenizer / image processor from the reference kit
(random weights: the kit carries configs, not weights)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vlprobe.errors import ConfigError, ModelLoadError  # noqa: E402
from vlprobe.models import load_model  # noqa: E402
from vlprobe.models.base import ModelSpec  # noqa: E402

CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 269, 49407]


@pytest.fixture(scope="module")
def clip_dir(reference_dir):
    path = reference_dir / "model_configs" / "clip-vit-base-patch32"
    if not (path / "config.json").is_file():
        pytest.skip(f"no CLIP config in the reference kit ({path})")
    return path


@pytest.fixture(scope="module")
def clip(clip_dir):
    return load_model(ModelSpec(adapter="clip", config=str(clip_dir), random_init=True, seed=0))


def test_architecture(clip):
    assert len(clip.layer_sites("image")) == 13 and len(clip.layer_sites("text")) == 13
    assert clip.layer_sites("image")[-1] == "vision.blocks.11"
    assert clip.layer_sites("text")[0] == "text.stem"
    assert clip.config.vision_config.hidden_size == 768
    assert clip.config.text_config.hidden_size == 512
    assert clip.config.projection_dim == 512
    assert clip.max_text_length() == 77
    with pytest.raises(ConfigError, match=r"Did you mean .*vision\.blocks\.11"):
        clip.check_sites(["vision.blocks.15"])


def test_real_tokenizer_and_processor(clip):
    batch = clip.prepare(["a photo of a cat."], "text")
    assert batch.inputs["input_ids"][0].tolist() == CAT_IDS
    assert clip.text_lengths(["a photo of a cat."]) == [8]
    long = clip.prepare(["a photo of a cat. " * 40, "a dog"], "text")
    assert long.n_truncated == 1
    assert long.inputs["input_ids"].shape[1] == 77
    assert long.inputs["input_ids"][0, -1].item() == 49407  # EOT kept after truncation
    from PIL import Image

    img = Image.fromarray((np.random.default_rng(0).random((300, 400, 3)) * 255).astype("uint8"))
    px = clip.prepare([img], "image").inputs["pixel_values"]
    assert tuple(px.shape) == (1, 3, 224, 224)
    ident = clip.identity()
    assert ident["preprocess"]["image"]["crop_size"] == {"height": 224, "width": 224}
    assert ident["preprocess"]["text"]["max_length"] == 77


def test_forward_shapes(clip):
    from PIL import Image

    img = Image.fromarray((np.random.default_rng(1).random((224, 224, 3)) * 255).astype("uint8"))
    trace = clip.forward(
        clip.prepare([img], "image"),
        ["vision.stem", "vision.blocks.11", "vision.blocks.11.attn", "vision.proj"],
    )
    assert tuple(trace.hidden["vision.stem"].shape) == (1, 50, 768)
    assert tuple(trace.hidden["vision.blocks.11"].shape) == (1, 50, 768)
    assert tuple(trace.attentions["vision.blocks.11.attn"].shape) == (1, 12, 50, 50)
    assert tuple(trace.hidden["vision.proj"].shape) == (1, 512)
    batch = clip.prepare(["a photo of a cat.", "a dog"], "text")
    trace = clip.forward(batch, ["text.blocks.11", "text.blocks.0.attn", "text.proj"])
    assert tuple(trace.hidden["text.blocks.11"].shape) == (2, 8, 512)
    assert tuple(trace.attentions["text.blocks.0.attn"].shape) == (2, 8, 8, 8)
    assert tuple(trace.hidden["text.proj"].shape) == (2, 512)
    assert trace.eos_index.tolist() == [7, 3]


def test_config_dir_without_weights_needs_random_init(clip_dir):
    with pytest.raises(ModelLoadError, match="random_init: true"):
        load_model(ModelSpec(adapter="clip", checkpoint=str(clip_dir)))
    spec = ModelSpec(adapter="clip", checkpoint=str(clip_dir), random_init=True)
    assert load_model(replace(spec, seed=3)).identity()["seed"] == 3
