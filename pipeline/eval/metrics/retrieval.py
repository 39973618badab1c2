"""The retrieval metrics from packed codes and labels (the public entry points), and all of them in one
pass (:func:`evaluate_retrieval`): mAP@all and AP@k (Manning, Raghavan & Schuetze, "Introduction to
Information Retrieval", 2008, Sec. 8.4), P@k and R@k (Sec. 8.3), NDCG@k (Jarvelin & Kekalainen, TOIS
2002), the P-R curve by Hamming radius and P@r (Wang et al., TPAMI 2018). Each runs the counting engine
(:mod:`pipeline.eval.metrics.engine`) once; the tie rule ``"expected"`` goes through the closed forms of
:mod:`pipeline.eval.metrics.ties`, the deterministic rules through the engine's ranked statistics.

Conventions (also returned in :attr:`RetrievalMetrics.conventions`)
-------------------------------------------------------------------
* AP@K normalisation (``ap_norm=``): ``"retrieved"`` (default) divides the sum of precisions at the
  relevant items of the top K by the number of relevant items in the top K, the convention of the
  DeepHash-pytorch / HashNet / CSQ ``CalcTopMap`` code (a query with none in the top K has AP 0);
  ``"min_k_total"`` divides by ``min(K, relevant items in the database)``; ``"total"`` by the number of
  relevant items in the database (DCMH's convention). mAP@all is the standard AP over the full ranking,
  where the three coincide.
* A query with no relevant database item has AP, recall and NDCG 0 and stays in every mean (like
  ``CalcTopMap``, which skips it but divides by the number of queries).
* Cut-offs larger than the database are clipped to the database size: P@K divides by ``min(K, N)``.
* NDCG@K: gain = graded relevance (linear, as ``sklearn.metrics.ndcg_score``), discount
  ``1/log2(rank+1)`` with ranks from 1, ideal DCG from the gains sorted in decreasing order.
* Precision within Hamming radius r and the P-R curve are set-based (items within radius r), so they do
  not depend on the tie rule. A query whose ball is empty counts as precision 0; the fraction of such
  queries is reported beside it (:mod:`pipeline.eval.metrics.radius`).
* Tie rules: see :mod:`pipeline.eval.metrics.ties`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.core.errors import MetricsError
from pipeline.eval.metrics.checks import check_k, check_norm, check_radius, check_ties, clip_k, prepare_problem
from pipeline.eval.metrics.engine import Output, Spec, hamming_distance_counts, run_engine
from pipeline.eval.metrics.numeric import discount_cumsum, ideal_dcg, safe_div
from pipeline.eval.metrics.radius import pr_curve_from_counts, precision_within_radius_from_counts
from pipeline.eval.metrics.ties import average_precision_from_counts, ndcg_from_counts, precision_recall_from_counts

_AP_NORM_TEXT = {
    "retrieved": "AP@K divided by the relevant items retrieved in the top K (DeepHash-pytorch/HashNet/CSQ "
    "CalcTopMap); a query with none in the top K has AP 0",
    "min_k_total": "AP@K divided by min(K, relevant items in the database)",
    "total": "AP@K divided by the relevant items in the whole database (DCMH)",
}
_TIES_TEXT = {
    "expected": "expected value over all orderings of tied items (McSherry & Najork, ECIR 2008), exact closed forms",
    "index": "ties broken by ascending database index (stable sort by Hamming distance)",
    "optimistic": "inside a tie group higher graded relevance first, then database index",
    "pessimistic": "inside a tie group lower graded relevance first, then database index",
}


def _ks(k) -> tuple[tuple, bool]:
    if k is None or isinstance(k, (int, np.integer)):
        return (check_k(k),), True
    if isinstance(k, Sequence) or isinstance(k, np.ndarray):
        ks = tuple(check_k(v) for v in k)
        if not ks:
            raise MetricsError("k must be a cut-off, None, or a non-empty sequence of them")
        return ks, False
    raise MetricsError(f"cut-off k must be a positive integer, None or a sequence of them, got {k!r}")


def _ranked_ap(out: Output, j: int, k: int | None, n_db: int, ap_norm: str) -> np.ndarray:
    ke = clip_k(k, n_db)
    s, found, r_tot = out.prec_sum[:, j], out.rel_found[:, j], out.total_relevant
    if ke >= n_db or ap_norm == "total":
        return safe_div(s, r_tot)
    if ap_norm == "min_k_total":
        return safe_div(s, np.minimum(ke, r_tot))
    return safe_div(s, found)


def average_precision(
    query_codes,
    db_codes,
    query_labels,
    db_labels,
    *,
    k=None,
    ties: str = "expected",
    ap_norm: str = "retrieved",
    block_size: int | None = None,
    n_threads: int | None = None,
) -> np.ndarray:
    """Per-query AP@k (k=None: all) ranking by Hamming distance (Manning et al., IR book, Sec. 8.4; ties per module doc).

    ``k`` may be a sequence of cut-offs, computed in one pass: the result is then (Q, len(k))."""
    check_ties(ties)
    check_norm(ap_norm)
    ks, scalar = _ks(k)
    prob = prepare_problem(query_codes, db_codes, query_labels, db_labels)
    if ties == "expected":
        counts = run_engine(prob, Spec(ties, (), True, False, False), block_size, n_threads).counts
        res = np.stack([average_precision_from_counts(counts, kk, ap_norm) for kk in ks], axis=1)
    else:
        out = run_engine(prob, Spec(ties, ks, False, False, False), block_size, n_threads)
        res = np.stack([_ranked_ap(out, j, kk, prob.n_db, ap_norm) for j, kk in enumerate(ks)], axis=1)
    return res[:, 0] if scalar else res


def mean_average_precision(
    query_codes,
    db_codes,
    query_labels,
    db_labels,
    *,
    k=None,
    ties: str = "expected",
    ap_norm: str = "retrieved",
    block_size: int | None = None,
    n_threads: int | None = None,
):
    """mAP@k: mean over queries of AP@k (Manning et al., IR book, Sec. 8.4); a float, or an array for a sequence of k."""
    ap = average_precision(
        query_codes, db_codes, query_labels, db_labels, k=k, ties=ties, ap_norm=ap_norm, block_size=block_size, n_threads=n_threads
    )
    return float(ap.mean()) if ap.ndim == 1 else ap.mean(axis=0)


def precision_recall_at_k(
    query_codes,
    db_codes,
    query_labels,
    db_labels,
    k: int,
    *,
    ties: str = "expected",
    block_size: int | None = None,
    n_threads: int | None = None,
) -> tuple[float, float]:
    """Mean P@k and R@k over queries (Manning et al., IR book, Sec. 8.3); k is clipped to the database size."""
    check_ties(ties)
    k = check_k(k, allow_none=False)
    prob = prepare_problem(query_codes, db_codes, query_labels, db_labels)
    if ties == "expected":
        counts = run_engine(prob, Spec(ties, (), True, False, False), block_size, n_threads).counts
        p, r = precision_recall_from_counts(counts, k)
    else:
        out = run_engine(prob, Spec(ties, (k,), False, False, False), block_size, n_threads)
        found = out.rel_found[:, 0]
        p, r = found / clip_k(k, prob.n_db), safe_div(found, out.total_relevant)
    return float(p.mean()), float(r.mean())


def ndcg_at_k(
    query_codes,
    db_codes,
    query_labels,
    db_labels,
    k: int,
    *,
    ties: str = "expected",
    block_size: int | None = None,
    n_threads: int | None = None,
) -> float:
    """Mean NDCG@k, gain = shared labels, discount 1/log2(rank+1) (Jarvelin & Kekalainen, TOIS 2002)."""
    check_ties(ties)
    k = check_k(k, allow_none=False)
    prob = prepare_problem(query_codes, db_codes, query_labels, db_labels)
    if ties == "expected":
        counts = run_engine(prob, Spec(ties, (), True, True, False), block_size, n_threads).counts
        return float(ndcg_from_counts(counts, k).mean())
    out = run_engine(prob, Spec(ties, (k,), True, True, True), block_size, n_threads)
    ke = clip_k(k, prob.n_db)
    idcg = ideal_dcg(out.gain_hist, ke, discount_cumsum(prob.n_db))
    return float(safe_div(out.dcg[:, 0], idcg).mean())


def pr_curve(
    query_codes,
    db_codes,
    query_labels,
    db_labels,
    *,
    empty_ball: str = "zero",
    block_size: int | None = None,
    n_threads: int | None = None,
) -> dict[str, np.ndarray]:
    """P-R curve by Hamming radius 0..K ("radius", "precision", "recall", "empty_ball"); see pr_curve_from_counts."""
    counts = hamming_distance_counts(query_codes, db_codes, query_labels, db_labels, block_size=block_size, n_threads=n_threads)
    return pr_curve_from_counts(counts, empty_ball)


def precision_within_radius(
    query_codes,
    db_codes,
    query_labels,
    db_labels,
    radius: int = 2,
    *,
    block_size: int | None = None,
    n_threads: int | None = None,
) -> tuple[float, float]:
    """(mean precision within Hamming radius r, empty balls counted as 0; fraction of empty balls) (Wang et al., TPAMI 2018)."""
    counts = hamming_distance_counts(query_codes, db_codes, query_labels, db_labels, block_size=block_size, n_threads=n_threads)
    prec, empty = precision_within_radius_from_counts(counts, radius)
    return float(prec.mean()), float(empty.mean())


@dataclass
class RetrievalMetrics:
    values: dict[str, float]  # "map@all", "map@100", "p@100", "r@100", "ndcg@100", "p@r2", "empty_ball@r2", ...
    pr_curve: dict[str, np.ndarray]  # "radius", "precision", "recall" (and "empty_ball"), length K+1
    per_query_ap: np.ndarray  # AP@all per query (for class-group analysis)
    conventions: dict[str, str] = field(default_factory=dict)


def evaluate_retrieval(
    query_codes,
    db_codes,
    query_labels,
    db_labels,
    *,
    topk=(100,),
    ties: str = "expected",
    ap_norm: str = "retrieved",
    radius: int = 2,
    block_size: int | None = None,
    n_threads: int | None = None,
) -> RetrievalMetrics:
    """mAP@all, mAP@k, P@k, R@k, NDCG@k, P-R curve and P@r in one pass over the database (conventions in the module doc)."""
    check_ties(ties)
    check_norm(ap_norm)
    topk = tuple(check_k(k, allow_none=False) for k in topk)
    check_radius(radius)
    prob = prepare_problem(query_codes, db_codes, query_labels, db_labels)
    n_db = prob.n_db
    graded = prob.labels.kind == "multi" and bool(topk)
    ks = (None,) + topk
    out = run_engine(prob, Spec(ties, ks, True, graded, bool(topk)), block_size, n_threads)
    counts = out.counts
    values: dict[str, float] = {}
    if ties == "expected":
        per_query_ap = average_precision_from_counts(counts, None, ap_norm)
    else:
        per_query_ap = _ranked_ap(out, 0, None, n_db, ap_norm)
    values["map@all"] = float(per_query_ap.mean())
    disc = discount_cumsum(n_db) if topk else None
    for j, k in enumerate(topk, start=1):
        ke = clip_k(k, n_db)
        if ties == "expected":
            ap = average_precision_from_counts(counts, k, ap_norm)
            p, r = precision_recall_from_counts(counts, k)
            nd = ndcg_from_counts(counts, k)
        else:
            ap = _ranked_ap(out, j, k, n_db, ap_norm)
            found = out.rel_found[:, j]
            p, r = found / ke, safe_div(found, out.total_relevant)
            nd = safe_div(out.dcg[:, j], ideal_dcg(counts.gain_hist, ke, disc))
        values[f"map@{k}"] = float(ap.mean())
        values[f"p@{k}"] = float(p.mean())
        values[f"r@{k}"] = float(r.mean())
        values[f"ndcg@{k}"] = float(nd.mean())
    prec_r, empty_r = precision_within_radius_from_counts(counts, radius)
    values[f"p@r{radius}"] = float(prec_r.mean())
    values[f"empty_ball@r{radius}"] = float(empty_r.mean())
    values["no_relevant"] = float((counts.total_relevant == 0).mean())
    curve = pr_curve_from_counts(counts, "zero")
    conventions = {
        "ties": f"{ties}: {_TIES_TEXT[ties]}",
        "ap_norm": f"{ap_norm}: {_AP_NORM_TEXT[ap_norm]}",
        "map@all": "standard AP over the full ranking (sum of precisions at relevant items / relevant items in the database)",
        "relevance": "shares at least one label (single-label: same class); NDCG gain = number of shared labels",
        "ndcg": "linear gain, discount 1/log2(rank+1), ideal DCG from the sorted gains (as sklearn.metrics.ndcg_score)",
        "no_relevant": "a query without relevant database items has AP, recall and NDCG 0 and stays in the mean",
        "k_clip": "cut-offs larger than the database are clipped to its size (P@K divides by min(K, N))",
        "pr_empty_ball": "P-R curve: radius r retrieves the items at distance <= r; an empty ball counts as precision 0 "
        "and every query stays in the mean; queries without relevant items have recall 0",
        "p@r_empty_ball": f"p@r{radius}: a query with no item within radius {radius} counts as precision 0; "
        f"empty_ball@r{radius} is the fraction of such queries",
    }
    return RetrievalMetrics(values=values, pr_curve=curve, per_query_ap=per_query_ap, conventions=conventions)
