"""ViLT (transformers ``ViltModel``): text tokens and image patches in one transformer.

The fused sequence (``T = T_text + T_image``):

- text part ``[CLS] words [SEP] [PAD]...``: BERT WordPiece, at most
  ``config.max_position_embeddings`` (40) tokens; longer texts are cut and counted;
- image part ``[image CLS] patch_1 ... patch_N`` (+ padding patches): ``T_image = 1 + N``,
  ``N`` = the most patches of any image of the batch.

Sites (L = ``config.num_hidden_layers``):

- ``fusion.stem``: layer 0 = the input of block 0: text + image embeddings with their
  modality-type embeddings, concatenated ``[B, T, D]`` (HF's ``hidden_states[0]``);
- ``fusion.blocks.{i}``: output of ``encoder.layer[i]`` ``[B, T, D]`` (the last one is before
  the final ``layernorm``, like HF's ``hidden_states[L]``);
- ``fusion.blocks.{i}.attn``: post-softmax self-attention ``[B, H, T, T]``;
- ``fusion.pooled``: the pooler output ``tanh(W layernorm(h_L)[:, 0])`` ``[B, D]``.

``layer_sites("pair")`` = ``fusion.stem, fusion.blocks.0 .. L-1``; default pooling ``cls`` (the
text ``[CLS]`` the pooler reads).

Image tokens in raster order (one documented difference from HF): HF's
``ViltEmbeddings.visual_embed`` draws the image tokens with ``torch.multinomial`` (it shuffles
the patches of the batch's largest image and picks padding patches at random, the original
ViLT training code's sampling), so token positions would change from run to run. vlprobe
computes the same embeddings with the same modules (patch projection, bilinearly interpolated
position embeddings, image CLS) but keeps the valid patches in raster order and pads with the
image's padding patches in raster order (cycled); the model then runs with
``image_embeds=`` (HF's own forward otherwise). Patch ``k`` of an image with ``h x w`` valid
patches is at grid row ``k // w``, column ``k % w``. The unit tests check every unmasked hidden
state against HF's own pixel path after undoing its permutation. Where
``config.max_image_length > 0`` and an image has more patches, HF samples a random subset;
vlprobe keeps an evenly spaced subset (raster order) and counts the item in
``Batch.n_truncated`` (the published checkpoints use -1: all patches). An item counts once
even when both its text and its image were cut.

Tags (``Trace.modality_tags``): text ``[CLS]`` / ``[SEP]`` and the image CLS ``special``,
words ``text``, patches ``image``, text and patch padding ``pad``. ``Trace.attention_mask`` is
the fused mask ``[B, T]`` exactly as ``ViltEmbeddings`` builds it (text mask, 1 for the image
CLS, the patch mask). ``Trace.extras["boxes"]`` ``[B, T, 4]``: patch ``(r, c)`` of an image
with ``h x w`` valid patches covers ``(c/w, r/h, (c+1)/w, (r+1)/h)`` of the original image
(the processor resizes the whole image, without cropping, to a multiple of the patch size);
NaN elsewhere.

Preprocessing: the checkpoint's ``ViltImageProcessor`` (``dandelin/vilt-b32-mlm``: shorter side
384, longer side at most 640, both rounded down to multiples of 32, bicubic; rescale to [0, 1];
mean = std = 0.5; pad to the batch's largest image with a pixel mask). For ``random_init``
from a bare config the documented default is the same processor with ``shortest_edge =
config.image_size`` and ``size_divisor = config.patch_size``. Tokenizer: ``options.tokenizer``,
else the checkpoint's own, else ``google-bert/bert-base-uncased``
(:func:`vlprobe.models._fusion.load_bert_tokenizer`).

No text-only forward (modality ``text``; catalogue F7 uses ``visual_bert`` / ``lxmert``): HF's
``ViltModel`` refuses to run without pixels or image embeddings, and ViLT's transformer was
initialised from an ImageNet ViT and then trained only on image-text pairs (every pretraining
input carries an image CLS and patches), so a sequence of text tokens alone is not a stream the
model ever computed, unlike VisualBERT (BERT weights, a native text-only path) or LXMERT (its
language layers never see the image). Asking for ``text`` inputs is a ConfigError saying so
(:attr:`ViltAdapter.unsupported_modalities`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from vlprobe.modality import TAG_IMAGE, TAG_PAD, TAG_SPECIAL
from vlprobe.models._fusion import (
    SingleStreamFusion,
    nan_boxes,
    special_ids,
)
from vlprobe.models._payloads import split_pairs, text_tags
from vlprobe.models.base import Batch, Trace
from vlprobe.models.hf_preprocess import processor_identity, to_rgb


@dataclass(frozen=True)
class PatchLayout:
    """Which patches of the padded patch grid become image tokens, per image.

    Attributes:
        grid: ``(gh, gw)`` patch rows / columns of the padded batch.
        valid_hw: ``[B, 2]`` long, valid patch rows ``h`` and columns ``w`` of each image.
        select: ``[B, N]`` long, index into the flattened ``gh * gw`` grid of each image token
            after the image CLS (raster order).
        keep: ``[B, N]`` long, 1 for a real patch, 0 for a padding patch.
        cut: ``[B]`` bool, images that had more than ``max_image_length`` patches.
    """

    grid: tuple[int, int]
    valid_hw: Any
    select: Any
    keep: Any
    cut: Any


def patch_layout(pixel_mask: Any, patch: int, max_image_length: int) -> PatchLayout:
    """The deterministic version of ``ViltEmbeddings.visual_embed``'s token selection.

    ``pixel_mask`` ``[B, H, W]`` (1 = real pixel) is reduced to the patch grid exactly as HF
    does it (nearest interpolation), then each image keeps its ``h x w`` valid patches in
    raster order, subsampled evenly to ``max_image_length`` where that is > 0 and smaller,
    and is padded to the batch's longest with its padding patches in raster order (cycled).
    """
    import torch

    gh, gw = pixel_mask.shape[1] // patch, pixel_mask.shape[2] // patch
    x_mask = torch.nn.functional.interpolate(
        pixel_mask[:, None].float(), size=(gh, gw)
    ).long()[:, 0]
    hs = x_mask.sum(dim=1)[:, 0]
    ws = x_mask.sum(dim=2)[:, 0]
    counts = hs * ws
    n = int(counts.max())
    if max_image_length is not None and max_image_length > 0:
        n = min(n, int(max_image_length))
    flat = x_mask.flatten(1)
    select, keep, cut = [], [], []
    for row in range(flat.shape[0]):
        valid = flat[row].nonzero().flatten()
        pad = (flat[row] == 0).nonzero().flatten()
        if len(valid) >= n:
            idx = torch.linspace(0, len(valid) - 1, n).round().long() if n else valid[:0]
            select.append(valid[idx])
            keep.append(torch.ones(n, dtype=torch.long))
        else:
            extra = pad[torch.arange(n - len(valid)) % len(pad)]
            select.append(torch.cat([valid, extra]))
            keep.append(torch.cat([torch.ones(len(valid)), torch.zeros(len(extra))]).long())
        cut.append(len(valid) > n)
    return PatchLayout(
        grid=(gh, gw),
        valid_hw=torch.stack([hs, ws], dim=1),
        select=torch.stack(select),
        keep=torch.stack(keep),
        cut=torch.tensor(cut),
    )


class ViltAdapter(SingleStreamFusion):
    """ViLT single-stream fusion model (transformers ``ViltModel``)."""

    family: ClassVar[str] = "vilt"
    name: ClassVar[str] = "vilt"
    summary: ClassVar[str] = (
        "ViLT single-stream fusion (transformers ViltModel): text tokens + image patches"
    )
    hf_config: ClassVar[str] = "ViltConfig"
    hf_model: ClassVar[str] = "ViltModel"
    known_options: ClassVar[tuple[str, ...]] = ("tokenizer",)
    attn_module: ClassVar[str] = "attention.attention"
    unsupported_modalities: ClassVar[dict[str, str]] = {
        "text": "ViLT has no text-only forward (transformers' ViltModel needs an image, and "
                "the model was only ever trained on image-text pairs); probe a fusion model's "
                "text stream with visual_bert or lxmert (modality text), or run vilt on pairs",
    }

    def _setup(self) -> None:
        super()._setup()
        self.patch = int(self.config.patch_size)

    def max_text_length(self) -> int | None:
        return int(self.config.max_position_embeddings)

    def _max_image_length(self) -> int:
        value = getattr(self.config, "max_image_length", -1)
        return int(value) if isinstance(value, int) else -1

    # -- preprocessing -----------------------------------------------------------------
    def _default_processor(self) -> Any:
        try:
            from transformers import ViltImageProcessorPil as Proc
        except ImportError:  # pragma: no cover - transformers < 5
            from transformers import ViltImageProcessor as Proc
        return Proc(
            size={"shortest_edge": int(self.config.image_size)}, size_divisor=self.patch,
            resample=3, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_pad=True,
        )

    def _preprocess_identity(self) -> dict[str, Any]:
        image = processor_identity(self.processor)
        for key in ("size_divisor", "do_pad"):
            image[key] = getattr(self.processor, key, None)
        return {
            "text": self._text_identity(),
            "image": image,
            "image_tokens": {"order": "raster", "max_image_length": self._max_image_length()},
        }

    def _image_inputs(self, images: Sequence[Any]) -> dict[str, Any]:
        """``pixel_values [B, 3, H, W]`` and ``pixel_mask [B, H, W]`` (padded batch)."""
        import torch

        out = self.processor(images=to_rgb(images), return_tensors="pt")
        pixels = out["pixel_values"]
        mask = out.get("pixel_mask")
        if mask is None:
            mask = torch.ones(pixels.shape[0], *pixels.shape[2:], dtype=torch.long)
        return {"pixel_values": pixels, "pixel_mask": mask}

    def _layout(self, inputs: dict[str, Any]) -> PatchLayout:
        return patch_layout(inputs["pixel_mask"].cpu(), self.patch, self._max_image_length())

    def prepare(self, payloads: Sequence[Any], modality: str) -> Batch:
        if modality != "pair":
            return super().prepare(payloads, modality)  # raises: pairs only (no text path)
        images, texts = split_pairs(payloads, self.family)
        inputs, _, offsets = self._text_inputs(texts)
        inputs.update(self._image_inputs(images))
        layout = self._layout(inputs)
        max_len = self.max_text_length()
        cut_text = [n > max_len for n in self.text_lengths([str(t) for t in texts])]
        n_cut = sum(1 for t, i in zip(cut_text, layout.cut.tolist()) if t or i)
        boxes = self._boxes(layout, inputs["input_ids"].shape[1])
        return Batch("pair", inputs, n_truncated=n_cut, offsets=offsets, extras={"boxes": boxes})

    @staticmethod
    def _boxes(layout: PatchLayout, t_text: int) -> Any:
        """``[B, T, 4]``: each real patch's box in the original image, NaN elsewhere."""
        import torch

        b, n = layout.select.shape
        boxes = nan_boxes(b, t_text + 1 + n)
        gw = layout.grid[1]
        rows = (layout.select // gw).float()
        cols = (layout.select % gw).float()
        h = layout.valid_hw[:, :1].float()
        w = layout.valid_hw[:, 1:].float()
        patch_boxes = torch.stack([cols / w, rows / h, (cols + 1) / w, (rows + 1) / h], dim=-1)
        patch_boxes[layout.keep == 0] = float("nan")
        boxes[:, t_text + 1:] = patch_boxes
        return boxes

    # -- running -----------------------------------------------------------------------
    def image_embeds(self, inputs: dict[str, Any]) -> tuple[Any, Any]:
        """(``[B, 1 + N, D]`` image embeddings before the modality-type embedding, ``[B, 1 + N]``
        mask): ``ViltEmbeddings.visual_embed`` with the tokens of :func:`patch_layout`."""
        import torch
        import torch.nn.functional as F

        emb = self.model.embeddings
        layout = self._layout(inputs)
        dev = inputs["pixel_values"].device
        x = emb.patch_embeddings(inputs["pixel_values"])  # [B, D, gh, gw]
        b, d, gh, gw = x.shape
        side = int(self.config.image_size) // self.patch
        spatial = emb.position_embeddings[:, 1:, :].transpose(1, 2).view(1, d, side, side)
        pos = torch.cat([
            F.pad(
                F.interpolate(spatial, size=(h, w), mode="bilinear", align_corners=True),
                (0, gw - w, 0, gh - h),
            )
            for h, w in layout.valid_hw.tolist()
        ])
        pos = pos.flatten(2).transpose(1, 2)
        x = x.flatten(2).transpose(1, 2)
        index = layout.select.to(dev)[..., None].expand(-1, -1, d)
        x = torch.gather(x, 1, index) + torch.gather(pos, 1, index)
        cls = emb.cls_token.expand(b, -1, -1) + emb.position_embeddings[:, :1, :]
        mask = torch.cat([torch.ones(b, 1, dtype=torch.long), layout.keep], dim=1)
        return emb.dropout(torch.cat([cls, x], dim=1)), mask.to(dev)

    def _run(
        self, modality: str, inputs: dict[str, Any], want_attn: bool, computed: list[str]
    ) -> dict[str, Any]:
        embeds, mask = self.image_embeds(inputs)
        out = self.model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            token_type_ids=inputs.get("token_type_ids"),
            image_embeds=embeds,
            pixel_mask=mask,
            output_attentions=want_attn,
        )
        return self._pooled(out, computed)

    def _modality_tags(self, batch: Batch, trace: Trace) -> None:
        """Tags and the fused mask of ``[text; image CLS; patches]``."""
        import torch

        layout = self._layout(batch.inputs)
        text_mask = batch.inputs["attention_mask"].cpu()
        ttags = text_tags(batch.inputs["input_ids"], text_mask, special_ids(self.tokenizer))
        itags = torch.full(layout.keep.shape, TAG_IMAGE, dtype=torch.int8)
        itags[layout.keep == 0] = TAG_PAD
        cls = torch.full((itags.shape[0], 1), TAG_SPECIAL, dtype=torch.int8)
        trace.modality_tags = torch.cat([ttags, cls, itags], dim=1)
        ones = torch.ones(itags.shape[0], 1, dtype=torch.long)
        trace.attention_mask = torch.cat([text_mask.long(), ones, layout.keep], dim=1)
