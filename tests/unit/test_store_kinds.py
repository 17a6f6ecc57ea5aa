"""Store entry kinds: dense N-D and ragged entries, float16, resume, memory-mapped reads."""

from __future__ import annotations

import numpy as np
import pytest

from vlprobe.errors import StoreError
from vlprobe.extract import ActivationStore, RaggedArray
from vlprobe.extract.store import shard_bounds, shard_name, sidecar_name

KEY = "r" * 32


def _attention(n: int, heads: int = 3, seed: int = 0) -> list[np.ndarray]:
    """``n`` fake attention maps ``[heads, T_i, T_i]`` (rows sum to 1), T_i in 1..9."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = int(rng.integers(1, 10))
        a = rng.random((heads, t, t))
        out.append((a / a.sum(-1, keepdims=True)).astype(np.float32))
    return out


def _write(store, items, shard, *, kind="ragged", dtype="float16", shards=None, key=KEY):
    n = len(items)
    store.open_entry(key, {"site": "text.blocks.0.attn"}, n, shard, kind=kind, dtype=dtype)
    for i in store.missing_shards(key) if shards is None else shards:
        start, stop = shard_bounds(i, n, shard)
        rows = items[start:stop]
        store.write_shard(key, i, rows if kind == "ragged" else np.asarray(rows))


# -- RaggedArray --------------------------------------------------------------------------------


def test_ragged_array_views_slices_and_errors():
    items = _attention(5)
    ra = RaggedArray.from_arrays(items, dtype=np.float16)
    assert len(ra) == 5 and ra.ndim == 3 and ra.dtype == np.float16
    assert ra.nbytes == sum(a.size for a in items) * 2
    assert [tuple(s) for s in ra.shapes] == [a.shape for a in items]
    for got, want in zip(ra, items):
        np.testing.assert_array_equal(got, want.astype(np.float16))
    assert np.shares_memory(ra[2], ra.data) and not ra[2].flags.writeable
    np.testing.assert_array_equal(ra[-1], ra[4])
    sub = ra[1:4]
    assert len(sub) == 3 and np.shares_memory(sub.data, ra.data)
    np.testing.assert_array_equal(sub[0], ra[1])
    with pytest.raises(IndexError):
        ra[5]
    with pytest.raises(ValueError, match="ndim"):
        RaggedArray.from_arrays([np.zeros((2, 2)), np.zeros(3)])
    with pytest.raises(ValueError, match="offsets"):
        RaggedArray(np.zeros(5), np.array([0, 2, 4]), np.array([[2], [2]]))


# -- dense N-D ----------------------------------------------------------------------------------


@pytest.mark.parametrize("consolidate", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_dense_nd_roundtrip(tmp_path, consolidate, dtype):
    store = ActivationStore(tmp_path / "acts", consolidate=consolidate)
    data = np.random.default_rng(1).standard_normal((11, 4, 5)).astype(np.float32)
    _write(store, list(data), 4, kind="dense", dtype=dtype)
    meta = store.finalize(KEY)
    assert meta["shape"] == [11, 4, 5] and meta["item_shape"] == [4, 5] and meta["dim"] is None
    out = store.load(KEY)
    assert out.dtype == np.dtype(dtype) and out.shape == (11, 4, 5)
    np.testing.assert_array_equal(out, data.astype(dtype))
    if consolidate:
        assert isinstance(out, np.memmap)
    info = store.info(KEY)
    assert (info.kind, info.dtype, info.shape, info.dim) == ("dense", dtype, [11, 4, 5], None)
    with pytest.raises(StoreError, match=r"is dense; read it with load\(\)"):
        store.load_ragged(KEY)


def test_dense_per_item_vectors_keep_old_nd_api(tmp_path):
    """[N, H] per-head statistics: same API as the extractor's [N, D] features."""
    store = ActivationStore(tmp_path / "acts")
    data = np.arange(14, dtype=np.float64).reshape(7, 2)
    _write(store, list(data), 3, kind="dense", dtype="float32")
    assert store.finalize(KEY)["dim"] == 2
    np.testing.assert_array_equal(store.load(KEY), data.astype(np.float32))


def test_float16_overflow_and_shard_disagreement_are_errors(tmp_path):
    store = ActivationStore(tmp_path / "acts")
    store.open_entry(KEY, {"s": 1}, 4, 2, dtype="float16")
    with pytest.raises(StoreError, match="overflow float16"):
        store.write_shard(KEY, 0, np.full((2, 3), 1e6))
    store.write_shard(KEY, 0, np.zeros((2, 3)))
    store.write_shard(KEY, 1, np.zeros((2, 4)))  # another item shape
    with pytest.raises(StoreError, match="disagree"):
        store.finalize(KEY)
    with pytest.raises(StoreError, match="float64"):
        store.open_entry("x" * 32, {"s": 1}, 4, 2, dtype="float64")
    with pytest.raises(StoreError, match="kind"):
        store.open_entry("x" * 32, {"s": 1}, 4, 2, kind="sparse")


# -- ragged -------------------------------------------------------------------------------------


