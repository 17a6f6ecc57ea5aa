"""Helpers of the kill -9 tests: a child process that blocks forever at a known point (so
the moment of the kill is deterministic, no timing races), the parent waits for it there,
sends SIGKILL, and checks what the store kept.

:func:`kill_extraction_midway` is the whole parent side of the extraction tests: the child
(``tests/kill_extract_child.py``) extracts with a tiny text model whose ``forward`` blocks
after ``hang_after`` calls.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHILD_SCRIPT = Path(__file__).resolve().parent / "kill_extract_child.py"


@contextmanager
def child_process(args: Sequence[str], env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """``python *args`` with ``env`` (+ ``OMP_NUM_THREADS=1``); killed on the way out if it
    is still running."""
    proc = subprocess.Popen([sys.executable, *map(str, args)],
                            env={**env, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(proc: subprocess.Popen, ready: Callable[[], bool], timeout_s: float,
             what: str) -> None:
    """Poll ``ready()`` until it holds; fail the test (with the child's stderr) if the child
    exits first, or naming ``what`` it did not do after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"child exited early ({proc.returncode}): {err.decode()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"child did not {what} in time")
        time.sleep(0.02)


def sigkill(proc: subprocess.Popen) -> None:
    """SIGKILL the child and check that this is what ended it."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def committed_shards(root: Path) -> dict[str, set[int]]:
    """Store entry name -> indices of its committed shards (those with a sidecar)."""
    out = {}
    for entry in root.iterdir() if root.is_dir() else []:
        if entry.is_dir() and not entry.name.startswith("."):  # not the store's .locks
            out[entry.name] = {int(p.stem.split("_")[1]) for p in entry.glob("shard_*.json")}
    return out


def kill_extraction_midway(
    tmp_path: Path, n_items: int, hang_after: int, n_outputs: int | None,
    extract_kw: dict[str, Any],
) -> tuple[Any, Any, Path]:
    """Run ``extract_features(adapter, stimuli, store=<tmp_path/acts>, **extract_kw)`` in a
    child whose ``forward`` blocks after ``hang_after`` calls; SIGKILL it once every one of
    the ``n_outputs`` store entries (None: one per site of ``extract_kw``, resolved as the
    extractor does; no attention outputs) has committed shards 0 and 1.

    Returns (the parent's copy of the adapter, the stimuli, the store root). Checks that the
    store holds exactly shards 0 and 1 of every entry and that the child's model identity is
    the parent's (same cache keys)."""
    from kill_extract_child import build

    model_dir, root, marker = tmp_path / "model", tmp_path / "acts", tmp_path / "hanging"
    adapter, stim = build(model_dir, n_items)
    if n_outputs is None:
        from vlprobe.extract.extractor import resolve_sites

        n_outputs = len(resolve_sites(adapter, extract_kw["modality"], extract_kw["sites"]))
    env = {**os.environ, "N_ITEMS": str(n_items), "HANG_AFTER": str(hang_after),
           "EXTRACT_KW": json.dumps(extract_kw)}

    def two_shards_each() -> bool:
        committed = committed_shards(root)
        return (marker.exists() and len(committed) == n_outputs
                and all(s >= {0, 1} for s in committed.values()))

    with child_process([CHILD_SCRIPT, model_dir, root, marker], env) as proc:
        wait_for(proc, two_shards_each, 240, "commit two shards")
        sigkill(proc)

    committed = committed_shards(root)
    fully = set.intersection(*committed.values())
    assert fully == {0, 1}, committed  # shard 2 was only half done in memory: not on disk
    assert not list(root.glob("*/data.npy"))
    child_identity = json.loads(Path(f"{marker}.identity.json").read_text())
    assert json.loads(json.dumps(adapter.identity(), sort_keys=True)) == child_identity
    return adapter, stim, root
