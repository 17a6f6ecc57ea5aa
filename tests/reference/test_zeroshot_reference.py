"""Zero-shot on reference data: the packaged prompt data against the kit's copies of CLIP's
files, and a random-init CLIP (the published ViT-B/32 widths and tokenizer) at chance."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from vlprobe.data.prompts import load_template_set
from vlprobe.data.prompts.params import load_class_name_set


def test_packaged_imagenet_names_are_clips_with_two_duplicates_resolved(reference_dir):
    kit = json.loads((reference_dir / "prompts/openai_clip_imagenet_classes_templates.json")
                     .read_text())
    ours = load_class_name_set("imagenet")
    changed = [i for i, (a, b) in enumerate(zip(ours, kit["imagenet_classes"])) if a != b]
    assert len(ours) == 1000 and changed == [744, 836]
    assert (ours[744], ours[836]) == ("projectile", "sunglass")
    assert len(set(kit["imagenet_classes"])) == 998 and len(set(ours)) == 1000
    wnids = json.loads((reference_dir / "images/imagenet_sample/wnids.json").read_text())
    assert (wnids[744], wnids[836]) == ("n04008634", "n04355933")  # what the changes cite
    assert load_template_set("imagenet") == kit["imagenet_templates"]


def test_packaged_cifar10_names_and_templates_are_clips(reference_dir):
    md = (reference_dir / "prompts/openai_CLIP_data_prompts.md").read_text()
    section = md.split("## CIFAR10\n", 1)[1].split("## CIFAR100", 1)[0]
    classes, templates = section.split("templates = [")
    assert load_class_name_set("cifar10") == re.findall(r"'([^']*)'", classes)
    assert load_template_set("cifar10") == re.findall(r"'([^']*)'", templates)
    names = json.loads((reference_dir / "images/cifar10/label_names.json").read_text())
    assert load_class_name_set("cifar10") == names


def test_random_init_clip_is_at_chance(reference_dir, tmp_path):
    """The CLIP ViT-B/32 widths, heads and BPE tokenizer with 2 blocks per tower, random
    weights (3 seeds), on 200 CIFAR-10 test images with CLIP's 18 templates: the pooled
    top-1 / top-5 lie within the 99 % Clopper-Pearson interval of chance (0.1 / 0.5).

    Pooled over seeds because one random network tends to put most images into one or two
    classes, so its accuracy varies more between initialisations than a binomial says."""
    import torch

    from vlprobe.analyses.multimodal._common import binomial_ci
    from vlprobe.analyses.multimodal.zeroshot import ZeroShot
    from vlprobe.config import parse_config
    from vlprobe.feature_source import RunFeatureSource

    src = reference_dir / "model_configs/clip-vit-base-patch32"
    if not (src / "config.json").is_file():
        pytest.skip(f"no CLIP config in the reference kit ({src})")
    d = tmp_path / "clip-b32-2l"
    shutil.copytree(src, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_config"]["num_hidden_layers"] = cfg["vision_config"]["num_hidden_layers"] = 2
    (d / "config.json").write_text(json.dumps(cfg))
    models = {f"clip{s}": {"adapter": "clip", "config": str(d), "random_init": True, "seed": s}
              for s in range(3)}
    run_cfg = parse_config({
        "name": "zs_chance", "seed": 0, "models": models,
        "datasets": {"cifar10": {"loader": "hf_parquet",
                                 "path": str(reference_dir / "images/cifar10"),
                                 "subsample": {"train": 10, "test": 200}, "seed": 0}},
        "analyses": [{"analysis": "M1", "models": list(models), "dataset": "cifar10"}],
        "extraction": {"batch_size": 50},
    })
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        source = RunFeatureSource(run_cfg, progress=False)
        analysis = ZeroShot(list(models), "cifar10", {"class_names": "cifar10",
                                                      "templates": "cifar10",
                                                      "linear_probe": False})
        assert not source.prefetch(analysis.requests(source))
        result = analysis.run(source)
    finally:
        torch.set_num_threads(before)
    t = result.table
    for metric, chance in (("top1_accuracy", 0.1), ("top5_accuracy", 0.5)):
        rows = t[t["metric"] == metric]
        assert (rows["n"] == 200).all() and rows["chance"].to_numpy() == pytest.approx(chance)
        hits = round((rows["value"] * rows["n"]).sum())
        low, high = binomial_ci(hits, int(rows["n"].sum()), 0.99)
        assert low <= chance <= high, (metric, rows["value"].tolist(), low, high)
    # CLIP's initial logit scale (1 / 0.07); each model ran the 10 x 18 prompts once
    assert t["logit_scale"].to_numpy() == pytest.approx(np.exp(2.6592), rel=1e-3)
    prompts = [e for e in source.log if e.view == "class_prompts"]
    assert len(prompts) == 3 and {e.n_items for e in prompts} == {180}
