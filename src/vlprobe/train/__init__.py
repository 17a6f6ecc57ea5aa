"""``vlprobe train``: small real multimodal models from registered frozen parts.

- :mod:`vlprobe.train.config`: the YAML config (``kind`` chooses the trainer);
- ``kind: aligned`` (M8): :mod:`vlprobe.train.features` (frozen tower features through the
  activation store, and the refusal to train on test images by content digest),
  :mod:`vlprobe.train.aligned` (projection heads + temperature + InfoNCE, selection on
  validation, test once), :mod:`vlprobe.train.checkpoint` (safetensors + config + training
  record, loaded back by the ``aligned_dual`` adapter, :mod:`vlprobe.models.aligned`);
  ``unfreeze_last: k`` fine-tunes a tower's last k blocks from a cached hidden state
  (:mod:`vlprobe.train.tails`, :mod:`vlprobe.train.tail_inputs`);
  :mod:`vlprobe.train.evaluate` re-evaluates a checkpoint with its controls on any paired
  split (e.g. out of domain);
- ``kind: devise``: the DeViSE baseline (a linear map onto the frozen text embeddings, hinge
  rank loss; :func:`vlprobe.train.aligned.train_aligned_heads`), same checkpoint format;
- ``kind: captioner``: :mod:`vlprobe.train.caption_run` / :mod:`~vlprobe.train.captioner` /
  :mod:`~vlprobe.train.caption_eval`, a caption decoder on frozen grid features
  (:mod:`vlprobe.captioning`), selection on validation, test decoded once; loaded back by the
  ``grid_captioner`` adapter (:mod:`vlprobe.models.grid_captioner`);
- ``kind: fusion_single | fusion_two``: a small VisualBERT- / LXMERT-style fusion transformer
  trained with image-text matching + masked language modelling on frozen CNN grid features
  (:mod:`vlprobe.train.fusion_config`, :mod:`vlprobe.train.fusion_data`,
  :mod:`vlprobe.train.fusion`, :mod:`vlprobe.train.fusion_models`,
  :mod:`vlprobe.train.fusion_run`); the checkpoint loads through the ``visual_bert`` /
  ``lxmert`` adapters.
"""

from typing import Any

from vlprobe.train.config import TrainConfig, load_train_config, parse_train_config

__all__ = ["TrainConfig", "load_train_config", "parse_train_config", "train"]


def train(cfg: Any, progress: bool = True):
    """Train ``cfg`` (a parsed train config of any kind) and return its checkpoint
    directory (see :func:`vlprobe.train.run.train`, :func:`vlprobe.train.fusion_run.train`)."""
    if cfg.kind in ("fusion_single", "fusion_two"):
        from vlprobe.train.fusion_run import train as _train
    else:  # aligned, devise, captioner
        from vlprobe.train.run import train as _train

    return _train(cfg, progress=progress)
