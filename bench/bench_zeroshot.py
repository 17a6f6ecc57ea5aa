"""Zero-shot (M1) end to end vs the bare text-tower forward (never run by the tests).

Setting: the reference kit's ImageNet sample (one image for every other ILSVRC class), CLIP's
class names (packaged ``imagenet`` set) and CLIP's 80 ImageNet templates, the CLIP
ViT-B/32 architecture of the reference kit with random weights (``--layers`` keeps the real
tokenizer and widths with fewer blocks per tower). ``--classes C`` uses the first C classes
and their images (C / 2 images: the proportion of the full 500 images x 1,000 classes x 80
templates is kept), so the C x 80 prompts dominate as they do at full size.

Timed, in one process after a warm-up (the model and the dataset are loaded and scipy.stats /
matplotlib imported before):

- vlprobe: ``ZeroShot.requests`` -> ``RunFeatureSource.prefetch`` (image and class-prompt
  extraction through a fresh activation store: decode / tokenise, forward with the
  embedding site only, shard writes, consolidation, read-back) -> ``ZeroShot.run``
  (ensembles, ranks, per-template table, figures);
- bare text tower: the same prompts, ``tokenizer`` -> ``text_model`` -> ``text_projection``
  under ``torch.no_grad`` in batches of ``--batch-size``, (a) sorted by token length (the
  fastest hand-written forward: least padding; the reference of the ratio) and (b) in
  class-major order (80 = one class per batch, as CLIP's notebook); bare image tower
  likewise (decode + processor + ``vision_model`` + ``visual_projection``).

Reported: wall and CPU (process) seconds of each, and ratio = bare (length-sorted) text-tower
time / vlprobe M1 time (>= 0.9: M1 costs at most ~10 % more than running the text tower over
the prompts once by hand, images and analysis included); ratio_towers = (bare text + bare
image) / M1 (M1's own overhead beyond the two tower passes it cannot avoid) and bound = bare
text / (bare text + bare image) (the best ratio an overhead-free M1 could reach).

Usage::

    VLPROBE_REFERENCE=/work/shared/reference .venv/bin/python bench/bench_zeroshot.py \
        [--classes 1000] [--templates 80] [--layers N] [--batch-size 80] [--shard-size 1024] \
        [--text-shard-size 4096] \
        [--threads 1] \
        [--repeats 1] [--skip-class-major] [--write-results]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def reference_dir() -> Path:
    env = os.environ.get("VLPROBE_REFERENCE")
    for cand in (env, "/work/shared/reference", str(HERE.parent.parent / "shared/reference")):
        if cand and Path(cand).is_dir():
            return Path(cand)
    sys.exit("set VLPROBE_REFERENCE to the reference kit directory")


def subset_dataset(root: Path, n_classes: int) -> tuple[Path, list[str]]:
    """A parquet of the sample's images of classes < n_classes, and their class names."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from vlprobe.data.prompts.params import load_class_name_set

    table = pq.read_table(reference_dir() / "images/imagenet_sample/sample.parquet")
    table = table.filter(pc.less(table["label"], n_classes))
    out = root / "inet_subset"
    out.mkdir()
    pq.write_table(table.replace_schema_metadata(None), out / "test.parquet")
    return out, load_class_name_set("imagenet")[:n_classes]


def model_config(root: Path, layers: int | None) -> Path:
    """The reference ViT-B/32 config directory, with ``layers`` blocks per tower if given."""
    src = reference_dir() / "model_configs/clip-vit-base-patch32"
    if layers is None:
        return src
    dst = root / f"clip-b32-{layers}l"
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["text_config"]["num_hidden_layers"] = layers
    cfg["vision_config"]["num_hidden_layers"] = layers
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def run_vlprobe(cfg, templates: list[str]) -> dict[str, float]:
    """M1 through the run's feature source with a fresh store; model and data preloaded."""
    from vlprobe.analyses.multimodal.zeroshot import ZeroShot
    from vlprobe.feature_source import RunFeatureSource

    source = RunFeatureSource(cfg, progress=False)
    adapter = source.adapter("clip")
    _ = adapter.model, adapter.tokenizer, adapter.processor
    stimuli = source.dataset_splits("inet")["test"]
    adapter.forward(adapter.prepare([stimuli.images[0]], "image"), ["vision.proj"])  # warm-up
    adapter.forward(adapter.prepare(["a photo of a dog."], "text"), ["text.proj"])
    import matplotlib.figure  # noqa: F401  one-time imports of a fresh process, not M1's cost
    import scipy.stats  # noqa: F401
    analysis = ZeroShot(["clip"], "inet", {"templates": templates, "linear_probe": False})

    def go():
        errors = source.prefetch(analysis.requests(source))
        if errors:
            raise RuntimeError(errors)
        return analysis.run(source)

    result, wall, cpu = timed(go)
    logs = {e.view + ":" + e.modality: e.seconds_total for e in source.log}
    top1 = float(result.table.query("metric == 'top1_accuracy'")["value"].iloc[0])
    return {"wall": wall, "cpu": cpu, "extract_images": logs.get("items:image", 0.0),
            "extract_prompts": logs.get("class_prompts:text", 0.0), "top1": top1,
            "n_prompts": int(result.table["n_classes"].iloc[0] * len(templates))}


