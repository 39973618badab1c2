"""The evaluation-matrix report section (pipeline/report/matrix.py) against hand-computed changes."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from pipeline.report.matrix import codelength_rows, collect, paired_change, render_matrix, suite_baselines


def test_paired_change_hand_case():
    # differences 0.02, 0.04, 0.03: mean 0.03, sd 0.01, 2 SE = 0.0115 -> beyond noise
    ch = paired_change({0: 0.5, 1: 0.5, 2: 0.5}, {0: 0.52, 1: 0.54, 2: 0.53})
    assert ch["mean"] == pytest.approx(0.03) and ch["beyond"] is True
    t = 0.03 / (0.01 / math.sqrt(3))
    assert t == pytest.approx(5.196, abs=1e-3)
    assert ch["p"] == pytest.approx(2 * stats.t.sf(t, df=2), rel=1e-9)  # two-sided, 2 degrees of freedom: 0.0351
    # differences +0.05, -0.05, +0.01: mean 0.0033, far inside 2 SE
    assert paired_change({0: 0.5, 1: 0.5, 2: 0.5}, {0: 0.55, 1: 0.45, 2: 0.51})["beyond"] is False
    assert paired_change({0: 0.5}, {1: 0.6}) is None  # no common seed: nothing paired


def test_suite_baselines():
    impl = {"dcmh-adam": "dcmh", "dcmh-adam-gradbal": "dcmh", "mfpmc": "mfpmc", "mfpmc-gradbal": "mfpmc"}.get
    assert suite_baselines(["dcmh-adam", "dcmh-adam-gradbal", "mfpmc", "mfpmc-gradbal"], impl) == {
        "dcmh-adam": "dcmh-adam", "dcmh-adam-gradbal": "dcmh-adam", "mfpmc": "mfpmc", "mfpmc-gradbal": "mfpmc"}


def _evals():
    trials, evaluations = {}, {}
    for method, bits, base in (("a", 16, 0.5), ("a-x", 16, 0.6), ("a", 32, 0.7)):
        for seed in (0, 1, 2):
            key = f"ds/{method}/{bits}b/s{seed}/h"
            code = {f"i2t/plain/map@100": base + 0.01 * seed, f"i2t/code/map@100": base - 0.1 + 0.01 * seed,
                    "i2t/code/index/codelayer/latency_p50_ms": 1.0, "i2t/plain/index/flat/memory_bytes": 2048.0}
            if bits == 32:
                code.update({"i2t/prefix8/map@all": 0.3, "i2t/prefix8_natural/map@all": 0.2, "i2t/prefix8_reverse/map@all": 0.1,
                             "i2t/prefix16/map@all": 0.55, "i2t/prefix16_natural/map@all": 0.5, "i2t/prefix16_reverse/map@all": 0.4,
                             "i2t/prefix24/map@all": 0.6, "i2t/prefix24_natural/map@all": 0.6, "i2t/prefix24_reverse/map@all": 0.6})
            trials[key] = {"views": {"profile": "p", "code": "c"}}
            evaluations[f"{key}|p"] = {"metrics": {"i2t/map@all": base + 0.01 * seed}}
            evaluations[f"{key}|c"] = {"metrics": code}
    return {"s": {"trials": trials, "evaluations": evaluations}}


def test_matrix_and_code_length_tables():
    evals = _evals()
    html = render_matrix(evals, {"s": {"a": "a", "a-x": "a"}})
    assert "Evaluation matrix" in html and "a-x (vs a) +code" in html
    assert "+0.1000 *" in html  # a-x plain vs a plain: +0.1 on every seed (sd 0: beyond noise)
    assert "-0.1000 *" in html  # a +code vs a plain
    rows = codelength_rows(collect(evals), "i2t")
    r16 = next(r for r in rows if r["row"] == "ds a 32 -> 16 bits")
    assert r16["cells"][1].startswith("0.5500") and r16["cells"][4].startswith("0.5100")  # trained at 16 bits: mean of 0.5, 0.51, 0.52
    assert r16["changes"][0].startswith("+0.0500")  # importance vs stored order
    assert render_matrix({}, {}) == ""
