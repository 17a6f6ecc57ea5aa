"""The zoo: `vlprobe train` of several configs in one process (examples/train_zoo.sh)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]


def test_train_several_configs_writes_a_summary(tmp_path, monkeypatch, capsys):
    import yaml
    from test_train import _config as aligned_config
    from test_train_captioner import _config as captioner_config
    from test_train_captioner import _data

    from vlprobe.cli import main

    monkeypatch.setenv("VLPROBE_CACHE", str(tmp_path / "cache"))
    aligned = aligned_config(tmp_path / "a")
    captioner = captioner_config(tmp_path / "c", _data(tmp_path / "c" / "flickr"))
    paths = []
    for name, cfg in (("aligned", aligned), ("captioner", captioner)):
        paths.append(tmp_path / f"{name}.yaml")
        paths[-1].write_text(yaml.safe_dump(cfg))
    summary = tmp_path / "zoo" / "summary.json"
    summary.parent.mkdir()
    assert main(["train", *map(str, paths), "--summary", str(summary), "--no-progress",
                 "--set", "optim.epochs=1"]) == 0
    got = json.loads(summary.read_text())
    assert [m["kind"] for m in got["models"]] == ["aligned", "captioner"]
    for m in got["models"]:
        assert m["seconds"] > 0 and (Path(m["checkpoint"]) / "training_record.json").is_file()
        record = json.loads((Path(m["checkpoint"]) / "training_record.json").read_text())
        assert len(record["epochs"]) == 1  # --set reached every config
    assert got["seconds"] >= sum(m["seconds"] for m in got["models"])
    assert "all 2 models" in capsys.readouterr().out


def test_a_bad_config_fails_before_anything_trains(tmp_path, capsys):
    import yaml
    from test_train import _config as aligned_config

    from vlprobe.cli import main

    good = tmp_path / "good.yaml"
    cfg = aligned_config(tmp_path)
    good.write_text(yaml.safe_dump(cfg))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**cfg, "optimizer": {}}))
    assert main(["train", str(good), str(bad), "--no-progress"]) == 2
    assert "unknown key 'optimizer'" in capsys.readouterr().err
    assert not Path(cfg["output_dir"]).exists()


def test_the_zoo_script_trains_the_four_example_configs(reference_dir):
    from vlprobe.train import load_train_config

    script = (ROOT / "examples" / "train_zoo.sh").read_text()
    names = re.findall(r'"\$here/(train_\w+\.yaml)"', script)
    kinds = {load_train_config(ROOT / "examples" / n).kind for n in names}
    assert kinds == {"aligned", "captioner", "fusion_single", "fusion_two"}
    assert "--summary" in script


def test_the_devise_example_parses(reference_dir):
    from vlprobe.train import load_train_config

    cfg = load_train_config(ROOT / "examples" / "train_devise.yaml")
    assert cfg.kind == "devise" and cfg.text_tower.sites == ("text.pooled",)
    assert cfg.head.kind == "linear" and cfg.head.embed_dim == 384  # MiniLM-L6's width
