"""Packaged prompt-template sets (data files next to this module).

A template set is a JSON file ``<name>_templates.json`` holding ``{"name", "source",
"license", "templates": [...]}``; every template contains ``{}`` (the class name).

- ``imagenet``: the 80 templates CLIP ensembles for ImageNet zero-shot classification
  (openai/CLIP, MIT licence; see ``LICENSE-openai-CLIP``). R1 uses them to give a text model
  a distribution of sentences per class (one per template), so that per-class statistics
  such as the Welch-t RDM exist for text models as well as for image models.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources

from vlprobe.errors import ConfigError


def template_set_names() -> list[str]:
    """Names of the packaged template sets (e.g. ``["imagenet"]``)."""
    files = resources.files(__name__).iterdir()
    suffix = "_templates.json"
    return sorted(f.name[: -len(suffix)] for f in files if f.name.endswith(suffix))


def load_template_set(name: str) -> list[str]:
    """The templates of the packaged set ``name`` (in the file's order)."""
    names = template_set_names()
    if name not in names:
        raise ConfigError(f"unknown prompt template set {name!r}; packaged sets: {names}")
    text = resources.files(__name__).joinpath(f"{name}_templates.json").read_text("utf-8")
    templates = json.loads(text)["templates"]
    if not templates or any("{}" not in t for t in templates):  # guards a broken data file
        raise ConfigError(f"prompt template set {name!r}: every template must contain '{{}}'")
    return list(templates)


def resolve_templates(value: str | Sequence[str], where: str) -> list[str]:
    """Templates from a config value: a packaged set name (``"imagenet"``), one template
    string (contains ``{}``) or a list of template strings. ``where`` names the config field
    in error messages."""
    if isinstance(value, str):
        if "{}" in value or "{c}" in value:
            return [value]
        if value in template_set_names():
            return load_template_set(value)
        raise ConfigError(
            f"{where}: {value!r} is neither a template (it contains no '{{}}') nor a packaged "
            f"template set ({template_set_names()})"
        )
    templates = list(value or [])
    bad = [t for t in templates if not isinstance(t, str) or ("{}" not in t and "{c}" not in t)]
    if not templates or bad:
        raise ConfigError(
            f"{where}: expected a packaged template set name ({template_set_names()}) or a "
            f"non-empty list of templates containing '{{}}', got {value!r}"
        )
    if len(set(templates)) != len(templates):
        raise ConfigError(f"{where}: duplicate templates in {templates!r}")
    return templates
