"""kill -9 during an ATTENTION extraction (streaming reducers + raw attention + a hidden
site in one pass) loses only the shard in flight.

As in test_resume_after_kill.py: the child's tiny text model blocks forever after
``HANG_AFTER`` forward calls (the probe forward that sizes raw attention, then four batches
that commit shards 0 and 1 of every output, then half of shard 2), the parent waits for the
commit markers and the child's marker file, sends SIGKILL and resumes: shards 0 and 1 of
every output (dense reducer entries and ragged raw ones) are reused, the rest is computed,
and the result equals an uninterrupted extraction.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vlprobe.extract import ActivationStore, RaggedArray, extract_features

N_ITEMS = 30
SHARD = 4
BATCH = 2
HANG_AFTER = 1 + 5  # the raw-size probe, shards 0 and 1 (4 batches), half of shard 2
SITES = ["text.blocks.0", "text.blocks.1.attn"]
ATTENTION = ["reduce:mass", "reduce:entropy", "raw"]
N_OUTPUTS = 1 + 2 + 2  # hidden, two reducers, raw + raw_tags

CHILD = r'''
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ADAPTER = "hf_text"


def build(model_dir):
    from vlprobe.data.stimuli import Stimuli
    sys.path.insert(0, os.environ["VLPROBE_TESTS_DIR"])
    from tiny_models import tiny_spec

    from vlprobe.models import ModelAdapter, load_model

    spec = tiny_spec(ADAPTER, Path(model_dir))
    adapter = spec if isinstance(spec, ModelAdapter) else load_model(spec)
    rng = np.random.default_rng(0)
    words = ["a", "the", "cat", "dog", "kitten", "bird", "car", "house", "tree", "man",
             "woman", "red", "blue", "green", "big", "small", "sits", "runs", "looks", "two"]
    n = int(os.environ["N_ITEMS"])
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 16)))) for _ in range(n)]
    stim = Stimuli(dataset="resume", split="train", ids=[f"r{i}" for i in range(n)], texts=texts)
    return adapter, stim


def main(model_dir, store_root, marker):
    from vlprobe.extract import ActivationStore, extract_features

    adapter, stim = build(model_dir)
    Path(marker + ".identity.json").write_text(json.dumps(adapter.identity(), sort_keys=True))
    hang_after = int(os.environ["HANG_AFTER"])
    orig = adapter.forward
    calls = [0]

    def forward(batch, sites):
        calls[0] += 1
        if calls[0] > hang_after:
            Path(marker).write_text("hanging")
            while True:  # wait to be killed
                time.sleep(60)
        return orig(batch, sites)

    adapter.forward = forward
    extract_features(
        adapter, stim, modality="text", sites=["text.blocks.0", "text.blocks.1.attn"],
        attention=["reduce:mass", "reduce:entropy", "raw"], store=ActivationStore(store_root),
        batch_size=int(os.environ["BATCH"]), shard_size=int(os.environ["SHARD"]), progress=False,
    )
    print("finished without hanging", file=sys.stderr)
    sys.exit(3)


if __name__ == "__main__":
    main(*sys.argv[1:4])
'''


def _load_child(path: Path):
    spec = importlib.util.spec_from_file_location("resume_child", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _committed(root: Path) -> dict[str, set[int]]:
    out = {}
    for entry in root.iterdir() if root.is_dir() else []:
        if entry.is_dir() and not entry.name.startswith("."):  # not the store's .locks
            out[entry.name] = {int(p.stem.split("_")[1]) for p in entry.glob("shard_*.json")}
    return out


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL semantics")
def test_attention_extraction_resumes_after_sigkill(tmp_path, monkeypatch):
    for name, value in (("N_ITEMS", N_ITEMS), ("SHARD", SHARD), ("BATCH", BATCH),
                        ("HANG_AFTER", HANG_AFTER)):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("VLPROBE_TESTS_DIR", str(Path(__file__).resolve().parents[1]))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    model_dir, root, marker = tmp_path / "model", tmp_path / "acts", tmp_path / "hanging"
    child = _load_child(script)
    adapter, stim = child.build(model_dir)
    n_sites = N_OUTPUTS

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(model_dir), str(root), str(marker)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            committed = _committed(root)
            done = (
                marker.exists()
                and len(committed) == n_sites
                and all(s >= {0, 1} for s in committed.values())
            )
            if done:
                break
            if proc.poll() is not None:
                _, err = proc.communicate()
                pytest.fail(f"child exited early ({proc.returncode}): {err.decode()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("child did not commit two shards in time")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    committed = _committed(root)
    fully = set.intersection(*committed.values())
    assert fully == {0, 1}, committed  # shard 2 was only half done in memory: not on disk
    assert not list(root.glob("*/data.npy"))
    kinds = sorted(json.loads((root / k / "meta.json").read_text())["kind"] for k in committed)
    assert kinds == ["dense"] * 3 + ["ragged"] * 2

    # the parent's model is the same as the child's (same cache keys)
    child_identity = json.loads(Path(str(marker) + ".identity.json").read_text())
    assert json.loads(json.dumps(adapter.identity(), sort_keys=True)) == child_identity
    kw = dict(modality="text", sites=SITES, attention=ATTENTION, batch_size=BATCH,
              shard_size=SHARD, progress=False)
    resumed = extract_features(adapter, stim, store=ActivationStore(root), **kw)
    # only the unfinished shards went through the model (after the raw-size probe)
    assert resumed.n_items_computed == N_ITEMS - len(fully) * SHARD
    assert resumed.n_forward_batches == 1 + -(-(N_ITEMS - len(fully) * SHARD) // BATCH)

    clean = extract_features(adapter, stim, store=ActivationStore(tmp_path / "c"), **kw)
    assert list(resumed.features) == list(clean.features) and len(clean.features) == N_OUTPUTS
    for name, arr in clean.features.items():
        got = resumed.features[name]
        if isinstance(arr, RaggedArray):
            assert len(got) == len(arr) == N_ITEMS
            for a, b in zip(got, arr):
                np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32),
                                           atol=1e-3, err_msg=name)
        else:
            np.testing.assert_allclose(got, arr, rtol=1e-5, atol=1e-6, err_msg=name)
    again = extract_features(adapter, stim, store=ActivationStore(root), **kw)
    assert again.n_forward_batches == 0
