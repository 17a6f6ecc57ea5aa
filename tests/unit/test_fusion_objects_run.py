"""F6 same-object attention end to end: tiny VisualBERT / LXMERT on a COCO layout with
instance boxes (loader coco_captions, ``instances: true``). Every F6 statistic, the
same-object one included, comes from ONE forward per batch per model (calls counted); the
region tokens' boxes reach the reducer in the image frame."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_data_coco import _coco  # noqa: E402

from _helpers import record_forwards, tiny_model_entry  # noqa: E402
from tiny_models import tiny_spec  # noqa: E402
from vlprobe.config import parse_config  # noqa: E402
from vlprobe.errors import ConfigError  # noqa: E402
from vlprobe.feature_source import RunFeatureSource  # noqa: E402
from vlprobe.run_plan import plan_run  # noqa: E402


def _config(tmp_path, objects="auto") -> dict:
    models = {name: tiny_model_entry(name, tmp_path / "tiny")
              for name in ("visual_bert", "lxmert")}
    return {
        "name": "objects", "output_dir": str(tmp_path / "runs"),
        "cache_dir": str(tmp_path / "cache"), "models": models,
        "datasets": {"coco": {"loader": "coco_captions", "path": str(_coco(tmp_path / "coco")),
                              "options": {"instances": True}}},
        "analyses": [{"analysis": "F6", "models": ["visual_bert", "lxmert"], "dataset": "coco",
                      "params": {"split": "validation", "objects": objects}}],
        "extraction": {"batch_size": 2, "shard_size": 16},
    }


def test_same_object_attention_comes_from_the_one_pass(tmp_path):
    cfg = parse_config(_config(tmp_path))
    source = RunFeatureSource(cfg, progress=False)
    calls = record_forwards(
        source, ("visual_bert", "lxmert"),
        lambda model, batch, _, trace: (model, len(batch), trace.extras["boxes"]))
    plan = plan_run(cfg, source, cache=None, versions={})
    assert not plan.errors and all(p.error is None for p in plan.analyses)
    assert len(plan.groups) == 2  # one extraction group per model
    assert source.extract_groups(plan.groups) == []
    for model in ("visual_bert", "lxmert"):  # 3 captions, batches of 2: 2 forwards each
        mine = [c for c in calls if c[0] == model]
        assert len(mine) == 2 and sum(c[1] for c in mine) == 3
        boxes = torch.cat([c[2].flatten(0, 1) for c in mine])
        real = boxes[torch.isfinite(boxes).all(-1)]
        assert len(real) and (real >= 0).all() and (real <= 1).all()
    calls.clear()
    result = plan.analyses[0].analysis.run(source)
    assert calls == []  # the analysis read the one pass
    table = result.table
    mass = table[table["metric"] == "same_object_mass"]
    assert set(mass["model"]) == {"visual_bert", "lxmert"}
    lx = mass.loc[mass["model"] == "lxmert", "site"]
    assert lx.str.fullmatch(r"vision\.blocks\.\d+\.attn|cross\.blocks\.\d+\.vision\.attn").all()
    assert lx.str.startswith("cross.").any() and lx.str.startswith("vision.").any()
    vb = mass.loc[mass["model"] == "visual_bert", "site"]
    assert vb.str.fullmatch(r"fusion\.blocks\.\d+\.attn").all()
    finite = mass["value"].dropna()
    assert len(finite) and finite.between(0, 1).all()
    uniform = table[table["metric"] == "same_object_uniform"]["value"].dropna()
    assert uniform.between(0, 1).all()
    assert {"entropy", "attention_distance", "attention_similarity",
            "same_other_ratio"} <= set(table["metric"])
    assert "same_object_by_layer" in result.figures


def test_objects_true_needs_boxes_and_false_leaves_them_out(tmp_path):
    cfg = _config(tmp_path, objects=True)
    cfg["datasets"]["coco"]["options"] = {}
    source = RunFeatureSource(parse_config(cfg), progress=False)
    plan = plan_run(parse_config(cfg), source, cache=None, versions={})
    errors = [str(p.error) for p in plan.analyses if p.error is not None] + [
        str(e) for e in plan.errors]
    assert any("objects: true needs object boxes" in e for e in errors)
    cfg = _config(tmp_path, objects=False)
    source = RunFeatureSource(parse_config(cfg), progress=False)
    analysis = plan_run(parse_config(cfg), source, cache=None, versions={}).analyses[0].analysis
    methods = {m for r in analysis.requests(source) for m in r.attention}
    assert "reduce:objects" not in methods
    with pytest.raises(ConfigError, match="objects must be"):
        type(analysis)(["visual_bert"], "coco", {"objects": "yes"})


def test_region_token_boxes_are_in_the_image_frame_for_window_boxes(tmp_path):
    """A `vlprobe train` checkpoint reads window-normalised boxes; the trace reports the
    cells' footprints in the original image (what the object boxes are compared with)."""
    from PIL import Image

    from vlprobe.models import load_model

    spec = tiny_spec("visual_bert", tmp_path)
    regions = dict(spec.options["regions"], boxes="window")
    spec = type(spec)(**{**asdict(spec), "options": {**spec.options, "regions": regions}})
    adapter = load_model(spec)
    image = Image.new("RGB", (80, 40), (10, 20, 30))
    batch = adapter.prepare([(image, "a cat")], "pair")
    boxes = batch.extras["boxes"][0]
    cells = boxes[torch.isfinite(boxes).all(-1)].numpy()
    left, top, right, bottom = adapter.regions.cnn.input_window(80, 40)
    assert left > 0  # a centre crop: window and image frames differ
    np.testing.assert_allclose([cells[:, 0].min(), cells[:, 1].min(), cells[:, 2].max(),
                                cells[:, 3].max()], [left / 80, top / 40, right / 80,
                                                     bottom / 40], atol=1e-6)
