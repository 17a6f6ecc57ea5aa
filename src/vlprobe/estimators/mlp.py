"""MLP probes (1 hidden layer) for every layer and every sweep value, trained together.

The one MLP training loop of vlprobe's probes: single-label (softmax + cross-entropy,
:func:`fit_mlp_probes`, V1 / T1 / T3 / M7) and multi-label (one sigmoid per label + binary
cross-entropy, :func:`fit_mlp_multilabel_probes`, M7) differ only in the loss and in the
validation score that picks the configuration.

SentEval's probe (Conneau et al. 2018) is a Linear-nonlinearity-Linear classifier whose hidden
size and regularisation are swept on the dev split, with early stopping. Training one small
network per (layer, hidden size, weight decay) one after another is dominated by per-call
overhead on CPU (tiny matrix products, one optimizer per net). Here every layer of the same
width and every weight decay of the same hidden size form ONE stacked network trained with
batched matrix products:

    X [L, B, D] @ W1 [L, D, R*H] -> relu -> [L*R, B, H] @ W2 [L*R, H, K] -> logits [L*R, B, K]

(L layers, R weight decays, H hidden units, K classes). Each of the L*R "groups" has its own
parameters; the loss is the sum of the groups' mean cross-entropies, so every group receives
exactly its own gradient. Adam is elementwise, so one Adam over the stacked tensors equals one
Adam per group; AdamW's decoupled weight decay (``p <- p * (1 - lr * wd)`` before the Adam step,
applied to weights and biases as ``torch.optim.AdamW`` does) is applied per group by hand
because it differs between groups. Early stopping is per group: each keeps the parameters of its
best validation-loss epoch and stops counting after ``patience`` epochs without improvement;
training ends when every group has stopped. This is written here because no library trains
many independent small networks as one batched model (``torch.func.vmap`` over
``functional_call`` does the forward but not per-group optimizer state or early stopping).

Protocol per layer (same as before batching): features standardised with train statistics;
each (hidden, weight decay) config trained on train with early stopping on the dev loss; the
config with the highest dev accuracy (multi-label: dev sample-F1; first in sweep order on
ties) is evaluated once on test. Initial weights and mini-batch order come from local seeded
generators (:func:`group_init`; one shared by all groups for the batch order): the global
torch RNG is neither read nor reset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlprobe.analyses._common import standardize
from vlprobe.estimators.logistic import _encode_labels


@dataclass
class MLPProbeResult:
    """Best MLP probe of one layer: config chosen on val, test accuracy of that model."""

    hidden: int
    weight_decay: float
    val_accuracy: float
    test_accuracy: float
    epochs: int
    sweep: list[dict[str, Any]]
    test_predictions: np.ndarray | None = None  # [N_test] labels (class values)

    def summary(self) -> dict[str, float]:
        """Table columns of this layer's MLP row (``C`` is NaN: no logistic C)."""
        return {"value": float(self.test_accuracy), "C": np.nan,
                "val_accuracy": float(self.val_accuracy), "hidden": self.hidden,
                "weight_decay": self.weight_decay}


# the ``mlp_*`` parameters of the analyses that offer an MLP probe, with these defaults
MLP_PARAM_DEFAULTS: dict[str, Any] = {
    "mlp_hidden": [256],
    "mlp_weight_decay": [0.0, 1e-4, 1e-2],
    "mlp_max_epochs": 100,
    "mlp_patience": 10,
}


def mlp_options(params: dict[str, Any], seed: int, device: str = "cpu") -> dict[str, Any]:
    """:func:`fit_mlp_probes` keyword arguments from an analysis' ``mlp_*`` parameters, the
    seed and the run's torch ``device``."""
    return {"device": device, "hidden_sizes": list(params["mlp_hidden"]),
            "weight_decays": list(params["mlp_weight_decay"]),
            "max_epochs": int(params["mlp_max_epochs"]),
            "patience": int(params["mlp_patience"]), "seed": int(seed)}


def _encode(ytr, yva, yte) -> tuple[np.ndarray, list[np.ndarray]]:
    classes, ytr_idx = _encode_labels(ytr)
    lookup = {c: i for i, c in enumerate(classes.tolist())}
    # labels absent from train get -1: never predicted (count as errors), ignored by the loss
    enc = [np.array([lookup.get(c, -1) for c in np.asarray(y).tolist()], dtype=np.int64)
           for y in (yva, yte)]
    return classes, [ytr_idx, *enc]


