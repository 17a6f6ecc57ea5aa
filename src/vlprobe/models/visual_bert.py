"""VisualBERT (transformers ``VisualBertModel``): text tokens and image regions in one BERT.

The fused sequence (``T = T_text + R``): ``[CLS] words [SEP] [PAD]...`` (BERT WordPiece, at most
``config.max_position_embeddings`` tokens; longer texts are cut and counted) followed by ``R``
region tokens (``visual_embeds [B, R, D_v]`` projected to the model width; padding regions
masked). Region tokens have no position limit (VisualBERT gives them all visual position 0).

Regions: ``options.regions`` (:mod:`vlprobe.models.regions`, the same keys as LXMERT):

- ``{source: grid, model: <image adapter>, site: <site>}`` (the default: ``efficientnet_lite0``
  with its packaged ImageNet weights, ``vision.head``, ``[B, 1280, 7, 7]`` at 224 px: 49
  regions): the grid cells of a CNN feature map, boxes = each cell's footprint in the
  original image (EfficientNet's centre crop accounted for);
- ``{source: file, path: <file.npz | file.safetensors>}``: per-image detector features and
  boxes keyed by image id (``image.info["image_id"]``, which ``Stimuli.payloads`` sets from
  the ``image_id`` descriptor, else the item id).

The published checkpoints (``uclanlp/visualbert-*``) expect 2048-d detector features
(``visual_embedding_dim = 2048``); EfficientNet grid features are 1280-d, so grid regions need
a model built with ``visual_embedding_dim = 1280`` (``random_init`` + a config, or your own
checkpoint). A mismatch is an error naming both numbers. ``identity()`` records where the
regions come from (the file and its sha256, or the CNN's identity and site).

Sites (L = ``config.num_hidden_layers``): ``fusion.stem`` (layer 0 = the input of block 0:
text + region embeddings after the embedding LayerNorm ``[B, T, D]``), ``fusion.blocks.{i}``
(output of ``encoder.layer[i]``), ``fusion.blocks.{i}.attn`` (``[B, H, T, T]``) and
``fusion.pooled`` (pooler output, ``tanh(W h_L[:, 0])`` ``[B, D]``). ``layer_sites("pair")`` =
stem + blocks; default pooling ``cls``. Checkpoints with ``bypass_transformer`` (text-only
encoder, then one joint layer) are not supported.

Region positions: VisualBERT gives every region visual position 0, so by default the model
does not know where a grid cell is. A config with ``region_position_offset: K`` (set by
``vlprobe train`` for its ``fusion_single`` models) gives region ``r`` the position embedding
``K + r`` through VisualBERT's ``image_text_alignment`` input (``[B, R, 1]``; rows past the
``K`` text positions, so ``max_text_length()`` is ``K``); ``K + R`` must not exceed
``max_position_embeddings``.

Text-only forward (modality ``text``): the same single-stream transformer over the text tokens
alone (``visual_embeds=None``, VisualBERT's own text-only path: no region tokens, the text
mask only). It produces the same sites (``fusion.stem``, ``fusion.blocks.{i}`` + ``.attn``
over ``[B, T_text, ...]``, ``fusion.pooled`` = the pooler on the text [CLS]);
``streams_for("text")`` is ``("fusion",)``, ``layer_sites("text")`` = ``layer_sites("pair")``,
``embedding_site("text")`` = ``fusion.pooled``. Tags as for the text part of a pair; texts are
cut at :meth:`max_text_length` (the trained models' ``region_position_offset``) as in a pair.
This is what text-only analyses (T1, T2) read on a fusion model's text stream (catalogue F7).
A paired set still runs on pairs unless ``modality: text`` is asked for.

Tags: ``[CLS]`` / ``[SEP]`` special, words text, regions image, padding pad;
``Trace.attention_mask`` = ``[text mask, region mask]`` ``[B, T]``, the mask VisualBERT
attends with; ``Trace.extras["boxes"]`` ``[B, T, 4]``: each region's box (normalised image
coordinates), NaN elsewhere. Tokenizer: ``options.tokenizer``, else the checkpoint's own, else
``google-bert/bert-base-uncased`` (the uclanlp checkpoints ship none).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from vlprobe.errors import ConfigError, ModelLoadError
from vlprobe.modality import TAG_IMAGE, TAG_PAD
from vlprobe.models._fusion import (
    SingleStreamFusion,
    region_token_boxes,
    special_ids,
)
from vlprobe.models._hooks import torch_dtype
from vlprobe.models._payloads import split_pairs, text_tags
from vlprobe.models.base import Batch, Trace
from vlprobe.models.regions import region_source


class VisualBertAdapter(SingleStreamFusion):
    """VisualBERT single-stream fusion model (transformers ``VisualBertModel``)."""

    family: ClassVar[str] = "visual_bert"
    name: ClassVar[str] = "visual_bert"
    summary: ClassVar[str] = (
        "VisualBERT single-stream fusion (transformers VisualBertModel): text tokens + image "
        "regions (CNN grid cells or a regions file)"
    )
    hf_config: ClassVar[str] = "VisualBertConfig"
    hf_model: ClassVar[str] = "VisualBertModel"
    known_options: ClassVar[tuple[str, ...]] = ("tokenizer", "regions")
    attn_module: ClassVar[str] = "attention.self"

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("pair", "text")

    def streams_for(self, modality: str) -> tuple[str, ...]:
        """A text batch runs the single fused stack too (text tokens only): ``fusion``."""
        return ("fusion",) if modality == "text" else super().streams_for(modality)

    def embedding_site(self, modality: str) -> str:
        if modality not in self.modalities:
            raise self.modality_error(modality)
        return "fusion.pooled"

    def _setup(self) -> None:
        if getattr(self.config, "bypass_transformer", False):
            raise ModelLoadError(
                "visual_bert: checkpoints with bypass_transformer=true (text-only encoder, then "
                "one joint layer) are not supported: they have no single stack of fused blocks"
            )
        offset = getattr(self.config, "region_position_offset", None)
        super()._setup()
        self._layer_sites["text"] = list(self._layer_sites["pair"])
        self.region_position_offset = None if offset is None else int(offset)
        self.visual_dim = int(self.config.visual_embedding_dim)
        #: the region source (:mod:`vlprobe.models.regions`)
        self.regions = region_source(self.spec.options.get("regions"), self.device, self.name)

    def max_text_length(self) -> int | None:
        if self.region_position_offset is not None:
            return self.region_position_offset
        return int(self.config.max_position_embeddings)

    # -- preprocessing -----------------------------------------------------------------
    def _preprocess_identity(self) -> dict[str, Any]:
        return {
            "text": self._text_identity(),
            "regions": self.regions.identity(),
        }

    def prepare(self, payloads: Sequence[Any], modality: str) -> Batch:
        """Tokens + regions: ``input_ids``, ``attention_mask``, ``token_type_ids`` ``[B, T_text]``,
        ``visual_embeds [B, R, D_v]``, ``visual_attention_mask`` / ``visual_token_type_ids``
        ``[B, R]`` (type 1, as the authors set it); ``extras["boxes"] [B, T_text + R, 4]``."""
        import torch

        if modality != "pair":
            return super().prepare(payloads, modality)  # text: tokens only; else raises
        images, texts = split_pairs(payloads, self.family)
        inputs, n_truncated, offsets = self._text_inputs(texts)
        regions = self.regions(images)
        feats, mask = regions.features, regions.mask
        if feats.shape[-1] != self.visual_dim:
            raise ConfigError(
                f"visual_bert: the regions are {feats.shape[-1]}-d "
                f"({self.regions.describe()}) but the model's visual_embedding_dim is "
                f"{self.visual_dim}. The published VisualBERT checkpoints expect 2048-d detector "
                f"features: for grid regions build the model with visual_embedding_dim="
                f"{feats.shape[-1]} (random_init + config, or your own checkpoint), or give a "
                f"regions file with {self.visual_dim}-d features (options.regions: {{source: "
                "file, path: ...})"
            )
        inputs.update(
            visual_embeds=feats,
            visual_attention_mask=mask,
            visual_token_type_ids=torch.ones_like(mask),
        )
        if self.region_position_offset is not None:
            inputs["image_text_alignment"] = self._region_positions(*feats.shape[:2])
        t_text = inputs["input_ids"].shape[1]
        return Batch("pair", inputs, n_truncated=n_truncated, offsets=offsets,
                     extras={"boxes": region_token_boxes(t_text, regions)})

    def _region_positions(self, batch: int, n_regions: int) -> Any:
        """``[B, R, 1]`` alignment ``offset + r`` (see "Region positions" above)."""
        import torch

        offset = self.region_position_offset
        limit = int(self.config.max_position_embeddings)
        if offset + n_regions > limit:
            raise ConfigError(
                f"visual_bert: {n_regions} regions from position {offset} need "
                f"{offset + n_regions} position embeddings; the model has {limit} "
                "(max_position_embeddings); use the regions the model was trained with"
            )
        return (offset + torch.arange(n_regions)).view(1, n_regions, 1).expand(
            batch, n_regions, 1).clone()

    # -- running -----------------------------------------------------------------------
    def _run(
        self, modality: str, inputs: dict[str, Any], want_attn: bool, computed: list[str]
    ) -> dict[str, Any]:
        if modality == "text":  # VisualBERT's own text-only path: no visual inputs
            out = self.model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                token_type_ids=inputs.get("token_type_ids"),
                output_attentions=want_attn,
            )
            return self._pooled(out, computed)
        out = self.model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            token_type_ids=inputs.get("token_type_ids"),
            visual_embeds=inputs["visual_embeds"].to(torch_dtype(self.spec.dtype)),
            visual_attention_mask=inputs["visual_attention_mask"],
            visual_token_type_ids=inputs["visual_token_type_ids"],
            image_text_alignment=inputs.get("image_text_alignment"),
            output_attentions=want_attn,
        )
        return self._pooled(out, computed)

    def _modality_tags(self, batch: Batch, trace: Trace) -> None:
        """Tags and the fused mask of ``[text; regions]``."""
        import torch

        text_mask = batch.inputs["attention_mask"].cpu().long()
        region_mask = batch.inputs["visual_attention_mask"].cpu().long()
        ttags = text_tags(batch.inputs["input_ids"], text_mask, special_ids(self.tokenizer))
        rtags = torch.full(region_mask.shape, TAG_IMAGE, dtype=torch.int8)
        rtags[region_mask == 0] = TAG_PAD
        trace.modality_tags = torch.cat([ttags, rtags], dim=1)
        trace.attention_mask = torch.cat([text_mask, region_mask], dim=1)
