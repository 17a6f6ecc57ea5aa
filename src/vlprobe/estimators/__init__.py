"""Estimators: fitting code the analyses share, kept apart from the analyses that use it.

- :mod:`~vlprobe.estimators.logistic`: the batched L2-regularised logistic solver (every
  layer x a C sweep at once; sklearn's objective) and C selection on a validation split.
- :mod:`~vlprobe.estimators.mlp`: one-hidden-layer MLP probes trained as stacked groups.
- :mod:`~vlprobe.estimators.decoder`: the V5 convolutional decoder (features -> pixels).

Estimators never read the store or a run config: they take arrays and return fitted state.
"""
