"""Word-embedding evaluation and grounded skip-gram training (used by T4 ``grounded_words``).

One job per module; none of them imports gensim at import time (it is slow):

- :mod:`.data`: where gensim's bundled test data and the reference kit's
  word-pair files are.
- :mod:`.pairs`: read word-pair similarity sets (WordSim353, SimLex-999, MEN,
  SimVerb-3500, RG65, MC30) and score vectors on them (Pearson / Spearman + OOV coverage).
- :mod:`.analogy`: read the Google analogy set (semantic vs syntactic
  sections) and score vectors with 3CosAdd.
- :mod:`.corpus`: load a training corpus (gensim's bundled text or a file).
- :mod:`.skipgram`: gensim skip-gram with some word vectors set and frozen.
"""
