"""Vision backbones via transformers: ViT (incl. DINO checkpoints) and ResNet.

``hf_vit`` (alias ``dino``), transformers ``ViTModel`` (built without its pooler):

- ``vision.stem``: layer 0, patch + position embeddings with CLS ``[B, 1+P, D]``;
- ``vision.blocks.{i}``: output of block ``i`` ``[B, 1+P, D]`` (before the final layernorm);
- ``vision.blocks.{i}.attn``: post-softmax attention ``[B, H, T, T]``;
- ``vision.pooled``: CLS token of the final layernorm output ``[B, D]``.
Default pooling ``cls``.

``hf_resnet``, transformers ``ResNetModel``:

- ``vision.stem``: layer 0, the embedder output (conv 7x7 + BN + ReLU + max-pool) ``[B, C, h, w]``;
- ``vision.stages.{i}``: output of stage ``i`` ``[B, C, h, w]``;
- ``vision.pooled``: the pooler output (global average pool) flattened ``[B, C]``.
Default pooling ``mean`` (spatial average).

Preprocessing is the checkpoint's own ``AutoImageProcessor``; for ``random_init`` from a bare
config (no ``preprocessor_config.json``) a documented default is used: bilinear resize to
``image_size``² (ViT: ``config.image_size``; ResNet: ``options.image_size`` or 224), rescale
to [0, 1], ImageNet mean/std normalisation (PIL/numpy only).
"""

from __future__ import annotations

from typing import Any, ClassVar

from vlprobe.models._hf import HFAdapter
from vlprobe.models._hooks import HookTarget
from vlprobe.models._towers import (
    block_hooks,
    locate_blocks,
)
from vlprobe.models.hf_preprocess import default_image_processor


class HFViTAdapter(HFAdapter):
    """ViT / DINO image encoders (transformers ``ViTModel``)."""

    family: ClassVar[str] = "hf_vit"
    name: ClassVar[str] = "hf_vit"
    summary: ClassVar[str] = "ViT / DINO image encoder (transformers ViTModel)"
    default_pooling: ClassVar[str] = "cls"
    hf_config: ClassVar[str] = "ViTConfig"
    hf_model: ClassVar[str] = "ViTModel"

    def _model_kwargs(self) -> dict[str, Any]:
        return {"add_pooling_layer": False}

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("image",)

    def _setup(self) -> None:
        self._one_stack("vision", "image")
        self._located: tuple[str, str | None] | None = None

    def _default_processor(self) -> Any:
        return default_image_processor(int(self.config.image_size))

    def _hook_table(self) -> dict[str, HookTarget]:
        if self._located is None:
            self._located = locate_blocks(self.model, self.n_layers, self.name)
        layers, attn = self._located
        return block_hooks("vision", layers, self.n_layers, attn)

    def _run(
        self, modality: str, inputs: dict[str, Any], want_attn: bool, computed: list[str]
    ) -> dict[str, Any]:
        kw = {"output_attentions": True} if want_attn else {}
        out = self.model(pixel_values=inputs["pixel_values"], **kw)
        if "vision.pooled" in computed:
            return {"vision.pooled": out.last_hidden_state[:, 0]}
        return {}


class HFResNetAdapter(HFAdapter):
    """ResNet image encoders (transformers ``ResNetModel``)."""

    family: ClassVar[str] = "hf_resnet"
    name: ClassVar[str] = "hf_resnet"
    summary: ClassVar[str] = "ResNet image encoder (transformers ResNetModel)"
    default_pooling: ClassVar[str] = "mean"
    hf_config: ClassVar[str] = "ResNetConfig"
    hf_model: ClassVar[str] = "ResNetModel"

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("image",)

    def _setup(self) -> None:
        self.n_stages = len(self.config.depths)
        stages = [f"vision.stages.{i}" for i in range(self.n_stages)]
        self._sites = ["vision.stem", *stages, "vision.pooled"]
        self._layer_sites = {"image": ["vision.stem", *stages]}

    def _default_processor(self) -> Any:
        return default_image_processor(int(self.spec.options.get("image_size", 224)))

    def _hook_table(self) -> dict[str, HookTarget]:
        table = {"vision.stem": HookTarget("embedder")}
        for i in range(self.n_stages):
            table[f"vision.stages.{i}"] = HookTarget(f"encoder.stages.{i}")
        return table

    def _run(
        self, modality: str, inputs: dict[str, Any], want_attn: bool, computed: list[str]
    ) -> dict[str, Any]:
        out = self.model(pixel_values=inputs["pixel_values"])
        if "vision.pooled" in computed:
            return {"vision.pooled": out.pooler_output.flatten(1)}
        return {}
