"""Closed forms of the tie-aware metrics (tie rule ``"expected"``) from the per-distance counts.

Tie rules (``ties=``) of every ranking metric
---------------------------------------------
* ``"expected"`` (default): the expected value over all orderings of the items tied at one distance,
  all orderings equally likely (McSherry & Najork, "Computing Information Retrieval Performance
  Measures Efficiently in the Presence of Tied Scores", ECIR 2008). Closed forms, derived here:
  a tie group of ``n`` items with ``r`` relevant, preceded by ``N`` items of which ``R`` relevant, of
  which the first ``L`` positions are inside the cut-off. Each relevant item is at position ``j`` of the
  group with probability 1/n and, given that, each of the ``j-1`` earlier positions holds one of the
  other ``r-1`` relevant items with probability ``a = (r-1)/(n-1)``, so::

      E[sum of precisions at relevant items in the first L positions]
          = (r/n) * sum_{j=1..L} (R + 1 + (j-1) a) / (N + j)
          = (r/n) * [ (R + 1) A + a B ],   A = H(N+L) - H(N),   B = L - (N+1) A    (H: harmonic numbers)

  and the expected number of relevant items in the first ``L`` positions is ``L r / n``. AP@K with the
  ``"retrieved"`` normalisation is a ratio of two random quantities; it is computed EXACTLY (not as a
  ratio of expectations): the number ``X`` of relevant items in the cut part of the boundary group is
  hypergeometric, and given ``X = x`` the relevant items are uniform over the ``L`` cut positions, so
  ``E[AP@K] = sum_x P(X=x) (S_before + g(x)) / (R + x)`` with ``g(x)`` the formula above for ``x``
  relevant among ``L`` items. NDCG uses the mean gain of a tie group at each of its positions
  (exact by linearity; this is what ``sklearn.metrics.ndcg_score`` does with ``ignore_ties=False``).
  A and B (B = sum_j (j-1)/(N+j) >= 0) come from an extended-precision harmonic table, so no sum has
  cancellation; results agree with brute-force enumeration and direct summation to ~1e-13.
* ``"index"``: ties broken by ascending database index, i.e. a stable sort by distance; this is what
  reference code built on a stable ``argsort`` of the distances computes.
* ``"optimistic"`` / ``"pessimistic"``: inside a tie group the items of higher / lower graded
  relevance come first (relevant first / last), each subgroup in database-index order. They bound
  the other rules for mAP@all, P@K, R@K, NDCG@K and AP@K with a fixed denominator (``min_k_total``,
  ``total``); AP@K with ``retrieved`` is not monotone in the order (more relevant items retrieved
  also enlarge the denominator), so it can fall outside the bounds.

The three deterministic rules are ranked by the engine (:mod:`pipeline.eval.metrics.engine`) and turned
into metrics in :mod:`pipeline.eval.metrics.retrieval`; this module holds the ``"expected"`` closed forms:
AP@k (Manning et al., "Introduction to Information Retrieval", Sec. 8.4), P@k / R@k (Sec. 8.3) and
NDCG@k (Jarvelin & Kekalainen, TOIS 2002) as functions of :class:`~pipeline.eval.metrics.engine.DistanceCounts`.
"""

from __future__ import annotations

import numpy as np

from pipeline.eval.metrics.checks import check_k, check_norm, clip_k
from pipeline.eval.metrics.engine import DistanceCounts
from pipeline.eval.metrics.numeric import discount_cumsum, harmonic_numbers, ideal_dcg, safe_div

_MIX_BUDGET = 1 << 18  # elements per block of the hypergeometric mixture (expected AP@K, "retrieved")


def _groups(counts: DistanceCounts, k_eff: int):
    n = counts.items
    r = counts.relevant
    before_n = np.cumsum(n, axis=1) - n
    before_r = np.cumsum(r, axis=1) - r
    cut = np.clip(k_eff - before_n, 0, n)  # positions of each tie group inside the cut-off
    return n, r, before_n, before_r, cut


def _harmonic_sums(before_n, cut, harmonic) -> tuple[np.ndarray, np.ndarray]:
    """A = sum_{j=1..L} 1/(N+j) = H(N+L)-H(N) and B = sum_{j=1..L} (j-1)/(N+j) = L-(N+1)A, float64.

    Both are taken in extended precision (B is a difference of close numbers when N >> L) and are
    non-negative, so the sums built from them below have no cancellation."""
    ld = np.longdouble
    a = harmonic[before_n + cut] - harmonic[before_n]
    b = cut.astype(ld) - (before_n.astype(ld) + 1) * a
    return a.astype(np.float64), np.maximum(b, 0).astype(np.float64)


def _expected_prec_sums(n, r, before_n, before_r, cut, harmonic) -> np.ndarray:
    """(r/n) [(R+1) A + a B], a=(r-1)/(n-1): E[sum of precisions at relevant items in the cut] per tie group."""
    a_sum, b_sum = _harmonic_sums(before_n, cut, harmonic)
    a = safe_div(r - 1, n - 1) * (n > 1)
    inner = (before_r + 1.0) * a_sum + a * b_sum
    return np.where((r > 0) & (cut > 0), safe_div(r, n) * inner, 0.0)


