"""Cross-process locks of activation-store keys (one lock file per key).

Built on PyPI ``filelock`` (``fcntl.flock`` on POSIX, ``msvcrt`` locking on Windows): a lock
is released by the operating system when its holder dies, even by SIGKILL, so a killed run
never leaves a key locked. Lock files are empty and are never deleted (deleting a lock file
while another process waits on it would let two processes hold "the" lock at once).

A store on a read-only filesystem or directory (a lab-shared cache mounted read-only) cannot
hold lock files; since nobody can write its entries either, locking is skipped there with a
warning instead of failing reads of complete entries.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from vlprobe.errors import StoreError

log = logging.getLogger(__name__)

#: errors that mean "this directory cannot hold lock files" (read-only store)
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)


class KeyLocks:
    """Locks of the keys of one store, as files ``<lock_dir>/<key>.lock``."""

    def __init__(self, lock_dir: Path) -> None:
        self.lock_dir = Path(lock_dir)

    def file_lock(self, key: str) -> FileLock:
        """The lock of ``key``: one instance per path and process (``is_singleton``), so it
        is re-entrant within a thread and exclusive across threads and processes."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(self.lock_dir / f"{key}.lock", is_singleton=True)

    def _acquire(
        self, key: str, timeout: float | None, *, wait: bool = True
    ) -> tuple[bool, FileLock | None]:
        """Take ``key``'s lock: ``(True, lock)``; ``(True, None)`` when the store cannot hold
        lock files (read-only); ``(False, None)`` when it is held elsewhere and not ``wait``.

        Raises:
            StoreError: still held elsewhere after ``timeout`` seconds.
        """
        try:
            lk = self.file_lock(key)
            try:
                lk.acquire(timeout=0)
            except Timeout:
                if not wait:
                    return False, None
                log.warning("store entry %s is locked by another process; waiting", key)
                try:
                    lk.acquire(timeout=-1 if timeout is None else timeout)
                except Timeout:
                    raise StoreError(
                        f"store entry {key}: lock {lk.lock_file} still held after {timeout} s "
                        "(another vlprobe process is writing it)"
                    ) from None
        except OSError as exc:
            if isinstance(exc, Timeout) or exc.errno not in _READ_ONLY:
                raise
            log.warning("cannot lock store entry %s (%s): read-only store, not locking", key, exc)
            return True, None
        return True, lk

    @contextlib.contextmanager
    def hold(self, keys: Iterable[str], timeout: float | None = None) -> Iterator[None]:
        """Hold the locks of ``keys`` for the block, taken in sorted order (two processes
        locking overlapping sets cannot deadlock), each waited for up to ``timeout`` s
        (None = forever; a wait is logged once per key)."""
        held: list[FileLock] = []
        try:
            for key in sorted(set(keys)):
                lk = self._acquire(key, timeout)[1]
                if lk is not None:
                    held.append(lk)
            yield
        finally:
            for lk in reversed(held):
                lk.release()

    @contextlib.contextmanager
    def try_hold(self, key: str) -> Iterator[bool]:
        """Take ``key``'s lock if it is free: yields True (held for the block, or the store
        is read-only) or False (held by another process or thread)."""
        got, lk = self._acquire(key, 0, wait=False)
        try:
            yield got
        finally:
            if lk is not None:
                lk.release()
