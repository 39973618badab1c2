"""STMH: Semantic Topic Multimodal Hashing (Wang, Gao, Wang, He, IJCAI 2015), unsupervised cross-modal.

Rows are items: ``X`` (n x dx) images, ``T`` (n x dt) texts, ``K`` bits. STMH learns (Sec. 3)

* K semantic **topics** of the texts as cluster centres ``F2`` (dt x K), each text belonging to exactly
  ``K/2`` of them: ``G2`` in {0, 1}^(n x K) with row sums K/2 ("whether a topic is contained in a text");
* K **concepts** of the images by a robust (L2,1) factorisation ``X ~ G1 F1^T`` (``F1``: dx x K);
* a correlation ``R`` (K x K) mapping the image concepts to the text topics, ``G2 ~ G1 R``;

by minimising

    J = r1 sum_i ||x_i - F1 g1_i||_2 + r2 sum_ik G2_ik ||t_i - f2_k||^2 + lam ||G2 - G1 R||^2
        + gamma (||R||^2 + ||G1||^2 + ||F1||^2 + ||F2||^2)

with alternating exact block updates; the L2,1 term is handled by iteratively reweighted least squares
(``d_i = 1 / (2 sqrt(||x_i - F1 g1_i||^2 + eps))``, refreshed at the start of each round: a
majorise-minimise step, so J never increases):

    F1 = X^T D G1 (G1^T D G1 + (gamma/r1) I)^-1,           f2_k = r2 sum_i G2_ik t_i / (r2 n_k + gamma),
    R  = (G1^T G1 + (gamma/lam) I)^-1 G1^T G2,
    g1_i = (r1 d_i x_i F1 + lam g2_i R^T)(r1 d_i F1^T F1 + lam R R^T + gamma I)^-1,
    g2_i = the K/2 topics k of smallest r2 ||t_i - f2_k||^2 + lam (1 - 2 (G1 R)_ik).

Hash codes (unified in {0, 1}, mapped to -1/+1): a text takes its K/2 nearest topics; an image's
concepts ``g1 = x F1 (F1^T F1 + (gamma/r1) I)^-1`` are mapped by ``R`` and thresholded at their median
(half the bits set), as in the public re-implementation's encoders.

Defaults (the public re-implementation of the authors' code in BMC-SDNU/Cross-Modal-Hashing-Retrieval,
STMH/code/demo_STMH.m): ``r1 = r2 = 0.5``, ``lam = 0.5``, ``gamma = 1e-4``, ``iterations = 10``; K/2
active topics; ``G1 ~ N(0, 1)`` and random K/2-hot ``G2`` at the start (seeded). Features are used as
given (not centred), as there.

Deviations: the re-implementation's ``F2`` step solves ``||T - G2 F2^T||^2`` (least squares), which is not
the minimiser of its own clustering objective; we use the exact minimiser above, so that every step is
a descent step of J. The IRLS weights carry no ``r1`` factor (the re-implementation folds it in and then
divides gamma by r1 again). ``eps = 1e-8`` smooths the L2,1 norm.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
from pydantic import Field

from methods.base import ClosedFormMethod, DataInfo, MethodParams
from methods.classic.common import VECTOR_KINDS, batch_vectors, resolve_seed, sq_dists
from methods.registry import register_method
from pipeline.core.errors import MethodError


class STMHParams(MethodParams):
    r1: float = Field(0.5, gt=0, description="weight of the image factorisation (re-implementation: 0.5)")
    r2: float = Field(0.5, gt=0, description="weight of the text clustering (re-implementation: 0.5)")
    lam: float = Field(0.5, gt=0, description="weight of ||G2 - G1 R||^2 (re-implementation: 0.5)")
    gamma: float = Field(1e-4, gt=0, description="weight of the regularisers (re-implementation: 1e-4)")
    iterations: int = Field(10, ge=1, description="alternating rounds (re-implementation: 10)")
    eps: float = Field(1e-8, gt=0, description="smoothing of the L2,1 norm")
    seed: int | None = Field(None, description="seed of the initial G1, G2; None = from the trial-seeded torch RNG")


def stmh_objective(x, t, f1, f2, g1, g2, r, p: STMHParams) -> float:
    e = x - g1 @ f1.T
    robust = np.sqrt((e * e).sum(1) + p.eps).sum()
    cluster = (g2 * sq_dists(t, f2.T)).sum()
    return float(
        p.r1 * robust + p.r2 * cluster + p.lam * ((g2 - g1 @ r) ** 2).sum()
        + p.gamma * sum((a * a).sum() for a in (r, g1, f1, f2))
    )


def stmh_irls_weights(x, f1, g1, eps):
    e = x - g1 @ f1.T
    return 0.5 / np.sqrt((e * e).sum(1) + eps)


def stmh_step_f1(x, g1, dw, p):
    k = g1.shape[1]
    return np.linalg.solve(g1.T @ (dw[:, None] * g1) + (p.gamma / p.r1) * np.eye(k), g1.T @ (dw[:, None] * x)).T


def stmh_step_f2(t, g2, p):
    return (p.r2 * t.T @ g2) / (p.r2 * g2.sum(0) + p.gamma)[None, :]


def stmh_step_r(g1, g2, p):
    k = g1.shape[1]
    return np.linalg.solve(g1.T @ g1 + (p.gamma / p.lam) * np.eye(k), g1.T @ g2)


def stmh_step_g1(x, f1, g2, r, dw, p):
    """Row-wise ``(r1 d_i x_i F1 + lam g2_i R^T)(r1 d_i F1^T F1 + lam R R^T + gamma I)^-1`` by one joint
    diagonalisation of ``A = r1 F1^T F1`` and ``B = lam R R^T + gamma I`` (``B = C C^T``,
    ``C^-1 A C^-T = Q diag(s) Q^T``: ``(d A + B)^-1 = C^-T Q diag(1 / (d s + 1)) Q^T C^-1``)."""
    a = p.r1 * f1.T @ f1
    b = p.lam * r @ r.T + p.gamma * np.eye(r.shape[0])
    c = np.linalg.cholesky(b)
    ci = scipy.linalg.solve_triangular(c, np.eye(len(c)), lower=True)
    s, q = np.linalg.eigh(ci @ a @ ci.T)
    m = ci.T @ q  # (d A + B)^-1 = M diag(1/(d s + 1)) M^T
    rhs = p.r1 * dw[:, None] * (x @ f1) + p.lam * g2 @ r.T
    return ((rhs @ m) / (dw[:, None] * s[None, :] + 1.0)) @ m.T


def stmh_step_g2(t, f2, g1, r, p, active):
    cost = p.r2 * sq_dists(t, f2.T) + p.lam * (1.0 - 2.0 * g1 @ r)
    return top_k_indicator(-cost, active)


def top_k_indicator(score: np.ndarray, k: int) -> np.ndarray:
    """0/1 rows with ones at the k largest scores (ties: lower index first)."""
    order = np.argsort(-score, axis=1, kind="stable")[:, :k]
    out = np.zeros_like(score)
    np.put_along_axis(out, order, 1.0, axis=1)
    return out


def stmh_solve(x, t, bits, p: STMHParams, rng):
    n = len(x)
    active = bits // 2
    g1 = rng.standard_normal((n, bits))
    g2 = np.zeros((n, bits))
    for i in range(n):
        g2[i, rng.permutation(bits)[:active]] = 1.0
    dw = np.ones(n)
    objective = []
    f1 = f2 = r = None
    for _ in range(p.iterations):
        if f1 is not None:
            dw = stmh_irls_weights(x, f1, g1, p.eps)
        f1 = stmh_step_f1(x, g1, dw, p)
        f2 = stmh_step_f2(t, g2, p)
        r = stmh_step_r(g1, g2, p)
        g1 = stmh_step_g1(x, f1, g2, r, dw, p)
        g2 = stmh_step_g2(t, f2, g1, r, p, active)
        objective.append(stmh_objective(x, t, f1, f2, g1, g2, r, p))
    return f1, f2, r, g2, objective


@register_method
class STMH(ClosedFormMethod):
    """Text topics (K/2-of-K clustering), robust image factorisation, a linear map between them."""

    name = "stmh"
    modalities = ("image", "text")
    input_kinds = VECTOR_KINDS
    Params = STMHParams
    paper = "D. Wang, X. Gao, X. Wang, L. He. Semantic Topic Multimodal Hashing for Cross-Media Retrieval. IJCAI 2015."

    def __init__(self, params: STMHParams, info: DataInfo, bits: int) -> None:
        super().__init__(params, info, bits)
        if bits < 2:
            raise MethodError("stmh: needs at least 2 bits (K/2 active topics)")
        self.seed = resolve_seed(params.seed)
        self.register_buffer("f1", torch.zeros(info.modalities["image"].dim, bits))
        self.register_buffer("f2", torch.zeros(info.modalities["text"].dim, bits))
        self.register_buffer("r", torch.zeros(bits, bits))
        self.register_buffer("image_map", torch.zeros(info.modalities["image"].dim, bits))

    def solve(self, features, labels):
        p = self.params
        f1, f2, r, g2, obj = stmh_solve(features["image"], features["text"], self.bits, p, np.random.default_rng(self.seed))
        proj = f1 @ np.linalg.inv(f1.T @ f1 + (p.gamma / p.r1) * np.eye(self.bits))
        self.set_buffer("f1", f1)
        self.set_buffer("f2", f2)
        self.set_buffer("r", r)
        self.set_buffer("image_map", proj @ r)
        self.unified_train_codes = 2.0 * g2 - 1.0  # the training pairs' topic indicators
        return {"objective": obj}

    def encode(self, batch, modality):
        x = batch_vectors(batch, modality)
        if modality == "image":
            g = x @ self.image_map
            srt = g.sort(dim=1).values  # MATLAB's median: the mean of the two middle values for even K
            return g - 0.5 * (srt[:, (self.bits - 1) // 2] + srt[:, self.bits // 2])[:, None]
        f = self.f2
        d = (x * x).sum(1, keepdim=True) + (f * f).sum(0)[None, :] - 2.0 * x @ f
        order = torch.argsort(d, dim=1, stable=True)[:, : self.bits // 2]
        out = -torch.ones_like(d)
        out.scatter_(1, order, 1.0)
        return out
