"""Image captioner: transformers ``VisionEncoderDecoderModel`` with a ViT encoder and a GPT-2
style decoder (the published ``nlpconnect/vit-gpt2-image-captioning``: ViT-B/16 at 224 px,
12 + 12 blocks, GPT-2 tokenizer, preprocessing: resize to 224, mean = std = 0.5).

Modalities: ``image`` runs the encoder alone; ``pair`` runs encoder + decoder on
``(image, caption)`` with teacher forcing.

Teacher forcing (BOS / EOS as the published model generates): vit-gpt2 starts decoding from
``decoder_start_token_id`` (50256 = ``<|endoftext|>``, which is also its bos, eos and pad) and
stops when it emits ``eos_token_id``. The decoder input of a pair is therefore
``[decoder_start_token_id] + caption tokens`` (the tokenizer's own special tokens are not
added; no EOS is appended: position t holds what the model reads before predicting token
t + 1), right-padded with the pad id; ``text.pooled`` reads the last caption token. Captions
longer than ``max_text_length() - 1`` tokens (the decoder's position limit, the start token
included) are truncated and counted in ``Batch.n_truncated``.

Sites (P = patches, T = 1 + caption tokens, H = heads):

- ``vision.stem``: patch + position embeddings with CLS, the input of encoder block 0
  ``[B, 1+P, D]``; ``vision.blocks.{i}`` (+ ``.attn`` ``[B, H, 1+P, 1+P]``): encoder block i
  (before the final layernorm); ``vision.pooled``: CLS of the final layernorm output ``[B, D]``
  (what the decoder attends to; the ViT pooler is not used by the captioner);
- ``text.stem``: token + position embeddings, the input of decoder block 0 ``[B, T, D]``;
  ``text.blocks.{i}``: decoder block i (before ``ln_f``); ``text.blocks.{i}.attn``: its causal
  self-attention ``[B, H, T, T]``; ``cross.blocks.{i}.t2v.attn``: its cross-attention, every
  decoder token over the image tokens ``[B, H, T, 1+P]``;
- ``text.pooled``: the final-norm (``ln_f``) state of the last real decoder token ``[B, D]``
  (what the LM head reads to predict the token after the caption) = ``embedding_site("pair")``.

``layer_sites("image")`` = ``vision.stem, vision.blocks.*``; ``layer_sites("pair")`` = the
decoder path ``text.stem, text.blocks.*`` (layer index 0..L_dec). Default pooling: ``cls`` for
images, ``mean`` (over a stream's real tokens) for pairs. Pair traces carry ``tags_by_stream``
``{"text": [B, T] (start token special, caption text, padding pad), "vision": [B, 1+P] (CLS
special, patches image)}`` and ``modality_tags`` / ``attention_mask`` of ``[text; vision]``.

Generated captions: :meth:`CaptionerAdapter.generate` (``model.generate``: greedy or beam
search, ``max_length`` counts the start token like transformers) and
:meth:`CaptionerAdapter.generate_with_attention`, which also returns, per generated token, the
cross-attention of the decoding step that produced it (one teacher-forced pass over the
generated sequence; equal to ``generate(output_attentions=True)``'s ``cross_attentions``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from vlprobe.captioning.decoding import (
    Generation,
    cut_at_eos,
    per_token_attention,
    start_token_inputs,
    teacher_forced_inputs,
)
from vlprobe.errors import ConfigError, ModelLoadError
from vlprobe.modality import TAG_IMAGE, TAG_SPECIAL, TAG_TEXT, set_two_stream_tags
from vlprobe.models._hf import HFAdapter
from vlprobe.models._hooks import HookTarget, capture, to_device
from vlprobe.models._towers import block_hooks, locate_blocks, tower_layer_sites
from vlprobe.models.base import Batch, Trace
from vlprobe.models.hf_preprocess import default_image_processor, processor_identity

_CROSS_FALLBACK = ("crossattention", "encoder_attn")


class CaptionerAdapter(HFAdapter):
    """ViT encoder + GPT-2 decoder image captioner (transformers VisionEncoderDecoderModel)."""

    family: ClassVar[str] = "vision_encoder_decoder"
    name: ClassVar[str] = "vision_encoder_decoder"
    summary: ClassVar[str] = (
        "Image captioner ViT + GPT-2 (transformers VisionEncoderDecoderModel, e.g. vit-gpt2)"
    )
    default_pooling: ClassVar[str] = "mean"
    poolings: ClassVar[dict[str, str]] = {"image": "cls", "pair": "mean"}
    hf_config: ClassVar[str] = "VisionEncoderDecoderConfig"
    hf_model: ClassVar[str] = "VisionEncoderDecoderModel"

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("image", "pair")

    def pooling_for(self, modality: str) -> str:
        return self.poolings[modality]

    def embedding_site(self, modality: str) -> str:
        return {"image": "vision.pooled", "pair": "text.pooled"}[modality]

    # -- sites -------------------------------------------------------------------------
    def _setup(self) -> None:
        enc, dec = self.config.encoder, self.config.decoder
        if not (hasattr(enc, "patch_size") and hasattr(enc, "image_size")):
            raise ModelLoadError(
                f"{self.name}: the encoder must be a ViT (CLS + patch tokens); got model_type "
                f"{getattr(enc, 'model_type', '?')!r}"
            )
        self.n_enc = int(enc.num_hidden_layers)
        self.n_dec = int(getattr(dec, "n_layer", None) or dec.num_hidden_layers)
        vision = ["vision.stem"]
        for i in range(self.n_enc):
            vision += [f"vision.blocks.{i}.attn", f"vision.blocks.{i}"]
        text = ["text.stem"]
        for i in range(self.n_dec):
            text += [f"text.blocks.{i}.attn", f"cross.blocks.{i}.t2v.attn", f"text.blocks.{i}"]
        self._sites = [*vision, "vision.pooled", *text, "text.pooled"]
        self._layer_sites = {
            "image": tower_layer_sites("vision", self.n_enc),
            "pair": tower_layer_sites("text", self.n_dec),
        }
        self._located: dict[str, Any] | None = None

    def _default_processor(self) -> Any:
        return default_image_processor(int(self.config.encoder.image_size))

    def _token_id(self, key: str) -> int:
        value = getattr(self.config, key, None)
        if value is None:
            value = getattr(self.config.decoder, key, None)
        if value is None:
            raise ModelLoadError(f"{self.name}: the config has no {key}")
        return int(value)

    def max_text_length(self) -> int | None:
        """Decoder positions (start token included), capped by the tokenizer's limit."""
        dec = self.config.decoder
        limit = int(getattr(dec, "n_positions", None) or dec.max_position_embeddings)
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < limit:
            limit = tok_max
        return limit

    def _preprocess_identity(self) -> dict[str, Any]:
        return {
            "image": processor_identity(self.processor),
            "text": {
                "max_length": self.max_text_length(),
                "decoder_input": "[decoder_start_token_id] + caption tokens, no eos",
                "decoder_start_token_id": self._token_id("decoder_start_token_id"),
                "padding": "longest/right",
                "tokenizer": type(self.tokenizer).__name__,
            },
        }

    # -- inputs ------------------------------------------------------------------------
    def text_lengths(self, texts: Sequence[str]) -> list[int]:
        """Decoder lengths: caption tokens + the start token, before truncation."""
        enc = self.tokenizer([str(t) for t in texts], add_special_tokens=False, verbose=False)
        return [len(ids) + 1 for ids in enc["input_ids"]]

    def _text_inputs(self, texts: Sequence[Any]) -> tuple[dict[str, Any], int, Any]:
        """``decoder_input_ids`` / ``decoder_attention_mask`` ``[B, T]`` (start token first),
        number of captions truncated, ``[B, T, 2]`` character offsets or None."""
        ids, mask, n_truncated, offsets = start_token_inputs(
            self.tokenizer, texts, self.max_text_length(),
            self._token_id("decoder_start_token_id"))
        return {"decoder_input_ids": ids, "decoder_attention_mask": mask}, n_truncated, offsets

    # -- running -----------------------------------------------------------------------
    def _locate(self) -> dict[str, Any]:
        if self._located is None:
            model = self.model
            enc_layers, enc_attn = locate_blocks(model.encoder, self.n_enc, self.name)
            dec_layers, dec_attn = locate_blocks(model.decoder, self.n_dec, self.name)
            block = model.decoder.get_submodule(f"{dec_layers}.0")
            rec = (getattr(model.decoder, "_can_record_outputs", None) or {}).get(
                "cross_attentions")
            names = [getattr(rec, "layer_name", "") or "", *_CROSS_FALLBACK]
            subs = dict(block.named_modules())
            cross = next((n.lstrip(".") for n in names if n and n.lstrip(".") in subs), None)
            if cross is None or enc_attn is None or dec_attn is None:
                raise ModelLoadError(f"{self.name}: cannot find the attention modules of "
                                     f"{type(model.encoder).__name__} / "
                                     f"{type(model.decoder).__name__}")
            self._located = {"enc": f"encoder.{enc_layers}", "enc_attn": enc_attn,
                             "dec": f"decoder.{dec_layers}", "dec_attn": dec_attn,
                             "cross": cross}
        return self._located

    def _hook_table(self) -> dict[str, HookTarget]:
        loc = self._locate()
        enc, dec = loc["enc"], loc["dec"]
        table = block_hooks("vision", enc, self.n_enc, loc["enc_attn"])
        table.update(block_hooks("text", dec, self.n_dec, loc["dec_attn"]))
        for i in range(self.n_dec):
            table[f"cross.blocks.{i}.t2v.attn"] = HookTarget(f"{dec}.{i}.{loc['cross']}", "attn")
        return table

    def _encode(self, pixel_values: Any, want_attn: bool) -> Any:
        """Encoder output ``[B, 1+P, D]`` (after its final layernorm) and the decoder's view
        of it (projected where the widths differ, as VisionEncoderDecoderModel does)."""
        model = self.model
        kw = {"output_attentions": True} if want_attn else {}
        enc = model.encoder(pixel_values=pixel_values, **kw).last_hidden_state
        ctx = enc
        if (model.encoder.config.hidden_size != model.decoder.config.hidden_size
                and getattr(model.decoder.config, "cross_attention_hidden_size", None) is None):
            ctx = model.enc_to_dec_proj(enc)
        return enc, ctx

    def _run(
        self, modality: str, inputs: dict[str, Any], want_attn: bool, computed: list[str]
    ) -> dict[str, Any]:
        import torch

        enc, ctx = self._encode(inputs["pixel_values"], want_attn)
        out: dict[str, Any] = {}
        if "vision.pooled" in computed:
            out["vision.pooled"] = enc[:, 0]
        if modality == "image":
            return out
        mask = inputs["decoder_attention_mask"]
        dec = self.model.decoder.base_model(
            input_ids=inputs["decoder_input_ids"], attention_mask=mask,
            encoder_hidden_states=ctx, use_cache=False,
        ).last_hidden_state
        if "text.pooled" in computed:
            last = (mask.sum(dim=1) - 1).clamp(min=0).long()
            out["text.pooled"] = dec[torch.arange(dec.shape[0], device=dec.device), last]
        return out

    def _modality_tags(self, batch: Batch, trace: Trace) -> None:
        import torch

        mask = batch.inputs["decoder_attention_mask"]
        text = torch.full_like(mask, TAG_TEXT)
        text[:, 0] = TAG_SPECIAL  # the decoder start token
        px = batch.inputs["pixel_values"]
        p = int(self.config.encoder.patch_size)
        n_vision = 1 + (px.shape[-2] // p) * (px.shape[-1] // p)
        vision = torch.full((len(batch), n_vision), TAG_IMAGE, dtype=torch.long)
        vision[:, 0] = TAG_SPECIAL  # CLS
        set_two_stream_tags(trace, text, mask, vision, torch.ones_like(vision))

    # -- generation --------------------------------------------------------------------
    def _generate_ids(self, pixel_values: Any, max_length: int, num_beams: int) -> Any:
        """``model.generate`` on ``[B, 3, S, S]`` pixels -> ``[B, n]`` ids (start token first)."""
        import torch

        if int(max_length) < 2:
            raise ConfigError(f"{self.name}: max_length {max_length} leaves no room for a token "
                              "after the start token (use >= 2)")
        if int(num_beams) < 1:
            raise ConfigError(f"{self.name}: num_beams must be >= 1, got {num_beams}")
        px = pixel_values.to(self.device)
        model = self.model
        model.eval()
        with torch.no_grad():
            return model.generate(
                pixel_values=px, max_length=int(max_length), num_beams=int(num_beams),
                do_sample=False, decoder_start_token_id=self._token_id("decoder_start_token_id"),
                eos_token_id=self._token_id("eos_token_id"),
                pad_token_id=self._token_id("pad_token_id"),
            ).cpu()

    def generate(self, images: Sequence[Any], max_length: int = 20, num_beams: int = 1
                 ) -> list[str]:
        """Captions of RGB PIL images (deterministic: greedy for ``num_beams=1``, else beam
        search; ``max_length`` counts the start token, as in transformers / the vit-gpt2
        model card, which uses ``max_length=16, num_beams=4``)."""
        px = self.prepare(list(images), "image").inputs["pixel_values"]
        ids = self._generate_ids(px, max_length, num_beams)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def generate_with_attention(
        self, images: Sequence[Any], max_length: int = 20, num_beams: int = 1
    ) -> Generation:
        """:meth:`generate` plus each generated token's cross-attention over the image tokens
        (see :class:`Generation`). The attention comes from one teacher-forced pass over
        ``[start] + generated[:-1]``: row t is the query that produced token t, exactly what
        the decoding step computed (the pass is causal)."""
        import torch

        px = self.prepare(list(images), "image").inputs["pixel_values"]
        ids = self._generate_ids(px, max_length, num_beams)
        token_ids = cut_at_eos(ids, self._token_id("eos_token_id"))
        dec_in, mask = teacher_forced_inputs(ids[:, 0].tolist(), token_ids,
                                             self._token_id("pad_token_id"))
        inputs = {"pixel_values": px, "decoder_input_ids": dec_in,
                  "decoder_attention_mask": mask}
        sites = [f"cross.blocks.{i}.t2v.attn" for i in range(self.n_dec)]
        table = self._hook_table()
        with torch.no_grad(), capture(self.model, {s: table[s] for s in sites}) as got:
            self._run("pair", to_device(inputs, self.device), True, [])
        tok = self.tokenizer
        return Generation(
            texts=[t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)],
            token_ids=token_ids,
            tokens=[tok.convert_ids_to_tokens(t) for t in token_ids],
            cross_attention=per_token_attention(got, sites, token_ids),
        )
