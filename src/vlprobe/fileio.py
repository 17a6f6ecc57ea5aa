"""Small file helpers shared by the activation store and the run records."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _default_mode() -> int:
    """Permissions of a newly created file under the current umask (0o644 typically).

    ``tempfile.mkstemp`` creates files 0o600; results and caches must be as readable as any
    other file the user writes (a lab-shared cache, a run directory served over HTTP).
    """
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def make_temp_file(directory: Path, prefix: str, suffix: str = "") -> tuple[int, str]:
    """``mkstemp`` in ``directory`` with the umask's usual permissions: ``(fd, path)``."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
    os.fchmod(fd, _default_mode())
    return fd, name
