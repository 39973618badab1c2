"""SDH: Supervised Discrete Hashing (Shen, Shen, Liu, Shen, CVPR 2015), supervised image hashing.

Rows are items: ``phi`` (n x m) RBF features of the training images against ``m`` anchors (random
training items), ``phi(x)_j = exp(-||x - a_j||^2 / (2 sigma^2))``, centred with the training mean;
``Y`` (n x C) the labels; ``B`` in {-1, 1}^(n x K); ``W`` (K x C) the linear classifier of the codes;
``F(x) = phi(x) P`` the hash function (``P``: m x K). SDH minimises (eq. 4-5)

    J = ||Y - B W||^2 + lam ||W||^2 + nu ||B - phi P||^2 + nu delta ||P||^2

by alternating exact block steps (Sec. 2.2-2.3):

* G-step  ``W = (B^T B + lam I)^-1 B^T Y``;
* F-step  ``P = (phi^T phi + delta I)^-1 phi^T B`` (eq. 8, with a small ridge ``delta``);
* B-step  by discrete cyclic coordinate descent (DCC, eq. 11-15): with ``Q = Y W^T + nu phi P``, bit k's
  column is ``z = sign(q_k - B' W' v_k)`` (``v_k``: row k of W; ``B'``, ``W'``: the other bits / rows), the
  exact minimiser of J over that column, swept over the bits until no bit changes (at most
  ``dcc_sweeps``).

Every step minimises J over its block, so J never increases. Codes ``sign((phi(x) - mean) P)``.

Defaults: ``m = 1000`` anchors, ``sigma`` = the mean distance from a training item to its nearest anchor,
``lam = 1``, ``nu = 1e-5``, 5 outer iterations, ``B`` started at the sign of N(0, 1) draws (the authors'
released demo and SDH.m); ``delta = 0.01`` (the F-step ridge of the public ports of SDH.m). Seeded.

Deviations: the kernel features are centred (the released code has no bias term); DCC sweeps are capped
at ``dcc_sweeps = 10``.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from methods.base import ClosedFormMethod, DataInfo, MethodParams
from methods.classic.common import VECTOR_KINDS, batch_vectors, rbf, rbf_torch, resolve_seed, sign_pm1, sq_dists
from methods.registry import register_method


class SDHParams(MethodParams):
    n_anchors: int = Field(1000, ge=1, description="RBF anchors (random training items; released demo: 1000)")
    lam: float = Field(1.0, gt=0, description="ridge of the G-step classifier W (released: 1)")
    nu: float = Field(1e-5, gt=0, description="weight of ||B - F(X)||^2 (released: 1e-5)")
    delta: float = Field(0.01, ge=0, description="ridge of the F-step projection P")
    iterations: int = Field(5, ge=1, description="outer G/F/B rounds (released: 5)")
    dcc_sweeps: int = Field(10, ge=1, description="maximum DCC sweeps over the bits per B-step")
    seed: int | None = Field(None, description="seed of the anchors and the initial B; None = from the trial-seeded torch RNG")


def sdh_objective(phi, y, b, w, proj, p: SDHParams) -> float:
    return float(
        ((y - b @ w) ** 2).sum() + p.lam * (w * w).sum() + p.nu * ((b - phi @ proj) ** 2).sum() + p.nu * p.delta * (proj * proj).sum()
    )


def sdh_step_w(b, y, lam):
    return np.linalg.solve(b.T @ b + lam * np.eye(b.shape[1]), b.T @ y)


def sdh_step_p(phi, b, delta):
    g = phi.T @ phi
    g[np.diag_indices_from(g)] += delta
    return np.linalg.solve(g, phi.T @ b)


def sdh_step_b(b, y, w, f, nu, sweeps):
    """DCC: cyclic exact minimisation of ||Y - B W||^2 + nu ||B - F||^2 over each bit column of B."""
    b = b.copy()
    q = y @ w.T + nu * f
    k = b.shape[1]
    for _ in range(sweeps):
        changed = False
        for j in range(k):
            others = np.arange(k) != j
            z = sign_pm1(q[:, j] - b[:, others] @ (w[others] @ w[j]))
            if not np.array_equal(z, b[:, j]):
                changed = True
                b[:, j] = z
        if not changed:
            break
    return b


def sdh_solve(phi, y, bits, p: SDHParams, rng):
    b = sign_pm1(rng.standard_normal((len(phi), bits)))
    objective = []
    proj = None
    for _ in range(p.iterations):
        w = sdh_step_w(b, y, p.lam)
        proj = sdh_step_p(phi, b, p.delta)
        b = sdh_step_b(b, y, w, phi @ proj, p.nu, p.dcc_sweeps)
        objective.append(sdh_objective(phi, y, b, w, proj, p))
    return proj, objective


@register_method
class SDH(ClosedFormMethod):
    """Supervised discrete hashing: codes that a linear classifier reads, learnt bit by bit (DCC)."""

    name = "sdh"
    modalities = ("image",)
    input_kinds = VECTOR_KINDS
    Params = SDHParams
    paper = "F. Shen, C. Shen, W. Liu, H. T. Shen. Supervised Discrete Hashing. CVPR 2015."

    def __init__(self, params: SDHParams, info: DataInfo, bits: int) -> None:
        super().__init__(params, info, bits)
        self.seed = resolve_seed(params.seed)
        self.n_anchors = min(params.n_anchors, int(info.n_train))
        d = info.modalities["image"].dim
        self.register_buffer("anchors", torch.zeros(self.n_anchors, d))
        self.register_buffer("sigma2", torch.ones(()))
        self.register_buffer("phi_mean", torch.zeros(self.n_anchors))
        self.register_buffer("proj", torch.zeros(self.n_anchors, bits))

    def solve(self, features, labels):
        x = features["image"]
        rng = np.random.default_rng(self.seed)
        anchors = x[rng.choice(len(x), size=self.n_anchors, replace=False)]
        sigma = float(np.sqrt(sq_dists(x, anchors).min(1)).mean())
        sigma2 = max(sigma * sigma, 1e-12)
        phi = rbf(x, anchors, sigma2)
        mean = phi.mean(0)
        proj, obj = sdh_solve(phi - mean, labels, self.bits, self.params, rng)
        self.set_buffer("anchors", anchors)
        self.set_buffer("sigma2", np.float64(sigma2))
        self.set_buffer("phi_mean", mean)
        self.set_buffer("proj", proj)
        return {"objective": obj}

    def encode(self, batch, modality):
        x = batch_vectors(batch, modality)
        return (rbf_torch(x, self.anchors, self.sigma2) - self.phi_mean) @ self.proj
