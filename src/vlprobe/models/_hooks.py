"""Shared adapter helpers: forward-hook capture, layer selection, dtype/device, file hashes.

Nothing here imports torch at module import time (``vlprobe models`` stays fast); the
functions that need it import it lazily.

Hook kinds (see :class:`HookTarget`):

- ``"output"``: the module's output (first element when a module returns a tuple, which
  transformers < 5 layers do; transformers 5 layers return a tensor);
- ``"attn"``: element 1 of the output of an attention module that returns
  ``(attn_output, attn_weights)`` (transformers' eager attention): ``[B, H, T_q, T_k]``;
- ``"input"``: the first positional (or ``hidden_states=``) input of the module, captured by
  a forward *pre*-hook. ``*.embed`` sites use it on block 0: "the input to block 0" is exactly
  HF's ``hidden_states[0]`` whatever the family does before its first block.

Captured tensors are detached, cast to ``float32`` and moved to the CPU, except with
``capture(..., detach=False)`` (the differentiable path), which keeps them in the graph.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlprobe.errors import ConfigError, ModelLoadError
from vlprobe.models.base import file_sha256

if TYPE_CHECKING:  # pragma: no cover
    pass

_DTYPES = ("float32", "float16", "bfloat16")


# -- hooks --------------------------------------------------------------------------------
@dataclass(frozen=True)
class HookTarget:
    """Where a site is captured: a dotted module path inside the model and a hook kind."""

    module: str
    kind: str = "output"  # "output" | "attn" | "input"


def _to_cpu(x: Any) -> Any:
    return x.detach().float().cpu()


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, (tuple, list)) else x


@contextmanager
def capture(
    model: Any, targets: Mapping[str, HookTarget], detach: bool = True
) -> Iterator[dict[str, Any]]:
    """Register forward hooks on exactly the modules of ``targets``; always remove them.

    Yields a dict that fills with ``site -> tensor`` while the model runs inside the block
    (float32 CPU copies, or the live tensors with ``detach=False``).
    """
    store: dict[str, Any] = {}
    keep = _to_cpu if detach else (lambda x: x)
    handles: list[Any] = []

    def post_hook(site: str, kind: str):
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            if kind == "attn":
                weights = (
                    output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
                )
                if weights is None:
                    raise ModelLoadError(
                        f"site {site}: the attention module returned no weights; load the "
                        "model with attn_implementation='eager'"
                    )
                store[site] = keep(weights)
            else:
                store[site] = keep(_first(output))

        return hook

    def pre_hook(site: str):
        def hook(_module: Any, args: Any, kwargs: Any) -> None:
            x = args[0] if args else kwargs.get("hidden_states")
            store[site] = keep(_first(x))

        return hook

    try:
        for site, target in targets.items():
            module = model.get_submodule(target.module)
            if target.kind == "input":
                handles.append(module.register_forward_pre_hook(pre_hook(site), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(post_hook(site, target.kind)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def count_hooks(model: Any) -> int:
    """Total number of forward (pre-)hooks on a model's modules (for leak tests)."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()
    )


# -- dtype / device -----------------------------------------------------------------------
def torch_dtype(name: str) -> Any:
    """``"float32"`` | ``"float16"`` | ``"bfloat16"`` -> torch dtype (clear error otherwise)."""
    if name not in _DTYPES:
        raise ConfigError(f"dtype {name!r} is not supported; use one of {', '.join(_DTYPES)}")
    import torch

    return getattr(torch, name)


def to_device(inputs: Mapping[str, Any], device: str) -> dict[str, Any]:
    """Move every tensor of a model-input dict to ``device``."""
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in inputs.items()}


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG inside the block and restore the previous state after."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


# -- files --------------------------------------------------------------------------------
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def cached_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, memoised in memory per (path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = file_sha256(p)
    return _HASH_CACHE[key]


_FINGERPRINT_SUFFIXES = (
    ".json", ".txt", ".model", ".safetensors", ".bin", ".pth", ".pt", ".gguf", ".jinja",
)


def dir_fingerprint(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{file name: sha256}`` of the files of a checkpoint directory that change numbers
    (weights, configs, tokenizer / preprocessor files; not READMEs)."""
    p = Path(path)
    if p.is_file():
        return {p.name: cached_sha256(p)}
    return {
        f.name: cached_sha256(f)
        for f in sorted(p.iterdir())
        if f.is_file() and f.suffix in _FINGERPRINT_SUFFIXES and not f.name.startswith(".")
    }


def package_dir(module: str) -> Path | None:
    """Directory of an installed package, found without importing it (None if absent)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None
