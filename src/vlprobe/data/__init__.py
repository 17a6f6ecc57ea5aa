"""Datasets: loaders registered in one place, and :func:`load_dataset`.

A loader is a function ``loader(spec: DatasetSpec) -> dict[str, Stimuli]`` returning the
splits the source has (e.g. ``{"train": ..., "test": ...}``). :func:`load_dataset` then
applies the generic, seeded split carving and subsampling of :mod:`vlprobe.data.splits`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlprobe.data.stimuli import ImageSource, Stimuli, class_prompt_stimuli, prompt_stimuli
from vlprobe.registry import Registry

DATASETS: Registry[Any] = Registry("dataset loader")

# name -> "module:function"  (one line per loader)
DATASETS.add("hf_parquet", "vlprobe.data.images_parquet:load_parquet", aliases=("parquet",))
DATASETS.add("image_folder", "vlprobe.data.image_folder:load_image_folder", aliases=("folder",))
DATASETS.add("idx", "vlprobe.data.idx:load_idx")
DATASETS.add("mnist", "vlprobe.data.idx:load_mnist")
DATASETS.add("fashion_mnist", "vlprobe.data.idx:load_fashion_mnist", aliases=("fashion-mnist",))
DATASETS.add("coco_captions", "vlprobe.data.coco:load_coco_captions", aliases=("coco",))
DATASETS.add("coco_instances", "vlprobe.data.coco:load_coco_instances")
DATASETS.add("coco_coref", "vlprobe.data.silver_links:load_coco_coref")
DATASETS.add("flickr8k", "vlprobe.data.flickr8k:load_flickr8k")
DATASETS.add("sentences", "vlprobe.data.text:load_sentences", aliases=("text_lines", "fasttext"))
DATASETS.add("gensim_polarity", "vlprobe.data.text:load_gensim_polarity")
DATASETS.add("senteval", "vlprobe.data.text:load_senteval")
DATASETS.add("skimage_photos", "vlprobe.data.skimage_photos:load_skimage_photos")
DATASETS.add("hf_hub", "vlprobe.data.hub:load_hub", aliases=("hub",))
DATASETS.add("probing_task", "vlprobe.data.probing_tasks:load_probing_task")
DATASETS.add("boolq", "vlprobe.data.superglue:load_boolq")
DATASETS.add("wic", "vlprobe.data.superglue:load_wic")
DATASETS.add("conll2000", "vlprobe.data.conll:load_conll2000", aliases=("conll",))


@dataclass(frozen=True)
class DatasetSpec:
    """What the user wrote about one dataset in a run config.

    Attributes:
        loader: registered loader name (``vlprobe datasets`` lists them).
        name: the dataset's key in the run config (used in ids, results and cache keys).
        path: file or directory (``${reference}`` and ``~`` are expanded), or a hub id.
        options: loader-specific options (columns, templates, label files, ...).
        subsample: split -> number of items to keep (stratified by label when labelled).
        test_fraction: carve a ``test`` split of this fraction from ``train`` when the source
            has no test split (stratified, seeded).
        seed: seed of carving and subsampling.
        on_error: ``"raise"`` (default) or ``"skip"`` unreadable items (skips are counted).
        drop_cross_split_duplicates: drop from the held-out splits (validation, test) the
            items whose content (image bytes, normalised text) also occurs in an earlier split
            (:mod:`vlprobe.data.duplicates`). Default False: duplicates are only reported.
    """

    loader: str
    name: str = ""
    path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    subsample: dict[str, int] = field(default_factory=dict)
    test_fraction: float | None = None
    seed: int = 0
    on_error: str = "raise"
    drop_cross_split_duplicates: bool = False


def load_dataset(spec: DatasetSpec) -> dict[str, Stimuli]:
    """Load all splits of ``spec`` with carving and subsampling applied (deterministic)."""
    from vlprobe.data.splits import apply_split_spec

    loader = DATASETS.get(spec.loader)
    return apply_split_spec(loader(spec), spec)


__all__ = [
    "DATASETS",
    "DatasetSpec",
    "ImageSource",
    "Stimuli",
    "class_prompt_stimuli",
    "load_dataset",
    "prompt_stimuli",
]
