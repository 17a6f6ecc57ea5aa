"""PGD (V6): the attack's guarantees on small seeded models, a closed-form check on a linear
model, and a step-for-step cross-check of the L∞ iterates against captum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlprobe.analyses.vision.pgd import (
    parse_epsilon,
    perturbation_norm,
    pgd_attack,
    quantize_8bit,
    random_start,
)
from vlprobe.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_cnn(seed: int = 0, k: int = 5) -> torch.nn.Module:
    """A seeded conv net ``[B, 3, 12, 12] -> [B, k]`` (eval mode)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, stride=2), torch.nn.ReLU(),
            torch.nn.Flatten(), torch.nn.Linear(8 * 5 * 5, k))
    with torch.no_grad():  # input-driven logits: larger weights, no biases
        for module in net:
            if hasattr(module, "weight"):
                module.weight *= 3.0
                module.bias.zero_()
    return net.eval()


def images(n: int = 16, seed: int = 1) -> torch.Tensor:
    """``[n, 3, 12, 12]`` in [0, 1]; a quarter of the pixels sit exactly on 0 or 1 so that the
    [0, 1] clipping is exercised."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 12, 12, generator=g)
    edge = torch.rand(n, 3, 12, 12, generator=g) < 0.25
    return torch.where(edge, x.round(), x)


def net_and_data(k: int = 5):
    net = small_cnn(k=k)
    x = images()
    with torch.no_grad():
        y = net(x).argmax(1)  # every item starts correctly classified
    return net, x, y


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_zero_epsilon_leaves_accuracy_unchanged(norm):
    net, x, _ = net_and_data()
    y = torch.arange(len(x)) % 5  # some right, some wrong
    with torch.no_grad():
        clean = net(x).argmax(1)
    res = pgd_attack(net, x, y, norm=norm, epsilon=0.0, steps=5)
    assert torch.equal(res.adversarial, x)
    assert torch.equal(res.prediction, clean)
    assert (res.prediction == y).float().mean() == (clean == y).float().mean()
    assert torch.equal(res.success, clean != y)


@pytest.mark.parametrize("norm,eps", [("linf", 4 / 255), ("linf", 0.3), ("l2", 0.5),
                                      ("l2", 3.0)])
@pytest.mark.parametrize("early_stop", [True, False])
def test_perturbation_within_epsilon_and_pixels_in_range(norm, eps, early_stop):
    net, x, y = net_and_data()
    res = pgd_attack(net, x, y, norm=norm, epsilon=eps, steps=6, restarts=2, seed=3,
                     early_stop=early_stop)
    for out in (res.adversarial, res.final):
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert float(perturbation_norm(out - x, norm).max()) <= eps * (1 + 1e-5) + 1e-7
    start = random_start(x, norm, eps, seed=3, restart=0, item_seeds=range(len(x)))
    assert float(perturbation_norm(start - x, norm).max()) <= eps * (1 + 1e-5) + 1e-7
    # the kept adversarial images are what the model misclassifies
    with torch.no_grad():
        pred = net(res.adversarial).argmax(1)
    assert torch.equal(pred, res.prediction)
    assert torch.equal(res.success, pred != y)


@pytest.mark.parametrize("norm,eps", [("linf", 4 / 255), ("l2", 0.3)])
@pytest.mark.parametrize("early_stop", [True, False])
def test_stronger_attack_never_does_worse(norm, eps, early_stop):
    net, x, y = net_and_data()
    alpha = eps / 4  # a fixed step: more steps continue the same trajectory
    common = {"norm": norm, "epsilon": eps, "step_size": alpha, "seed": 5,
              "early_stop": early_stop}
    weak = pgd_attack(net, x, y, steps=2, restarts=1, **common)
    assert 0 < int(weak.success.sum()) < len(x)  # the comparison below can fail
    for stronger in ({"steps": 6, "restarts": 1}, {"steps": 2, "restarts": 4},
                     {"steps": 6, "restarts": 4}):
        strong = pgd_attack(net, x, y, **stronger, **common)
        assert bool((strong.success | ~weak.success).all()), stronger
        assert int(strong.success.sum()) >= int(weak.success.sum())


def test_random_start_does_not_depend_on_the_batch():
    x = images(6)
    together = random_start(x, "l2", 0.5, seed=2, restart=1, item_seeds=[10, 11, 12, 13, 14, 15])
    alone = torch.cat([random_start(x[i:i + 1], "l2", 0.5, seed=2, restart=1,
                                    item_seeds=[10 + i]) for i in range(6)])
    assert torch.equal(together, alone)
    other_restart = random_start(x, "l2", 0.5, seed=2, restart=2, item_seeds=range(10, 16))
    assert not torch.equal(together, other_restart)


def _linear_binary(d_shape=(3, 8, 8), n=10, seed=0):
    """A linear two-class model ``logits = [0, w.x + b]`` (||w|| = 1) and items placed at
    known margins ``m_i`` along ``w`` (minimal L2 distance to the boundary = ``|m_i|``)."""
    rng = np.random.default_rng(seed)
    d = math.prod(d_shape)
    w = rng.normal(size=d)
    w /= np.linalg.norm(w)
    b = -0.5 * w.sum()
    shifts = rng.uniform(0.1, 0.4, n) * rng.choice([-1, 1], n)
    x = 0.5 + rng.uniform(-0.05, 0.05, (n, d)) + shifts[:, None] * w[None]
    margins = x @ w + b
    wt = torch.as_tensor(w, dtype=torch.float32)

    def logits(px):
        z = px.flatten(1) @ wt + float(b)
        return torch.stack([torch.zeros_like(z), z], dim=1)

    px = torch.as_tensor(x, dtype=torch.float32).view(n, *d_shape)
    labels = torch.as_tensor((margins > 0).astype(np.int64))
    return logits, px, labels, np.abs(margins), w, np.sign(margins)


def test_l2_attack_meets_the_closed_form_minimal_perturbation():
    logits, px, y, dist, w, sign = _linear_binary()
    for i in range(len(px)):
        xi, yi = px[i:i + 1], y[i:i + 1]
        above = pgd_attack(logits, xi, yi, norm="l2", epsilon=1.01 * dist[i], steps=20,
                           random_init=False)
        below = pgd_attack(logits, xi, yi, norm="l2", epsilon=0.99 * dist[i], steps=20,
                           random_init=False)
        assert bool(above.success[0]) and not bool(below.success[0])
        # the failed attack went the full radius along the closed-form direction -sign(m) w
        delta = (below.final - xi).flatten().double().numpy()
        assert np.linalg.norm(delta) == pytest.approx(0.99 * dist[i], rel=1e-4)
        cos = float(delta @ (-sign[i] * w) / np.linalg.norm(delta))
        assert cos > 0.9999
        assert float(logits(below.final)[0, 1]) * sign[i] == pytest.approx(0.01 * dist[i],
                                                                          rel=0.02)


def test_linf_iterates_match_captum():
    captum_pgd = pytest.importorskip("captum.robust").PGD
    net, x, y = net_and_data()
    eps, alpha = 4 / 255, 1 / 255
    for steps in (1, 3, 6):
        ours = pgd_attack(net, x, y, norm="linf", epsilon=eps, steps=steps, step_size=alpha,
                          random_init=False, early_stop=False)
        # captum skips gradients below 1e-6: scaling the loss (not its sign) keeps every step
        theirs = captum_pgd(net, lambda out, t: 1e6 * F.cross_entropy(out, t, reduction="none"),
                            lower_bound=0.0, upper_bound=1.0).perturb(
            x, radius=eps, step_size=alpha, step_num=steps, target=y, norm="Linf")
        assert torch.allclose(ours.final, theirs, atol=1e-6), steps
        with torch.no_grad():
            fooled_at_end = net(theirs).argmax(1) != y
        assert bool((ours.success | ~fooled_at_end).all())


def test_targeted_attack_reaches_its_target():
    net, x, y = net_and_data()
    targets = (y + 1) % 5
    res = pgd_attack(net, x, y, norm="linf", epsilon=0.5, steps=20, targets=targets, seed=1)
    assert res.success.float().mean() > 0.5
    assert torch.equal(res.prediction[res.success], targets[res.success])
    with torch.no_grad():
        assert torch.equal(net(res.adversarial).argmax(1)[res.success], targets[res.success])


def test_quantize_8bit_rounds_to_256_levels():
    x = torch.tensor([0.0, 0.5 / 255, 0.6 / 255, 1.0, 0.3])
    q = quantize_8bit(x)
    assert torch.allclose(q * 255, (q * 255).round())
    assert float((q - x).abs().max()) <= 0.5 / 255 + 1e-7


@pytest.mark.parametrize("value,norm", [(2, "linf"), (-0.1, "linf"), ("300/255", "linf"),
                                        (-1, "l2"), ("abc", "linf"), (float("nan"), "l2"),
                                        (True, "linf"), ("1/0", "linf")])
def test_bad_epsilons_are_config_errors(value, norm):
    with pytest.raises(ConfigError, match="epsilon"):
        parse_epsilon(value, norm, "test")


def test_epsilon_fractions_parse():
    assert parse_epsilon("4/255", "linf", "t") == pytest.approx(4 / 255)
    assert parse_epsilon("0.5/255", "linf", "t") == pytest.approx(0.5 / 255)
    assert parse_epsilon(0.5, "l2", "t") == 0.5
    assert parse_epsilon(5, "l2", "t") == 5.0


def test_bad_attack_inputs_are_clear_errors():
    net, x, y = net_and_data()
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        pgd_attack(net, x * 2 - 0.5, y, epsilon=0.1)
    with pytest.raises(ConfigError, match="diameter"):
        pgd_attack(net, x, y, norm="l2", epsilon=1e3)
    with pytest.raises(ConfigError, match="linf epsilon"):
        pgd_attack(net, x, y, norm="linf", epsilon=1.5)
    with pytest.raises(ConfigError, match="restarts"):
        pgd_attack(net, x, y, epsilon=0.1, restarts=0)
    with pytest.raises(ConfigError, match="norm"):
        pgd_attack(net, x, y, norm="l1", epsilon=0.1)
    with pytest.raises(DataError, match="labels"):
        pgd_attack(net, x, y[:3], epsilon=0.1)
