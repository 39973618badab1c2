"""``hashbench tune``: spaces validated with clear errors, the tuned file feeding bench, and (on Ray)
an Optuna + ASHA search and a sweep whose failing trial is recorded while the other finishes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipeline.errors import ConfigError
from tests.conftest import write_params


def _params_dict(repo_params: dict, root: Path, **tune) -> dict:
    p = copy.deepcopy(repo_params)
    p["suites"] = {
        "t-digits": {"profile": "demo", "dataset": "digits", "methods": ["csq"], "bits": [16], "seeds": [0], "train": {"epochs": 2}},
    }
    p["tracking"] = {"mlflow_uri": f"sqlite:///{root / 'mlruns.db'}", "artifact_root": str(root / "mlartifacts")}
    p["resources"] = {"max_concurrent_trials": 2, "cpus_per_worker": 1}
    p["tune"] = {"epochs": 3, "num_samples": 6, "spaces": {"csq": {"lambda_q": {"loguniform": [1e-4, 1e-1]}}}, **tune}
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
    from pipeline.tune_space import parse_sweep, split_sample, to_ray

    params = _load(repo_params, tmp_path, spaces={"csq": {"lambda_q": {"choice": [0.0, 1e-3]}, "train.optimizer.lr": {"loguniform": [1e-4, 1e-2]}, "train.batch_size": {"randint": [32, 64]}}})
    assert set(to_ray(params.tune.spaces["csq"])) == {"lambda_q", "train.optimizer.lr", "train.batch_size"}
    assert parse_sweep("csq.lambda_q=0.001,0.01,0.1") == ("csq", "lambda_q", [0.001, 0.01, 0.1])
    assert split_sample({"lambda_q": 0.1, "train.optimizer.lr": 0.01}) == ({"lambda_q": 0.1}, {"optimizer": {"lr": 0.01}})
    with pytest.raises(ConfigError, match="METHOD.PARAM"):
        parse_sweep("lambda_q=1")


def test_tuned_file_round_trips_into_bench(repo_params, tmp_path):
    from pipeline.config import expand_suite
    from pipeline.tune import write_best

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
    from pipeline.paths import ProjectPaths

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prepared").symlink_to(prepared_root / "data" / "prepared")
    params = _load(repo_params, tmp_path, **tune)
    return params, ProjectPaths.at(tmp_path)


def _children(params, paths, parent):
    from pipeline import tracking

    uri = tracking.tracking_uri(params.tracking, paths)
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(f"{params.tracking.experiment_prefix}/tune/digits/csq-16")
    return c.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")


def test_asha_is_refused_with_a_clear_error(repo_params, tmp_path):
    from pipeline.config import load_params

    p = copy.deepcopy(repo_params)
    p["tune"]["scheduler"] = "asha"
    with pytest.raises(ConfigError, match=r"tune.scheduler.*asha.*not available yet"):
        load_params(write_params(tmp_path, p))


def test_optuna_search_writes_best_config(repo_params, tmp_path, prepared_root):
    from pipeline.tune import run_tune

    params, paths = _project(repo_params, tmp_path, prepared_root)
    summary = run_tune(params, paths, method="csq", dataset="digits", bits=16, params_file=Path(params.source))
    assert len(summary.trials) == 6
    assert summary.best is not None and summary.best_file.exists()
    body = yaml.safe_load(summary.best_file.read_text())
    assert body["metric"] == "i2i/map@all" and 1e-4 <= body["method_params"]["lambda_q"] <= 1e-1
    assert body["validation_value"] == pytest.approx(summary.best["value"])
    runs = _children(params, paths, summary.parent_run_id)
    assert len(runs) == 6
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}
    assert "FINISHED" in {r.info.status for r in runs}
    assert summary.report.exists() and "<svg" in summary.report.read_text() and "lambda_q" in summary.report.read_text()


def test_sweep_records_failed_trial_and_resumes(repo_params, tmp_path, prepared_root):
    from pipeline.tune import run_tune

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
