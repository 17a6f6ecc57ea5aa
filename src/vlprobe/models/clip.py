"""CLIP dual encoder (transformers ``CLIPModel``).

Sites (L = number of blocks of that tower):

- ``vision.embed``: layer 0, output of ``pre_layrnorm`` = the input of block 0, ``[B, 1+P, D]``;
- ``vision.blocks.{i}``: output of ``vision_model.encoder.layers[i]`` ``[B, 1+P, D]``
  (``i = 0..L-1``; the last one is *before* ``post_layernorm``);
- ``vision.blocks.{i}.attn``: post-softmax self-attention ``[B, H, T, T]``;
- ``vision.embedding``: projected image embedding (``image_embeds``, not normalised) ``[B, E]``;
- ``text.embed`` / ``text.blocks.{i}`` / ``text.blocks.{i}.attn``: the same for the text tower
  (``text.embed`` = token + position embeddings; blocks are before ``final_layer_norm``;
  text attention is causal);
- ``text.embedding``: projected text embedding (``text_embeds``, not normalised) ``[B, E]``.

Default pooling: ``cls`` for the vision tower, ``eos`` for the text tower (the EOT token:
``Trace.eos_index`` is the first ``eos_token_id`` position of each row, or the argmax of
``input_ids`` for legacy configs whose ``eos_token_id`` is 2, exactly as HF CLIP pools).
Texts are truncated to 77 tokens (``max_position_embeddings``) and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vlprobe.models._hf import HFAdapter, pool_tokens, transformer_tower_sites
from vlprobe.models._hooks import HookTarget
from vlprobe.models.base import ModelSpec

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPAdapter(HFAdapter):
    """CLIP (ViT or text transformer towers) via transformers ``CLIPModel``."""

    family: ClassVar[str] = "clip"
    name: ClassVar[str] = "clip"
    summary: ClassVar[str] = "CLIP dual encoder (transformers CLIPModel): image + text towers"
    default_pooling: ClassVar[str] = "cls"
    #: per-modality default pooling (the class-level value is the vision one).
    poolings: ClassVar[dict[str, str]] = {"image": "cls", "text": "eos"}

    @classmethod
    def offline_status(cls) -> tuple[bool, str]:
        return (False, "needs checkpoint: hub id (online) or local dir; or random_init + config")

    @classmethod
    def _config_class(cls) -> Any:
        from transformers import CLIPConfig

        return CLIPConfig

    def _model_class(self) -> Any:
        from transformers import CLIPModel

        return CLIPModel

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("image", "text")

    def pooling_for(self, modality: str) -> str:
        """Default pooling of a hidden-state site of ``modality``'s tower."""
        return self.poolings[modality]

    def _setup(self) -> None:
        self.n_vision = int(self.config.vision_config.num_hidden_layers)
        self.n_text = int(self.config.text_config.num_hidden_layers)
        self._sites = transformer_tower_sites("vision", self.n_vision) + transformer_tower_sites(
            "text", self.n_text
        )
        self._layer_sites = {
            "image": ["vision.embed"] + [f"vision.blocks.{i}" for i in range(self.n_vision)],
            "text": ["text.embed"] + [f"text.blocks.{i}" for i in range(self.n_text)],
        }

    def max_text_length(self) -> int | None:
        return int(self.config.text_config.max_position_embeddings)

    def _default_processor(self) -> Any:
        try:
            from transformers import CLIPImageProcessorPil as Proc
        except ImportError:  # pragma: no cover
            from transformers import CLIPImageProcessor as Proc
        size = int(self.config.vision_config.image_size)
        return Proc(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size},
            image_mean=list(_CLIP_MEAN), image_std=list(_CLIP_STD), resample=3,
        )

    def _hook_table(self) -> dict[str, HookTarget]:
        table: dict[str, HookTarget] = {
            "vision.embed": HookTarget("vision_model.pre_layrnorm"),
            "text.embed": HookTarget("text_model.embeddings"),
        }
        for tower, n in (("vision", self.n_vision), ("text", self.n_text)):
            for i in range(n):
                path = f"{tower}_model.encoder.layers.{i}"
                table[f"{tower}.blocks.{i}"] = HookTarget(path)
                table[f"{tower}.blocks.{i}.attn"] = HookTarget(f"{path}.self_attn", "attn")
        return table

    def _run(
        self, modality: str, inputs: dict[str, Any], want_attn: bool, computed: list[str]
    ) -> dict[str, Any]:
        model = self.model
        kw = {"output_attentions": True} if want_attn else {}
        if modality == "image":
            out = model.vision_model(pixel_values=inputs["pixel_values"], **kw)
            if "vision.embedding" in computed:
                return {"vision.embedding": model.visual_projection(out.pooler_output)}
            return {}
        out = model.text_model(
            input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), **kw
        )
        if "text.embedding" in computed:
            return {"text.embedding": model.text_projection(out.pooler_output)}
        return {}

    def _eos_index(self, inputs: dict[str, Any]) -> Any:
        ids = inputs["input_ids"].cpu()
        eos = self.config.text_config.eos_token_id
        if eos == 2:  # legacy configs: EOT is the largest id
            return ids.int().argmax(dim=-1).long()
        return (ids == eos).int().argmax(dim=-1).long()

    # -- conveniences ------------------------------------------------------------------
    def _encode(self, payloads: Sequence[Any], modality: str, batch_size: int) -> np.ndarray:
        site = self.embedding_site(modality)
        chunks = []
        for start in range(0, len(payloads), batch_size):
            batch = self.prepare(payloads[start : start + batch_size], modality)
            chunks.append(self.forward(batch, [site]).hidden[site].numpy())
        dim = int(self.config.projection_dim)
        return np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)

    def encode_image(self, images: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        """Projected image embeddings ``[N, E]`` (float32, NOT L2-normalised: normalise
        yourself for cosine similarity / zero-shot)."""
        return self._encode(list(images), "image", batch_size)

    def encode_text(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Projected text embeddings ``[N, E]`` (float32, NOT L2-normalised)."""
        return self._encode(list(texts), "text", batch_size)

    def pooled(self, trace: Any, site: str) -> Any:
        """A site of ``trace`` pooled with this model's default for its tower."""
        x = trace.hidden[site]
        if x.ndim == 2:
            return x
        modality = "image" if site.startswith("vision.") else "text"
        return pool_tokens(x, trace.attention_mask, self.pooling_for(modality), trace.eos_index)

    # -- tests -------------------------------------------------------------------------
    @classmethod
    def tiny_spec(cls, tmp_dir: str | Path, seed: int = 0) -> ModelSpec:
        """2+2 layers, width 32, 2 heads, 32 px images (patch 8), a tiny word-level tokenizer
        written next to the config; random weights."""
        from transformers import CLIPConfig

        from vlprobe.models._tiny import write_config, write_tiny_tokenizer

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
