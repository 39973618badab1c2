"""MFPMC's loss terms and closed-form solvers as pure functions (Deng et al., Laser & Optoelectronics
Progress 59(24), 2022, "Cross-Modal Hash Method Based on Multi-Scale Fusion and Projection Matching
Constraint"; /work/shared/papers/001_abcdfdc1773e1e0e.txt). Equation numbers are the paper's.

Conventions as in methods/losses/terms.py: codes and features are **rows** (``hx``: (n, r), the paper's
``H^x`` is r x n), labels ``L`` are (n, c) (the paper's ``L`` in ``W^T H - L`` is c x n), so the paper's
``W^T H^x`` is ``hx @ w`` here with ``w``: (r, c), and its ``L V`` (eq. 14, n x r) is ``labels @ v`` with
``v``: (c, r). Every function returns the plain sum the paper writes unless it says otherwise.

Choices where the paper's notation is ambiguous (see methods/mfpmc.py for the full list):

* Log base: eqs. (1) and (7) print ``log10``. In those two terms the base is one constant factor
  (1 / ln 10), so we keep base 10 by default (``log_base``), which keeps the paper's weight xi = 10 on the
  same scale as the authors'. Eq. (10) also prints ``log10(1 + e^psi)``; there a base other than e
  breaks the likelihood (the term ``S psi - log10(1 + e^psi)`` has no finite optimum for similar pairs:
  its derivative ``S - sigmoid(psi) / ln 10`` stays positive), so J1 uses the natural log, DCMH's
  likelihood that eq. (9) defines.
* ``f_bar = f / ||f||_F^2`` in eq. (6) is read as ``f / ||f||``: the text calls it the "normalised unit
  feature vector", and the constraint is CMPM's projection (Zhang & Lu, ECCV 2018), which uses the unit
  vector; dividing by the squared norm would not give a unit vector.
* P (eq. 5) from ``S = 2 S_tilde - 1`` has negative entries (dissimilar pairs) and is then no
  distribution (``log(q / (P + delta))`` of a negative number). :func:`label_projection_distribution`
  takes a non-negative similarity: the cosine ``S_tilde`` (default) or the paper's ``S`` clipped at 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F_

from methods.losses.terms import bit_balance_loss, pairwise_nll


# -- label similarities (eqs. 2-5) -----------------------------------------------------------------
def normalized_labels(labels: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Eqs. (3)-(4): ``l_tilde_i = l_i / ||l_i||`` (rows; an all-zero row stays zero)."""
    labels = labels.float()
    return labels / labels.norm(dim=1, keepdim=True).clamp_min(eps)


