"""Where a transformers checkpoint comes from (hub / local / random init), and clear errors.

Where the weights come from (:func:`resolve_source`):

- ``random_init: true``: the architecture from ``spec.config`` (a directory or a
  ``config.json``; defaults to ``spec.checkpoint``), weights drawn with ``spec.seed``.
  Tokenizer / image processor files are taken from the config's directory where present.
- an existing local directory (or a ``.gguf`` file for text models): must hold weights; a
  directory with only a config is an error that says to set ``random_init: true``.
- anything else that looks like a path and does not exist: an error naming the path.
- otherwise a Hugging Face hub id (``from_pretrained`` with ``spec.revision``). Offline
  (``HF_HUB_OFFLINE=1`` or no network) an id that is not in the local cache raises a
  :class:`~vlprobe.errors.ModelLoadError` that says so.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlprobe.errors import ModelLoadError
from vlprobe.models.base import ModelSpec
from vlprobe.settings import expand_path

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class Source:
    """Resolved origin of a checkpoint.

    Attributes:
        kind: ``"hub"``, ``"local"`` or ``"random"``.
        ref: hub id, or local directory (for ``random``: the config's directory or hub id).
        config_file: explicit ``config.json`` path for ``random`` (else None).
        gguf: a local ``.gguf`` file (text models), else None.
    """

    kind: str
    ref: str
    config_file: str | None = None
    gguf: str | None = None

    @property
    def is_local(self) -> bool:
        return self.kind == "local" or (self.kind == "random" and Path(self.ref).is_dir())


def looks_like_path(value: str) -> bool:
    """True for strings that cannot be a hub id (absolute/relative paths, file names)."""
    return (
        value.startswith(("/", "./", "../", "~", "."))
        or "\\" in value
        or value.count("/") > 1
        or os.path.isabs(value)
        or value.endswith((".json", ".gguf", ".pth", ".pt", ".bin", ".safetensors"))
    )


def has_weights(directory: Path) -> bool:
    return any((directory / name).is_file() for name in WEIGHT_FILES) or any(
        directory.glob("*.safetensors")
    )


def resolve_source(
    spec: ModelSpec, *, default_checkpoint: str | None = None, allow_gguf: bool = False
) -> Source:
    """Decide hub / local / random from a spec (see the module docstring)."""
    if spec.random_init:
        ref = spec.config or spec.checkpoint or default_checkpoint
        if not ref:
            raise ModelLoadError(
                f"{spec.adapter}: random_init needs an architecture: set config (a directory "
                "or config.json) or checkpoint"
            )
        path = expand_path(ref)
        if path.is_file() and path.suffix == ".json":
            return Source("random", str(path.parent), config_file=str(path))
        if path.is_file() and path.suffix == ".gguf" and allow_gguf:
            return Source("random", str(path.parent), gguf=str(path))
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelLoadError(f"{spec.adapter}: no config.json in {path}")
            return Source("random", str(path))
        if path.exists() or looks_like_path(ref):
            raise ModelLoadError(f"{spec.adapter}: config path {ref!r} does not exist")
        return Source("random", ref)  # hub id: only its config is fetched

    ref = spec.checkpoint or default_checkpoint
    if not ref:
        raise ModelLoadError(
            f"{spec.adapter}: no checkpoint given. Set checkpoint to a hub id (e.g. "
            "'openai/clip-vit-base-patch32') or a local directory, or set random_init: true "
            "with a config"
        )
    gguf = spec.options.get("gguf_file") if allow_gguf else None
    path = expand_path(ref)
    if gguf:
        gpath = expand_path(gguf)
        if not gpath.is_absolute():
            gpath = path / gguf
        if not gpath.is_file():
            raise ModelLoadError(f"{spec.adapter}: GGUF file {str(gpath)!r} does not exist")
        return Source("local", str(gpath.parent), gguf=str(gpath))
    if path.is_file():
        if path.suffix == ".gguf" and allow_gguf:
            return Source("local", str(path.parent), gguf=str(path))
        if path.suffix == ".json":
            raise ModelLoadError(_weightless_message(spec, path.parent))
        raise ModelLoadError(
            f"{spec.adapter}: checkpoint {ref!r} is a file; give a checkpoint directory"
            + (" or a .gguf file" if allow_gguf else "")
        )
    if path.is_dir():
        if has_weights(path):
            return Source("local", str(path))
        ggufs = sorted(path.glob("*.gguf")) if allow_gguf else []
        if len(ggufs) == 1:
            return Source("local", str(path), gguf=str(ggufs[0]))
        if (path / "config.json").is_file():
            raise ModelLoadError(_weightless_message(spec, path))
        raise ModelLoadError(
            f"{spec.adapter}: checkpoint directory {str(path)!r} holds no model files "
            f"(expected config.json and one of {', '.join(WEIGHT_FILES)})"
        )
    if looks_like_path(ref):
        raise ModelLoadError(f"{spec.adapter}: checkpoint path {ref!r} does not exist")
    return Source("hub", ref)


def _weightless_message(spec: ModelSpec, directory: Path) -> str:
    return (
        f"{spec.adapter}: {str(directory)!r} has a config but no weights "
        f"({', '.join(WEIGHT_FILES[::2])}). If you mean to build this architecture with "
        "random weights, set random_init: true (and seed); random weights are never used "
        "silently."
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


@contextmanager
def hub_errors(source: Source, revision: str | None, what: str = "model") -> Iterator[None]:
    """Turn transformers / huggingface_hub exceptions into one clear ModelLoadError."""
    try:
        yield
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(describe_load_error(exc, source, revision, what)) from exc


def describe_load_error(
    exc: BaseException, source: Source, revision: str | None, what: str = "model"
) -> str:
    name = type(exc).__name__
    text = str(exc)
    ref = source.ref
    if source.kind == "local" or (source.kind == "random" and Path(ref).exists()):
        first = text.splitlines()[0] if text else ""
        return f"could not load the {what} from {ref!r}: {name}: {first}"
    rev = f" (revision {revision!r})" if revision else ""
    lowered = text.lower()
    if name == "RepositoryNotFoundError" or "is not a valid model identifier" in lowered:
        return (
            f"model {ref!r} was not found on the Hugging Face hub: check the id (private or "
            "gated repositories need `hf auth login`), or point checkpoint at a local directory"
        )
    if name == "RevisionNotFoundError" or "invalid git identifier" in lowered:
        return f"model {ref!r}: revision {revision!r} does not exist on the hub"
    offline_markers = ("offline", "couldn't connect", "connection", "cached files", "network")
    if _offline() or name in (
        "OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectionError", "ConnectTimeout",
    ) or any(m in lowered for m in offline_markers):
        return (
            f"model {ref!r}{rev} is not in the local Hugging Face cache and the hub cannot be "
            "reached (offline). Download it once with internet, or point checkpoint at a "
            "local directory"
        )
    first = text.splitlines()[0] if text else ""
    return f"could not load the {what} {ref!r}{rev} from the Hugging Face hub: {name}: {first}"


def dtype_kwarg() -> str:
    """``from_pretrained``'s dtype keyword: ``dtype`` (transformers >= 4.56) or ``torch_dtype``."""
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def config_digest(config: Any) -> str:
    """sha256 of a transformers config's content (without the library version)."""
    d = config.to_dict()
    for key in ("transformers_version", "_commit_hash", "_name_or_path", "_attn_implementation"):
        d.pop(key, None)
    blob = json.dumps(d, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()
