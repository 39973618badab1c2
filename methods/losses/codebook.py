"""Codebook, cosine-margin and assignment helpers for codebook/center methods (CRH, OrthoHash).

* :func:`cosine_margin_ce` -- the cosine-similarity margin cross-entropy used by OrthoHash (Hoe et al.,
  NeurIPS 2021, Sec. 3: ``logits_j = s * (cos(v, c_j) - m * y_j)``, softmax CE for single-label) and
  adopted by CRH as its "margin cross-entropy" to the assigned centres. Multi-label: ``multi="softmax"``
  (soft-target softmax CE with targets ``y / sum(y)``: the official OrthoHash code's default,
  ``multiclass_loss='label_smoothing'``) or ``multi="bce"`` (its ``bce`` option: sigmoid BCE on the
  margin logits, mean over items and classes as the code's ``binary_cross_entropy_with_logits().mean()``).
* :func:`sample_codebook` -- M candidate centres in {-1,+1}^K: best of ``tries`` seeded Bernoulli(0.5)
  draws, scored by the smallest per-head minimum pairwise Hamming distance (the whole code when
  ``heads == 1``); returns the codebook and the distances it achieves so callers can verify the claim.
* :func:`assign_greedy` / :func:`assign_hungarian` -- class-to-centre assignment from a (C, M) cost matrix.
* :func:`assignment_cost_matrix` -- CRH Sec. 2.3: mean Hamming distance of each class's current codes
  to each centre, label-weighted for multi-label data.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F_
from scipy.optimize import linear_sum_assignment

from methods.losses.centers import hamming_distances


def cosine_margin_ce(
    v: torch.Tensor, class_codes: torch.Tensor, labels: torch.Tensor, scale: float, margin: float, multi: str = "softmax"
) -> torch.Tensor:
    """Mean over items of the cosine-margin cross-entropy.

    ``v``: (B, K) real codes; ``class_codes``: (C, K); ``labels``: (B, C) multi-hot. ``cos`` is the
    cosine similarity of each row of ``v`` with each class code; the margin is subtracted at the
    positive classes, then scaled by ``scale``. Rows with exactly one label give the plain softmax CE
    whatever ``multi`` is unless ``multi == "bce"`` (then every item uses BCE).
    """
    cos = F_.normalize(v, dim=1) @ F_.normalize(class_codes.to(v.dtype), dim=1).t()
    y = labels.to(v.dtype)
    logits = scale * (cos - margin * y)
    if multi == "bce":
        return F_.binary_cross_entropy_with_logits(logits, y)  # mean over the B x C elements (kamwoh/orthohash)
    if multi != "softmax":
        raise ValueError(f"multi must be 'softmax' or 'bce', got {multi!r}")
    t = y / y.sum(dim=1, keepdim=True).clamp_min(1)
    return -(t * F_.log_softmax(logits, dim=1)).sum(dim=1).mean()


def cosine_quantization(v: torch.Tensor) -> torch.Tensor:
    """``mean_i (1 - cos(v_i, sign(v_i)))`` (sign detached): 0 iff every coordinate of a row has the same magnitude."""
    return (1 - F_.cosine_similarity(v, torch.sign(v).detach(), dim=1)).mean()


def head_slices(bits: int, heads: int) -> list[slice]:
    """Split ``bits`` into ``heads`` contiguous equal slices (``bits`` must be divisible by ``heads``)."""
    if heads < 1 or bits % heads:
        raise ValueError(f"{bits} bits cannot be split into {heads} equal heads")
    w = bits // heads
    return [slice(h * w, (h + 1) * w) for h in range(heads)]


def auto_head_bits(codebook_size: int) -> int:
    """Smallest power of two ``d`` with ``2**d >= codebook_size`` (CRH article, Sec. 4, head dimension)."""
    if codebook_size < 1:
        raise ValueError(f"codebook size must be positive, got {codebook_size}")
    d = 1
    while 2**d < codebook_size:
        d *= 2
    return d


def min_pairwise_distance(codes: torch.Tensor) -> int:
    """Smallest Hamming distance between two distinct rows of a {-1,+1} matrix (K if fewer than two rows)."""
    if codes.shape[0] < 2:
        return int(codes.shape[1])
    d = hamming_distances(codes, codes)
    d.fill_diagonal_(float(codes.shape[1] + 1))
    return int(round(float(d.min())))


def sample_codebook(
    size: int, bits: int, generator: torch.Generator, heads: int = 1, tries: int = 100
) -> tuple[torch.Tensor, dict[str, object]]:
    """``size`` centres of ``bits`` bits, best of ``tries`` Bernoulli(0.5) draws.

    Score of a draw: (smallest per-head minimum distance, minimum distance of the whole codes); the
    lexicographically largest wins (first on ties). Returns the codebook (size, bits) float in {-1,+1}
    and ``{"min_distance": int, "head_min_distance": [int per head]}`` measured on the returned codebook.
    """
    slices = head_slices(bits, heads)
    best, best_score = None, (-1, -1)
    for _ in range(max(int(tries), 1)):
        z = torch.randint(0, 2, (size, bits), generator=generator).float() * 2 - 1
        score = (min(min_pairwise_distance(z[:, s]) for s in slices), min_pairwise_distance(z))
        if score > best_score:
            best, best_score = z, score
    assert best is not None
    stats = {"min_distance": min_pairwise_distance(best), "head_min_distance": [min_pairwise_distance(best[:, s]) for s in slices]}
    return best, stats


def assignment_cost_matrix(codes: torch.Tensor, labels: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(C, M) cost: label-weighted mean Hamming distance of each class's codes to each codebook row.

    ``codes``: (n, k) in {-1,+1} (binarised network outputs); ``labels``: (n, C) multi-hot; item i counts
    for class c with weight ``y_ic / sum_c' y_ic'`` (1 for single-label data). A class without items
    gets cost 0 for every centre (it keeps whatever it is assigned).
    """
    d = hamming_distances(codes, codebook)  # (n, M)
    y = labels.to(d.dtype)
    w = y / y.sum(dim=1, keepdim=True).clamp_min(1)
    return (w.t() @ d) / w.sum(dim=0).clamp_min(1e-12).unsqueeze(1)


def assign_hungarian(cost: torch.Tensor | np.ndarray) -> np.ndarray:
    """Minimum-total-cost injective assignment class -> centre (scipy's ``linear_sum_assignment``)."""
    c = np.asarray(cost.cpu() if isinstance(cost, torch.Tensor) else cost, dtype=np.float64)
    rows, cols = linear_sum_assignment(c)
    out = np.empty(c.shape[0], dtype=np.int64)
    out[rows] = cols
    return out


def assign_greedy(cost: torch.Tensor | np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """Greedy injective assignment: classes in ``order`` (default 0..C-1) each take their cheapest free centre.

    Ties go to the lowest centre index. Not optimal in general; CRH uses a seeded random class order.
    """
    c = np.asarray(cost.cpu() if isinstance(cost, torch.Tensor) else cost, dtype=np.float64)
    n_cls, n_c = c.shape
    if n_c < n_cls:
        raise ValueError(f"{n_cls} classes cannot be assigned distinct centres from {n_c}")
    order = np.arange(n_cls) if order is None else np.asarray(order)
    free = np.ones(n_c, dtype=bool)
    out = np.full(n_cls, -1, dtype=np.int64)
    for cls in order:
        row = np.where(free, c[cls], np.inf)
        j = int(np.argmin(row))
        out[cls] = j
        free[j] = False
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two vectors; 0.0 when either is constant (so it is always finite)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])
