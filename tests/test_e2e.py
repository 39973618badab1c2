"""End to end: `dvc repro report@demo` on tiny settings (local Ray, MLflow in a temp project), then
resume behaviour: a second repro is a no-op and a changed CSQ hyperparameter retrains only CSQ."""

from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


def _run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def _tiny_params() -> dict:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    # only the two demo suites this test knows, shrunk; the other demo suites stay out of the tiny project
    p["suites"] = {k: v for k, v in p["suites"].items() if v["profile"] != "demo" or k in ("demo-wikipedia", "demo-digits")}
    for name, methods in (("demo-wikipedia", ["dcmh"]), ("demo-digits", ["csq"])):
        p["suites"][name].update(methods=methods, bits=[16], seeds=[0, 1], train={"epochs": 3}, method_params={})
    p["eval"]["index"]["latency_queries"] = 20
    return p


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("e2e")
    for f in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / f, root / f)
    for code in ("pipeline", "methods"):  # the stages declare code as deps (the installed package runs)
        shutil.copytree(REPO / code, root / code, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    (root / "params.yaml").write_text(yaml.safe_dump(_tiny_params(), sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    _run(["git", "init", "-q"], root, env)
    _run(["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", "commit", "-q", "--allow-empty", "-m", "init"], root, env)
    _run([str(BIN / "dvc"), "init", "-q"], root, env)
    _run([str(BIN / "dvc"), "config", "core.analytics", "false"], root, env)
    _run([str(BIN / "hashbench"), "dvc-vars"], root, env)  # dvc.yaml's bench stages for this params.yaml
    _run([str(BIN / "dvc"), "repro", "report@demo"], root, env)
    return root, env


def _mlflow_runs(root: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns.db'}")
    exps = client.search_experiments()
    return [r for e in exps for r in client.search_runs([e.experiment_id])]


def test_demo_report_has_rows_per_method_and_direction(project):
    root, _ = project
    html = (root / "reports" / "index.html").read_text()
    assert "wikipedia" in html and "digits" in html
    assert "image → text" in html and "text → image" in html and "image → image" in html
    # a method cell is its name and its setup flags against the paper's setup (pipeline/report/flags.py)
    assert re.search(r"<td>dcmh \[[RFBPT ]+\]</td>", html) and re.search(r"<td>csq \[[RFBPT ]+\]</td>", html)
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html  # offline
    metrics = json.loads((root / "reports" / "demo" / "metrics.json").read_text())
    assert set(metrics) == {"demo-wikipedia", "demo-digits"}
    assert {"i2t", "t2i"} <= set(metrics["demo-wikipedia"]["dcmh"]["16bits"])
    assert 0 < metrics["demo-digits"]["csq"]["16bits"]["i2i"]["map@all"] <= 1
    assert (root / "reports" / "demo" / "plots" / "pr_demo-wikipedia_i2t.json").is_file()


def test_one_run_per_trial_with_provenance(project):
    root, _ = project
    runs = _mlflow_runs(root)
    assert len(runs) == 4  # 2 suites x 1 method x 1 code length x 2 seeds
    for r in runs:
        assert r.info.status == "FINISHED"
        tags = r.data.tags
        for tag in ("git.commit", "git.dirty", "hashbench.params_sha256", "data.manifest_sha256", "version.torch", "device", "hashbench.trial_key"):
            assert tags.get(tag), tag
        assert "overhead_seconds" in r.data.metrics and "train_seconds" in r.data.metrics
        assert any(k.startswith("loss/") for k in r.data.metrics)


def test_second_repro_is_up_to_date_and_csq_change_retrains_only_csq(project):
    root, env = project
    out = _run([str(BIN / "dvc"), "repro", "report@demo"], root, env).stdout
    assert "Running stage" not in out, out
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["methods"].setdefault("csq", {})["lambda_q"] = 0.001
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    out = _run([str(BIN / "dvc"), "repro", "report@demo"], root, env).stdout
    runs = _mlflow_runs(root)
    by_method = {}
    for r in runs:
        by_method.setdefault(r.data.tags["hashbench.method"], []).append(r)
    assert len(by_method["dcmh"]) == 2  # untouched
    assert len(by_method["csq"]) == 4  # two new trials for the changed hyperparameter
    summary = json.loads((root / "results" / "bench" / "demo" / "demo-digits.json").read_text())
    assert all(t["status"] == "finished" for t in summary["trials"].values())
    new_ids = {t["run_id"] for t in summary["trials"].values()}
    assert all(r.data.params["method_params.lambda_q"] == "0.001" for r in by_method["csq"] if r.info.run_id in new_ids)


def test_eval_change_reevaluates_stored_codes_without_training(project):
    root, env = project
    n_runs = len(_mlflow_runs(root))
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["eval"]["topk"] = [50, 100, 500]
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    out = _run([str(BIN / "dvc"), "repro", "report@demo"], root, env).stdout
    assert "Running stage 'evaluate@demo'" in out and "Running stage 'bench@" not in out, out
    assert len(_mlflow_runs(root)) == n_runs  # nothing trained
    text = (root / "results" / "eval" / "demo" / "demo-digits.json").read_text()
    assert "map@50" in text
    assert json.loads(text)["trials"], "no trial evaluated"
