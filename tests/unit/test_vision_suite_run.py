"""End to end: V2 transfer, V4 clustering and R2 CKA through the runner on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
from test_runner import spec_dict, write_image_folder

from vlprobe.config import parse_config
from vlprobe.results.records import read_result_table, read_run
from vlprobe.runner import run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_vision_suite_runs_through_the_runner(tmp_path):
    images = write_image_folder(tmp_path / "images", n_train=10, n_test=6)
    cfg = {
        "name": "vision_suite",
        "seed": 0,
        "output_dir": str(tmp_path / "runs"),
        "models": {
            "vit": spec_dict("hf_vit", tmp_path),
            "resnet": spec_dict("hf_resnet", tmp_path),
            "bert": spec_dict("hf_text", tmp_path),
        },
        "datasets": {"colours": {"loader": "image_folder", "path": str(images)}},
        "analyses": [
            {"analysis": "V2", "models": ["vit"], "dataset": "colours",
             "params": {"refine_rounds": 1, "max_iter": 200}},
            {"analysis": "V4", "models": ["vit"], "dataset": "colours"},
            # bert cannot read images: skipped with a note, the rest still runs
            {"analysis": "R2", "models": ["vit", "resnet", "bert"], "dataset": "colours"},
        ],
        "extraction": {"batch_size": 8, "shard_size": 16},
    }
    run_dir = run(parse_config(cfg), progress=False)
    record = read_run(run_dir)
    assert record["status"] == "ok", record["analyses"]
    assert set(record["analyses"]) == {"V2_colours", "V4_colours", "R2_colours"}
    assert (run_dir / "report.html").is_file()

    transfer = read_result_table(run_dir, "V2_colours")
    assert set(transfer["site"]) == {"vision.pooled"}
    assert set(transfer["metric"]) == {"top1_accuracy", "mean_per_class_recall"}  # 3 classes
    assert transfer["value"].between(0, 1).all()

    clustering = read_result_table(run_dir, "V4_colours")
    assert set(clustering["metric"]) == {"accuracy", "nmi", "ari"}
    assert clustering["layer"].nunique() >= 2 and (clustering["n"] == 18).all()

    cka = read_result_table(run_dir, "R2_colours")
    assert set(cka["model"]) | set(cka["model_b"]) == {"vit", "resnet"}
    self_vit = cka[(cka["model"] == "vit") & (cka["model_b"] == "vit")
                   & (cka["layer"] == cka["layer_b"])]
    # ViT layer 0 pooled with CLS is the same vector for every image: NaN, reported
    assert np.allclose(self_vit.loc[self_vit["layer"] > 0, "value"], 1.0)
    assert self_vit.loc[self_vit["layer"] == 0, "value"].isna().all()
