"""Is the best method better than seed noise? Confidence intervals, paired tests, Holm's correction, seeds needed.

Sources (formulas only; the code is ours):

* 95% confidence interval of a mean over n seeds: mean ± t_{0.975, n-1} · sd / sqrt(n), Student's t
  (any statistics text, e.g. Wasserman, *All of Statistics*, 2004, Sec. 10.4).
* Methods trained with the same seeds are *paired* (the seed fixes initialisation and batch order): the
  paired t-test on the per-seed differences d_i = a_i - b_i, t = mean(d) / (sd(d) / sqrt(n)), n-1 degrees
  of freedom (:func:`scipy.stats.ttest_rel`), and the Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`,
  exact two-sided p) where n allows: with n non-zero differences its smallest two-sided p is 2 / 2^n, so
  below ``WILCOXON_MIN_N`` = 6 it can never reach α = 0.05 and is not run.
* Holm's step-down correction (Holm, "A simple sequentially rejective multiple test procedure",
  Scand. J. Statist. 6, 1979): sort the m p-values p_(1) <= ... <= p_(m); adjusted
  p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)). A report table is one family: its columns (code lengths)
  each ask "is the best better than the runner-up", and bold needs the Holm-adjusted p < α.
* Seeds needed: the smallest n for which a two-sided paired t-test at level α has power >= 1 - β against
  the observed effect d = |mean(d_i)| / sd(d_i): power(n) = 1 - F(t_{1-α/2, n-1}; n-1, δ) + F(-t_{1-α/2, n-1}; n-1, δ)
  with F the noncentral t CDF and δ = d · sqrt(n) (Cohen, *Statistical Power Analysis*, 1988, ch. 2; the
  normal approximation is n ≈ ((z_{1-α/2} + z_{1-β}) / d)^2). α = 0.05, power 0.8.

Where two methods share fewer than two seeds, the unpaired Welch t-test (:func:`scipy.stats.ttest_ind`,
``equal_var=False``) is the fallback, and the note says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.8
WILCOXON_MIN_N = 6
MAX_SEEDS_HINT = 1000


def t_interval(values, level: float = 0.95) -> tuple[float, float] | None:
    """Student-t confidence interval of the mean: mean ± t_{(1+level)/2, n-1} sd / sqrt(n); None for n < 2."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return None
    half = float(stats.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return float(v.mean()) - half, float(v.mean()) + half


def welch_p(a, b) -> float | None:
    """Two-sided p of Welch's unequal-variance t-test; None with fewer than 2 values on a side."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return None
    if a.std(ddof=1) == 0 and b.std(ddof=1) == 0:
        return 0.0 if a.mean() != b.mean() else 1.0
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return None if math.isnan(p) else p


def paired_t_p(a, b) -> float | None:
    """Two-sided p of the paired t-test on a_i - b_i (same seeds); None for n < 2; 0/1 when the differences are constant."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) < 2:
        return None
    if d.std(ddof=1) == 0:
        return 0.0 if d.mean() != 0 else 1.0
    return float(stats.ttest_rel(a, b).pvalue)


def wilcoxon_p(a, b) -> float | None:
    """Two-sided exact p of the Wilcoxon signed-rank test on a_i - b_i; None below ``WILCOXON_MIN_N`` non-zero differences."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if int((d != 0).sum()) < WILCOXON_MIN_N:
        return None
    return float(stats.wilcoxon(d).pvalue)


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm (1979) step-down adjusted p-values, in the input order; None entries are not tests and stay None."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


def paired_t_power(n: int, effect: float, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test with n pairs against standardised effect ``effect`` = |mean(d)| / sd(d)."""
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = effect * math.sqrt(n)
    return float(1 - stats.nct.cdf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def seeds_needed(diffs, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Smallest n >= 2 with paired-t power >= ``power`` at the observed effect of ``diffs``; None when not estimable or > 1000."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2 or d.std(ddof=1) == 0 or d.mean() == 0:
        return None
    effect = abs(float(d.mean())) / float(d.std(ddof=1))
    for n in range(2, MAX_SEEDS_HINT + 1):
        if paired_t_power(n, effect, alpha) >= power:
            return n
    return None


@dataclass(frozen=True)
class BestTest:
    """Best vs runner-up in one column: the test, its raw p and (after :func:`correct`) the Holm-adjusted p."""

    best: str | None
    runner_up: str | None
    p: float | None  # None: no test possible
    significant: bool
    test: str = "Welch"  # "paired t" | "Welch"
    n_pairs: int = 0
    wilcoxon: float | None = None
    p_adj: float | None = None
    family: int = 1
    seeds_hint: int | None = None

    def note(self) -> str:
        if self.best is None or self.runner_up is None:
            return "one method only"
        if self.p is None:
            return f"{self.best} vs {self.runner_up}: not testable (fewer than 2 seeds)"
        verdict = "better" if self.significant else "not separable from seed noise"
        pairs = f" over {self.n_pairs} shared seeds" if self.test == "paired t" else " (unpaired: fewer than 2 shared seeds)"
        text = f"{self.best} vs {self.runner_up}{pairs}: {self.test} p = {self.p:.3g}"
        if self.wilcoxon is not None:
            text += f", Wilcoxon p = {self.wilcoxon:.3g}"
        elif self.test == "paired t":
            text += f", Wilcoxon not run (needs ≥ {WILCOXON_MIN_N} seeds)"
        if self.p_adj is not None and self.family > 1:
            text += f", Holm-adjusted p = {self.p_adj:.3g} over {self.family} tests"
        text += f" ({verdict} at α = {ALPHA})"
        if not self.significant and self.seeds_hint:
            text += f"; ~{self.seeds_hint} seeds would separate them (paired t, 80% power at the observed effect)"
        return text


def best_vs_runner_up(samples: dict[str, list[float]], seeds: dict[str, list[int]] | None = None) -> BestTest:
    """The method with the highest mean, the next one, and the test between them: paired t over the seeds
    both have when ``seeds`` give at least 2 shared ones (with Wilcoxon where n allows), else Welch."""
    ranked = sorted((m for m in samples if len(samples[m])), key=lambda m: -float(np.mean(samples[m])))
    if len(ranked) < 2:
        return BestTest(ranked[0] if ranked else None, None, None, False)
    a, b = ranked[0], ranked[1]
    if seeds is not None:
        sa, sb = dict(zip(seeds[a], samples[a])), dict(zip(seeds[b], samples[b]))
        shared = sorted(set(sa) & set(sb))
        if len(shared) >= 2:
            x, y = [sa[s] for s in shared], [sb[s] for s in shared]
            p = paired_t_p(x, y)
            return BestTest(a, b, p, p is not None and p < ALPHA, "paired t", len(shared), wilcoxon_p(x, y), p, 1, seeds_needed(np.subtract(x, y)))
    p = welch_p(samples[a], samples[b])
    return BestTest(a, b, p, p is not None and p < ALPHA, "Welch", 0, None, p)


def correct(tests: list[BestTest]) -> list[BestTest]:
    """The tests of one table with Holm-adjusted p-values; significant only where the adjusted p < α."""
    adj = holm([t.p if t.runner_up is not None else None for t in tests])
    m = sum(p is not None for p in adj)
    out = []
    for t, pa in zip(tests, adj):
        sig = pa is not None and pa < ALPHA
        out.append(BestTest(t.best, t.runner_up, t.p, sig, t.test, t.n_pairs, t.wilcoxon, pa, m, t.seeds_hint))
    return out
