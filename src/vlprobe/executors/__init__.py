"""Executors: where the planned work of a run (or of a sweep's runs) happens.

- ``local`` (the default): this process, one run after the other
  (:func:`vlprobe.runner.run`).
- ``ray``: Ray tasks on a local or remote cluster
  (:class:`~vlprobe.executors.ray_executor.RayExecutor`; needs ``vlprobe[ray]``).

Both plan with :func:`vlprobe.runner.start_run` and write results with
:func:`vlprobe.run_results.settle_analyses`, so they give the same run directories.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlprobe.config import RunConfig
from vlprobe.errors import ConfigError

EXECUTORS = ("local", "ray")


def run_all(
    runs: list[tuple[RunConfig, dict[str, Any] | None]],
    *,
    executor: str = "local",
    address: str | None = None,
    **options: Any,
) -> list[Path]:
    """Execute runs (one config, or the points of a sweep: :func:`vlprobe.sweep.load_runs`)
    and return their directories in order. ``options``: ``skip_existing``, ``force``,
    ``progress``, ``report``, ``config_path`` (see :func:`vlprobe.runner.run`)."""
    if executor == "local":
        if address:
            raise ConfigError("--address names a Ray cluster: use it with --executor ray")
        from vlprobe.runner import run

        return [run(cfg, sweep=sweep, **options) for cfg, sweep in runs]
    if executor == "ray":
        from vlprobe.executors.ray_executor import RayExecutor

        return RayExecutor(address=address).run(runs, **options)
    raise ConfigError(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}")
