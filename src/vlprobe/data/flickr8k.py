"""``flickr8k``: Flickr8k (Hodosh, Young & Hockenmaier 2013) image-caption data, three views.

Layout (the reference kit's ``captions/flickr8k/``, Hugging Face parquet): one
``{train,validation,test}.parquet`` per split of the official 6,000 / 1,000 / 1,000 image
split, with ``image`` = ``struct<bytes, path>``, ``image_id`` = the Flickr8k file name and
``captions`` = its 5 captions in the official order (#0-#4). ``path`` is that directory, or a
hub dataset id with the same layout (downloaded once through ``huggingface_hub`` when online;
offline, an id that is not cached is a clear error).

Options:
    view: ``"caption"`` (default; one (image, caption) pair per caption, ids
        ``{split}/{image_id}#{k}``, descriptors ``image_id`` and ``caption_index``; image-side
        extraction runs once per image), ``"image"`` (one item per image, ids
        ``{split}/{image_id}``, descriptor ``captions`` = its caption list) or ``"itm"``
        (image-text matching: every true pair, label 1, plus ``negatives`` seeded mismatched
        captions per true pair, label 0, drawn from other images of the same split; descriptor
        ``true_caption`` keeps the true one). Label names for ``itm``: ``["mismatch", "match"]``.
    negatives: mismatched captions per true pair for ``view: itm`` (default 1).
    captions_per_image: keep the first k captions of each image (default all 5).
    seed: the mismatch draw (default: the dataset seed).

Bad input: an image without captions, an empty caption or a missing image are DataErrors
naming the split, row and image id. Images stay encoded in memory and decode lazily; their
digests are sha1 of the encoded bytes (content, so cross-split leakage checks can compare
them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vlprobe.data._common import bytes_image_source, dataset_name, provenance
from vlprobe.data.splits import canonical_split
from vlprobe.data.stimuli import Stimuli
from vlprobe.errors import DataError
from vlprobe.settings import expand_path

LOADER = "flickr8k"
VIEWS = ("caption", "image", "itm")
SPLITS = ("train", "validation", "test")
_OPTIONS = ("view", "negatives", "captions_per_image", "seed", "revision")


def _locate(raw: str, revision: str | None) -> Path:
    """A local directory, or a hub dataset id downloaded (parquet files only) to the cache."""
    path = expand_path(raw)
    if path.exists():
        return path
    if raw.startswith((".", "/", "~")) or raw.count("/") != 1:
        raise DataError(f"{LOADER}: path {str(path)!r} does not exist")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - a transformers dependency
        raise DataError(f"{LOADER}: loading {raw!r} from the hub needs huggingface_hub") from exc
    try:
        local = snapshot_download(
            raw, repo_type="dataset", revision=revision, allow_patterns=["*.parquet"]
        )
    except Exception as exc:
        raise DataError(
            f"{LOADER}: dataset {raw!r} is neither a local directory nor reachable on the "
            f"Hugging Face hub ({type(exc).__name__}); download it once with internet or point "
            "path at the parquet directory"
        ) from exc
    return Path(local)


def _split_files(root: Path) -> dict[str, Path]:
    files = sorted(root.rglob("*.parquet")) if root.is_dir() else [root]
    out: dict[str, Path] = {}
    for f in files:
        split = canonical_split(f.stem.split("-")[0])
        if split in SPLITS:
            out.setdefault(split, f)
    if not out:
        raise DataError(
            f"{LOADER}: no {'/'.join(s + '.parquet' for s in SPLITS)} under {str(root)!r}"
        )
    return out


def _read(file: Path, split: str, per_image: int | None) -> tuple[list[bytes], list[str], list]:
    """(encoded images, image ids, caption lists) of one split file, validated."""
    import pyarrow.parquet as pq

    table = pq.read_table(file, columns=["image", "image_id", "captions"])
    images = table.column("image").to_pylist()
    image_ids = [str(x) for x in table.column("image_id").to_pylist()]
    captions = table.column("captions").to_pylist()
    blobs = []
    for row, (image, image_id, caps) in enumerate(zip(images, image_ids, captions)):
        where = f"{file.name} row {row} (image {image_id!r})"
        blob = image.get("bytes") if isinstance(image, dict) else image
        if not blob:
            raise DataError(f"{LOADER}: {where} has no image bytes")
        if not caps:
            raise DataError(f"{LOADER}: {where} has no captions")
        for k, cap in enumerate(caps):
            if cap is None or not str(cap).strip():
                raise DataError(f"{LOADER}: {where} caption #{k} is empty")
        blobs.append(blob)
    if len(set(image_ids)) != len(image_ids):
        raise DataError(f"{LOADER}: {file.name} lists an image id twice")
    caps = [[str(c).strip() for c in c_list][:per_image] for c_list in captions]
    return blobs, image_ids, caps


def _view(
    name: str, split: str, blobs: list[bytes], image_ids: list[str], captions: list[list[str]],
    view: str, negatives: int, seed: int, source: dict[str, Any],
) -> Stimuli:
    names = [f"{split}.parquet[{image_id}]" for image_id in image_ids]
    images = bytes_image_source(blobs, names)
    if view == "image":
        return Stimuli(
            dataset=name, split=split, ids=[f"{split}/{i}" for i in image_ids], images=images,
            descriptors={"image_id": list(image_ids), "captions": captions}, source=source,
        )
    rows = [r for r, caps in enumerate(captions) for _ in caps]
    cap_index = [k for caps in captions for k in range(len(caps))]
    texts = [captions[r][k] for r, k in zip(rows, cap_index)]
    ids = [f"{split}/{image_ids[r]}#{k}" for r, k in zip(rows, cap_index)]
    descriptors: dict[str, list[Any]] = {
        "image_id": [image_ids[r] for r in rows], "caption_index": cap_index,
    }
    labels = None
    label_names = None
    if view == "itm":
        rows, texts, ids, descriptors, labels = _with_mismatches(
            rows, texts, ids, descriptors, captions, image_ids, negatives, seed, split
        )
        label_names = ["mismatch", "match"]
    return Stimuli(
        dataset=name, split=split, ids=ids, images=images.subset(rows), texts=texts,
        labels=labels, label_names=label_names, descriptors=descriptors, source=source,
    )


def _with_mismatches(
    rows: list[int], texts: list[str], ids: list[str], descriptors: dict[str, list[Any]],
    captions: list[list[str]], image_ids: list[str], negatives: int, seed: int, split: str,
) -> tuple[list[int], list[str], list[str], dict[str, list[Any]], np.ndarray]:
    """Each true pair (label 1) followed by ``negatives`` pairs of the same image with a caption
    of another image (label 0), drawn with a generator seeded by ``(seed, split)``."""
    if len(captions) < 2:
        raise DataError(f"{LOADER}: split {split!r} has one image: no mismatched captions")
    rng = np.random.default_rng([int(seed), sum(split.encode())])
    flat = [(r, k) for r, caps in enumerate(captions) for k in range(len(caps))]
    out_rows, out_texts, out_ids, labels = [], [], [], []
    out_desc: dict[str, list[Any]] = {k: [] for k in (*descriptors, "true_caption")}
    for i, (row, text, item_id) in enumerate(zip(rows, texts, ids)):
        choices = []
        while len(choices) < negatives:
            r, k = flat[int(rng.integers(len(flat)))]
            if r != row and captions[r][k] != text and (r, k) not in choices:
                choices.append((r, k))
        for j, pick in enumerate([None, *choices]):
            out_rows.append(row)
            out_texts.append(text if pick is None else captions[pick[0]][pick[1]])
            out_ids.append(item_id if pick is None else f"{item_id}~neg{j}")
            labels.append(1 if pick is None else 0)
            for key, column in descriptors.items():
                out_desc[key].append(column[i])
            out_desc["true_caption"].append(text)
    return out_rows, out_texts, out_ids, out_desc, np.asarray(labels, dtype=np.int64)


def load_flickr8k(spec: Any) -> dict[str, Stimuli]:
    """The splits of Flickr8k in the chosen view (see the module docstring)."""
    options = dict(spec.options)
    unknown = sorted(set(options) - set(_OPTIONS) - {"path"})
    if unknown:
        raise DataError(f"{LOADER}: unknown option(s) {unknown}; known: {list(_OPTIONS)}")
    view = options.get("view", "caption")
    if view not in VIEWS:
        raise DataError(f"{LOADER}: view must be one of {VIEWS}, got {view!r}")
    negatives = int(options.get("negatives", 1))
    if view == "itm" and negatives < 1:
        raise DataError(f"{LOADER}: negatives must be >= 1 for view 'itm', got {negatives}")
    per_image = options.get("captions_per_image")
    if per_image is not None and int(per_image) < 1:
        raise DataError(f"{LOADER}: captions_per_image must be >= 1, got {per_image}")
    raw = spec.path or options.get("path")
    if not raw:
        raise DataError(f"{LOADER}: set path to the flickr8k parquet directory or a hub id")
    root = _locate(str(raw), options.get("revision"))
    seed = int(options.get("seed", spec.seed))
    name = dataset_name(spec, LOADER)
    out: dict[str, Stimuli] = {}
    for split, file in _split_files(root).items():
        blobs, image_ids, captions = _read(
            file, split, int(per_image) if per_image is not None else None
        )
        source = provenance(LOADER, file, options, view=view)
        out[split] = _view(name, split, blobs, image_ids, captions, view, negatives, seed,
                           source)
    return out
