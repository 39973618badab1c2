"""CMFH: Collective Matrix Factorization Hashing (Ding, Guo, Zhou, CVPR 2014), unsupervised cross-modal.

Rows are items here (the paper's matrices are transposed): ``X1`` (n x d1, image) and ``X2`` (n x d2,
text) are centred with the training means, ``V`` (n x K) is the shared latent representation, ``U_m``
(K x d_m) the factor bases and ``P_m`` (d_m x K) the out-of-sample projections. The paper's objective
(Sec. 3, eq. 5; CVPR 2014) is

    J = lam ||X1 - V U1||^2 + (1 - lam) ||X2 - V U2||^2 + mu (||V - X1 P1||^2 + ||V - X2 P2||^2)
        + gamma (||U1||^2 + ||U2||^2 + ||P1||^2 + ||P2||^2 + ||V||^2),

minimised by alternating exact block updates (Sec. 3.2; each is the unique minimiser of a strictly
convex quadratic, so J never increases):

    U1 = (V^T V + (gamma/lam) I)^-1 V^T X1,         U2 = (V^T V + (gamma/(1-lam)) I)^-1 V^T X2,
    V  = (lam X1 U1^T + (1-lam) X2 U2^T + mu (X1 P1 + X2 P2)) (lam U1 U1^T + (1-lam) U2 U2^T + (2 mu + gamma) I)^-1,
    P_m = (X_m^T X_m + (gamma/mu) I)^-1 X_m^T V.

Hash functions (Sec. 3.3): ``h(x_m) = sign((x_m - mean_m) P_m)``; every item is encoded from the
modality being searched (the database's text codes for image queries and vice versa).

Defaults: ``lam = 0.5``, ``mu = 100``, ``gamma = 0.01`` (the paper's Sec. 4.2 setting, also the values in
the authors' released demo, ``alphas = [0.5 0.5]``, ``mu = 100``, ``gamma = 0.01``); ``iterations = 25``
(the released code's fixed count). ``V`` starts as U(0, 1) draws as in the released code, seeded, and
``P_m`` as the P-step's solution for that V.

Deviations: none in the model. The released code (TKDE version) weights the regularisers by the view
weights; we keep the CVPR objective above. Update order U, V, P as in the released code.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from methods.base import ClosedFormMethod, DataInfo, MethodParams
from methods.classic.common import VECTOR_KINDS, batch_vectors, resolve_seed
from methods.registry import register_method


class CMFHParams(MethodParams):
    lam: float = Field(0.5, gt=0, lt=1, description="weight of the image factorisation (1 - lam: text); paper: 0.5")
    mu: float = Field(100.0, gt=0, description="weight of the projection terms ||V - X_m P_m||^2; paper: 100")
    gamma: float = Field(0.01, gt=0, description="weight of the Frobenius regularisers; paper: 0.01")
    iterations: int = Field(25, ge=1, description="alternating rounds (released code: 25)")
    seed: int | None = Field(None, description="seed of the initial V; None = drawn from the trial-seeded torch RNG")


def cmfh_objective(x1, x2, v, u1, u2, p1, p2, lam, mu, gamma) -> float:
    """The CMFH objective J above (plain sums)."""
    return float(
        lam * ((x1 - v @ u1) ** 2).sum()
        + (1 - lam) * ((x2 - v @ u2) ** 2).sum()
        + mu * (((v - x1 @ p1) ** 2).sum() + ((v - x2 @ p2) ** 2).sum())
        + gamma * sum((a**2).sum() for a in (u1, u2, p1, p2, v))
    )


def cmfh_step_u(v, x, weight, gamma):
    k = v.shape[1]
    return np.linalg.solve(v.T @ v + (gamma / weight) * np.eye(k), v.T @ x)


def cmfh_step_v(x1, x2, u1, u2, p1, p2, lam, mu, gamma):
    k = u1.shape[0]
    rhs = lam * x1 @ u1.T + (1 - lam) * x2 @ u2.T + mu * (x1 @ p1 + x2 @ p2)
    lhs = lam * u1 @ u1.T + (1 - lam) * u2 @ u2.T + (2 * mu + gamma) * np.eye(k)
    return np.linalg.solve(lhs, rhs.T).T  # lhs is symmetric


def cmfh_step_p(x, v, mu, gamma):
    d = x.shape[1]
    return np.linalg.solve(x.T @ x + (gamma / mu) * np.eye(d), x.T @ v)


def cmfh_solve(x1, x2, bits, p: CMFHParams, rng: np.random.Generator):
    """Run the alternating updates; returns (P1, P2, V, objective per iteration)."""
    n = x1.shape[0]
    v = rng.random((n, bits))
    p1 = cmfh_step_p(x1, v, p.mu, p.gamma)
    p2 = cmfh_step_p(x2, v, p.mu, p.gamma)
    objective = []
    for _ in range(p.iterations):
        u1 = cmfh_step_u(v, x1, p.lam, p.gamma)
        u2 = cmfh_step_u(v, x2, 1 - p.lam, p.gamma)
        v = cmfh_step_v(x1, x2, u1, u2, p1, p2, p.lam, p.mu, p.gamma)
        p1 = cmfh_step_p(x1, v, p.mu, p.gamma)
        p2 = cmfh_step_p(x2, v, p.mu, p.gamma)
        objective.append(cmfh_objective(x1, x2, v, u1, u2, p1, p2, p.lam, p.mu, p.gamma))
    return p1, p2, v, objective


@register_method
class CMFH(ClosedFormMethod):
    """Collective matrix factorisation with a shared latent space; codes sign(x P_m)."""

    name = "cmfh"
    modalities = ("image", "text")
    input_kinds = VECTOR_KINDS
    Params = CMFHParams
    paper = "G. Ding, Y. Guo, J. Zhou. Collective Matrix Factorization Hashing for Multimodal Data. CVPR 2014."

    def __init__(self, params: CMFHParams, info: DataInfo, bits: int) -> None:
        super().__init__(params, info, bits)
        self.seed = resolve_seed(params.seed)
        for m in self.modalities:
            d = info.modalities[m].dim
            self.register_buffer(f"mean_{m}", torch.zeros(d))
            self.register_buffer(f"proj_{m}", torch.zeros(d, bits))

    def solve(self, features, labels):
        xs = {m: features[m] - features[m].mean(0) for m in self.modalities}
        p1, p2, v, obj = cmfh_solve(xs["image"], xs["text"], self.bits, self.params, np.random.default_rng(self.seed))
        for m, proj in (("image", p1), ("text", p2)):
            self.set_buffer(f"mean_{m}", features[m].mean(0))
            self.set_buffer(f"proj_{m}", proj)
        self.unified_train_codes = v - v.mean(0)  # CMFH's unified codes of the training items: sign(V), V centred
        return {"objective": obj}

    def encode(self, batch, modality):
        x = batch_vectors(batch, modality)
        return (x - getattr(self, f"mean_{modality}")) @ getattr(self, f"proj_{modality}")
