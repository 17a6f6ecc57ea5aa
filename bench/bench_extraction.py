"""Extraction benchmarks (never run by the tests).

1. Extraction of all layers (+ embedding) to the activation store vs the bare model forward on
   the same, already prepared batches, side by side in one process (same threads, warm-up,
   interleaved repeats, median): MiniLM-L6 on CoNLL-2000 sentences, EfficientNet-Lite0 on
   CIFAR-10 test images. Extraction is end to end (tokenize / decode + preprocess, forward with
   hooks on every layer, pooling, shard writes with fsync, consolidation, sha256 read-back).
2. Length-bucketed text extraction vs padding every batch to the model's maximum length.
3. A second extraction of the same inputs: number of forward passes.

Usage::

    VLPROBE_REFERENCE=/work/shared/reference .venv/bin/python bench/bench_extraction.py \
        [--n-text 1024] [--n-images 256] [--repeats 3] [--write-results]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


# -- data -------------------------------------------------------------------------------------
def reference_dir() -> Path:
    env = os.environ.get("VLPROBE_REFERENCE")
    for cand in (env, "/work/shared/reference", str(HERE.parent.parent / "shared/reference")):
        if cand and Path(cand).is_dir():
            return Path(cand)
    sys.exit("set VLPROBE_REFERENCE to the reference kit directory")


def conll_sentences(n: int, seed: int = 0) -> list[str]:
    """Sentences of CoNLL-2000 train (tokens joined by spaces), a seeded random subsample."""
    sents, cur = [], []
    with open(reference_dir() / "text/conll2000/train.txt", encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                if cur:
                    sents.append(" ".join(cur))
                    cur = []
            else:
                cur.append(line.split()[0])
    if cur:
        sents.append(" ".join(cur))
    idx = np.random.default_rng(seed).permutation(len(sents))[:n]
    return [sents[i] for i in sorted(idx)]


def text_stimuli(n: int):
    from vlprobe.data.stimuli import Stimuli

    texts = conll_sentences(n)
    return Stimuli(dataset="conll2000", split="train", ids=[f"s{i}" for i in range(len(texts))],
                   texts=texts, source={"bench": "conll2000", "n": n})


def cifar_stimuli(n: int):
    import hashlib
    import io
    import json

    import pyarrow.parquet as pq
    from PIL import Image

    from vlprobe.data.stimuli import ImageSource, Stimuli

    root = reference_dir() / "images/cifar10"
    table = pq.read_table(root / "test.parquet").slice(0, n)
    images = table.column("image").to_pylist()
    labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64)
    blobs = [img["bytes"] for img in images]
    loaders = [lambda b=b: Image.open(io.BytesIO(b)).convert("RGB") for b in blobs]
    source = ImageSource(loaders, [f"test.parquet[{i}]" for i in range(n)],
                         [hashlib.sha1(b).hexdigest() for b in blobs])
    names = json.loads((root / "label_names.json").read_text())
    return Stimuli(dataset="cifar10", split="test", ids=[f"c{i}" for i in range(n)],
                   images=source, labels=labels, label_names=names,
                   source={"bench": "cifar10", "n": n})


# -- helpers ----------------------------------------------------------------------------------
def prepared_batches(adapter, stim, modality, batch_size, shard_size, bucket=True):
    """The batches extract_features would build (same bucketing), prepared up front."""
    from vlprobe.extract.extractor import _batches
    from vlprobe.extract.store import n_shards_for, shard_bounds

    out = []
    for index in range(n_shards_for(len(stim), shard_size)):
        start, stop = shard_bounds(index, len(stim), shard_size)
        for rel in _batches(adapter, stim, modality, start, stop, batch_size, bucket):
            out.append(adapter.prepare(stim.payloads(modality, (start + rel).tolist()), modality))
    return out


def bare_forward(adapter, batches) -> float:
    """Seconds for the bare model forward (no hooks, no pooling) over prepared batches."""
    import torch

    model = getattr(adapter, "model", None)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            if model is not None and callable(model):
                if set(batch.inputs) == {"pixel_values"} and not _takes_kwargs(adapter):
                    model(batch.inputs["pixel_values"])
                else:
                    model(**batch.inputs)
            else:  # no handle on the module: the adapter's own forward with no site
                adapter.forward(batch, [])
    return time.perf_counter() - t0


def _takes_kwargs(adapter) -> bool:
    import inspect

    try:
        params = inspect.signature(adapter.model.forward).parameters
    except (TypeError, ValueError):
        return True
    return "pixel_values" in params


def run_extraction(adapter, stim, modality, *, batch_size, shard_size, bucket=True,
                   store_root=None):
    from vlprobe.extract import ActivationStore, extract_features

    tmp = None
    if store_root is None:
        tmp = tempfile.TemporaryDirectory(prefix="vlprobe-bench-")
        store_root = tmp.name
    try:
        return extract_features(adapter, stim, modality=modality, sites=None,
                                store=ActivationStore(store_root), batch_size=batch_size,
                                shard_size=shard_size, progress=False, bucket_by_length=bucket)
    finally:
        if tmp is not None:
            tmp.cleanup()


def pad_to_max(adapter) -> None:
    """Make ``adapter.prepare`` pad every text batch to ``adapter.max_text_length()``."""
    import torch

    orig = adapter.prepare
    max_len = adapter.max_text_length()
    pad_id = getattr(getattr(adapter, "tokenizer", None), "pad_token_id", None) or 0

    def prepare(payloads, modality):
        batch = orig(payloads, modality)
        inputs = dict(batch.inputs)
        t = inputs["input_ids"].shape[1]
        if t < max_len:
            extra = max_len - t
            for name, value in list(inputs.items()):
                if isinstance(value, torch.Tensor) and value.ndim == 2 and value.shape[1] == t:
                    fill = pad_id if name == "input_ids" else 0
                    pad = torch.full((value.shape[0], extra), fill, dtype=value.dtype)
                    inputs[name] = torch.cat([value, pad], dim=1)
        batch.inputs = inputs
        return batch

    adapter.prepare = prepare


def compare(name, adapter, stim, modality, *, batch_size, shard_size, repeats):
    """Median items/s of extraction vs bare forward, interleaved, after a warm-up."""
    n = len(stim)
    batches = prepared_batches(adapter, stim, modality, batch_size, shard_size)
    warm = stim.subset(range(min(n, 2 * batch_size)))
    run_extraction(adapter, warm, modality, batch_size=batch_size, shard_size=shard_size)
    bare_forward(adapter, batches[:2])
    t_bare, t_ext, t_model = [], [], []
    res = None
    for _ in range(repeats):
        t_bare.append(bare_forward(adapter, batches))
        res = run_extraction(adapter, stim, modality, batch_size=batch_size,
                             shard_size=shard_size)
        t_ext.append(res.seconds_total)
        t_model.append(res.seconds_model)
    bare_ips = n / statistics.median(t_bare)
    ext_ips = n / statistics.median(t_ext)
    row = {
        "name": name, "n": n, "sites": len(res.features), "batch_size": batch_size,
        "bare_ips": bare_ips, "ext_ips": ext_ips, "ratio": ext_ips / bare_ips,
        "model_share": statistics.median(t_model) / statistics.median(t_ext),
        "t_bare": t_bare, "t_ext": t_ext,
    }
    print(f"[{name}] bare {bare_ips:.1f} items/s | extraction {ext_ips:.1f} items/s | "
          f"ratio {row['ratio']:.3f} | sites {row['sites']} | runs bare {t_bare} ext {t_ext}",
          flush=True)
    return row


def bucketing(adapter, stim, *, batch_size, shard_size, repeats, repeats_maxpad=1):
    n = len(stim)
    t_b = []
    res_b = None
    for _ in range(repeats):
        res_b = run_extraction(adapter, stim, "text", batch_size=batch_size,
                               shard_size=shard_size, bucket=True)
        t_b.append(res_b.seconds_total)
    pad_to_max(adapter)
    try:
        t_m = []
        res_m = None
        for _ in range(max(1, repeats_maxpad)):
            res_m = run_extraction(adapter, stim, "text", batch_size=batch_size,
                                   shard_size=shard_size, bucket=False)
            t_m.append(res_m.seconds_total)
    finally:
        del adapter.prepare  # back to the class method
    max_diff = max(
        float(np.abs(np.asarray(res_b.features[s]) - np.asarray(res_m.features[s])).max())
        for s in res_b.features
    )
    lengths = adapter.text_lengths(stim.texts)
    row = {
        "n": n, "bucket_ips": n / statistics.median(t_b), "maxpad_ips": n / statistics.median(t_m),
        "max_len": adapter.max_text_length(), "mean_len": float(np.mean(lengths)),
        "p95_len": float(np.percentile(lengths, 95)), "max_diff": max_diff,
    }
    row["speedup"] = row["bucket_ips"] / row["maxpad_ips"]
    print(f"[bucketing] bucketed {row['bucket_ips']:.1f} items/s | padded to "
          f"{row['max_len']} {row['maxpad_ips']:.1f} items/s | speedup {row['speedup']:.1f}x | "
          f"max |diff| {max_diff:.2e}", flush=True)
    return row


def rerun(adapter, stim, modality, *, batch_size, shard_size):
    with tempfile.TemporaryDirectory(prefix="vlprobe-bench-") as root:
        first = run_extraction(adapter, stim, modality, batch_size=batch_size,
                               shard_size=shard_size, store_root=root)
        second = run_extraction(adapter, stim, modality, batch_size=batch_size,
                                shard_size=shard_size, store_root=root)
    print(f"[rerun {modality}] 1st: {first.n_forward_batches} forward batches "
          f"({first.seconds_total:.2f}s) | 2nd: {second.n_forward_batches} forward batches "
          f"({second.seconds_total:.2f}s)", flush=True)
    return first, second


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    import torch

    return (f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}; "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads); "
            f"Python {platform.python_version()}")


def write_results(section: str, path: Path = HERE / "RESULTS.md") -> None:
    """Replace (or append) the '## Extraction' section of bench/RESULTS.md."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(r"^## Extraction\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-text", type=int, default=512)
    ap.add_argument("--n-bucket", type=int, default=256, help="items for the max-pad comparison")
    ap.add_argument("--n-images", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--repeats-maxpad", type=int, default=1,
                    help="repeats of the (slow) pad-to-max variant")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip", nargs="*", default=[], choices=["text", "image", "bucket"])
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from vlprobe.models import ModelSpec, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    info = machine()
    print(info, flush=True)
    rows, notes = [], []
    bucket_row = None
    reruns = {}
    if "text" not in args.skip or "bucket" not in args.skip:
        minilm = load_model(ModelSpec(adapter="minilm_l6"))
        if "text" not in args.skip:
            stim = text_stimuli(args.n_text)
            rows.append(compare("MiniLM-L6 (text, conll2000)", minilm, stim, "text",
                                batch_size=args.batch_size, shard_size=args.shard_size,
                                repeats=args.repeats))
            reruns["MiniLM-L6"] = rerun(minilm, stim, "text", batch_size=args.batch_size,
                                        shard_size=args.shard_size)
        if "bucket" not in args.skip:
            bucket_row = bucketing(minilm, text_stimuli(args.n_bucket),
                                   batch_size=args.batch_size, shard_size=args.shard_size,
                                   repeats=args.repeats, repeats_maxpad=args.repeats_maxpad)
    if "image" not in args.skip:
        eff = load_model(ModelSpec(adapter="efficientnet_lite0"))
        stim = cifar_stimuli(args.n_images)
        rows.append(compare("EfficientNet-Lite0 (images, CIFAR-10 test)", eff, stim, "image",
                            batch_size=args.batch_size, shard_size=args.shard_size,
                            repeats=args.repeats))
        reruns["EfficientNet-Lite0"] = rerun(eff, stim, "image", batch_size=args.batch_size,
                                             shard_size=args.shard_size)

    lines = [
        "## Extraction",
        "",
        f"`bench/bench_extraction.py` ({' '.join(sys.argv[1:]) or 'defaults'}), "
        f"{dt.date.today().isoformat()}.",
        f"Machine: {info}.",
        "The machine's cores were shared with other jobs, so absolute numbers are noisy;",
        "each comparison interleaves its runs (warm-up first, median of",
        f"{args.repeats} repeats) so both sides see the same conditions.",
        "",
        "### Extraction of all layers to the store vs bare forward (target ratio >= 0.9)",
        "",
        "Extraction is end to end: tokenize or decode+preprocess, one forward with hooks on",
        "every layer site + the embedding site, pooling, shard writes (fsync), consolidation",
        "and sha256 of every written file. Bare forward: `adapter.model(...)` alone on the same",
        "batches, prepared beforehand.",
        "",
        "| model | N | sites | batch | bare forward (items/s) | extraction (items/s) | ratio "
        "| share of extraction in forward |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['n']} | {r['sites']} | {r['batch_size']} | {r['bare_ips']:.1f} "
            f"| {r['ext_ips']:.1f} | {r['ratio']:.2f} | {r['model_share']:.0%} |"
        )
    for r in rows:
        lines.append(
            f"\nSeconds per run, {r['name']}: bare "
            f"{', '.join(f'{t:.2f}' for t in r['t_bare'])}; extraction "
            f"{', '.join(f'{t:.2f}' for t in r['t_ext'])}."
        )
    if bucket_row:
        b = bucket_row
        lines += [
            "",
            "### Length bucketing vs padding every batch to the model maximum (target >= 3x)",
            "",
            f"MiniLM-L6, {b['n']} CoNLL-2000 sentences (mean {b['mean_len']:.1f} tokens, "
            f"p95 {b['p95_len']:.0f}), batch {args.batch_size}, all layers extracted.",
            "",
            "| variant | items/s |",
            "|---|---|",
            f"| length-bucketed (sorted within shard, padded to batch max) | "
            f"{b['bucket_ips']:.1f} |",
            f"| every batch padded to max_text_length = {b['max_len']} | {b['maxpad_ips']:.1f} |",
            f"| **speedup** | **{b['speedup']:.1f}x** |",
            "",
            f"Max |difference| between the two feature sets: {b['max_diff']:.1e} "
            "(padding does not change the numbers).",
        ]
    if reruns:
        lines += ["", "### Re-running the same extraction", "", "| model | 1st run forward "
                  "batches | 2nd run forward batches | 2nd run seconds |", "|---|---|---|---|"]
        for name, (first, second) in reruns.items():
            lines.append(f"| {name} | {first.n_forward_batches} | {second.n_forward_batches} | "
                         f"{second.seconds_total:.2f} |")
    lines += notes
    section = "\n".join(lines) + "\n"
    print(section)
    if args.write_results:
        write_results(section)


if __name__ == "__main__":
    main()
