"""Tiny, fully deterministic architectures + tokenizers for tests: one entry per registered
model adapter in :data:`TINY_SPECS` (the adapter conformance tests fail for an adapter that has
none).

Tokenizers are word-level (or WordPiece for BERT) over a fixed vocabulary built with the
``tokenizers`` library, so they need no download and no training.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlprobe.models.base import ModelSpec

_WORD_TEXT = (
    "a an the of to in on at with and or is are was were be this that it its photo picture "
    "image cat dog kitten puppy bird car house tree man woman child red blue green big small "
    "sits runs stands looks black white stock market price rises falls today very quite one "
    "two three , . ! ?"
)
WORDS = tuple(_WORD_TEXT.split())


def write_tiny_tokenizer(
    directory: str | Path,
    *,
    style: str,
    model_max_length: int = 64,
) -> dict[str, int]:
    """Write a tiny tokenizer to ``directory`` and return its special-token ids.

    Styles: ``"bert"`` (WordPiece, ``[CLS] x [SEP]``, pad ``[PAD]``), ``"clip"``
    (``<|startoftext|> x <|endoftext|>``, pad = eos like OpenAI CLIP), ``"gpt2"`` (no special
    tokens added, eos ``<|endoftext|>``, no pad), ``"llama"`` (``<s> x``, eos ``</s>``),
    ``"siglip"`` (``x </s>``, pad = eos ``</s>`` like SigLIP's sentencepiece tokenizer).
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel, WordPiece
    from transformers import PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if style == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    elif style == "clip":
        specials = ["<|startoftext|>", "<|endoftext|>", "<unk>"]
    elif style == "gpt2":
        specials = ["<|endoftext|>"]
    elif style == "llama":
        specials = ["<unk>", "<s>", "</s>"]
    elif style == "siglip":
        specials = ["<pad0>", "</s>", "<unk>"]  # SigLIP: id 1 = </s> = pad, 2 = <unk>
    else:  # pragma: no cover
        raise ValueError(style)
    vocab = {tok: i for i, tok in enumerate([*specials, *WORDS])}
    if style == "bert":
        tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    else:
        unk = {"clip": "<unk>", "gpt2": "<|endoftext|>", "llama": "<unk>", "siglip": "<unk>"}[
            style
        ]
        tok = Tokenizer(WordLevel(vocab, unk_token=unk))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
        )
    kwargs: dict[str, Any] = {"model_max_length": model_max_length}
    if style == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        kwargs.update(
            pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
            mask_token="[MASK]",
        )
    elif style == "clip":
        tok.post_processor = processors.TemplateProcessing(
            single="<|startoftext|> $A <|endoftext|>",
            special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)],
        )
        kwargs.update(
            bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
            unk_token="<unk>",
        )
    elif style == "gpt2":
        kwargs.update(eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                      unk_token="<|endoftext|>")
    elif style == "siglip":
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", 1)]
        )
        kwargs.update(eos_token="</s>", pad_token="</s>", unk_token="<unk>")
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", 1)]
        )
        kwargs.update(bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    fast.save_pretrained(str(directory))
    return {name: vocab[name] for name in specials} | {"vocab_size": len(vocab)}


def write_config(directory: str | Path, config: Any) -> Path:
    """Save a transformers config (or a plain dict) as ``directory/config.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if hasattr(config, "save_pretrained"):
        config.save_pretrained(str(directory))
    else:
        (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


# -- one tiny spec per registered adapter -------------------------------------------------
def tiny_text_config_dir(tmp_dir: str | Path, arch: str = "bert") -> Path:
    """A 2-layer, width-32, 2-head config of ``arch`` (bert | gpt2 | llama) + tokenizer."""
    from transformers import BertConfig, GPT2Config, LlamaConfig

    d = Path(tmp_dir) / f"tiny_{arch}"
    ids = write_tiny_tokenizer(d, style=arch, model_max_length=32)
    vocab = ids["vocab_size"]
    if arch == "bert":
        config = BertConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=32, pad_token_id=0,
        )
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=32,
            bos_token_id=0, eos_token_id=0,
        )
    elif arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, intermediate_size=64, max_position_embeddings=32,
            bos_token_id=1, eos_token_id=2,
        )
    else:  # pragma: no cover
        raise ValueError(arch)
    write_config(d, config)
    return d


def _text(adapter: str, default_arch: str):
    def build(tmp_dir: str | Path, seed: int = 0, arch: str = default_arch) -> ModelSpec:
        d = tiny_text_config_dir(tmp_dir, arch)
        return ModelSpec(adapter=adapter, config=str(d), random_init=True, seed=seed)

    return build


def tiny_clip(tmp_dir: str | Path, seed: int = 0) -> ModelSpec:
    """2+2 layers, width 32, 2 heads, 32 px images (patch 8), a tiny word-level tokenizer
    written next to the config; random weights."""
    from transformers import CLIPConfig

    d = Path(tmp_dir) / "tiny_clip"
    ids = write_tiny_tokenizer(d, style="clip", model_max_length=16)
    config = CLIPConfig(
        text_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "vocab_size": ids["vocab_size"],
            "max_position_embeddings": 16, "bos_token_id": ids["<|startoftext|>"],
            "eos_token_id": ids["<|endoftext|>"], "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
        },
        projection_dim=16,
    )
    write_config(d, config)
    return ModelSpec(adapter="clip", config=str(d), random_init=True, seed=seed)


def tiny_vit(tmp_dir: str | Path, seed: int = 0) -> ModelSpec:
    """2 layers, width 32, 2 heads, 32 px images, patch 8; random weights."""
    from transformers import ViTConfig

    d = write_config(
        Path(tmp_dir) / "tiny_vit",
        ViTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, image_size=32, patch_size=8,
        ),
    )
    return ModelSpec(adapter="hf_vit", config=str(d), random_init=True, seed=seed)


def tiny_resnet(tmp_dir: str | Path, seed: int = 0) -> ModelSpec:
    """Two stages (8 and 16 channels, one basic block each), 32 px images."""
    from transformers import ResNetConfig

    d = write_config(
        Path(tmp_dir) / "tiny_resnet",
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"),
    )
    return ModelSpec(
        adapter="hf_resnet", config=str(d), random_init=True, seed=seed,
        options={"image_size": 32},
    )


def tiny_efficientnet(tmp_dir: str | Path, seed: int = 0) -> ModelSpec:
    """The real Lite0 architecture with seeded random weights at 64 px (fast)."""
    return ModelSpec(
        adapter="efficientnet_lite0", random_init=True, seed=seed, options={"image_size": 64},
    )


def tiny_vilt(tmp_dir: str | Path, seed: int = 0) -> ModelSpec:
    """2 layers, width 32, 2 heads, patch 8 (position grid 4 x 4 at image_size 32), 40 text
    positions; a tiny BERT tokenizer and a ViLT image processor (shorter side 32, sizes
    rounded to multiples of 8) written next to the config; random weights."""
    from transformers import ViltConfig

    try:
        from transformers import ViltImageProcessorPil as Proc
    except ImportError:  # pragma: no cover
        from transformers import ViltImageProcessor as Proc

    d = Path(tmp_dir) / "tiny_vilt"
    ids = write_tiny_tokenizer(d, style="bert", model_max_length=40)
    config = ViltConfig(
        vocab_size=ids["vocab_size"], hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8,
        max_position_embeddings=40, pad_token_id=0,
    )
    write_config(d, config)
    Proc(size={"shortest_edge": 32}, size_divisor=8).save_pretrained(str(d))
    return ModelSpec(adapter="vilt", config=str(d), random_init=True, seed=seed)


def tiny_visual_bert(tmp_dir: str | Path, seed: int = 0) -> ModelSpec:
    """2 layers, width 32, 2 heads, 40 text positions, visual_embedding_dim 1280: regions are
    the 2 x 2 grid cells of a random-init EfficientNet-Lite0 ``vision.head`` at 64 px."""
    from transformers import VisualBertConfig

    d = Path(tmp_dir) / "tiny_visual_bert"
    ids = write_tiny_tokenizer(d, style="bert", model_max_length=40)
    config = VisualBertConfig(
        vocab_size=ids["vocab_size"], hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=40,
        visual_embedding_dim=1280, pad_token_id=0,
    )
    write_config(d, config)
    regions = {
        "source": "grid", "site": "vision.head",
        "model": {"adapter": "efficientnet_lite0", "random_init": True, "seed": 0,
                  "options": {"image_size": 64}},
    }
    return ModelSpec(
        adapter="visual_bert", config=str(d), random_init=True, seed=seed,
        options={"regions": regions},
    )


def tiny_aligned_dual(tmp_dir: str | Path, seed: int = 0) -> ModelSpec:
    """A `vlprobe train` checkpoint over the tiny ViT and BERT towers with seeded, untrained
    linear heads (what the aligned_dual adapter loads; training itself is tested elsewhere)."""
    from dataclasses import asdict

    import torch

    from vlprobe.train.checkpoint import save_checkpoint
    from vlprobe.train.heads import aligned_heads

    towers = Path(tmp_dir) / f"tiny_aligned_towers_{seed}"
    image = {**asdict(tiny_vit(towers, seed)), "sites": ["vision.pooled"], "pooling": None}
    text = {**asdict(_text("hf_text", "bert")(towers, seed)),
            "sites": ["text.pooled"], "pooling": None}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = aligned_heads(32, 32, 16, "linear")
    out = Path(tmp_dir) / f"tiny_aligned_dual_{seed}"
    config = {"kind": "aligned", "adapter": "aligned_dual", "name": "tiny",
              "image_tower": image, "text_tower": text, "image_dim": 32, "text_dim": 32,
              "head": {"kind": "linear", "embed_dim": 16, "hidden": 1024}}
    save_checkpoint(out, dict(heads.state_dict()), config, {"note": "untrained test heads"})
    return ModelSpec(adapter="aligned_dual", checkpoint=str(out), seed=seed)


def tiny_grid_captioner(tmp_dir: str | Path, seed: int = 0) -> ModelSpec:
    """A `vlprobe train` captioner checkpoint: the tiny EfficientNet-Lite0 tower (64 px,
    ``vision.blocks.15`` = 320 channels at 2 x 2, pooled ``grid2``) + a seeded, untrained
    ``grid_transformer`` decoder (2 blocks, width 32, 2 heads, 16 positions) over a word
    vocabulary of :data:`WORDS` (training itself is tested in test_train_captioner.py)."""
    from dataclasses import asdict

    import torch

    from vlprobe.captioning.decoders import build_decoder, check_decoder_config
    from vlprobe.captioning.vocab import SPECIALS, build_tokenizer
    from vlprobe.train.checkpoint import save_checkpoint

    tower = {**asdict(tiny_efficientnet(tmp_dir, seed)), "sites": ["vision.blocks.15"],
             "pooling": "grid2"}
    decoder_cfg = check_decoder_config({"width": 32, "layers": 2, "heads": 2, "ffn": 64,
                                        "max_words": 14, "min_count": 1, "dropout": 0.0})
    vocab = [*SPECIALS, *dict.fromkeys(WORDS)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = build_decoder(decoder_cfg, 320, 2, len(vocab))
    out = Path(tmp_dir) / f"tiny_grid_captioner_{seed}"
    config = {"kind": "captioner", "adapter": "grid_captioner", "name": "tiny",
              "image_tower": tower, "feature_dim": 320, "grid": 2, "decoder": decoder_cfg,
              "decode": {"max_length": 12, "num_beams": 1}}
    save_checkpoint(out, decoder.state_tensors(), config, {"note": "untrained test decoder"})
    build_tokenizer(vocab, decoder.max_positions).save_pretrained(str(out))
    return ModelSpec(adapter="grid_captioner", checkpoint=str(out), seed=seed)


def tiny_lxmert(tmp_dir: str | Path, seed: int = 0) -> ModelSpec:
    """2 language, 1 object-relationship, 2 cross layers, width 32, 2 heads; regions = the
    4 x 4 cells of the tiny ResNet's ``vision.stages.1`` map (16 channels) at 32 px."""
    from transformers import LxmertConfig

    d = Path(tmp_dir) / "tiny_lxmert"
    ids = write_tiny_tokenizer(d, style="bert", model_max_length=32)
    config = LxmertConfig(
        vocab_size=ids["vocab_size"], hidden_size=32, num_attention_heads=2,
        intermediate_size=64, l_layers=2, r_layers=1, x_layers=2, visual_feat_dim=16,
        visual_pos_dim=4, max_position_embeddings=32,
    )
    write_config(d, config)
    cnn = tiny_resnet(tmp_dir)
    regions = {
        "source": "grid", "site": "vision.stages.1",
        "model": {"adapter": "hf_resnet", "config": cnn.config, "random_init": True, "seed": 0,
                  "options": {"image_size": 32}},
    }
    return ModelSpec(
        adapter="lxmert", config=str(d), random_init=True, seed=seed,
        options={"regions": regions},
    )


def tiny_captioner(tmp_dir: str | Path, seed: int = 0) -> ModelSpec:
    """vit-gpt2 in miniature: ViT encoder (2 blocks, width 32, 32 px, patch 8 -> 1 + 16
    tokens) + GPT-2 decoder with cross-attention (2 blocks, width 32, 16 positions); the
    GPT-2-style word-level tokenizer (start = eos = pad = id 0) and a ViT image processor
    (mean = std = 0.5, like vit-gpt2) written next to the config."""
    from transformers import GPT2Config, VisionEncoderDecoderConfig, ViTConfig

    try:
        from transformers import ViTImageProcessorPil as Proc
    except ImportError:  # pragma: no cover - older transformers
        from transformers import ViTImageProcessor as Proc

    d = Path(tmp_dir) / "tiny_captioner"
    ids = write_tiny_tokenizer(d, style="gpt2", model_max_length=16)
    eos = ids["<|endoftext|>"]
    encoder = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8,
    )
    decoder = GPT2Config(
        vocab_size=ids["vocab_size"], n_embd=32, n_layer=2, n_head=2, n_positions=16,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, add_cross_attention=True,
        is_decoder=True, tie_word_embeddings=False,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = eos
    config.bos_token_id = eos
    write_config(d, config)
    Proc(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
         resample=2).save_pretrained(str(d))
    return ModelSpec(adapter="vision_encoder_decoder", config=str(d), random_init=True,
                     seed=seed)


def tiny_siglip(tmp_dir: str | Path, seed: int = 0) -> ModelSpec:
    """2+2 layers, width 32, 2 heads, 32 px images (patch 8, 16 patches, MAP head), texts
    padded to 16 tokens with ``</s>``; random weights."""
    from transformers import SiglipConfig

    d = Path(tmp_dir) / "tiny_siglip"
    ids = write_tiny_tokenizer(d, style="siglip", model_max_length=16)
    config = SiglipConfig(
        text_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "vocab_size": ids["vocab_size"],
            "max_position_embeddings": 16, "pad_token_id": ids["</s>"],
            "eos_token_id": ids["</s>"], "bos_token_id": None,
        },
        vision_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
        },
    )
    write_config(d, config)
    return ModelSpec(adapter="siglip", config=str(d), random_init=True, seed=seed)


