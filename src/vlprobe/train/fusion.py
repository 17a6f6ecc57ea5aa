"""Training and evaluation of the fusion models (ITM + MLM on cached region features).

Protocol (no number is tuned on test):

- an epoch visits every training image once in a seeded order, with one of its captions; half
  the pairs get a caption of another image instead (ITM label "mismatch"); BERT masking
  (15%, 80/10/10) is applied to every pair and the MLM loss scored on matched pairs only
  (LXMERT's recipe), so masking says nothing about the label; optionally (``objectives.itc``)
  a contrastive loss aligns the two modalities' mean layer-0 embeddings of the matched pairs
  (:func:`stem_itc_loss`; ALBEF's "align before fuse" applied to the inputs, with no module
  beyond the architecture's own);
- after each epoch, ITM accuracy on the validation ``itm`` pairs selects the kept weights;
  training stops after ``patience`` epochs without improvement;
- the test split is used once, at the end: ITM accuracy (and AUC) on the test ``itm`` pairs and
  MLM accuracy on masked test captions (every chosen token replaced by [MASK], a fixed seeded
  draw); controls: the untrained model (its seeded initialisation), chance (the majority label
  share) and, for MLM, always predicting the most frequent training token.

With ``optim.precision: bfloat16`` the training forward runs under CPU autocast (bfloat16
matrix products, float32 weights, losses and optimiser; about 1.7x less CPU time on CPUs with
AMX / AVX-512 bf16); evaluation is always float32, as the adapters run the model.

Evaluation runs in eval mode (no dropout) with the inputs the ``visual_bert`` / ``lxmert``
adapters give (unmasked text for ITM). Dropout draws from the global torch RNG, so training runs
inside ``torch.random.fork_rng`` seeded with the config seed (the caller's RNG state is
restored); batches and masks come from a local ``torch.Generator``: the same seed gives the
same weights on the CPU.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlprobe.train.fusion_data import (
    ItmPairs,
    RegionSplit,
    cell_boxes,
    epoch_plan,
    mask_tokens,
    pad_tokens,
)
from vlprobe.train.fusion_models import MATCH_CLASS, base_of, match_probability


@dataclass
class TextSpec:
    """What batches need from the tokenizer."""

    pad_id: int
    mask_id: int
    special_ids: list[int]
    vocab_size: int
    region_offset: int | None = None  # VisualBERT: position of region 0 (None: no positions)


@dataclass
class EpochLog:
    epoch: int
    loss: float
    itm_loss: float
    mlm_loss: float
    train_itm_acc: float
    val: dict[str, float]
    lr: float
    seconds: float
    steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def model_inputs(kind: str, ids: Any, mask: Any, regions: Any, text: TextSpec) -> dict[str, Any]:
    """The base model's keyword inputs, exactly as the adapters build them: text ``[B, T]``
    (token types 0), regions ``[B, R, C]`` (all real; VisualBERT: token type 1 and, with a
    region offset, alignment ``offset + r``; LXMERT: the cells' boxes ``[B, R, 4]``)."""
    import torch

    b, r = regions.shape[:2]
    vmask = torch.ones((b, r), dtype=torch.long)
    common = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    if kind == "fusion_single":
        out = {**common, "visual_embeds": regions, "visual_attention_mask": vmask,
               "visual_token_type_ids": torch.ones_like(vmask)}
        if text.region_offset is not None:
            out["image_text_alignment"] = (text.region_offset + torch.arange(r)).view(
                1, r, 1).expand(b, r, 1)
        return out
    g = round(r ** 0.5)
    boxes = torch.from_numpy(cell_boxes(g)).unsqueeze(0).expand(b, r, 4)
    return {**common, "visual_feats": regions, "visual_pos": boxes,
            "visual_attention_mask": vmask}


def encode(model: Any, kind: str, inputs: dict[str, Any]) -> tuple[Any, Any]:
    """``(text token states [B, T, D], pooled [B, D])`` of the base model: the language
    stream's output (LXMERT) or the text part of the fused sequence (VisualBERT)."""
    out = base_of(model)(**inputs)
    if kind == "fusion_single":
        return out.last_hidden_state[:, : inputs["input_ids"].shape[1]], out.pooler_output
    return out.language_output, out.pooled_output


@contextmanager
def stem_capture(model: Any, kind: str, n_text: int) -> Iterator[dict[str, Any]]:
    """Capture layer 0 of each modality during a forward (the adapters' ``fusion.stem`` split
    after the ``n_text`` text tokens for VisualBERT; ``text.stem`` / ``vision.stem`` for
    LXMERT): yields a dict that gets ``"text"`` ``[B, T, D]`` and ``"vision"`` ``[B, R, D]``."""
    got: dict[str, Any] = {}
    base = base_of(model)
    handles = []
    if kind == "fusion_single":
        def joint(_m: Any, _args: tuple, output: Any) -> None:
            got["text"], got["vision"] = output[:, :n_text], output[:, n_text:]

        handles.append(base.embeddings.register_forward_hook(joint))
    else:
        handles.append(base.embeddings.register_forward_hook(
            lambda _m, _a, out: got.__setitem__("text", out)))
        handles.append(base.encoder.visn_fc.register_forward_hook(
            lambda _m, _a, out: got.__setitem__("vision", out)))
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


def stem_itc_loss(stems: dict[str, Any], ids: Any, mask: Any, special_ids: list[int],
                  matched: Any, temperature: float) -> Any:
    """Symmetric InfoNCE between the mean text-token and the mean region embedding at layer 0
    of the matched pairs of a batch (CLIP's loss, fixed temperature): "align before fuse"
    (ALBEF) at the inputs, so that the fusion layers start from comparable modalities.
    Text tokens: real, non-special (no [CLS] / [SEP] / [MASK] / padding)."""
    import math

    import torch

    from vlprobe.train.losses import info_nce

    keep = mask.bool() & ~torch.isin(ids, torch.tensor(sorted(special_ids)))
    w = keep.float().unsqueeze(-1)
    text = (stems["text"].float() * w).sum(1) / w.sum(1).clamp(min=1.0)
    vision = stems["vision"].float().mean(1)
    rows = matched & keep.any(1)
    if int(rows.sum()) < 2:
        return text.new_zeros(())
    scale = torch.tensor(math.log(1.0 / temperature))
    return info_nce(vision[rows], text[rows], scale)


def _batch(split: RegionSplit, rows: Any, tokens: list[np.ndarray],
           text: TextSpec) -> tuple[Any, Any, Any]:
    ids, mask = pad_tokens(tokens, text.pad_id)
    return ids, mask, split.regions(rows)


def itm_scores(model: Any, kind: str, split: RegionSplit, pairs: ItmPairs, text: TextSpec,
               batch_size: int) -> np.ndarray:
    """``[P]`` P(match) of every pair (eval mode, no gradient)."""
    import torch

    model.eval()
    # batches of similar caption length pad less (each pair's score does not depend on its
    # batch: padding is masked); the scores are returned in the pairs' order
    order = np.argsort([len(t) for t in pairs.tokens], kind="stable")
    scores = np.zeros(len(pairs), dtype=np.float32)
    with torch.no_grad():
        for s in range(0, len(pairs), batch_size):
            idx = order[s:s + batch_size]
            ids, mask, regions = _batch(split, pairs.image_rows[idx],
                                        [pairs.tokens[i] for i in idx], text)
            _, pooled = encode(model, kind, model_inputs(kind, ids, mask, regions, text))
            scores[idx] = match_probability(model.cls.seq_relationship(pooled), kind)
    return scores


def itm_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """ITM accuracy (P(match) > 0.5 = match) and ROC AUC in percent, and the pair count."""
    from sklearn.metrics import roc_auc_score

    acc = float(np.mean((scores > 0.5) == (labels == 1)))
    auc = float(roc_auc_score(labels, scores)) if len(set(labels.tolist())) == 2 else float("nan")
    return {"itm_acc": 100 * acc, "itm_auc": 100 * auc, "n_pairs": len(labels)}


def mlm_metrics(model: Any, kind: str, split: RegionSplit, pairs: ItmPairs, text: TextSpec,
                batch_size: int, prob: float, seed: int,
                majority_token: int | None = None) -> dict[str, float]:
    """MLM accuracy in percent on the matched pairs of ``pairs`` with a fixed seeded choice of
    ``prob`` of their text tokens, each replaced by [MASK]; with ``majority_token`` also the
    accuracy of always predicting it on the same tokens."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    keep = np.flatnonzero(pairs.labels == 1)
    correct = total = majority = 0
    model.eval()
    with torch.no_grad():
        for s in range(0, len(keep), batch_size):
            idx = keep[s:s + batch_size]
            ids, mask, regions = _batch(split, pairs.image_rows[idx],
                                        [pairs.tokens[i] for i in idx], text)
            masked, labels = mask_tokens(ids, mask, text.special_ids, prob, gen, text.mask_id,
                                         text.vocab_size, bert_mix=False)
            sel = labels != -100
            if not sel.any():
                continue
            states, _ = encode(model, kind, model_inputs(kind, masked, mask, regions, text))
            pred = model.cls.predictions(states[sel]).argmax(-1)
            correct += int((pred == labels[sel]).sum())
            total += int(sel.sum())
            if majority_token is not None:
                majority += int((labels[sel] == majority_token).sum())
    out = {"mlm_acc": 100 * correct / max(total, 1), "n_masked": total}
    if majority_token is not None:
        out["majority_token_acc"] = 100 * majority / max(total, 1)
    return out


def majority_token(split: RegionSplit, special_ids: list[int]) -> int:
    """The most frequent non-special token of the training captions (MLM control)."""
    ids = np.concatenate([c for caps in split.captions for c in caps])
    ids = ids[~np.isin(ids, special_ids)]
    values, counts = np.unique(ids, return_counts=True)
    return int(values[np.argmax(counts)])


def _schedule(total: int, warmup: float) -> Any:
    n_warm = round(warmup * total)

    def factor(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        return max(0.0, (total - step) / max(1, total - n_warm))

    return factor


def train_fusion(model: Any, kind: str, train: RegionSplit, val: RegionSplit,
                 val_pairs: ItmPairs, text: TextSpec, *, objectives: Any, optim: Any,
                 eval_batch_size: int, seed: int, progress: bool = True,
                 ) -> tuple[Any, list[EpochLog], int]:
    """Train ``model`` in place; returns ``(model with the best weights, log, best epoch)``."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(int(seed))
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "LayerNorm" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "LayerNorm" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": optim.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=optim.lr)
    steps_per_epoch = max(1, len(train.captions) // optim.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _schedule(steps_per_epoch * optim.epochs, optim.warmup))
    match = MATCH_CLASS[kind]
    bf16 = optim.precision == "bfloat16"
    log: list[EpochLog] = []
    best, best_state, best_epoch, waited = -np.inf, None, 0, 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))  # dropout only; the caller's RNG state is restored
        for epoch in range(1, optim.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            sums = np.zeros(5)  # loss, itm, mlm, itm correct, itc
            n_pairs = n_steps = 0
            plan = epoch_plan(train, optim.batch_size, gen)
            bar = tqdm(plan, desc=f"{kind} epoch {epoch}/{optim.epochs}", unit="batch",
                       disable=not progress, leave=False)
            for b in bar:
                tokens = [train.captions[i][c] for i, c in zip(b["image_of_caption"],
                                                               b["caption"])]
                ids, mask, regions = _batch(train, b["rows"], tokens, text)
                matched = torch.from_numpy(b["matched"])
                masked, labels = mask_tokens(ids, mask, text.special_ids, objectives.mask_prob,
                                             gen, text.mask_id, text.vocab_size)
                labels[~matched] = -100
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), \
                        stem_capture(model, kind, ids.shape[1]) as stems:
                    states, pooled = encode(model, kind,
                                            model_inputs(kind, masked, mask, regions, text))
                    itm_logits = model.cls.seq_relationship(pooled).float()
                    target = torch.where(matched, match, 1 - match)
                    itm_loss = F.cross_entropy(itm_logits, target)
                    sel = labels != -100
                    mlm_loss = (F.cross_entropy(model.cls.predictions(states[sel]).float(),
                                                labels[sel])
                                if objectives.mlm > 0 and sel.any() else itm_loss.new_zeros(()))
                    itc_loss = (stem_itc_loss(stems, masked, mask, text.special_ids, matched,
                                              objectives.itc_temperature)
                                if objectives.itc > 0 else itm_loss.new_zeros(()))
                    loss = (objectives.itm * itm_loss + objectives.mlm * mlm_loss
                            + objectives.itc * itc_loss)
                opt.zero_grad()
                loss.backward()
                if optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
                opt.step()
                sched.step()
                k = len(b["rows"])
                correct = int((itm_logits.argmax(-1) == target).sum())
                sums += np.array([loss.item() * k, itm_loss.item() * k, mlm_loss.item() * k,
                                  correct, itc_loss.item() * k])
                n_pairs += k
                n_steps += 1
                bar.set_postfix(loss=f"{sums[0] / n_pairs:.3f}",
                                itm_acc=f"{100 * sums[3] / n_pairs:.1f}")
            scores = itm_scores(model, kind, val, val_pairs, text, eval_batch_size)
            val_metrics = itm_metrics(scores, val_pairs.labels)
            log.append(EpochLog(epoch, sums[0] / n_pairs, sums[1] / n_pairs, sums[2] / n_pairs,
                                100 * sums[3] / n_pairs, val_metrics,
                                float(sched.get_last_lr()[0]), time.perf_counter() - t0,
                                n_steps, {"itc_loss": sums[4] / n_pairs}))
            if progress:
                e = log[-1]
                tqdm.write(f"{kind} epoch {epoch}: loss {e.loss:.3f} (itm {e.itm_loss:.3f}, "
                           f"mlm {e.mlm_loss:.3f}), train ITM {e.train_itm_acc:.1f}%, "
                           f"val ITM {val_metrics['itm_acc']:.1f}% ({e.seconds:.0f} s)")
            if val_metrics["itm_acc"] > best:
                best, best_epoch, waited = val_metrics["itm_acc"], epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                waited += 1
                if waited >= optim.patience:
                    break
    model.load_state_dict(best_state)
    model.eval()
    return model, log, best_epoch
