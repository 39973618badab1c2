"""The classic baselines (methods/classic): each update step against an independent computation, the
objectives' monotone decrease where the papers prove it, and whole trials on Wikipedia (better than
random codes, identical for a seed, one empty epoch of the shared loop)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch
from threadpoolctl import threadpool_limits

from methods.base import ClosedFormMethod
from methods.classic import cmfh, itq, scm, sdh, seph, stmh
from methods.classic.common import kmeans, normalized_labels, sign_pm1
from methods.registry import create_method, get_method_class
from pipeline.core.errors import MethodError
from pipeline.core.types import DataInfo, ModalitySpec
from pipeline.train.loop import run_trial
from tests.conftest import trial_spec

CROSS = ("cmfh", "scm-orth", "scm-seq", "seph-km", "seph-rnd", "stmh")
IMAGE = ("lsh", "itq", "sdh")


@pytest.fixture(autouse=True)
def one_blas_thread(one_torch_thread):
    with threadpool_limits(1):
        yield


def small_case(seed=0, n=40, d1=6, d2=5, c=3):
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, c, n)
    labels = np.eye(c)[cls]
    x1 = rng.standard_normal((n, d1)) + labels @ rng.standard_normal((c, d1))
    x2 = rng.standard_normal((n, d2)) + labels @ rng.standard_normal((c, d2))
    return rng, x1 - x1.mean(0), x2 - x2.mean(0), labels


def lstsq(a, b):
    return scipy.linalg.lstsq(a, b)[0]


# -- CMFH --------------------------------------------------------------------------------------------
def test_cmfh_steps_are_the_block_least_squares_solutions():
    rng, x1, x2, _ = small_case()
    k, lam, mu, gamma = 4, 0.3, 2.0, 0.1
    v = rng.standard_normal((len(x1), k))
    # U1: min lam ||X1 - V U1||^2 + gamma ||U1||^2  ==  stacked least squares
    want = lstsq(np.vstack([np.sqrt(lam) * v, np.sqrt(gamma) * np.eye(k)]), np.vstack([np.sqrt(lam) * x1, np.zeros((k, x1.shape[1]))]))
    assert np.allclose(cmfh.cmfh_step_u(v, x1, lam, gamma), want, atol=1e-9)
    # P_m: min mu ||V - X P||^2 + gamma ||P||^2
    d = x2.shape[1]
    want = lstsq(np.vstack([np.sqrt(mu) * x2, np.sqrt(gamma) * np.eye(d)]), np.vstack([np.sqrt(mu) * v, np.zeros((d, k))]))
    assert np.allclose(cmfh.cmfh_step_p(x2, v, mu, gamma), want, atol=1e-9)
    # V: every term is ||V A - C||^2: min over V of the sum == least squares on the transposed stack
    u1, u2 = rng.standard_normal((k, x1.shape[1])), rng.standard_normal((k, x2.shape[1]))
    p1, p2 = rng.standard_normal((x1.shape[1], k)), rng.standard_normal((x2.shape[1], k))
    a = np.hstack([np.sqrt(lam) * u1, np.sqrt(1 - lam) * u2, np.sqrt(mu) * np.eye(k), np.sqrt(mu) * np.eye(k), np.sqrt(gamma) * np.eye(k)])
    c = np.hstack([np.sqrt(lam) * x1, np.sqrt(1 - lam) * x2, np.sqrt(mu) * x1 @ p1, np.sqrt(mu) * x2 @ p2, np.zeros((len(x1), k))])
    want = lstsq(a.T, c.T).T
    got = cmfh.cmfh_step_v(x1, x2, u1, u2, p1, p2, lam, mu, gamma)
    assert np.allclose(got, want, atol=1e-8)
    # and it is a minimiser of J in V: the objective's numerical gradient vanishes there
    f = lambda vv: cmfh.cmfh_objective(x1, x2, vv.reshape(got.shape), u1, u2, p1, p2, lam, mu, gamma)
    assert np.abs(scipy.optimize.approx_fprime(got.ravel(), f, 1e-6)).max() < 1e-3


def test_cmfh_objective_never_increases():
    rng, x1, x2, _ = small_case(1)
    *_, obj = cmfh.cmfh_solve(x1, x2, 4, cmfh.CMFHParams(lam=0.5, mu=10.0, gamma=0.01, iterations=15), rng)
    assert all(b <= a * (1 + 1e-12) for a, b in zip(obj, obj[1:]))
    assert obj[-1] < obj[0]


# -- SCM ---------------------------------------------------------------------------------------------
def test_scm_semantic_covariance_without_the_n_by_n_matrix():
    _, x, y, labels = small_case(2)
    labels[0] = [1, 1, 0]  # a multi-label row
    lt = labels / np.linalg.norm(labels, axis=1, keepdims=True)
    s = 2 * lt @ lt.T - 1
    assert np.allclose(scm.semantic_cross_cov(x, y, labels, 8), 8 * x.T @ s @ y)


def test_scm_eigen_step_maximises_the_normalised_correlation():
    rng, x, y, labels = small_case(3)
    c = scm.semantic_cross_cov(x, y, labels, 4)
    cxx, cyy = x.T @ x + 1e-6 * np.eye(x.shape[1]), y.T @ y + 1e-6 * np.eye(y.shape[1])
    wx, wy, s = scm.scm_eig(c, cxx, cyy, 1)

    def neg(w):  # -(wx^T C wy) / sqrt(wx^T Cxx wx * wy^T Cyy wy), maximised by an independent solver
        a, b = w[: x.shape[1]], w[x.shape[1]:]
        return -(a @ c @ b) / np.sqrt((a @ cxx @ a) * (b @ cyy @ b))

    best = min(scipy.optimize.minimize(neg, rng.standard_normal(x.shape[1] + y.shape[1]), method="L-BFGS-B").fun for _ in range(5))
    assert np.isclose(-best, np.sqrt(s[0]), rtol=1e-5)
    assert np.isclose(-neg(np.concatenate([wx[:, 0], wy[:, 0]])), np.sqrt(s[0]), rtol=1e-8)
    assert np.isclose(wx[:, 0] @ cxx @ wx[:, 0], 1.0)


def test_scm_seq_residual_and_orth_constraint():
    _, x, y, labels = small_case(4)
    k = 3
    wx, wy, _ = scm.scm_solve(x, y, labels, k, "seq", 1e-6)
    # bit 2 is the top direction of the explicit residual K X^T S~ Y - X^T sign(X wx1) sign(Y wy1)^T Y
    lt = normalized_labels(labels)
    resid = k * x.T @ (2 * lt @ lt.T - 1) @ y - x.T @ np.outer(sign_pm1(x @ wx[:, 0]), sign_pm1(y @ wy[:, 0])) @ y
    a, b, _ = scm.scm_eig(resid, x.T @ x + 1e-6 * np.eye(x.shape[1]), y.T @ y + 1e-6 * np.eye(y.shape[1]), 1)
    assert np.allclose(np.abs(a[:, 0]), np.abs(wx[:, 1]), atol=1e-6)
    wx, wy, _ = scm.scm_solve(x, y, labels, k, "orth", 1e-6)
    assert np.allclose(wx.T @ (x.T @ x + 1e-6 * np.eye(x.shape[1])) @ wx, np.eye(k), atol=1e-6)


# -- SePH --------------------------------------------------------------------------------------------
def test_seph_objective_matches_hamming_definition_and_gradient():
    rng, _, _, labels = small_case(5, n=12)
    p = seph.pair_distribution(labels)
    k = 6
    h = sign_pm1(rng.standard_normal((12, k)))
    # independent: q from Hamming distances of the +-1 codes, KL by the definition
    ham = (k - h @ h.T) / 2
    w = 1 / (1 + ham)
    np.fill_diagonal(w, 0)
    q = w / w.sum()
    kl = sum(p[i, j] * np.log(p[i, j] / q[i, j]) for i in range(12) for j in range(12) if p[i, j] > 0)
    assert np.isclose(seph.seph_objective(h.ravel(), p, k, 0.3)[0], kl)  # |h| = 1: no quantisation term
    hr = rng.standard_normal((12, k))
    err = scipy.optimize.check_grad(lambda z: seph.seph_objective(z, p, k, 0.3)[0], lambda z: seph.seph_objective(z, p, k, 0.3)[1], hr.ravel())
    assert err < 1e-5 * (1 + np.linalg.norm(seph.seph_objective(hr.ravel(), p, k, 0.3)[1]))


def test_seph_codes_decrease_psi_and_separate_classes():
    rng, _, _, labels = small_case(6, n=60)
    h, hist = seph.seph_codes(labels, 8, 0.01, 100, rng)
    assert min(hist) < 0.5 * hist[0]
    b = sign_pm1(h)
    same = labels @ labels.T > 0
    ham = (8 - b @ b.T) / 2
    assert ham[same].mean() < 0.5 * ham[~same].mean()


def _psi_direct(h_flat, p, bits, alpha_eff):
    """Psi and its gradient by the direct formula, fresh arrays every call (SePH's objective before its
    workspace version; the same floating-point operations in the same order)."""
    n = p.shape[0]
    h = h_flat.reshape(n, bits)
    sq = (h * h).sum(1)
    num = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (h @ h.T), 0.0) * 0.25 + 1.0
    num = 1.0 / num
    np.fill_diagonal(num, 0.0)
    q = np.maximum(num / num.dtype.type(num.sum(dtype=np.float64)), np.finfo(num.dtype).tiny)
    mask = p > 0
    pm = p[mask].astype(np.float64)
    kl = float((pm * (np.log(pm) - np.log(q[mask].astype(np.float64)))).sum())
    dev = np.abs(h) - 1.0
    big_l = (q - p) * num
    grad = (big_l @ h) - big_l.sum(1)[:, None] * h + 2.0 * alpha_eff * dev * np.sign(h)
    return kl + alpha_eff * float((dev * dev).sum()), grad.ravel().astype(h.dtype)


def test_seph_codes_identical_to_the_direct_formula(monkeypatch):
    """The KL step's speed-up (constants of P once, reused buffers) changes no bit of its result."""
    _, _, _, labels = small_case(9, n=70)
    fast_h, fast_hist = seph.seph_codes(labels, 16, 0.01, 60, np.random.default_rng(3))

    class Direct:
        def __init__(self, p, bits, alpha_eff):
            self.args = (p, bits, alpha_eff)

        def __call__(self, h_flat):
            return _psi_direct(h_flat, *self.args)

    monkeypatch.setattr(seph, "KLObjective", Direct)
    ref_h, ref_hist = seph.seph_codes(labels, 16, 0.01, 60, np.random.default_rng(3))
    assert ref_h.dtype == np.float32 and np.array_equal(fast_h, ref_h) and fast_hist == ref_hist
    assert np.array_equal(sign_pm1(fast_h), sign_pm1(ref_h))


