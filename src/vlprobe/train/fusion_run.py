"""``vlprobe train`` for ``kind: fusion_single | fusion_two``: data -> frozen grid features
(cached) -> a fusion transformer trained with ITM + MLM -> a checkpoint directory that the
``visual_bert`` / ``lxmert`` adapter loads (:mod:`vlprobe.train.fusion_models`).

After saving, the checkpoint is loaded back through its adapter (with the recorded
``adapter_options``) and run on a few validation pairs from their images: its hidden states
must equal the trained model's on the cached features, else training fails (the difference
is in the record under ``adapter_check``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlprobe.errors import ConfigError, DataError, ModelLoadError
from vlprobe.train.fusion_config import FusionTrainConfig, RegionEntry
from vlprobe.train.fusion_data import ItmPairs, RegionSplit, itm_pairs, tokenize

SPLITS = ("train", "validation", "test")
DEFAULT_REGIONS = {"adapter": "efficientnet_lite0", "site": "vision.head"}
CHECK_PAIRS = 4
CHECK_TOLERANCE = 1e-3


def adapter_options(kind: str, regions: RegionEntry) -> dict[str, Any]:
    """The adapter options that make ``visual_bert`` / ``lxmert`` read the same regions as
    training did (:mod:`vlprobe.models.regions` vocabulary): the grid of ``regions`` with
    boxes normalised to the CNN's window (:func:`~vlprobe.train.fusion_data.cell_boxes`, what
    training feeds LXMERT); ``{}`` for a single-stream model on the adapters' default grid
    (VisualBERT reads no boxes)."""
    spec = {k: v for k, v in asdict(regions.model).items()
            if v not in (None, False, {}) and not (k == "seed" and v == 0)
            and not (k == "dtype" and v == "float32")}
    default = spec == {"adapter": DEFAULT_REGIONS["adapter"]} and regions.site == "vision.head"
    if kind == "fusion_single" and default:
        return {}
    return {"regions": {"source": "grid", "model": spec, "site": regions.site,
                        "boxes": "window"}}


def _load(cfg: FusionTrainConfig, options: dict[str, Any]) -> dict[str, Any]:
    from vlprobe.data import DatasetSpec, load_dataset

    raw = dict(cfg.data)
    raw["options"] = {**dict(raw.get("options") or {}), **options}
    spec = DatasetSpec(**{"name": "train_data", **raw})
    splits = load_dataset(spec)
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise DataError(f"fusion training needs splits {SPLITS}; dataset has {sorted(splits)}")
    return splits


def _grid(cnn: Any, site: str, image: Any) -> int:
    fmap = cnn.forward(cnn.prepare([image], "image"), [site]).hidden[site]
    if fmap.ndim != 4 or fmap.shape[2] != fmap.shape[3]:
        raise ConfigError(f"regions.site {site!r} gives shape {tuple(fmap.shape)}; grid regions "
                          "need a square feature map [B, C, g, g]")
    return int(fmap.shape[2])


def region_split(view: Any, cnn: Any, site: str, grid: int, store: Any, tokenizer: Any,
                 max_length: int, extraction: dict[str, Any], progress: bool) -> RegionSplit:
    """Cached grid features (``grid<g>`` pooling of ``site``) + tokenized captions of one
    split's ``image`` view."""
    from vlprobe.extract import extract_features

    res = extract_features(cnn, view, modality="image", sites=[site], pooling=f"grid{grid}",
                           store=store, progress=progress, **extraction)
    captions, n_truncated = [], 0
    for caps in view.descriptors["captions"]:
        tokens, cut = tokenize(tokenizer, caps, max_length)
        captions.append(tokens)
        n_truncated += cut
    return RegionSplit(np.asarray(res.features[site]), grid, list(view.descriptors["image_id"]),
                       list(view.images.digests), captions,
                       [list(map(str, caps)) for caps in view.descriptors["captions"]],
                       n_truncated)


def _text_model(cfg: FusionTrainConfig) -> tuple[Any, Any]:
    from vlprobe.models import ModelSpec, load_model

    adapter = load_model(ModelSpec(**asdict(cfg.text.model)))
    tokenizer = copy.deepcopy(adapter.tokenizer)
    for name in ("cls_token", "sep_token", "pad_token", "mask_token"):
        if getattr(tokenizer, name, None) is None:
            raise ConfigError(f"text.model {cfg.text.model.adapter!r}: the tokenizer has no "
                              f"{name} (a BERT WordPiece tokenizer is needed)")
    tokenizer.model_max_length = cfg.text.max_length
    tokenizer.padding_side = "right"
    return adapter, tokenizer


