"""CLIP dual encoder (transformers ``CLIPModel``).

Sites (L = number of blocks of that tower):

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

from vlprobe.models._hf import HFAdapter, transformer_tower_sites
from vlprobe.models._hooks import HookTarget

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
        self._sites = transformer_tower_sites(
            "vision", self.n_vision, final="proj"
        ) + transformer_tower_sites("text", self.n_text, final="proj")
        self._layer_sites = {
            "image": ["vision.stem"] + [f"vision.blocks.{i}" for i in range(self.n_vision)],
            "text": ["text.stem"] + [f"text.blocks.{i}" for i in range(self.n_text)],
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
            "vision.stem": HookTarget("vision_model.pre_layrnorm"),
            "text.stem": HookTarget("text_model.embeddings"),
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
            if "vision.proj" in computed:
                return {"vision.proj": model.visual_projection(out.pooler_output)}
            return {}
        out = model.text_model(
            input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), **kw
        )
        if "text.proj" in computed:
            return {"text.proj": model.text_projection(out.pooler_output)}
        return {}

    def _eos_index(self, inputs: dict[str, Any]) -> Any:
        ids = inputs["input_ids"].cpu()
        eos = self.config.text_config.eos_token_id
        if eos == 2:  # legacy configs: EOT is the largest id
            return ids.int().argmax(dim=-1).long()
        return (ids == eos).int().argmax(dim=-1).long()

    def embedding_site(self, modality: str) -> str:
        """``vision.proj`` / ``text.proj``: the projected embeddings (L2-normalise them for
        the model's cosine similarities)."""
        return {"image": "vision.proj", "text": "text.proj"}[modality]

    def logit_scale(self) -> dict[str, float | None]:
        """``{"scale": exp(logit_scale), "bias": None}``: image-text logits are
        ``scale * cos(image, text)`` (SigLIP adds a bias)."""
        return {"scale": float(self.model.logit_scale.detach().exp()), "bias": None}
