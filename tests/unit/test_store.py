"""Cache keys and the activation store: atomic writes, hashes, corruption and partial shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from _helpers import tiny_adapter, toy_text_stimuli
from vlprobe.data.stimuli import Stimuli
from vlprobe.errors import StoreError
from vlprobe.extract import ActivationStore, extract_features, hash_key, make_key_dict
from vlprobe.extract.keys import STORE_FORMAT_VERSION, stimuli_identity
from vlprobe.extract.store import TMP_PREFIX, shard_name, sidecar_name

# -- keys ------------------------------------------------------------------------------------

IDENT = {
    "adapter": "hf_text",
    "checkpoint": "some/model",
    "revision": "abc123",
    "file_sha256": "f" * 64,
    "preprocessing": {"max_length": 128, "lowercase": True},
    "random_init": False,
    "seed": 0,
    "dtype": "float32",
}


def _stimuli(**over):
    kw = dict(
        dataset="toy",
        split="train",
        ids=["a", "b", "c"],
        texts=["one", "two words", "three little words"],
        labels=np.array([0, 1, 0]),
        label_names=["x", "y"],
        source={"path": "/data/toy", "subsample": {"n": 3, "seed": 0}},
    )
    kw.update(over)
    return Stimuli(**kw)


def _key(ident=IDENT, stim=None, modality="text", site="text.blocks.0", pooling="mean"):
    stim = stim if stim is not None else _stimuli()
    return hash_key(
        make_key_dict(ident, stimuli_identity(stim), modality=modality, site=site, pooling=pooling)
    )


def test_same_inputs_same_key_and_readable_dict():
    assert _key() == _key()
    assert len(_key()) == 32
    kd = make_key_dict(
        IDENT, stimuli_identity(_stimuli()), modality="text", site="s", pooling="cls"
    )
    assert kd["store_format"] == STORE_FORMAT_VERSION
    assert kd["stimuli"]["fingerprint"] == _stimuli().fingerprint()
    json.dumps(kd)  # readable and JSON-serialisable
    # dict order does not matter
    assert _key(ident=dict(reversed(list(IDENT.items())))) == _key()


@pytest.mark.parametrize(
    "field,value",
    [
        ("checkpoint", "other/model"),
        ("revision", "def456"),
        ("file_sha256", "e" * 64),
        ("preprocessing", {"max_length": 64, "lowercase": True}),
        ("random_init", True),
        ("seed", 1),
        ("dtype", "float16"),
    ],
)
def test_adapter_identity_changes_key(field, value):
    assert _key(ident={**IDENT, field: value}) != _key()


@pytest.mark.parametrize(
    "over",
    [
        {"dataset": "toy2"},
        {"split": "test"},
        {"source": {"path": "/data/toy", "subsample": {"n": 3, "seed": 1}}},
        {"source": {"path": "/data/other", "subsample": {"n": 3, "seed": 0}}},
        {"ids": ["a", "b", "d"]},
        {"texts": ["one", "two words", "three little word"]},
        {"labels": np.array([0, 1, 1])},
        {"label_names": ["x", "z"]},
    ],
)
def test_stimuli_identity_changes_key(over):
    assert _key(stim=_stimuli(**over)) != _key()


def test_modality_site_pooling_version_change_key(monkeypatch):
    base = _key()
    assert _key(modality="image") != base
    assert _key(site="text.blocks.1") != base
    assert _key(pooling="cls") != base
    import vlprobe
    import vlprobe.extract.keys as keys

    monkeypatch.setattr(vlprobe, "__version__", "999.0")
    assert _key() != base
    monkeypatch.undo()
    monkeypatch.setattr(keys, "STORE_FORMAT_VERSION", STORE_FORMAT_VERSION + 1)
    assert _key() != base


@pytest.mark.parametrize("module", ["torch", "transformers"])
def test_library_versions_change_key(monkeypatch, module):
    import importlib

    base = _key()
    kd = make_key_dict(IDENT, stimuli_identity(_stimuli()), modality="text", site="s",
                       pooling="cls")
    mod = importlib.import_module(module)
    assert kd[f"{module}_version"] == str(mod.__version__).split("+")[0]
    monkeypatch.setattr(mod, "__version__", "99.0.0")
    assert _key() != base
    if module == "torch":  # the local build tag (+cpu / +cu121) is not part of the key
        monkeypatch.setattr(mod, "__version__", "99.0.0+cu999")
        key_cuda = _key()
        monkeypatch.setattr(mod, "__version__", "99.0.0+cpu")
        assert _key() == key_cuda


def _ppm(path, seed):
    rng = np.random.default_rng(seed)
    path.write_bytes(b"P6 4 3 255\n" + rng.integers(0, 256, 36, dtype=np.uint8).tobytes())


def test_folder_image_content_change_changes_key_with_same_size_and_mtime(tmp_path, monkeypatch):
    import vlprobe.data._common as common
    from vlprobe.data import DatasetSpec, load_dataset

    for c, cls in enumerate(("cat", "dog")):
        (tmp_path / cls).mkdir()
        for i in range(2):
            _ppm(tmp_path / cls / f"{i}.ppm", seed=10 * c + i)
    spec = DatasetSpec("image_folder", name="pets", path=str(tmp_path))
    hashed = []
    real = common.file_digest
    monkeypatch.setattr(common, "file_digest", lambda p, a: hashed.append(p) or real(p, a))
    before = load_dataset(spec)["train"]
    assert len(hashed) == 4
    assert load_dataset(spec)["train"].fingerprint() == before.fingerprint()
    assert len(hashed) == 4  # memoised: unchanged files are not read again in this process

    target = tmp_path / "dog" / "1.ppm"
    st = target.stat()
    _ppm(target, seed=12345)  # same size, other pixels
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime restored
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    after = load_dataset(spec)["train"]
    assert len(hashed) == 5  # only the changed file was hashed again
    assert after.fingerprint() != before.fingerprint()
    assert _key(stim=after) != _key(stim=before)
    assert after.images.digests[:3] == before.images.digests[:3]


def test_key_stable_across_processes():
    code = (
        "import numpy as np\n"
        "from vlprobe.data.stimuli import Stimuli\n"
        "from vlprobe.extract.keys import hash_key, make_key_dict, stimuli_identity\n"
        f"ident = {IDENT!r}\n"
        "s = Stimuli(dataset='toy', split='train', ids=['a','b','c'],"
        " texts=['one','two words','three little words'], labels=np.array([0,1,0]),"
        " label_names=['x','y'], source={'path': '/data/toy', 'subsample': {'n': 3, 'seed': 0}})\n"
        "print(hash_key(make_key_dict(ident, stimuli_identity(s), modality='text',"
        " site='text.blocks.0', pooling='mean')))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == _key()


def test_unstable_identity_value_is_rejected():
    with pytest.raises(TypeError, match="stable"):
        _key(ident={**IDENT, "thing": object()})


# -- store ------------------------------------------------------------------------------------


def _filled_store(tmp_path, n=10, shard=4, dim=3, consolidate=True):
    store = ActivationStore(tmp_path / "acts", consolidate=consolidate)
    key = "k" * 32
    store.open_entry(key, {"site": "s"}, n_items=n, shard_size=shard)
    data = np.arange(n * dim, dtype=np.float32).reshape(n, dim)
    for i in range(3):
        store.write_shard(key, i, data[i * shard : (i + 1) * shard])
    return store, key, data


def test_default_root_is_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VLPROBE_CACHE", str(tmp_path / "c"))
    assert ActivationStore().root == tmp_path / "c" / "activations"


@pytest.mark.parametrize("consolidate", [True, False])
def test_write_finalize_read_roundtrip(tmp_path, consolidate):
    store, key, data = _filled_store(tmp_path, consolidate=consolidate)
    assert store.missing_shards(key) == []
    meta = store.finalize(key)
    assert meta["complete"] and meta["dim"] == 3 and meta["n_items"] == 10
    out = store.load(key)
    np.testing.assert_array_equal(out, data)
    assert out.dtype == np.float32
    if consolidate:
        assert isinstance(out, np.memmap)
        out[0, 0] = -1  # copy-on-write: the file is not changed
        np.testing.assert_array_equal(store.load(key), data)
        assert not list(store.entry_dir(key).glob("shard_*"))
    meta_file = json.loads((store.entry_dir(key) / "meta.json").read_text())
    assert meta_file["key_dict"] == {"site": "s"} and meta_file["shard_size"] == 4
    info = store.info(key)
    assert info.complete and info.n_items == 10 and info.site == "s"
    assert [e.key for e in store.ls()] == [key]
    # no pickle: files are safetensors / npy / json only
    suffixes = {p.suffix for p in store.entry_dir(key).iterdir()}
    assert suffixes <= {".json", ".npy", ".safetensors"}


def test_leftover_temp_file_is_ignored(tmp_path):
    store, key, data = _filled_store(tmp_path)
    entry = store.entry_dir(key)
    # a writer killed mid-write leaves a temp file (with a plausible name) behind
    (entry / f"{TMP_PREFIX}{shard_name(1)}.abc123").write_bytes(b"garbage half-written")
    (entry / f"{TMP_PREFIX}{shard_name(3)}.abc123").write_bytes(b"garbage")
    assert store.missing_shards(key) == []
    store.finalize(key)
    np.testing.assert_array_equal(store.load(key), data)
    assert store.events == []
    removed = store.gc(tmp_older_than_s=0)
    assert {p.name for p in removed} == {
        f"{TMP_PREFIX}{shard_name(1)}.abc123", f"{TMP_PREFIX}{shard_name(3)}.abc123"
    }


def test_partial_shard_without_sidecar_is_never_read(tmp_path):
    store, key, _ = _filled_store(tmp_path)
    entry = store.entry_dir(key)
    (entry / sidecar_name(2)).unlink()  # killed between shard and commit marker
    assert store.read_shard(key, 2) is None
    assert not (entry / shard_name(2)).exists()  # deleted, never read
    assert store.missing_shards(key) == [2]
    assert any("without sidecar" in e for e in store.events)
    with pytest.raises(StoreError, match="missing"):
        store.finalize(key)
    assert store.load(key) is None


def test_corrupted_shard_is_detected_and_deleted(tmp_path, caplog):
    store, key, _ = _filled_store(tmp_path)
    path = store.entry_dir(key) / shard_name(1)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # flip a byte in the tensor data
    path.write_bytes(bytes(raw))
    with caplog.at_level("WARNING"):
        assert store.missing_shards(key) == [1]
    assert "sha256 mismatch" in caplog.text
    assert not path.exists() and not (store.entry_dir(key) / sidecar_name(1)).exists()


def test_finished_entry_is_hashed_once_not_on_reads(tmp_path, monkeypatch):
    store, key, data = _filled_store(tmp_path)
    store.finalize(key)
    import vlprobe.extract.store_format as fmt

    hashed = []
    real = fmt.file_digest
    monkeypatch.setattr(fmt, "file_digest", lambda *a, **k: hashed.append(a) or real(*a, **k))
    path = store.entry_dir(key) / "data.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    # a read checks structure only: the flipped bit is not noticed, nothing is hashed
    out = store.load(key)
    assert isinstance(out, np.memmap) and out[-1, -1] != data[-1, -1]
    assert hashed == [] and store.events == []
    # verification (vlprobe cache verify) rehashes and finds it
    problems = store.verify_entry(key)
    assert len(problems) == 1 and "sha256 mismatch in data.npy" in problems[0]
    assert store.is_complete(key)  # reporting only, no repair
    assert store.load(key, verify=True) is None  # verify-on-read repairs: entry removed
    assert any("data.npy" in e for e in store.events)
    assert store.meta(key) is None  # it will be recomputed from scratch


def test_structurally_broken_complete_entry_is_reset_on_read(tmp_path):
    store, key, _ = _filled_store(tmp_path)
    store.finalize(key)
    np.save(store.entry_dir(key) / "data.npy", np.zeros((10, 4), np.float32))  # wrong width
    assert store.load(key) is None
    assert any("shape" in e for e in store.events)
    assert store.meta(key) is None


def test_key_dict_mismatch_and_shard_size_change(tmp_path):
    store, key, _ = _filled_store(tmp_path)
    with pytest.raises(StoreError, match="different key dict"):
        store.open_entry(key, {"site": "other"}, n_items=10, shard_size=4)
    with pytest.raises(StoreError):
        store.write_shard(key, 0, np.zeros((3, 3), np.float32))  # wrong row count
    # an incomplete entry opened with another shard size starts over
    store.open_entry(key, {"site": "s"}, n_items=10, shard_size=5)
    assert store.missing_shards(key) == [0, 1]


# -- through the extractor ----------------------------------------------------------------------


@pytest.mark.parametrize("consolidate", [False, True])
def test_flipped_byte_is_recomputed_by_extraction(tmp_path, consolidate):
    adapter = tiny_adapter("hf_text", tmp_path)
    stim = toy_text_stimuli(11, lengths=(2, 14), n_classes=2)
    sites = adapter.layer_sites("text")[:2]
    clean = extract_features(
        adapter, stim, modality="text", sites=sites, pooling="mean", batch_size=3, shard_size=4,
        progress=False, store=ActivationStore(tmp_path / "clean"),
    )
    store = ActivationStore(tmp_path / "acts", consolidate=consolidate)
    kw = dict(modality="text", sites=sites, pooling="mean", batch_size=3, shard_size=4,
              progress=False, store=store)
    first = extract_features(adapter, stim, **kw)
    key = first.keys[sites[1]]
    entry = store.entry_dir(key)
    target = entry / (shard_name(1) if not consolidate else "data.npy")
    raw = bytearray(target.read_bytes())
    raw[len(raw) - 5] ^= 0xFF
    target.write_bytes(bytes(raw))
    # finished entries are not rehashed on reads; `vlprobe cache verify --delete` finds and
    # removes the damage (the shard, or the whole consolidated entry) ...
    from vlprobe.extract.cache_admin import verify_all

    results = {r.key: r for r in verify_all(store, repair=True)}
    assert results[key].status == "repaired" and "sha256 mismatch" in results[key].problems[0]
    assert all(r.status == "ok" for k, r in results.items() if k != key)
    assert any("sha256 mismatch" in e for e in store.events)
    # ... and the next extraction recomputes only that
    second = extract_features(adapter, stim, **kw)
    # only the corrupted shard (rows 4..7) or the whole corrupted site is recomputed
    assert second.n_items_computed == (4 if not consolidate else 11)
    for site in sites:
        np.testing.assert_array_equal(second.features[site], clean.features[site])
    third = extract_features(adapter, stim, **kw)
    assert third.n_forward_batches == 0 and third.store_events == []
