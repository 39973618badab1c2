"""Loss terms of the cross-modal baselines PRDH and CMHH, as pure functions (rows = items, see terms.py).

* :func:`decorrelation_loss`: PRDH's decorrelation constraint on the bits (Yang et al., AAAI 2017,
  "Pairwise Relationship Guided Deep Hashing for Cross-Modal Retrieval", Sec. "Decorrelation
  constraint"): half the squared Frobenius norm of the off-diagonal part of the covariance matrix of
  the hash-layer outputs, ``1/2 (||C||_F^2 - ||diag C||^2)``, ``C = 1/N sum_i (h_i - mu)(h_i - mu)^T``
  over the N items of a mini-batch. This is the DeCov regulariser (Cogswell et al., ICLR 2016) that
  PRDH adopts; written from memory of both papers (the form is DeCov's; PRDH's weight symbol differs).
* :func:`continuous_hamming`: CMHH's continuous relaxation of the Hamming distance (Cao et al.,
  ECCV 2018, "Cross-Modal Hamming Hashing", Sec. 3.2, shared with Deep Cauchy Hashing):
  ``d(h_i, h_j) = K/2 (1 - cos(h_i, h_j))``; equals the Hamming distance on {-1,+1} codes.
* :func:`exponential_focal_loss`: CMHH's exponential focal loss (Sec. 3.2-3.3): the probability that a
  pair is similar is ``p = exp(-beta d)`` (exponential distribution over the Hamming distance; the
  Hamming radius H sets beta, see methods/cmhh.py), and the pairwise cross-entropy is focal-weighted:
  ``s=1: -(1-p)^gamma log p = (1-p)^gamma beta d``, ``s=0: -p^gamma log(1-p)``, each pair multiplied
  by ``w_ij`` (the similar/dissimilar re-balancing weights of HashNet/DCH/CMHH).
"""

from __future__ import annotations

import torch

from methods.losses.terms import reduce_loss


def batch_covariance(h: torch.Tensor) -> torch.Tensor:
    """Covariance of the code dimensions over the rows of ``h`` (N, K): ``1/N (h - mu)^T (h - mu)``, (K, K)."""
    centred = h - h.mean(dim=0, keepdim=True)
    return centred.t() @ centred / max(int(h.shape[0]), 1)


def decorrelation_loss(h: torch.Tensor) -> torch.Tensor:
    """PRDH decorrelation constraint (Yang et al., AAAI 2017; DeCov form): ``1/2 (||C||_F^2 - ||diag(C)||_2^2)``.

    ``C`` is :func:`batch_covariance` of ``h`` (N, K); the term is zero iff the bits are pairwise
    uncorrelated over the N items, whatever their variances.
    """
    c = batch_covariance(h)
    return 0.5 * ((c**2).sum() - (torch.diagonal(c) ** 2).sum())


def continuous_hamming(h: torch.Tensor, g: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """CMHH (Cao et al., ECCV 2018) Sec. 3.2: ``d_ij = K/2 (1 - cos(h_i, g_j))``, (n, m); Hamming distance on +-1 codes."""
    k = h.shape[1]
    hn = h / h.norm(dim=1, keepdim=True).clamp_min(eps)
    gn = g / g.norm(dim=1, keepdim=True).clamp_min(eps)
    return 0.5 * k * (1.0 - hn @ gn.t())


def balance_weights(s: torch.Tensor) -> torch.Tensor:
    """Pair weights ``w_ij = |S| / |S_1|`` for similar and ``|S| / |S_0|`` for dissimilar pairs (HashNet/DCH/CMHH)."""
    n_all = float(s.numel())
    n_sim = s.sum()
    n_dis = n_all - n_sim
    w_sim = n_all / n_sim.clamp_min(1.0)
    w_dis = n_all / n_dis.clamp_min(1.0)
    return torch.where(s > 0, w_sim, w_dis)


def exponential_focal_loss(
    d: torch.Tensor,
    s: torch.Tensor,
    beta: float,
    gamma: float = 2.0,
    weights: torch.Tensor | None = None,
    reduction: str = "mean",
    eps: float = 1e-7,
) -> torch.Tensor:
    """CMHH's exponential focal loss over distances ``d`` (n, m) and similarities ``s`` in {0, 1} (n, m).

    ``p_ij = exp(-beta d_ij)``; similar pairs cost ``(1 - p)^gamma * beta d`` (= ``-(1-p)^gamma log p``),
    dissimilar pairs ``-p^gamma log(1 - p)``; times ``weights`` when given. ``log(1 - p)`` is computed as
    ``log(-expm1(-beta d))``, clamped at ``eps`` (a dissimilar pair at distance 0 costs ``-log eps``, finite).
    ``reduction="mean"`` divides by the number of pairs.
    """
    x = beta * d
    p = torch.exp(-x)
    pos = (1.0 - p).pow(gamma) * x
    neg = -p.pow(gamma) * torch.log((-torch.expm1(-x)).clamp_min(eps))
    per_pair = s * pos + (1.0 - s) * neg
    if weights is not None:
        per_pair = weights * per_pair
    return reduce_loss(per_pair.sum(), d.numel(), reduction)
