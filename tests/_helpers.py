"""Helpers shared by the extraction tests (importable: ``tests/`` is on sys.path via conftest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vlprobe.data.stimuli import Stimuli

WORDS = ["a", "the", "cat", "dog", "kitten", "bird", "car", "house", "tree", "man", "woman",
         "red", "blue", "green", "big", "small", "sits", "runs", "looks", "very", "two"]


def tiny_adapter(name: str, tmp_path: Path, **kw):
    """A registered adapter built from its tiny seeded random config."""
    from tiny_models import tiny_spec
    from vlprobe.models import ModelAdapter, load_model

    spec = tiny_spec(name, tmp_path / f"tiny_{name}_{'_'.join(map(str, kw.values()))}", **kw)
    return spec if isinstance(spec, ModelAdapter) else load_model(spec)


def toy_text_stimuli(
    n: int, seed: int = 0, lengths: tuple[int, int] = (1, 16), n_classes: int | None = 3
) -> Stimuli:
    """``n`` random sentences with ``lengths[0] <= words < lengths[1]`` (labels if asked)."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(*lengths)))) for _ in range(n)]
    labels = rng.integers(0, n_classes, size=n) if n_classes else None
    return Stimuli(dataset="toy_text", split="train", ids=[f"t{i}" for i in range(n)],
                   texts=texts, labels=labels)


def record_forwards(source, models, record) -> list:
    """Wrap ``adapter.forward`` of each of ``models`` (adapters of the RunFeatureSource
    ``source``) so that every call appends ``record(model, batch, sites, trace)`` to the
    returned list, in call order; the forward itself is unchanged."""
    calls: list = []
    for model in models:
        adapter = source.adapter(model)
        orig = adapter.forward

        def forward(batch, sites, _orig=orig, _model=model):
            trace = _orig(batch, sites)
            calls.append(record(_model, batch, sites, trace))
            return trace

        adapter.forward = forward
    return calls


def tiny_model_entry(name: str, directory: Path, random_init: bool = True) -> dict:
    """The run-config ``models:`` entry of the registered adapter ``name`` built from its tiny
    seeded config (written under ``directory``): the spec's set fields, plus
    ``random_init``."""
    from dataclasses import asdict

    from tiny_models import tiny_spec

    spec = tiny_spec(name, directory)
    entry = {k: v for k, v in asdict(spec).items() if v not in (None, {}, False, 0, "float32")}
    if random_init:
        entry["random_init"] = True
    return entry
