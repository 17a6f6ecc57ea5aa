"""Vision analyses (catalogue V*): what image-model layers encode about images.

From cached activations: ``probe.py`` (V1 ``layer_probe``), ``transfer.py`` (V2, CLIP's
linear-probe protocol), ``fewshot.py`` (V3), ``clustering.py`` (V4), ``reconstruction.py``
(V5, a decoder from features back to pixels), ``classifier_head.py`` (a model's own head).
Fitting code they share is in :mod:`vlprobe.estimators`.

Needing the model itself, not only its cached activations:

- :mod:`~vlprobe.analyses.vision.adversarial` (V6 ``adversarial``): PGD attacks in pixel space
  (:mod:`~vlprobe.analyses.vision.pgd`) through a classifier head
  (:mod:`~vlprobe.analyses.vision.heads`), with the WordNet distance of the errors
  (:mod:`~vlprobe.analyses.vision.wordnet`).
- :mod:`~vlprobe.analyses.vision.feature_vis` (V8 ``feature_vis``): activation maximisation
  (:mod:`~vlprobe.analyses.vision.featvis`).

Both reach the model through the run's feature source (``source.adapter(model)``) and its
differentiable image path (``image_pixels`` / ``forward_differentiable``). Figures:
:mod:`~vlprobe.analyses.vision.plots`.
"""