def _expected_ap_retrieved(n, r, before_n, before_r, cut, contrib, harmonic) -> np.ndarray:
    """E[S/(R_b+X)]: exact expectation over the hypergeometric X of relevant items cut from the boundary group."""
    nq, d1 = n.shape
    qi = np.arange(nq)
    inside = cut > 0
    b = d1 - 1 - np.argmax(inside[:, ::-1], axis=1)  # last group that is (partly) inside the cut-off
    nb, rb, big_n, big_r, lb = n[qi, b], r[qi, b], before_n[qi, b], before_r[qi, b], cut[qi, b]
    s_prev = contrib.sum(axis=1) - contrib[qi, b]
    a_sum, b_sum = _harmonic_sums(big_n, lb, harmonic)
    lo = np.maximum(0, lb - (nb - rb))
    hi = np.minimum(lb, rb)
    width = hi - lo + 1
    result = np.zeros(nq, dtype=np.float64)
    order = np.argsort(width, kind="stable")
    start = 0
    while start < nq:  # blocks of queries with similar widths so the padded matrix stays small
        wmax = int(width[order[start]])
        stop = start + 1
        while stop < nq and (stop - start + 1) * max(wmax, int(width[order[stop]])) <= _MIX_BUDGET:
            wmax = max(wmax, int(width[order[stop]]))
            stop += 1
        sel = order[start:stop]
        start = stop
        x = lo[sel, None] + np.arange(wmax)[None, :]
        valid = x <= hi[sel, None]
        n_, r_, l_ = nb[sel, None], rb[sel, None], lb[sel, None]
        # hypergeometric P(X=x) from log P(x+1)/P(x) = log[(r-x)(L-x)] - log[(x+1)(n-r-L+x+1)], lo <= x < hi
        step_ok = x < hi[sel, None]
        num = np.where(step_ok, (r_ - x) * (l_ - x), 1).astype(np.float64)
        den = np.where(step_ok, (x + 1) * (n_ - r_ - l_ + x + 1), 1).astype(np.float64)
        logw = np.zeros(x.shape, dtype=np.float64)
        if wmax > 1:
            np.cumsum(np.log(num[:, :-1]) - np.log(den[:, :-1]), axis=1, out=logw[:, 1:])
        logw = np.where(valid, logw, -np.inf)
        w = np.exp(logw - logw.max(axis=1, keepdims=True))
        p = w / w.sum(axis=1, keepdims=True)
        # g(x) = (x/L) [(R+1) A + b_x B], b_x = (x-1)/(L-1): E[precision sum in the cut | X = x]
        bx = safe_div(x - 1, np.broadcast_to(l_ - 1, x.shape))
        g = safe_div(x, np.broadcast_to(l_, x.shape)) * ((big_r[sel, None] + 1.0) * a_sum[sel, None] + bx * b_sum[sel, None])
        den_ap = big_r[sel, None] + x
        val = safe_div(s_prev[sel, None] + g, np.where(valid, den_ap, 0))
        result[sel] = (p * val).sum(axis=1)
    return result


def average_precision_from_counts(counts: DistanceCounts, k: int | None = None, ap_norm: str = "retrieved") -> np.ndarray:
    """Per-query expected AP@k under random tie order (McSherry & Najork, ECIR 2008; closed forms in the module doc)."""
    check_norm(ap_norm)
    k = check_k(k)
    n_db = counts.n_db
    ke = clip_k(k, n_db)
    n, r, before_n, before_r, cut = _groups(counts, ke)
    harmonic = harmonic_numbers(n_db)
    contrib = _expected_prec_sums(n, r, before_n, before_r, cut, harmonic)
    r_tot = r.sum(axis=1)
    if ke >= n_db or ap_norm == "total":
        return safe_div(contrib.sum(axis=1), r_tot)
    if ap_norm == "min_k_total":
        return safe_div(contrib.sum(axis=1), np.minimum(ke, r_tot))
    return _expected_ap_retrieved(n, r, before_n, before_r, cut, contrib, harmonic)


def precision_recall_from_counts(counts: DistanceCounts, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query expected P@k and R@k: E[relevant in top k] = sum over tie groups of L r / n (McSherry & Najork 2008)."""
    k = check_k(k, allow_none=False)
    ke = clip_k(k, counts.n_db)
    n, r, _, _, cut = _groups(counts, ke)
    found = (safe_div(r, n) * cut).sum(axis=1)
    return found / ke, safe_div(found, r.sum(axis=1))


def ndcg_from_counts(counts: DistanceCounts, k: int) -> np.ndarray:
    """Per-query expected NDCG@k, mean gain of each tie group at its positions (Jarvelin & Kekalainen 2002; McSherry & Najork 2008)."""
    k = check_k(k, allow_none=False)
    n_db = counts.n_db
    ke = clip_k(k, n_db)
    n, _, before_n, _, cut = _groups(counts, ke)
    disc = discount_cumsum(n_db)
    mean_gain = np.zeros(n.shape, dtype=np.longdouble)
    np.divide(counts.gain.astype(np.longdouble), n.astype(np.longdouble), out=mean_gain, where=n > 0)
    dcg = (mean_gain * (disc[before_n + cut] - disc[before_n])).sum(axis=1).astype(np.float64)
    return safe_div(dcg, ideal_dcg(counts.gain_hist, ke, disc))

