"""M1, M2 and M6 end to end through the runner on tiny random dual encoders (CLIP, SigLIP,
aligned_dual): the class-prompt view with class names, embedding sites only, the models'
logit scales, one text-tower pass for prompts shared by two analyses, clear failures."""

from __future__ import annotations

import numpy as np
import pytest
from test_data_flickr8k import write_split
from test_runner import spec_dict, write_image_folder

from vlprobe.config import parse_config
from vlprobe.results.records import read_result_table, read_run
from vlprobe.runner import run

TEMPLATES = ["a photo of a {}.", "a {} picture."]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_dual_encoder_suite_through_the_runner(tmp_path):
    images = write_image_folder(tmp_path / "images", n_train=6, n_test=4)
    flickr = tmp_path / "flickr8k"
    write_split(flickr, "test", 4, seed=0)
    zs = {"templates": TEMPLATES, "class_names": ["red", "green", "blue"],
          "probe": {"coarse_Cs": [0.1, 10.0], "refine_rounds": 0, "max_iter": 50}}
    cfg = {
        "name": "dual_suite",
        "seed": 0,
        "output_dir": str(tmp_path / "runs"),
        "models": {"clip": spec_dict("clip", tmp_path), "siglip": spec_dict("siglip", tmp_path),
                   "aligned": spec_dict("aligned_dual", tmp_path),
                   "vit": spec_dict("hf_vit", tmp_path)},
        "datasets": {
            "colours": {"loader": "image_folder", "path": str(images)},
            "f8k": {"loader": "flickr8k", "path": str(flickr)},
        },
        "analyses": [
            {"analysis": "M1", "name": "zs", "models": ["clip", "siglip", "aligned"],
             "dataset": "colours", "params": zs},
            {"analysis": "M6", "name": "gap_classes", "models": ["clip"], "dataset": "colours",
             "params": {"templates": TEMPLATES, "class_names": ["red", "green", "blue"]}},
            {"analysis": "M2", "name": "ret", "models": ["clip", "aligned"], "dataset": "f8k"},
            {"analysis": "M6", "name": "gap_pairs", "models": ["siglip"], "dataset": "f8k"},
            {"analysis": "M1", "name": "zs_vit", "models": ["vit"], "dataset": "colours",
             "params": {"templates": TEMPLATES}},
        ],
        "extraction": {"batch_size": 8, "shard_size": 16},
    }
    run_dir = run(parse_config(cfg), progress=False)
    record = read_run(run_dir)
    status = {k: v["status"] for k, v in record["analyses"].items()}
    assert status == {"zs": "ok", "gap_classes": "ok", "ret": "ok", "gap_pairs": "ok",
                      "zs_vit": "failed"}, record["analyses"]
    assert "model 'vit' (image) has no text tower" in record["analyses"]["zs_vit"]["error"]

    # the 3 x 2 prompts ran through CLIP's text tower once, for M1 and M6 together
    prompt_runs = [e for e in record["extractions"]
                   if e["view"] == "class_prompts" and e["model"] == "clip"]
    assert len(prompt_runs) == 1 and prompt_runs[0]["n_items"] == 6
    assert prompt_runs[0]["n_sites"] == 1 and prompt_runs[0]["n_items_computed"] == 6
    # flickr8k: 4 images through the image tower, 20 captions through the text tower
    f8k = {(e["model"], e["modality"]): e for e in record["extractions"]
           if e["dataset"] == "f8k"}
    assert f8k["clip", "image"]["n_items"] == 20 and f8k["clip", "text"]["n_items"] == 20

    t = read_result_table(run_dir, "zs")
    top1 = t[t["metric"] == "top1_accuracy"].set_index("model")
    assert set(top1.index) == {"clip", "siglip", "aligned"}
    assert top1["value"].between(0, 1).all() and (top1["site"] == "vision.proj").all()
    assert top1.loc["clip", "logit_scale"] == pytest.approx(np.exp(2.6592), rel=1e-3)
    assert np.isnan(top1.loc["clip", "logit_bias"]) and np.isfinite(top1.loc["siglip",
                                                                             "logit_bias"])
    assert t["metric"].str.startswith("linear_probe_minus_zero_shot").any()
    notes = record["analyses"]["zs"]["notes"]
    assert any("model 'siglip'" in n and "sigmoid" in n for n in notes)

    ret = read_result_table(run_dir, "ret")
    r = ret[ret["metric"].str.startswith("recall@")]
    assert set(r["direction"]) == {"image_to_text", "text_to_image"}
    assert (ret["n_images"] == 4).all() and (ret["n_captions"] == 20).all()
    assert r["value"].between(0, 1).all()
    t2i = r[r["direction"] == "text_to_image"].set_index("metric")["value"]
    assert (t2i["recall@10"] == 1.0).all()  # 10 >= 4 candidate images: every caption hits

    gap = read_result_table(run_dir, "gap_pairs").set_index("metric")
    assert 0 <= gap.loc["gap_distance", "value"] <= 2
    assert (run_dir / "report.html").is_file()
