"""kill -9 during an ATTENTION extraction (streaming reducers + raw attention + a hidden
site in one pass) loses only the shard in flight.

As in test_resume_after_kill.py (:func:`kill_helpers.kill_extraction_midway`): the child's
tiny text model blocks forever after ``HANG_AFTER`` forward calls (the probe forward that
sizes raw attention, then four batches that commit shards 0 and 1 of every output, then half
of shard 2), the parent waits for the
commit markers and the child's marker file, sends SIGKILL and resumes: shards 0 and 1 of
every output (dense reducer entries and ragged raw ones) are reused, the rest is computed,
and the result equals an uninterrupted extraction.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from kill_helpers import kill_extraction_midway
from vlprobe.extract import ActivationStore, RaggedArray, extract_features

N_ITEMS = 30
SHARD = 4
BATCH = 2
HANG_AFTER = 1 + 5  # the raw-size probe, shards 0 and 1 (4 batches), half of shard 2
N_OUTPUTS = 1 + 2 + 2  # hidden, two reducers, raw + raw_tags
KW = dict(modality="text", sites=["text.blocks.0", "text.blocks.1.attn"],
          attention=["reduce:mass", "reduce:entropy", "raw"], batch_size=BATCH, shard_size=SHARD)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL semantics")
def test_attention_extraction_resumes_after_sigkill(tmp_path):
    adapter, stim, root = kill_extraction_midway(tmp_path, N_ITEMS, HANG_AFTER, N_OUTPUTS, KW)
    kinds = sorted(json.loads(meta.read_text())["kind"] for meta in root.glob("*/meta.json"))
    assert kinds == ["dense"] * 3 + ["ragged"] * 2

    resumed = extract_features(adapter, stim, store=ActivationStore(root), progress=False, **KW)
    # only the unfinished shards went through the model (after the raw-size probe)
    assert resumed.n_items_computed == N_ITEMS - 2 * SHARD
    assert resumed.n_forward_batches == 1 + -(-(N_ITEMS - 2 * SHARD) // BATCH)

    clean = extract_features(adapter, stim, store=ActivationStore(tmp_path / "c"),
                             progress=False, **KW)
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
    again = extract_features(adapter, stim, store=ActivationStore(root), progress=False, **KW)
    assert again.n_forward_batches == 0
