"""Class names and prompt templates from analysis parameters (zero-shot, M1 / M6).

Packaged data next to this module (sources and licences inside each file, see also
``LICENSE-openai-CLIP``):

- ``<name>_classnames.json``: ``{"name", "source", "license", ["changes"], "classes"}``.
  ``imagenet``: CLIP's curated names of the 1000 ILSVRC-2012 classes (standard wnid order),
  with the two duplicate names CLIP's list has made distinct (see its ``changes``);
  ``cifar10``: CLIP's CIFAR-10 names.
- ``<name>_templates.json`` (read by :mod:`vlprobe.data.prompts`): ``imagenet`` (CLIP's 80
  ImageNet templates), ``cifar10`` (the 18 of CLIP's CIFAR-10 evaluation).

A parameter names a packaged set, a file (class names: a JSON list, a JSON object with a
``classes``-like key, or one name per line; templates: a JSON list, a JSON object with
``templates``, or one template per line, ``#`` lines skipped) or gives the list inline.

Rules (each a :class:`~vlprobe.errors.ConfigError` naming the parameter and the item):
class names are non-empty and distinct after case folding and whitespace collapsing (CLIP's
tokenizer lower-cases, so "Dog" and "dog" are the same prompt); a template holds exactly one
``{}`` (or CLIP_benchmark's ``{c}``) and no other braces; templates are distinct.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from vlprobe.data.prompts import load_template_set, template_set_names
from vlprobe.errors import ConfigError, DataError

_PACKAGE = "vlprobe.data.prompts"
_NAMES_SUFFIX = "_classnames.json"


def class_name_set_names() -> list[str]:
    """Names of the packaged class-name sets (e.g. ``["cifar10", "imagenet"]``)."""
    files = resources.files(_PACKAGE).iterdir()
    return sorted(f.name[: -len(_NAMES_SUFFIX)] for f in files if f.name.endswith(_NAMES_SUFFIX))


def load_class_name_set(name: str) -> list[str]:
    """The class names of the packaged set ``name``, by class index."""
    names = class_name_set_names()
    if name not in names:
        raise ConfigError(f"unknown class-name set {name!r}; packaged sets: {names}")
    text = resources.files(_PACKAGE).joinpath(f"{name}{_NAMES_SUFFIX}").read_text("utf-8")
    return list(json.loads(text)["classes"])


def _as_file(value: str) -> Path | None:
    from vlprobe.settings import expand_path

    path = expand_path(value)
    return path if path.is_file() else None


def check_class_names(names: Sequence[Any] | None, where: str,
                      error: type[Exception] = ConfigError) -> list[str]:
    """``names`` as stripped strings; ``error`` (ConfigError for a parameter; DataError for a
    dataset's own names) on no names, or an empty, non-string or duplicate name."""
    if not names:
        raise error(f"{where}: no class names (zero-shot needs one name per class)")
    out: list[str] = []
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise error(f"{where}: class name #{i} is {name!r}; expected a non-empty string")
        key = " ".join(name.casefold().split())
        if key in seen:
            raise error(
                f"{where}: class names #{seen[key]} {names[seen[key]]!r} and #{i} {name!r} are "
                f"the same name after case folding (#{i} duplicates #{seen[key]}): zero-shot "
                "could not tell the classes apart"
            )
        seen[key] = i
        out.append(name.strip())
    return out


def resolve_class_names(value: Any, where: str) -> list[str] | None:
    """Class names from a parameter: None (the dataset's own names), a packaged set name, a
    file, or a list."""
    if value is None:
        return None
    if isinstance(value, str):
        if value in class_name_set_names():
            return check_class_names(load_class_name_set(value), f"{where} (set {value!r})")
        path = _as_file(value)
        if path is None:
            raise ConfigError(
                f"{where}: {value!r} is neither a packaged class-name set "
                f"({class_name_set_names()}) nor an existing file"
            )
        from vlprobe.data._common import read_label_names_file

        try:
            names = read_label_names_file(path)
        except DataError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return check_class_names(names, f"{where} (file {str(path)!r})")
    if isinstance(value, list | tuple):
        return check_class_names(list(value), where)
    raise ConfigError(f"{where}: expected a set name, a file or a list of names, got {value!r}")


def check_templates(templates: Sequence[Any], where: str) -> list[str]:
    """ConfigError unless every template is a string with exactly one ``{}`` / ``{c}`` and no
    other braces, and no template repeats."""
    out: list[str] = []
    for i, template in enumerate(templates):
        if not isinstance(template, str):
            raise ConfigError(f"{where}: template #{i} is {template!r}; expected a string")
        canonical = template.replace("{c}", "{}")
        if canonical.count("{}") != 1:
            raise ConfigError(
                f"{where}: template #{i} {template!r} must contain the class-name slot '{{}}' "
                "(or '{c}') exactly once"
            )
        if canonical.replace("{}", "").count("{") or canonical.replace("{}", "").count("}"):
            raise ConfigError(f"{where}: template #{i} {template!r} has a brace other than '{{}}'")
        if template in out:
            raise ConfigError(f"{where}: template #{i} {template!r} is given twice")
        out.append(template)
    if not out:
        raise ConfigError(f"{where}: no templates")
    return out


def _read_template_file(path: Path, where: str) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".json":
        return [line.strip() for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{where}: template file {str(path)!r} is not valid JSON: {exc}"
        ) from None
    if isinstance(data, dict):
        data = data.get("templates")
    if not isinstance(data, list):
        raise ConfigError(
            f"{where}: template file {str(path)!r} must hold a JSON list or an object with "
            "'templates'"
        )
    return data


def resolve_template_param(value: Any, where: str) -> list[str]:
    """Templates from a parameter: one template (contains ``{}``), a packaged set name, a
    file, or a list of templates."""
    if isinstance(value, str):
        if "{}" in value or "{c}" in value:
            return check_templates([value], where)
        if value in template_set_names():
            return check_templates(load_template_set(value), f"{where} (set {value!r})")
        path = _as_file(value)
        if path is None:
            raise ConfigError(
                f"{where}: {value!r} is not a template (it has no '{{}}'), a packaged template "
                f"set ({template_set_names()}) or an existing file"
            )
        return check_templates(_read_template_file(path, where), f"{where} (file {str(path)!r})")
    if isinstance(value, list | tuple):
        return check_templates(list(value), where)
    raise ConfigError(f"{where}: expected a template, a set name, a file or a list, got {value!r}")
