"""Opening a checkpoint directory written by ``vlprobe train`` (:mod:`vlprobe.train.checkpoint`).

Shared by the adapters of trained models (``aligned_dual``, ``grid_captioner``): the checks on
the directory and its recorded config, and the frozen towers rebuilt from the specs recorded
there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlprobe.errors import ModelLoadError
from vlprobe.models.base import ModelAdapter, ModelSpec


def open_checkpoint(spec: ModelSpec, adapter: str) -> tuple[Path, dict[str, Any]]:
    """(directory, recorded config) of ``spec.checkpoint``, a ``vlprobe train`` directory of
    a model for ``adapter``.

    Raises:
        ModelLoadError: no checkpoint, ``random_init`` asked for, a missing directory, or a
            directory that holds another adapter's checkpoint.
    """
    from vlprobe.settings import expand_path
    from vlprobe.train.checkpoint import read_config

    if not spec.checkpoint:
        raise ModelLoadError(f"{adapter}: set checkpoint to a `vlprobe train` directory")
    if spec.random_init:
        raise ModelLoadError(f"{adapter}: random_init is not supported (train one)")
    directory = expand_path(spec.checkpoint)
    if not directory.is_dir():
        raise ModelLoadError(f"{adapter}: checkpoint directory {str(directory)!r} does not exist")
    config = read_config(directory)
    if config.get("adapter") != adapter:
        raise ModelLoadError(
            f"{adapter}: {directory} holds a {config.get('adapter')!r} checkpoint"
        )
    return directory, config


def load_tower(
    config: dict[str, Any], key: str, modality: str, device: str, adapter: str
) -> ModelAdapter:
    """The frozen tower recorded under ``config[key]`` (a model spec plus the ``sites`` and
    ``pooling`` training read), loaded; it must take ``modality`` inputs."""
    from vlprobe.models import load_model

    entry = dict(config[key])
    entry.pop("sites")
    entry.pop("pooling")
    entry.pop("unfreeze_last", None)  # aligned_dual loads the trained blocks after this
    tower = load_model(ModelSpec(**entry), device=device)
    if modality not in tower.modalities:
        raise ModelLoadError(
            f"{adapter}: the {key} ({entry['adapter']}) has no {modality} input"
        )
    return tower
