"""Scale-out through bench: a 2-worker Ray Train trial, the multi-node store refusal, the tracking-server
command, and a SIGKILLed bench that resumes its trial from the last in-trial checkpoint."""

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


def _project(tmp_path: Path, prepared_root: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prepared").symlink_to(prepared_root / "data" / "prepared")
    return tmp_path


def _runs(root: Path, suite: str):
    import mlflow

    c = mlflow.MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
    exp = c.get_experiment_by_name(f"hashbench/{suite}")
    return [] if exp is None else c.search_runs([exp.experiment_id])


# -- no Ray --------------------------------------------------------------------------------------------------


def test_multi_node_cluster_with_local_store_is_refused_naming_the_setting():
    from pipeline.core.errors import ConfigError
    from pipeline.protocols.launch import check_cluster_store

    for uri in ("sqlite:////work/p/mlruns.db", "file:///work/p/mlruns", "/work/p/mlruns"):
        with pytest.raises(ConfigError, match=r"tracking\.mlflow_uri"):
            check_cluster_store(uri, 2)
        check_cluster_store(uri, 1)  # one node: the local store is fine
    check_cluster_store("http://10.0.0.5:5000", 3)


def test_tracking_server_command_serves_artifacts_from_a_sql_backend(tmp_path):
    from pipeline.core.paths import ProjectPaths
    from pipeline.train.tracking import server_command

    cmd = server_command(ProjectPaths.at(tmp_path), "0.0.0.0", 5055)
    assert cmd[1:4] == ["-m", "mlflow", "server"]
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path.resolve() / '.hashbench' / 'mlflow-server.db'}"
    assert "--serve-artifacts" in cmd and cmd[cmd.index("--port") + 1] == "5055" and cmd[cmd.index("--host") + 1] == "0.0.0.0"


def test_checkpoint_every_is_not_part_of_the_trial_key(tmp_path, repo_params):
    from conftest import trial_spec

    spec = trial_spec(tmp_path, repo_params, "csq", 16, epochs=2)
    other = spec.model_copy(update={"train": spec.train.model_copy(update={"checkpoint_every": 5})})
    assert other.key() == spec.key()
    bf16 = spec.model_copy(update={"train": spec.train.model_copy(update={"precision": "bf16"})})
    assert bf16.key() != spec.key()


def test_fp16_on_cpu_is_refused_naming_the_setting():
    import torch

    from pipeline.core.errors import TrainingError
    from pipeline.train.precision import Precision

    with pytest.raises(TrainingError, match=r"train\.precision"):
        Precision("fp16", torch.device("cpu"))
    with Precision("bf16", torch.device("cpu")).autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


# -- Ray -----------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_bench_two_ray_train_workers_finishes(tmp_path, prepared_root, repo_params):
    """resources.num_workers: 2 runs the trial as a 2-worker TorchTrainer (gloo) and logs a FINISHED run."""
    from pipeline.config import load_params
    from pipeline.core.paths import ProjectPaths
    from pipeline.protocols.standard import run_bench

    root = _project(tmp_path, prepared_root)
    p = copy.deepcopy(repo_params)
    p["methods"]["csq"] = {"backbone": "mlp", "hidden": [64]}
    p["suites"] = {"dp": {"profile": "demo", "dataset": "digits", "methods": ["csq"], "bits": [16], "seeds": [0],
                          "train": {"epochs": 3, "checkpoint_every": 1}}}
    p["resources"] = {"num_workers": 2, "cpus_per_worker": 1, "use_gpu": False, "max_failures": 1}
    params_file = write_params(root, p)
    paths = ProjectPaths.at(root)
    summary = run_bench(load_params(params_file), "dp", paths, params_file=params_file)
    assert summary.failed == []
    (run,) = [r for r in _runs(root, "dp") if "hashbench.trial_key" in r.data.tags]
    assert run.info.status == "FINISHED"
    assert run.data.tags["hashbench.executor"] == "ray-train-2-workers"
    assert run.data.metrics["i2i/map@all"] > 0.3  # digits: random codes give ~0.1
    assert not any(paths.checkpoints.glob("*/state.pt"))  # the finished trial's checkpoint is removed


@pytest.mark.e2e
def test_sigkilled_bench_resumes_the_trial_from_its_checkpoint(tmp_path, prepared_root, repo_params):
    """kill -9 of bench mid-trial, then a rerun: the trial resumes at the checkpointed epoch (tag
    hashbench.resumed_from_epoch), trains the remaining epochs and ends FINISHED with every epoch logged."""
    from pipeline.config import load_params
    from pipeline.core.paths import ProjectPaths
    from pipeline.protocols.standard import run_bench

    root = _project(tmp_path, prepared_root)
    p = copy.deepcopy(repo_params)
    p["methods"]["csq"] = {"backbone": "mlp", "hidden": [64]}
    epochs = 400
    p["suites"] = {"ck": {"profile": "demo", "dataset": "digits", "methods": ["csq"], "bits": [16], "seeds": [0],
                          "train": {"epochs": epochs, "checkpoint_every": 5, "batch_size": 256}}}
    p["resources"] = {"cpus_per_worker": 1, "max_concurrent_trials": 1}
    params_file = write_params(root, p)
    paths = ProjectPaths.at(root)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "--root", str(root), "--params", str(params_file), "bench", "--suite", "ck"],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    t0 = time.time()
    try:
        while not any(paths.checkpoints.glob("*/state.pt")):
            assert proc.poll() is None, "bench ended before its first checkpoint"
            assert time.time() - t0 < 300, "no checkpoint in time"
            time.sleep(0.5)
        time.sleep(1.0)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    import torch

    (state_file,) = paths.checkpoints.glob("*/state.pt")
    saved_at = torch.load(state_file, weights_only=False)["next_epoch"]
    assert 0 < saved_at < epochs

    summary = run_bench(load_params(params_file), "ck", paths, params_file=params_file)
    assert summary.failed == []
    finished = [r for r in _runs(root, "ck") if r.info.status == "FINISHED"]
    (run,) = finished
    resumed = int(run.data.tags["hashbench.resumed_from_epoch"])
    assert resumed >= saved_at and resumed % 5 == 0
    from pipeline.train import tracking

    hist = tracking.client(f"sqlite:///{root / 'mlruns.db'}").get_metric_history(run.info.run_id, "loss/joint/loss")
    assert sorted(m.step for m in hist) == list(range(epochs))  # replayed + trained: every epoch once
