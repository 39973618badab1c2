"""Loss terms, hash centers and DCMH's closed-form step, checked against hand-worked numbers and plain loops."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from methods.base import DataInfo, ModalitySpec, TrainData
from methods.losses import (
    bernoulli_centers,
    bit_balance_loss,
    center_bce,
    center_bce_with_logits,
    hadamard_centers,
    hamming_distances,
    label_centers,
    logcosh,
    logcosh_quantization,
    make_hash_centers,
    pairwise_nll,
    quantization_loss,
    similarity_from_labels,
    square_quantization,
    sylvester_hadamard,
)

D = torch.float64


def softplus_ref(x: float) -> float:
    return math.log1p(math.exp(x)) if x < 30 else x + math.log1p(math.exp(-x))


# -- pairwise likelihood ------------------------------------------------------------------------
def test_pairwise_nll_hand_case():
    # F rows f1=(1,-1), f2=(1,1); G rows g1=(1,1), g2=(-1,1); Theta = 1/2 F G^T:
    #   f1.g1 = 0, f1.g2 = -2, f2.g1 = 2, f2.g2 = 0  ->  Theta = [[0,-1],[1,0]];  S = I
    # loss = sum softplus(Theta) - S*Theta = ln2 + ln(1+e^-1) + ln(1+e) + ln2 - 0 - 0
    #      = 0.693147 + 0.313262 + 1.313262 + 0.693147 = 3.012818
    f = torch.tensor([[1.0, -1.0], [1.0, 1.0]], dtype=D)
    g = torch.tensor([[1.0, 1.0], [-1.0, 1.0]], dtype=D)
    s = torch.eye(2, dtype=D)
    expected = 2 * math.log(2) + math.log1p(math.exp(-1)) + math.log1p(math.exp(1))
    assert expected == pytest.approx(3.012818, abs=1e-6)
    assert float(pairwise_nll(f, g, s)) == pytest.approx(expected, rel=1e-12)
    assert float(pairwise_nll(f, g, s, reduction="mean")) == pytest.approx(expected / 4, rel=1e-12)


def test_pairwise_nll_matches_python_loops():
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(5, 4, generator=gen, dtype=D)
    g = torch.randn(6, 4, generator=gen, dtype=D)
    s = (torch.rand(5, 6, generator=gen) > 0.5).to(D)
    ref = 0.0
    for i in range(5):
        for j in range(6):
            theta = 0.5 * sum(float(f[i, k]) * float(g[j, k]) for k in range(4))
            ref -= float(s[i, j]) * theta - softplus_ref(theta)
    assert float(pairwise_nll(f, g, s)) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pairwise_nll_stable_at_large_theta(dtype):
    # f = g = (10, 10): f.g = 200, Theta = 100; with f -> -f, Theta = -100.
    f = torch.tensor([[10.0, 10.0], [-10.0, -10.0]], dtype=dtype, requires_grad=True)
    g = torch.tensor([[10.0, 10.0]], dtype=dtype)
    s = torch.tensor([[1.0], [1.0]], dtype=dtype)  # Theta = +100 (similar: ~0 loss), -100 (similar: ~100 loss)
    loss = pairwise_nll(f, g, s)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(f.grad).all()
    assert float(loss.detach()) == pytest.approx(100.0, rel=1e-6)
    # dissimilar pairs: Theta = +100 costs 100, Theta = -100 costs ~0
    loss0 = pairwise_nll(f.detach(), g, torch.zeros_like(s))
    assert float(loss0) == pytest.approx(100.0, rel=1e-6)


def test_similarity_from_labels():
    a = torch.tensor([[1.0, 0, 0], [0, 1, 1]])
    b = torch.tensor([[1.0, 1, 0], [0, 0, 1], [0, 0, 0]])
    assert similarity_from_labels(a, b).tolist() == [[1, 0, 0], [1, 1, 0]]


# -- quantization and balance -------------------------------------------------------------------
def test_quantization_and_balance_hand_case():
    b = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
    f = torch.tensor([[0.5, -2.0], [1.0, 0.0]])
    # ||B - F||^2 = 0.5^2 + 1^2 + 0^2 + 1^2 = 2.25 ; mean over 2 items = 1.125
    assert float(quantization_loss(b, f)) == pytest.approx(2.25)
    assert float(quantization_loss(b, f, reduction="mean")) == pytest.approx(1.125)
    # F^T 1 = (1.5, -2) -> 2.25 + 4 = 6.25 ; with offset (0.5, 1): (2, -1) -> 5
    assert float(bit_balance_loss(f)) == pytest.approx(6.25)
    assert float(bit_balance_loss(f, offset=torch.tensor([0.5, 1.0]))) == pytest.approx(5.0)


# -- CSQ loss terms -----------------------------------------------------------------------------
def test_center_bce_hand_case_and_logits_form():
    # h = (0.5, -0.5), c = (+1, -1): h' = (0.75, 0.25), c' = (1, 0)
    # BCE per bit = -ln 0.75 for both bits -> mean over bits = -ln 0.75 = 0.287682
    h = torch.tensor([[0.5, -0.5]], dtype=D)
    c = torch.tensor([[1.0, -1.0]], dtype=D)
    assert float(center_bce(h, c)) == pytest.approx(-math.log(0.75), rel=1e-9)
    assert float(center_bce_with_logits(torch.atanh(h), c)) == pytest.approx(-math.log(0.75), rel=1e-9)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(7, 16, generator=gen, dtype=D)
    cc = torch.randint(0, 2, (7, 16), generator=gen).to(D) * 2 - 1
    ref = 0.0
    for i in range(7):
        row = 0.0
        for k in range(16):
            p = (math.tanh(float(z[i, k])) + 1) / 2
            t = (float(cc[i, k]) + 1) / 2
            row -= t * math.log(p) + (1 - t) * math.log(1 - p)
        ref += row / 16
    assert float(center_bce(torch.tanh(z), cc, reduction="sum")) == pytest.approx(ref, rel=1e-9)
    assert float(center_bce_with_logits(z, cc)) == pytest.approx(ref / 7, rel=1e-9)


def test_center_bce_stable_when_saturated():
    z = torch.tensor([[100.0, -100.0, 100.0]], requires_grad=True)
    c = torch.tensor([[1.0, -1.0, -1.0]])  # last bit is maximally wrong
    loss = center_bce_with_logits(z, c)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    assert float(loss.detach()) == pytest.approx(200.0 / 3, rel=1e-5)  # BCE with logit 2z = 200 -> 200 on the wrong bit
    assert torch.isfinite(center_bce(torch.tanh(z.detach()), c))  # clamped, finite


def test_logcosh_quantization_hand_case_and_stability():
    # h = (0.5, -1, 0): log cosh(-0.5) + log cosh(0) + log cosh(-1) = 0.120115 + 0 + 0.433781 = 0.553896
    h = torch.tensor([[0.5, -1.0, 0.0]], dtype=D)
    expected = math.log(math.cosh(-0.5)) + 0.0 + math.log(math.cosh(-1.0))
    assert expected == pytest.approx(0.553896, abs=1e-6)
    assert float(logcosh_quantization(h)) == pytest.approx(expected, rel=1e-12)
    # (|h| - 1)^2: 0.25 + 0 + 1
    assert float(square_quantization(h)) == pytest.approx(1.25)
    big = torch.tensor([1000.0, -1000.0])
    assert torch.allclose(logcosh(big), torch.tensor([1000 - math.log(2)] * 2))


# -- hash centers -------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 8, 64])
def test_sylvester_hadamard_is_orthogonal(k):
    h = sylvester_hadamard(k)
    assert torch.equal(h @ h.t(), k * torch.eye(k))


def test_hadamard_centers_distances():
    c = hadamard_centers(10, 16)
    d = hamming_distances(c, c)
    off = ~torch.eye(10, dtype=torch.bool)
    assert torch.all(d[off] == 8)  # exactly K/2 between any two rows of H_K
    c2 = hadamard_centers(20, 16)  # K < C <= 2K: rows of [H_K; -H_K]
    d2 = hamming_distances(c2, c2)[~torch.eye(20, dtype=torch.bool)]
    assert set(d2.tolist()) <= {8.0, 16.0} and (d2 == 16).sum() == 2 * 4  # pairs (h, -h) for rows 0..3
    shuffled = hadamard_centers(10, 16, torch.Generator().manual_seed(3), shuffle=True)
    assert torch.all(hamming_distances(shuffled, shuffled)[off] == 8)


def test_make_hash_centers_paths_and_determinism():
    assert make_hash_centers(10, 16)[1] == "hadamard"
    assert make_hash_centers(32, 16)[1] == "hadamard"
    assert make_hash_centers(33, 16)[1] == "bernoulli"  # C > 2K
    assert make_hash_centers(10, 24)[1] == "bernoulli"  # 24 is not a power of two
    a, _ = make_hash_centers(80, 24, torch.Generator().manual_seed(5), tries=5)
    b, _ = make_hash_centers(80, 24, torch.Generator().manual_seed(5), tries=5)
    c, _ = make_hash_centers(80, 24, torch.Generator().manual_seed(6), tries=5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) == {-1.0, 1.0}
    d = hamming_distances(a, a)[~torch.eye(80, dtype=torch.bool)]
    assert d.min() > 0  # no duplicate centers
    # best-of-tries never has a smaller minimum distance than the first draw alone
    one = bernoulli_centers(80, 24, torch.Generator().manual_seed(5), tries=1)
    assert hamming_distances(one, one)[~torch.eye(80, dtype=torch.bool)].min() <= d.min()


def test_label_centers_multi_label_hand_case():
    centers = torch.tensor([[1.0, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1]])
    tie = torch.tensor([-1.0, -1, -1, -1])
    labels = torch.tensor([[0.0, 1, 0], [1, 1, 0], [1, 1, 1]])
    # row 0: c1 itself
    # row 1: c0 + c1 = (2, 0, 2, 0) -> ties on bits 2, 4 take the tie vector (-1) -> (1, -1, 1, -1)
    # row 2: c0 + c1 + c2 = (3, 1, 1, -1) -> (1, 1, 1, -1)
    out = label_centers(labels, centers, tie)
    assert out.tolist() == [[1, -1, 1, -1], [1, -1, 1, -1], [1, 1, 1, -1]]
    assert label_centers(labels[1:2], centers).tolist() == [[1, 1, 1, 1]]  # default tie -> +1


def test_csq_centers_deterministic_given_the_trial_seed():
    from methods import create_method

    info = DataInfo("t", {"image": ModalitySpec("image", "features", (5,))}, 50, True, 10)
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        m = create_method("csq", {"hidden": []}, info, 24)
        runs.append((m.centers.clone(), m.tie_break.clone()))
    assert m.center_kind == "bernoulli"
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], runs[2][0])
    torch.manual_seed(0)
    fixed_a = create_method("csq", {"hidden": [], "seed": 9}, info, 24).centers
    torch.manual_seed(1)
    fixed_b = create_method("csq", {"hidden": [], "seed": 9}, info, 24).centers
    assert torch.equal(fixed_a, fixed_b)  # an explicit seed ignores the global RNG


# -- DCMH closed-form step and gradient ---------------------------------------------------------
def _dcmh(n=4, bits=3, n_classes=3, **params):
    from methods import create_method

    info = DataInfo(
        "t",
        {"image": ModalitySpec("image", "features", (bits,)), "text": ModalitySpec("text", "features", (bits,))},
        n_classes,
        True,
        n,
    )
    torch.manual_seed(0)
    m = create_method("dcmh", {"image_hidden": [], "text_hidden": [], "init": "random", **params}, info, bits)
    return m, info


def test_dcmh_phases_and_optimizers():
    m, _ = _dcmh()
    assert m.phases(0) == ["image", "text"] and m.phases(7) == ["image", "text"]
    opts = m.configure_optimizers(lambda ps: torch.optim.SGD(ps, lr=0.1))
    assert set(opts) == {"image", "text"}
    ids = {k: {id(p) for g in o.param_groups for p in g["params"]} for k, o in opts.items()}
    assert ids["image"] == {id(p) for p in m.image_net.parameters()}
    assert ids["text"] == {id(p) for p in m.text_net.parameters()}


def test_dcmh_b_update_is_sign_of_f_plus_g():
    m, info = _dcmh(n=6, bits=5)
    labels = torch.eye(3)[[0, 1, 2, 0, 1, 2]]
    m.on_train_start(TrainData(labels=labels, info=info))
    gen = torch.Generator().manual_seed(2)
    m.F_buf.copy_(torch.randn(6, 5, generator=gen))
    m.G_buf.copy_(torch.randn(6, 5, generator=gen))
    m.F_buf[0, 0], m.G_buf[0, 0] = 0.5, -0.5  # exact tie -> +1
    out = m.on_epoch_end(0, TrainData(labels=labels, info=info))
    assert torch.equal(m.B_buf, torch.where(m.F_buf + m.G_buf >= 0, 1.0, -1.0))
    assert m.B_buf[0, 0] == 1.0 and 0.0 <= out["b_changed_fraction"] <= 1.0


def test_dcmh_closed_form_b_minimises_objective_brute_force():
    from methods.dcmh import dcmh_objective, sign_pm1

    gen = torch.Generator().manual_seed(4)
    f = torch.randn(2, 3, generator=gen, dtype=D)
    g = torch.randn(2, 3, generator=gen, dtype=D)
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=D)
    best = None
    for bits in itertools.product([-1.0, 1.0], repeat=6):  # all 64 sign patterns of a 2 x 3 B
        b = torch.tensor(bits, dtype=D).view(2, 3)
        val = float(dcmh_objective(f, g, b, s, gamma=1.0, eta=1.0))
        if best is None or val < best[0] - 1e-12:
            best = (val, b)
    assert torch.equal(best[1], sign_pm1(f + g))


@pytest.mark.parametrize("mode", ["stale", "drift"])
def test_dcmh_gradient_is_the_papers(mode):
    # With the stored rows equal to the current outputs, dJ/dF_i must be (paper, Sec. 3.3):
    #   1/2 sum_j (sigmoid(Theta_ij) G_j - S_ij G_j) + 2 gamma (F_i - B_i) + 2 eta F^T 1
    m, info = _dcmh(n=4, bits=3, gamma=0.7, eta=0.3, normalize=False, balance_f1=mode)
    labels = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1]])
    m.on_train_start(TrainData(labels=labels, info=info))
    m.image_net = torch.nn.Identity()  # so the image "output" is the input we differentiate
    idx = torch.tensor([0, 2])
    x = m.F_buf[idx].clone().requires_grad_(True)
    out = m.training_step({"index": idx, "labels": labels[idx], "image": x}, "image")
    out["loss"].backward()
    F, G, B = m.F_buf.clone(), m.G_buf, m.B_buf
    S = similarity_from_labels(labels, labels)
    theta = 0.5 * F @ G.t()
    expected = torch.stack(
        [
            0.5 * ((torch.sigmoid(theta[i]) - S[i]).unsqueeze(1) * G).sum(0) + 2 * 0.7 * (F[i] - B[i]) + 2 * 0.3 * F.sum(0)
            for i in idx.tolist()
        ]
    )
    assert torch.allclose(x.grad, expected, atol=1e-5)
    assert float(out["loss"].detach()) == pytest.approx(
        float((out["likelihood"] + out["quantization"] + out["balance"]).detach()), rel=1e-6
    )


def test_dcmh_step_stores_the_batch_outputs():
    m, info = _dcmh(n=4, bits=3)
    labels = torch.eye(3)[[0, 1, 2, 0]]
    m.on_train_start(TrainData(labels=labels, info=info))
    before = m.G_buf.clone()
    idx = torch.tensor([1, 3])
    batch = {"index": idx, "labels": labels[idx], "image": torch.randn(2, 3), "text": torch.randn(2, 3)}
    m.training_step(batch, "text")
    with torch.no_grad():
        assert torch.allclose(m.G_buf[idx], m.text_net(batch["text"]))
    assert torch.equal(m.G_buf[[0, 2]], before[[0, 2]])
