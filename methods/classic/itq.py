"""ITQ: Iterative Quantization on PCA (Gong & Lazebnik, CVPR 2011), unsupervised image hashing (PCA-ITQ).

Centre the data, project on the top-K principal directions (``V = X W_pca``, n x K), then find the
rotation ``R`` (K x K orthogonal) minimising the quantisation loss (Sec. 2.2, eq. 2)

    Q(B, R) = ||B - V R||_F^2,   B in {-1, 1}^(n x K),

alternately: ``B = sign(V R)`` (the exact minimiser for fixed R) and, for fixed B, the orthogonal
Procrustes solution ``R = U W^T`` from the SVD ``V^T B = U S W^T`` (Sec. 2.2). Both steps minimise
Q exactly in their block, so Q never increases. Codes ``sign((x - mean) W_pca R)``.

Defaults: 50 iterations and a random orthogonal start (the paper: "50 iterations"; seeded here).
Requires K <= input dimension.

Deviations: none.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from methods.base import ClosedFormMethod, DataInfo, MethodParams
from methods.classic.common import VECTOR_KINDS, batch_vectors, check_bits, resolve_seed, sign_pm1
from methods.registry import register_method


class ITQParams(MethodParams):
    iterations: int = Field(50, ge=0, description="alternations of B and R (paper: 50)")
    seed: int | None = Field(None, description="seed of the initial rotation; None = drawn from the trial-seeded torch RNG")


def pca(x: np.ndarray, k: int) -> np.ndarray:
    """Top-k principal directions (d x k) of centred ``x``, by decreasing variance, sign-fixed (largest |entry| > 0)."""
    cov = x.T @ x / len(x)
    s, w = np.linalg.eigh(cov)
    w = w[:, np.argsort(-s)[:k]]
    flip = np.sign(w[np.abs(w).argmax(0), np.arange(k)])
    return w * np.where(flip == 0, 1.0, flip)


def itq_rotation_step(v: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin over orthogonal R of ||B - V R||_F^2: R = U W^T with V^T B = U S W^T."""
    u, _, wt = np.linalg.svd(v.T @ b)
    return u @ wt


def itq_solve(v: np.ndarray, iterations: int, rng: np.random.Generator):
    k = v.shape[1]
    r, _ = np.linalg.qr(rng.standard_normal((k, k)))
    losses = []
    for _ in range(iterations):
        b = sign_pm1(v @ r)
        r = itq_rotation_step(v, b)
        losses.append(float(((b - v @ r) ** 2).sum()))
    return r, losses


@register_method
class ITQ(ClosedFormMethod):
    """PCA followed by the learnt rotation that minimises the quantisation loss."""

    name = "itq"
    modalities = ("image",)
    input_kinds = VECTOR_KINDS
    Params = ITQParams
    paper = "Y. Gong, S. Lazebnik. Iterative Quantization: A Procrustean Approach to Learning Binary Codes. CVPR 2011."

    def __init__(self, params: ITQParams, info: DataInfo, bits: int) -> None:
        super().__init__(params, info, bits)
        d = info.modalities["image"].dim
        check_bits(self.name, bits, d, "the input dimension (PCA)")
        self.seed = resolve_seed(params.seed)
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("proj", torch.zeros(d, bits))

    def solve(self, features, labels):
        x = features["image"]
        mean = x.mean(0)
        w = pca(x - mean, self.bits)
        r, losses = itq_solve((x - mean) @ w, self.params.iterations, np.random.default_rng(self.seed))
        self.set_buffer("mean", mean)
        self.set_buffer("proj", w @ r)
        return {"quantization_loss": losses}

    def encode(self, batch, modality):
        x = batch_vectors(batch, modality)
        return (x - self.mean) @ self.proj
