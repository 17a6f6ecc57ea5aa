"""Two processes extracting the same keys at once: the model runs once, nothing is lost.

The order of events is forced with marker files, not timing: process A signals from inside
its first forward pass (so it holds the keys' locks), then waits there until process B
either reports waiting for a lock (a log record of the store) or runs a forward pass itself
(what happened before the store had locks). Only then does A finish. With locks, B waits
and then finds every entry complete: zero forward passes, and the forward passes of both
processes add up to one extraction.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from _helpers import tiny_adapter
from vlprobe.errors import StoreError
from vlprobe.extract import ActivationStore
from vlprobe.extract.cache_admin import verify_all
from vlprobe.extract.store_locks import KeyLocks

N_ITEMS, SHARD, BATCH = 12, 4, 2

CHILD = r'''
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np


def stimuli():
    from vlprobe.data.stimuli import Stimuli

    rng = np.random.default_rng(0)
    words = ["a", "the", "cat", "dog", "bird", "car", "house", "red", "blue", "big", "runs"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 12)))) for _ in range(12)]
    return Stimuli(dataset="race", split="train", ids=[f"r{i}" for i in range(12)], texts=texts)


def wait_for(*paths, deadline_s=180.0):
    end = time.monotonic() + deadline_s
    while not any(Path(p).exists() for p in paths):
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {paths}")
        time.sleep(0.02)


def main(config_dir, store_root, role, markers, out):
    from vlprobe.extract import ActivationStore, extract_features
    from vlprobe.models import ModelSpec, load_model

    markers = Path(markers)
    adapter = load_model(ModelSpec(adapter="hf_text", config=config_dir, random_init=True))
    stim = stimuli()

    class WaitingMarker(logging.Handler):
        def emit(self, record):
            if "waiting" in record.getMessage():
                (markers / f"{role}.waiting").touch()

    logging.getLogger("vlprobe.extract").addHandler(WaitingMarker(level=logging.WARNING))
    orig = adapter.forward
    calls = [0]

    def forward(batch, sites):
        calls[0] += 1
        if calls[0] == 1:
            (markers / f"{role}.forwarding").touch()
            if role == "A":  # hold on (with the locks) until B is blocked or computing
                wait_for(markers / "B.waiting", markers / "B.forwarding")
        return orig(batch, sites)

    adapter.forward = forward
    if role == "B":  # start once A is computing, i.e. holds the locks
        wait_for(markers / "A.forwarding")
    res = extract_features(adapter, stim, modality="text", store=ActivationStore(store_root),
                           batch_size=2, shard_size=4, progress=False)
    np.savez(out + ".npz", **{s: np.asarray(a) for s, a in res.features.items()})
    Path(out).write_text(json.dumps({
        "n_forward_batches": res.n_forward_batches, "n_items_computed": res.n_items_computed,
        "keys": res.keys, "store_events": res.store_events,
    }))


if __name__ == "__main__":
    main(*sys.argv[1:6])
'''


def test_two_processes_extract_the_same_keys_once(tmp_path):
    adapter = tiny_adapter("hf_text", tmp_path)  # writes the tiny config dir once
    config_dir = adapter.spec.config
    script, root, markers = tmp_path / "child.py", tmp_path / "acts", tmp_path / "markers"
    script.write_text(CHILD)
    markers.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {
        role: subprocess.Popen(
            [sys.executable, str(script), str(config_dir), str(root), role, str(markers),
             str(tmp_path / f"{role}.json")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for role in ("A", "B")
    }
    try:
        for role, proc in procs.items():
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"process {role} failed: {err.decode()[-3000:]}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    a, b = (json.loads((tmp_path / f"{r}.json").read_text()) for r in ("A", "B"))
    assert (markers / "B.waiting").exists() and not (markers / "B.forwarding").exists()
    n_batches = (N_ITEMS // SHARD) * -(-SHARD // BATCH)
    assert a["n_forward_batches"] == n_batches and a["n_items_computed"] == N_ITEMS
    assert b["n_forward_batches"] == 0 and b["n_items_computed"] == 0
    assert a["n_forward_batches"] + b["n_forward_batches"] == n_batches
    assert a["keys"] == b["keys"] and a["store_events"] == b["store_events"] == []
    fa, fb = np.load(str(tmp_path / "A.json") + ".npz"), np.load(str(tmp_path / "B.json") + ".npz")
    assert sorted(fa.files) == sorted(a["keys"])
    for site in fa.files:
        np.testing.assert_array_equal(fa[site], fb[site])
    # the store is consistent: every entry complete and intact, no leftovers
    store = ActivationStore(root)
    results = verify_all(store)
    assert sorted(r.key for r in results) == sorted(a["keys"].values())
    assert all(r.status == "ok" and r.complete for r in results)
    assert not list(root.glob("*/.tmp-*")) and not list(root.glob("*/shard_*"))
    assert not any(store.is_locked(k) for k in a["keys"].values())


def test_lock_is_reentrant_sorted_and_exclusive_across_threads(tmp_path):
    store = ActivationStore(tmp_path / "acts")
    k1, k2 = "a" * 32, "b" * 32
    with store.lock([k2, k1]), store.lock(k1):  # re-entrant in this thread
        seen: list[bool] = []
        t = threading.Thread(target=lambda: seen.append(store.is_locked(k1)))
        t.start()
        t.join()
        assert seen == [True]

        def other_thread_times_out():
            try:
                with store.lock([k1], timeout=0.05):
                    seen.append(False)
            except StoreError as exc:
                seen.append("still held" in str(exc))

        t = threading.Thread(target=other_thread_times_out)
        t.start()
        t.join()
        assert seen == [True, True]
    assert not store.is_locked(k1) and not store.is_locked(k2)
    assert sorted(p.name for p in (tmp_path / "acts" / ".locks").iterdir()) == [
        f"{k1}.lock", f"{k2}.lock"
    ]
    assert list(store.keys()) == []  # lock files are not entries
    assert Path(store.root).is_dir()


def test_read_only_store_is_read_without_locks(tmp_path, monkeypatch, caplog):
    """A store whose directory cannot hold lock files (a read-only shared cache; simulated:
    the tests may run as root, who can write anywhere) is still readable."""
    store = ActivationStore(tmp_path / "acts")
    key = "c" * 32
    store.open_entry(key, {"s": 1}, 3, 3)
    store.write_shard(key, 0, np.ones((3, 2)))
    store.finalize(key)

    def read_only(self, key):
        raise OSError(errno.EROFS, "Read-only file system", str(self.lock_dir))

    monkeypatch.setattr(KeyLocks, "file_lock", read_only)
    with caplog.at_level("WARNING"), store.lock([key]):
        np.testing.assert_array_equal(store.load(key), np.ones((3, 2), np.float32))
    assert "read-only store, not locking" in caplog.text
    with store.try_lock(key) as free:
        assert free

    # any other failure to lock is an error, not a silent fallback
    def disk_full(self, key):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(KeyLocks, "file_lock", disk_full)
    with pytest.raises(OSError, match="No space"), store.lock([key]):
        pass
