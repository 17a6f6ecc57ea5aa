"""Model adapters: the one place where every family is registered.

Entries are lazy (``"module:Class"``) so ``vlprobe models`` does not import torch.
"""

from __future__ import annotations

from vlprobe.models.base import Batch, ModelAdapter, ModelSpec, Trace
from vlprobe.registry import Registry

MODELS: Registry[type[ModelAdapter]] = Registry("model adapter")

# name -> "module:AdapterClass"  (filled in by the adapter modules' authors; one line each)
MODELS.add("clip", "vlprobe.models.clip:CLIPAdapter")
MODELS.add("hf_text", "vlprobe.models.hf_text:HFTextAdapter", aliases=("bert", "gpt2", "llama"))
MODELS.add("minilm_l6", "vlprobe.models.hf_text:MiniLML6Adapter", aliases=("all-minilm-l6-v2",))
MODELS.add("smollm2_135m", "vlprobe.models.hf_text:SmolLM2Adapter", aliases=("smollm2",))
MODELS.add("hf_vit", "vlprobe.models.hf_vision:HFViTAdapter", aliases=("dino", "vit"))
MODELS.add("hf_resnet", "vlprobe.models.hf_vision:HFResNetAdapter", aliases=("resnet",))
MODELS.add("efficientnet_lite0", "vlprobe.models.efficientnet:EfficientNetLite0Adapter")
MODELS.add("vilt", "vlprobe.models.vilt:ViltAdapter")
MODELS.add("visual_bert", "vlprobe.models.visual_bert:VisualBertAdapter", aliases=("visualbert",))
MODELS.add("aligned_dual", "vlprobe.models.aligned:AlignedDualAdapter", aliases=("m8",))
MODELS.add("lxmert", "vlprobe.models.lxmert:LXMERTAdapter")
MODELS.add(
    "vision_encoder_decoder", "vlprobe.models.captioner:CaptionerAdapter",
    aliases=("vit_gpt2", "captioner"),
)
MODELS.add(
    "grid_captioner", "vlprobe.models.grid_captioner:GridCaptionerAdapter",
    aliases=("trained_captioner",),
)
MODELS.add("siglip", "vlprobe.models.siglip:SigLIPAdapter")
MODELS.add("open_clip", "vlprobe.models.open_clip:OpenCLIPAdapter", aliases=("openclip",))


def load_model(spec: ModelSpec, device: str = "cpu") -> ModelAdapter:
    """Build the adapter named by ``spec.adapter`` (see ``vlprobe models``)."""
    return MODELS.get(spec.adapter).load(spec, device=device)


__all__ = ["MODELS", "Batch", "ModelAdapter", "ModelSpec", "Trace", "load_model"]
