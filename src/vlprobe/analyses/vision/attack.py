"""The work of V6 for one model: clean predictions, PGD over the (norm, ε) grid, the tidy rows,
the per-item table, example images and the semantic rows (see
:mod:`~vlprobe.analyses.vision.adversarial` for what is reported)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlprobe.analyses.vision.pgd import (
    default_step_size,
    perturbation_norm,
    pgd_attack,
    predict_classes,
    quantize_8bit,
)
from vlprobe.analyses.vision.stats import wilson_ci
from vlprobe.errors import AnalysisError, ConfigError
from vlprobe.models.inference_tensors import release_inference_tensors

log = logging.getLogger(__name__)
_WNID = re.compile(r"n\d{8}")


def model_adapter(source: Any, model: str, analysis: str) -> Any:
    """The adapter of ``model`` from the run's feature source (``source.adapter(model)``),
    checked to have an image tower (the differentiable path), with any weights that an
    extraction loaded under ``inference_mode`` made usable for gradients
    (:func:`~vlprobe.models.inference_tensors.release_inference_tensors`)."""
    get = getattr(source, "adapter", None)
    if not callable(get):
        raise AnalysisError(f"{analysis}: needs the model itself, and this feature source "
                            f"({type(source).__name__}) gives no adapter(model)")
    adapter = get(model)
    if "image" not in adapter.modalities:
        raise ConfigError(
            f"{analysis}: model {model!r} ({adapter.family}, {'/'.join(adapter.modalities)} "
            "input) has no differentiable image path: it needs an image tower")
    release_inference_tensors(adapter)  # weights an extraction loaded under inference_mode
    return adapter


@dataclass
class AttackOutput:
    """What :func:`attack_model` returns for one model."""

    rows: list[dict[str, Any]]
    items: Any
    notes: list[str] = field(default_factory=list)
    examples: dict[str, dict[str, Any]] = field(default_factory=dict)


def subset_indices(n: int, max_items: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of at most ``max_items`` of ``n`` items."""
    if max_items is None or max_items >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 11]).permutation(n)[:max_items])


