"""SCM: Semantic Correlation Maximization (Zhang & Li, AAAI 2014), supervised cross-modal; SCM-orth and SCM-seq.

Notation (rows = items): ``X`` (n x dx) and ``Y`` (n x dy) the two centred modalities, ``L~`` the
binarised labels with rows scaled to unit norm, so that the semantic similarity is
``S~ = 2 L~ L~^T - 1`` (cosine of label vectors mapped to [-1, 1], Sec. 3.1). SCM wants
``sign(X Wx) sign(Y Wy)^T ~ K S~`` (eq. 2) and relaxes it to correlation maximisation. The
cross-modal "semantic covariance" never forms the n x n matrix (Sec. 3.2, the linear-time trick):

    C = K (2 (X^T L~)(Y^T L~)^T - (X^T 1)(Y^T 1)^T)          (dx x dy),

with ``Cxx = X^T X + eps I`` and ``Cyy = Y^T Y + eps I``.

* **SCM-orth** (Sec. 3.3): max tr(Wx^T C Wy) s.t. Wx^T Cxx Wx = Wy^T Cyy Wy = I, i.e. the generalised
  symmetric eigenproblem ``C Cyy^-1 C^T wx = s Cxx wx``; the top-K eigenvectors are Wx and
  ``Wy = Cyy^-1 C^T Wx s^-1/2``.
* **SCM-seq** (Sec. 3.4): bit t solves the same problem with one eigenvector on the residual
  ``C_t``, starting from ``C_1 = C`` and subtracting the part already explained by the learnt bits:
  ``C_{t+1} = C_t - (X^T sign(X wx_t)) (Y^T sign(Y wy_t))^T`` (the term
  ``X^T sign(X wx) sign(Y wy)^T Y`` of the residual ``K S~ - sum_t sign(X wx_t) sign(Y wy_t)^T``).

Hash functions ``sign((x - mean_x) Wx)``, ``sign((y - mean_y) Wy)``.

Defaults: ``eps = 1e-6`` (the authors' code's ridge ``lambda = 1e-6``). SCM has no other
hyperparameter (Sec. 3.4: "no hyper-parameter").

Deviations and choices:
* the eigenproblem is solved on the side of larger dimension (the released code always uses its
  "X" = text side). On Wikipedia (10-d LDA text) a K > 10 code could not be formed from the text side;
  on the 128-d image side SCM-orth still has at most min(dx, dy) = 10 non-zero correlations, so its bits
  beyond 10 are directions of (numerically) zero semantic correlation: that is the method's orthogonality
  limit (the SCM paper's Sec. 3.4 motivation for SCM-seq), kept as is;
* SCM-seq: the released code stops and falls back to CCA projections when an eigenvalue increases
  between bits (rare); we always take the residual's top eigenvector.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
from pydantic import Field

from methods.base import ClosedFormMethod, DataInfo, MethodParams
from methods.classic.common import VECTOR_KINDS, batch_vectors, check_bits, normalized_labels, sign_pm1
from methods.registry import register_method


class SCMParams(MethodParams):
    eps: float = Field(1e-6, gt=0, description="ridge added to X^T X and Y^T Y (authors' code: 1e-6)")


def semantic_cross_cov(x: np.ndarray, y: np.ndarray, labels: np.ndarray, bits: int) -> np.ndarray:
    """``K (2 (X^T L~)(Y^T L~)^T - (X^T 1)(Y^T 1)^T)`` = ``K X^T S~ Y`` without the n x n matrix."""
    lt = normalized_labels(labels)
    return bits * (2.0 * (x.T @ lt) @ (y.T @ lt).T - np.outer(x.sum(0), y.sum(0)))


def scm_eig(c: np.ndarray, cxx: np.ndarray, cyy: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k solutions of ``C Cyy^-1 C^T wx = s Cxx wx``; returns (Wx, Wy, s) with ``Wx^T Cxx Wx = I``."""
    cyy_inv_ct = np.linalg.solve(cyy, c.T)
    a = c @ cyy_inv_ct
    a = 0.5 * (a + a.T)
    dx = a.shape[0]
    s, w = scipy.linalg.eigh(a, cxx, subset_by_index=[dx - k, dx - 1])
    order = np.argsort(-s)
    s, wx = s[order], w[:, order]
    # the 1/sqrt(eigenvalue) scale does not change sign codes; floored so directions beyond the rank of the
    # semantic correlation (eigenvalue ~ 0) stay finite instead of 0/0
    wy = cyy_inv_ct @ wx / np.sqrt(np.maximum(s, 1e-12 * max(float(s.max()), 1.0)))
    return wx, wy, s


def scm_solve(x: np.ndarray, y: np.ndarray, labels: np.ndarray, bits: int, variant: str, eps: float):
    """(Wx, Wy, eigenvalues) for centred ``x``, ``y``."""
    swap = y.shape[1] > x.shape[1]  # eigen-solve on the larger side
    if swap:
        x, y = y, x
    c = semantic_cross_cov(x, y, labels, bits)
    cxx = x.T @ x + eps * np.eye(x.shape[1])
    cyy = y.T @ y + eps * np.eye(y.shape[1])
    if variant == "orth":
        wx, wy, s = scm_eig(c, cxx, cyy, bits)
    else:
        wx = np.zeros((x.shape[1], bits))
        wy = np.zeros((y.shape[1], bits))
        s = np.zeros(bits)
        for t in range(bits):
            a, b, ev = scm_eig(c, cxx, cyy, 1)
            wx[:, t], wy[:, t], s[t] = a[:, 0], b[:, 0], ev[0]
            c = c - np.outer(x.T @ sign_pm1(x @ a[:, 0]), y.T @ sign_pm1(y @ b[:, 0]))
    return (wy, wx, s) if swap else (wx, wy, s)


class _SCM(ClosedFormMethod):
    modalities = ("image", "text")
    input_kinds = VECTOR_KINDS
    Params = SCMParams
    paper = "D. Zhang, W.-J. Li. Large-Scale Supervised Multimodal Hashing with Semantic Correlation Maximization. AAAI 2014."
    variant_name: str = "seq"

    def __init__(self, params: SCMParams, info: DataInfo, bits: int) -> None:
        super().__init__(params, info, bits)
        check_bits(self.name, bits, max(info.modalities[m].dim for m in self.modalities), "the larger input dimension")
        for m in self.modalities:
            d = info.modalities[m].dim
            self.register_buffer(f"mean_{m}", torch.zeros(d))
            self.register_buffer(f"proj_{m}", torch.zeros(d, bits))

    def solve(self, features, labels):
        x, y = (features[m] - features[m].mean(0) for m in self.modalities)
        wx, wy, s = scm_solve(x, y, labels, self.bits, self.variant_name, self.params.eps)
        for m, w in zip(self.modalities, (wx, wy)):
            self.set_buffer(f"mean_{m}", features[m].mean(0))
            self.set_buffer(f"proj_{m}", w)
        return {"eigenvalue": list(s)}

    def encode(self, batch, modality):
        x = batch_vectors(batch, modality)
        return (x - getattr(self, f"mean_{modality}")) @ getattr(self, f"proj_{modality}")


@register_method
class SCMSeq(_SCM):
    """SCM-seq: bits learnt one at a time on the semantic residual."""

    name = "scm-seq"
    variant_name = "seq"


@register_method
class SCMOrth(_SCM):
    """SCM-orth: one generalised eigenproblem for all bits."""

    name = "scm-orth"
    variant_name = "orth"
