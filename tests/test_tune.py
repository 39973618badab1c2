"""``hashbench tune``: spaces validated with clear errors, the tuned file feeding bench, the
sensitivity figures, and (on Ray) an Optuna + ASHA search that stops trials early and writes the best
configuration and the report section, a sweep whose failing trial is recorded while the other
finishes, and the release of a stopped trial's Ray Train worker group."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipeline.core.errors import ConfigError
from tests.conftest import write_params


def _params_dict(repo_params: dict, root: Path, **tune) -> dict:
    p = copy.deepcopy(repo_params)
    p["suites"] = {
        "t-digits": {"profile": "demo", "dataset": "digits", "methods": ["csq"], "bits": [16], "seeds": [0], "train": {"epochs": 2}},
    }
    p["tracking"] = {"mlflow_uri": f"sqlite:///{root / 'mlruns.db'}", "artifact_root": str(root / "mlartifacts")}
    p["resources"] = {"max_concurrent_trials": 2, "cpus_per_worker": 1}
    p["tune"] = {"epochs": 4, "num_samples": 6, "spaces": {"csq": {"lambda_q": {"loguniform": [1e-4, 10.0]}}}, **tune}
    return p


def _load(repo_params, root: Path, **tune):
    from pipeline.config import load_params

    return load_params(write_params(root, _params_dict(repo_params, root, **tune)))


@pytest.mark.parametrize(
    "space, needle",
    [
        ({"csq": {"lambda_q": {"lognormal": [1, 2]}}}, "tune.spaces.csq.lambda_q: unknown distribution 'lognormal'"),
        ({"csq": {"lambda_q": {"loguniform": [0, 1]}}}, "tune.spaces.csq.lambda_q.loguniform: bounds must be positive"),
        ({"csq": {"lambda_q": {"uniform": [1, 0.5]}}}, "tune.spaces.csq.lambda_q.uniform: expected [low, high]"),
        ({"csq": {"lambda_z": {"uniform": [0, 1]}}}, "tune.spaces.csq.lambda_z: unknown hyperparameter 'lambda_z' of method 'csq'"),
        ({"csq": {"train.optimizer.lrr": {"choice": [0.1]}}}, "tune.spaces.csq.train.optimizer.lrr: unknown training setting"),
        ({"nosuch": {"x": {"choice": [1]}}}, "tune.spaces.nosuch: unknown method"),
    ],
)
def test_bad_space_is_a_config_error_naming_the_key(repo_params, tmp_path, space, needle):
    with pytest.raises(ConfigError) as exc:
        _load(repo_params, tmp_path, spaces=space)
    assert needle in str(exc.value)


def test_good_space_and_sweep_parse(repo_params, tmp_path):
    from pipeline.config.spaces import parse_sweep, split_sample, to_ray

    params = _load(repo_params, tmp_path, spaces={"csq": {"lambda_q": {"choice": [0.0, 1e-3]}, "train.optimizer.lr": {"loguniform": [1e-4, 1e-2]}, "train.batch_size": {"randint": [32, 64]}}})
    assert set(to_ray(params.tune.spaces["csq"])) == {"lambda_q", "train.optimizer.lr", "train.batch_size"}
    assert parse_sweep("csq.lambda_q=0.001,0.01,0.1") == ("csq", "lambda_q", [0.001, 0.01, 0.1])
    assert split_sample({"lambda_q": 0.1, "train.optimizer.lr": 0.01}) == ({"lambda_q": 0.1}, {"optimizer": {"lr": 0.01}})
    with pytest.raises(ConfigError, match="METHOD.PARAM"):
        parse_sweep("lambda_q=1")


def test_tuned_file_round_trips_into_bench(repo_params, tmp_path):
    from pipeline.config import expand_suite
    from pipeline.protocols.tuning import write_best

    params = _load(repo_params, tmp_path)
    before = expand_suite(params, "t-digits")[0]
    best = {"config": {"lambda_q": 0.05, "train.optimizer.lr": 0.002}, "value": 0.7}
    path = write_best(params, "digits", "csq", 16, best, "i2i/map@all", params.tune, "parent123", "optuna", 6)
    assert path == tmp_path / "tuned" / "digits" / "csq-16.yaml"
    body = yaml.safe_load(path.read_text())
    assert body["method_params"]["lambda_q"] == 0.05 and body["train"] == {"optimizer": {"lr": 0.002}}

    raw = _params_dict(repo_params, tmp_path)
    raw["suites"]["t-digits"]["tuned"] = True
    from pipeline.config import load_params

    tuned = load_params(write_params(tmp_path, raw))
    after = expand_suite(tuned, "t-digits")[0]
    assert after.method_params["lambda_q"] == 0.05 and after.train.optimizer.lr == 0.002
    assert after.train.epochs == before.train.epochs
    assert after.key() != before.key()
    # unchanged suites keep their keys (the new fields do not enter the hash)
    assert expand_suite(params, "t-digits")[0].key() == before.key()

    path.unlink()
    with pytest.raises(ConfigError, match="hashbench tune --method csq --dataset digits --bits 16"):
        expand_suite(tuned, "t-digits")


def test_validation_split_is_carved_from_training(prepared_root):
    import numpy as np

    from pipeline.data.formats import PreparedDataset
    from pipeline.data.loaders import SplitData

    ds = PreparedDataset(prepared_root / "data" / "prepared" / "digits")
    protocol = next(iter(ds.manifest["protocols"]))
    full = SplitData(ds, protocol, ("image",))
    val = SplitData(ds, protocol, ("image",), validation_fraction=0.2, validation_seed=0)
    q, t = set(val.query.indices), set(val.train.indices)
    assert not q & t and q | t == set(full.train.indices)
    assert not q & set(full.query.indices)
    assert set(val.database.indices) == t
    assert abs(len(q) - 0.2 * len(full.train)) <= 1
    again = SplitData(ds, protocol, ("image",), validation_fraction=0.2, validation_seed=0)
    assert np.array_equal(again.query.indices, val.query.indices)


def _project(repo_params, tmp_path, prepared_root, **tune):
    from pipeline.core.paths import ProjectPaths

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prepared").symlink_to(prepared_root / "data" / "prepared")
    params = _load(repo_params, tmp_path, **tune)
    return params, ProjectPaths.at(tmp_path)


def _children(params, paths, parent):
    from pipeline.train import tracking

    uri = tracking.tracking_uri(params.tracking, paths)
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(f"{params.tracking.experiment_prefix}/tune/digits/csq-16")
    return c.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")


def test_scheduler_and_executor_settings(repo_params, tmp_path):
    from pipeline.config import load_params

    p = copy.deepcopy(repo_params)
    assert load_params(write_params(tmp_path, p)).tune.scheduler == "asha"  # the repository default
    p["tune"].update(scheduler="hyperband")
    with pytest.raises(ConfigError, match="tune.scheduler"):
        load_params(write_params(tmp_path, p))
    p["tune"].update(scheduler="fifo", executor="subprocess")
    with pytest.raises(ConfigError, match="tune.executor"):
        load_params(write_params(tmp_path, p))


def test_default_point_is_params_yaml_inside_the_space(repo_params, tmp_path):
    from pipeline.protocols.tuning import base_spec, default_point

    params = _load(repo_params, tmp_path, spaces={"csq": {"lambda_q": {"loguniform": [1e-4, 1e-1]}, "train.optimizer.lr": {"choice": [0.001, 0.01]}}})
    base = base_spec(params, "csq", "digits", 16, 0, 2, "t")
    space = params.tune.spaces["csq"]
    assert default_point(params, "csq", space, base) == {"lambda_q": 1e-4, "train.optimizer.lr": 0.001}  # CSQ's default in code
    # a default outside the space cannot seed the search
    assert default_point(params, "csq", {"lambda_q": {"loguniform": [0.5, 1.0]}}, base) is None
    assert default_point(params, "csq", {"train.optimizer.lr": {"choice": [0.1]}}, base) is None


def test_a_variant_is_tuned_as_its_registered_method(repo_params, tmp_path):
    from pipeline.protocols.tuning import base_spec, default_metric, default_point

    raw = _params_dict(repo_params, tmp_path)
    raw["methods"]["csq-hi"] = {"method": "csq", "lambda_q": 0.01}
    raw["tune"]["spaces"] = {"csq-hi": {"lambda_q": {"loguniform": [1e-4, 1.0]}}}
    from pipeline.config import load_params

    params = load_params(write_params(tmp_path, raw))
    base = base_spec(params, "csq-hi", "digits", 16, 0, 2, "t")
    assert (base.method, base.variant, base.name) == ("csq", "csq-hi", "csq-hi")
    assert default_point(params, "csq-hi", params.tune.spaces["csq-hi"], base) == {"lambda_q": 0.01}
    assert default_metric("csq-hi", params) == "i2i/map@all"
    raw["tune"]["spaces"] = {"csq-hi": {"lambda_z": {"uniform": [0, 1]}}}
    with pytest.raises(ConfigError, match="unknown hyperparameter 'lambda_z' of method 'csq-hi'"):
        load_params(write_params(tmp_path, raw))


def _search(trials, space):
    from pipeline.report.sensitivity import Search

    return Search(name="s", dataset="digits", method="csq", bits=16, metric="i2i/map@all", space=space, default={"lambda_q": 0.0001, "w": "a"}, trials=trials)


def test_sensitivity_figures_axes_and_marks():
    import re

    from pipeline.report.sensitivity import axis_kind, context

    assert axis_kind({"loguniform": [1e-4, 1]}, [0.1]) == "log"
    assert axis_kind({"uniform": [0, 1]}, [0.1]) == "linear"
    assert axis_kind({"choice": [0.0, 0.001, 0.1, 1.0]}, [0.0, 0.001, 1.0]) == "log"  # numbers spanning >= 2 decades
    assert axis_kind({"choice": ["a", "b"]}, ["a"]) == "categorical"
    trials = [
        {"config": {"lambda_q": 1e-4, "w": "a"}, "value": 0.50, "status": "finished", "error": None, "default": True},
        {"config": {"lambda_q": 1e-2, "w": "b"}, "value": 0.70, "status": "finished", "error": None},
        {"config": {"lambda_q": 1.0, "w": "a"}, "value": 0.20, "status": "stopped_early", "error": None},
        {"config": {"lambda_q": -1.0, "w": "b"}, "value": None, "status": "failed", "error": "MethodError: lambda_q"},
    ]
    ctx = context(_search(trials, {"lambda_q": {"loguniform": [1e-4, 10]}, "w": {"choice": ["a", "b"]}}))
    figs = {f["name"]: f for f in ctx["figures"]}
    assert set(figs) == {"lambda_q", "w"} and figs["lambda_q"]["axis"] == "log" and figs["w"]["axis"] == "categorical"
    svg = figs["lambda_q"]["svg"]
    # three scored trials (the failed one has no value); decade ticks of a log axis
    assert svg.count('r="3.5"') == 3 and "1e-4" in svg and "1e-2" in svg and "(log scale)" in svg
    assert svg.count('fill="none" stroke="#ff7f0e"') == 1  # the stopped trial is hollow orange
    assert svg.count('stroke="#d62728"') == 1 and svg.count('stroke="#222222"') == 1  # best and default rings
    # the best (0.70) is drawn above the default (0.50): smaller y
    cy_best = float(re.findall(r'cy="([0-9.]+)" r="6.5" fill="none" stroke="#d62728"', svg)[0])
    cy_default = float(re.findall(r'cy="([0-9.]+)" r="6.5" fill="none" stroke="#222222"', svg)[0])
    assert cy_best < cy_default
    assert ctx["best_value"] == 0.70 and ctx["default_value"] == 0.50
    assert {p["name"]: (p["default"], p["best"]) for p in ctx["params"]} == {"lambda_q": ("0.0001", "0.01"), "w": ("a", "b")}
    assert ctx["failed"] and "MethodError" in ctx["failed"][0]["error"]


def test_release_worker_group_removes_a_leftover_placement_group(tmp_path):
    """The fix for ASHA with Ray Train trials: a stopped trial's placement group is removed by its id."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table

    from pipeline.protocols import launch as runner

    runner.init_ray(None)
    pg = placement_group([{"CPU": 1}])
    ray.get(pg.ready(), timeout=60)
    (tmp_path / "trial_1").write_text(pg.id.hex())
    assert runner.release_worker_group(tmp_path, "trial_1") is True
    assert placement_group_table(pg)["state"] == "REMOVED"
    assert (tmp_path / "trial_1.released").exists() and not (tmp_path / "trial_1").exists()
    assert runner.release_worker_group(tmp_path, "trial_1") is False  # nothing registered any more
    done = placement_group([{"CPU": 1}])
    ray.get(done.ready(), timeout=60)
    ray.util.remove_placement_group(done)  # a trial that finished normally: its group is already gone
    (tmp_path / "trial_2").write_text(done.id.hex())
    assert runner.release_worker_group(tmp_path, "trial_2") is False and not (tmp_path / "trial_2.released").exists()


