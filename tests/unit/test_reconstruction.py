"""V5 reconstruction_probe: planted structure, seeds, leakage, errors, end to end."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from test_analysis_fakes import FakeSource

from vlprobe.analyses.base import FeatureRequest, LayerFeatures
from vlprobe.analyses.vision.reconstruction import (
    ReconstructionProbe,
    default_layer_indices,
    load_targets,
)
from vlprobe.data.stimuli import ImageSource, Stimuli
from vlprobe.errors import AnalysisError, ConfigError
from vlprobe.estimators.decoder import build_decoder, fit_decoder

torch.set_num_threads(1)

SIZE, GRID = 16, 4
FAST = {"grid": GRID, "image_size": SIZE, "epochs": 12, "width": 32, "batch_size": 32,
        "lr": 3e-3}


def smooth_images(n: int, seed: int) -> np.ndarray:
    """``[n, 3, 16, 16]`` in [0, 1]: random 4x4 colour layouts, bilinearly upsampled."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    up = torch.nn.functional.interpolate(coarse, size=SIZE, mode="bilinear", align_corners=False)
    return up.numpy().astype(np.float32)


def copy_features(images: np.ndarray) -> np.ndarray:
    """``[n, 3, g, g]``: the image, area-downsampled to the grid (all layout information)."""
    return torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(images), GRID).numpy()


def test_copy_features_beat_noise_and_noise_sits_at_the_mean_image_level():
    imgs = smooth_images(300, seed=0)
    tr, va, te = slice(0, 200), slice(200, 240), slice(240, 300)
    feats = copy_features(imgs)
    noise = np.random.default_rng(0).normal(size=feats.shape).astype(np.float32)
    kw = dict(epochs=15, batch_size=32, lr=3e-3, width=32, seed=0, patience=4)
    good = fit_decoder((feats[tr], imgs[tr]), (feats[va], imgs[va]), (feats[te], imgs[te]), **kw)
    bad = fit_decoder((noise[tr], imgs[tr]), (noise[va], imgs[va]), (noise[te], imgs[te]), **kw)
    baseline = float(np.mean((imgs[te] - imgs[tr].mean(0, keepdims=True)) ** 2))
    assert good.test_mse < 0.3 * baseline, (good.test_mse, baseline)
    assert bad.test_mse > 0.85 * baseline and bad.test_mse < 1.3 * baseline, (bad, baseline)
    assert good.examples.shape == (6, 3, SIZE, SIZE)
    assert 1 <= good.best_epoch <= good.epochs_run <= 15


def test_same_seed_same_numbers():
    imgs = smooth_images(80, seed=1)
    feats = copy_features(imgs)
    data = ((feats[:50], imgs[:50]), (feats[50:60], imgs[50:60]), (feats[60:], imgs[60:]))
    kw = dict(epochs=3, batch_size=16, width=16)
    threads = torch.get_num_threads()
    a, b = fit_decoder(*data, seed=3, **kw), fit_decoder(*data, seed=3, **kw)
    assert torch.get_num_threads() == threads  # restored after training
    c = fit_decoder(*data, seed=4, **kw)
    assert a.test_mse == b.test_mse and a.val_mse == b.val_mse
    np.testing.assert_array_equal(a.examples, b.examples)
    assert c.test_mse != a.test_mse


