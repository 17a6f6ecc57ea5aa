"""M8: align two frozen towers (LiT-style) with projection heads, a learnable temperature and
CLIP's symmetric InfoNCE loss, on cached tower features.

Protocol (chosen so that no number is tuned on test):

- every epoch visits each training image once, in a seeded random order, paired with one of
  its captions drawn at random (all five captions are used over the epochs);
- after each epoch, image<->text retrieval on the VALIDATION split gives the mean of R@1/5/10
  in both directions; the best epoch's weights are kept, and training stops after
  ``patience`` epochs without improvement;
- the TEST split is touched once, at the end, with the selected weights; the same test
  evaluation of the untrained heads (their seeded initialisation) and chance level are
  recorded as controls.

Everything runs on the CPU in float32 with a local ``torch.Generator``: the same seed gives
the same weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlprobe.metrics.retrieval import recall_at_k, retrieval_ranks
from vlprobe.train.features import PairedFeatures

KS = (1, 5, 10)


@dataclass
class EpochLog:
    epoch: int
    loss: float
    val: dict[str, float]
    logit_scale: float


def retrieval_metrics(heads: Any, feats: PairedFeatures) -> dict[str, float]:
    """``{"i2t_R@1": ..., "t2i_R@10": ..., "mean_R": ...}`` in percent, on one split."""
    import torch

    with torch.no_grad():
        img = heads.embed_image(torch.from_numpy(feats.image)).numpy()
        txt = heads.embed_text(torch.from_numpy(feats.text)).numpy()
    i2t, t2i = retrieval_ranks(img, txt, feats.image_of_text)
    out = {f"i2t_R@{k}": 100 * v for k, v in recall_at_k(i2t, KS).items()}
    out.update({f"t2i_R@{k}": 100 * v for k, v in recall_at_k(t2i, KS).items()})
    out["mean_R"] = float(np.mean(list(out.values())))
    return out


def chance_metrics(feats: PairedFeatures) -> dict[str, float]:
    """Expected Recall@K in percent of a random ranking (5 positives per image count)."""
    n_img, n_txt = len(feats.image), len(feats.text)
    per_image = np.bincount(feats.image_of_text, minlength=n_img)
    out = {}
    for k in KS:
        # P(no positive among K of n_txt) with m positives: C(n-m, K) / C(n, K)
        miss = np.array([_miss(n_txt, int(m), k) for m in per_image])
        out[f"i2t_R@{k}"] = 100 * float(np.mean(1 - miss))
        out[f"t2i_R@{k}"] = 100 * min(k, n_img) / n_img
    out["mean_R"] = float(np.mean(list(out.values())))
    return out


def _miss(n: int, m: int, k: int) -> float:
    p = 1.0
    for i in range(min(k, n)):
        p *= max(n - m - i, 0) / (n - i)
    return p


def _batches(feats: PairedFeatures, batch_size: int, gen: Any) -> list[tuple[Any, Any]]:
    """One epoch: (image rows, caption rows) batches, each image once with a random caption."""
    import torch

    order = torch.randperm(len(feats.image), generator=gen).numpy()
    captions = [np.flatnonzero(feats.image_of_text == i) for i in range(len(feats.image))]
    picks = torch.rand(len(order), generator=gen).numpy()
    chosen = np.array([captions[i][int(p * len(captions[i]))] for i, p in zip(order, picks)])
    return [
        (order[s : s + batch_size], chosen[s : s + batch_size])
        for s in range(0, len(order), batch_size)
        if len(order[s : s + batch_size]) > 1
    ]


def train_aligned_heads(
    train: PairedFeatures, val: PairedFeatures, *, embed_dim: int, kind: str, hidden: int,
    epochs: int, batch_size: int, lr: float, weight_decay: float, patience: int,
    init_temperature: float, seed: int, progress: bool = True, tails: Any = None,
    objective: str = "info_nce", margin: float = 0.1, tail_lr: float | None = None,
) -> tuple[Any, list[EpochLog], int, Any]:
    """Train; returns ``(best heads, per-epoch log, best epoch, initial heads)``.

    ``tails`` (a :class:`~vlprobe.train.tail_inputs.TailSet`, ``unfreeze_last > 0``): the
    last blocks of a tower train with the heads (same optimiser); batches and validation
    features then run through them, ``train`` / ``val`` being the frozen-tower features
    (standardisation statistics, pairing). The best epoch's tail weights are loaded back
    into ``tails``; they learn at ``tail_lr`` (None: ``lr``). None (default): frozen
    towers, features used as given.

    ``objective="devise"``: the DeViSE baseline (Frome et al. 2013; seed 004): only a linear
    map of the image features into the frozen text embedding space trains (``embed_dim`` is
    then the text width, the text head is the identity and stays fixed, as do the text
    standardisation and the temperature), with DeViSE's hinge rank loss
    (:func:`~vlprobe.train.losses.devise_hinge`, ``margin``); the "classes" of an image are
    the captions of its batch (its own caption is the true one)."""
    import copy

    import torch
    from tqdm.auto import tqdm

    from vlprobe.train.heads import aligned_heads, clamp_logit_scale
    from vlprobe.train.losses import devise_hinge, info_nce

    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))  # parameter init only; the global state is restored
        heads = aligned_heads(train.image.shape[1], train.text.shape[1], embed_dim, kind,
                              hidden, init_temperature)
    if objective == "devise":
        _fix_text_side(heads, train)
    else:
        heads.set_standardisation(train.image, train.text)
    initial = copy.deepcopy(heads)
    groups = [{"params": [p for p in heads.parameters() if p.requires_grad]}]
    if tails is not None:
        groups.append({"params": tails.parameters(), "lr": tail_lr or lr})
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    img_all, txt_all = torch.from_numpy(train.image), torch.from_numpy(train.text)
    log: list[EpochLog] = []
    best, best_state, best_epoch, waited = -np.inf, None, 0, 0
    bar = tqdm(range(1, epochs + 1), desc="train aligned heads", unit="epoch",
               disable=not progress)
    for epoch in bar:
        heads.train()
        losses = []
        for rows, caps in _batches(train, batch_size, gen):
            img, txt = ((img_all[rows], txt_all[caps]) if tails is None
                        else tails.batch("train", rows, caps))
            if objective == "devise":
                loss = devise_hinge(heads.embed_image(img), heads.embed_text(txt),
                                    torch.arange(len(rows)), margin)
            else:
                loss = info_nce(heads.embed_image(img), heads.embed_text(txt),
                                heads.logit_scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
            clamp_logit_scale(heads)
            losses.append(float(loss.detach()))
        heads.eval()
        val_metrics = retrieval_metrics(heads, val if tails is None
                                        else tails.paired("validation"))
        log.append(EpochLog(epoch, float(np.mean(losses)), val_metrics,
                            float(heads.logit_scale.detach().exp())))
        bar.set_postfix(loss=f"{log[-1].loss:.3f}", val_mean_R=f"{val_metrics['mean_R']:.1f}")
        if val_metrics["mean_R"] > best:
            best, best_state, best_epoch, waited = (
                val_metrics["mean_R"], copy.deepcopy(heads.state_dict()), epoch, 0)
            best_tails = tails.state() if tails is not None else None
        else:
            waited += 1
            if waited >= patience:
                break
    heads.load_state_dict(best_state)
    if tails is not None:
        tails.load_state(best_tails)
    return heads, log, best_epoch, initial


def _fix_text_side(heads: Any, train: PairedFeatures) -> None:
    """DeViSE: the text side is the frozen text embedding itself (identity head, no
    standardisation, fixed temperature); the image side is standardised and mapped."""
    import torch

    from vlprobe.errors import ConfigError

    d = train.text.shape[1]
    if tuple(heads.text.weight.shape) != (d, d):
        raise ConfigError(f"devise: the image map must land in the text space: head "
                          f"embed_dim must equal the text feature width {d}, got "
                          f"{heads.text.weight.shape[0]} (and head.kind linear)")
    heads.set_standardisation(train.image, train.text)
    with torch.no_grad():
        heads.text.weight.copy_(torch.eye(d))
        heads.text.bias.zero_()
        heads.text_mean.zero_()
        heads.text_std.fill_(1.0)
    for p in (*heads.text.parameters(), heads.logit_scale):
        p.requires_grad_(False)


def timed(fn: Any, *args: Any, **kw: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - start
