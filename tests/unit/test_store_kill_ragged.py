"""A writer SIGKILLed while writing a ragged entry loses only the shard in flight.

The child writes a ragged float16 entry (fake attention maps ``[H, T_i, T_i]``) shard by
shard while holding the key's lock, and blocks forever at a chosen point of shard 2's
commit (patched in the child only): either after the shard file is in place but before its
sidecar (the commit marker) exists, or halfway through writing the shard's temp file. The
parent waits for the child's marker file, checks that the entry is locked (so garbage
collection leaves it alone), sends SIGKILL, and resumes: shards 0 and 1 are reused, the
rest is written again, and the result equals an uninterrupted write.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from kill_helpers import child_process, sigkill, wait_for
from vlprobe.extract import ActivationStore
from vlprobe.extract.cache_admin import collect_garbage
from vlprobe.extract.store import shard_bounds, shard_name, sidecar_name

N_ITEMS, SHARD, KEY = 18, 4, "a" * 32

CHILD = r'''
import os
import sys
import time
from pathlib import Path

import numpy as np


def items(n):
    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        t = int(rng.integers(1, 12))
        out.append(rng.random((2, t, t)).astype(np.float32))
    return out


def hang(marker):
    Path(marker).write_text("hanging")
    while True:  # wait to be killed
        time.sleep(60)


def main(root, marker, where):
    import vlprobe.extract.store as store_mod
    from vlprobe.extract import ActivationStore
    from vlprobe.fileio import make_temp_file

    n, shard, key = int(os.environ["N_ITEMS"]), int(os.environ["SHARD"]), os.environ["KEY"]
    if where == "before_sidecar":
        real = store_mod._write_json

        def write_json(path, obj, **kw):
            if Path(path).name == "shard_00002.json":
                hang(marker)
            return real(path, obj, **kw)

        store_mod._write_json = write_json
    else:  # halfway through the shard's temp file
        real_bytes = store_mod.atomic_write_bytes

        def atomic_write_bytes(path, data, **kw):
            if Path(path).name == "shard_00002.safetensors":
                fd, _ = make_temp_file(Path(path).parent, prefix=f".tmp-{Path(path).name}.")
                os.write(fd, data[: len(data) // 2])
                os.fsync(fd)
                hang(marker)
            return real_bytes(path, data, **kw)

        store_mod.atomic_write_bytes = atomic_write_bytes
    store = ActivationStore(root)
    data = items(n)
    with store.lock(key):
        store.open_entry(key, {"site": "attn"}, n, shard, kind="ragged", dtype="float16")
        for i in store.missing_shards(key):
            start, stop = i * shard, min(i * shard + shard, n)
            store.write_shard(key, i, data[start:stop])
        store.finalize(key)
    sys.exit(3)  # never reached: the parent kills us


if __name__ == "__main__":
    main(*sys.argv[1:4])
'''


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL semantics")
@pytest.mark.parametrize("where", ["before_sidecar", "mid_temp_file"])
def test_sigkill_during_ragged_write_loses_only_the_shard_in_flight(tmp_path, where):
    script, root, marker = tmp_path / "child.py", tmp_path / "acts", tmp_path / "hanging"
    script.write_text(CHILD)
    env = {**os.environ, "N_ITEMS": str(N_ITEMS), "SHARD": str(SHARD), "KEY": KEY}
    store = ActivationStore(root)
    with child_process([script, root, marker, where], env) as proc:
        wait_for(proc, marker.exists, 120, "reach shard 2")
        # the writer is alive and holds the lock: garbage collection must not touch it
        assert store.is_locked(KEY)
        actions = collect_garbage(store, incomplete=True)
        assert [(a.path.name, a.removed) for a in actions] == [(KEY, False)]
        sigkill(proc)
    assert not store.is_locked(KEY)  # the OS released the dead writer's lock

    entry = store.entry_dir(KEY)
    assert sorted(p.name for p in entry.glob("shard_*.json")) == [sidecar_name(0), sidecar_name(1)]
    leftovers = sorted(p.name for p in entry.glob(".tmp-*"))
    if where == "before_sidecar":
        assert (entry / shard_name(2)).exists() and leftovers == []
    else:
        assert not (entry / shard_name(2)).exists() and len(leftovers) == 1
    assert not (entry / "data.npy").exists()

    sys.path.insert(0, str(tmp_path))
    try:
        import importlib

        child = importlib.import_module("child")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("child", None)
    items = child.items(N_ITEMS)
    resumed = ActivationStore(root)
    with resumed.lock(KEY):
        resumed.open_entry(KEY, {"site": "attn"}, N_ITEMS, SHARD, kind="ragged",
                           dtype="float16")
        missing = resumed.missing_shards(KEY)
        assert missing == [2, 3, 4]  # only the shard in flight (and those after it) is lost
        for i in missing:
            start, stop = shard_bounds(i, N_ITEMS, SHARD)
            resumed.write_shard(KEY, i, items[start:stop])
        resumed.finalize(KEY)
    assert (where == "before_sidecar") == any("without sidecar" in e for e in resumed.events)
    ra = resumed.load_ragged(KEY)
    assert len(ra) == N_ITEMS
    for got, want in zip(ra, items):
        np.testing.assert_array_equal(got, want.astype(np.float16))
    assert resumed.verify_entry(KEY) == []
    removed = resumed.gc()  # the killed writer's half temp file (if any) is garbage now
    assert [p.name for p in removed] == leftovers
    assert Path(root).is_dir()