def label_cosine_similarity(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """Eq. (2): ``S_tilde_ij = l_i . l_j / (||l_i|| ||l_j||)`` in [0, 1] for multi-hot labels; (n_a, n_b)."""
    return normalized_labels(labels_a) @ normalized_labels(labels_b).t()


def shifted_label_similarity(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """The paper's ``S = 2 L_tilde^T L_tilde - 1`` (Sec. 2.3, after eq. 4), in [-1, 1]; (n_a, n_b)."""
    return 2.0 * label_cosine_similarity(labels_a, labels_b) - 1.0


def label_projection_distribution(s: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Eq. (5): ``P_ij = S_ij / sum_k S_ik`` (rows sum to 1), for a non-negative similarity ``s``."""
    if bool((s < 0).any()):
        raise ValueError("label_projection_distribution needs a non-negative similarity (clip S = 2 S_tilde - 1 at 0 or use S_tilde)")
    return s / s.sum(dim=1, keepdim=True).clamp_min(eps)


# -- low-dimensional feature projection matching (eqs. 6-8) ------------------------------------------
def projection_logits(f_a: torch.Tensor, f_b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Eq. (6) numerator exponents: ``f_a_i . f_b_j / ||f_b_j||`` (projection of f_a_i on the unit f_b_j); (n_a, n_b)."""
    return f_a @ (f_b / f_b.norm(dim=1, keepdim=True).clamp_min(eps)).t()


def projection_distribution(f_a: torch.Tensor, f_b: torch.Tensor) -> torch.Tensor:
    """Eq. (6): ``q_ij = softmax_j(f_a_i . f_b_bar_j)``, the projection distribution of f_a onto f_b; (n_a, n_b)."""
    return torch.softmax(projection_logits(f_a, f_b), dim=1)


def projection_matching_kl(
    f_a: torch.Tensor, f_b: torch.Tensor, p: torch.Tensor, delta: float = 1e-8, log_base: float = 10.0
) -> torch.Tensor:
    """Eq. (7): ``L_p(a->b) = 1/n sum_i sum_j q_ij log(q_ij / (P_ij + delta))`` (log base ``log_base``; mean over rows i)."""
    logits = projection_logits(f_a, f_b)
    log_q = torch.log_softmax(logits, dim=1)
    q = log_q.exp()
    per_row = (q * (log_q - torch.log(p + delta))).sum(dim=1)
    return per_row.mean() / math.log(log_base)


def lfpmc_loss(fx: torch.Tensor, fy: torch.Tensor, p: torch.Tensor, delta: float = 1e-8, log_base: float = 10.0) -> torch.Tensor:
    """Eq. (8): ``L_p = L_p(t->i) + L_p(i->t)``; ``p`` (n, n) is the label projection distribution of the paired items."""
    return projection_matching_kl(fx, fy, p, delta, log_base) + projection_matching_kl(fy, fx, p, delta, log_base)


# -- adversarial loss (eq. 1) -----------------------------------------------------------------------
def adversarial_loss(logits_image: torch.Tensor, logits_text: torch.Tensor, log_base: float = 10.0) -> torch.Tensor:
    """Eq. (1): ``-1/n sum [log D(f_x_i) + log(1 - D(f_y_j))]`` with ``D = sigmoid(logits)`` (image = real, text = fake).

    Computed from the logits (``log D = -softplus(-z)``, ``log(1 - D) = -softplus(z)``), so it is finite for
    any logit; each sum is a mean over its own items (n images, n texts); log base ``log_base``.
    """
    real = F_.softplus(-logits_image.reshape(-1)).mean()
    fake = F_.softplus(logits_text.reshape(-1)).mean()
    return (real + fake) / math.log(log_base)


# -- hash-code losses (eqs. 10-14) --------------------------------------------------------------------
def inter_modal_loss(hx: torch.Tensor, hy: torch.Tensor, s: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. (10) J1: ``-sum_ij (S_ij psi_ij - log(1 + e^psi_ij)) + alpha (||H^x 1||^2 + ||H^y 1||^2)``, ``psi = 1/2 hx hy^T`` (natural log)."""
    return pairwise_nll(hx, hy, s, scale=0.5, reduction="sum") + alpha * (bit_balance_loss(hx) + bit_balance_loss(hy))


def label_regression_loss(hx: torch.Tensor, hy: torch.Tensor, labels: torch.Tensor, w: torch.Tensor, beta: float) -> torch.Tensor:
    """Eq. (11) J2: ``||W^T H^x - L||^2 + ||W^T H^y - L||^2 + beta ||W||^2`` (rows: ``hx @ w - labels``)."""
    labels = labels.to(hx.dtype)
    return ((hx @ w - labels) ** 2).sum() + ((hy @ w - labels) ** 2).sum() + beta * (w**2).sum()


def unified_quantization_loss(b: torch.Tensor, hx: torch.Tensor, hy: torch.Tensor) -> torch.Tensor:
    """Eq. (13) J4: ``||B - H^x||^2 + ||B - H^y||^2`` with one code matrix B for both modalities."""
    return ((b - hx) ** 2).sum() + ((b - hy) ** 2).sum()


def label_embedding_loss(b: torch.Tensor, labels: torch.Tensor, v: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. (14) J5: ``||B - L V||^2 + lambda ||V||^2`` (rows: ``labels @ v``, ``v``: (c, r))."""
    return ((b - labels.to(b.dtype) @ v) ** 2).sum() + lam * (v**2).sum()


def matrix_objective(
    w: torch.Tensor,
    v: torch.Tensor,
    b: torch.Tensor,
    hx: torch.Tensor,
    hy: torch.Tensor,
    labels: torch.Tensor,
    tau: float,
    beta: float,
    eta: float,
    mu: float,
    lam: float,
) -> torch.Tensor:
    """The part of eq. (15) that depends on W, V, B: ``tau J2 + eta J4 + mu J5`` (sums over all n items)."""
    return (
        tau * label_regression_loss(hx, hy, labels, w, beta)
        + eta * unified_quantization_loss(b, hx, hy)
        + mu * label_embedding_loss(b, labels, v, lam)
    )


# -- mini-batch weighting of eq. (15) ----------------------------------------------------------------
SUM_TERMS = ("j1", "j2", "j4", "j5")
MEAN_TERMS = ("lfpmc", "adversarial")


def batch_term_scales(normalize: str, n: int, batch: int) -> dict[str, float]:
    """The factor on each term's mini-batch value in the network-phase loss (the one place MFPMC normalises).

    The mini-batch values: J1 = the likelihood of the batch's images against all n stored texts plus the
    batch's texts against all n stored images, plus the balance term at the full-set estimate of H 1; J2,
    J4, J5 = the batch items' sums. Each gives the batch items exactly the per-item gradients of the
    full-set sums of eqs. (10)-(14). L_p and L_adv are the printed means (eqs. 1, 7) over the batch.

    * ``paper``: the batch estimate of eq. (15)'s J divided by n: the sums times n/B (the SGD estimate of
      the full sums) and the means as they are, all divided by n: sums 1/B, means 1/n. J1 : J2 : J4 : J5
      then weigh as the paper's sums, and L_p, L_adv as the paper's means beside them.
    * ``mean`` (HashBench before 2026-12): J1 by B n, J2/J4/J5 by B, the means as they are. This weighs
      J1 n times less against J2/J4/J5 than the paper and L_p n times more against all of them.
    * ``none``: the batch values unscaled (sums of order B n for J1).
    """
    if normalize == "paper":
        return {**{t: 1.0 / batch for t in SUM_TERMS}, **{t: 1.0 / n for t in MEAN_TERMS}}
    if normalize == "mean":
        return {"j1": 1.0 / (batch * n), **{t: 1.0 / batch for t in SUM_TERMS[1:]}, **{t: 1.0 for t in MEAN_TERMS}}
    if normalize == "none":
        return {t: 1.0 for t in SUM_TERMS + MEAN_TERMS}
    raise ValueError(f"normalize must be 'paper', 'mean' or 'none', got {normalize!r}")


# -- closed-form updates (Sec. 2.5) -------------------------------------------------------------------
def solve_w(hx: torch.Tensor, hy: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """argmin_W of J2 (eq. 11): ``W = (H^x H^xT + H^y H^yT + beta I)^-1 (H^x + H^y) L^T`` (paper's columns); (r, c), float64 solve."""
    x, y, lab = hx.double(), hy.double(), labels.double()
    r = x.shape[1]
    a = x.t() @ x + y.t() @ y + beta * torch.eye(r, dtype=x.dtype, device=x.device)
    rhs = x.t() @ lab + y.t() @ lab
    return torch.linalg.solve(a, rhs).to(hx.dtype)


def solve_v(b: torch.Tensor, labels: torch.Tensor, lam: float) -> torch.Tensor:
    """argmin_V of J5 (eq. 14): ``V = (L^T L + lambda I)^-1 L^T B`` (rows: labels (n, c), B (n, r)); (c, r), float64 solve."""
    lab, bb = labels.double(), b.double()
    c = lab.shape[1]
    a = lab.t() @ lab + lam * torch.eye(c, dtype=lab.dtype, device=lab.device)
    return torch.linalg.solve(a, lab.t() @ bb).to(b.dtype)


def solve_b(hx: torch.Tensor, hy: torch.Tensor, labels: torch.Tensor, v: torch.Tensor, eta: float, mu: float) -> torch.Tensor:
    """argmin_{B in {-1,1}} of eta J4 + mu J5: ``B = sign(eta (H^x + H^y) + mu L V)`` (ties -> +1).

    With ``||B||^2 = n r`` constant, eta J4 + mu J5 = const - 2 tr(B^T (eta (H^x + H^y) + mu L V)), which
    is minimised entry by entry by the sign.
    """
    m = eta * (hx + hy) + mu * (labels.to(hx.dtype) @ v)
    return torch.where(m >= 0, torch.ones_like(m), -torch.ones_like(m))
