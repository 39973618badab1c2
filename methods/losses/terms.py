"""Loss terms as pure functions: tensors in, scalar tensor out.

Conventions (shared by every function here):

* codes are **rows**: ``F`` is ``(n_items, n_bits)``. Papers that write ``F`` as ``bits x items``
  (DCMH, PRDH, ...) use ``F_{*i}`` for what is row ``i`` here, so their ``F^T G`` is ``F @ G.T`` here.
* ``reduction="sum"`` returns the plain sum the paper writes; ``reduction="mean"`` divides by the
  number of items (rows of the first argument; for pairwise terms, by the number of pairs), and never
  by the number of bits unless the docstring says the paper does. Methods that rescale a term say so.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F_

_LOG2 = math.log(2.0)


def reduce_loss(total: torch.Tensor, count: int, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / max(int(count), 1)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def similarity_from_labels(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """S_ij = 1 iff items i and j share at least one label (DCMH Sec. 3, the usual multi-label rule); float (n_a, n_b)."""
    return (labels_a.float() @ labels_b.float().t() > 0).float()


def pairwise_nll(
    f: torch.Tensor, g: torch.Tensor, s: torch.Tensor, scale: float = 0.5, reduction: str = "sum"
) -> torch.Tensor:
    """Pairwise negative log-likelihood, DCMH (Jiang & Li, CVPR 2017) Sec. 3.2, first term of the objective J.

    ``-sum_ij (S_ij Theta_ij - log(1 + exp(Theta_ij)))`` with ``Theta = scale * f @ g.T`` (the paper's
    ``Theta_ij = 1/2 F_{*i}^T G_{*j}``; DPSH/PRDH use the same form). ``log(1+e^x)`` is ``softplus``,
    so it is finite for any ``Theta`` (e.g. +-100). ``f``: (n, K), ``g``: (m, K), ``s``: (n, m) in {0,1}.
    ``reduction="mean"`` divides by ``n * m`` (the number of pairs); ``"rows"`` returns the (n,) per-row sums.
    """
    theta = scale * (f @ g.t())
    if reduction == "rows":
        return (F_.softplus(theta) - s * theta).sum(dim=1)
    total = (F_.softplus(theta) - s * theta).sum()
    return reduce_loss(total, f.shape[0] * g.shape[0], reduction)


def quantization_loss(b: torch.Tensor, f: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Quantization error ``||B - F||_F^2``, DCMH (Jiang & Li, CVPR 2017) Sec. 3.2, second term of J; mean = per item."""
    return reduce_loss(((b - f) ** 2).sum(), f.shape[0], reduction)


def bit_balance_loss(f: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """Bit balance ``||F^T 1||^2 = sum_k (sum_i F_ik)^2``, DCMH (Jiang & Li, CVPR 2017) Sec. 3.2, third term of J; a sum.

    ``offset`` (K,) is added to the column sums before squaring: pass the summed outputs of the items
    that are not in ``f`` (e.g. the stored rows of the rest of the training set) to get the full-set
    term while differentiating only through ``f``.
    """
    col = f.sum(dim=0)
    if offset is not None:
        col = col + offset
    return (col**2).sum()


def center_bce(h: torch.Tensor, centers: torch.Tensor, reduction: str = "mean", eps: float = 1e-7) -> torch.Tensor:
    """Central similarity loss L_C, CSQ (Yuan et al., CVPR 2020) Sec. 3.3: BCE of ``(h+1)/2`` to ``(c+1)/2``, mean over bits.

    ``h`` in (-1, 1) (tanh outputs), ``centers`` in {-1, +1}; per item
    ``-(1/K) sum_k [c'_k log h'_k + (1 - c'_k) log(1 - h'_k)]`` with ``x' = (x+1)/2``. ``h'`` is clamped to
    ``[eps, 1-eps]``; prefer :func:`center_bce_with_logits` when the pre-tanh output is at hand.
    ``reduction="mean"`` averages over items (the mini-batch mean of the paper's sum over items).
    """
    p = ((h + 1) / 2).clamp(eps, 1 - eps)
    t = (centers + 1) / 2
    per_item = -(t * torch.log(p) + (1 - t) * torch.log1p(-p)).mean(dim=1)
    return reduce_loss(per_item.sum(), h.shape[0], reduction)


def center_bce_with_logits(z: torch.Tensor, centers: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """CSQ (Yuan et al., CVPR 2020) Sec. 3.3 L_C computed from the pre-tanh output ``z`` (``h = tanh z`` so ``(h+1)/2 = sigmoid(2z)``); exact and stable.

    Same value as ``center_bce(torch.tanh(z), centers)`` without clamping; averaged over bits, and over
    items for ``reduction="mean"``.
    """
    t = (centers + 1) / 2
    per_item = F_.binary_cross_entropy_with_logits(2 * z, t, reduction="none").mean(dim=1)
    return reduce_loss(per_item.sum(), z.shape[0], reduction)


def logcosh(x: torch.Tensor) -> torch.Tensor:
    """Elementwise ``log(cosh(x)) = |x| + log(1 + e^{-2|x|}) - log 2``, finite for any ``x``."""
    a = x.abs()
    return a + F_.softplus(-2 * a) - _LOG2


def logcosh_quantization(h: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Quantization loss L_Q, CSQ (Yuan et al., CVPR 2020) Sec. 3.3: ``sum_k log cosh(|h_k| - 1)`` over bits; mean = per item."""
    return reduce_loss(logcosh(h.abs() - 1).sum(), h.shape[0], reduction)


def square_quantization(h: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Squared variant of CSQ's L_Q (Yuan et al., CVPR 2020): ``sum_k (|h_k| - 1)^2`` over bits; mean = per item."""
    return reduce_loss(((h.abs() - 1) ** 2).sum(), h.shape[0], reduction)
