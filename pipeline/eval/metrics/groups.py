"""Class groups for long-tail analysis: head / medium / tail classes by training frequency, and the mean
per-query AP within each group (the many / medium / few-shot split of OLTR, Liu et al., "Large-Scale
Long-Tailed Recognition in an Open World", CVPR 2019; used as per-group mAP by long-tail hashing).
"""

from __future__ import annotations

import numpy as np

from pipeline.core.errors import MetricsError


def class_groups(train_class_counts, head_frac: float = 1 / 3, tail_frac: float = 1 / 3) -> np.ndarray:
    """Group of each class by training frequency: the ``head_frac`` most frequent classes "head", the ``tail_frac`` rarest "tail", the rest "medium" (Liu et al., OLTR, CVPR 2019).

    Classes are ranked by decreasing count, equal counts by class index; group sizes are
    ``round(head_frac * C)`` and ``round(tail_frac * C)``."""
    counts = np.asarray(train_class_counts)
    if counts.ndim != 1 or counts.size == 0:
        raise MetricsError(f"train_class_counts must be a non-empty 1-D array, got shape {counts.shape}")
    if not (0 <= head_frac <= 1 and 0 <= tail_frac <= 1 and head_frac + tail_frac <= 1):
        raise MetricsError(f"head_frac and tail_frac must be in [0, 1] with a sum <= 1, got {head_frac}, {tail_frac}")
    c = counts.size
    order = np.lexsort((np.arange(c), -counts.astype(np.float64)))
    n_head = int(round(head_frac * c))
    n_tail = min(int(round(tail_frac * c)), c - n_head)
    out = np.full(c, "medium", dtype=object)
    out[order[:n_head]] = "head"
    if n_tail:
        out[order[c - n_tail :]] = "tail"
    return out.astype(str)


def class_groups_by_threshold(train_class_counts, head_min: int = 100, tail_max: int = 20) -> np.ndarray:
    """Group of each class by training count: > head_min "head", < tail_max "tail", else "medium" (OLTR many/medium/few-shot, Liu et al., CVPR 2019)."""
    counts = np.asarray(train_class_counts)
    if counts.ndim != 1 or counts.size == 0:
        raise MetricsError(f"train_class_counts must be a non-empty 1-D array, got shape {counts.shape}")
    if tail_max > head_min:
        raise MetricsError(f"tail_max ({tail_max}) must not exceed head_min ({head_min})")
    return np.where(counts > head_min, "head", np.where(counts < tail_max, "tail", "medium")).astype(str)


def map_by_group(per_query_ap, groups) -> dict[str, float]:
    """Mean per-query AP within each query group, e.g. ``class_groups(...)[query_class]`` (per-group mAP as in OLTR, Liu et al., CVPR 2019)."""
    ap = np.asarray(per_query_ap, dtype=np.float64)
    grp = np.asarray(groups)
    if ap.ndim != 1 or grp.shape != ap.shape:
        raise MetricsError(f"per_query_ap {ap.shape} and groups {grp.shape} must be 1-D of the same length")
    names = [str(g) for g in np.unique(grp)]
    preferred = [g for g in ("head", "medium", "tail") if g in names]
    return {g: float(ap[grp.astype(str) == g].mean()) for g in preferred + sorted(set(names) - set(preferred))}

