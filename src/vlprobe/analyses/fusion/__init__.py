"""Fusion-transformer and attention analyses (catalogue F1-F7 and V7): F1 fusion degree,
F2 modality importance, F3 image-to-text heads, F4 visual coreference, F5 coreference
probers, F6 attention statistics (streaming statistics of the one extraction pass: attention
reducers, the ``fusion_nmi`` pooling), V7 attention maps / rollout / relevance and F6g
caption grounding."""
