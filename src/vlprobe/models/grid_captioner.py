"""``grid_captioner``: an image captioner trained by ``vlprobe train`` (``kind: captioner``).

``checkpoint`` is the directory ``vlprobe train`` wrote (:mod:`vlprobe.train.caption_run`):
the frozen image tower is rebuilt from the spec recorded there, its grid site is pooled to
``g x g`` cells exactly as in training (:func:`vlprobe.pooling.pool`), and the trained
caption decoder (:mod:`vlprobe.captioning.decoders`, its word vocabulary saved beside it)
reads them.

Modalities: ``image`` runs the image tower alone; ``pair`` runs tower + decoder on
``(image, caption)`` with teacher forcing (decoder input ``[<bos>] + caption words``, no
``<eos>``, right-padded: position t is what the decoder reads before predicting word t + 1;
captions longer than ``max_text_length() - 1`` words are cut and counted).

Sites (N = g x g grid cells, T = 1 + caption words, H = heads):

- every site of the image tower under its own name (EfficientNet-Lite0: ``vision.stem``,
  ``vision.blocks.{i}``, ``vision.head``, ``vision.pooled``, ``vision.logits``);
- ``vision.memory``: the decoder's visual tokens ``[B, N, D]`` (projected, position-embedded
  grid cells, row-major): the keys and values of every cross-attention;
- the decoder's sites (``grid_transformer``): ``text.stem`` ``[B, T, D]``, ``text.blocks.{i}``
  ``[B, T, D]``, ``text.blocks.{i}.attn`` ``[B, H, T, T]`` (causal),
  ``cross.blocks.{i}.t2v.attn`` ``[B, H, T, N]`` (each word over the grid cells; seed 003's
  analyses), ``text.pooled`` (final-norm state of the last caption word) ``[B, D]``.

``layer_sites("image")`` = the tower's; ``layer_sites("pair")`` = ``text.stem,
text.blocks.*``. Pair traces carry ``tags_by_stream`` ``{"text": [B, T] (<bos> special, words
text, padding pad), "vision": [B, N] (every cell image)}``. Generation:
:meth:`GridCaptionerAdapter.generate` and :meth:`GridCaptionerAdapter.generate_with_attention`
(per generated word, the cross-attention of the step that produced it), as the
``vision_encoder_decoder`` adapter. The differentiable path is the image tower's (plus
``vision.memory``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from vlprobe.errors import ConfigError
from vlprobe.modality import TAG_IMAGE, TAG_SPECIAL, TAG_TEXT, check_sites_for, set_two_stream_tags
from vlprobe.models._trained import load_tower, open_checkpoint
from vlprobe.models.base import Batch, ModelAdapter, ModelSpec, Trace

MEMORY = "vision.memory"


class GridCaptionerAdapter(ModelAdapter):
    """A frozen image tower's grid + a caption decoder trained by ``vlprobe train``."""

    family: ClassVar[str] = "grid_captioner"
    summary: ClassVar[str] = (
        "image captioner trained by `vlprobe train` (frozen tower grid + caption decoder)"
    )
    default_pooling: ClassVar[str] = "mean"

    @classmethod
    def offline_status(cls) -> tuple[bool, str]:
        return (True, "checkpoint: a `vlprobe train` directory of kind captioner")

    def __init__(self, spec: ModelSpec, directory: Path, config: dict[str, Any], tower: Any,
                 tokenizer: Any, device: str) -> None:
        super().__init__(spec)
        self.directory = directory
        self.config = config
        self.tower = tower
        self.tokenizer = tokenizer
        self.device = device
        self.feed_site = config["image_tower"]["sites"][0]
        self.feed_pooling = config["image_tower"]["pooling"]
        self._decoder: Any = None
        self._model: Any = None

    @classmethod
    def load(cls, spec: ModelSpec, device: str = "cpu") -> GridCaptionerAdapter:
        from vlprobe.captioning.vocab import load_tokenizer

        directory, config = open_checkpoint(spec, "grid_captioner")
        tower = load_tower(config, "image_tower", "image", device, "grid_captioner")
        return cls(spec, directory, config, tower, load_tokenizer(directory), device)

    # -- the trained part --------------------------------------------------------------------
    @property
    def decoder(self) -> Any:
        if self._decoder is None:
            from vlprobe.captioning.decoders import build_decoder
            from vlprobe.train.checkpoint import load_tensors

            c = self.config
            decoder = build_decoder(c["decoder"], int(c["feature_dim"]), int(c["grid"]),
                                    len(self.tokenizer))
            decoder.load_tensors(load_tensors(self.directory, c))
            self._decoder = decoder.eval().to(self.device)
        return self._decoder

    @property
    def model(self) -> Any:
        """Every torch module that runs: ``{"vision": tower model, "decoder": decoder}``."""
        if self._model is None:
            from torch import nn

            self._model = nn.ModuleDict({"vision": self.tower.model, "decoder": self.decoder})
            self._model.eval()
        return self._model

    # -- description -------------------------------------------------------------------------
    @property
    def modalities(self) -> tuple[str, ...]:
        return ("image", "pair")

    def sites(self) -> list[str]:
        return [*self.tower.sites(), MEMORY, *self.decoder.text_sites()]

    def layer_sites(self, modality: str) -> list[str]:
        if modality == "image":
            return self.tower.layer_sites("image")
        if modality == "pair":
            return ["text.stem", *(f"text.blocks.{i}" for i in range(self.decoder.n_layers))]
        raise ConfigError(f"model {self.family!r} has no {modality} tower (image / pair only)")

    def embedding_site(self, modality: str) -> str:
        return "text.pooled" if modality == "pair" else self.tower.embedding_site("image")

    def pooling_for(self, modality: str) -> str:
        return "mean" if modality == "pair" else self.tower.pooling_for("image")

    def max_text_length(self) -> int | None:
        """Decoder positions, ``<bos>`` included."""
        return int(self.decoder.max_positions)

    def text_lengths(self, texts: Sequence[str]) -> list[int]:
        """Caption words + ``<bos>``, before truncation."""
        enc = self.tokenizer([str(t) for t in texts], add_special_tokens=False)["input_ids"]
        return [len(ids) + 1 for ids in enc]

    def identity(self) -> dict[str, Any]:
        from vlprobe.models._hooks import dir_fingerprint

        return {
            "adapter": self.family, "checkpoint": str(self.directory.resolve()),
            "files": dir_fingerprint(self.directory), "tower": self.tower.identity(),
            "grid": {"site": self.feed_site, "pooling": self.feed_pooling},
        }

    # -- inputs ------------------------------------------------------------------------------
    def prepare(self, payloads: Sequence[Any], modality: str) -> Batch:
        from vlprobe.captioning.decoding import start_token_inputs
        from vlprobe.captioning.grid_decoder import BOS_ID
        from vlprobe.models._payloads import split_pairs

        if modality == "image":
            return self.tower.prepare(payloads, "image")
        if modality != "pair":
            raise ConfigError(f"model {self.family!r} does not take {modality} inputs "
                              "(it takes image/pair)")
        images, texts = split_pairs(payloads, self.family)
        ids, mask, n_truncated, offsets = start_token_inputs(
            self.tokenizer, texts, self.max_text_length(), BOS_ID)
        inputs = dict(self.tower.prepare(images, "image").inputs)
        inputs.update({"input_ids": ids, "attention_mask": mask})
        return Batch("pair", inputs, n_truncated=n_truncated, offsets=offsets)

    def _tower_batch(self, batch: Batch) -> Batch:
        return Batch("image", {k: v for k, v in batch.inputs.items()
                               if k not in ("input_ids", "attention_mask")})

    def _grid(self, feature: Any) -> Any:
        """The tower's feed site output -> ``[B, N, C]`` grid cells, pooled as in training."""
        from vlprobe.captioning.decoding import grid_tokens
        from vlprobe.pooling import pool

        flat = pool(feature, self.feed_pooling)
        return grid_tokens(flat, int(self.config["feature_dim"]),
                           int(self.config["grid"])).to(self.device)

    # -- running -----------------------------------------------------------------------------
    def forward(self, batch: Batch, sites: Sequence[str]) -> Trace:
        """Run once under ``torch.no_grad``; tensors come back float32 on the CPU."""
        import torch

        from vlprobe.models._hooks import capture, to_device

        sites = list(dict.fromkeys(sites))
        self.check_sites(sites)
        check_sites_for(batch.modality, sites, self.family)
        tower_sites = [s for s in sites if s in set(self.tower.sites())]
        text = [s for s in sites if s not in tower_sites and s != MEMORY]
        need_grid = MEMORY in sites or bool(text)
        need = list(dict.fromkeys([*tower_sites, *([self.feed_site] if need_grid else [])]))
        trace = Trace()
        if need:
            got = self.tower.forward(self._tower_batch(batch), need)
            for s in tower_sites:
                (trace.attentions if s in got.attentions else trace.hidden)[s] = (
                    got.attentions.get(s, got.hidden.get(s)))
        if not need_grid:
            return trace
        decoder = self.decoder
        grid = self._grid(got.hidden[self.feed_site])
        with torch.no_grad():
            if MEMORY in sites:
                trace.hidden[MEMORY] = decoder.memory(grid).float().cpu()
            if not text:
                return trace
            inputs = to_device(batch.inputs, self.device)
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            table = decoder.hook_table()
            with capture(decoder, {s: table[s] for s in text if s in table}) as hooked:
                states = decoder.final_states(grid, ids, mask)
        for s in text:
            if s == "text.pooled":
                last = (mask.sum(dim=1) - 1).clamp(min=0).long()
                value = states[torch.arange(states.shape[0], device=states.device), last]
                trace.hidden[s] = value.float().cpu()
            else:
                (trace.attentions if s.endswith(".attn") else trace.hidden)[s] = hooked[s]
        self._tags(batch, trace)
        return trace

    def _tags(self, batch: Batch, trace: Trace) -> None:
        import torch

        mask = batch.inputs["attention_mask"].cpu()
        text = torch.full_like(mask, TAG_TEXT)
        text[:, 0] = TAG_SPECIAL  # <bos>
        n = int(self.config["grid"]) ** 2
        vision = torch.full((mask.shape[0], n), TAG_IMAGE, dtype=torch.long)
        set_two_stream_tags(trace, text, mask, vision, torch.ones_like(vision))

    def teacher_forced_logits(self, batch: Batch) -> Any:
        """``[B, T, V]`` next-word logits of a pair batch (float32, CPU); position t
        predicts caption word t + 1 (``<eos>`` after the last word)."""
        import torch

        if batch.modality != "pair":
            raise ConfigError(f"{self.family}: teacher forcing needs a pair batch")
        got = self.tower.forward(self._tower_batch(batch), [self.feed_site])
        grid = self._grid(got.hidden[self.feed_site])
        ids = batch.inputs["input_ids"].to(self.device)
        mask = batch.inputs["attention_mask"].to(self.device)
        with torch.no_grad():
            return self.decoder(grid, ids, mask).float().cpu()

    # -- generation --------------------------------------------------------------------------
    def _image_grid(self, images: Sequence[Any]) -> Any:
        got = self.tower.forward(self.tower.prepare(list(images), "image"), [self.feed_site])
        return self._grid(got.hidden[self.feed_site])

    def generate(self, images: Sequence[Any], max_length: int | None = None,
                 num_beams: int = 1) -> list[str]:
        """Captions of RGB PIL images (greedy for ``num_beams=1``, else beam search;
        ``max_length`` counts ``<bos>``, default the training config's)."""
        length = int(max_length or self.config["decode"]["max_length"])
        ids = self.decoder.generate_ids(self._image_grid(images), length, num_beams)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def generate_with_attention(self, images: Sequence[Any], max_length: int | None = None,
                                num_beams: int = 1) -> Any:
        """:meth:`generate` plus each generated word's cross-attention over the grid cells:
        a :class:`~vlprobe.captioning.decoding.Generation` whose ``cross_attention[b]`` is
        ``[L, H, n_tokens, N]``, from one teacher-forced pass over ``[<bos>] +
        generated[:-1]`` (row t is the query that produced token t; the pass is causal)."""
        import torch

        from vlprobe.captioning.decoding import (
            Generation,
            cut_at_eos,
            per_token_attention,
            teacher_forced_inputs,
        )
        from vlprobe.captioning.grid_decoder import EOS_ID, PAD_ID
        from vlprobe.models._hooks import capture

        length = int(max_length or self.config["decode"]["max_length"])
        decoder = self.decoder
        grid = self._image_grid(images)
        ids = decoder.generate_ids(grid, length, num_beams).cpu()
        token_ids = cut_at_eos(ids, EOS_ID)
        dec_in, mask = teacher_forced_inputs(ids[:, 0].tolist(), token_ids, PAD_ID)
        sites = [f"cross.blocks.{i}.t2v.attn" for i in range(decoder.n_layers)]
        table = decoder.hook_table()
        with torch.no_grad(), capture(decoder, {s: table[s] for s in sites}) as got:
            decoder.final_states(grid, dec_in.to(self.device), mask.to(self.device))
        tok = self.tokenizer
        return Generation(
            texts=[t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)],
            token_ids=token_ids, tokens=[tok.convert_ids_to_tokens(t) for t in token_ids],
            cross_attention=per_token_attention(got, sites, token_ids),
        )

    # -- the differentiable path (the image tower, plus vision.memory) ----------------------
    def image_pixels(self, images: Sequence[Any]) -> Any:
        return self.tower.image_pixels(images)

    def normalize_pixels(self, pixels: Any) -> Any:
        return self.tower.normalize_pixels(pixels)

    def forward_differentiable(self, pixels: Any, sites: Sequence[str]) -> dict[str, Any]:
        import torch.nn.functional as F

        from vlprobe.pooling import grid_size

        sites = list(dict.fromkeys(sites))
        self.check_sites(sites)
        check_sites_for("image", sites, self.family)
        want = [s for s in sites if s != MEMORY]
        need = list(dict.fromkeys([*want, *([self.feed_site] if MEMORY in sites else [])]))
        out = self.tower.forward_differentiable(pixels, need)
        if MEMORY in sites:
            x, g = out[self.feed_site].float(), grid_size(self.feed_pooling)
            if x.ndim == 3:  # ViT tokens: the trailing s x s patches, as grid pooling does
                s = int(x.shape[1] ** 0.5)
                x = x[:, x.shape[1] - s * s :].transpose(1, 2).reshape(x.shape[0], -1, s, s)
            cells = F.adaptive_avg_pool2d(x, g).flatten(2).transpose(1, 2)  # [B, N, C]
            out[MEMORY] = self.decoder.memory(cells)
        return {s: out[s] for s in sites}
