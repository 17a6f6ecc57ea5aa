"""The generic registry: lazy entries, aliases and did-you-mean errors."""

from __future__ import annotations

import pytest

from vlprobe.errors import UnknownNameError
from vlprobe.registry import Registry


def test_lazy_entry_is_imported_on_first_get():
    reg: Registry = Registry("thing")
    reg.add("dumps", "json:dumps", aliases=("J",))
    import json

    assert reg.get("dumps") is json.dumps
    assert reg.get("J") is json.dumps
    assert "J" in reg and "dumps" in reg and "x" not in reg
    assert reg.names() == ["dumps"]


def test_unknown_name_suggests_close_ones():
    reg: Registry = Registry("model adapter")

    @reg.register("efficientnet_lite0")
    class A:
        pass

    with pytest.raises(UnknownNameError) as info:
        reg.get("efficientnet_lite")
    text = str(info.value)
    assert "unknown model adapter 'efficientnet_lite'" in text
    assert "Did you mean 'efficientnet_lite0'?" in text


def test_double_registration_is_an_error():
    reg: Registry = Registry("thing")
    reg.add("a", object())
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("a", object())


def test_every_registry_lists_names_without_importing_torch():
    import subprocess
    import sys

    code = (
        "import sys; from vlprobe.models import MODELS; from vlprobe.analyses import ANALYSES; "
        "from vlprobe.data import DATASETS; "
        "assert MODELS.names() and ANALYSES.names() and DATASETS.names(); "
        "assert 'torch' not in sys.modules, 'listing names imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
