"""Report tables (mean ± std over seeds, best in bold, seed counts) and the resume bookkeeping in MLflow."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.train import tracking
from pipeline.config import load_params, expand_suite
from pipeline.report.build import build_report, summary_table, pr_svg
from pipeline.report.collect import ProfileRuns
from tests.conftest import REPO


def _frame() -> pd.DataFrame:
    rows = []
    for method, base in (("a", 0.5), ("b", 0.6)):
        for bits in (16, 32):
            for seed, jitter in ((0, -0.01), (1, 0.01)):
                rows.append({"suite": "s", "dataset": "d", "method": method, "bits": bits, "seed": seed, "run_id": f"{method}{bits}{seed}",
                             "m:i2t/map@all": base + bits / 1000 + jitter, "git_commit": "abc", "git_dirty": "false", "device": "cpu",
                             "manifest": "m", "ties": "expected", "ap_norm": "retrieved"})
    return pd.DataFrame(rows)


def test_summary_table_mean_std_best():
    t = summary_table(_frame(), "i2t", "map@all")
    assert t.columns == [16, 32]
    rows = {r["method"]: r["cells"] for r in t.rows}
    # method b at 16 bits: values 0.606 ± 0.01 -> mean 0.616, sample std sqrt(2)*0.01
    assert rows["b"][0]["text"] == f"{0.616:.4f} ± {np.std([0.606, 0.626], ddof=1):.4f}"
    assert rows["b"][0]["best"] and not rows["a"][0]["best"]
    assert rows["a"][1]["n"] == 2


def test_report_html_offline(tmp_path):
    runs = ProfileRuns(profile="demo", runs=_frame(), curves={}, missing_suites=["other"])
    html = build_report(runs, tmp_path, title="T", notes={}).read_text()
    assert "<td>a</td>" in html and "<td>b</td>" in html
    assert 'class="best"' in html and "No bench results yet for suites: other" in html
    assert "<script src" not in html and "https://" not in html


def test_pr_svg_has_one_polyline_per_series():
    svg = pr_svg([("x", np.array([0, 0.5, 1.0]), np.array([1.0, 0.8, 0.2])), ("y", np.array([0, 1.0]), np.array([1.0, np.nan]))])
    assert svg.count("<polyline") == 2 and svg.startswith("<svg")


def test_finished_trials_resume_bookkeeping(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    params = load_params(REPO / "params.yaml")
    a, b = expand_suite(params, "demo-digits")[:2]
    exp = tracking.ensure_experiment(uri, "hashbench/test", (tmp_path / "art").as_uri())
    assert tracking.ensure_experiment(uri, "hashbench/test", None) == exp
    r1 = tracking.start_trial_run(uri, exp, a, {"git.commit": "x"})
    r2 = tracking.start_trial_run(uri, exp, b, {"git.commit": "x"})
    assert tracking.finished_trials(uri, exp) == {}  # RUNNING runs are not finished
    tracking.end_run(uri, r1, "FINISHED")
    tracking.end_run(uri, r2, "FAILED", error="boom")
    assert tracking.finished_trials(uri, exp) == {a.key(): r1}
    run = tracking.client(uri).get_run(r2)
    assert run.data.tags["hashbench.error"] == "boom"
    assert run.data.params["method_params.lambda_q"] == str(a.method_params["lambda_q"])


@pytest.mark.parametrize(
    "name",
    ["i2t/map@all", "i2t/map@100", "t2i/ndcg@500", "i2i/p@r2", "i2i/index/hash/recall_at_k", "i2t/random/map@all", "loss/image/likelihood"],
)
def test_metric_names_round_trip_through_mlflow(name):
    logged = tracking.metric_name(name)
    assert "@" not in logged
    assert tracking.metric_name_from_mlflow(logged) == name
