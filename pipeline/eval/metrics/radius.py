"""Set-based metrics of Hamming balls from the per-distance counts: the precision-recall curve by Hamming
radius 0..K and the precision within radius r (the "hash lookup" protocol of Wang et al., "A Survey on
Learning to Hash", TPAMI 2018). Items within radius r form a set, so these do not depend on the tie rule.

Empty balls: a query whose ball is empty counts as precision 0 (``empty_ball="zero"``, the default; every
query stays in the mean) or is left out of the mean at that radius (``"skip"``); the fraction of such
queries is reported beside it. Queries without relevant items have recall 0.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.errors import MetricsError
from pipeline.eval.metrics.checks import EMPTY_BALL_RULES, check_radius
from pipeline.eval.metrics.engine import DistanceCounts
from pipeline.eval.metrics.numeric import safe_div


def pr_curve_from_counts(counts: DistanceCounts, empty_ball: str = "zero") -> dict[str, np.ndarray]:
    """Precision and recall of the items within Hamming radius r = 0..K, averaged over queries (Wang et al., "A Survey on Learning to Hash", TPAMI 2018)."""
    if empty_ball not in EMPTY_BALL_RULES:
        raise MetricsError(f"unknown empty_ball={empty_ball!r}; allowed: {', '.join(EMPTY_BALL_RULES)}")
    ret = np.cumsum(counts.items, axis=1)
    hit = np.cumsum(counts.relevant, axis=1)
    prec = safe_div(hit, ret)
    rec = safe_div(hit, counts.total_relevant[:, None])
    empty = ret == 0
    if empty_ball == "zero":
        p_mean = prec.mean(axis=0)
    else:
        p_mean = safe_div(prec.sum(axis=0), (~empty).sum(axis=0))
    return {
        "radius": np.arange(counts.items.shape[1]),
        "precision": p_mean,
        "recall": rec.mean(axis=0),
        "empty_ball": empty.mean(axis=0),
    }


def precision_within_radius_from_counts(counts: DistanceCounts, radius: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Per-query precision of the items within Hamming radius r (0 for an empty ball) and the empty-ball mask (Wang et al., TPAMI 2018)."""
    rr = min(check_radius(radius), counts.nbits)
    ret = counts.items[:, : rr + 1].sum(axis=1)
    hit = counts.relevant[:, : rr + 1].sum(axis=1)
    return safe_div(hit, ret), ret == 0

