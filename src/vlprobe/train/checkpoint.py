"""Checkpoints of ``vlprobe train``: a directory that loads back as a model in a run config
(``adapter: aligned_dual, checkpoint: DIR``).

Layout::

    DIR/model.safetensors      the trained tensors (no pickle)
    DIR/config.json            {"format", "kind", "adapter", architecture, frozen towers, ...}
    DIR/training_record.json   data fingerprints, seed, losses and metrics per epoch, test
                               metrics and controls, timings, versions

Loading checks that the tensors match what ``config.json`` describes (names and shapes) and
names the first mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlprobe.errors import ModelLoadError

FORMAT = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
RECORD = "training_record.json"


def save_checkpoint(
    directory: str | Path, tensors: dict[str, Any], config: dict[str, Any],
    record: dict[str, Any],
) -> Path:
    """Write the three files (each atomically); returns the directory."""
    from safetensors.torch import save_file

    from vlprobe.extract.store import atomic_write_json

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    shapes = {k: list(v.shape) for k, v in tensors.items()}
    tmp = out / f".{WEIGHTS}.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(out / WEIGHTS)
    atomic_write_json(out / CONFIG, {"format": FORMAT, **config, "tensors": shapes})
    atomic_write_json(out / RECORD, record)
    return out


def read_config(directory: str | Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint directory (clear errors for a missing / bad file)."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {str(directory)!r} has no {CONFIG}")
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from None
    if config.get("format") != FORMAT:
        raise ModelLoadError(f"{path}: format {config.get('format')!r}, expected {FORMAT}")
    return config


def load_tensors(directory: str | Path, config: dict[str, Any]) -> dict[str, Any]:
    """The tensors of a checkpoint, checked against ``config["tensors"]`` (name -> shape)."""
    from safetensors.torch import load_file

    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {str(directory)!r} has no {WEIGHTS}")
    tensors = load_file(str(path))
    want = config.get("tensors") or {}
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    if missing or extra:
        raise ModelLoadError(
            f"{path}: tensors do not match {CONFIG}: missing {missing[:3]}, unexpected "
            f"{extra[:3]}"
        )
    for name, shape in want.items():
        if list(tensors[name].shape) != list(shape):
            raise ModelLoadError(
                f"{path}: tensor {name!r} has shape {list(tensors[name].shape)}, {CONFIG} says "
                f"{list(shape)}"
            )
    return tensors
