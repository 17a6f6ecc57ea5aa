"""Multimodal analyses (catalogue M*): what dual encoders and fusion models share between
their image and text sides.

One module per analysis (``zeroshot.py`` = M1, ``retrieval.py`` = M2, ``modality_gap.py`` =
M6, ``human_centric.py`` = M7, ...); helpers shared by the family live in small private
modules here (``_common.py``; ``_attacks_common.py`` for M3-M5); the zero-shot classifier
(prompt ensemble, prediction, ranks) of M1, M3, M4, M6 and V6's zero-shot head is
``zeroshot_classifier.py``; figures in ``plots.py`` (functions returning a matplotlib Figure).
Analyses are registered in :mod:`vlprobe.analyses` with their catalogue ids.
"""
