"""``bench`` on a suite with an ``incremental:`` block: MLflow runs per (method, bits, seed, new classes),
resume, and the config checks of such suites. Runs on prepared Wikipedia, no Ray (the protocol is timed
and runs trial by trial)."""

from __future__ import annotations

import copy

import pytest

from pipeline.config import expand_suite, load_params
from pipeline.core.errors import ConfigError
from pipeline.core.paths import ProjectPaths
from tests.conftest import write_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _params(repo_params, **incremental):
    p = copy.deepcopy(repo_params)
    p["eval"]["index"]["kinds"] = ["flat"]
    p["eval"]["random_baseline"] = False
    p["suites"] = {
        "inc": {
            "profile": "demo", "dataset": "wikipedia", "methods": ["adih", "adih-i"], "bits": [16], "seeds": [0],
            "train": {"epochs": 2}, "incremental": {"new_classes": [2], **incremental},
        }
    }
    return p


def test_incremental_suite_expands_over_new_class_counts(tmp_path, repo_params):
    params = load_params(write_params(tmp_path, _params(repo_params, new_classes=[1, "majority"], increment_epochs=3)))
    trials = expand_suite(params, "inc")
    assert sorted((t.name, str(t.incremental.new_classes)) for t in trials) == [
        ("adih", "1"), ("adih", "majority"), ("adih-i", "1"), ("adih-i", "majority")
    ]
    assert all(t.incremental.increment_epochs == 3 for t in trials)
    assert len({t.key() for t in trials}) == 4 and all("/new" in t.key() for t in trials)


def test_incremental_suite_errors_name_the_key(tmp_path, repo_params):
    p = _params(repo_params)
    p["suites"]["inc"]["methods"] = ["adih", "dcmh"]
    with pytest.raises(ConfigError, match=r"suites\.inc\.methods\[1\]: method 'dcmh' does not support the incremental-class protocol.*adih"):
        load_params(write_params(tmp_path, p))
    p = _params(repo_params, new_classes=[0])
    with pytest.raises(ConfigError, match=r"suites\.inc\.incremental\.new_classes.*0 is not a positive number"):
        load_params(write_params(tmp_path, p))


def test_bench_runs_and_resumes_an_incremental_suite(tmp_path, repo_params, prepared_root):
    from pipeline.train import tracking
    from pipeline.protocols.standard import run_bench

    root = tmp_path / "proj"
    (root / "data" / "prepared").mkdir(parents=True)
    (root / "data" / "prepared" / "wikipedia").symlink_to(prepared_root / "data" / "prepared" / "wikipedia")
    params_file = write_params(root, _params(repo_params))
    params = load_params(params_file)
    paths = ProjectPaths.at(root)
    summary = run_bench(params, "inc", paths, params_file=params_file)
    assert summary.ran == 2 and not summary.failed
    c = tracking.client(summary.tracking_uri)
    runs = {r.data.tags["hashbench.method"]: r for r in c.search_runs([summary.experiment_id])}
    assert set(runs) == {"adih", "adih-i"}
    for name, run in runs.items():
        m = {tracking.metric_name_from_mlflow(k): v for k, v in run.data.metrics.items()}
        assert run.info.status == "FINISHED"
        assert run.data.params["incremental.new_classes"] == "2" and run.data.tags["hashbench.incremental_new"] == "2"
        for stage in ("increment", "retrain"):
            for q in ("old", "new", "all"):
                assert 0.0 < m[f"{stage}/{q}/i2t/map@all"] <= 1.0 and 0.0 < m[f"{stage}/{q}/t2i/map@all"] <= 1.0
        assert m["seconds/retrain"] > 0
    inc = {tracking.metric_name_from_mlflow(k): v for k, v in runs["adih"].data.metrics.items()}
    assert 0 < inc["increment_time_ratio"] == pytest.approx(inc["seconds/increment"] / inc["seconds/retrain"])
    assert "increment_time_ratio" not in runs["adih-i"].data.metrics  # ADIH-I has no incremental step
    again = run_bench(params, "inc", paths, params_file=params_file)
    assert again.ran == 0 and again.skipped == 2


def test_report_shows_the_incremental_table(tmp_path, repo_params, prepared_root):
    from pipeline.train import tracking
    from pipeline.report.build import build_report
    from pipeline.report.collect import collect_runs
    from pipeline.protocols.standard import run_bench

    root = tmp_path / "proj"
    (root / "data" / "prepared").mkdir(parents=True)
    (root / "data" / "prepared" / "wikipedia").symlink_to(prepared_root / "data" / "prepared" / "wikipedia")
    p = _params(repo_params)
    p["suites"]["inc"]["methods"] = ["adih"]
    p["suites"]["inc"]["train"] = {"epochs": 1}
    params_file = write_params(root, p)
    paths = ProjectPaths.at(root)
    summary = run_bench(load_params(params_file), "inc", paths, params_file=params_file)
    runs = collect_runs(summary.tracking_uri, root / "results" / "bench" / "demo", ["inc"], "demo")
    assert runs.runs["incremental_new"].tolist() == ["2"]
    html = build_report(runs, tmp_path / "out", title="t", notes={}).read_text()
    assert "Incremental-class protocol" in html and "No finished trials" not in html
    run = tracking.client(summary.tracking_uri).get_run(runs.runs["run_id"][0])
    ratio = run.data.metrics["increment_time_ratio"]
    assert f"{ratio:.2f} ± 0.00" in html  # the table shows the logged ratio
    assert "image → text: mAP@all" in html and "text → image: mAP@all" in html


def test_incremental_cli_spec_resolves_variants(tmp_path, repo_params):
    from pipeline.protocols.incremental import incremental_spec

    params = load_params(write_params(tmp_path, _params(repo_params)))
    spec = incremental_spec(params, "adih-i", "wikipedia", 32, epochs=3)
    assert (spec.method, spec.variant, spec.name) == ("adih", "adih-i", "adih-i")
    assert spec.method_params["incremental"] is False and spec.train.epochs == 3
