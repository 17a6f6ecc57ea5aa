"""``grid_transformer``: a small transformer decoder that cross-attends to image grid cells.

The structure of the captioning transformer of seed 003 (self-attention over the words so
far, cross-attention over visual tokens, next-word softmax), with frozen CNN grid cells as the
visual tokens instead of detected objects:

- visual memory: the frozen grid features ``[B, N, C]`` (N = g x g cells, row-major) are
  standardised per channel with train statistics (buffers ``feature_mean`` / ``feature_std``
  ``[C]``), projected ``Linear(C, D)``, given a learnt 2-D position (``row_pos[r] +
  col_pos[c]``, ``[g, D]`` each), layer-normalised and dropped out: ``[B, N, D]``;
- decoder: transformers ``GPT2LMHeadModel`` with ``add_cross_attention=True`` (``layers``
  blocks of causal self-attention, cross-attention to the memory and an MLP of width ``ffn``;
  learnt positions; input and output word embeddings tied), eager attention so that the
  attention modules return their weights.

Sites (``text.*`` / ``cross.*`` of docs/SITES.md): ``text.stem`` (token + position
embeddings, the input of block 0) ``[B, T, D]``; ``text.blocks.{i}`` ``[B, T, D]`` (before
the final ``ln_f``); ``text.blocks.{i}.attn`` ``[B, H, T, T]`` (causal);
``cross.blocks.{i}.t2v.attn`` ``[B, H, T, N]``: every decoder token over the grid cells;
``text.pooled`` (the ``ln_f`` state of the last real token, which predicts ``<eos>``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from vlprobe.captioning.decoders import DECODER_DEFAULTS
from vlprobe.captioning.vocab import BOS, EOS, PAD, SPECIALS, UNK
from vlprobe.errors import ConfigError, ModelLoadError
from vlprobe.models._hooks import HookTarget

PAD_ID, BOS_ID, EOS_ID = SPECIALS.index(PAD), SPECIALS.index(BOS), SPECIALS.index(EOS)
UNK_ID = SPECIALS.index(UNK)
#: never generated: padding, a second start token, the unknown-word token (not a word)
SUPPRESSED = (PAD_ID, BOS_ID, UNK_ID)
#: architecture keys of the ``decoder`` section (``min_count`` is the vocabulary's)
ARCH_KEYS = ("width", "layers", "heads", "ffn", "dropout", "max_words")


class GridTransformerDecoder(nn.Module):
    """Projected grid memory + GPT-2 decoder with cross-attention (see the module doc)."""

    kind: ClassVar[str] = "grid_transformer"

    def __init__(self, *, feature_dim: int, grid: int, vocab_size: int, width: int,
                 layers: int, heads: int, ffn: int, dropout: float, max_words: int) -> None:
        from transformers import GPT2Config, GPT2LMHeadModel

        super().__init__()
        if width % heads:
            raise ConfigError(f"decoder: width {width} is not divisible by heads {heads}")
        self.arch = {"feature_dim": int(feature_dim), "grid": int(grid),
                     "vocab_size": int(vocab_size), "width": int(width), "layers": int(layers),
                     "heads": int(heads), "ffn": int(ffn), "dropout": float(dropout),
                     "max_words": int(max_words)}
        self.grid = int(grid)
        self.n_layers = int(layers)
        self.max_positions = int(max_words) + 2  # <bos> + words + the step that emits <eos>
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))
        self.visual = nn.Linear(feature_dim, width)
        self.row_pos = nn.Parameter(torch.randn(grid, width) * 0.02)
        self.col_pos = nn.Parameter(torch.randn(grid, width) * 0.02)
        self.visual_norm = nn.LayerNorm(width)
        self.visual_drop = nn.Dropout(dropout)
        config = GPT2Config(
            vocab_size=vocab_size, n_embd=width, n_layer=layers, n_head=heads, n_inner=ffn,
            n_positions=self.max_positions, resid_pdrop=dropout, embd_pdrop=dropout,
            attn_pdrop=dropout, add_cross_attention=True, tie_word_embeddings=True,
            bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        )
        config._attn_implementation = "eager"  # attention modules return their weights
        self.lm = GPT2LMHeadModel(config)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def build(cls, cfg: dict[str, Any], feature_dim: int, grid: int, vocab_size: int
              ) -> GridTransformerDecoder:
        defaults = DECODER_DEFAULTS[cls.kind]
        args = {k: cfg.get(k, defaults[k]) for k in ARCH_KEYS}
        return cls(feature_dim=feature_dim, grid=grid, vocab_size=vocab_size, **args)

    def describe(self) -> dict[str, Any]:
        """What rebuilds this architecture: ``build(describe(), feature_dim, grid, vocab)``."""
        a = self.arch
        return {"kind": self.kind, **{k: a[k] for k in ARCH_KEYS}}

    def set_standardisation(self, grid_features: Any) -> None:
        """Per-channel mean / std of train grid features ``[N, C*g*g]`` (channel-major, the
        stored ``grid<g>`` layout), read in chunks (the array may be memory-mapped)."""
        import numpy as np

        c, cells = self.arch["feature_dim"], self.grid * self.grid
        total = np.zeros(c)
        square = np.zeros(c)
        n = 0
        for start in range(0, len(grid_features), 512):
            x = np.asarray(grid_features[start : start + 512], dtype=np.float64)
            x = x.reshape(len(x), c, cells)
            total += x.sum(axis=(0, 2))
            square += (x * x).sum(axis=(0, 2))
            n += x.shape[0] * cells
        mean = total / n
        std = np.sqrt(np.maximum(square / n - mean * mean, 0.0))
        self.feature_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.feature_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp(min=1e-6))

    # -- weights ----------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Any]:
        """The state dict without the tied output embedding (it is the input embedding)."""
        return {k: v for k, v in self.state_dict().items() if k != "lm.lm_head.weight"}

    def load_tensors(self, tensors: dict[str, Any]) -> None:
        """Load :meth:`state_tensors` output strictly (names and shapes)."""
        try:
            result = self.load_state_dict(tensors, strict=False)
        except RuntimeError as exc:
            raise ModelLoadError(f"grid_transformer: tensors do not fit: {exc}") from None
        missing = [k for k in result.missing_keys if k != "lm.lm_head.weight"]
        if missing or result.unexpected_keys:
            raise ModelLoadError(f"grid_transformer: missing tensors {missing[:3]}, "
                                 f"unexpected {list(result.unexpected_keys)[:3]}")
        self.lm.tie_weights()

    # -- running ----------------------------------------------------------------------------
    def memory(self, grid: torch.Tensor) -> torch.Tensor:
        """``[B, N, C]`` grid features -> ``[B, N, D]`` visual tokens (row-major cells)."""
        _, n, c = grid.shape
        if n != self.grid * self.grid or c != self.arch["feature_dim"]:
            raise ConfigError(f"grid_transformer: expected grid features [B, "
                              f"{self.grid * self.grid}, {self.arch['feature_dim']}], got "
                              f"{list(grid.shape)}")
        x = self.visual((grid - self.feature_mean) / self.feature_std)
        pos = (self.row_pos[:, None, :] + self.col_pos[None, :, :]).reshape(n, -1)
        return self.visual_drop(self.visual_norm(x + pos))

    def forward(self, grid: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: ``[B, T, V]`` next-token logits."""
        return self.lm(input_ids=input_ids, attention_mask=attention_mask,
                       encoder_hidden_states=self.memory(grid), use_cache=False).logits

    def final_states(self, grid: torch.Tensor, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor) -> torch.Tensor:
        """``[B, T, D]`` decoder states after the final ``ln_f`` (what the LM head reads)."""
        return self.lm.transformer(input_ids=input_ids, attention_mask=attention_mask,
                                   encoder_hidden_states=self.memory(grid),
                                   use_cache=False).last_hidden_state

    @torch.no_grad()
    def generate_ids(self, grid: torch.Tensor, max_length: int, num_beams: int = 1
                     ) -> torch.Tensor:
        """``[B, n]`` ids, ``<bos>`` first: transformers ``generate`` (greedy for one beam,
        else beam search with its defaults: length_penalty 1, early_stopping False), in eval
        mode (the module's mode is restored). ``<pad>``, ``<bos>`` and ``<unk>`` are never
        generated (:data:`SUPPRESSED`): every generated token is a word or ``<eos>``."""
        if int(max_length) < 2 or int(max_length) > self.max_positions:
            raise ConfigError(f"grid_transformer: max_length {max_length} must lie in "
                              f"[2, {self.max_positions}] (<bos> + words + <eos>)")
        if int(num_beams) < 1:
            raise ConfigError(f"grid_transformer: num_beams must be >= 1, got {num_beams}")
        was = self.training
        self.eval()
        try:
            start = torch.full((grid.shape[0], 1), BOS_ID, dtype=torch.long, device=grid.device)
            return self.lm.generate(
                input_ids=start, attention_mask=torch.ones_like(start),
                encoder_hidden_states=self.memory(grid), max_length=int(max_length),
                num_beams=int(num_beams), do_sample=False, bos_token_id=BOS_ID,
                eos_token_id=EOS_ID, pad_token_id=PAD_ID, suppress_tokens=list(SUPPRESSED),
            )
        finally:
            self.train(was)

    # -- sites ------------------------------------------------------------------------------
    def text_sites(self) -> list[str]:
        out = ["text.stem"]
        for i in range(self.n_layers):
            out += [f"text.blocks.{i}.attn", f"cross.blocks.{i}.t2v.attn", f"text.blocks.{i}"]
        return [*out, "text.pooled"]

    def hook_table(self) -> dict[str, HookTarget]:
        h = "lm.transformer.h"
        table = {"text.stem": HookTarget(f"{h}.0", "input")}
        for i in range(self.n_layers):
            table[f"text.blocks.{i}"] = HookTarget(f"{h}.{i}")
            table[f"text.blocks.{i}.attn"] = HookTarget(f"{h}.{i}.attn", "attn")
            table[f"cross.blocks.{i}.t2v.attn"] = HookTarget(f"{h}.{i}.crossattention", "attn")
        return table
