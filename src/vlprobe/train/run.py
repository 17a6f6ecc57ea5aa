"""``vlprobe train CONFIG``: data -> frozen tower features (cached) -> trained heads ->
a checkpoint directory that loads back as a model (see :mod:`vlprobe.train.checkpoint`).

:func:`train` dispatches on ``kind``: ``aligned`` here, ``captioner`` in
:mod:`vlprobe.train.caption_run`."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vlprobe.errors import DataError
from vlprobe.train.config import TowerEntry, TrainConfig

SPLITS = ("train", "validation", "test")


def _tower_dict(tower: TowerEntry) -> dict[str, Any]:
    out = {**asdict(tower.model), "sites": list(tower.sites), "pooling": tower.pooling}
    if tower.unfreeze_last:  # absent when 0: frozen towers write what they always wrote
        out["unfreeze_last"] = tower.unfreeze_last
    return out


def _versions() -> dict[str, str]:
    import torch
    import transformers

    import vlprobe

    return {"vlprobe": vlprobe.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train what ``cfg`` describes and write its checkpoint; returns the directory."""
    if cfg.kind == "captioner":
        from vlprobe.train.caption_run import train_captioner

        return train_captioner(cfg, progress=progress)
    return _train_aligned(cfg, progress)


def _train_aligned(cfg: TrainConfig, progress: bool) -> Path:
    """``kind: aligned`` (M8) and ``kind: devise`` (its DeViSE baseline)."""
    from vlprobe.data import DatasetSpec, load_dataset
    from vlprobe.extract import ActivationStore
    from vlprobe.models import ModelSpec, load_model
    from vlprobe.settings import cache_dir
    from vlprobe.train.aligned import chance_metrics, retrieval_metrics, train_aligned_heads
    from vlprobe.train.checkpoint import save_checkpoint
    from vlprobe.train.features import check_no_test_images, paired_features

    t0 = time.perf_counter()
    spec = DatasetSpec(name=cfg.data.get("name", "train_data"),
                       **{k: v for k, v in cfg.data.items() if k != "name"})
    splits = load_dataset(spec)
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise DataError(f"training needs splits {SPLITS}; dataset has {sorted(splits)}")
    image_adapter = load_model(ModelSpec(**asdict(cfg.image_tower.model)))
    text_adapter = load_model(ModelSpec(**asdict(cfg.text_tower.model)))
    store = ActivationStore(root=cache_dir() / "activations")
    feats = {
        split: paired_features(
            splits[split], image_adapter, text_adapter, cfg.image_tower.sites,
            cfg.text_tower.sites, store, image_pooling=cfg.image_tower.pooling,
            text_pooling=cfg.text_tower.pooling, extraction=cfg.extraction, progress=progress,
        )
        for split in SPLITS
    }
    check_no_test_images(feats["train"], feats["test"], feats["validation"])
    tails = _tail_set(cfg, {"image": image_adapter, "text": text_adapter}, splits, feats,
                      store, progress)
    t_features = time.perf_counter() - t0
    h, o = cfg.head, cfg.optim
    heads, log, best_epoch, initial = train_aligned_heads(
        feats["train"], feats["validation"], embed_dim=h.embed_dim, kind=h.kind,
        hidden=h.hidden, epochs=o.epochs, batch_size=o.batch_size, lr=o.lr,
        weight_decay=o.weight_decay, patience=o.patience, init_temperature=o.init_temperature,
        seed=cfg.seed, progress=progress, tails=tails,
        objective="devise" if cfg.kind == "devise" else "info_nce",
        margin=getattr(o, "margin", 0.1), tail_lr=o.tail_lr,
    )
    t_train = time.perf_counter() - t0 - t_features
    test = feats["test"] if tails is None else tails.paired("test")
    record = {
        "name": cfg.name, "kind": cfg.kind, "seed": cfg.seed,
        "data": {s: {"fingerprint": splits[s].fingerprint(), "n_images": len(f.image),
                     "n_texts": len(f.text)} for s, f in feats.items()},
        "epochs": [asdict(e) for e in log], "best_epoch": best_epoch,
        "selection": "best validation mean of R@1/5/10 (both directions); test used once",
        "test": retrieval_metrics(heads, test),
        # the untrained control: initial heads on the frozen towers (= the tails' initial
        # pretrained blocks when unfreeze_last > 0)
        "controls": {"untrained_heads": retrieval_metrics(initial, feats["test"]),
                     "chance": chance_metrics(feats["test"])},
        "seconds": {"features": t_features, "training": t_train},
        "versions": _versions(), "config": _config_dict(cfg),
    }
    config = {
        "kind": cfg.kind, "adapter": "aligned_dual", "name": cfg.name,
        "image_tower": _tower_dict(cfg.image_tower), "text_tower": _tower_dict(cfg.text_tower),
        "image_dim": int(feats["train"].image.shape[1]),
        "text_dim": int(feats["train"].text.shape[1]), "head": asdict(cfg.head),
    }
    tensors = dict(heads.state_dict())
    for modality, state in (tails.state() if tails is not None else {}).items():
        tensors.update({f"{modality}_tower.{k}": v for k, v in state.items()})
    return save_checkpoint(cfg.out_dir(), tensors, config, record)


def _tail_set(cfg: TrainConfig, adapters: dict[str, Any], splits: dict[str, Any],
              feats: dict[str, Any], store: Any, progress: bool) -> Any:
    """A :class:`~vlprobe.train.tail_inputs.TailSet` for the towers with
    ``unfreeze_last > 0`` (None when both are frozen)."""
    from vlprobe.train.tail_inputs import TailSet, tower_inputs
    from vlprobe.train.tails import build_tail

    entries = {"image": cfg.image_tower, "text": cfg.text_tower}
    tails = {m: build_tail(adapters[m], e.unfreeze_last) for m, e in entries.items()
             if e is not None and e.unfreeze_last}
    if not tails:
        return None
    inputs = {
        split: {m: tower_inputs(adapters[m], splits[split], m, tail, entries[m].sites,
                                entries[m].pooling, store, cfg.extraction, progress)
                for m, tail in tails.items()}
        for split in SPLITS
    }
    return TailSet(tails, inputs, feats)


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as recorded in a training record (only the sections of its kind)."""
    d = asdict(cfg)
    for key in ("image_tower", "text_tower"):
        tower = getattr(cfg, key)
        d[key] = _tower_dict(tower) if tower is not None else None
    unused = (("decoder", "decode") if cfg.kind in ("aligned", "devise")
              else ("text_tower", "head"))
    return {k: v for k, v in d.items() if k not in unused}
