"""Sites and hooks of a plain stack of transformer blocks (shared by the adapters).

A tower is ``<prefix>.stem`` (the input of block 0) followed by ``<prefix>.blocks.{i}`` (the
output of block ``i``) and, where the blocks have one, ``<prefix>.blocks.{i}.attn`` (the
block's post-softmax self-attention ``[B, H, T, T]``). :func:`transformer_tower_sites`,
:func:`tower_layer_sites` and :func:`block_hooks` build those names and their hook targets;
:func:`locate_blocks` finds the block list of a transformers model.
"""

from __future__ import annotations

from typing import Any

from vlprobe.errors import ModelLoadError
from vlprobe.models._hooks import HookTarget


def transformer_tower_sites(
    prefix: str, n_layers: int, attn: bool = True, final: str = "pooled"
) -> list[str]:
    """``prefix.stem``, then per block ``prefix.blocks.i.attn``, ``prefix.blocks.i``,
    then ``prefix.<final>`` (forward order; ``final`` is ``pooled`` or ``proj``)."""
    out = [f"{prefix}.stem"]
    for i in range(n_layers):
        if attn:
            out.append(f"{prefix}.blocks.{i}.attn")
        out.append(f"{prefix}.blocks.{i}")
    out.append(f"{prefix}.{final}")
    return out


def tower_layer_sites(prefix: str, n_layers: int) -> list[str]:
    """``prefix.stem, prefix.blocks.0 .. n_layers-1``: a tower's hidden-state sites in layer
    order (index = catalogue layer, 0 = stem)."""
    return [f"{prefix}.stem"] + [f"{prefix}.blocks.{i}" for i in range(n_layers)]


def block_hooks(
    prefix: str, layers: str, n_layers: int, attn: str | None
) -> dict[str, HookTarget]:
    """Hook targets of a tower whose blocks are the modules ``<layers>.{i}``.

    ``prefix.stem`` is the input of block 0, ``prefix.blocks.{i}`` the output of block ``i``
    and, where ``attn`` (the attention module's path inside a block) is given,
    ``prefix.blocks.{i}.attn`` that module's attention weights."""
    table = {f"{prefix}.stem": HookTarget(f"{layers}.0", "input")}
    for i in range(n_layers):
        table[f"{prefix}.blocks.{i}"] = HookTarget(f"{layers}.{i}")
        if attn:
            table[f"{prefix}.blocks.{i}.attn"] = HookTarget(f"{layers}.{i}.{attn}", "attn")
    return table


_LAYER_LIST_FALLBACK = ("encoder.layer", "layers", "h", "transformer.h", "encoder.layers")
_ATTN_FALLBACK = ("attention.self", "attention", "attn", "self_attn")


def locate_blocks(model: Any, n_layers: int, name: str = "model") -> tuple[str, str | None]:
    """(dotted path of the ``ModuleList`` of transformer blocks, path of the attention module
    inside a block) found generically from transformers' ``_can_record_outputs`` (the classes
    whose outputs HF records as hidden states / attentions), with name fallbacks."""
    import torch.nn as nn

    rec = getattr(model, "_can_record_outputs", None) or {}

    def target(entry: Any) -> tuple[Any, str | None]:
        if entry is None:
            return None, None
        cls = getattr(entry, "target_class", entry)
        return (cls if isinstance(cls, type) else None), getattr(entry, "layer_name", None)

    block_cls, _ = target(rec.get("hidden_states"))
    layers = None
    for path, module in model.named_modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module) == n_layers
            and (block_cls is None or isinstance(module[0], block_cls))
        ):
            layers = path
            break
    if layers is None:
        names = dict(model.named_modules())
        layers = next((n for n in _LAYER_LIST_FALLBACK if n in names), None)
    if layers is None:
        raise ModelLoadError(f"{name}: cannot find the transformer blocks of {type(model)}")
    block = model.get_submodule(f"{layers}.0")
    attn_cls, layer_name = target(rec.get("attentions"))
    attn = None
    if attn_cls is not None:
        for path, module in block.named_modules():
            if path and isinstance(module, attn_cls) and (
                layer_name is None or f".{path}".endswith(layer_name)
            ):
                attn = path
                break
    if attn is None:
        sub = dict(block.named_modules())
        attn = next((n for n in _ATTN_FALLBACK if n in sub), None)
    return layers, attn
