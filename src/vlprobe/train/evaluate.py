"""Evaluate a trained dual encoder (``kind: aligned`` / ``devise``) on any paired split, with
its controls: image<->text Recall@K of the trained heads, of the untrained heads (the seeded
initialisation that training started from) and of chance (exact expectation).

Used for the out-of-domain check (the COCO images + captions of the reference kit) and to
recompute the Flickr8k test numbers from a checkpoint alone. The towers' features go through
the activation store (a fine-tuned tower has its own store identity).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def untrained_heads(model: Any, record: dict[str, Any]) -> Any:
    """The heads as they were before the first step: the same seeded initialisation as
    :func:`~vlprobe.train.aligned.train_aligned_heads`, with the checkpoint's train-split
    standardisation (buffers never train) and, for DeViSE, its fixed text side."""
    import torch

    from vlprobe.train.heads import aligned_heads

    c = model.config
    cfg = record.get("config", {})
    temperature = float(cfg.get("optim", {}).get("init_temperature", 0.07))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(record.get("seed", 0)))
        heads = aligned_heads(int(c["image_dim"]), int(c["text_dim"]),
                              int(c["head"]["embed_dim"]), c["head"]["kind"],
                              int(c["head"]["hidden"]), temperature)
    trained = model.heads.state_dict()
    fixed = [name for name, _ in heads.named_buffers()]
    if c.get("kind") == "devise":  # its text side and temperature never trained
        fixed += [n for n in trained if n.startswith("text.") or n == "logit_scale"]
    heads.load_state_dict({**heads.state_dict(), **{n: trained[n] for n in fixed}})
    return heads.eval()


def image_subset(feats: Any, rows: Any) -> Any:
    """The :class:`~vlprobe.train.features.PairedFeatures` of images ``rows`` and their
    captions only (a smaller gallery)."""
    import numpy as np

    from vlprobe.train.features import PairedFeatures

    rows = np.asarray(rows)
    new_row = np.full(len(feats.image), -1)
    new_row[rows] = np.arange(len(rows))
    keep = np.flatnonzero(new_row[feats.image_of_text] >= 0)
    return PairedFeatures(feats.image[rows], feats.text[keep],
                          new_row[feats.image_of_text[keep]].astype(np.int64),
                          [feats.image_ids[i] for i in rows],
                          [feats.image_digests[i] for i in rows])


def subsampled_metrics(heads: Any, feats: Any, n_images: int, draws: int = 20,
                       seed: int = 0) -> dict[str, dict[str, float]]:
    """Recall@K on ``draws`` seeded random galleries of ``n_images`` images (to compare a
    split with a smaller one at the same gallery size): ``{"mean": ..., "sd": ...}``."""
    import numpy as np

    from vlprobe.train.aligned import retrieval_metrics

    rng = np.random.default_rng(seed)
    runs = [retrieval_metrics(heads, image_subset(
        feats, np.sort(rng.choice(len(feats.image), n_images, replace=False))))
        for _ in range(draws)]
    return {stat: {k: float(fn([r[k] for r in runs])) for k in runs[0]}
            for stat, fn in (("mean", np.mean), ("sd", np.std))}


def evaluate_checkpoint(checkpoint: str | Path, stimuli: Any, store: Any = None,
                        extraction: dict[str, Any] | None = None, progress: bool = True,
                        gallery: int | None = None) -> dict[str, Any]:
    """``{"n_images", "n_texts", "trained", "untrained_heads", "chance"}`` (Recall@K in
    percent, both directions, and their mean) of an ``aligned_dual`` checkpoint on one
    paired split (items = (image, caption) pairs with an ``image_id``). ``gallery``: also
    ``"trained_at_gallery"``, the trained heads on 20 seeded random subsets of that many
    images (:func:`subsampled_metrics`)."""
    from vlprobe.models import ModelSpec, load_model
    from vlprobe.train.aligned import chance_metrics, retrieval_metrics
    from vlprobe.train.features import paired_features

    model = load_model(ModelSpec(adapter="aligned_dual", checkpoint=str(checkpoint)))
    record = json.loads((Path(model.directory) / "training_record.json").read_text())
    if store is None:
        from vlprobe.extract import ActivationStore
        from vlprobe.settings import cache_dir

        store = ActivationStore(root=cache_dir() / "activations")
    towers = {m: model.config[f"{m}_tower"] for m in ("image", "text")}
    feats = paired_features(
        stimuli, model.towers["image"], model.towers["text"], towers["image"]["sites"],
        towers["text"]["sites"], store, image_pooling=towers["image"]["pooling"],
        text_pooling=towers["text"]["pooling"], extraction=extraction, progress=progress,
    )
    out = {} if not gallery else {
        "trained_at_gallery": {"n_images": gallery, **subsampled_metrics(model.heads, feats,
                                                                          gallery)}}
    return {
        **out, "n_images": len(feats.image), "n_texts": len(feats.text),
        "trained": retrieval_metrics(model.heads, feats),
        "untrained_heads": retrieval_metrics(untrained_heads(model, record), feats),
        "chance": chance_metrics(feats),
    }