def test_seph_klr_matches_an_independent_solver():
    rng, x, _, labels = small_case(7, n=30)
    anchors = kmeans(x, 5, rng, 50)
    phi, phi0 = seph.rbf(x, anchors, 2.0), seph.rbf(anchors, anchors, 2.0)
    targets = sign_pm1(rng.standard_normal((30, 3)))
    w, val = seph.klr_fit(phi, phi0, targets, 0.01, 500)
    for k in range(3):  # bit by bit, Nelder-Mead-free: BFGS on numerical gradients of the plain loss
        f = lambda u: np.logaddexp(0, -targets[:, k] * (phi @ u)).sum() + 0.005 * u @ phi0 @ u
        ref = scipy.optimize.minimize(f, np.zeros(5), method="BFGS", options={"gtol": 1e-8})
        assert f(w[:, k]) <= ref.fun + 1e-6


def test_kmeans_is_lloyd_fixed_point():
    rng, x, _, _ = small_case(8, n=50)
    c = kmeans(x, 4, rng, 100)
    assign = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
    for j in range(4):
        assert np.allclose(c[j], x[assign == j].mean(0))


# -- STMH --------------------------------------------------------------------------------------------
def _stmh_state(seed=9, n=30, k=4):
    rng, x, t, _ = small_case(seed, n=n)
    p = stmh.STMHParams(r1=0.7, r2=0.4, lam=0.6, gamma=0.05)
    g1 = rng.standard_normal((n, k))
    g2 = stmh.top_k_indicator(rng.standard_normal((n, k)), k // 2)
    f1 = rng.standard_normal((x.shape[1], k))
    f2 = rng.standard_normal((t.shape[1], k))
    r = rng.standard_normal((k, k))
    dw = stmh.stmh_irls_weights(x, f1, g1, p.eps)
    return rng, x, t, p, g1, g2, f1, f2, r, dw


def test_stmh_block_steps_against_generic_solutions():
    rng, x, t, p, g1, g2, f1, f2, r, dw = _stmh_state()
    k = g1.shape[1]
    sw = np.sqrt(p.r1 * dw)[:, None]
    want = lstsq(np.vstack([sw * g1, np.sqrt(p.gamma) * np.eye(k)]), np.vstack([sw * x, np.zeros((k, x.shape[1]))])).T
    assert np.allclose(stmh.stmh_step_f1(x, g1, dw, p), want, atol=1e-8)
    want = lstsq(np.vstack([np.sqrt(p.lam) * g1, np.sqrt(p.gamma) * np.eye(k)]), np.vstack([np.sqrt(p.lam) * g2, np.zeros((k, k))]))
    assert np.allclose(stmh.stmh_step_r(g1, g2, p), want, atol=1e-8)
    # F2: gradient of r2 sum G2_ik ||t_i - f_k||^2 + gamma ||F2||^2 vanishes
    f2n = stmh.stmh_step_f2(t, g2, p)
    grad = -2 * p.r2 * (t.T @ g2 - f2n * g2.sum(0)) + 2 * p.gamma * f2n
    assert np.abs(grad).max() < 1e-9
    # G1: row i solves its own ridge system
    got = stmh.stmh_step_g1(x, f1, g2, r, dw, p)
    for i in range(0, len(x), 7):
        a = p.r1 * dw[i] * f1.T @ f1 + p.lam * r @ r.T + p.gamma * np.eye(k)
        assert np.allclose(got[i], np.linalg.solve(a, p.r1 * dw[i] * f1.T @ x[i] + p.lam * r @ g2[i]), atol=1e-8)
    # G2: brute force over every K/2-hot row of the objective's G2 terms
    g2n = stmh.stmh_step_g2(t, f2, g1, r, p, k // 2)
    gr = g1 @ r
    for i in range(0, len(x), 5):
        best = min(
            (p.r2 * sum(((t[i] - f2[:, j]) ** 2).sum() for j in on) + p.lam * ((np.isin(np.arange(k), on) - gr[i]) ** 2).sum(), on)
            for on in itertools.combinations(range(k), k // 2)
        )
        assert set(np.flatnonzero(g2n[i])) == set(best[1])


def test_stmh_objective_never_increases():
    rng, x, t, _ = small_case(10, n=50)
    *_, obj = stmh.stmh_solve(x, t, 6, stmh.STMHParams(iterations=12), rng)
    assert all(b <= a * (1 + 1e-9) for a, b in zip(obj, obj[1:]))


# -- ITQ / SDH / LSH ---------------------------------------------------------------------------------
def test_itq_rotation_is_procrustes_and_loss_never_increases():
    rng, x, _, _ = small_case(11, n=80)
    v = x @ itq.pca(x, 4)
    b = sign_pm1(rng.standard_normal((80, 4)))
    want, _ = scipy.linalg.orthogonal_procrustes(v, b)
    assert np.allclose(itq.itq_rotation_step(v, b), want, atol=1e-10)
    _, losses = itq.itq_solve(v, 30, rng)
    assert all(b2 <= a + 1e-9 for a, b2 in zip(losses, losses[1:]))
    cov = x.T @ x
    w = itq.pca(x, 2)
    assert np.isclose(np.trace(w.T @ cov @ w), np.sort(np.linalg.eigvalsh(cov))[-2:].sum())


def test_sdh_steps_and_dcc_coordinate_optimality():
    rng, x, _, labels = small_case(12, n=25)
    p = sdh.SDHParams(lam=0.5, nu=0.3, delta=0.1)
    phi = seph.rbf(x, x[:6], 3.0)
    phi = phi - phi.mean(0)
    b = sign_pm1(rng.standard_normal((25, 4)))
    k = 4
    want = lstsq(np.vstack([b, np.sqrt(p.lam) * np.eye(k)]), np.vstack([labels, np.zeros((k, labels.shape[1]))]))
    assert np.allclose(sdh.sdh_step_w(b, labels, p.lam), want, atol=1e-9)
    want = lstsq(np.vstack([phi, np.sqrt(p.delta) * np.eye(6)]), np.vstack([b, np.zeros((6, k))]))
    assert np.allclose(sdh.sdh_step_p(phi, b, p.delta), want, atol=1e-8)
    w = sdh.sdh_step_w(b, labels, p.lam)
    proj = sdh.sdh_step_p(phi, b, p.delta)
    nb = sdh.sdh_step_b(b, labels, w, phi @ proj, p.nu, 50)
    j0 = sdh.sdh_objective(phi, labels, nb, w, proj, p)
    assert j0 <= sdh.sdh_objective(phi, labels, b, w, proj, p) + 1e-12
    for i, j in itertools.product(range(25), range(k)):  # no single bit flip lowers J
        fl = nb.copy()
        fl[i, j] *= -1
        assert sdh.sdh_objective(phi, labels, fl, w, proj, p) >= j0 - 1e-9
    *_, obj = sdh.sdh_solve(phi, labels, k, p.model_copy(update={"iterations": 8}), rng)
    assert all(b2 <= a + 1e-9 for a, b2 in zip(obj, obj[1:]))


def _info(kind="features", dims=(8, 5), n_train=30):
    mods = {"image": ModalitySpec("image", kind, (dims[0],)), "text": ModalitySpec("text", "features", (dims[1],))}
    return DataInfo(dataset="toy", modalities=mods, n_classes=3, multi_label=False, n_train=n_train)


def test_lsh_collision_rate_is_one_minus_angle_over_pi():
    torch.manual_seed(0)
    m = create_method("lsh", {"center": False, "seed": 3}, _info(dims=(3, 5)), 20000)
    x = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.5]])
    m.solve({"image": x}, np.eye(3)[[0, 1]])
    h = np.sign(m.encode({"image": torch.tensor(x, dtype=torch.float32)}, "image").numpy())
    theta = np.arccos(x[0] @ x[1] / np.linalg.norm(x[0]) / np.linalg.norm(x[1]))
    assert abs((h[0] == h[1]).mean() - (1 - theta / np.pi)) < 0.015


