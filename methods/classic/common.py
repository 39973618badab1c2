"""Numerics shared by the classic baselines (float64 NumPy; every function deterministic given its inputs)."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.core.errors import MethodError

#: every classic method reads dense vectors; pixels are refused by the registry with the method's name
VECTOR_KINDS = frozenset({"features", "bow"})


def resolve_seed(seed: int | None) -> int:
    """``seed`` or, when None, a number drawn from the global torch RNG (which the loop seeds with the trial seed)."""
    if seed is not None:
        return int(seed)
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def sign_pm1(x: np.ndarray) -> np.ndarray:
    """``x >= 0 -> +1``, else ``-1`` (the project's sign convention)."""
    return np.where(x >= 0, 1.0, -1.0)


def sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) squared Euclidean distances, clipped at 0."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def rbf(x: np.ndarray, anchors: np.ndarray, sigma2: float) -> np.ndarray:
    """RBF kernel features ``exp(-||x - a||^2 / (2 sigma^2))`` against every anchor."""
    return np.exp(-sq_dists(x, anchors) / (2.0 * sigma2))


def normalized_labels(labels: np.ndarray) -> np.ndarray:
    """Binarised label rows scaled to unit L2 norm (unlabelled rows stay zero): ``L~ L~^T`` is the label cosine."""
    lab = (labels > 0).astype(np.float64)
    norm = np.sqrt(lab.sum(1, keepdims=True))
    return lab / np.where(norm > 0, norm, 1.0)


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 100) -> np.ndarray:
    """Lloyd's k-means started from ``k`` distinct random items (MATLAB's ``'Start','sample'``); an empty
    cluster is re-seeded with the item farthest from its centre (``'EmptyAction','singleton'``)."""
    n = len(x)
    if k > n:
        raise MethodError(f"k-means: {k} centres requested from {n} items")
    centres = x[rng.choice(n, size=k, replace=False)].copy()
    assign = None
    for _ in range(iterations):
        d = sq_dists(x, centres)
        new = d.argmin(1)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        counts = np.bincount(assign, minlength=k)
        sums = np.zeros_like(centres)
        np.add.at(sums, assign, x)
        nonempty = counts > 0
        centres[nonempty] = sums[nonempty] / counts[nonempty, None]
        for j in np.flatnonzero(~nonempty):
            far = int(d[np.arange(n), assign].argmax())
            centres[j] = x[far]
            assign[far] = j
    return centres


def check_bits(name: str, bits: int, limit: int, what: str) -> None:
    if bits > limit:
        raise MethodError(f"{name}: {bits} bits exceed {what} ({limit}); use at most {limit} bits")


def batch_vectors(batch: dict, modality: str) -> torch.Tensor:
    """The batch's ``modality`` as (B, dim) float32 rows."""
    x = batch[modality]
    return x.reshape(len(x), -1).float()


def rbf_torch(x: torch.Tensor, anchors: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """:func:`rbf` on torch tensors (the encoders' side)."""
    d = ((x * x).sum(1, keepdim=True) + (anchors * anchors).sum(1)[None, :] - 2.0 * x @ anchors.T).clamp_min(0.0)
    return torch.exp(-d / (2.0 * sigma2))
