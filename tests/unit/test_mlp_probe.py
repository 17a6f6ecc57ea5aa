"""Batched MLP probes (src/vlprobe/estimators/mlp.py): the stacked training equals one
``nn.Sequential`` + ``torch.optim.AdamW`` per (layer, hidden, weight decay), and a layer's
result does not depend on which layers are trained alongside it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlprobe.analyses._common import fit_standardizer
from vlprobe.errors import AnalysisError
from vlprobe.estimators.mlp import fit_mlp_probe, fit_mlp_probes, group_init

torch.set_num_threads(1)


def _layers(n=240, widths=(6, 6, 4), k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    xs = []
    for li, d in enumerate(widths):
        x = rng.normal(size=(n, d))
        x[:, 0] += (li + 0.5) * (y == 1)  # signal grows with depth
        x[:, 1] += np.sin(3.0 * y) * li
        xs.append(x.astype(np.float32))
    cut = (int(n * 0.6), int(n * 0.8))
    split = [([x[a:b] for x in xs], y[a:b]) for a, b in ((0, cut[0]), cut, (cut[1], n))]
    return split


def _reference(split, layer, hidden, wds, *, lr, max_epochs, patience, batch_size, seed):
    """Per-config nn.Sequential + AdamW with the same init and mini-batch order."""
    (Xtr, ytr), (Xva, yva), (Xte, yte) = split
    m, s = fit_standardizer(Xtr[layer])
    t = [torch.as_tensor(((np.asarray(x[layer], np.float64) - m) / s).astype(np.float32))
         for x in (Xtr, Xva, Xte)]
    ytr_t, yva_t, yte_t = (torch.as_tensor(y) for y in (ytr, yva, yte))
    D, K = t[0].shape[1], len(np.unique(ytr))
    out = []
    for r, wd in enumerate(wds):
        net = torch.nn.Sequential(torch.nn.Linear(D, hidden), torch.nn.ReLU(),
                                  torch.nn.Linear(hidden, K))
        W1, b1, W2, b2 = group_init(seed, layer, hidden, r, D, K)
        with torch.no_grad():
            for p, v in zip(net.parameters(), (W1, b1, W2, b2)):
                p.copy_(v)
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=wd)
        gen = torch.Generator().manual_seed(seed)
        best_loss, best_acc, best_ep, bad, state = np.inf, 0.0, 0, 0, None
        for ep in range(max_epochs):
            perm = torch.randperm(len(ytr_t), generator=gen)
            for start in range(0, len(perm), batch_size):
                bi = perm[start:start + batch_size]
                loss = torch.nn.functional.cross_entropy(net(t[0][bi]), ytr_t[bi])
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                z = net(t[1])
                vloss = float(torch.nn.functional.cross_entropy(z, yva_t))
                acc = float((z.argmax(1) == yva_t).float().mean())
            if vloss < best_loss - 1e-4:
                best_loss, best_acc, best_ep, bad = vloss, acc, ep + 1, 0
                state = {k: v.clone() for k, v in net.state_dict().items()}
            else:
                bad += 1
                if bad >= patience:
                    break
        net.load_state_dict(state)
        with torch.no_grad():
            te = float((net(t[2]).argmax(1) == yte_t).float().mean())
        out.append((best_acc, te, best_ep))
    return out


def test_stacked_training_equals_one_adamw_network_per_config():
    split = _layers()
    kw = {"lr": 1e-2, "max_epochs": 12, "patience": 3, "batch_size": 16, "seed": 5}
    wds = (0.0, 0.5)
    got = fit_mlp_probes(*split, hidden_sizes=(8,), weight_decays=wds, **kw)
    for layer in range(3):
        ref = _reference(split, layer, 8, wds, **kw)
        for r, (va, _te, ep) in enumerate(ref):
            row = got[layer].sweep[r]
            assert row["epochs"] == ep
            assert row["val_accuracy"] == pytest.approx(va, abs=1e-6)
        best = int(np.argmax([va for va, _, _ in ref]))
        assert got[layer].weight_decay == wds[best]
        assert got[layer].test_accuracy == pytest.approx(ref[best][1], abs=1e-6)


def test_a_layer_does_not_depend_on_its_stack_and_is_seeded():
    split = _layers()
    kw = {"hidden_sizes": (4, 8), "weight_decays": (0.0, 1e-2), "max_epochs": 10,
          "patience": 3, "seed": 2}
    together = fit_mlp_probes(*split, **kw)
    again = fit_mlp_probes(*split, **kw)
    assert [r.sweep for r in together] == [r.sweep for r in again]
    (Xtr, ytr), (Xva, yva), (Xte, yte) = split
    alone = fit_mlp_probes(([Xtr[0], Xtr[1]], ytr), ([Xva[0], Xva[1]], yva),
                           ([Xte[0], Xte[1]], yte), **kw)
    for a, b in zip(alone, together[:2]):
        for ra, rb in zip(a.sweep, b.sweep):
            assert ra["epochs"] == rb["epochs"]
            assert ra["val_accuracy"] == pytest.approx(rb["val_accuracy"], abs=1e-6)
    assert len(together) == 3 and len(together[2].sweep) == 4  # the 4-wide layer too
    # the planted signal grows with depth
    assert together[2].test_accuracy > together[0].test_accuracy


def test_mlp_probe_errors_and_unseen_labels():
    (Xtr, ytr), (Xva, yva), (Xte, yte) = _layers(widths=(5,))
    with pytest.raises(AnalysisError, match="at least 2 classes"):
        fit_mlp_probe((Xtr[0], np.zeros(len(ytr), int)), (Xva[0], yva), (Xte[0], yte))
    with pytest.raises(ValueError, match="same"):
        fit_mlp_probes((Xtr, ytr), ([], yva), (Xte, yte))
    # a test label never seen in training is simply never predicted (counted wrong)
    yte_new = yte.copy()
    yte_new[:5] = 99
    res = fit_mlp_probe((Xtr[0], ytr), (Xva[0], yva), (Xte[0], yte_new), max_epochs=3)
    assert 0.0 <= res.test_accuracy <= 1 - 5 / len(yte)


def _multilabel_reference(split, layer, hidden, r, wd, *, lr, max_epochs, patience, batch_size,
                          seed):
    """The former per-config multi-label loop of human_centric (nn.Sequential + AdamW, BCE,
    early stopping on the validation BCE), with group_init's weights instead of global
    seeding: returns the best state's validation and test logits and its epoch."""
    (Xtr, Ytr), (Xva, Yva), (Xte, _) = split
    m, s = fit_standardizer(Xtr[layer])
    t = [torch.as_tensor(((np.asarray(x[layer], np.float64) - m) / s).astype(np.float32))
         for x in (Xtr, Xva, Xte)]
    ytr_t, yva_t = (torch.as_tensor(Y, dtype=torch.float32) for Y in (Ytr, Yva))
    D, K = t[0].shape[1], Ytr.shape[1]
    net = torch.nn.Sequential(torch.nn.Linear(D, hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, K))
    with torch.no_grad():
        for p, v in zip(net.parameters(), group_init(seed, layer, hidden, r, D, K)):
            p.copy_(v)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=wd)
    gen = torch.Generator().manual_seed(seed)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    best_loss, best_ep, bad, state = np.inf, 0, 0, None
    for ep in range(max_epochs):
        perm = torch.randperm(len(ytr_t), generator=gen)
        for start in range(0, len(perm), batch_size):
            bi = perm[start:start + batch_size]
            loss = bce(net(t[0][bi]), ytr_t[bi])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            vloss = float(bce(net(t[1]), yva_t))
        if vloss < best_loss - 1e-4:
            best_loss, best_ep, bad = vloss, ep + 1, 0
            state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    net.load_state_dict(state)
    with torch.no_grad():
        return net(t[1]).numpy(), net(t[2]).numpy(), best_ep


