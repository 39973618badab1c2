"""Published numbers beside ours: cells are filled only through the explicit mapping, with the paper's convention and flags."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.config import EvalConfig
from pipeline.eval.stored import conventions_for, spec_eval_key
from pipeline.report.compare import compare_cell, prepare_runs, published_sections
from pipeline.report.published import load_published


def _table(key):
    return next(t for t in load_published() if t.key == key)


def _runs(rows):
    df = pd.DataFrame(rows)
    for d in ("i2t", "t2i"):
        df[f"m:{d}/map@all"] = 0.5
    return prepare_runs(df)


def _evals(rows, index_values, expected_values):
    """The evaluate stage's results for ``rows``: mAP@all per direction under each convention."""
    trials, evaluations = {}, {}
    for r, vi, ve in zip(rows, index_values, expected_values):
        views = {}
        for c in conventions_for([None]):
            k = spec_eval_key(c.apply(EvalConfig()))
            views[c.name] = k
            v = vi if c.ties == "index" else ve
            evaluations[f"{r['trial_key']}|{k}"] = {"metrics": {"i2t/map@all": v, "t2i/map@all": v}}
        trials[r["trial_key"]] = {"run_id": r["trial_key"], "views": views}
    return {rows[0]["suite"]: {"trials": trials, "evaluations": evaluations}}


def _row(method, seed, bits=64, dataset="nuswide", protocol="dcmh", weights=None):
    return dict(suite="s", trial_key=f"{dataset}/{method}/{bits}b/s{seed}", dataset=dataset, protocol=protocol, method=method, bits=bits, seed=seed, weights=weights)


def test_own_dataset_cell_mean_std_diff_and_seed_flag():
    t = _table("mfpmc/table5")
    rows = [_row("mfpmc-base", 0), _row("mfpmc-base", 1)]
    cell = next(c for c in t.cells if c.method == "Base" and c.dataset == "NUS-WIDE" and c.direction == "i2t")
    v = compare_cell(_runs(rows), _evals(rows, [0.50, 0.60], [0.52, 0.62]), t, cell)
    assert v.status == "ok" and v.ours.n == 2
    assert v.ours.mean == pytest.approx(0.55) and v.ours.std == pytest.approx(0.0707106781, abs=1e-8)
    assert v.diff() == pytest.approx(0.55 - 0.5630)
    assert v.ours.expected == [0.52, 0.62]
    assert v.ours.flags == ["fewer seeds: 2 vs the paper's 5"]  # the paper's own dataset: no other-dataset flag


def test_stand_in_and_random_init_flags_and_not_run():
    t = _table("mfpmc/table5")
    rows = [_row("mfpmc", 0, bits=32, dataset="wikipedia", protocol="standard", weights="image=random-init (tiny config)")]
    runs, evals = _runs(rows), _evals(rows, [0.3], [0.31])
    full = next(c for c in t.cells if c.method == "Base+IMFM+TMFM+LFPMC" and c.dataset == "MIRFlickr-25K" and c.direction == "t2i")
    v = compare_cell(runs, evals, t, full)
    assert v.status == "ok" and v.ours.methods == ["mfpmc"]
    assert any(f.startswith("other dataset") for f in v.ours.flags)
    assert "other code length: ours 32 bits, paper 64" in v.ours.flags and "random init" in v.ours.flags
    base = next(c for c in t.cells if c.method == "Base" and c.dataset == "MIRFlickr-25K")
    assert compare_cell(runs, evals, t, base).status == "not run"
    # a run on a dataset the table does not map is never used
    other = [_row("mfpmc", 0, dataset="digits", protocol="standard")]
    assert compare_cell(_runs(other), _evals(other, [0.9], [0.9]), t, full).status == "not run"


def test_unmapped_paper_method_and_missing_evaluation():
    lt = _table("ltdual/table1")  # CCA-ITQ: a baseline row with no implementation of ours
    cca = next(c for c in lt.cells if c.method == "CCA-ITQ")
    assert compare_cell(_runs([_row("dcmh", 0)]), {}, lt, cca).status == "no implementation"
    t = _table("mfpmc/table3")
    scm = next(c for c in t.cells if c.method == "SCM")  # mapped to scm-seq (issue 16): not run here
    assert compare_cell(_runs([_row("dcmh", 0)]), {}, t, scm).status == "not run"
    rows = [_row("dcmh", 0, bits=16, dataset="mirflickr25k")]
    dcmh = next(c for c in t.cells if c.method == "DCMH" and c.bits == 16 and c.direction == "i2t")
    assert compare_cell(_runs(rows), {}, t, dcmh).status == "not evaluated"


def test_sections_all_versus_matched():
    tables = load_published()
    empty = prepare_runs(pd.DataFrame(columns=["suite", "trial_key", "dataset", "protocol", "method", "bits", "seed"]))
    every = published_sections(empty, {}, tables, only_with_runs=False)
    assert len(every) == len(tables) and not any(s["any_ours"] for s in every)
    cells = [c for s in every for r in s["rows"] for c in r["cells"]]
    assert {c["status"] for c in cells} == {"not run", "no implementation"}
    assert published_sections(empty, {}, tables, only_with_runs=True) == []
    assert any(s["missing"] for s in every)  # CRH / ADIH tables are listed with the reason
