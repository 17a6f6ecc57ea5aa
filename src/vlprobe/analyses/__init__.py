"""Analyses: registered in one place with their catalogue ids (``vlprobe analyses``).

Analyses live in one package per catalogue family (``vision/`` V*, ``text/`` T*,
``multimodal/`` M*, ``geometry/`` R*, ``fusion/`` F* and V7; see docs/LAYOUT.md). Entries are lazy
(``"module:Class"``) so listing them does not import torch or sklearn.
"""

from __future__ import annotations

from vlprobe.analyses.base import Analysis, FeatureRequest, LayerFeatures, Result
from vlprobe.registry import Registry

ANALYSES: Registry[type[Analysis]] = Registry("analysis")

# name -> "module:Class", aliases = catalogue ids (one line per analysis), by family package
# vision (analyses/vision/)
ANALYSES.add("layer_probe", "vlprobe.analyses.vision.probe:LayerProbe", aliases=("V1",))
ANALYSES.add("transfer", "vlprobe.analyses.vision.transfer:Transfer", aliases=("V2",))
ANALYSES.add("few_shot", "vlprobe.analyses.vision.fewshot:FewShot", aliases=("V3",))
ANALYSES.add("clustering", "vlprobe.analyses.vision.clustering:Clustering", aliases=("V4",))
ANALYSES.add("reconstruction_probe",
             "vlprobe.analyses.vision.reconstruction:ReconstructionProbe", aliases=("V5",))
ANALYSES.add("adversarial", "vlprobe.analyses.vision.adversarial:Adversarial", aliases=("V6",))
ANALYSES.add("feature_vis", "vlprobe.analyses.vision.feature_vis:FeatureVis", aliases=("V8",))
ANALYSES.add("classifier_head", "vlprobe.analyses.vision.classifier_head:ClassifierHead")
# text (analyses/text/)
ANALYSES.add("sentence_probing", "vlprobe.analyses.text.sentence_probing:SentenceProbing",
             aliases=("T1",))
ANALYSES.add("chunking", "vlprobe.analyses.text.chunking:Chunking", aliases=("T2",))
ANALYSES.add("downstream", "vlprobe.analyses.text.downstream:Downstream", aliases=("T3",))
ANALYSES.add("grounded_word_embeddings", "vlprobe.analyses.text.grounded_words:GroundedWords",
             aliases=("T4",))
# multimodal (analyses/multimodal/)
ANALYSES.add("zero_shot", "vlprobe.analyses.multimodal.zeroshot:ZeroShot", aliases=("M1",))
ANALYSES.add("retrieval", "vlprobe.analyses.multimodal.retrieval:Retrieval", aliases=("M2",))
ANALYSES.add("typographic_attack", "vlprobe.analyses.multimodal.typographic:TypographicAttack",
             aliases=("M3",))
ANALYSES.add("bias_audit", "vlprobe.analyses.multimodal.bias_audit:BiasAudit", aliases=("M4",))
ANALYSES.add("multimodal_neurons", "vlprobe.analyses.multimodal.neurons:MultimodalNeurons",
             aliases=("M5",))
ANALYSES.add("modality_gap", "vlprobe.analyses.multimodal.modality_gap:ModalityGap",
             aliases=("M6",))
ANALYSES.add("human_centric", "vlprobe.analyses.multimodal.human_centric:HumanCentric",
             aliases=("M7",))
# geometry (analyses/geometry/)
ANALYSES.add("rsa", "vlprobe.analyses.geometry.rsa:RSA", aliases=("R1",))
ANALYSES.add("cka", "vlprobe.analyses.geometry.cka:CKA", aliases=("R2",))
# fusion family (analyses/fusion/)
ANALYSES.add("fusion_degree", "vlprobe.analyses.fusion.fusion_degree:FusionDegree",
             aliases=("F1",))
ANALYSES.add("modality_importance", "vlprobe.analyses.fusion.attention_heads:ModalityImportance",
             aliases=("F2",))
ANALYSES.add("image_to_text_heads", "vlprobe.analyses.fusion.attention_heads:ImageToTextHeads",
             aliases=("F3",))
ANALYSES.add("attention_statistics",
             "vlprobe.analyses.fusion.attention_stats:AttentionStatistics", aliases=("F6",))
ANALYSES.add("attention_maps", "vlprobe.analyses.fusion.attention_maps:AttentionMaps",
             aliases=("V7",))
ANALYSES.add("caption_grounding", "vlprobe.analyses.fusion.grounding:CaptionGrounding",
             aliases=("F6g",))
ANALYSES.add("visual_coreference", "vlprobe.analyses.fusion.coreference:VisualCoreference",
             aliases=("F4",))
ANALYSES.add("coreference_prober", "vlprobe.analyses.fusion.coref_prober:CoreferenceProber",
             aliases=("F5",))


__all__ = ["ANALYSES", "Analysis", "FeatureRequest", "LayerFeatures", "Result"]
