"""Shared machinery of the transformers dual encoders (CLIP, SigLIP): two transformer towers
``vision_model`` / ``text_model`` whose blocks live at ``<tower>_model.encoder.layers``.

Sites of both towers (L = number of blocks of that tower):

- ``vision.stem`` / ``text.stem``: layer 0, the input of block 0 ``[B, T, D]``
  (:attr:`DualEncoderAdapter.stems` names the module per family);
- ``<tower>.blocks.{i}``: output of ``<tower>_model.encoder.layers[i]`` ``[B, T, D]``;
- ``<tower>.blocks.{i}.attn``: its post-softmax self-attention ``[B, H, T, T]``;
- ``vision.proj`` / ``text.proj``: the projected embedding the model compares (before L2
  normalisation) ``[B, E]``, computed by :meth:`DualEncoderAdapter._project`.

Image-text logits are ``scale * cos(image, text) + bias`` (:meth:`logit_scale`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from vlprobe.models._hf import HFAdapter
from vlprobe.models._hooks import HookTarget
from vlprobe.models._towers import tower_layer_sites, transformer_tower_sites

_TOWER = {"image": "vision", "text": "text"}


class DualEncoderAdapter(HFAdapter):
    """An image tower and a text tower with one projected embedding each.

    Subclasses set :attr:`poolings`, :attr:`stems`, :attr:`hf_model`, :attr:`hf_config`,
    :meth:`_default_processor`, :meth:`_project` and where needed
    :meth:`_text_model_inputs` / :meth:`_eos_index`.
    """

    #: per-modality default pooling of hidden-state sites.
    poolings: ClassVar[dict[str, str]] = {}
    #: stream -> module whose output is layer 0 (the input of block 0).
    stems: ClassVar[dict[str, str]] = {}

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("image", "text")

    def pooling_for(self, modality: str) -> str:
        """Default pooling of a hidden-state site of ``modality``'s tower."""
        return self.poolings[modality]

    def embedding_site(self, modality: str) -> str:
        """``vision.proj`` / ``text.proj``: the projected embeddings (L2-normalise them for
        the model's cosine similarities)."""
        return f"{_TOWER[modality]}.proj"

    def _setup(self) -> None:
        self.n_vision = int(self.config.vision_config.num_hidden_layers)
        self.n_text = int(self.config.text_config.num_hidden_layers)
        self._sites = transformer_tower_sites(
            "vision", self.n_vision, final="proj"
        ) + transformer_tower_sites("text", self.n_text, final="proj")
        self._layer_sites = {
            "image": tower_layer_sites("vision", self.n_vision),
            "text": tower_layer_sites("text", self.n_text),
        }

    def max_text_length(self) -> int | None:
        return int(self.config.text_config.max_position_embeddings)

    def _hook_table(self) -> dict[str, HookTarget]:
        table = {f"{stream}.stem": HookTarget(path) for stream, path in self.stems.items()}
        for tower, n in (("vision", self.n_vision), ("text", self.n_text)):
            for i in range(n):
                path = f"{tower}_model.encoder.layers.{i}"
                table[f"{tower}.blocks.{i}"] = HookTarget(path)
                table[f"{tower}.blocks.{i}.attn"] = HookTarget(f"{path}.self_attn", "attn")
        return table

    def _text_model_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Keyword inputs of ``text_model`` (default: ids and the padding mask)."""
        return {"input_ids": inputs["input_ids"], "attention_mask": inputs.get("attention_mask")}

    def _project(self, modality: str, pooled: Any) -> Any:
        """``[B, D]`` pooler output of a tower -> the ``[B, E]`` embedding the model compares."""
        raise NotImplementedError

    def _run(
        self, modality: str, inputs: dict[str, Any], want_attn: bool, computed: list[str]
    ) -> dict[str, Any]:
        model = self.model
        kw = {"output_attentions": True} if want_attn else {}
        if modality == "image":
            out = model.vision_model(pixel_values=inputs["pixel_values"], **kw)
        else:
            out = model.text_model(**self._text_model_inputs(inputs), **kw)
        site = f"{_TOWER[modality]}.proj"
        if site in computed:
            return {site: self._project(modality, out.pooler_output)}
        return {}

    def logit_scale(self) -> dict[str, float | None]:
        """``{"scale": exp(logit_scale), "bias": logit_bias or None}``: the model's
        image-text logits are ``scale * cos(image, text) + bias`` (CLIP has no bias)."""
        model = self.model
        bias = getattr(model, "logit_bias", None)
        return {
            "scale": float(model.logit_scale.detach().exp()),
            "bias": None if bias is None else float(bias.detach()),
        }
