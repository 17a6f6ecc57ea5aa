"""Decoder kinds of the trained captioners: one interface, one registry.

A captioner trained by ``vlprobe train`` (``kind: captioner``) is a FROZEN image tower whose
grid features (``[B, N, C]``: N = g x g cells, row-major; the tower site pooled with
``grid<g>``) feed a trainable **caption decoder**. The training loop
(:mod:`vlprobe.train.captioner`), the decoding and metric code (:mod:`vlprobe.captioning`),
the checkpoint and the ``grid_captioner`` adapter only use the interface below, so a new
decoder kind is one module plus one line in :data:`DECODER_KINDS`.

The interface (a ``torch.nn.Module``):

- ``kind`` (class attribute): the name in the train config (``decoder.kind``);
- ``build(cls, cfg: dict, feature_dim: int, grid: int, vocab_size: int) -> decoder``
  (classmethod): a new, randomly initialised decoder (the caller seeds torch);
  ``cfg`` is the ``decoder`` config section; ``describe()`` returns the dict that rebuilds the
  same architecture with ``build`` (stored in the checkpoint's ``config.json``);
- ``set_standardisation(grid_features)``: per-channel train statistics of the frozen features;
- ``forward(grid [B, N, C], input_ids [B, T], attention_mask [B, T]) -> logits [B, T, V]``:
  teacher forcing; ``input_ids`` = ``[<bos>] + words`` right-padded, position t predicts
  token t + 1 (the target of the last word is ``<eos>``);
- ``generate_ids(grid, max_length, num_beams) -> [B, n]`` ids, ``<bos>`` first (greedy for
  ``num_beams=1``, else beam search; ``max_length`` counts ``<bos>``; rows that stopped are
  padded with ``<pad>`` after ``<eos>``);
- ``max_positions``: decoder positions (``<bos>`` included); ``arch``: a dict with at least
  ``feature_dim`` (C) and ``grid`` (g), what the decoder reads;
- ``n_layers``; ``text_sites()``: the decoder's sites in forward order (:data:`docs/SITES.md`
  names: ``text.stem``, ``text.blocks.{i}`` (+ ``.attn``), ``cross.blocks.{i}.t2v.attn``
  where the kind cross-attends, ``text.pooled``); ``hook_table()``: site -> ``HookTarget``
  (module path inside the decoder) for every hooked site; ``final_states(grid, input_ids,
  attention_mask) -> [B, T, D]`` (after the final norm; ``text.pooled`` reads the last real
  token); ``memory(grid) -> [B, N, D]``: the visual tokens the decoder reads (site
  ``vision.memory``);
- ``state_tensors()`` / ``load_tensors(tensors)``: the weights as a flat dict without tied
  duplicates (safetensors refuses shared storage), and their strict loading.

Kinds:

- ``grid_transformer`` (:mod:`vlprobe.captioning.grid_decoder`): the captioning transformer
  of seed 003 without object detection: a small GPT-2 decoder whose blocks cross-attend to
  the projected grid cells (per-token cross-attention ``[B, H, T, N]`` for the attention
  analyses).
- planned, ``prefix_lm`` (seed 004 ch. 6, ClipCap): a mapping network turns the grid (or its
  pooled vector) into P prefix embeddings in the input space of a FROZEN language model
  (SmolLM2-135M, adapter ``smollm2_135m``), which reads ``[prefix; <bos> words]``. It fits the
  interface as is: ``forward`` returns the logits of the caption positions only,
  ``generate_ids`` calls the LM's ``generate(inputs_embeds=...)``, ``memory`` is the prefix
  ``[B, P, D_lm]``, and its sites are ``text.*`` over the caption positions (no
  ``cross.*``: attention from caption tokens to the prefix is a slice of
  ``text.blocks.{i}.attn``); only the mapping network is trained and saved
  (``state_tensors``), the LM is rebuilt from its own spec.
"""

from __future__ import annotations

from typing import Any

from vlprobe.errors import ConfigError

#: kind -> "module:Class" (imported lazily: torch is needed only to build one)
DECODER_KINDS = {
    "grid_transformer": "vlprobe.captioning.grid_decoder:GridTransformerDecoder",
}
#: kind -> its ``decoder`` config keys and defaults (checked without importing torch)
DECODER_DEFAULTS: dict[str, dict[str, Any]] = {
    "grid_transformer": {
        "min_count": 5,    # vocabulary: TRAIN caption words seen >= min_count times
        "max_words": 30,   # longer training captions are cut (counted in the record)
        "width": 256, "layers": 3, "heads": 4, "ffn": 1024, "dropout": 0.1,
    },
}
PLANNED_KINDS = {"prefix_lm": "a prefix decoder into a frozen LM (seed 004 ch. 6); not yet"}


def check_decoder_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The ``decoder`` section completed with its kind's defaults; ConfigError for an
    unknown kind or key, a non-numeric value, or an impossible architecture."""
    raw = dict(raw or {})
    kind = raw.pop("kind", "grid_transformer")
    if kind not in DECODER_KINDS:
        decoder_class(kind)  # raises with the known kinds
    defaults = DECODER_DEFAULTS[kind]
    unknown = sorted(set(raw) - set(defaults))
    if unknown:
        raise ConfigError(f"decoder: unknown key {unknown[0]!r} for kind {kind!r}; known: "
                          f"kind, {', '.join(defaults)}")
    out = {"kind": kind, **defaults, **raw}
    for key, default in defaults.items():
        value = out[key]
        want = float if isinstance(default, float) else int
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                want is int and value != int(value)):
            raise ConfigError(f"decoder.{key}: expected {want.__name__}, got {value!r}")
        out[key] = want(value)
    if kind == "grid_transformer":
        if min(out["width"], out["layers"], out["heads"], out["ffn"], out["max_words"],
               out["min_count"]) < 1:
            raise ConfigError("decoder: width, layers, heads, ffn, max_words and min_count "
                              "must be >= 1")
        if out["width"] % out["heads"]:
            raise ConfigError(f"decoder: width {out['width']} is not divisible by heads "
                              f"{out['heads']}")
        if not 0.0 <= out["dropout"] < 1.0:
            raise ConfigError(f"decoder.dropout must lie in [0, 1), got {out['dropout']}")
    return out


def decoder_class(kind: str) -> Any:
    """The decoder class of ``kind`` (ConfigError naming the known kinds)."""
    import importlib

    if kind not in DECODER_KINDS:
        planned = f" ({PLANNED_KINDS[kind]})" if kind in PLANNED_KINDS else ""
        raise ConfigError(
            f"decoder.kind {kind!r} is not available{planned}; known: {', '.join(DECODER_KINDS)}"
        )
    module, cls = DECODER_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), cls)


def build_decoder(cfg: dict[str, Any], feature_dim: int, grid: int, vocab_size: int) -> Any:
    """A new decoder of kind ``cfg["kind"]`` (random init from torch's global RNG: seed it)."""
    cfg = check_decoder_config(cfg)
    return decoder_class(cfg["kind"]).build(cfg, feature_dim, grid, vocab_size)
