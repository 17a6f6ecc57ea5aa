"""Text analyses (catalogue T*): what language-model layers encode about sentences, spans and
words.

One module per analysis (``sentence_probing.py`` = T1, ``chunking.py`` = T2, ``downstream.py``
= T3, ``grounded_words.py`` = T4); T4's word-embedding evaluation and grounded skip-gram
training are in :mod:`~vlprobe.analyses.text.text_eval`; figures in ``plots.py`` (functions
returning a matplotlib Figure). Analyses are registered in :mod:`vlprobe.analyses`.
"""
