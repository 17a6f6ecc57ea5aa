"""``vlprobe cache ls / gc / verify`` on a small store."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from vlprobe.cli import main
from vlprobe.data.stimuli import Stimuli
from vlprobe.extract import ActivationStore, hash_key, make_key_dict, stimuli_identity
from vlprobe.extract.store import shard_bounds

IDENT = {"adapter": "hf_text", "checkpoint": "org/tiny-bert", "random_init": False}


def _stim(dataset="toy", split="test"):
    return Stimuli(dataset=dataset, split=split, ids=[f"i{i}" for i in range(6)],
                   texts=[f"text {i}" for i in range(6)])


def _entry(store, site, *, kind="dense", complete=True, shards=None, key_dict=None):
    kd = key_dict or make_key_dict(IDENT, stimuli_identity(_stim()), modality="text", site=site,
                                   pooling="mean" if kind == "dense" else "none")
    key = hash_key(kd)
    rng = np.random.default_rng(len(site))
    store.open_entry(key, kd, 6, 4, kind=kind, dtype="float32" if kind == "dense" else "float16")
    for i in range(2) if shards is None else shards:
        start, stop = shard_bounds(i, 6, 4)
        if kind == "dense":
            store.write_shard(key, i, rng.standard_normal((stop - start, 8)))
        else:
            store.write_shard(key, i, [rng.random((2, t, t)) for t in range(start + 1, stop + 1)])
    if complete:
        store.finalize(key)
    return key


@pytest.fixture
def cache(tmp_path):
    """A cache dir with: two complete dense entries, one complete ragged entry, one incomplete
    entry, one stale entry (older store format / versions), an orphan directory and a temp
    file left by a killed writer."""
    store = ActivationStore(tmp_path / "activations")
    keys = {
        "dense": _entry(store, "text.blocks.0"),
        "dense2": _entry(store, "text.blocks.1"),
        "ragged": _entry(store, "text.blocks.0.attn", kind="ragged"),
        "incomplete": _entry(store, "text.blocks.2", complete=False, shards=[0]),
    }
    stale_kd = {**make_key_dict(IDENT, stimuli_identity(_stim()), modality="text",
                                site="text.blocks.3", pooling="mean"), "torch_version": "1.0.0"}
    keys["stale"] = _entry(store, "text.blocks.3", key_dict=stale_kd)
    (store.root / ("o" * 32)).mkdir()  # orphan: no meta.json
    (store.entry_dir(keys["dense"]) / ".tmp-data.npy.abc").write_bytes(b"half")
    return tmp_path, store, keys


def _run(capsys, *argv):
    code = main(["cache", *argv])
    return code, capsys.readouterr().out


def test_cache_ls(cache, capsys):
    cache_dir, _, keys = cache
    code, out = _run(capsys, "ls", "--cache-dir", str(cache_dir))
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["key", "model", "data", "site", "pooling", "shape", "dtype",
                                "size", "state"]
    assert lines[-1].startswith("0 cached analysis results")  # the result cache, empty
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert len(rows) == 5  # the orphan directory is not an entry
    dense = rows[keys["dense"][:12]]
    assert "org/tiny-bert" in dense and "toy/test" in dense and "text.blocks.0 " in dense
    assert "6x8" in dense and "float32" in dense and dense.rstrip().endswith("complete")
    assert "6 x ragged 3-d" in rows[keys["ragged"][:12]] and "float16" in rows[keys["ragged"][:12]]
    assert rows[keys["incomplete"][:12]].rstrip().endswith("1/2 shards")
    # VLPROBE_CACHE is the default cache dir
    os.environ["VLPROBE_CACHE"] = str(cache_dir)
    assert _run(capsys, "ls")[1] == out


def test_cache_gc_dry_run_then_gc(cache, capsys):
    cache_dir, store, keys = cache
    def files():
        return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*")
                      if ".locks" not in p.parts)

    before = files()
    code, out = _run(capsys, "gc", "--cache-dir", str(cache_dir), "--dry-run")
    assert code == 0 and "would remove" in out and "would free" in out
    assert files() == before  # nothing removed
    assert out.count("would remove") == 3  # incomplete entry, orphan, temp file

    # an entry locked by a running extraction (here: another thread) is skipped
    locked, release = threading.Event(), threading.Event()

    def hold():
        with store.lock(keys["incomplete"]):
            locked.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    locked.wait(30)
    try:
        code, out = _run(capsys, "gc", "--cache-dir", str(cache_dir))
    finally:
        release.set()
        t.join()
    assert code == 0 and "skipped" in out and "in use" in out
    assert store.meta(keys["incomplete"]) is not None
    assert not (store.root / ("o" * 32)).exists()
    assert not list(store.entry_dir(keys["dense"]).glob(".tmp-*"))
    assert store.load(keys["dense"]) is not None and store.meta(keys["stale"]) is not None

    # unlocked now: removed; --stale removes the entry made by another torch version
    code, out = _run(capsys, "gc", "--cache-dir", str(cache_dir), "--stale")
    assert "incomplete" in out and "stale" in out
    assert store.meta(keys["incomplete"]) is None and store.meta(keys["stale"]) is None
    assert sorted(store.keys()) == sorted([keys["dense"], keys["dense2"], keys["ragged"]])

    # --older-than: entries finalized more than N days ago
    old = time.time() - 10 * 86400
    os.utime(store.entry_dir(keys["dense2"]) / "meta.json", (old, old))
    code, out = _run(capsys, "gc", "--cache-dir", str(cache_dir), "--older-than", "5")
    assert "finalized 10.0 days ago" in out
    assert sorted(store.keys()) == sorted([keys["dense"], keys["ragged"]])


def test_cache_verify_catches_corrupted_consolidated_file(cache, capsys):
    cache_dir, store, keys = cache
    code, out = _run(capsys, "verify", "--cache-dir", str(cache_dir))
    assert code == 0 and "0 corrupted" in out
    assert out.count("ok ") == 5
    for name in ("dense", "ragged"):
        path = store.entry_dir(keys[name]) / "data.npy"
        raw = bytearray(path.read_bytes())
        raw[-2] ^= 0x10
        path.write_bytes(bytes(raw))
    code, out = _run(capsys, "verify", "--cache-dir", str(cache_dir))
    assert code == 1 and "2 corrupted" in out
    assert out.count("sha256 mismatch in data.npy") == 2
    assert store.is_complete(keys["dense"])  # reported only
    code, out = _run(capsys, "verify", "--cache-dir", str(cache_dir), "--delete")
    assert code == 0 and "removed" in out
    assert store.meta(keys["dense"]) is None and store.meta(keys["ragged"]) is None
    assert store.load(keys["dense2"]) is not None
    code, out = _run(capsys, "verify", "--cache-dir", str(cache_dir))
    assert code == 0 and "3 entries, 0 corrupted" in out
