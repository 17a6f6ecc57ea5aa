"""Representational-geometry analyses (catalogue R*): compare how models arrange the same
stimuli, whatever their modality.

``rsa.py`` = R1 (RDMs and their correlation), ``cka.py`` = R2 (linear / RBF CKA between
layers); figures in ``plots.py`` (functions returning a matplotlib Figure). Analyses are
registered in :mod:`vlprobe.analyses`.
"""
