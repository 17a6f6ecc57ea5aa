"""Cache keys of the activation store.

A key is the sha256 of the canonical JSON (sorted keys, no whitespace) of everything that
changes the stored numbers:

- the adapter's :meth:`~vlprobe.models.base.ModelAdapter.identity` (checkpoint id, revision or
  file hash, preprocessing, random-init seed, dtype);
- the stimuli identity: dataset name, split, source / loader options and
  :meth:`~vlprobe.data.stimuli.Stimuli.fingerprint` (ids, payload digests and labels, so a
  different subsample seed gives a different key);
- the modality (which tower runs), the site and the pooling method (``grid<g>`` names
  carry their grid size, so ``grid7`` and ``grid4`` and ``mean`` entries never collide);
- the software that computes the numbers: the vlprobe, torch and transformers versions
  (:func:`software_versions`; torch's local build tag such as ``+cpu`` / ``+cu121`` is
  dropped: the device is not part of the key either) and :data:`STORE_FORMAT_VERSION`.

The readable key dict is kept next to the data (``meta.json`` of the entry), so ``ls`` /
``info`` can say what an entry holds.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np

import vlprobe

#: bump when the on-disk layout or the meaning of stored numbers changes.
#: 2: entry kinds (dense N-D / ragged), float16, torch/transformers versions in the key.
STORE_FORMAT_VERSION = 2

#: length of the hex key used as the entry directory name (128 bits).
KEY_HEX_CHARS = 32


def _canonical(value: Any, where: str = "key") -> Any:
    """A JSON-ready copy of ``value`` whose serialisation does not depend on object identity."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if not math.isfinite(f):
            return repr(f)
        return f
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            out[str(k)] = _canonical(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        return sorted((_canonical(v, where) for v in value), key=repr)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, np.ndarray):
        return {"ndarray_sha256": hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest(),
                "shape": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, bytes):
        return {"bytes_sha256": hashlib.sha256(value).hexdigest()}
    text = str(value)
    if " at 0x" in text:  # a default repr: not stable across processes
        raise TypeError(
            f"{where}: {type(value).__name__} is not JSON-serialisable in a stable way; "
            "identities must be built from str/int/float/bool/list/dict values"
        )
    return text


def canonical_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, compact separators, ASCII only."""
    return json.dumps(
        _canonical(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def hash_key(key_dict: Mapping[str, Any]) -> str:
    """Hex key (first :data:`KEY_HEX_CHARS` of the sha256) of a key dict."""
    return hashlib.sha256(canonical_json(key_dict).encode("ascii")).hexdigest()[:KEY_HEX_CHARS]


def software_versions() -> dict[str, str]:
    """Versions of the libraries that compute the stored numbers, as they enter every key:
    ``{"vlprobe_version", "torch_version", "transformers_version"}`` (read from the imported
    modules at call time; torch's ``+local`` build tag dropped)."""
    import torch
    import transformers

    return {
        "vlprobe_version": vlprobe.__version__,
        "torch_version": str(torch.__version__).split("+", 1)[0],
        "transformers_version": str(transformers.__version__),
    }


def stimuli_identity(stimuli: Any) -> dict[str, Any]:
    """What about a :class:`~vlprobe.data.stimuli.Stimuli` changes the activations."""
    return {
        "dataset": stimuli.dataset,
        "split": stimuli.split,
        "source": _canonical(dict(stimuli.source or {}), "stimuli.source"),
        "fingerprint": stimuli.fingerprint(),
        "n_items": len(stimuli),
    }


def make_key_dict(
    adapter_identity: Mapping[str, Any],
    stimuli_ident: Mapping[str, Any],
    *,
    modality: str,
    site: str,
    pooling: str,
) -> dict[str, Any]:
    """The readable key dict of one (model, stimuli, modality, site, pooling) entry."""
    return {
        "model": _canonical(dict(adapter_identity), "adapter.identity()"),
        "stimuli": _canonical(dict(stimuli_ident), "stimuli"),
        "modality": modality,
        "site": site,
        "pooling": pooling,
        **software_versions(),
        "store_format": STORE_FORMAT_VERSION,
    }


def activation_key(
    adapter: Any, stimuli: Any, *, modality: str, site: str, pooling: str
) -> tuple[str, dict[str, Any]]:
    """``(key, key_dict)`` for one site of one extraction (convenience wrapper)."""
    key_dict = make_key_dict(
        adapter.identity(), stimuli_identity(stimuli), modality=modality, site=site,
        pooling=pooling,
    )
    return hash_key(key_dict), key_dict