@pytest.mark.parametrize("consolidate", [True, False])
def test_ragged_roundtrip_is_memory_mapped(tmp_path, consolidate):
    store = ActivationStore(tmp_path / "acts", consolidate=consolidate)
    items = _attention(10)
    _write(store, items, 4)
    meta = store.finalize(KEY)
    assert meta["complete"] and meta["item_ndim"] == 3
    assert meta["n_values"] == sum(a.size for a in items)
    ra = store.load_ragged(KEY)
    assert isinstance(ra, RaggedArray) and len(ra) == 10 and ra.dtype == np.float16
    for got, want in zip(ra, items):
        np.testing.assert_array_equal(got, want.astype(np.float16))
    assert ra.nbytes == meta["n_values"] * 2
    assert not ra[0].flags.writeable
    entry = store.entry_dir(KEY)
    if consolidate:
        assert isinstance(ra.data, np.memmap) and np.shares_memory(ra[7], ra.data)
        assert {p.name for p in entry.iterdir()} == {
            "meta.json", "data.npy", "offsets.npy", "shapes.npy", "data.json"
        }
        # the files are plain .npy, readable without vlprobe and without pickle
        flat = np.load(entry / "data.npy", allow_pickle=False)
        offsets = np.load(entry / "offsets.npy", allow_pickle=False)
        shapes = np.load(entry / "shapes.npy", allow_pickle=False)
        np.testing.assert_array_equal(
            flat[offsets[3] : offsets[4]].reshape(shapes[3]), items[3].astype(np.float16)
        )
    info = store.info(KEY)
    assert (info.kind, info.item_ndim, info.complete) == ("ragged", 3, True)
    with pytest.raises(StoreError, match="is ragged; read it with load_ragged"):
        store.load(KEY)
    assert store.verify_entry(KEY) == []


def test_ragged_items_with_empty_and_scalar_shapes(tmp_path):
    store = ActivationStore(tmp_path / "acts")
    items = [np.zeros((2, 0, 0)), np.ones((2, 1, 1)), np.zeros((2, 0, 0))]
    _write(store, items, 2)
    store.finalize(KEY)
    ra = store.load_ragged(KEY)
    assert [r.shape for r in ra] == [(2, 0, 0), (2, 1, 1), (2, 0, 0)]
    np.testing.assert_array_equal(ra[1], np.ones((2, 1, 1), np.float16))


def test_ragged_shard_checks(tmp_path):
    store = ActivationStore(tmp_path / "acts")
    store.open_entry(KEY, {"s": 1}, 5, 3, kind="ragged", dtype="float16")
    with pytest.raises(StoreError, match="3 items"):
        store.write_shard(KEY, 0, _attention(2))
    with pytest.raises(StoreError, match="one ndim"):
        store.write_shard(KEY, 0, [np.zeros((1, 2, 2)), np.zeros((2, 2)), np.zeros((1, 1, 1))])
    # a RaggedArray slice is accepted as a shard
    items = _attention(5)
    packed = RaggedArray.from_arrays(items)
    store.write_shard(KEY, 0, packed[0:3])
    store.write_shard(KEY, 1, packed[3:5])
    store.finalize(KEY)
    np.testing.assert_array_equal(store.load_ragged(KEY)[4], items[4].astype(np.float16))


def test_partially_written_ragged_entry_resumes(tmp_path):
    items = _attention(11, seed=3)
    store = ActivationStore(tmp_path / "acts")
    _write(store, items, 3, shards=[0, 2])  # a run that stopped after shards 0 and 2
    entry = store.entry_dir(KEY)
    # ... and died while committing shard 3: its data file is there, its sidecar is not
    store.write_shard(KEY, 3, items[9:11])
    (entry / sidecar_name(3)).unlink()
    (entry / ".tmp-shard_00001.safetensors.x1").write_bytes(b"half a shard")

    again = ActivationStore(tmp_path / "acts")  # a new process
    assert again.missing_shards(KEY) == [1, 3]
    assert not (entry / shard_name(3)).exists()  # the uncommitted shard was discarded
    assert any("without sidecar" in e for e in again.events)
    written = []
    real = again.write_shard
    again.write_shard = lambda key, i, a, n_truncated=0: written.append(i) or real(key, i, a)
    _write(again, items, 3)
    assert written == [1, 3]
    again.finalize(KEY)
    ra = again.load_ragged(KEY)
    for got, want in zip(ra, items):
        np.testing.assert_array_equal(got, want.astype(np.float16))


def test_layout_or_kind_change_of_incomplete_entry_starts_over(tmp_path):
    store = ActivationStore(tmp_path / "acts")
    _write(store, _attention(6), 3, shards=[0])
    store.open_entry(KEY, {"site": "text.blocks.0.attn"}, 6, 3, kind="ragged", dtype="float32")
    assert store.missing_shards(KEY) == [0, 1]
    _write(store, _attention(6), 3, dtype="float32")
    store.finalize(KEY)
    with pytest.raises(StoreError, match="complete ragged/float32"):
        store.open_entry(KEY, {"site": "text.blocks.0.attn"}, 6, 3, kind="ragged",
                         dtype="float16")


def test_corrupted_ragged_offsets_are_found_by_verify(tmp_path):
    store = ActivationStore(tmp_path / "acts")
    _write(store, _attention(6), 4)
    store.finalize(KEY)
    offsets = store.entry_dir(KEY) / "offsets.npy"
    raw = bytearray(offsets.read_bytes())
    raw[-8] ^= 0x01  # the last offset no longer matches the data length
    offsets.write_bytes(bytes(raw))
    problems = store.verify_entry(KEY)
    assert problems and "sha256 mismatch in offsets.npy" in problems[0]
    # structural damage is caught on a plain read too (no hashing): the entry is reset
    assert store.load_ragged(KEY) is None and store.meta(KEY) is None
