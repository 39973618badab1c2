"""CMHH (Cao et al., ECCV 2018): the exponential focal loss against a hand/loop computation, and real training runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import methods.cmhh  # noqa: F401  (registers "cmhh")
from methods.losses.crossmodal import balance_weights, continuous_hamming, exponential_focal_loss
from tests.test_prdh import MARGIN, wikipedia_trial


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_continuous_hamming_is_hamming_on_sign_codes():
    a = torch.tensor([[1.0, 1.0, -1.0, -1.0], [1.0, -1.0, 1.0, -1.0]])
    b = torch.tensor([[1.0, 1.0, -1.0, 1.0], [-1.0, -1.0, 1.0, 1.0]])
    want = torch.tensor([[1.0, 4.0], [3.0, 2.0]])  # number of differing bits
    assert torch.allclose(continuous_hamming(a, b), want, atol=1e-6)
    # scale-invariant: d depends on directions only
    assert torch.allclose(continuous_hamming(0.3 * a, 2 * b), want, atol=1e-6)


def test_exponential_focal_loss_hand_computed():
    # one similar pair at d = 1, one dissimilar pair at d = 2, beta = ln 2 (p = 1/2, 1/4), gamma = 2
    d = torch.tensor([[1.0, 2.0]])
    s = torch.tensor([[1.0, 0.0]])
    beta = math.log(2.0)
    # similar:    -(1 - 1/2)^2 log(1/2)  = 1/4 ln 2
    # dissimilar: -(1/4)^2 log(1 - 1/4) = -(1/16) ln(3/4)
    want_pos, want_neg = 0.25 * math.log(2.0), -(1 / 16) * math.log(0.75)
    got = exponential_focal_loss(d, s, beta=beta, gamma=2.0, reduction="sum")
    assert float(got) == pytest.approx(want_pos + want_neg, rel=1e-6)
    assert float(exponential_focal_loss(d, s, beta=beta, gamma=2.0, reduction="mean")) == pytest.approx((want_pos + want_neg) / 2, rel=1e-6)
    # gamma = 0 is the plain cross-entropy of p = exp(-beta d)
    ce = -math.log(0.5) - math.log(0.75)
    assert float(exponential_focal_loss(d, s, beta=beta, gamma=0.0, reduction="sum")) == pytest.approx(ce, rel=1e-6)


def test_exponential_focal_loss_matches_loop_with_weights():
    rng = np.random.RandomState(1)
    d = rng.uniform(0.05, 16, size=(4, 6))
    s = (rng.rand(4, 6) < 0.3).astype(float)
    s[0, 0], s[0, 1] = 1.0, 0.0
    beta, gamma = 0.4, 2.0
    n_all, n_sim = s.size, s.sum()
    total = 0.0
    for i in range(4):
        for j in range(6):
            p = math.exp(-beta * d[i, j])
            if s[i, j]:
                total += (n_all / n_sim) * -((1 - p) ** gamma) * math.log(p)
            else:
                total += (n_all / (n_all - n_sim)) * -(p**gamma) * math.log(1 - p)
    st = torch.tensor(s)
    got = exponential_focal_loss(torch.tensor(d), st, beta=beta, gamma=gamma, weights=balance_weights(st), reduction="sum")
    assert float(got) == pytest.approx(total, rel=1e-9)


def test_exponential_focal_loss_finite_at_zero_distance():
    d = torch.zeros(1, 2, requires_grad=True)
    loss = exponential_focal_loss(d, torch.tensor([[1.0, 0.0]]), beta=0.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(d.grad).all()


def test_cmhh_beats_random_on_wikipedia_and_is_deterministic(tmp_path, prepared_root):
    params = {"image_hidden": [512], "text_hidden": [512]}
    m, _ = wikipedia_trial(tmp_path, prepared_root, "cmhh", params, bits=16, seed=0, epochs=10)
    for d in ("i2t", "t2i"):
        assert m[f"{d}/map@all"] > m[f"{d}/random/map@all"] + MARGIN, (d, m[f"{d}/map@all"], m[f"{d}/random/map@all"])
    # same seed -> identical packed codes (short runs)
    _, o1 = wikipedia_trial(tmp_path, prepared_root, "cmhh", params, bits=16, seed=1, epochs=2)
    _, o2 = wikipedia_trial(tmp_path, prepared_root, "cmhh", params, bits=16, seed=1, epochs=2)
    for part, by_mod in o1.evaluation.packed.items():
        for mod, arr in by_mod.items():
            assert np.array_equal(arr, o2.evaluation.packed[part][mod]), (part, mod)
