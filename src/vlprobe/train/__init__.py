"""``vlprobe train``: small real multimodal models from registered frozen towers (M8).

- :mod:`vlprobe.train.config`: the YAML config;
- :mod:`vlprobe.train.features`: frozen tower features through the activation store;
- :mod:`vlprobe.train.aligned`: projection heads + temperature + InfoNCE, selection on
  validation, test once;
- :mod:`vlprobe.train.checkpoint`: safetensors + config + training record, loaded back by the
  ``aligned_dual`` adapter (:mod:`vlprobe.models.aligned`).
"""

from vlprobe.train.config import TrainConfig, load_train_config, parse_train_config

__all__ = ["TrainConfig", "load_train_config", "parse_train_config", "train"]


def train(cfg: TrainConfig, progress: bool = True):
    """Train ``cfg`` and return its checkpoint directory (see :func:`vlprobe.train.run.train`)."""
    from vlprobe.train.run import train as _train

    return _train(cfg, progress=progress)