def group_init(seed: int, layer: int, hidden: int, r: int, D: int, K: int) -> tuple[Any, ...]:
    """Initial ``(W1 [H, D], b1 [H], W2 [K, H], b2 [K])`` of one network (nn.Linear layout).

    torch.nn.Linear's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from a generator
    seeded by (seed, layer, hidden, weight-decay index) only, so a layer's probe does not
    depend on which other layers are trained in the same stack.
    """
    import torch

    state = np.random.SeedSequence([int(seed), int(layer), int(hidden), int(r)]).generate_state(1)
    gen = torch.Generator().manual_seed(int(state[0]))

    def u(shape, fan_in):
        return (torch.rand(shape, generator=gen) * 2 - 1) / np.sqrt(fan_in)

    return u((hidden, D), D), u((hidden,), D), u((K, hidden), hidden), u((K,), hidden)


def _group_loss(z, target, loss: str):
    """Per-group mean loss of logits ``z [G, B, K]``. ``"ce"``: ``target [B]`` class indices
    (rows with -1, a class unseen in train, are ignored); ``"bce"``: ``target [B, K]`` 0/1."""
    import torch

    if loss == "bce":
        t = target.expand(z.shape[0], -1, -1)
        return torch.nn.functional.binary_cross_entropy_with_logits(
            z, t, reduction="none").mean((1, 2))
    seen = target >= 0
    zz = z[:, seen]
    t = target[seen].expand(zz.shape[0], -1)
    return torch.nn.functional.cross_entropy(zz.transpose(1, 2), t, reduction="none").mean(1)


def _train_stack(X, y, layers: Sequence[int], hidden: int, wds: Sequence[float], n_out: int,
                 *, loss: str, lr: float, max_epochs: int, patience: int, batch_size: int,
                 seed: int) -> dict[str, Any]:
    """Train the L x R stacked networks of one hidden size.

    X: ``(Xtr [L, Ntr, D], Xva [L, Nva, D], Xte [L, Nte, D])`` float32 tensors;
    y: ``(ytr, yva)``: ``[N]`` int64 (``loss="ce"``, -1 = class unseen in train) or ``[N, K]``
    float 0/1 (``loss="bce"``); all on one device, where the networks are trained
    (initialised on the CPU, seeded); layers: the L layers' indexes (they seed the
    initialisation). Returns ``val_logits [L, R, Nva, K]`` and ``test_logits [L, R, Nte, K]``
    of each group's best state (lowest val loss) and ``epochs [L, R]`` (its epoch) as numpy
    arrays on the CPU.
    """
    import torch

    Xtr, Xva, Xte = X
    ytr, yva = y
    L, _, D = Xtr.shape
    R, H, K = len(wds), int(hidden), int(n_out)
    dev = Xtr.device
    inits = [[group_init(seed, layer, H, r, D, K) for r in range(R)] for layer in layers]
    W1 = torch.stack([torch.cat([g[0].T for g in row], 1) for row in inits]).to(dev)
    b1 = torch.stack([torch.cat([g[1] for g in row])[None] for row in inits]).to(dev)
    W2 = torch.stack([g[2].T for row in inits for g in row]).to(dev)
    b2 = torch.stack([g[3][None] for row in inits for g in row]).to(dev)
    for p in (W1, b1, W2, b2):
        p.requires_grad_()
    gen = torch.Generator().manual_seed(int(seed))  # mini-batch order, shared by all groups
    params = [W1, b1, W2, b2]
    opt = torch.optim.Adam(params, lr=lr)
    decay = 1.0 - lr * torch.as_tensor(np.asarray(wds, np.float32), device=dev)  # [R]
    decay1 = decay.repeat_interleave(H).view(1, 1, R * H)  # W1/b1 columns are r-major
    decay2 = decay.repeat(L).view(L * R, 1, 1)

    def logits(x):  # x [L, B, D] -> [L*R, B, K]
        h = torch.relu(torch.baddbmm(b1, x, W1))  # [L, B, R*H]
        B = x.shape[1]
        h = h.view(L, B, R, H).permute(0, 2, 1, 3).reshape(L * R, B, H)
        return torch.baddbmm(b2, h, W2)

    best_loss = torch.full((L * R,), float("inf"), device=dev)
    best_ep = torch.zeros(L * R, dtype=torch.int64, device=dev)
    bad = torch.zeros(L * R, dtype=torch.int64, device=dev)
    best_state = [p.detach().clone() for p in params]
    n = len(ytr)
    for ep in range(max_epochs):
        perm = torch.randperm(n, generator=gen).to(dev)
        for start in range(0, n, batch_size):
            bi = perm[start:start + batch_size]
            batch_loss = _group_loss(logits(Xtr[:, bi]), ytr[bi], loss).sum()
            opt.zero_grad()
            batch_loss.backward()
            with torch.no_grad():  # AdamW: decoupled, per-group weight decay first
                W1.mul_(decay1)
                b1.mul_(decay1)
                W2.mul_(decay2)
                b2.mul_(decay2)
            opt.step()
        with torch.no_grad():
            vloss = _group_loss(logits(Xva), yva, loss)
        active = bad < patience
        improved = active & (vloss < best_loss - 1e-4)
        bad = torch.where(improved, torch.zeros_like(bad), bad + active.long())
        if bool(improved.any()):
            best_loss = torch.where(improved, vloss, best_loss)
            best_ep = torch.where(improved, torch.full_like(best_ep, ep + 1), best_ep)
            g = improved.view(L, R)
            m1 = g.repeat_interleave(H, dim=1).view(L, 1, R * H)
            m2 = improved.view(L * R, 1, 1)
            for keep, p, m in zip(best_state, params, (m1, m1, m2, m2)):
                keep.copy_(torch.where(m, p.detach(), keep))
        if not bool((bad < patience).any()):
            break
    with torch.no_grad():
        for p, keep in zip(params, best_state):
            p.copy_(keep)
        zva, zte = logits(Xva), logits(Xte)
    return {"val_logits": zva.view(L, R, *zva.shape[1:]).cpu().numpy(),
            "test_logits": zte.view(L, R, *zte.shape[1:]).cpu().numpy(),
            "epochs": best_ep.view(L, R).cpu().numpy()}