def tiny_open_clip(tmp_dir: str | Path, seed: int = 0) -> ModelSpec:
    """An open_clip ``local-dir`` model: ViT 2 blocks, width 32, 2 heads, 32 px (patch 8);
    text transformer 2 blocks, width 32, context 16 (open_clip's BPE tokenizer); random
    weights. Written without importing open_clip (an optional extra)."""
    d = Path(tmp_dir) / "tiny_open_clip"
    d.mkdir(parents=True, exist_ok=True)
    cfg = {
        "model_cfg": {
            "embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16,
                           "patch_size": 8},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                         "layers": 2},
        },
        "preprocess_cfg": {},
    }
    (d / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    return ModelSpec(adapter="open_clip", random_init=True, seed=seed, options={"model": str(d)})


#: registered adapter name -> builder ``(tmp_dir, seed=0, **kw) -> ModelSpec``.
TINY_SPECS: dict[str, Callable[..., ModelSpec]] = {
    "clip": tiny_clip,
    "hf_text": _text("hf_text", "bert"),
    "minilm_l6": _text("minilm_l6", "bert"),
    "smollm2_135m": _text("smollm2_135m", "llama"),
    "hf_vit": tiny_vit,
    "hf_resnet": tiny_resnet,
    "efficientnet_lite0": tiny_efficientnet,
    "aligned_dual": tiny_aligned_dual,
    "vilt": tiny_vilt,
    "visual_bert": tiny_visual_bert,
    "lxmert": tiny_lxmert,
    "vision_encoder_decoder": tiny_captioner,
    "grid_captioner": tiny_grid_captioner,
    "siglip": tiny_siglip,
    "open_clip": tiny_open_clip,
}


def tiny_spec(name: str, tmp_dir: str | Path, seed: int = 0, **kw: Any) -> ModelSpec:
    """The tiny spec of registered adapter ``name`` (KeyError names the missing entry)."""
    if name not in TINY_SPECS:
        raise KeyError(f"adapter {name!r} has no tiny spec in tests/tiny_models.py TINY_SPECS")
    return TINY_SPECS[name](tmp_dir, seed=seed, **kw)
