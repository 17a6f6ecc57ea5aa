"""Resource requests of the Ray executor's tasks: GPUs and memory.

Ray's ``memory`` is a logical resource: the scheduler puts no more tasks on a node than its
memory covers; it limits nothing in the task. The extraction estimate is therefore a
deliberately simple upper-ish guess, not a measurement: the model's weight files (when the
checkpoint is a local file or directory) twice (the weights and the forward pass'
activations), plus one shard of every output of the group (the extractor keeps one shard
per output in memory) at an assumed 1024 float32 values per item, with a floor of 256 MiB.
It is capped at the largest node's memory so that a task is never unschedulable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlprobe.config import RunConfig
from vlprobe.errors import ConfigError

FLOOR_BYTES = 256 * 2**20
ROW_BYTES = 1024 * 4  # assumed values per item and output (float32)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")


def wants_gpu(ray: Any, cfg: RunConfig) -> bool:
    """Whether the run's tasks request a GPU: device ``cuda``/``cuda:N``, or ``auto`` on a
    cluster with GPUs. Raises :class:`ConfigError` for ``cuda`` on a cluster without any
    (its tasks could never be scheduled)."""
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if cfg.device.startswith("cuda"):
        if gpus <= 0:
            raise ConfigError(f"device: {cfg.device} but the Ray cluster has no GPU "
                              f"(resources: {ray.cluster_resources()})")
        return True
    return cfg.device == "auto" and gpus > 0


def weight_bytes(checkpoint: str | None) -> int:
    """Bytes of the weight files of a local checkpoint (0 when it is not local)."""
    if not checkpoint:
        return 0
    try:
        from vlprobe.settings import expand_path

        path = expand_path(str(checkpoint))
    except ConfigError:
        return 0
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return 0
    return sum(f.stat().st_size for f in Path(path).rglob("*")
               if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))


def estimate_extraction_bytes(cfg: RunConfig, group: Any, n_items: int) -> int:
    """The memory estimate of extracting ``group`` over ``n_items`` items (module docs)."""
    model = cfg.models[group.model]
    n_outputs = len(group.hidden_sites) + sum(len(m) for _, m in group.attention)
    rows = min(n_items, cfg.extraction.shard_size)
    estimate = 2 * weight_bytes(model.checkpoint) + rows * max(n_outputs, 1) * ROW_BYTES
    return max(estimate, FLOOR_BYTES)


def extraction_memory(ray: Any, cfg: RunConfig, group: Any, source: Any) -> int:
    """The ``memory`` request of a group's extraction task: the estimate, capped at the
    largest node's memory (``source`` gives the item count: the driver loaded the dataset
    while planning)."""
    try:
        n_items = len(source.stimuli(group.request()))
    except Exception:  # an unresolvable view: its task reports the error itself
        n_items = cfg.extraction.shard_size
    largest = max((float(n.get("Resources", {}).get("memory", 0)) for n in ray.nodes()
                   if n.get("Alive")), default=0.0)
    estimate = estimate_extraction_bytes(cfg, group, n_items)
    return int(min(estimate, 0.8 * largest)) if largest > 0 else 0
