"""CLIP dual encoder (transformers ``CLIPModel``).

Sites (L = number of blocks of that tower; the shared layout is in
:mod:`vlprobe.models._dual`):

- ``vision.stem``: layer 0, output of ``pre_layrnorm`` = the input of block 0, ``[B, 1+P, D]``;
- ``vision.blocks.{i}``: output of ``vision_model.encoder.layers[i]`` ``[B, 1+P, D]``
  (``i = 0..L-1``; the last one is *before* ``post_layernorm``);
- ``vision.blocks.{i}.attn``: post-softmax self-attention ``[B, H, T, T]``;
- ``vision.proj``: projected image embedding (``image_embeds``, not normalised) ``[B, E]``;
- ``text.stem`` / ``text.blocks.{i}`` / ``text.blocks.{i}.attn``: the same for the text tower
  (``text.stem`` = token + position embeddings; blocks are before ``final_layer_norm``;
  text attention is causal);
- ``text.proj``: projected text embedding (``text_embeds``, not normalised) ``[B, E]``.

Default pooling: ``cls`` for the vision tower, ``eos`` for the text tower (the EOT token:
``Trace.eos_index`` is the first ``eos_token_id`` position of each row, or the argmax of
``input_ids`` for legacy configs whose ``eos_token_id`` is 2, exactly as HF CLIP pools).
Texts are truncated to 77 tokens (``max_position_embeddings``) and counted.
"""

from __future__ import annotations

from typing import Any, ClassVar

from vlprobe.models._dual import DualEncoderAdapter

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPAdapter(DualEncoderAdapter):
    """CLIP (ViT or text transformer towers) via transformers ``CLIPModel``."""

    family: ClassVar[str] = "clip"
    name: ClassVar[str] = "clip"
    summary: ClassVar[str] = "CLIP dual encoder (transformers CLIPModel): image + text towers"
    default_pooling: ClassVar[str] = "cls"
    #: per-modality default pooling (the class-level value is the vision one).
    poolings: ClassVar[dict[str, str]] = {"image": "cls", "text": "eos"}
    stems: ClassVar[dict[str, str]] = {
        "vision": "vision_model.pre_layrnorm", "text": "text_model.embeddings",
    }
    hf_config: ClassVar[str] = "CLIPConfig"
    hf_model: ClassVar[str] = "CLIPModel"

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

    def _project(self, modality: str, pooled: Any) -> Any:
        """CLIP's linear projections of the pooled CLS (image) / EOT (text) state."""
        proj = self.model.visual_projection if modality == "image" else self.model.text_projection
        return proj(pooled)

    def _eos_index(self, inputs: dict[str, Any]) -> Any:
        ids = inputs["input_ids"].cpu()
        eos = self.config.text_config.eos_token_id
        if eos == 2:  # legacy configs: EOT is the largest id
            return ids.int().argmax(dim=-1).long()
        return (ids == eos).int().argmax(dim=-1).long()