def test_multilabel_stack_equals_one_adamw_network_per_config():
    """The multi-label MLP runs through the same stacked loop as the single-label one, with
    the binary cross-entropy: per config it is the plain nn.Sequential + AdamW loop."""
    from sklearn.metrics import f1_score

    from vlprobe.estimators.mlp import fit_mlp_multilabel_probes

    split = _layers(widths=(6, 4))
    rng = np.random.default_rng(1)
    Ys = []
    for (Xs, y) in split:  # labels: class 1, class 2, and a noisy feature-driven one
        extra = (Xs[0][:, 0] + 0.5 * rng.normal(size=len(y)) > 0.5).astype(np.int64)
        Ys.append(np.stack([(y == 1), (y == 2), extra], axis=1).astype(np.int64))
    ml_split = [(Xs, Y) for (Xs, _), Y in zip(split, Ys)]
    kw = {"lr": 1e-2, "max_epochs": 12, "patience": 3, "batch_size": 16, "seed": 5}
    got = fit_mlp_multilabel_probes(ml_split[0], ml_split[1], ml_split[2][0],
                                    hidden_sizes=(8,), weight_decays=(0.0, 0.5), **kw)
    assert len(got) == 2
    for layer in range(2):
        pred, info = got[layer]
        refs = [_multilabel_reference(ml_split, layer, 8, r, wd, **kw)
                for r, wd in enumerate((0.0, 0.5))]
        f1s = [f1_score(Ys[1], (zva > 0).astype(int), average="samples", zero_division=0)
               for zva, _, _ in refs]
        for row, (_, _, ep), f1 in zip(info["sweep"], refs, f1s):
            assert row["epochs"] == ep
            assert row["val_f1_samples"] == pytest.approx(f1, abs=1e-9)
        best = int(np.argmax(f1s))
        assert info["weight_decay"] == (0.0, 0.5)[best]
        np.testing.assert_array_equal(pred, (refs[best][1] > 0).astype(np.int64))
