"""SePH: Semantics-Preserving Hashing for cross-view retrieval (Lin, Ding, Hu, Wang, CVPR 2015); SePH_rnd, SePH_km.

1. **Codes of the training items** (Sec. 3.1-3.2). The semantic affinities ``A_ij`` (cosine of the label
   vectors; 1/0 for single-label data) become a distribution ``P`` over pairs (``p_ij = A_ij / sum_{k != l} A_kl``,
   i != j). Relaxed codes ``H`` (n x K) give a second one through the Hamming distance
   ``d_ij = 1/4 ||h_i - h_j||^2`` (which equals the Hamming distance for ``h`` in {-1, 1}^K):
   ``q_ij = (1 + d_ij)^-1 / sum_{k != l} (1 + d_kl)^-1``. SePH minimises (eq. 4-6)

       Psi(H) = KL(P || Q) + alpha / (K n) * || |H| - 1 ||^2,

   the second term pulling ``H`` towards {-1, 1} (the released code passes ``alpha / bits / n`` with
   ``alpha = 0.01``). Its gradient (t-SNE's, with the 1/4 scale) is
   ``dKL/dh_i = sum_j (p_ij - q_ij)(1 + d_ij)^-1 (h_i - h_j)`` and ``2 alpha' (|h| - 1) sign(h)``.
   Training codes: ``B = sign(H)``.
2. **Hash functions** (Sec. 3.3): per view and per bit, kernel logistic regression on RBF features
   against ``m = 500`` anchors, ``phi(x) = exp(-||x - a_j||^2 / (2 sigma^2))`` with ``sigma^2`` the mean
   squared distance between training items of that view: minimise
   ``sum_i log(1 + exp(-b_ik phi(x_i) w_k)) + C/2 w_k^T Phi0 w_k`` (``Phi0``: the anchors' kernel
   matrix, ``C = 0.01`` as in the released code). The anchors are random training items (**SePH_rnd**)
   or k-means centres (**SePH_km**, MATLAB-style k-means from random items, 100 iterations).
   A query's code in one view is ``sign(phi(x) W)``.

Defaults: ``alpha = 0.01``, ``m = 500``, ``C = 0.01`` (released code); the paper reports SePH_km as the
stronger variant.

Cost: the KL step is 100 iterations of ~20 passes over n x n float32 arrays (n = 2,173 on Wikipedia);
:class:`KLObjective` computes P's constants once and reuses its work arrays, bitwise the same results as
the direct formula (``tests/test_classic.py``; ``benchmarks/seph_bench.py`` fingerprints the codes).

Deviations:
* none in the optimiser: Psi is minimised as in the released code (t-SNE's gradient descent with
  momentum 0.5, learning rate 500 and adaptive gains, 100 iterations from ``H ~ 1e-4 N(0, 1)``, the
  best iterate kept);
* the kernel logistic regressions run L-BFGS (scipy) for at most 200 iterations from the kernel ridge
  regression of the codes, where the released code runs minFunc's L-BFGS from zero (at most 500
  iterations). Same convex objective and minimiser; on Wikipedia (16 bits, image view) the ridge start
  alone is already below minFunc-style 500 iterations from zero (19,652 vs 20,784) and 200 iterations
  reach 18,760, in a quarter of the time;
* codes and hash functions are learnt on at most ``max_train = 5000`` training items (a seeded subset;
  the n x n matrices of the KL step are dense): all of Wikipedia's 2,173;
* database items are encoded from the one view being searched (the evaluator compares query codes of one
  modality with database codes of the other); the paper's unified code for a database item with both
  views (combining the two views' predicted probabilities, Sec. 3.4) is not used.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
import scipy.special
import torch
from pydantic import Field

from methods.base import ClosedFormMethod, DataInfo, MethodParams
from methods.classic.common import VECTOR_KINDS, batch_vectors, kmeans, normalized_labels, rbf, rbf_torch, resolve_seed, sign_pm1
from methods.registry import register_method


class SePHParams(MethodParams):
    alpha: float = Field(0.01, ge=0, description="quantisation weight, applied as alpha / (K n) (released code: 0.01)")
    n_anchors: int = Field(500, ge=1, description="anchors of the RBF kernel features per view (released code: 500)")
    klr_c: float = Field(0.01, gt=0, description="weight C of the kernel logistic regression's regulariser (released code: 0.01)")
    kl_iterations: int = Field(100, ge=1, description="gradient-descent iterations on the KL objective (released code: 100)")
    klr_iterations: int = Field(200, ge=1, description="L-BFGS iterations of the kernel logistic regression (from the kernel ridge start)")
    kmeans_iterations: int = Field(100, ge=1, description="k-means iterations of SePH_km (released code: 100)")
    max_train: int = Field(5000, ge=2, description="training items used in the KL step (a seeded subset beyond this)")
    seed: int | None = Field(None, description="seed of H's start, the anchors and the subset; None = from the trial-seeded torch RNG")


def pair_distribution(labels: np.ndarray) -> np.ndarray:
    """P: label-cosine affinities with a zero diagonal, normalised to sum 1."""
    lt = normalized_labels(labels)
    p = lt @ lt.T
    np.fill_diagonal(p, 0.0)
    total = p.sum()
    if total <= 0:
        raise ValueError("SePH: no two training items share a label")
    return p / total


class KLObjective:
    """Psi(H) and its gradient for a fixed P, with the constants of P computed once and the n x n work
    arrays reused across calls (the KL step's cost is passes over n x n arrays and page faults of fresh
    ones). Every value is computed by the same floating-point operations in the same order as the direct
    formula, so the results are bitwise the ones of a one-off evaluation."""

    def __init__(self, p: np.ndarray, bits: int, alpha_eff: float) -> None:
        self.p, self.bits, self.alpha_eff = p, bits, alpha_eff
        self.support = np.flatnonzero(p > 0)  # row-major, as boolean indexing orders them
        self.pm = p.ravel()[self.support].astype(np.float64)
        self.log_pm = np.log(self.pm)
        self._num = np.empty_like(p)
        self._q = np.empty_like(p)
        self._tiny = np.finfo(p.dtype).tiny

    def __call__(self, h_flat: np.ndarray) -> tuple[float, np.ndarray]:
        n = self.p.shape[0]
        h = h_flat.reshape(n, self.bits)
        num, q = self._num, self._q
        sq = (h * h).sum(1)
        np.add(sq[:, None], sq[None, :], out=num)
        np.matmul(h, h.T, out=q)  # h @ h.T as the direct formula computes it (numpy's syrk path)
        q *= 2.0  # exact
        num -= q
        np.maximum(num, 0.0, out=num)
        num *= 0.25
        num += 1.0
        np.reciprocal(num, out=num)
        np.fill_diagonal(num, 0.0)
        z = num.sum(dtype=np.float64)
        np.divide(num, num.dtype.type(z), out=q)
        np.maximum(q, self._tiny, out=q)
        log_q = np.log(q.ravel().take(self.support).astype(np.float64))
        kl = float((self.pm * (self.log_pm - log_q)).sum())
        dev = np.abs(h) - 1.0
        value = kl + self.alpha_eff * float((dev * dev).sum())
        q -= self.p
        q *= num  # (q - p) * num = -L
        grad = (q @ h) - q.sum(1)[:, None] * h + 2.0 * self.alpha_eff * dev * np.sign(h)
        return value, grad.ravel().astype(h.dtype)


def seph_objective(h_flat: np.ndarray, p: np.ndarray, bits: int, alpha_eff: float) -> tuple[float, np.ndarray]:
    """(Psi(H), dPsi/dH flattened) for ``H = h_flat.reshape(n, bits)``."""
    return KLObjective(p, bits, alpha_eff)(h_flat)


def seph_codes(labels: np.ndarray, bits: int, alpha: float, iterations: int, rng: np.random.Generator):
    """Minimise Psi as the released code does (t-SNE's gradient descent: momentum 0.5, learning rate 500,
    delta-bar-delta gains with floor 0.01, columns re-centred after each step, the best iterate kept).
    Returns (relaxed H, Psi at the start and after every iteration)."""
    p = pair_distribution(labels).astype(np.float32)  # float32: the n x n passes dominate the cost
    n = p.shape[0]
    h = (1e-4 * rng.standard_normal((n, bits))).astype(np.float32)
    objective = KLObjective(p, bits, alpha / (bits * n))
    incs = np.zeros_like(h)
    gains = np.ones_like(h)
    value, grad = objective(h.ravel())
    history = [value]
    best, best_h = value, h.copy()
    for _ in range(iterations):
        grad = grad.reshape(n, bits)
        same = np.sign(grad) == np.sign(incs)
        gains = np.maximum(np.where(same, gains * 0.8, gains + 0.2), 0.01)
        incs = 0.5 * incs - 500.0 * gains * grad
        h = h + incs
        h = h - h.mean(0)
        value, grad = objective(h.ravel())
        history.append(value)
        if value < best:
            best, best_h = value, h.copy()
    return best_h, history


def klr_objective(w_flat, phi, phi0, targets, c):
    """Kernel logistic regression of every bit at once: sum softplus(-b * phi w) + c/2 tr(W^T Phi0 W), and its gradient."""
    m, k = phi0.shape[0], targets.shape[1]
    w = w_flat.reshape(m, k)
    margin = targets * (phi @ w)
    reg = phi0 @ w
    value = float(np.logaddexp(0.0, -margin).sum()) + 0.5 * c * float((w * reg).sum())
    grad = phi.T @ (-targets * scipy.special.expit(-margin)) + c * reg
    return value, grad.ravel()


def klr_fit(phi, phi0, targets, c, iterations):
    """L-BFGS on :func:`klr_objective`, started from the kernel ridge regression of the +-1 targets
    ``(Phi^T Phi + c Phi0)^-1 Phi^T B`` (a convex problem: the start changes the path, not the minimiser)."""
    m = phi0.shape[0]
    gram = phi.T @ phi + c * phi0
    gram[np.diag_indices_from(gram)] += 1e-8 * max(1.0, float(np.trace(gram)) / m)
    w0 = np.linalg.solve(gram, phi.T @ targets)
    res = scipy.optimize.minimize(
        klr_objective, w0.ravel(), args=(phi, phi0, targets, c), jac=True, method="L-BFGS-B", options={"maxiter": iterations}
    )
    return res.x.reshape(m, targets.shape[1]), float(res.fun)


def mean_sq_distance(x: np.ndarray) -> float:
    """(1/n^2) sum_ij ||x_i - x_j||^2 in O(n d)."""
    return float(2.0 * ((x * x).sum(1).mean() - (x.mean(0) ** 2).sum()))


class _SePH(ClosedFormMethod):
    modalities = ("image", "text")
    input_kinds = VECTOR_KINDS
    Params = SePHParams
    paper = "Z. Lin, G. Ding, M. Hu, J. Wang. Semantics-Preserving Hashing for Cross-View Retrieval. CVPR 2015."
    anchor_sampling: str = "km"

    def __init__(self, params: SePHParams, info: DataInfo, bits: int) -> None:
        super().__init__(params, info, bits)
        self.seed = resolve_seed(params.seed)
        self.n_anchors = min(params.n_anchors, int(info.n_train))
        for m in self.modalities:
            d = info.modalities[m].dim
            self.register_buffer(f"anchors_{m}", torch.zeros(self.n_anchors, d))
            self.register_buffer(f"sigma2_{m}", torch.ones(()))
            self.register_buffer(f"weights_{m}", torch.zeros(self.n_anchors, bits))

    def solve(self, features, labels):
        p = self.params
        rng = np.random.default_rng(self.seed)
        n = len(labels)
        subset = np.sort(rng.choice(n, size=p.max_train, replace=False)) if n > p.max_train else np.arange(n)
        h, kl = seph_codes(labels[subset], self.bits, p.alpha, p.kl_iterations, rng)
        targets = sign_pm1(h)
        if len(subset) == n:
            self.unified_train_codes = h.astype(np.float64)
        out = {"kl_objective": kl}
        for m in self.modalities:
            x = features[m][subset]
            sigma2 = mean_sq_distance(x)
            if self.anchor_sampling == "km":
                anchors = kmeans(x, self.n_anchors, rng, p.kmeans_iterations)
            else:
                anchors = x[rng.choice(len(x), size=self.n_anchors, replace=False)]
            w, loss = klr_fit(rbf(x, anchors, sigma2), rbf(anchors, anchors, sigma2), targets, p.klr_c, p.klr_iterations)
            self.set_buffer(f"anchors_{m}", anchors)
            self.set_buffer(f"sigma2_{m}", np.float64(sigma2))
            self.set_buffer(f"weights_{m}", w)
            out[f"klr_loss_{m}"] = [loss]
        return out

    def encode(self, batch, modality):
        x = batch_vectors(batch, modality)
        phi = rbf_torch(x, getattr(self, f"anchors_{modality}"), getattr(self, f"sigma2_{modality}"))
        return phi @ getattr(self, f"weights_{modality}")


@register_method
class SePHKM(_SePH):
    """SePH_km: kernel anchors are k-means centres."""

    name = "seph-km"
    anchor_sampling = "km"


@register_method
class SePHRnd(_SePH):
    """SePH_rnd: kernel anchors are random training items."""

    name = "seph-rnd"
    anchor_sampling = "rnd"
