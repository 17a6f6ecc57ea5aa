"""``vlprobe train`` for ``kind: captioner``: data -> frozen grid features (cached in the
activation store) -> word vocabulary of the TRAIN captions -> trained caption decoder
(selected on validation) -> test captions (greedy and beam search) and their metrics, once ->
a checkpoint directory that loads as the ``grid_captioner`` adapter.

Checkpoint files (besides :mod:`vlprobe.train.checkpoint`'s three): ``tokenizer.json`` /
``tokenizer_config.json`` (the vocabulary) and ``generations.json`` (every test caption per
decoding, and the validation captions of the kept epoch).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from vlprobe.errors import DataError
from vlprobe.train.caption_eval import evaluate_test
from vlprobe.train.captioner import CaptionSplit, fit_captioner
from vlprobe.train.config import TrainConfig

SPLITS = ("train", "validation", "test")
GENERATIONS = "generations.json"


def _dataset_spec(cfg: TrainConfig) -> Any:
    from vlprobe.data import DatasetSpec

    data = dict(cfg.data)
    options = dict(data.pop("options", None) or {})
    if data.get("loader") == "flickr8k":
        options.setdefault("view", "image")
    return DatasetSpec(name=data.pop("name", "train_data"), options=options, **data)


def caption_splits(cfg: TrainConfig, tower: Any, store: Any, progress: bool
                   ) -> tuple[dict[str, CaptionSplit], dict[str, str]]:
    """The grid features and captions of the three splits, and their data fingerprints."""
    from vlprobe.data import load_dataset
    from vlprobe.extract import extract_features

    splits = load_dataset(_dataset_spec(cfg))
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise DataError(f"training needs splits {SPLITS}; dataset has {sorted(splits)}")
    site = cfg.image_tower.sites[0]
    out, fingerprints = {}, {}
    for name in SPLITS:
        stim = splits[name]
        captions = (stim.descriptors or {}).get("captions")
        if stim.images is None or captions is None:
            raise DataError(
                f"captioner: split {name!r} of {stim.dataset!r} needs one item per image with "
                "a 'captions' descriptor (flickr8k view: image, coco_captions per: image)")
        if stim.unique_images() is not None:
            raise DataError(f"captioner: split {name!r} repeats images; use one item per image")
        res = extract_features(tower, stim, modality="image", sites=[site],
                               pooling=cfg.image_tower.pooling, store=store, progress=progress,
                               **cfg.extraction)
        out[name] = CaptionSplit(res.features[site], [list(c) for c in captions],
                                 list(stim.ids), list(stim.images.digests))
        fingerprints[name] = stim.fingerprint()
    return out, fingerprints


def _versions() -> dict[str, str]:
    from vlprobe.train.run import _versions as versions

    out = versions()
    try:
        from importlib.metadata import version

        out["pycocoevalcap"] = version("pycocoevalcap")
    except Exception:  # not installed: the metrics step says so
        out["pycocoevalcap"] = "not installed"
    return out


def train_captioner(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train what ``cfg`` (``kind: captioner``) describes; returns the checkpoint directory."""
    from vlprobe.captioning.decoders import build_decoder
    from vlprobe.captioning.vocab import build_tokenizer, vocabulary
    from vlprobe.extract import ActivationStore
    from vlprobe.extract.store import atomic_write_json
    from vlprobe.models import ModelSpec, load_model
    from vlprobe.models._hooks import seeded
    from vlprobe.pooling import grid_size
    from vlprobe.settings import cache_dir
    from vlprobe.train.checkpoint import save_checkpoint
    from vlprobe.train.features import check_no_test_images
    from vlprobe.train.run import _config_dict, _tower_dict

    t0 = time.perf_counter()
    tower = load_model(ModelSpec(**asdict(cfg.image_tower.model)))
    store = ActivationStore(root=cache_dir() / "activations")
    data, fingerprints = caption_splits(cfg, tower, store, progress)
    check_no_test_images(data["train"], data["test"], data["validation"])
    t_features = time.perf_counter() - t0

    g = grid_size(cfg.image_tower.pooling)
    width = int(np.asarray(data["train"].grid[:1]).shape[1])
    if width % (g * g):
        raise DataError(f"captioner: features of width {width} are not grid{g} features")
    channels = width // (g * g)
    dcfg = cfg.decoder
    vocab = vocabulary((c for caps in data["train"].captions for c in caps), dcfg["min_count"])
    tokenizer = build_tokenizer(vocab, dcfg["max_words"] + 2)
    with seeded(cfg.seed):  # init and dropout; torch's global RNG is restored afterwards
        decoder = build_decoder(dcfg, channels, g, len(vocab))
        decoder.set_standardisation(data["train"].grid)
        decoder, log, best_epoch, info = fit_captioner(
            decoder, tokenizer, data["train"], data["validation"], optim=cfg.optim,
            decode=cfg.decode, max_words=dcfg["max_words"], seed=cfg.seed, progress=progress)
    t_train = time.perf_counter() - t0 - t_features

    test, generations = evaluate_test(decoder, tokenizer, data["test"], cfg.decode, cfg.seed,
                                      progress)
    t_eval = time.perf_counter() - t0 - t_features - t_train
    n_params = sum(p.numel() for p in decoder.parameters())
    record = {
        "name": cfg.name, "kind": cfg.kind, "seed": cfg.seed,
        "data": {s: {"fingerprint": fingerprints[s], "n_images": len(d.captions),
                     "n_captions": sum(len(c) for c in d.captions)} for s, d in data.items()},
        "vocabulary": {"size": len(vocab), "min_count": dcfg["min_count"],
                       "max_words": dcfg["max_words"], "train": info["train_captions"],
                       "validation": info["validation_captions"]},
        "decoder": {**decoder.describe(), "trainable_parameters": int(n_params),
                    "feature_dim": channels, "grid": g},
        "epochs": [asdict(e) for e in log], "best_epoch": best_epoch,
        "steps_per_epoch": info["steps_per_epoch"],
        "selection": (f"best validation {cfg.optim.select_on} (greedy captions of every "
                      "validation image; loss = teacher-forced token cross-entropy); test "
                      "decoded once"),
        **test,
        "seconds": {"features": t_features, "training": t_train, "evaluation": t_eval},
        "versions": _versions(), "config": _config_dict(cfg),
    }
    config = {
        "kind": cfg.kind, "adapter": "grid_captioner", "name": cfg.name,
        "image_tower": _tower_dict(cfg.image_tower), "feature_dim": channels, "grid": g,
        "decoder": dcfg, "decode": {"max_length": cfg.decode.max_length, "num_beams": 1},
        "tokenizer": "tokenizer.json",
    }
    out = save_checkpoint(cfg.out_dir(), decoder.state_tensors(), config, record)
    tokenizer.save_pretrained(str(out))
    atomic_write_json(out / GENERATIONS, {
        **generations, "validation_best_epoch": dict(zip(data["validation"].image_ids,
                                                         info["best_validation_texts"])),
    })
    return out

