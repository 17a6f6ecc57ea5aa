"""Where vlprobe keeps things on disk, each overridable by an environment variable.

- ``VLPROBE_CACHE``: the activation store and converted model files
  (default: the user cache dir, e.g. ``~/.cache/vlprobe``).
- ``VLPROBE_RUNS``: where ``vlprobe run`` writes run directories (default: ``./vlprobe_runs``).
- ``VLPROBE_REFERENCE``: the reference kit (real data / model configs) used by tests,
  benchmarks and configs that say ``${reference}/...``. There is no default: code that needs
  it asks :func:`reference_dir` and gets a clear error where it is not set.
"""

from __future__ import annotations

import os
from pathlib import Path

from vlprobe.errors import ConfigError


def cache_dir() -> Path:
    """Root of the activation store and model conversion cache."""
    env = os.environ.get("VLPROBE_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("vlprobe"))


def runs_dir() -> Path:
    """Default parent directory of run directories."""
    return Path(os.environ.get("VLPROBE_RUNS", "vlprobe_runs")).expanduser()


def reference_dir(required: bool = True) -> Path | None:
    """The reference kit directory from ``VLPROBE_REFERENCE``.

    Args:
        required: raise :class:`ConfigError` when unset or missing (else return None).
    """
    env = os.environ.get("VLPROBE_REFERENCE")
    path = Path(env).expanduser() if env else None
    if path is not None and path.is_dir():
        return path
    if not required:
        return None
    if path is None:
        raise ConfigError(
            "this needs the reference kit: set VLPROBE_REFERENCE to its directory "
            "(e.g. export VLPROBE_REFERENCE=../shared/reference)"
        )
    raise ConfigError(f"VLPROBE_REFERENCE={env} is not a directory")


def expand_path(value: str) -> Path:
    """Expand ``~``, environment variables and ``${reference}`` in a user-given path."""
    if "${reference}" in value:
        value = value.replace("${reference}", str(reference_dir()))
    return Path(os.path.expandvars(value)).expanduser()
