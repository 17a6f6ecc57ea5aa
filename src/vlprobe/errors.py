"""Exceptions raised by vlprobe.

Every error a user can cause derives from :class:`VLProbeError`, so the CLI can print the
message (which names the offending file / field and what was expected) instead of a traceback.
"""

from __future__ import annotations


class VLProbeError(Exception):
    """Base class of all user-facing vlprobe errors."""


class ConfigError(VLProbeError):
    """A run configuration (YAML / CLI override / Python) is invalid."""


class DataError(VLProbeError):
    """A dataset could not be read, or its content is not what was expected."""


class ModelLoadError(VLProbeError):
    """A model checkpoint could not be loaded (missing file, offline hub id, bad config)."""


class UnknownNameError(VLProbeError, KeyError):
    """A registry lookup failed; the message carries "did you mean" suggestions."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class AnalysisError(VLProbeError):
    """An analysis received inputs it cannot work with (too few samples, NaN features, ...)."""


class StoreError(VLProbeError):
    """The activation store found something it cannot use (e.g. a key mismatch)."""
