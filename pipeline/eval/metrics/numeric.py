"""Small exact numeric helpers shared by the metric modules: division by possibly-zero counts, harmonic
numbers and cumulative DCG discounts in extended precision, the ideal DCG from a histogram of gains.

* Harmonic numbers ``H(i) = sum_{j<=i} 1/j`` feed the tie-aware closed forms of McSherry & Najork
  ("Computing Information Retrieval Performance Measures Efficiently in the Presence of Tied Scores",
  ECIR 2008; see :mod:`pipeline.eval.metrics.ties`); long double, so their differences stay exact.
* DCG discount ``1/log2(rank+1)``, ranks from 1, and the ideal DCG from the gains sorted in decreasing
  order (Jarvelin & Kekalainen, "Cumulated Gain-Based Evaluation of IR Techniques", TOIS 2002; linear
  gain as ``sklearn.metrics.ndcg_score``).
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=4)
def harmonic_numbers(n: int) -> np.ndarray:
    """Harmonic numbers H(i) = sum_{j<=i} 1/j for i = 0..n, extended precision (differences stay exact)."""
    out = np.zeros(n + 1, dtype=np.longdouble)
    np.cumsum(1.0 / np.arange(1, n + 1, dtype=np.longdouble), out=out[1:])
    return out


@functools.lru_cache(maxsize=4)
def discount_cumsum(n: int) -> np.ndarray:
    """D(p) = sum_{i=1..p} 1/log2(i+1), p = 0..n: cumulative DCG discount (Jarvelin & Kekalainen 2002)."""
    out = np.zeros(n + 1, dtype=np.longdouble)
    np.cumsum(1.0 / np.log2(np.arange(2, n + 2, dtype=np.longdouble)), out=out[1:])
    return out


def safe_div(num, den) -> np.ndarray:
    """num / den elementwise, 0 where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def ideal_dcg(gain_hist: np.ndarray, k_eff: int, disc: np.ndarray) -> np.ndarray:
    """Ideal DCG@k from the histogram of graded relevance values (gains sorted in decreasing order)."""
    rev = gain_hist[:, :0:-1]  # counts of gains G, G-1, ..., 1
    ends = np.cumsum(rev, axis=1)
    starts = ends - rev
    gains = np.arange(gain_hist.shape[1] - 1, 0, -1, dtype=np.longdouble)
    part = disc[np.minimum(ends, k_eff)] - disc[np.minimum(starts, k_eff)]
    return (part * gains).sum(axis=1).astype(np.float64)

