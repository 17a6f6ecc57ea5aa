"""V6 through the runner on CIFAR-10 from the reference kit, with the heads that
examples/robustness.yaml gives the aligned dual encoder (zero-shot) and both models (linear
probe), here on a tiny untrained aligned_dual checkpoint and a tiny EfficientNet; and
examples/robustness.yaml itself parses with every parameter accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tiny_models import tiny_aligned_dual, tiny_efficientnet  # noqa: E402
from vlprobe.config import load_config, parse_config  # noqa: E402
from vlprobe.results.records import read_result_table, read_run  # noqa: E402
from vlprobe.runner import build_analyses, run  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "robustness.yaml"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_example_config_builds_every_analysis():
    cfg = load_config(EXAMPLE)
    built = {entry.name: analysis for entry, analysis in build_analyses(cfg)}
    assert set(built) == {"adversarial_imagenet", "adversarial_zero_shot_cifar10",
                          "adversarial_probe_cifar10", "feature_vis_effnet"}
    assert built["adversarial_imagenet"].grid == [("linf", e / 255) for e in (0.5, 1, 2, 4)]
    assert built["adversarial_zero_shot_cifar10"].params["head"] == "zero_shot"
    assert len(built["adversarial_zero_shot_cifar10"].templates) == 80


def test_zero_shot_and_probe_heads_through_the_runner(reference_dir, tmp_path):
    path = reference_dir / "images" / "cifar10"
    if not path.is_dir():
        pytest.skip(f"no CIFAR-10 in the reference kit ({path})")
    aligned = tiny_aligned_dual(tmp_path)
    effnet = tiny_efficientnet(tmp_path)
    attack = {"epsilons": {"linf": ["4/255"], "l2": [0.5]}, "steps": 2, "batch_size": 8,
              "n_examples": 1, "split": "test"}
    cfg = parse_config({
        "name": "robustness_tiny", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "models": {"aligned": {"adapter": "aligned_dual", "checkpoint": aligned.checkpoint},
                   "effnet": {"adapter": "efficientnet_lite0", "random_init": True,
                              "options": {"image_size": 64}}},
        "datasets": {"cifar10": {"loader": "hf_parquet", "path": str(path),
                                 "subsample": {"train": 40, "test": 12}, "seed": 0}},
        "analyses": [
            {"analysis": "V6", "name": "zero_shot", "models": ["aligned"], "dataset": "cifar10",
             "params": {**attack, "head": "zero_shot",
                        "templates": ["a photo of a {}.", "a picture of a {}."]}},
            {"analysis": "V6", "name": "probe", "models": ["effnet", "aligned"],
             "dataset": "cifar10", "params": {**attack, "head": "linear_probe",
                                              "probe_Cs": [0.1, 1.0]}},
        ],
    })
    assert effnet.adapter == "efficientnet_lite0"
    run_dir = run(cfg, progress=False, report=False)
    record = read_run(run_dir)
    for name in ("zero_shot", "probe"):
        assert record["analyses"][name]["status"] == "ok", record["analyses"][name]
    zs = read_result_table(run_dir, "zero_shot")
    assert set(zs["head"]) == {"zero_shot"} and set(zs["site"]) == {"vision.proj"}
    assert set(zs["norm"]) == {"linf", "l2"}
    probe = read_result_table(run_dir, "probe")
    assert set(probe["model"]) == {"effnet", "aligned"}
    assert set(probe.groupby("model")["site"].first()) == {"vision.pooled", "vision.proj"}
    clean = probe[(probe["metric"] == "accuracy") & (probe["epsilon"] == 0)]
    assert (clean["n"] == 12).all()
    notes = " ".join(record["analyses"]["zero_shot"]["notes"])
    assert "semantic distance skipped" in notes  # CIFAR-10 names are not WordNet ids
