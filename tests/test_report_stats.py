"""Bold only when the best beats the runner-up beyond seed noise: confidence intervals, paired tests over
shared seeds, Holm's correction within a table, seeds needed; checked against scipy.stats and by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

from pipeline.report.build import summary_table
from pipeline.report.stats import BestTest, best_vs_runner_up, correct, holm, paired_t_p, paired_t_power, seeds_needed, t_interval, welch_p, wilcoxon_p


def _welch_by_hand(a, b):
    """Welch's t and Welch-Satterthwaite degrees of freedom; two-sided p from the Student t CDF (via betainc)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(special.betainc(df / 2, 0.5, df / (df + t * t)))


def test_welch_p_matches_the_formula():
    a, b = [0.61, 0.63, 0.60, 0.64], [0.58, 0.57, 0.62]
    assert welch_p(a, b) == pytest.approx(_welch_by_hand(a, b), rel=1e-9)
    assert welch_p([0.5], [0.4, 0.3]) is None
    assert welch_p([0.5, 0.5], [0.4, 0.4]) == 0.0 and welch_p([0.5, 0.5], [0.5, 0.5]) == 1.0


def test_best_vs_runner_up():
    t = best_vs_runner_up({"a": [0.50, 0.52], "b": [0.70, 0.71], "c": [0.51, 0.69]})
    assert (t.best, t.runner_up) == ("b", "c") and not t.significant and "not separable" in t.note()
    assert best_vs_runner_up({"a": [0.5, 0.51, 0.49], "b": [0.7, 0.71, 0.69]}).significant


def _frame(gap, jitter_b=(-0.02, 0.02, 0.0)):
    jitter_a = (-0.02, 0.02, 0.0)
    rows = [
        {"suite": "s", "dataset": "d", "method": m, "bits": 16, "seed": s, "run_id": f"{m}{s}", "m:i2t/map@all": base + j}
        for m, base, jit in (("a", 0.5, jitter_a), ("b", 0.5 + gap, jitter_b))
        for s, j in zip((0, 1, 2), jit)
    ]
    return pd.DataFrame(rows)


def test_summary_table_bolds_only_significant_best():
    noisy = {r["method"]: r["cells"][0] for r in summary_table(_frame(0.01, (0.02, -0.02, 0.0)), "i2t", "map@all").rows}
    assert not noisy["b"]["best"] and noisy["b"]["top_ns"] and not noisy["a"]["top_ns"]
    clear = summary_table(_frame(0.2), "i2t", "map@all")
    cells = {r["method"]: r["cells"][0] for r in clear.rows}
    assert cells["b"]["best"] and not cells["b"]["top_ns"] and clear.any_bold
    assert clear.tests and "paired t p" in clear.tests[0] and "3 shared seeds" in clear.tests[0]
    lo, hi = t_interval([0.68, 0.72, 0.70])
    assert cells["b"]["ci"] == f"[{lo:.4f}, {hi:.4f}]"


def test_pairing_separates_what_welch_cannot():
    """The same seed shifts both methods: unpaired the gap drowns in seed noise, paired it is constant."""
    a = [0.50, 0.60, 0.70, 0.55]
    b = [x + 0.01 + e for x, e in zip(a, (0.001, -0.001, 0.0005, -0.0005))]
    assert welch_p(b, a) > 0.5
    assert paired_t_p(b, a) == pytest.approx(stats.ttest_rel(b, a).pvalue, rel=1e-12) and paired_t_p(b, a) < 1e-3
    t = best_vs_runner_up({"a": a, "b": b}, {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]})
    assert (t.best, t.test, t.n_pairs) == ("b", "paired t", 4) and t.significant
    # only one shared seed: the unpaired fallback, and the note says so
    u = best_vs_runner_up({"a": a, "b": b}, {"a": [0, 1, 2, 3], "b": [3, 4, 5, 6]})
    assert u.test == "Welch" and "unpaired" in u.note()


def test_confidence_interval_is_students_t():
    v = [0.61, 0.63, 0.60, 0.64, 0.62]
    lo, hi = t_interval(v)
    half = stats.t.ppf(0.975, 4) * np.std(v, ddof=1) / math.sqrt(5)
    assert (lo, hi) == pytest.approx((np.mean(v) - half, np.mean(v) + half), rel=1e-12)
    ref = stats.t.interval(0.95, 4, loc=np.mean(v), scale=stats.sem(v))
    assert (lo, hi) == pytest.approx(ref, rel=1e-12)
    assert t_interval([0.5]) is None


def test_wilcoxon_only_where_n_allows():
    a = [0.61, 0.63, 0.60, 0.64, 0.62, 0.66, 0.65]
    b = [0.60, 0.60, 0.61, 0.62, 0.60, 0.63, 0.61]
    assert wilcoxon_p(a, b) == pytest.approx(stats.wilcoxon(np.subtract(a, b)).pvalue, rel=1e-12)
    # five pairs: the smallest exact two-sided p is 2 / 2^5 = 0.0625 > 0.05, so the test is not run
    assert stats.wilcoxon([0.1, 0.2, 0.3, 0.4, 0.5]).pvalue == pytest.approx(0.0625)
    assert wilcoxon_p(a[:5], b[:5]) is None


def test_holm_hand_worked():
    """p = (0.01, 0.04, 0.03, None): sorted 0.01, 0.03, 0.04 with m = 3 -> 3*0.01 = 0.03, max(0.03, 2*0.03) = 0.06,
    max(0.06, 1*0.04) = 0.06; back in input order (0.03, 0.06, 0.06, None): only the first survives α = 0.05."""
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    tests = [BestTest("x", "y", p, p < 0.05, "paired t", 3) for p in (0.01, 0.04, 0.03)]
    fixed = correct(tests)
    assert [t.significant for t in fixed] == [True, False, False] and fixed[1].family == 3
    assert "Holm-adjusted p = 0.06 over 3 tests" in fixed[1].note()


def test_seeds_needed_paired_t_power():
    """Standard sample sizes of a two-sided one-sample / paired t-test at α = 0.05, power 0.8 (Cohen 1988):
    d = 1 -> 10 pairs, d = 0.5 -> 34 pairs; the returned n is the first with power >= 0.8."""
    diffs_d1 = [1.0, -1.0, 1.0, 3.0]  # mean 1, sd 1.633: rescale to d = 1 exactly below
    d = np.asarray(diffs_d1)
    unit = (d - d.mean()) / d.std(ddof=1) + 1.0  # mean 1, sd 1
    assert seeds_needed(unit) == 10
    assert seeds_needed((unit - 1.0) + 0.5) == 34
    n = seeds_needed(unit)
    assert paired_t_power(n, 1.0) >= 0.8 > paired_t_power(n - 1, 1.0)
    # the normal approximation ((z_.975 + z_.8) / d)^2 = 7.85 is a lower bound for d = 1
    assert ((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / 1.0) ** 2 < n
    assert seeds_needed([0.01, 0.01]) is None and seeds_needed([0.1]) is None
    noisy = best_vs_runner_up({"a": [0.50, 0.52, 0.51], "b": [0.53, 0.51, 0.52]}, {"a": [0, 1, 2], "b": [0, 1, 2]})
    assert not noisy.significant and noisy.seeds_hint and f"~{noisy.seeds_hint} seeds" in noisy.note()
