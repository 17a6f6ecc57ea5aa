"""SigLIP dual encoder (transformers ``SiglipModel``, e.g. ``google/siglip-base-patch16-224``).

Sites (L = number of blocks of that tower; the shared layout is in
:mod:`vlprobe.models._dual`):

- ``vision.stem``: layer 0, patch + position embeddings ``[B, P, D]`` (no CLS token);
- ``vision.blocks.{i}``: output of ``vision_model.encoder.layers[i]`` ``[B, P, D]`` (the last
  one is *before* ``post_layernorm``); ``vision.blocks.{i}.attn`` ``[B, H, P, P]``;
- ``vision.proj``: the image embedding SigLIP compares, ``image_embeds`` before L2
  normalisation ``[B, E]``: ``post_layernorm`` then the multihead-attention-pooling ("MAP")
  head (a learned probe query attends over all patches, + MLP), i.e. the vision tower's
  ``pooler_output``; SigLIP has no separate projection matrix;
- ``text.stem``: token + position embeddings ``[B, 64, D]``; ``text.blocks.{i}`` (before
  ``final_layer_norm``) and ``text.blocks.{i}.attn`` ``[B, H, 64, 64]`` (bidirectional);
- ``text.proj``: ``text_embeds`` before L2 normalisation ``[B, E]``: ``final_layer_norm``, then
  the state at the LAST position ``T-1``, then the linear ``head``, exactly as
  ``SiglipTextModel`` pools.

Text preprocessing follows the published pipeline (the model card and transformers' SigLIP
docs: ``padding="max_length"``, "as the model was trained"): every text is padded (or
truncated, counted) to ``max_position_embeddings`` = 64 tokens with the pad token, which is
the eos token ``</s>``, and the text tower runs WITHOUT a padding mask (big_vision trained it
so: padding is attended, "sticky EOS"). Position ``T-1`` is therefore always an ``</s>``
token, whatever the length of the text, and the embedding of a text does not depend on the
other texts of its batch. ``Trace.attention_mask`` still marks the text's own tokens (its
words and its first ``</s>``; 0 on padding) for ``mean`` / ``last`` pooling; the model itself
never sees it.

Default poolings of hidden-state sites:

- vision ``mean`` (over all patches): SigLIP has no CLS token, and its own pooling (the MAP
  head) is a learned attention over all patches, whose closest parameter-free analogue at a
  hidden layer is the patch mean;
- text ``eos``: ``Trace.eos_index`` is ``T-1`` for every row, the position the model's head
  reads (an ``</s>`` token, see above), so ``eos`` pooling of the last block reproduces the
  input of the text head.

``logit_scale()`` gives ``{"scale": exp(logit_scale), "bias": logit_bias}``:
``logits_per_image = scale * cos(image, text) + bias`` (sigmoid, not softmax, gives
probabilities). Image preprocessing is the checkpoint's processor; for a bare config the
published one: bicubic resize to ``image_size`` x ``image_size`` (no crop), rescale to [0, 1],
normalise with mean = std = 0.5.
"""

from __future__ import annotations

from typing import Any, ClassVar

from vlprobe.errors import ModelLoadError
from vlprobe.models._dual import DualEncoderAdapter


class SigLIPAdapter(DualEncoderAdapter):
    """SigLIP (ViT + text transformer, sigmoid loss) via transformers ``SiglipModel``."""

    family: ClassVar[str] = "siglip"
    name: ClassVar[str] = "siglip"
    summary: ClassVar[str] = (
        "SigLIP dual encoder (transformers SiglipModel): image + text towers, sigmoid logits"
    )
    default_pooling: ClassVar[str] = "mean"
    poolings: ClassVar[dict[str, str]] = {"image": "mean", "text": "eos"}
    stems: ClassVar[dict[str, str]] = {
        "vision": "vision_model.embeddings", "text": "text_model.embeddings",
    }
    text_padding: ClassVar[str] = "max_length"
    masks_padding: ClassVar[bool] = False
    vision_class_token: ClassVar[bool] = False  # patches only (a MAP head pools them)
    hf_config: ClassVar[str] = "SiglipConfig"
    hf_model: ClassVar[str] = "SiglipModel"

    def _setup(self) -> None:
        if not getattr(self.config.vision_config, "vision_use_head", True):
            raise ModelLoadError(
                f"siglip: {self.source.ref!r} has vision_use_head: false, so SiglipModel has no "
                "image embedding (the MAP head); this adapter needs a SigLIP dual encoder"
            )
        super()._setup()

    def _default_processor(self) -> Any:
        try:
            from transformers import SiglipImageProcessorPil as Proc
        except ImportError:  # pragma: no cover - transformers < 5
            from transformers import SiglipImageProcessor as Proc
        size = int(self.config.vision_config.image_size)
        return Proc(
            size={"height": size, "width": size}, resample=3,
            image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
        )

    def _text_model_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Ids only: the published model attends to its padding (see the module docstring)."""
        return {"input_ids": inputs["input_ids"]}

    def _project(self, modality: str, pooled: Any) -> Any:
        """The towers' ``pooler_output`` already is SigLIP's embedding (MAP head / last-token
        head): no further projection."""
        return pooled

    def _eos_index(self, inputs: dict[str, Any]) -> Any:
        """``T-1`` for every row: the position ``SiglipTextModel`` pools."""
        import torch

        ids = inputs["input_ids"]
        return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long)

    def _preprocess_identity(self) -> dict[str, Any]:
        out = super()._preprocess_identity()
        out["text"]["model_attention_mask"] = False
        return out
