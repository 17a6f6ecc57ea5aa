"""The training loop of ``kind: captioner``: a caption decoder on frozen grid features.

Protocol (no number is tuned on test):

- an epoch visits ``captions_per_image`` captions of every training image (a seeded draw per
  epoch; all of them with the default 5), in a seeded order; batches are bucketed by caption
  length (sorted within chunks of 50 batches, then the batches shuffled) so that little
  padding is computed;
- the loss is the mean token cross-entropy (optionally label-smoothed) of teacher forcing:
  input ``[<bos>] + words``, target ``words + [<eos>]``; AdamW with linear warmup over
  ``warmup_steps`` and cosine decay to zero over the planned epochs, gradient-norm clipping;
- after each epoch: the validation loss (teacher-forced token cross-entropy of caption #0
  of every validation image: one caption per image keeps its cost at a fraction of an epoch)
  and the GREEDY captions of every validation image scored against all their references with
  BLEU / ROUGE-L / CIDEr (no METEOR: its Java start costs a minute); the epoch best on
  ``select_on`` is kept and training stops after ``patience`` epochs without improvement;
- the test split is decoded once, afterwards, by :mod:`vlprobe.train.caption_run`.

Seeding: the caller runs this inside ``seeded(seed)`` (dropout draws from torch's global
RNG, restored afterwards); the data order comes from a local ``torch.Generator``. On the CPU
the same seed gives the same weights.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlprobe.errors import DataError

#: buckets: captions are sorted by length within chunks of this many batches
_BUCKET_BATCHES = 50


@dataclass
class CaptionSplit:
    """Frozen grid features and captions of one split (one item per image).

    Attributes:
        grid: ``[N, C*g*g]`` float32 (``grid<g>`` pooling, channel-major; may be a memory map).
        captions: N lists of reference captions.
        image_ids: N image ids; image_digests: their content digests.
    """

    grid: Any
    captions: list[list[str]]
    image_ids: list[str]
    image_digests: list[str]


@dataclass
class EncodedCaptions:
    """Captions of a split as word ids: ``ids[j]`` (no specials) of image ``image_of[j]``."""

    ids: list[list[int]]
    image_of: np.ndarray
    n_truncated: int
    n_unknown_words: int
    n_words: int


@dataclass
class EpochLog:
    epoch: int
    loss: float
    val_loss: float
    val: dict[str, float | None]
    lr: float
    seconds: float
    steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def encode_captions(tokenizer: Any, split: CaptionSplit, max_words: int) -> EncodedCaptions:
    """Word ids of every caption of ``split`` (cut to ``max_words``, counted)."""
    texts = [c for caps in split.captions for c in caps]
    image_of = np.repeat(np.arange(len(split.captions)), [len(c) for c in split.captions])
    if not texts:
        raise DataError("captioner: a split has no captions")
    enc = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    unk = tokenizer.unk_token_id
    return EncodedCaptions(
        ids=[list(ids[:max_words]) for ids in enc], image_of=image_of.astype(np.int64),
        n_truncated=sum(1 for ids in enc if len(ids) > max_words),
        n_unknown_words=sum(ids.count(unk) for ids in enc), n_words=sum(len(i) for i in enc),
    )


def teacher_batch(word_ids: list[list[int]], bos: int, eos: int, pad: int
                  ) -> tuple[Any, Any, Any]:
    """``(input_ids, attention_mask, labels)`` ``[B, T]``: input ``[bos] + words``, labels
    ``words + [eos]`` (-100 at padding), right-padded to the longest caption."""
    import torch

    t = max(len(w) for w in word_ids) + 1
    ids = torch.full((len(word_ids), t), pad, dtype=torch.long)
    labels = torch.full((len(word_ids), t), -100, dtype=torch.long)
    mask = torch.zeros((len(word_ids), t), dtype=torch.long)
    for b, words in enumerate(word_ids):
        n = len(words) + 1
        ids[b, :n] = torch.tensor([bos, *words])
        labels[b, :n] = torch.tensor([*words, eos])
        mask[b, :n] = 1
    return ids, mask, labels


def epoch_batches(enc: EncodedCaptions, n_images: int, per_image: int, batch_size: int,
                  gen: Any) -> list[np.ndarray]:
    """One epoch's batches of caption indexes (see the module doc): ``per_image`` captions
    of each image drawn without replacement, length-bucketed, batch order shuffled."""
    import torch

    by_image: list[list[int]] = [[] for _ in range(n_images)]
    for j, i in enumerate(enc.image_of.tolist()):
        by_image[i].append(j)
    chosen = []
    for caps in by_image:
        if len(caps) <= per_image:
            chosen += caps
        else:
            pick = torch.randperm(len(caps), generator=gen)[:per_image].tolist()
            chosen += [caps[p] for p in sorted(pick)]
    order = np.asarray(chosen)[torch.randperm(len(chosen), generator=gen).numpy()]
    lengths = np.array([len(enc.ids[j]) for j in order])
    batches = []
    chunk = batch_size * _BUCKET_BATCHES
    for s in range(0, len(order), chunk):
        part = order[s : s + chunk]
        part = part[np.argsort(lengths[s : s + chunk], kind="stable")]
        batches += [part[k : k + batch_size] for k in range(0, len(part), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def _grid_batch(decoder: Any, split: CaptionSplit, rows: np.ndarray) -> Any:
    from vlprobe.captioning.decoding import grid_tokens

    uniq, inverse = np.unique(rows, return_inverse=True)  # sorted reads of a memory map
    grid = grid_tokens(np.asarray(split.grid[uniq], dtype=np.float32),
                       decoder.arch["feature_dim"], decoder.arch["grid"])
    return grid[inverse]


def caption_loss(decoder: Any, grid: Any, ids: Any, mask: Any, labels: Any,
                 label_smoothing: float = 0.0, reduction: str = "mean") -> Any:
    """Token cross-entropy of teacher forcing (``sum`` with ``reduction="sum"``)."""
    import torch.nn.functional as F

    logits = decoder(grid, ids, mask)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=-100, label_smoothing=label_smoothing,
                           reduction=reduction)


def mean_loss(decoder: Any, split: CaptionSplit, enc: EncodedCaptions, batch_size: int,
              bos: int, eos: int, pad: int) -> float:
    """Mean token cross-entropy (no smoothing) over every caption of ``split``, eval mode."""
    import torch

    was = decoder.training
    decoder.eval()
    total, n = 0.0, 0
    order = np.argsort([len(w) for w in enc.ids], kind="stable")
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            ids, mask, labels = teacher_batch([enc.ids[j] for j in idx], bos, eos, pad)
            grid = _grid_batch(decoder, split, enc.image_of[idx])
            total += float(caption_loss(decoder, grid, ids, mask, labels, reduction="sum"))
            n += int((labels != -100).sum())
    decoder.train(was)
    return total / max(n, 1)


def validation_scores(decoder: Any, tokenizer: Any, split: CaptionSplit, max_length: int,
                      batch_size: int) -> tuple[dict[str, float | None], list[str]]:
    """Greedy captions of every image of ``split`` and their BLEU / ROUGE-L / CIDEr."""
    from vlprobe.captioning.decoding import decode_grid
    from vlprobe.captioning.metrics import caption_metrics

    texts = decode_grid(decoder, tokenizer, split.grid, max_length=max_length, num_beams=1,
                        batch_size=batch_size)
    scores = caption_metrics(dict(zip(split.image_ids, texts)),
                             dict(zip(split.image_ids, split.captions)), meteor=False)
    return scores.scores, texts


def _improved(value: float | None, best: float | None, select_on: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value < best if select_on == "loss" else value > best


def fit_captioner(
    decoder: Any, tokenizer: Any, train: CaptionSplit, val: CaptionSplit, *, optim: Any,
    decode: Any, max_words: int, seed: int, progress: bool = True,
) -> tuple[Any, list[EpochLog], int, dict[str, Any]]:
    """Train ``decoder`` (in place); returns ``(best decoder, per-epoch log, best epoch,
    info)`` where info holds the encoded-caption counts and the best epoch's validation
    captions."""
    import torch
    from tqdm.auto import tqdm

    from vlprobe.captioning.grid_decoder import BOS_ID, EOS_ID, PAD_ID

    enc_train = encode_captions(tokenizer, train, max_words)
    val_first = CaptionSplit(val.grid, [c[:1] for c in val.captions], val.image_ids,
                             val.image_digests)
    enc_val = encode_captions(tokenizer, val_first, max_words)
    gen = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.AdamW(decoder.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    per_epoch = len(epoch_batches(enc_train, len(train.captions), optim.captions_per_image,
                                  optim.batch_size, torch.Generator().manual_seed(0)))
    total_steps = max(1, per_epoch * optim.epochs)

    def lr_at(step: int) -> float:
        if step < optim.warmup_steps:
            return optim.lr * (step + 1) / optim.warmup_steps
        done = (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps)
        return optim.lr * 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))

    log: list[EpochLog] = []
    best, best_state, best_epoch, best_texts, waited, step = None, None, 0, [], 0, 0
    for epoch in range(1, optim.epochs + 1):
        start = time.perf_counter()
        decoder.train()
        losses, weights = [], []
        batches = epoch_batches(enc_train, len(train.captions), optim.captions_per_image,
                                optim.batch_size, gen)
        bar = tqdm(batches, desc=f"captioner epoch {epoch}/{optim.epochs}", unit="batch",
                   disable=not progress)
        for idx in bar:
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            ids, mask, labels = teacher_batch([enc_train.ids[j] for j in idx], BOS_ID, EOS_ID,
                                              PAD_ID)
            grid = _grid_batch(decoder, train, enc_train.image_of[idx])
            loss = caption_loss(decoder, grid, ids, mask, labels, optim.label_smoothing)
            opt.zero_grad()
            loss.backward()
            if optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(decoder.parameters(), optim.grad_clip)
            opt.step()
            step += 1
            losses.append(float(loss.detach()))
            weights.append(int((labels != -100).sum()))
            bar.set_postfix(loss=f"{np.average(losses[-50:], weights=weights[-50:]):.3f}")
        decoder.eval()
        val_loss = mean_loss(decoder, val_first, enc_val, decode.batch_size, BOS_ID, EOS_ID,
                             PAD_ID)
        val_scores, texts = validation_scores(decoder, tokenizer, val, decode.max_length,
                                              decode.batch_size)
        entry = EpochLog(epoch, float(np.average(losses, weights=weights)), val_loss,
                         val_scores, lr_at(step - 1), time.perf_counter() - start, step)
        log.append(entry)
        value = val_loss if optim.select_on == "loss" else val_scores.get(optim.select_on)
        if progress:
            tqdm.write(f"epoch {epoch}: train loss {entry.loss:.3f}, val loss {val_loss:.3f}, "
                       f"val BLEU-4 {100 * val_scores['BLEU-4']:.1f}, CIDEr "
                       f"{100 * val_scores['CIDEr']:.1f} ({entry.seconds:.0f} s)")
        if _improved(value, best, optim.select_on):
            best, best_epoch, waited, best_texts = value, epoch, 0, texts
            best_state = copy.deepcopy(decoder.state_dict())
        else:
            waited += 1
            if waited >= optim.patience:
                break
    if best_state is None:
        raise DataError(f"captioner: no epoch gave a finite validation {optim.select_on}")
    decoder.load_state_dict(best_state)
    decoder.eval()
    info = {
        "train_captions": _counts(enc_train),
        "validation_captions": _counts(encode_captions(tokenizer, val, max_words)),
        "steps_per_epoch": per_epoch, "best_validation_texts": best_texts,
    }
    return decoder, log, best_epoch, info


def _counts(enc: EncodedCaptions) -> dict[str, Any]:
    return {"n": len(enc.ids), "truncated": enc.n_truncated, "words": enc.n_words,
            "unknown_words": enc.n_unknown_words,
            "unknown_rate": enc.n_unknown_words / max(1, enc.n_words)}
