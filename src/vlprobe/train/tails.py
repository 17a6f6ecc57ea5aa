"""The last k blocks of a tower, run from a cached hidden state (LiT's "unfreeze the last k
blocks" ablation for ``kind: aligned``, ``image_tower.unfreeze_last`` /
``text_tower.unfreeze_last``).

With k > 0 a tower can no longer run once and be cached in full. Instead the hidden state at
the INPUT of the first unfrozen block (:attr:`Tail.cut_site`, a site of the adapter) is cached
once, and every training step runs only the last k blocks (a copy of them, trainable) on it.

Supported families (each needs a way to run its last blocks from that state, so it is written
per family; a tower of another family is a clear error):

- ``efficientnet_lite0``: the last k MBConv blocks + the head conv (``_conv_head``, ``_bn1``,
  ReLU6). Input ``[B, C, h, w]`` (the output of ``vision.blocks.{15-k}``, or ``vision.stem``
  for k = 16). Produces ``vision.blocks.{j}`` (j >= 16 - k), ``vision.head``,
  ``vision.pooled``.
- BERT-style text towers (``minilm_l6``, ``hf_text`` with a BERT config): the last k encoder
  layers. Input ``[B, T, D]`` + the ``[B, T]`` attention mask (the output of
  ``text.blocks.{n-1-k}``, or ``text.stem`` = the embeddings for k = n). Produces
  ``text.blocks.{j}`` and ``text.pooled`` (the adapter's pooling of the last layer).

The copied blocks run in eval mode: BatchNorm keeps its running statistics (only weights and
biases train) and dropout is off, so a step is deterministic. Their parameters are named as in
the tower's own model (:meth:`Tail.tower_state`), so a checkpoint can load them back into a
freshly built tower (:func:`load_tail_state`).
"""

from __future__ import annotations

import copy
from typing import Any

from vlprobe.errors import ConfigError, ModelLoadError

SUPPORTED = "efficientnet_lite0, and BERT-style text towers (minilm_l6, hf_text with BERT)"


class Tail:
    """The trainable last ``k`` blocks of one tower.

    Attributes:
        k: the number of unfrozen blocks.
        cut_site: the adapter site whose output is the tail's input.
        sites: the sites the tail produces (its block outputs, then head / pooled sites).
        paths: dotted paths in the tower's model of the copied modules (parallel to
            ``module``'s children).
        module: ``nn.ModuleList`` of the copies (the trainable parameters).
    """

    modality: str = ""

    def __init__(self, k: int, cut_site: str, sites: list[str], paths: list[str],
                 modules: list[Any]) -> None:
        import torch.nn as nn

        self.k, self.cut_site, self.sites, self.paths = k, cut_site, sites, paths
        self.module = nn.ModuleList(modules).eval()

    def parameters(self) -> Any:
        return self.module.parameters()

    def tower_state(self) -> dict[str, Any]:
        """The copies' parameters and buffers under their names in the tower's model."""
        out = {}
        for path, mod in zip(self.paths, self.module):
            for name, value in mod.state_dict().items():
                out[f"{path}.{name}"] = value
        return out

    def load_tower_state(self, state: dict[str, Any]) -> None:
        for path, mod in zip(self.paths, self.module):
            prefix = f"{path}."
            mod.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                 if k.startswith(prefix)})

    def __call__(self, x: Any, mask: Any = None) -> dict[str, Any]:
        raise NotImplementedError


class EfficientNetTail(Tail):
    """Last k MBConv blocks + head conv of EfficientNet-Lite0 (``[B, C, h, w]`` in)."""

    modality = "image"

    def __call__(self, x: Any, mask: Any = None) -> dict[str, Any]:
        out = {}
        *blocks, conv_head, bn1, act = self.module
        first = int(self.sites[0].rsplit(".", 1)[1]) if blocks else 0
        for j, block in enumerate(blocks):
            x = block(x, drop_connect_rate=0.0)
            out[f"vision.blocks.{first + j}"] = x
        head = act(bn1(conv_head(x)))
        out["vision.head"] = head
        out["vision.pooled"] = head.mean(dim=(2, 3))
        return out


class BertTail(Tail):
    """Last k BERT encoder layers (``[B, T, D]`` + mask ``[B, T]`` in)."""

    modality = "text"

    def __init__(self, *args: Any, config: Any, pooling: str) -> None:
        super().__init__(*args)
        self.config, self.pooling = config, pooling

    def __call__(self, x: Any, mask: Any = None) -> dict[str, Any]:
        from transformers.masking_utils import create_bidirectional_mask

        ext = create_bidirectional_mask(config=self.config, inputs_embeds=x,
                                        attention_mask=mask)
        out = {}
        first = int(self.sites[0].rsplit(".", 1)[1])
        for j, layer in enumerate(self.module):
            y = layer(x, attention_mask=ext)
            x = y[0] if isinstance(y, tuple) else y
            out[f"text.blocks.{first + j}"] = x
        out["text.pooled"] = pool_tokens(x, mask, self.pooling)
        return out


