"""Small file helpers shared by the activation store and the run records.

Atomic writes go to a temp file in the target's directory, are flushed and fsynced, then
moved into place with :func:`os.replace`, so a reader sees either the old file or the whole
new one, never a part.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


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


def fsync_dir(path: Path) -> None:
    """fsync a directory, making renames inside it durable (no-op where unsupported)."""
    with contextlib.suppress(OSError):  # not supported on every platform / filesystem
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(
    path: Path, data: bytes, *, tmp_prefix: str = ".tmp-", sync_dir: bool = True
) -> None:
    """Write ``data`` to ``path`` atomically (temp file ``<tmp_prefix><name>.*`` in the same
    directory, fsync, replace).

    ``sync_dir`` also fsyncs the directory, making the rename itself durable (needed before
    a later file that depends on this one, e.g. a shard before its sidecar)."""
    fd, tmp = make_temp_file(path.parent, prefix=f"{tmp_prefix}{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_json(
    path: Path, obj: Any, *, tmp_prefix: str = ".tmp-", sync_dir: bool = True
) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=1, sort_keys=True) + "\n"
    atomic_write_bytes(path, text.encode(), tmp_prefix=tmp_prefix, sync_dir=sync_dir)


def read_json_dict(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None if the file is missing, unreadable or not a dict."""
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def file_digest(path: Path | str, algorithm: str = "sha256", chunk: int = 1 << 22) -> str:
    """Hex digest of a file's bytes, read in ``chunk``-byte pieces (memory stays flat).

    (``hashlib.file_digest`` does this from Python 3.11; vlprobe supports 3.10.)"""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