def _check_layers(Xtr, Xva, Xte) -> None:
    if not len(Xtr) or not (len(Xtr) == len(Xva) == len(Xte)):
        raise ValueError(f"need the same (>= 1) number of layers in train/val/test, got "
                         f"{len(Xtr)}/{len(Xva)}/{len(Xte)}")


def _stacks(Xtr, Xva, Xte, ys, n_out: int, *, loss: str, hidden_sizes, weight_decays,
            lr, max_epochs, patience, batch_size, seed, device="cpu"):
    """Every layer x hidden size x weight decay trained (stacks of equal width) on the torch
    ``device`` (``ys``: ``(ytr, yva)`` tensors already there) -> per layer a list over the
    sweep (hidden-major) of ``(hidden, wd, val_logits, test_logits, epochs)`` (numpy, CPU).
    """
    import torch

    # small training sets still get several updates per epoch
    batch_size = int(min(batch_size, max(16, len(ys[0]) // 8)))
    by_width: dict[int, list[int]] = {}
    for i, x in enumerate(Xtr):
        by_width.setdefault(int(np.asarray(x).shape[1]), []).append(i)
    wds = [float(w) for w in weight_decays]
    out: list[list[tuple[Any, ...]]] = [[] for _ in Xtr]
    for idx in by_width.values():
        # z-scored with each layer's train statistics -> [L, N, D] float32 per split
        z = [standardize(Xtr[i], Xva[i], Xte[i]) for i in idx]
        X = tuple(torch.stack([torch.as_tensor(zi[s]) for zi in z]).to(device) for s in range(3))
        for h in hidden_sizes:
            res = _train_stack(X, ys, idx, h, wds, n_out, loss=loss, lr=lr,
                               max_epochs=max_epochs, patience=patience,
                               batch_size=batch_size, seed=seed)
            for a, layer in enumerate(idx):
                out[layer].extend((int(h), wd, res["val_logits"][a, r], res["test_logits"][a, r],
                                   int(res["epochs"][a, r])) for r, wd in enumerate(wds))
    return out


def fit_mlp_probes(
    train: tuple[Sequence[np.ndarray], np.ndarray],
    val: tuple[Sequence[np.ndarray], np.ndarray],
    test: tuple[Sequence[np.ndarray], np.ndarray],
    *,
    hidden_sizes: Sequence[int] = (256,),
    weight_decays: Sequence[float] = (0.0, 1e-4, 1e-2),
    lr: float = 1e-3,
    max_epochs: int = 100,
    patience: int = 10,
    batch_size: int = 256,
    seed: int = 0,
    device: str = "cpu",
) -> list[MLPProbeResult]:
    """MLP probes of every layer (``train = ([Ntr, D_l] per layer, y [Ntr])`` etc.), batched.

    Layers of equal width train as one stack per hidden size (see the module docstring) on the
    torch ``device``; returns one :class:`MLPProbeResult` per layer, in input order. Seeded:
    the same seed gives the same numbers (on one device).
    """
    import torch

    (Xtr, ytr), (Xva, yva), (Xte, yte) = train, val, test
    _check_layers(Xtr, Xva, Xte)
    classes, enc = _encode(ytr, yva, yte)
    ys = [torch.as_tensor(e, device=device) for e in enc[:2]]
    runs = _stacks(Xtr, Xva, Xte, ys, len(classes), loss="ce", hidden_sizes=hidden_sizes,
                   weight_decays=weight_decays, lr=lr, max_epochs=max_epochs,
                   patience=patience, batch_size=batch_size, seed=seed, device=device)
    results = []
    for sweep_runs in runs:
        sweep = [{"hidden": h, "weight_decay": wd, "epochs": ep,
                  "val_accuracy": float((zva.argmax(-1) == enc[1]).mean())}
                 for h, wd, zva, _zte, ep in sweep_runs]
        best = int(np.argmax([r["val_accuracy"] for r in sweep]))  # first on ties
        pred_idx = sweep_runs[best][3].argmax(-1)
        results.append(MLPProbeResult(
            hidden=sweep[best]["hidden"], weight_decay=sweep[best]["weight_decay"],
            val_accuracy=sweep[best]["val_accuracy"],
            test_accuracy=float((pred_idx == enc[2]).mean()), epochs=sweep[best]["epochs"],
            sweep=sweep, test_predictions=classes[pred_idx]))
    return results


def fit_mlp_multilabel_probes(
    train: tuple[Sequence[np.ndarray], np.ndarray],
    val: tuple[Sequence[np.ndarray], np.ndarray],
    test_X: Sequence[np.ndarray],
    *,
    hidden_sizes: Sequence[int] = (256,),
    weight_decays: Sequence[float] = (0.0, 1e-4, 1e-2),
    lr: float = 1e-3,
    max_epochs: int = 100,
    patience: int = 10,
    batch_size: int = 256,
    seed: int = 0,
    device: str = "cpu",
) -> list[tuple[np.ndarray, dict[str, Any]]]:
    """Multi-label MLP probes: Linear-ReLU-Linear with K sigmoid outputs and binary
    cross-entropy (seed 004 §5.3), trained like :func:`fit_mlp_probes` (early stopping on the
    validation BCE, on the torch ``device``). ``train`` / ``val``: ``(X_layers, Y [N, K] 0/1)``.

    Per layer: (``[N_test, K]`` 0/1 predictions (logit > 0) of the configuration with the
    highest validation sample-F1 (first in sweep order on ties), info: ``hidden``,
    ``weight_decay``, ``val_f1_samples``, ``epochs``, ``sweep``).
    """
    import torch
    from sklearn.metrics import f1_score

    (Xtr, Ytr), (Xva, Yva) = train, val
    _check_layers(Xtr, Xva, test_X)
    ys = [torch.as_tensor(np.asarray(Y), dtype=torch.float32, device=device) for Y in (Ytr, Yva)]
    runs = _stacks(Xtr, Xva, test_X, ys, ys[0].shape[1], loss="bce",
                   hidden_sizes=hidden_sizes, weight_decays=weight_decays, lr=lr,
                   max_epochs=max_epochs, patience=patience, batch_size=batch_size, seed=seed,
                   device=device)
    out = []
    for sweep_runs in runs:
        sweep = [{"hidden": h, "weight_decay": wd, "epochs": ep,
                  "val_f1_samples": float(f1_score(np.asarray(Yva), (zva > 0).astype(np.int64),
                                                   average="samples", zero_division=0))}
                 for h, wd, zva, _zte, ep in sweep_runs]
        best = int(np.argmax([r["val_f1_samples"] for r in sweep]))  # first on ties
        pred = (sweep_runs[best][3] > 0).astype(np.int64)
        out.append((pred, {**sweep[best], "sweep": sweep}))
    return out


def fit_mlp_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    **kwargs: Any,
) -> MLPProbeResult:
    """One layer's MLP probe (``[N, D]`` features); see :func:`fit_mlp_probes`."""
    return fit_mlp_probes(([train[0]], train[1]), ([val[0]], val[1]), ([test[0]], test[1]),
                          **kwargs)[0]


__all__ = [
    "MLP_PARAM_DEFAULTS", "MLPProbeResult", "fit_mlp_multilabel_probes", "fit_mlp_probe",
    "fit_mlp_probes", "mlp_options",
]
