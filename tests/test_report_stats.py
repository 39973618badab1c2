"""Bold only when the best beats the runner-up beyond seed noise (Welch's t-test over seeds)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import special

from pipeline.report.build import summary_table
from pipeline.report.stats import best_vs_runner_up, welch_p


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


def _frame(gap):
    rows = [
        {"suite": "s", "dataset": "d", "method": m, "bits": 16, "seed": s, "run_id": f"{m}{s}", "m:i2t/map@all": base + j}
        for m, base in (("a", 0.5), ("b", 0.5 + gap))
        for s, j in ((0, -0.02), (1, 0.02), (2, 0.0))
    ]
    return pd.DataFrame(rows)


def test_summary_table_bolds_only_significant_best():
    noisy = {r["method"]: r["cells"][0] for r in summary_table(_frame(0.01), "i2t", "map@all").rows}
    assert not noisy["b"]["best"] and noisy["b"]["top_ns"] and not noisy["a"]["top_ns"]
    clear = summary_table(_frame(0.2), "i2t", "map@all")
    cells = {r["method"]: r["cells"][0] for r in clear.rows}
    assert cells["b"]["best"] and not cells["b"]["top_ns"]
    assert clear.tests and "Welch p" in clear.tests[0]
