"""bench under Ctrl-C and kill -9 (a real subprocess, bounded in time): a clean message and exit code 2,
no traceback; runs of killed trials never stay RUNNING after the rerun; finished trials are kept."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_params

pytestmark = pytest.mark.e2e


def _suite(repo_params, epochs: int) -> dict:
    p = copy.deepcopy(repo_params)
    p["suites"] = {"intr": {"profile": "demo", "dataset": "digits", "methods": ["csq"], "bits": [16], "seeds": [0, 1, 2, 3], "train": {"epochs": epochs}}}
    p["resources"] = {"cpus_per_worker": 1, "max_concurrent_trials": 1}
    return p


def _runs(root: Path):
    import mlflow

    c = mlflow.MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
    exp = c.get_experiment_by_name("hashbench/intr")
    return [] if exp is None else c.search_runs([exp.experiment_id])


def _start(root: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "--root", str(root), "--params", str(root / "params.yaml"), "bench", "--suite", "intr"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )


def _wait_running(root: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"bench ended before a trial started: {proc.communicate()}")
        if any(r.info.status == "RUNNING" for r in _runs(root)):
            return
        time.sleep(1)
    proc.kill()
    pytest.fail("no trial started in time")


@pytest.fixture
def project(tmp_path, prepared_root, repo_params):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prepared").symlink_to(prepared_root / "data" / "prepared")
    return tmp_path


def test_ctrl_c_ends_cleanly_and_kill_9_is_reaped_by_the_rerun(project, repo_params):
    write_params(project, _suite(repo_params, epochs=400))
    _runs(project)  # create the store's schema first: the polling below and bench must not both create it
    proc = _start(project)
    _wait_running(project, proc)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 2, (out, err)
    assert "interrupted" in err and "rerun the same command to resume" in err
    assert "Traceback" not in err
    assert not [r for r in _runs(project) if r.info.status == "RUNNING"]  # the interrupted trial's run is closed

    proc = _start(project)
    _wait_running(project, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    time.sleep(3)  # Ray ends the dead driver's trial actors
    # the rerun (quick trials: another training key, same experiment) reaps the killed run first
    write_params(project, _suite(repo_params, epochs=1))
    rerun = _start(project)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, (out, err)
    runs = _runs(project)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert any(r.data.tags.get("hashbench.status") == "lost" for r in runs)
    assert sum(r.info.status == "FINISHED" for r in runs) == 4
