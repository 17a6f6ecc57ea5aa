"""Analyses: registered in one place with their catalogue ids (``vlprobe analyses``).

Entries are lazy (``"module:Class"``) so listing them does not import torch or sklearn.
"""

from __future__ import annotations

from vlprobe.analyses.base import Analysis, FeatureRequest, LayerFeatures, Result
from vlprobe.registry import Registry

ANALYSES: Registry[type[Analysis]] = Registry("analysis")

# name -> "module:Class", aliases = catalogue ids (one line per analysis)
ANALYSES.add("layer_probe", "vlprobe.analyses.probe:LayerProbe", aliases=("V1",))
ANALYSES.add("few_shot", "vlprobe.analyses.fewshot:FewShot", aliases=("V3",))
ANALYSES.add("rsa", "vlprobe.analyses.rsa:RSA", aliases=("R1",))
ANALYSES.add("sentence_probing", "vlprobe.analyses.sentence_probing:SentenceProbing",
             aliases=("T1",))
ANALYSES.add("transfer", "vlprobe.analyses.transfer:Transfer", aliases=("V2",))
ANALYSES.add("clustering", "vlprobe.analyses.clustering:Clustering", aliases=("V4",))
ANALYSES.add("cka", "vlprobe.analyses.cka:CKA", aliases=("R2",))
ANALYSES.add("grounded_word_embeddings", "vlprobe.analyses.grounded_words:GroundedWords",
              aliases=("T4",))
ANALYSES.add("downstream", "vlprobe.analyses.downstream:Downstream", aliases=("T3",))
ANALYSES.add("human_centric", "vlprobe.analyses.human_centric:HumanCentric", aliases=("M7",))
ANALYSES.add("classifier_head", "vlprobe.analyses.classifier_head:ClassifierHead")
ANALYSES.add("chunking", "vlprobe.analyses.chunking:Chunking", aliases=("T2",))
ANALYSES.add("reconstruction_probe", "vlprobe.analyses.reconstruction:ReconstructionProbe",
              aliases=("V5",))
# multimodal family (analyses/multimodal/)
ANALYSES.add("zero_shot", "vlprobe.analyses.multimodal.zeroshot:ZeroShot", aliases=("M1",))
ANALYSES.add("retrieval", "vlprobe.analyses.multimodal.retrieval:Retrieval", aliases=("M2",))
ANALYSES.add("modality_gap", "vlprobe.analyses.multimodal.modality_gap:ModalityGap",
             aliases=("M6",))
ANALYSES.add("typographic_attack", "vlprobe.analyses.multimodal.typographic:TypographicAttack",
             aliases=("M3",))
ANALYSES.add("bias_audit", "vlprobe.analyses.multimodal.bias_audit:BiasAudit", aliases=("M4",))
ANALYSES.add("multimodal_neurons", "vlprobe.analyses.multimodal.neurons:MultimodalNeurons",
             aliases=("M5",))
# fusion family (analyses/fusion/)
ANALYSES.add("fusion_degree", "vlprobe.analyses.fusion.fusion_degree:FusionDegree",
             aliases=("F1",))
ANALYSES.add("modality_importance", "vlprobe.analyses.fusion.attention_heads:ModalityImportance",
             aliases=("F2",))
ANALYSES.add("image_to_text_heads", "vlprobe.analyses.fusion.attention_heads:ImageToTextHeads",
             aliases=("F3",))
ANALYSES.add("attention_statistics",
             "vlprobe.analyses.fusion.attention_stats:AttentionStatistics", aliases=("F6",))
ANALYSES.add("adversarial", "vlprobe.analyses.vision.adversarial:Adversarial", aliases=("V6",))
ANALYSES.add("feature_vis", "vlprobe.analyses.vision.feature_vis:FeatureVis", aliases=("V8",))
ANALYSES.add("attention_maps", "vlprobe.analyses.fusion.attention_maps:AttentionMaps",
             aliases=("V7",))
ANALYSES.add("caption_grounding", "vlprobe.analyses.fusion.grounding:CaptionGrounding",
             aliases=("F6g",))
ANALYSES.add("visual_coreference", "vlprobe.analyses.fusion.coreference:VisualCoreference",
             aliases=("F4",))
ANALYSES.add("coreference_prober", "vlprobe.analyses.fusion.coref_prober:CoreferenceProber",
             aliases=("F5",))


__all__ = ["ANALYSES", "Analysis", "FeatureRequest", "LayerFeatures", "Result"]
