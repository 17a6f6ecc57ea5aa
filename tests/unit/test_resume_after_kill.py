"""A SIGKILLed extraction resumes: committed shards are reused, the rest is recomputed.

The child process (tests/kill_extract_child.py, run by
:func:`kill_helpers.kill_extraction_midway`) runs a registered tiny random adapter whose
``forward`` blocks forever after ``HANG_AFTER`` batches, so the moment of the kill is
deterministic: with shard_size=4 and batch_size=2, five batches commit shards 0 and 1 and
leave shard 2 half-computed in memory. The parent polls the store for the sidecars (commit
markers) and the child's "hanging" marker file, then sends SIGKILL. No timing races.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from kill_helpers import kill_extraction_midway
from vlprobe.extract import ActivationStore, extract_features
from vlprobe.extract.extractor import resolve_sites

N_ITEMS = 30
SHARD = 4
BATCH = 2
HANG_AFTER = 5  # batches: shards 0 and 1 complete (4 batches) + half of shard 2
KW = dict(modality="text", sites=None, batch_size=BATCH, shard_size=SHARD)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL semantics")
def test_resume_after_sigkill(tmp_path):
    adapter, stim, root = kill_extraction_midway(tmp_path, N_ITEMS, HANG_AFTER, None, KW)
    assert len(list(root.glob("*/meta.json"))) == len(resolve_sites(adapter, "text", None))

    resumed = extract_features(adapter, stim, store=ActivationStore(root), progress=False, **KW)
    # only the unfinished shards went through the model
    assert resumed.n_items_computed == N_ITEMS - 2 * SHARD
    assert resumed.n_forward_batches == -(-(N_ITEMS - 2 * SHARD) // BATCH)

    clean = extract_features(adapter, stim, store=ActivationStore(tmp_path / "c"),
                             progress=False, **KW)
    assert list(resumed.features) == list(clean.features)
    for site, arr in clean.features.items():
        np.testing.assert_allclose(resumed.features[site], arr, rtol=1e-5, atol=1e-6,
                                   err_msg=site)
    again = extract_features(adapter, stim, store=ActivationStore(root), progress=False, **KW)
    assert again.n_forward_batches == 0