def run_bare(cfg, prompts: list[str], batch_size: int, class_major: bool = True
             ) -> dict[str, float]:
    """The text tower (and separately the image tower) by hand, same model and inputs."""
    import torch

    from vlprobe.feature_source import RunFeatureSource

    source = RunFeatureSource(cfg, progress=False)
    adapter = source.adapter("clip")
    model, tok, proc = adapter.model, adapter.tokenizer, adapter.processor
    stimuli = source.dataset_splits("inet")["test"]

    def text(order):
        out = []
        with torch.no_grad():
            for i in range(0, len(order), batch_size):
                enc = tok([prompts[j] for j in order[i:i + batch_size]], padding=True,
                          truncation=True, max_length=77, return_tensors="pt")
                pooled = model.text_model(**enc).pooler_output
                out.append(model.text_projection(pooled))
        return torch.cat(out)

    def by_length():  # tokenise once to sort, then batch prompts of similar length
        lengths = [len(ids) for ids in tok(prompts)["input_ids"]]
        return text(sorted(range(len(prompts)), key=lambda j: lengths[j]))

    def image():
        out = []
        with torch.no_grad():
            for i in range(0, len(stimuli), batch_size):
                imgs = [stimuli.images[j] for j in range(i, min(i + batch_size, len(stimuli)))]
                pixels = proc(images=imgs, return_tensors="pt")["pixel_values"]
                out.append(model.visual_projection(model.vision_model(pixel_values=pixels)
                                                   .pooler_output))
        return torch.cat(out)

    with torch.no_grad():  # warm-up
        model.text_model(**tok(prompts[:2], padding=True, return_tensors="pt"))
    n_wall = n_cpu = float("nan")
    if class_major:
        _, n_wall, n_cpu = timed(lambda: text(list(range(len(prompts)))))
    _, t_wall, t_cpu = timed(by_length)
    _, i_wall, i_cpu = timed(image)
    return {"text_wall": t_wall, "text_cpu": t_cpu, "class_major_wall": n_wall,
            "class_major_cpu": n_cpu, "image_wall": i_wall, "image_cpu": i_cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--templates", type=int, default=80)
    ap.add_argument("--layers", type=int, default=None, help="blocks per tower (default: 12)")
    ap.add_argument("--batch-size", type=int, default=80)
    ap.add_argument("--text-shard-size", type=int, default=4096,
                    help="extraction.text_shard_size (the default): the shard size of the "
                         "prompt extraction")
    ap.add_argument("--shard-size", type=int, default=1024,
                    help="extraction.shard_size (the default); texts are sorted by token "
                         "length within a shard")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1,
                    help="interleaved repeats (odd ones run M1 before the bare towers, so a "
                         "drift of the machine's speed cancels in the medians)")
    ap.add_argument("--skip-class-major", action="store_true",
                    help="do not time the class-major bare text loop (saves its pass)")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()

    import torch

    from vlprobe.config import parse_config
    from vlprobe.data.prompts import load_template_set

    torch.set_num_threads(args.threads)
    templates = load_template_set("imagenet")[: args.templates]
    vl_runs, bare_runs = [], []
    with tempfile.TemporaryDirectory(prefix="bench_zeroshot_") as tmp:
        root = Path(tmp)
        data_dir, names = subset_dataset(root, args.classes)
        cfg_dir = model_config(root, args.layers)
        prompts = [t.format(n) for n in names for t in templates]
        for rep in range(args.repeats):  # interleaved: the shared machine's load drifts
            cfg = parse_config({
                "name": "bench_zeroshot", "seed": 0, "cache_dir": str(root / f"cache{rep}"),
                "models": {"clip": {"adapter": "clip", "config": str(cfg_dir),
                                    "random_init": True, "seed": 0}},
                "datasets": {"inet": {"loader": "hf_parquet", "path": str(data_dir),
                                      "options": {"label_names": names}}},
                "analyses": [{"analysis": "M1", "models": ["clip"], "dataset": "inet",
                              "params": {"templates": templates, "linear_probe": False}}],
                "extraction": {"batch_size": args.batch_size, "shard_size": args.shard_size,
                               "text_shard_size": args.text_shard_size},
            })
            class_major = not args.skip_class_major
            if rep % 2:
                vl_runs.append(run_vlprobe(cfg, templates))
                bare_runs.append(run_bare(cfg, prompts, args.batch_size, class_major))
            else:
                bare_runs.append(run_bare(cfg, prompts, args.batch_size, class_major))
                vl_runs.append(run_vlprobe(cfg, templates))
            print(json.dumps({"bare": bare_runs[-1], "vlprobe": vl_runs[-1]}), flush=True)

    def med(runs, key):
        return statistics.median(r[key] for r in runs)

    n_images = args.classes // 2 + args.classes % 2
    summary = {
        "classes": args.classes, "templates": len(templates), "prompts": len(prompts),
        "images": n_images, "layers": args.layers or 12, "threads": args.threads,
        "batch_size": args.batch_size, "shard_size": args.shard_size,
        "text_shard_size": args.text_shard_size, "repeats": args.repeats,
        "vlprobe_wall": med(vl_runs, "wall"), "vlprobe_cpu": med(vl_runs, "cpu"),
        "extract_prompts": med(vl_runs, "extract_prompts"),
        "extract_images": med(vl_runs, "extract_images"),
        "bare_text_wall": med(bare_runs, "text_wall"), "bare_text_cpu": med(bare_runs, "text_cpu"),
        "bare_class_major_wall": med(bare_runs, "class_major_wall"),
        "bare_class_major_cpu": med(bare_runs, "class_major_cpu"),
        "bare_image_wall": med(bare_runs, "image_wall"),
        "bare_image_cpu": med(bare_runs, "image_cpu"),
    }
    summary["ratio_wall"] = summary["bare_text_wall"] / summary["vlprobe_wall"]
    summary["ratio_cpu"] = summary["bare_text_cpu"] / summary["vlprobe_cpu"]
    for unit in ("wall", "cpu"):  # M1 must run the image tower too: the towers' own bound
        towers = summary[f"bare_text_{unit}"] + summary[f"bare_image_{unit}"]
        summary[f"ratio_towers_{unit}"] = towers / summary[f"vlprobe_{unit}"]
        summary[f"bound_{unit}"] = summary[f"bare_text_{unit}"] / towers
    summary["load_average"] = os.getloadavg()
    print(json.dumps(summary, indent=1))
    if args.write_results:
        write_results(summary)


def write_results(s: dict) -> None:
    """Append one table row to bench/RESULTS.md (the section header is written by hand)."""
    line = (f"| {s['images']} x {s['classes']} x {s['templates']} ({s['prompts']:,} prompts) "
            f"| {s['layers']} | {s['vlprobe_wall']:.1f} ({s['vlprobe_cpu']:.1f}) "
            f"| {s['extract_prompts']:.1f} | {s['extract_images']:.1f} "
            f"| {s['bare_text_wall']:.1f} ({s['bare_text_cpu']:.1f}) "
            f"| {s['bare_class_major_wall']:.1f} ({s['bare_class_major_cpu']:.1f}) "
            f"| {s['bare_image_wall']:.1f} ({s['bare_image_cpu']:.1f}) "
            f"| {s['ratio_wall']:.2f} ({s['ratio_cpu']:.2f}) |")
    with open(HERE / "RESULTS.md", "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
    print(f"appended to {HERE / 'RESULTS.md'} ({dt.date.today()}, {platform.node()})")


if __name__ == "__main__":
    main()
