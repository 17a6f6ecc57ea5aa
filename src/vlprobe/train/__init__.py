"""``vlprobe train``: small real multimodal models from registered frozen towers.

- :mod:`vlprobe.train.config`: the YAML config (``kind: aligned`` or ``kind: captioner``);
- :mod:`vlprobe.train.features`: frozen tower features through the activation store, and the
  refusal to train on test images (content digests);
- :mod:`vlprobe.train.aligned`: M8, projection heads + temperature + InfoNCE, selection on
  validation, test once;
- :mod:`vlprobe.train.caption_run` / :mod:`~vlprobe.train.captioner` /
  :mod:`~vlprobe.train.caption_eval`: a caption decoder on frozen grid features
  (:mod:`vlprobe.captioning`), selection on validation, test decoded once;
- :mod:`vlprobe.train.checkpoint`: safetensors + config + training record, loaded back by the
  ``aligned_dual`` adapter (:mod:`vlprobe.models.aligned`) or the ``grid_captioner`` adapter
  (:mod:`vlprobe.models.grid_captioner`).
"""

from vlprobe.train.config import TrainConfig, load_train_config, parse_train_config

__all__ = ["TrainConfig", "load_train_config", "parse_train_config", "train"]


def train(cfg: TrainConfig, progress: bool = True):
    """Train ``cfg`` and return its checkpoint directory (see :func:`vlprobe.train.run.train`)."""
    from vlprobe.train.run import train as _train

    return _train(cfg, progress=progress)
