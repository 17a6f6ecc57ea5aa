"""Fusion-transformer analyses (catalogue F): F1 fusion degree, F2 modality importance,
F3 image-to-text heads, F6 attention statistics. All of them read streaming statistics
computed in the one extraction pass of a model (attention reducers, the ``fusion_nmi``
pooling): no attention map or token tensor is stored."""
