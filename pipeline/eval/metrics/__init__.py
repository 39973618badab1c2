"""Retrieval metrics of packed binary codes ranked by Hamming distance, exact and tie-aware.

Every public name lives in one module of this package, one job each, imports pointing down only:

* :mod:`~pipeline.eval.metrics.checks`: input checks (packed codes, labels, tie rules, AP@K
  normalisations, cut-offs, radius, threads) and the preparation of codes and labels into words;
* :mod:`~pipeline.eval.metrics.numeric`: exact helpers (harmonic numbers, DCG discounts, ideal DCG);
* :mod:`~pipeline.eval.metrics.engine`: the counting engine, numpy path and compiled kernel: per-query
  counts at each Hamming distance (:class:`DistanceCounts`) and ranked statistics, no full sort;
* :mod:`~pipeline.eval.metrics.ties`: the tie-aware closed forms (McSherry & Najork, ECIR 2008) of AP@k,
  P@k, R@k and NDCG@k from the counts; the tie rules of every ranking metric are documented there;
* :mod:`~pipeline.eval.metrics.radius`: set-based metrics of Hamming balls (P-R curve, P@r);
* :mod:`~pipeline.eval.metrics.retrieval`: the metrics from codes and labels and
  :func:`evaluate_retrieval` (all at once), with the conventions they follow;
* :mod:`~pipeline.eval.metrics.groups`: head / medium / tail class groups and per-group mAP (OLTR).

``checks <- numeric <- engine <- ties, radius <- retrieval``; ``groups`` stands alone. Import the names
from ``pipeline.eval.metrics``; the modules are the layout, not the interface.
"""

from __future__ import annotations

from pipeline.core.errors import MetricsError
from pipeline.eval.metrics.checks import AP_NORMS, EMPTY_BALL_RULES, TIE_MODES
from pipeline.eval.metrics.engine import DistanceCounts, graded_relevance, hamming_distance_counts, hamming_distances
from pipeline.eval.metrics.groups import class_groups, class_groups_by_threshold, map_by_group
from pipeline.eval.metrics.radius import pr_curve_from_counts, precision_within_radius_from_counts
from pipeline.eval.metrics.retrieval import (
    RetrievalMetrics,
    average_precision,
    evaluate_retrieval,
    mean_average_precision,
    ndcg_at_k,
    pr_curve,
    precision_recall_at_k,
    precision_within_radius,
)
from pipeline.eval.metrics.ties import average_precision_from_counts, ndcg_from_counts, precision_recall_from_counts

__all__ = [
    "AP_NORMS",
    "TIE_MODES",
    "DistanceCounts",
    "MetricsError",
    "RetrievalMetrics",
    "average_precision",
    "average_precision_from_counts",
    "class_groups",
    "class_groups_by_threshold",
    "evaluate_retrieval",
    "graded_relevance",
    "hamming_distance_counts",
    "hamming_distances",
    "map_by_group",
    "mean_average_precision",
    "ndcg_at_k",
    "ndcg_from_counts",
    "pr_curve",
    "pr_curve_from_counts",
    "precision_recall_at_k",
    "precision_recall_from_counts",
    "precision_within_radius",
    "precision_within_radius_from_counts",
]