def test_training_leaves_the_global_torch_rng_alone():
    """The decoder's initial weights are seeded locally (it used to reset the global RNG with
    ``torch.manual_seed(seed)``); same seed, same weights, as before."""
    imgs = smooth_images(40, seed=2)
    feats = copy_features(imgs)
    data = ((feats[:24], imgs[:24]), (feats[24:32], imgs[24:32]), (feats[32:], imgs[32:]))
    torch.manual_seed(99)
    torch.rand(2)
    before = torch.get_rng_state()
    a = fit_decoder(*data, epochs=1, batch_size=8, width=16, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(3)  # the former global seeding gives the same initial decoder
    old = build_decoder(3, GRID, SIZE, 3, 16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        new = build_decoder(3, GRID, SIZE, 3, 16)
    for p, q in zip(old.parameters(), new.parameters()):
        assert torch.equal(p, q)
    assert a.test_mse == fit_decoder(*data, epochs=1, batch_size=8, width=16, seed=3).test_mse


def test_duplicate_train_ids_are_an_analysis_error():
    src = planted_source()
    src.items["train"].ids = ["same"] * len(src.items["train"].ids)
    with pytest.raises(AnalysisError, match="validation split carved from it"):
        ReconstructionProbe(["m"], "toy", {**FAST, "epochs": 1, "layers": [1]}).run(src)


def test_default_layers():
    assert default_layer_indices(13) == [3, 6, 9, 12]  # ViT-B: 12 blocks + embedding
    assert default_layer_indices(5) == [1, 2, 3, 4]  # ResNet: stem + 4 stages
    assert default_layer_indices(3) == [1, 2] and default_layer_indices(1) == [0]


# -- the analysis on an in-memory source ------------------------------------------------------


def _stimuli(images: np.ndarray, split: str, prefix: str | None = None) -> Stimuli:
    pil = [Image.fromarray((im.transpose(1, 2, 0) * 255).round().astype(np.uint8))
           for im in images]
    prefix = prefix or split
    ids = [f"{prefix}:{i}" for i in range(len(pil))]
    src = ImageSource([(lambda im=im: im) for im in pil], ids, ids)
    return Stimuli(dataset="toy", split=split, ids=ids, images=src)


@dataclass
class ImageFakeSource(FakeSource):
    """FakeSource + the V5 extras (layer sites, stimuli)."""

    items: dict | None = None
    sites_of: dict | None = None

    def layer_sites(self, model, modality):
        return self.sites_of[model]

    def stimuli(self, request: FeatureRequest) -> Stimuli:
        return self.items[request.split]


def planted_source(n_train=120, n_test=40, test_prefix=None, nan=False, text_model=False):
    """Model ``m``: layer 1 = the image on a 4x4 grid (+ 5 noise channels), layer 2 = noise."""
    imgs = {"train": smooth_images(n_train, 0), "test": smooth_images(n_test, 1)}
    stim = {"train": _stimuli(imgs["train"], "train"),
            "test": _stimuli(imgs["test"], "test", test_prefix)}
    src = ImageFakeSource(items=stim, sites_of={"m": ["v.0", "v.1", "v.2"]})
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        # targets are rounded to uint8 by the PIL round trip: plant from what the analysis sees
        y = load_targets(stim[split], SIZE)
        n = len(y)
        planted = np.concatenate([copy_features(y), rng.normal(size=(n, 5, GRID, GRID))], 1)
        feats = {"v.1": planted.reshape(n, -1).astype(np.float32),
                 "v.2": rng.normal(size=(n, 8 * GRID * GRID)).astype(np.float32)}
        if nan:
            feats["v.1"][0, 0] = np.nan
        src.add("m", split, LayerFeatures(feats, {"v.1": 1, "v.2": 2}, None,
                                          list(stim[split].ids)))
    if text_model:
        src.modalities["bert"] = ("text",)
    return src


def test_analysis_ranks_the_planted_layer_first_and_reports_baselines():
    src = planted_source()
    res = ReconstructionProbe(["m"], "toy", {**FAST, "layers": [1, 2]}).run(src)
    t = res.table
    mse = t[t["metric"] == "mse"].set_index("layer")["value"]
    base = float(t["mean_image_mse"].iloc[0])
    assert mse[1] < 0.5 * base < mse[2]
    assert abs(mse[2] - base) < 0.3 * base
    assert set(t["metric"]) == {"mse", "psnr"}
    for col in ("analysis", "model", "dataset", "layer", "site", "metric", "value", "n_train",
                "n_test", "grid", "image_size", "epochs", "seed", "mean_colour_mse"):
        assert col in t.columns, col
    assert (t["n_train"] + t["n_val"] == 120).all() and (t["n_test"] == 40).all()
    assert set(res.figures) == {"mse_vs_layer", "examples"}
    assert len(res.figures["examples"].axes) == 3 * 6  # original + 2 layers, 6 images
    reqs = ReconstructionProbe(["m"], "toy", {"layers": None}).requests(src)
    assert {r.pooling for r in reqs} == {"grid7"} and reqs[0].sites == ("v.1", "v.2")


def test_val_is_carved_from_train_and_test_ids_must_not_leak():
    an = ReconstructionProbe(["m"], "toy", {**FAST, "max_train": 50, "val_fraction": 0.2})
    ids = [f"train:{i}" for i in range(120)]
    tr, va = an._carve(ids)
    assert len(tr) == 40 and len(va) == 10 and not set(tr) & set(va)
    np.testing.assert_array_equal(an._carve(ids)[1], va)  # seeded
    # a "test" split that reuses train ids is refused before any training
    with pytest.raises(AnalysisError, match="share"):
        ReconstructionProbe(["m"], "toy", {**FAST, "epochs": 1}).run(
            planted_source(test_prefix="train"))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(AnalysisError, match="'bert' has no image tower"):
        ReconstructionProbe(["m", "bert"], "toy").requests(planted_source(text_model=True))
    text_src = planted_source()
    text_src.data_modalities = ("text",)
    with pytest.raises(AnalysisError, match="dataset 'toy' has no images"):
        ReconstructionProbe(["m"], "toy").requests(text_src)
    with pytest.raises(AnalysisError, match="at least 2"):
        ReconstructionProbe(["m"], "toy", {**FAST, "layers": [1]}).run(planted_source(n_train=1))
    with pytest.raises(AnalysisError, match="NaN"):
        ReconstructionProbe(["m"], "toy", {**FAST, "layers": [1]}).run(planted_source(nan=True))
    with pytest.raises(AnalysisError, match="not a grid3"):
        ReconstructionProbe(["m"], "toy", {**FAST, "grid": 3, "layers": [1]}).run(
            planted_source())
    with pytest.raises(ConfigError, match="has no layer 7"):
        ReconstructionProbe(["m"], "toy", {"layers": [7]}).requests(planted_source())
    with pytest.raises(ConfigError, match="unknown parameter"):
        ReconstructionProbe(["m"], "toy", {"epoch": 3})
    with pytest.raises(ConfigError, match="grid"):
        ReconstructionProbe(["m"], "toy", {"grid": 0})


# -- end to end: config -> runner -> table + figures -----------------------------------------


def test_end_to_end_through_the_runner(tmp_path):
    from test_runner import spec_dict, write_image_folder

    from vlprobe.config import parse_config
    from vlprobe.results.records import read_result_table, read_run
    from vlprobe.runner import run

    images = write_image_folder(tmp_path / "images", n_train=6, n_test=3)
    cfg = {
        "name": "v5", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "cache_dir": str(tmp_path / "cache"),
        "models": {"vit": spec_dict("hf_vit", tmp_path), "resnet": spec_dict("hf_resnet",
                                                                             tmp_path)},
        "datasets": {"colours": {"loader": "image_folder", "path": str(images)}},
        "analyses": [{"analysis": "V5", "models": ["vit", "resnet"], "dataset": "colours",
                      "params": {"grid": 2, "image_size": 8, "epochs": 2, "width": 16}}],
        "extraction": {"batch_size": 8, "shard_size": 16},
    }
    run_dir = run(parse_config(cfg), progress=False)
    record = read_run(run_dir)
    assert record["analyses"]["V5_colours"]["status"] == "ok", record["analyses"]
    table = read_result_table(run_dir, "V5_colours")
    assert set(table["model"]) == {"vit", "resnet"} and set(table["metric"]) == {"mse", "psnr"}
    assert (table["n_test"] == 9).all() and (table["grid"] == 2).all()
    mse = table[table["metric"] == "mse"]["value"]
    assert np.isfinite(mse).all() and (mse > 0).all()
    pngs = sorted(p.name for p in (run_dir / "figures").glob("*.png"))
    assert any("mse_vs_layer" in p for p in pngs) and any("examples" in p for p in pngs), pngs