def train(cfg: FusionTrainConfig, progress: bool = True) -> Path:
    """Train what ``cfg`` describes and write its checkpoint; returns the directory."""
    from vlprobe.extract import ActivationStore
    from vlprobe.models import ModelSpec, load_model
    from vlprobe.settings import cache_dir
    from vlprobe.train import fusion as F
    from vlprobe.train.features import check_no_test_images
    from vlprobe.train.fusion_models import (
        build_model,
        hf_config,
        init_word_embeddings,
        parameter_counts,
        save_fusion_checkpoint,
    )
    from vlprobe.train.run import _versions

    t0 = time.perf_counter()
    views = _load(cfg, {"view": "image"})
    check_no_test_images(*(_ImageList.of(views[s]) for s in ("train", "test", "validation")))
    itm_views: dict[Any, dict[str, Any]] = {}

    def itm(split: str, cpi: int | None) -> Any:
        if cpi not in itm_views:
            extra = {} if cpi is None else {"captions_per_image": cpi}
            itm_views[cpi] = _load(cfg, {"view": "itm", "negatives": 1, **extra})
        return itm_views[cpi][split]

    text_model, tok = _text_model(cfg)
    cnn = load_model(ModelSpec(**asdict(cfg.regions.model)))
    grid = _grid(cnn, cfg.regions.site, views["train"].images[0])
    store = ActivationStore(root=cache_dir() / "activations")
    splits = {s: region_split(views[s], cnn, cfg.regions.site, grid, store, tok,
                              cfg.text.max_length, cfg.extraction, progress) for s in SPLITS}
    rows = {s: {i: r for r, i in enumerate(splits[s].image_ids)} for s in SPLITS}
    e = cfg.eval
    val_pairs = itm_pairs(itm("validation", e.val_captions_per_image), rows["validation"], tok,
                          cfg.text.max_length)
    t_data = time.perf_counter() - t0

    config = hf_config(cfg.kind, cfg.model, vocab_size=len(tok), pad_id=tok.pad_token_id,
                       visual_dim=splits["train"].channels, max_length=cfg.text.max_length,
                       n_regions=grid * grid)
    model = build_model(cfg.kind, config, cfg.seed)
    init = None
    if cfg.text.init_embeddings:
        init = init_word_embeddings(model, text_model.model.get_input_embeddings().weight,
                                    config.initializer_range)
    initial = copy.deepcopy(model).eval()
    text = F.TextSpec(pad_id=tok.pad_token_id, mask_id=tok.mask_token_id,
                      special_ids=sorted({int(i) for i in tok.all_special_ids}),
                      vocab_size=len(tok),
                      region_offset=cfg.text.max_length if cfg.kind == "fusion_single" else None)
    model, log, best_epoch = F.train_fusion(
        model, cfg.kind, splits["train"], splits["validation"], val_pairs, text,
        objectives=cfg.objectives, optim=cfg.optim, eval_batch_size=e.batch_size,
        seed=cfg.seed, progress=progress,
    )
    t_train = time.perf_counter() - t0 - t_data

    test_pairs, scores, results, controls = evaluate_on_test(
        model, initial, cfg, splits, rows["test"], itm("test", e.test_captions_per_image),
        itm("test", e.mlm_captions_per_image), tok, text)
    t_eval = time.perf_counter() - t0 - t_data - t_train

    meta = {
        "kind": cfg.kind, "adapter": cfg.adapter, "name": cfg.name,
        "adapter_options": adapter_options(cfg.kind, cfg.regions),
        "regions": {"model": asdict(cfg.regions.model), "site": cfg.regions.site,
                    "grid": grid, "channels": splits["train"].channels},
        "text": {"max_length": cfg.text.max_length, "model": asdict(cfg.text.model)},
        "match_class": F.MATCH_CLASS[cfg.kind],
    }
    record = {
        "name": cfg.name, "kind": cfg.kind, "adapter": cfg.adapter, "seed": cfg.seed,
        "data": {
            **{s: {"fingerprint": views[s].fingerprint(), "n_images": len(splits[s].image_ids),
                   "n_captions": sum(map(len, splits[s].captions)),
                   "n_truncated": splits[s].n_truncated} for s in SPLITS},
            "itm_validation": _pairs_record(itm("validation", e.val_captions_per_image)),
            "itm_test": _pairs_record(itm("test", e.test_captions_per_image)),
            "itm_test_small": _pairs_record(itm("test", e.mlm_captions_per_image)),
        },
        "regions": {"model": cnn.identity(), "site": cfg.regions.site, "grid": grid,
                    "channels": splits["train"].channels},
        "text": {"tokenizer": type(tok).__name__, "vocab": len(tok),
                 "max_length": cfg.text.max_length, "init_embeddings": init},
        "parameters": parameter_counts(model),
        "epochs": [asdict(x) for x in log], "best_epoch": best_epoch,
        "selection": "best validation ITM accuracy; test used once, after training",
        "test": results, "controls": controls,
        "seconds": {"data_and_features": t_data, "training": t_train, "evaluation": t_eval},
        "versions": _versions(), "config": asdict(cfg),
    }
    out = save_fusion_checkpoint(cfg.out_dir(), model, tok, meta, record)
    np.savez(out / "test_itm_scores.npz", ids=np.asarray(test_pairs.ids),
             labels=test_pairs.labels, p_match=scores)
    record["adapter_check"] = check_through_adapter(out, meta, model, cfg.kind, views, splits,
                                                    text)
    from vlprobe.extract.store import atomic_write_json
    from vlprobe.train.fusion_models import RECORD

    atomic_write_json(out / RECORD, record)
    if record["adapter_check"]["max_abs_diff"] > CHECK_TOLERANCE:
        raise ModelLoadError(
            f"{out}: the {cfg.adapter} adapter does not reproduce the trained model "
            f"(max |difference| {record['adapter_check']['max_abs_diff']:.2e} > "
            f"{CHECK_TOLERANCE}); the adapters' region or text inputs changed"
        )
    return out