def test_pixels_refused_and_contract():
    for name in CROSS + IMAGE:
        cls = get_method_class(name)
        assert issubclass(cls, ClosedFormMethod) and cls.trains_by_gradient is False
        with pytest.raises(MethodError, match="pixels"):
            create_method(name, None, _info(kind="pixels"), 16)
    with pytest.raises(MethodError, match="bits"):
        create_method("itq", None, _info(dims=(8, 5)), 16)


# -- whole trials on Wikipedia -----------------------------------------------------------------------
@pytest.mark.parametrize("method", CROSS + IMAGE)
def test_trial_beats_random_codes_and_is_deterministic(method, tmp_path, repo_params, prepared_root):
    bits = 64 if method == "lsh" else 16
    # SePH at its defaults takes ~1 min on a busy 2-core machine: a cheaper solve here (same code path)
    params = {"kl_iterations": 50, "klr_iterations": 50, "n_anchors": 200, "max_train": 800} if method.startswith("seph") else None
    spec = trial_spec(tmp_path, repo_params, method, bits, epochs=30, method_params=params, dataset="wikipedia")
    spec = spec.model_copy(update={"eval": spec.eval.model_copy(update={"index": spec.eval.index.model_copy(update={"kinds": []})})})
    prepared = prepared_root / "data" / "prepared" / "wikipedia"
    a = run_trial(spec, prepared, device="cpu")
    assert len(a.history) == 1  # one empty epoch, whatever train.epochs says
    metrics = a.evaluation.flat_metrics()
    directions = ("i2i",) if method in IMAGE else ("i2t", "t2i")
    for d in directions:
        assert metrics[f"{d}/map@all"] > metrics[f"{d}/random/map@all"] + 0.01, (d, metrics)
    if method in ("cmfh", "seph-rnd", "stmh", "sdh", "lsh"):  # seeded draws: the same seed gives the same numbers
        b = run_trial(spec, prepared, device="cpu")
        assert b.evaluation.flat_metrics() == metrics
