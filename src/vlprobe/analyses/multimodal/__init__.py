"""Multimodal analyses (catalogue M*): what dual encoders and fusion models share between
their image and text sides.

One module per analysis (``zeroshot.py`` = M1, ``retrieval.py`` = M2, ``modality_gap.py`` =
M6, ``human_centric.py`` = M7, ...); helpers shared by the family live in small private modules here
(``_common.py``), figures in ``plots.py`` (functions returning a matplotlib Figure).
Analyses are registered in :mod:`vlprobe.analyses` with their catalogue ids.
"""