def evaluate_on_test(model: Any, initial: Any, cfg: FusionTrainConfig,
                     splits: dict[str, RegionSplit], rows: dict[str, int], itm_view: Any,
                     small_view: Any, tok: Any, text: Any) -> tuple[ItmPairs, np.ndarray,
                                                                     dict[str, Any],
                                                                     dict[str, Any]]:
    """The one use of the test split: ITM on ``itm_view`` (P(match) per pair kept), MLM on the
    matched pairs of ``small_view``; controls (the untrained model on ``small_view``, chance,
    the majority training token). Returns ``(pairs, P(match), metrics, controls)``."""
    from vlprobe.train import fusion as F

    e, kind, test = cfg.eval, cfg.kind, splits["test"]
    pairs = itm_pairs(itm_view, rows, tok, cfg.text.max_length)
    small = itm_pairs(small_view, rows, tok, cfg.text.max_length)
    scores = F.itm_scores(model, kind, test, pairs, text, e.batch_size)
    majority = F.majority_token(splits["train"], text.special_ids)
    mlm_seed = cfg.seed + 1
    results = {**F.itm_metrics(scores, pairs.labels),
               **F.mlm_metrics(model, kind, test, small, text, e.batch_size,
                               cfg.objectives.mask_prob, mlm_seed, majority)}
    untrained = {
        **F.itm_metrics(F.itm_scores(initial, kind, test, small, text, e.batch_size),
                        small.labels),
        **F.mlm_metrics(initial, kind, test, small, text, e.batch_size,
                        cfg.objectives.mask_prob, mlm_seed),
    }
    share = float(np.mean(pairs.labels))
    controls = {
        "chance_itm_acc": 100 * max(share, 1 - share),
        "untrained_model": untrained,
        "majority_token_mlm_acc": results.pop("majority_token_acc"),
    }
    return pairs, scores, results, controls


@dataclass
class _ImageList:
    """The images of a split as :func:`~vlprobe.train.features.check_no_test_images` reads
    them (ids and content digests), known before any feature is computed."""

    image_ids: list[str]
    image_digests: list[str]

    @classmethod
    def of(cls, view: Any) -> _ImageList:
        return cls(list(view.descriptors["image_id"]), list(view.images.digests))


def _pairs_record(stimuli: Any) -> dict[str, Any]:
    labels = np.asarray(stimuli.labels)
    return {"fingerprint": stimuli.fingerprint(), "n_pairs": len(labels),
            "n_match": int(labels.sum())}


def check_through_adapter(directory: Path, meta: dict[str, Any], model: Any, kind: str,
                          views: dict[str, Any], splits: dict[str, RegionSplit],
                          text: Any) -> dict[str, Any]:
    """Load the checkpoint through its adapter and compare, on the first validation images with
    their first caption, the final hidden states and the pooled vector with the trained
    model's on the cached features (max absolute difference)."""
    import torch

    from vlprobe.models import ModelSpec, load_model
    from vlprobe.train.fusion import model_inputs
    from vlprobe.train.fusion_data import pad_tokens
    from vlprobe.train.fusion_models import base_of

    adapter = load_model(ModelSpec(adapter=meta["adapter"], checkpoint=str(directory),
                                   options=meta["adapter_options"]))
    view, split = views["validation"], splits["validation"]
    n = min(CHECK_PAIRS, len(split.image_ids))
    captions = [view.descriptors["captions"][i][0] for i in range(n)]
    pairs = list(zip(view.payloads("image", range(n)), captions))
    if kind == "fusion_single":
        last = f"fusion.blocks.{adapter.n_layers - 1}"
    else:
        last = f"cross.blocks.{adapter.n_cross - 1}.text"
    trace = adapter.forward(adapter.prepare(pairs, "pair"), [last, "fusion.pooled"])
    ids, mask = pad_tokens([split.captions[i][0] for i in range(n)], text.pad_id)
    with torch.no_grad():
        out = base_of(model)(**model_inputs(kind, ids, mask, split.regions(range(n)),
                                                  text))
    hidden = out.last_hidden_state if kind == "fusion_single" else out.language_output
    pooled = out.pooler_output if kind == "fusion_single" else out.pooled_output
    if trace.hidden[last].shape != hidden.shape:
        return {"pairs": n, "max_abs_diff": float("inf"),
                "note": f"shapes differ: adapter {tuple(trace.hidden[last].shape)}, trained "
                        f"{tuple(hidden.shape)}"}
    diff = max(float((trace.hidden[last] - hidden).abs().max()),
               float((trace.hidden["fusion.pooled"] - pooled).abs().max()))
    return {"pairs": n, "sites": [last, "fusion.pooled"], "max_abs_diff": diff,
            "adapter_options": meta["adapter_options"]}
