"""Is the best method better than seed noise? Welch's t-test over seeds (unequal variances, two-sided).

A report table bolds its best mean only when Welch's test rejects "best and runner-up have the same mean"
at ``ALPHA``; with fewer than two seeds on either side, or zero variance on both sides with equal means,
no test is possible and nothing is bold. The p-value comes from :func:`scipy.stats.ttest_ind` with
``equal_var=False``. No correction for the several code-length columns is applied (each column is one
question: which method is best at this code length).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05


@dataclass(frozen=True)
class BestTest:
    best: str | None
    runner_up: str | None
    p: float | None  # None: no test possible
    significant: bool

    def note(self) -> str:
        if self.best is None or self.runner_up is None:
            return "one method only"
        if self.p is None:
            return f"{self.best} vs {self.runner_up}: not testable (fewer than 2 seeds)"
        verdict = "better" if self.significant else "not separable from seed noise"
        return f"{self.best} vs {self.runner_up}: Welch p = {self.p:.3g} ({verdict} at α = {ALPHA})"


def welch_p(a, b) -> float | None:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return None
    if a.std(ddof=1) == 0 and b.std(ddof=1) == 0:
        return 0.0 if a.mean() != b.mean() else 1.0
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return None if math.isnan(p) else p


def best_vs_runner_up(samples: dict[str, list[float]]) -> BestTest:
    """The method with the highest mean, the next one, and whether Welch's test separates them."""
    ranked = sorted((m for m in samples if len(samples[m])), key=lambda m: -float(np.mean(samples[m])))
    if len(ranked) < 2:
        return BestTest(ranked[0] if ranked else None, None, None, False)
    p = welch_p(samples[ranked[0]], samples[ranked[1]])
    return BestTest(ranked[0], ranked[1], p, p is not None and p < ALPHA)