def pool_tokens(x: Any, mask: Any, how: str) -> Any:
    """``[B, T, D]`` -> ``[B, D]`` in torch (differentiable): ``mean`` over real tokens, or
    ``cls`` (token 0)."""
    if how == "cls":
        return x[:, 0]
    if how != "mean":
        raise ConfigError(f"unfreeze_last: a text tail pools with mean or cls, not {how!r}")
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def pool_site(value: Any, mask: Any, how: str | None) -> Any:
    """One tail output -> ``[B, D]`` (the tower entry's pooling; maps: spatial mean)."""
    if value.ndim == 2:
        return value
    if value.ndim == 4:
        if how not in (None, "mean"):
            raise ConfigError(f"unfreeze_last: an image tail pools feature maps with mean, not "
                              f"{how!r}")
        return value.mean(dim=(2, 3))
    return pool_tokens(value, mask, how or "mean")


def build_tail(adapter: Any, k: int) -> Tail:
    """The last ``k`` blocks of ``adapter``'s tower, copied (the adapter stays frozen)."""
    family = getattr(adapter, "family", type(adapter).__name__)
    if family == "efficientnet_lite0":
        return _efficientnet_tail(adapter, k)
    config = getattr(adapter, "config", None)
    if "text" in adapter.modalities and getattr(config, "model_type", None) == "bert":
        return _bert_tail(adapter, k)
    raise ConfigError(f"unfreeze_last: tower {family!r} cannot run its last blocks from a "
                      f"cached state; supported: {SUPPORTED}")


def _check_k(k: int, n: int, family: str) -> None:
    if not 1 <= k <= n:
        raise ConfigError(f"unfreeze_last: {family} has {n} blocks; k must lie in [1, {n}], "
                          f"got {k}")


def _efficientnet_tail(adapter: Any, k: int) -> Tail:
    from vlprobe.models.efficientnet import N_BLOCKS

    _check_k(k, N_BLOCKS, "efficientnet_lite0")
    model = adapter.model
    first = N_BLOCKS - k
    paths = [f"_blocks.{j}" for j in range(first, N_BLOCKS)] + ["_conv_head", "_bn1", "_swish"]
    modules = [copy.deepcopy(model.get_submodule(p)) for p in paths]
    cut = "vision.stem" if first == 0 else f"vision.blocks.{first - 1}"
    sites = [f"vision.blocks.{j}" for j in range(first, N_BLOCKS)]
    return EfficientNetTail(k, cut, [*sites, "vision.head", "vision.pooled"], paths, modules)


def _bert_tail(adapter: Any, k: int) -> Tail:
    from vlprobe.models._towers import locate_blocks

    n = int(adapter.n_layers)
    _check_k(k, n, adapter.family)
    layers_path, _ = locate_blocks(adapter.model, n, adapter.family)
    first = n - k
    paths = [f"{layers_path}.{j}" for j in range(first, n)]
    modules = [copy.deepcopy(adapter.model.get_submodule(p)) for p in paths]
    cut = "text.stem" if first == 0 else f"text.blocks.{first - 1}"
    sites = [f"text.blocks.{j}" for j in range(first, n)]
    return BertTail(k, cut, [*sites, "text.pooled"], paths, modules,
                    config=adapter.model.config, pooling=adapter.default_pooling)


def load_tail_state(adapter: Any, state: dict[str, Any], source: str) -> None:
    """Put fine-tuned tail tensors (names in the tower's model) into ``adapter``'s model, and
    mark its identity so that its activations never share a store key with the frozen
    tower's."""
    import torch

    model = adapter.model
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise ModelLoadError(f"{source}: tensors {unknown[:3]} are not in the "
                             f"{adapter.family} tower")
    for name, value in state.items():
        if tuple(own[name].shape) != tuple(value.shape):
            raise ModelLoadError(f"{source}: tensor {name!r} has shape {list(value.shape)}, "
                                 f"the tower's is {list(own[name].shape)}")
    with torch.no_grad():
        for name, value in state.items():
            own[name].copy_(value.to(own[name].dtype))
    ident = adapter.identity()
    ident["finetuned_from"] = source
    adapter._identity = ident
