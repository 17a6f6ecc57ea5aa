"""Time of the fusion suite's one extraction pass (F1 NMI pooling + the F2 / F3 / F6 attention
reducers) against the bare forward with the same attentions captured, per model.

Models: the Flickr8k-trained fusion checkpoints (``--trained DIR``: fusion_single_flickr8k /
fusion_two_flickr8k under it) and the published ViLT / VisualBERT / LXMERT architectures with
random weights (their exact configs built offline from transformers' defaults; word-level test
tokenizer; VisualBERT / LXMERT read random 2048-d "detector" regions, 36 per image, from a
regions file). Data: the first ``--pairs`` Flickr8k test captions (reference kit).

    PYTHONPATH=src:tests VLPROBE_REFERENCE=../shared/reference python bench/bench_fusion.py \
        --trained /path/to/models --pairs 128 --published-pairs 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _sites(adapter):
    """(F1 hidden sites, attention site -> methods) as the four analyses ask them."""
    sites = adapter.sites()
    attn = [s for s in sites if s.endswith(".attn")]
    joint = [s for s in sites if s.startswith("cross.") and s.count(".") == 2]
    hidden = joint or [s for s in adapter.layer_sites("pair") if s.startswith("fusion.")]
    methods = {s: ["reduce:entropy"] for s in attn}
    two = bool(joint)
    for s in attn:
        if s.startswith("fusion."):
            methods[s] += ["reduce:cls_mass", "reduce:max_image_to_text"]
        if s.endswith(".v2t.attn"):
            methods[s] += ["reduce:max_image_to_text"]
        if s.startswith(("fusion.", "vision.")) or (two and s.endswith(".vision.attn")):
            methods[s] += ["reduce:distance", "reduce:similarity"]
    return hidden, methods


def bench(name, adapter, stimuli, batch_size):
    import torch

    from vlprobe.extract import ActivationStore, extract_features

    hidden, methods = _sites(adapter)
    n = len(stimuli)
    t0 = time.perf_counter()
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        batch = adapter.prepare(stimuli.payloads("pair", idx), "pair")
        with torch.inference_mode():
            adapter.forward(batch, list(methods))
    bare = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        res = extract_features(adapter, stimuli, modality="pair", sites=[*hidden, *methods],
                               pooling={**{s: "fusion_nmi" for s in hidden}, **methods},
                               store=ActivationStore(Path(tmp)), batch_size=batch_size,
                               progress=False)
        nmi = [float(np.nanmean(res.features[s])) for s in hidden]
    print(f"| {name} | {n} | {len(methods)} | {bare:.1f} | {res.seconds_total:.1f} | "
          f"{res.seconds_total / bare:.2f} | {' '.join(f'{v:.2f}' for v in nmi)} |", flush=True)


def published(kind, root, regions_file):
    from transformers import LxmertConfig, ViltConfig, VisualBertConfig

    from tiny_models import write_config, write_tiny_tokenizer
    from vlprobe.models import ModelSpec, load_model

    config = {"vilt": ViltConfig(), "visual_bert": VisualBertConfig(visual_embedding_dim=2048),
              "lxmert": LxmertConfig()}[kind]
    d = write_config(root / kind, config)
    write_tiny_tokenizer(d, style="bert", model_max_length=40 if kind == "vilt" else 512)
    options = {} if kind == "vilt" else {"regions": {"source": "file", "path": str(regions_file)}}
    return load_model(ModelSpec(kind, config=str(d), random_init=True, seed=0, options=options))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trained", default=None)
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--published-pairs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    import os

    from vlprobe.data import DatasetSpec, load_dataset
    from vlprobe.models import ModelSpec, load_model
    from vlprobe.models.regions_io import write_regions_file

    ref = Path(os.environ["VLPROBE_REFERENCE"])
    test = load_dataset(DatasetSpec(loader="flickr8k", name="flickr8k",
                                    path=str(ref / "captions/flickr8k")))["test"]
    print("| model | pairs | attention sites | bare forward + attn (s) | one pass F1-F6 (s) | "
          "ratio | F1 NMI by layer |")
    print("|---|---|---|---|---|---|---|")
    if args.trained:
        sub = test.subset(list(range(args.pairs)))
        for name in ("fusion_single_flickr8k", "fusion_two_flickr8k"):
            adapter = load_model(ModelSpec(
                "visual_bert" if "single" in name else "lxmert",
                checkpoint=str(Path(args.trained) / name)))
            bench(name, adapter, sub, args.batch_size)
    sub = test.subset(list(range(args.published_pairs)))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        ids = sorted(set(sub.descriptors["image_id"]))
        regions = write_regions_file(Path(tmp) / "regions.npz", {
            i: (rng.normal(size=(36, 2048)).astype(np.float32),
                np.tile(np.array([0.1, 0.1, 0.6, 0.6], np.float32), (36, 1))) for i in ids})
        for kind in ("vilt", "visual_bert", "lxmert"):
            bench(f"{kind} (published config, random init)", published(kind, Path(tmp), regions),
                  sub, args.batch_size)


if __name__ == "__main__":
    main()
