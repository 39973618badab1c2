"""Hash centers (targets in {-1,+1}^K), CSQ (Yuan et al., "Central Similarity Quantization", CVPR 2020) Sec. 3.2.

* ``K`` a power of two: the rows of the Sylvester Hadamard matrix ``H_K`` are ``K`` centers with pairwise
  Hamming distance exactly ``K/2``; ``[H_K; -H_K]`` gives ``2K`` centers (distance ``K/2`` or ``K``).
  With ``C <= K`` classes the first ``C`` rows of ``H_K`` are used, with ``K < C <= 2K`` the first ``C``
  rows of ``[H_K; -H_K]`` (optionally in a seeded random order).
* otherwise (``C > 2K``, or ``K`` not a power of two such as 24 or 48 bits, where Sylvester's
  construction does not exist): every bit is drawn from Bernoulli(0.5) (expected distance ``K/2``).
  The paper draws once; we draw ``tries`` candidate sets with the given generator and keep the one
  with the largest minimum pairwise distance (first wins on ties), which also rules out duplicate centers
  whenever one draw has none. Deterministic given the generator state.
* multi-label items: the centroid of their labels' centers, binarised by sign; a zero coordinate (a tie)
  takes the matching bit of a fixed ``tie_break`` vector, so equal label sets always map to equal centers.
"""

from __future__ import annotations

import torch


def is_power_of_two(k: int) -> bool:
    """True for 1, 2, 4, 8, ..."""
    return k > 0 and (k & (k - 1)) == 0


def sylvester_hadamard(k: int) -> torch.Tensor:
    """The ``k x k`` Sylvester Hadamard matrix (``H_1 = [1]``, ``H_2m = [[H, H], [H, -H]]``), float in {-1,+1}."""
    if not is_power_of_two(k):
        raise ValueError(f"Sylvester Hadamard matrices exist only for powers of two, got {k}")
    h = torch.ones(1, 1)
    while h.shape[0] < k:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)], dim=0)
    return h


def hamming_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise Hamming distances of {-1,+1} rows: ``(K - a @ b.T) / 2``."""
    return (a.shape[1] - a.float() @ b.float().t()) / 2


def hadamard_centers(n_classes: int, bits: int, generator: torch.Generator | None = None, shuffle: bool = False) -> torch.Tensor:
    """``n_classes <= 2 * bits`` centers from ``H_K`` (or ``[H_K; -H_K]``); a seeded random row order if ``shuffle``."""
    h = sylvester_hadamard(bits)
    pool = h if n_classes <= bits else torch.cat([h, -h], dim=0)
    if n_classes > pool.shape[0]:
        raise ValueError(f"{n_classes} classes need more than the {pool.shape[0]} Hadamard centers of {bits} bits")
    order = torch.randperm(pool.shape[0], generator=generator) if shuffle else torch.arange(pool.shape[0])
    return pool[order[:n_classes]].clone()


def bernoulli_centers(n_classes: int, bits: int, generator: torch.Generator | None = None, tries: int = 1) -> torch.Tensor:
    """``n_classes`` centers with i.i.d. Bernoulli(0.5) bits; best of ``tries`` draws by minimum pairwise distance."""
    best, best_min = None, -1.0
    for _ in range(max(int(tries), 1)):
        c = torch.randint(0, 2, (n_classes, bits), generator=generator).float() * 2 - 1
        if n_classes > 1:
            d = hamming_distances(c, c)
            d.fill_diagonal_(float(bits + 1))
            m = float(d.min())
        else:
            m = float(bits)
        if m > best_min:
            best, best_min = c, m
    assert best is not None
    return best


def make_hash_centers(
    n_classes: int, bits: int, generator: torch.Generator | None = None, shuffle: bool = False, tries: int = 1
) -> tuple[torch.Tensor, str]:
    """Class centers (C, K) and how they were made (``"hadamard"`` or ``"bernoulli"``), following CSQ Sec. 3.2."""
    if is_power_of_two(bits) and n_classes <= 2 * bits:
        return hadamard_centers(n_classes, bits, generator, shuffle=shuffle), "hadamard"
    return bernoulli_centers(n_classes, bits, generator, tries=tries), "bernoulli"


def label_centers(labels: torch.Tensor, centers: torch.Tensor, tie_break: torch.Tensor | None = None) -> torch.Tensor:
    """Per-item centers: ``sign(labels @ centers)`` (sign of the label-centroid), ties -> ``tie_break`` (default +1).

    ``labels``: (n, C) multi-hot; ``centers``: (C, K) in {-1,+1}; ``tie_break``: (K,) in {-1,+1}. For a
    single label this is exactly that label's center. Returns float (n, K) in {-1,+1}.
    """
    s = labels.to(centers.dtype) @ centers
    out = torch.sign(s)
    tb = torch.ones_like(s[0]) if tie_break is None else tie_break.to(s.dtype)
    return torch.where(out == 0, tb.expand_as(out), out)