def predict(head: Any, adapter: Any, stimuli: Any, indices: np.ndarray, batch_size: int,
            device: str) -> np.ndarray:
    """Clean top-1 head classes of the items at ``indices`` (no gradients)."""

    out = []
    for i in range(0, len(indices), batch_size):
        chunk = indices[i:i + batch_size]
        px = adapter.image_pixels(stimuli.payloads("image", chunk.tolist())).to(device)
        out.append(predict_classes(head.logits, px).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def random_targets(head_labels: np.ndarray, indices: np.ndarray, n_classes: int,
                   seed: int) -> np.ndarray:
    """A seeded uniformly random wrong head class per item (-1 where the label is unknown)."""
    out = np.full(len(indices), -1, dtype=np.int64)
    for j, (i, y) in enumerate(zip(indices, head_labels)):
        if y >= 0 and n_classes > 1:
            t = int(np.random.default_rng([seed, 13, int(i)]).integers(n_classes - 1))
            out[j] = t + (t >= y)
    return out


def _wordnet_for(params: dict[str, Any], head: Any, label_names: list[str] | None,
                 notes: list[str]) -> Any:
    """The class-similarity function of the head's classes (WordNet), or None with a note.

    ``wnids: auto`` uses the dataset's class names where they are all WordNet noun ids (the
    reference kit's ImageNet sample) and skips with a note where WordNet is not installed;
    an explicit ``wnids`` file makes a missing WordNet an error."""
    from vlprobe.analyses.vision.wordnet import ClassSimilarity, load_wordnet, read_wnids

    wnids = params["wnids"]
    if wnids is None:
        return None
    if wnids == "auto":
        if not label_names or not all(_WNID.fullmatch(str(n)) for n in label_names):
            notes.append("adversarial: semantic distance skipped: the dataset's class names are "
                         "not WordNet ids (set wnids to a JSON list of the head's WordNet ids)")
            return None
        wnids = list(label_names)
        try:
            wn = load_wordnet(params["wordnet_dir"])
        except AnalysisError as exc:
            notes.append(f"adversarial: semantic distance skipped: {exc}")
            return None
    else:
        wn, wnids = load_wordnet(params["wordnet_dir"]), read_wnids(wnids)
    if int(head.classes.max()) >= len(wnids):
        raise ConfigError(f"adversarial: wnids lists {len(wnids)} WordNet ids; the head's "
                          f"classes index up to {int(head.classes.max())}")
    return ClassSimilarity(wn, [wnids[int(c)] for c in head.classes])


def _row(base: dict[str, Any], metric: str, value: float, n: int,
         ci: tuple[float, float] | None = None, **extra: Any) -> dict[str, Any]:
    low, high = ci if ci is not None else (float("nan"), float("nan"))
    return {**base, "metric": metric, "value": float(value), "ci_low": low, "ci_high": high,
            "n": int(n), **extra}


def _summary_rows(base: dict[str, Any], items: Any, n_sub: int, n_correct: int,
                  grid: list[tuple[str, float]], steps: int,
                  step_size: float | None) -> list[dict[str, Any]]:
    """Accuracy / success (Wilson CIs) per (norm, ε), ε = 0 from the clean predictions."""
    rows = []
    for norm in dict.fromkeys(n for n, _ in grid):
        b = {**base, "norm": norm, "epsilon": 0.0,
             "epsilon_255": 0.0 if norm == "linf" else float("nan")}
        rows.append(_row(b, "accuracy", n_correct / max(n_sub, 1), n_sub,
                         wilson_ci(n_correct, n_sub)))
        rows.append(_row(b, "attack_success_rate", 0.0, n_correct, wilson_ci(0, n_correct)))
    for norm, eps in grid:
        g = items[(items["norm"] == norm) & (items["epsilon"] == eps)]
        alpha = default_step_size(eps, steps) if step_size is None else step_size * eps
        b = {**base, "norm": norm, "epsilon": eps,
             "epsilon_255": eps * 255 if norm == "linf" else float("nan"), "step_size": alpha}
        ok = g["success"].to_numpy(bool)
        right = int((g["adv_pred"] == g["head_label"]).sum())
        q_right = int((g["quantized_pred"] == g["head_label"]).sum())
        q_ok = g["quantized_success"].to_numpy(bool)
        n = len(g)
        rows += [
            _row(b, "accuracy", right / max(n_sub, 1), n_sub, wilson_ci(right, n_sub)),
            _row(b, "attack_success_rate", ok.mean() if n else np.nan, n,
                 wilson_ci(int(ok.sum()), n)),
            _row(b, "accuracy_after_quantization", q_right / max(n_sub, 1), n_sub,
                 wilson_ci(q_right, n_sub)),
            _row(b, "success_after_quantization", q_ok.mean() if n else np.nan, n,
                 wilson_ci(int(q_ok.sum()), n)),
            _row(b, "mean_steps_to_success",
                 g.loc[ok, "steps"].mean() if ok.any() else np.nan, int(ok.sum())),
            _row(b, "median_perturbation",
                 g.loc[ok, "perturbation"].median() if ok.any() else np.nan, int(ok.sum())),
        ]
    return rows


def attack_model(analysis: Any, model: str, adapter: Any, head: Any,
                 stimuli: Any) -> AttackOutput:
    """Attack one model's head on ``stimuli`` (see the module docstring)."""
    import pandas as pd
    import torch

    from vlprobe.analyses.vision.semantic import similarity_rows

    p, seed = analysis.params, analysis.seed
    notes: list[str] = []
    if stimuli.labels is None:
        raise AnalysisError(f"adversarial: split {p['split']!r} of dataset "
                            f"{analysis.dataset!r} has no labels")
    labels = np.asarray(stimuli.labels, dtype=np.int64)
    head_y = head.head_labels(labels)
    K = len(head.classes)
    if head.kind == "own" and (labels.min() < 0 or labels.max() >= K):
        raise AnalysisError(f"adversarial: labels of split {p['split']!r} range over "
                            f"[{labels.min()}, {labels.max()}] but the head of model {model!r} "
                            f"has {K} classes; the labels must be the head's class indices")
    if (head_y < 0).any():
        notes.append(f"adversarial: model {model!r}: {int((head_y < 0).sum())} item(s) of a "
                     "class the head does not have count as errors and are not attacked")
    sim = _wordnet_for(p, head, stimuli.label_names, notes)
    names = ([sim.name(c) for c in range(K)] if sim is not None
             else head.class_names or [str(c) for c in head.classes])
    device = str(getattr(adapter, "device", "cpu"))
    bs = int(p["batch_size"])
    sub = subset_indices(len(stimuli), p["max_items"], seed)
    if len(sub) < len(stimuli):
        notes.append(f"adversarial: model {model!r}: {len(sub)} of {len(stimuli)} items of "
                     f"split {p['split']!r} attacked (seeded subset, max_items)")
    clean_idx = np.arange(len(stimuli)) if p["clean_items"] == "all" else sub
    clean_pred = np.full(len(stimuli), -1, dtype=np.int64)
    clean_pred[clean_idx] = predict(head, adapter, stimuli, clean_idx, bs, device)
    targets = (random_targets(head_y, np.arange(len(stimuli)), K, seed) if p["targeted"]
               else None)
    largest = {norm: eps for norm, eps in analysis.grid}  # grid is sorted per norm
    examples = {norm: {"norm": norm, "epsilon": eps, "clean": [], "adversarial": [],
                       "true": [], "pred": []} for norm, eps in largest.items()}
    records: list[dict[str, Any]] = []
    attackable = sub[(clean_pred[sub] == head_y[sub]) & (head_y[sub] >= 0)]
    for start in range(0, len(attackable), bs):
        idx = attackable[start:start + bs]
        log.info("adversarial: %s: items %d-%d of %d", model, start, start + len(idx),
                 len(attackable))
        x0 = adapter.image_pixels(stimuli.payloads("image", idx.tolist())).to(device)
        y0 = torch.as_tensor(head_y[idx], device=device)
        t0 = torch.as_tensor(targets[idx], device=device) if targets is not None else None
        for norm, eps in analysis.grid:
            res = pgd_attack(
                head.logits, x0, y0, norm=norm, epsilon=eps, steps=int(p["steps"]),
                step_size=None if p["step_size"] is None else float(p["step_size"]) * eps,
                restarts=int(p["restarts"]), random_init=bool(p["random_start"]),
                targets=t0, seed=seed, item_seeds=idx.tolist(), early_stop=bool(p["early_stop"]))
            q = quantize_8bit(res.adversarial)
            q_pred = predict_classes(head.logits, q)
            q_ok = (q_pred == t0) if t0 is not None else (q_pred != y0)
            pert = perturbation_norm(res.adversarial - x0, norm).cpu().numpy()
            q_pert = perturbation_norm(q - x0, norm).cpu().numpy()
            for j, i in enumerate(idx.tolist()):
                records.append({
                    "model": model, "id": stimuli.ids[i], "index": i, "label": int(labels[i]),
                    "head_label": int(head_y[i]), "norm": norm, "epsilon": eps,
                    "targeted": t0 is not None,
                    "target": int(targets[i]) if targets is not None else -1,
                    "adv_pred": int(res.prediction[j]), "success": bool(res.success[j]),
                    "steps": int(res.steps[j]), "restart": int(res.restart[j]),
                    "perturbation": float(pert[j]), "quantized_pred": int(q_pred[j]),
                    "quantized_success": bool(q_ok[j]), "quantized_perturbation": float(q_pert[j]),
                })
            shown = examples[norm]
            if eps == largest[norm]:
                for j in np.flatnonzero(res.success.cpu().numpy()):
                    if len(shown["clean"]) >= int(p["n_examples"]):
                        break
                    shown["clean"].append(x0[j].cpu().numpy())
                    shown["adversarial"].append(res.adversarial[j].cpu().numpy())
                    shown["true"].append(names[int(y0[j])])
                    shown["pred"].append(names[int(res.prediction[j])])
    items = pd.DataFrame(records, columns=[
        "model", "id", "index", "label", "head_label", "norm", "epsilon", "targeted", "target",
        "adv_pred", "success", "steps", "restart", "perturbation", "quantized_pred",
        "quantized_success", "quantized_perturbation"])
    base = {"analysis": analysis.name, "model": model, "dataset": analysis.dataset,
            "split": p["split"], "layer": None, "site": head.site, "head": head.kind,
            "targeted": bool(p["targeted"]), "steps": int(p["steps"]),
            "restarts": int(p["restarts"]), "seed": seed}
    n_correct = len(attackable)
    rows = _summary_rows(base, items, len(sub), n_correct, analysis.grid, int(p["steps"]),
                         p["step_size"])
    if sim is not None:
        clean = pd.DataFrame({"head_label": head_y[clean_idx], "clean_pred": clean_pred[clean_idx]})
        sem, per_item = similarity_rows(items, clean, sim, K, int(p["n_random_pairs"]), seed)
        rows += [{**base, **r, "epsilon_255": r["epsilon"] * 255 if r["norm"] == "linf"
                  else float("nan")} for r in sem]
        for key, values in per_item.items():
            items[key] = values
    info = ", ".join(f"{k} {v}" for k, v in head.info.items())
    notes.append(f"adversarial: model {model!r}: head {head.kind} at {head.site} ({info}); "
                 f"clean top-1 {n_correct}/{len(sub)} on the attacked items")
    return AttackOutput(rows, items, notes, examples)
