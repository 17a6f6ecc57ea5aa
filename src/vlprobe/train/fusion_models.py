"""The two fusion architectures of ``vlprobe train`` and their checkpoints.

Both are transformers' own pretraining models, built small and from scratch, so that the
registered adapters load the trained base model like any published one:

- ``fusion_single``: ``VisualBertForPreTraining`` (one stack over ``[CLS] text [SEP]`` +
  region tokens). Region tokens get a learned position per grid cell through VisualBERT's
  ``image_text_alignment`` input: region ``r`` uses position embedding ``max_length + r``
  (rows past the text positions; the config key ``region_position_offset`` tells the
  ``visual_bert`` adapter to pass it), so both models know where a cell is.
- ``fusion_two``: ``LxmertForPreTraining`` with only its MLM and matching heads (no object /
  attribute / feature regression, no QA); regions are features + boxes.

Heads (transformers' own): ``cls.predictions`` (MLM, decoder tied to the word embeddings) and
``cls.seq_relationship`` (2-way ITM on the pooled [CLS]). The matching class differs by
transformers' conventions: VisualBERT's ``sentence_image_labels`` use 0 = match, LXMERT's
``matched_label`` 1 = match (:data:`MATCH_CLASS`).

Checkpoint directory (loads with ``adapter: visual_bert | lxmert, checkpoint: DIR``)::

    config.json, model.safetensors   the BASE model (VisualBertModel / LxmertModel),
                                     transformers' save_pretrained
    tokenizer files                  the text model's tokenizer (model_max_length = max_length)
    heads.safetensors                the pretraining heads (tensors tied to others excluded)
    fusion.json                      {format, kind, adapter, adapter_options, regions, text,
                                      match_class, heads: name -> shape, tied}
    training_record.json             data fingerprints, seed, losses per epoch, metrics, time
    test_itm_scores.npz              per test pair: ids, labels, P(match) of the kept model
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vlprobe.errors import ConfigError, ModelLoadError

FORMAT = 1
META = "fusion.json"
HEADS = "heads.safetensors"
RECORD = "training_record.json"
MATCH_CLASS = {"fusion_single": 0, "fusion_two": 1}


def hf_config(kind: str, arch: Any, *, vocab_size: int, pad_id: int, visual_dim: int,
              max_length: int, n_regions: int) -> Any:
    """The transformers config of a fusion model (see the module docstring)."""
    common = dict(vocab_size=vocab_size, hidden_size=arch.width,
                  num_attention_heads=arch.heads, intermediate_size=arch.intermediate,
                  hidden_dropout_prob=arch.dropout, attention_probs_dropout_prob=arch.dropout)
    if kind == "fusion_single":
        from transformers import VisualBertConfig

        return VisualBertConfig(
            **common, num_hidden_layers=arch.layers, visual_embedding_dim=visual_dim,
            max_position_embeddings=max_length + n_regions, pad_token_id=pad_id,
            region_position_offset=max_length,
        )
    if kind == "fusion_two":
        from transformers import LxmertConfig

        if pad_id != 0:
            raise ConfigError(f"fusion_two: LXMERT's embeddings pad with id 0; the tokenizer's "
                              f"pad id is {pad_id}")
        return LxmertConfig(
            **common, l_layers=arch.text_layers, r_layers=arch.vision_layers,
            x_layers=arch.cross_layers, visual_feat_dim=visual_dim, visual_pos_dim=4,
            max_position_embeddings=max_length, task_mask_lm=True, task_matched=True,
            task_obj_predict=False, task_qa=False, visual_obj_loss=False,
            visual_attr_loss=False, visual_feat_loss=False,
        )
    raise ConfigError(f"unknown fusion kind {kind!r}")


def build_model(kind: str, config: Any, seed: int) -> Any:
    """``VisualBertForPreTraining`` / ``LxmertForPreTraining`` with seeded initial weights
    (eager attention, as the adapters run it; the global RNG state is restored)."""
    import torch

    cls = _pretraining_class(kind)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = cls._from_config(config, attn_implementation="eager")
    return model


def _pretraining_class(kind: str) -> Any:
    from transformers import LxmertForPreTraining, VisualBertForPreTraining

    return {"fusion_single": VisualBertForPreTraining, "fusion_two": LxmertForPreTraining}[kind]


def base_of(model: Any) -> Any:
    """The base model inside a pretraining model (what the adapters load)."""
    return model.visual_bert if hasattr(model, "visual_bert") else model.lxmert


def init_word_embeddings(model: Any, source: Any, std: float) -> dict[str, Any]:
    """Copy a text model's input embeddings ``[V', D_src]`` (the first ``V`` rows: the
    tokenizer's ids) into ``model``'s ``[V, W]`` word
    embeddings: centred, projected on the top ``W`` principal directions when ``W < D_src``,
    and scaled to standard deviation ``std``. Returns what was done (for the record)."""
    import torch

    src = source.detach().float()
    target = base_of(model).embeddings.word_embeddings.weight
    v, w = target.shape
    if src.shape[0] < v:
        raise ConfigError(f"text.init_embeddings: the text model has {src.shape[0]} embeddings, "
                          f"fewer than the tokenizer's {v} ids")
    src = src[:v]
    if src.shape[1] < w:
        raise ConfigError(f"text.init_embeddings: the text model is {src.shape[1]} wide, "
                          f"narrower than model.width {w}; set init_embeddings: false")
    centred = src - src.mean(0, keepdim=True)
    if src.shape[1] > w:
        # principal directions of the embedding table (deterministic SVD, no sampling)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        centred = centred @ vh[:w].T
    with torch.no_grad():
        target.copy_(centred * (std / centred.std().clamp(min=1e-12)))
    return {"from_width": int(src.shape[1]), "to_width": int(w),
            "projection": "pca" if src.shape[1] > w else "none", "std": float(std)}


def parameter_counts(model: Any) -> dict[str, int]:
    """Trainable parameters: ``total`` (base + heads, the tied decoder counted once),
    ``base``, ``embeddings`` (word / position / token type / visual input layers) and
    ``transformer`` (base minus embeddings: the blocks and the pooler)."""
    base = base_of(model)
    n_base = sum(p.numel() for p in base.parameters())
    emb = base.embeddings
    n_emb = sum(p.numel() for p in emb.parameters())
    visual = getattr(getattr(base, "encoder", None), "visn_fc", None)  # LXMERT's region input
    if visual is not None:
        n_emb += sum(p.numel() for p in visual.parameters())
    n_total = sum(p.numel() for p in model.parameters())  # parameters() yields tied ones once
    return {"total": n_total, "base": n_base, "embeddings": n_emb,
            "transformer": n_base - n_emb}


def save_fusion_checkpoint(directory: Path, model: Any, tokenizer: Any, meta: dict[str, Any],
                           record: dict[str, Any]) -> Path:
    """Write the checkpoint directory described in the module docstring."""
    from safetensors.torch import save_file

    from vlprobe.extract.store import atomic_write_json

    directory.mkdir(parents=True, exist_ok=True)
    base_of(model).save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
    heads, tied = _untied(model)
    tmp = directory / f".{HEADS}.tmp"
    save_file(heads, str(tmp))
    tmp.replace(directory / HEADS)
    shapes = {k: list(v.shape) for k, v in heads.items()}
    atomic_write_json(directory / META, {"format": FORMAT, **meta, "heads": shapes,
                                         "tied": tied})
    atomic_write_json(directory / RECORD, record)
    return directory


def _untied(model: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The heads' tensors, each storage once (safetensors refuses shared memory), and
    ``{alias: what it is tied to}`` (the MLM decoder shares the word embeddings and its bias
    the head's ``bias``)."""
    owner = {p.data_ptr(): f"base.{n}" for n, p in base_of(model).named_parameters()}
    heads: dict[str, Any] = {}
    tied: dict[str, str] = {}
    for name, tensor in model.cls.state_dict(keep_vars=True).items():
        ptr = tensor.data_ptr()
        if ptr in owner:
            tied[name] = owner[ptr]
            continue
        owner[ptr] = name
        heads[name] = tensor.detach().cpu().contiguous()
    return heads, tied


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META
    if not path.is_file():
        raise ModelLoadError(f"{directory}: no {META}: not a fusion checkpoint of vlprobe train")
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("kind") not in MATCH_CLASS:
        raise ModelLoadError(f"{path}: format {meta.get('format')!r} / kind "
                             f"{meta.get('kind')!r}; expected format {FORMAT}, a fusion kind")
    return meta


def load_fusion_checkpoint(directory: str | Path) -> tuple[Any, dict[str, Any]]:
    """(pretraining model with base + heads, ``fusion.json``) of a checkpoint directory, in
    eval mode: what recomputes ITM / MLM accuracy."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = read_meta(directory)
    kind = meta["kind"]
    cls = _pretraining_class(kind)
    config = cls.config_class.from_pretrained(str(directory))
    model = cls._from_config(config, attn_implementation="eager")
    base = load_file(str(directory / "model.safetensors"))
    missing, unexpected = base_of(model).load_state_dict(base, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    heads = load_file(str(directory / HEADS))
    want = meta.get("heads") or {}
    if sorted(heads) != sorted(want) or any(list(heads[k].shape) != want[k] for k in want):
        raise ModelLoadError(f"{directory / HEADS}: tensors do not match {META}")
    h_missing, h_unexpected = model.cls.load_state_dict(heads, strict=False)
    tied = meta.get("tied") or {}
    h_missing = [k for k in h_missing if k not in tied]
    if missing or unexpected or h_missing or h_unexpected:
        raise ModelLoadError(f"{directory}: weights do not fit the config (missing "
                             f"{(missing + h_missing)[:3]}, unexpected "
                             f"{(unexpected + h_unexpected)[:3]})")
    _, now_tied = _untied(model)
    if now_tied != tied:
        raise ModelLoadError(f"{directory}: tied weights {now_tied} differ from {META} {tied}")
    model.eval()
    return model, meta


def match_probability(itm_logits: Any, kind: str) -> np.ndarray:
    """``[B]`` P(match) from ``[B, 2]`` ITM logits (:data:`MATCH_CLASS`)."""
    import torch

    return torch.softmax(itm_logits.detach().float(), -1)[:, MATCH_CLASS[kind]].numpy()
