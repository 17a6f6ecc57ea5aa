"""Benchmark: opening a ~1 GB store entry and reading one row, hash-once vs hash-every-read.

Builds one dense float32 entry (default 260,000 x 1024 = 1.07 GB) through the store API
(``open_entry`` / ``write_shard`` / ``finalize``) in a temporary directory (deleted at the
end), then times, for a random row:

- **now**: ``ActivationStore(root).load(key)`` (memory map, structure checks only) + reading
  the row;
- **before**: the read path of ``ActivationStore.load`` before this change (commit
  c78d5b9), which rehashed the whole ``data.npy`` against its sidecar's sha256 on every read,
  then memory-mapped it (reproduced below as :func:`old_load`: the same calls);
- ``verify_entry`` (what ``vlprobe cache verify`` does per entry).

"warm": the file is in the page cache (just written); "cold": its pages were evicted with
``posix_fadvise(POSIX_FADV_DONTNEED)`` first (only this file; no system-wide cache drop).

Usage::

    PYTHONPATH=src .venv/bin/python bench/bench_store.py [--rows 260000] [--dim 1024]
        [--repeats 5] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def evict(path: Path) -> None:
    """Drop ``path``'s pages from the page cache (Linux; no-op elsewhere)."""
    if not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def old_load(entry: Path) -> np.ndarray:
    """The pre-change read path: sha256 of the whole data.npy vs its sidecar, then mmap."""
    sidecar = json.loads((entry / "data.json").read_text())
    expected = sidecar.get("sha256") or sidecar["files"]["data.npy"]
    h = hashlib.sha256()
    with open(entry / "data.npy", "rb") as fh:  # the old _sha256_file: 4 MiB chunks
        while block := fh.read(1 << 22):
            h.update(block)
    if h.hexdigest() != expected:
        raise RuntimeError("hash mismatch")
    return np.load(entry / "data.npy", mmap_mode="c", allow_pickle=False)


def timed(fn, repeats: int, before=None) -> list[float]:
    out = []
    for _ in range(repeats):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=260_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--shard-rows", type=int, default=16_384)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default="/tmp")
    args = parser.parse_args()

    from vlprobe.extract import ActivationStore
    from vlprobe.extract.store import n_shards_for, shard_bounds

    rng = np.random.default_rng(0)
    key = "b" * 32
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="vlprobe-bench-store-") as tmp:
        root = Path(tmp) / "activations"
        store = ActivationStore(root)
        t0 = time.perf_counter()
        store.open_entry(key, {"bench": "store"}, args.rows, args.shard_rows)
        for i in range(n_shards_for(args.rows, args.shard_rows)):
            start, stop = shard_bounds(i, args.rows, args.shard_rows)
            store.write_shard(key, i, rng.standard_normal((stop - start, args.dim), np.float32))
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.finalize(key)
        t_final = time.perf_counter() - t0
        entry = store.entry_dir(key)
        data_file = entry / "data.npy"
        size = data_file.stat().st_size
        rows = rng.integers(0, args.rows, size=args.repeats + 3)
        expect = {int(r): np.load(data_file, mmap_mode="r")[r].copy() for r in rows}
        it = iter(rows.tolist() * 4)

        def new_read() -> None:
            r = next(it)
            row = np.array(ActivationStore(root).load(key)[r])
            assert np.array_equal(row, expect[r])

        def old_read() -> None:
            r = next(it)
            row = np.array(old_load(entry)[r])
            assert np.array_equal(row, expect[r])

        def cold() -> None:
            evict(data_file)

        results = {
            "now, warm": timed(new_read, args.repeats),
            "now, cold": timed(new_read, args.repeats, before=cold),
            "before (hash every read), warm": timed(old_read, 3),
            "before (hash every read), cold": timed(old_read, 2, before=cold),
            "verify_entry (cache verify), warm": timed(
                lambda: ActivationStore(root).verify_entry(key), 2
            ),
        }

    print(f"entry: {args.rows} x {args.dim} float32, data.npy {size / 1e9:.2f} GB "
          f"({n_shards_for(args.rows, args.shard_rows)} shards of {args.shard_rows} rows)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}, numpy {np.__version__}")
    print(f"write shards: {t_write:.1f} s; finalize (verify shards + consolidate + hash): "
          f"{t_final:.1f} s")
    print()
    print("| open entry + read one row | median (ms) | min (ms) | max (ms) | runs |")
    print("|---|---|---|---|---|")
    for name, secs in results.items():
        ms = [1000 * s for s in secs]
        print(f"| {name} | {statistics.median(ms):.1f} | {min(ms):.1f} | {max(ms):.1f} | "
              f"{len(ms)} |")


if __name__ == "__main__":
    main()