def test_optuna_asha_search_stops_trials_and_writes_best_config(repo_params, tmp_path, prepared_root):
    from pipeline.config import load_params
    from pipeline.report.build import build_report
    from pipeline.report.collect import ProfileRuns
    from pipeline.report.sensitivity import collect_searches
    from pipeline.protocols.tuning import run_tune

    params, paths = _project(repo_params, tmp_path, prepared_root)
    assert params.tune.search == "optuna" and params.tune.scheduler == "asha"
    from pipeline.cli import sensitivity_page

    summary = run_tune(params, paths, method="csq", dataset="digits", bits=16, params_file=Path(params.source), page=sensitivity_page)
    assert len(summary.trials) == 6
    status = [t["status"] for t in summary.trials]
    assert "stopped_early" in status and "finished" in status and "failed" not in status
    stopped = [t for t in summary.trials if t["status"] == "stopped_early"]
    # stopped before their last epoch (epoch is 0-based); at least one right at an early rung
    assert all(t["epochs"] is not None and t["epochs"] <= params.tune.epochs - 1 for t in stopped)
    assert min(t["epochs"] for t in stopped) < params.tune.epochs - 1
    # the first trial is params.yaml's configuration
    assert sum(t["default"] for t in summary.trials) == 1
    assert summary.best is not None and summary.best_file.exists()
    body = yaml.safe_load(summary.best_file.read_text())
    assert body["metric"] == "i2i/map@all" and 1e-4 <= body["method_params"]["lambda_q"] <= 10.0
    assert body["validation_value"] == pytest.approx(summary.best["value"])
    runs = _children(params, paths, summary.parent_run_id)
    assert len(runs) == 6
    by_status = {}
    for r in runs:
        by_status.setdefault(r.info.status, []).append(r)
    assert set(by_status) == {"FINISHED", "KILLED"}
    assert all(r.data.tags.get("hashbench.tune_status") == "stopped_early" for r in by_status["KILLED"])
    assert len(by_status["KILLED"]) == len(stopped)
    # the best configuration round-trips into bench
    raw = _params_dict(repo_params, tmp_path)
    raw["suites"]["t-digits"]["tuned"] = True
    from pipeline.config import expand_suite

    tuned = expand_suite(load_params(write_params(tmp_path, raw)), "t-digits")[0]
    assert tuned.method_params["lambda_q"] == pytest.approx(summary.best["config"]["lambda_q"])
    # the sensitivity section of the profile report, read back from MLflow
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    searches = collect_searches(uri, params.tracking.experiment_prefix, {"digits"})
    assert [s.name for s in searches] == ["tune-digits-csq-16b"] and len(searches[0].trials) == 6
    assert collect_searches(uri, params.tracking.experiment_prefix, {"wikipedia"}) == []
    html = build_report(ProfileRuns("demo", __import__("pandas").DataFrame(), {}, []), tmp_path / "report", title="T", notes={}, searches=searches).read_text()
    assert "Hyperparameter sensitivity" in html and "validation split of the training set; reporting queries untouched" in html
    assert html.count('class="sens"') == 1 and "(log scale)" in html and "not evaluated in this search" not in html
    assert summary.report.exists() and 'class="sens"' in summary.report.read_text()


def test_sweep_records_failed_trial_and_resumes(repo_params, tmp_path, prepared_root):
    from pipeline.protocols.tuning import run_tune

    params, paths = _project(repo_params, tmp_path, prepared_root, epochs=2)
    summary = run_tune(params, paths, method="csq", dataset="digits", bits=16, params_file=Path(params.source), sweep="csq.lambda_q=-1.0,0.001")
    status = {t["config"]["lambda_q"]: t["status"] for t in summary.trials}
    assert status == {-1.0: "failed", 0.001: "finished"}
    runs = _children(params, paths, summary.parent_run_id)
    by_status = {r.info.status: r for r in runs}
    assert set(by_status) == {"FAILED", "FINISHED"}
    assert "lambda_q" in by_status["FAILED"].data.tags["hashbench.error"]
    # resume: the finished search is restored, nothing reruns
    again = run_tune(params, paths, method="csq", dataset="digits", bits=16, params_file=Path(params.source), sweep="csq.lambda_q=-1.0,0.001")
    assert again.parent_run_id == summary.parent_run_id
    assert len(_children(params, paths, summary.parent_run_id)) == 2
