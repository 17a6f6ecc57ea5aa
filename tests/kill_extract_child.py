"""Child process of the kill -9 extraction tests (:func:`kill_helpers.kill_extraction_midway`).

``python kill_extract_child.py MODEL_DIR STORE_ROOT MARKER`` with the environment ``N_ITEMS``,
``HANG_AFTER`` and ``EXTRACT_KW`` (JSON keyword arguments of ``extract_features``): extracts
from a tiny random text model whose ``forward`` blocks forever after ``HANG_AFTER`` calls,
having written ``MARKER`` (and, first, ``MARKER.identity.json``: the model's identity).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ADAPTER = "hf_text"


def build(model_dir: Path, n_items: int) -> tuple[Any, Any]:
    """(the tiny text adapter built in ``model_dir``, ``n_items`` seeded toy texts)."""
    from _helpers import toy_text_stimuli
    from tiny_models import tiny_spec
    from vlprobe.models import ModelAdapter, load_model

    spec = tiny_spec(ADAPTER, Path(model_dir))
    adapter = spec if isinstance(spec, ModelAdapter) else load_model(spec)
    return adapter, toy_text_stimuli(n_items, n_classes=None)


def main(model_dir: str, store_root: str, marker: str) -> None:
    from vlprobe.extract import ActivationStore, extract_features

    adapter, stim = build(Path(model_dir), int(os.environ["N_ITEMS"]))
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
    extract_features(adapter, stim, store=ActivationStore(store_root), progress=False,
                     **json.loads(os.environ["EXTRACT_KW"]))
    print("finished without hanging", file=sys.stderr)
    sys.exit(3)


if __name__ == "__main__":
    main(*sys.argv[1:4])
