"""Real EfficientNet-Lite0 weights on the reference kit: the model's own ImageNet head
(preprocessing sanity check) and M7 human-centric probes on the movie posters.

Needs the reference kit (``VLPROBE_REFERENCE``) and the packaged Lite0 weights.
"""

from __future__ import annotations

import numpy as np
import pytest

from vlprobe.config import parse_config
from vlprobe.results.records import read_result_table, read_run
from vlprobe.runner import run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run_on_kit(reference_dir, tmp_path, rel, dataset, analysis):
    """Run one analysis of ``efficientnet_lite0`` (``analysis``: its config entry, without
    models) on the kit's parquet file ``rel``, skipping where the kit lacks it.

    ``dataset``: ``{name: extra hf_parquet keys}``. Returns (the analysis' run record, its
    result table); the analysis must have succeeded."""
    path = reference_dir / rel
    if not path.is_file():
        pytest.skip(f"no {rel} in the reference kit ({path})")
    (name, extra), = dataset.items()
    cfg = parse_config({
        "name": "reference_sanity",
        "seed": 0,
        "output_dir": str(tmp_path / "runs"),
        "models": {"efficientnet_lite0": {"adapter": "efficientnet_lite0"}},
        "datasets": {name: {"loader": "hf_parquet", "path": f"${{reference}}/{rel}", **extra}},
        "analyses": [{**analysis, "models": ["efficientnet_lite0"], "dataset": name}],
        "extraction": {"batch_size": 50, "shard_size": 500},
    })
    run_dir = run(cfg, progress=False, report=False)
    record = read_run(run_dir)
    info = record["analyses"][analysis["name"]]
    assert info["status"] == "ok", record["analyses"]
    return info, read_result_table(run_dir, analysis["name"])


def test_imagenet_sample_own_head(reference_dir, lite0_weights, tmp_path):
    _, table = _run_on_kit(
        reference_dir, tmp_path, "images/imagenet_sample/sample.parquet",
        {"imagenet_sample": {}}, {"analysis": "classifier_head", "name": "head_imagenet"},
    )
    assert set(table["split"]) == {"sample"}  # hf_parquet names the split after the file stem
    values = dict(zip(table["metric"], table["value"]))
    top1, top5 = values["top1_accuracy"], values["top5_accuracy"]
    print(f"\nEfficientNet-Lite0 own head on imagenet_sample (n={int(table['n'].iloc[0])}): "
          f"top-1 {top1:.3f}, top-5 {top5:.3f} (published ImageNet val top-1: 0.751)")
    assert (table["n"] == 500).all() and (table["n_classes_head"] == 1000).all()
    assert top1 >= 0.6
    assert top5 >= top1


def test_movie_posters_human_centric(reference_dir, lite0_weights, tmp_path):
    info, table = _run_on_kit(
        reference_dir, tmp_path, "human_centric/movie_posters/posters.parquet",
        {"posters": {"test_fraction": 0.3, "subsample": {"posters": 210, "test": 90},
                     "seed": 0}},
        # default feature sets: "text" and "image+text" are skipped with a note (no texts)
        {"analysis": "M7", "name": "m7_posters",
         "params": {"train_split": "posters", "probe": "both", "mlp_max_epochs": 30}},
    )
    assert set(table["feature_set"]) == {"image"}
    assert set(table["site"]) == {"vision.pooled"}
    assert (table["n_test"] == 90).all() and (table["n_train"] + table["n_val"] == 210).all()
    lin = dict(zip(*table[table["probe"] == "linear"][["metric", "value"]].T.values))
    mlp = dict(zip(*table[table["probe"] == "mlp"][["metric", "value"]].T.values))
    print(f"\nM7 posters (Comedy/Drama, efficientnet_lite0 image embedding, "
          f"210 train+val / 90 test): "
          f"linear accuracy {lin['accuracy']:.3f}, balanced {lin['balanced_accuracy']:.3f}, "
          f"F1 macro {lin['f1_macro']:.3f}; MLP accuracy {mlp['accuracy']:.3f}; "
          f"majority baseline {table['baseline'].iloc[0]:.3f}")
    assert lin["accuracy"] > 0.5 and lin["balanced_accuracy"] > 0.5
    assert np.isfinite(table["value"]).all()
    notes = " ".join(info["notes"])
    assert "'text' skipped" in notes and "need item texts" in notes
    assert info["figures"]
