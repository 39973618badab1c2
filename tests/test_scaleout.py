"""Scale-out through bench: the multi-node store refusal, the tracking-server command, a SIGKILLed bench
that resumes its trial from the last in-trial checkpoint, and a 2-worker Ray Train trial (gloo) that
loses a worker, resumes from Ray Train's checkpoint and logs a FINISHED run."""

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


def _bench(root: Path, params_file: Path, suite: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--root", str(root), "--params", str(params_file), "bench", "--suite", suite],
        cwd=root, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )


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
def test_sigkilled_bench_resumes_the_trial_from_its_checkpoint(tmp_path, prepared_root, repo_params):
    """kill -9 of bench mid-trial, then a rerun: the trial resumes at the checkpointed epoch (tag
    hashbench.resumed_from_epoch), trains the remaining epochs and ends FINISHED with every epoch logged."""
    from pipeline.core.paths import ProjectPaths

    root = _project(tmp_path, prepared_root)
    p = copy.deepcopy(repo_params)
    p["methods"]["csq"] = {"backbone": "mlp", "hidden": [64]}
    epochs = 200
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

    out = _bench(root, params_file, "ck")
    assert out.returncode == 0, out.stderr[-3000:]
    finished = [r for r in _runs(root, "ck") if r.info.status == "FINISHED"]
    (run,) = finished
    resumed = int(run.data.tags["hashbench.resumed_from_epoch"])
    assert resumed >= saved_at and resumed % 5 == 0
    from pipeline.train import tracking

    hist = tracking.client(f"sqlite:///{root / 'mlruns.db'}").get_metric_history(run.info.run_id, "loss/joint/loss")
    assert sorted(m.step for m in hist) == list(range(epochs))  # replayed + trained: every epoch once


def _train_worker_pids() -> list[int]:
    """Processes of Ray Train workers (their title names the RayTrainWorker actor)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"RayTrainWorker" in cmd:
                pids.append(int(d.name))
    return pids


@pytest.mark.e2e
def test_killed_ray_train_worker_resumes_from_checkpoint(tmp_path, prepared_root, repo_params):
    """SIGKILL one worker of a 2-worker trial after its first checkpoint: FailureConfig(max_failures=1)
    restarts the group from Ray Train's checkpoint, the trial finishes with every epoch and the final mAP
    of an uninterrupted (1-worker, same global batch) run."""
    from pipeline.config import expand_suite, load_params
    from pipeline.core.paths import ProjectPaths
    from pipeline.data.formats import PreparedDataset
    from pipeline.protocols.standard import stamp_data
    from pipeline.train.loop import run_trial
    from pipeline.train import tracking

    root = _project(tmp_path, prepared_root)
    p = copy.deepcopy(repo_params)
    p["methods"]["csq"] = {"backbone": "mlp", "hidden": [64], "dropout": 0.0}
    epochs = 40
    p["suites"] = {"kw": {"profile": "demo", "dataset": "digits", "methods": ["csq"], "bits": [16], "seeds": [0],
                          "train": {"epochs": epochs, "checkpoint_every": 2, "batch_size": 256}}}
    p["resources"] = {"num_workers": 2, "cpus_per_worker": 1, "use_gpu": False, "max_failures": 1}
    params_file = write_params(root, p)
    paths = ProjectPaths.at(root)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "--root", str(root), "--params", str(params_file), "bench", "--suite", "kw"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    t0 = time.time()
    killed = None
    try:
        while killed is None:
            assert proc.poll() is None, "bench ended before the first checkpoint"
            assert time.time() - t0 < 400, "no checkpoint in time"
            if any(paths.checkpoints.glob("*/state.pt")):
                pids = _train_worker_pids()
                assert pids, "no Ray Train worker process found"
                killed = pids[-1]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.3)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    (run,) = [r for r in _runs(root, "kw") if r.info.status == "FINISHED"]
    assert run.data.tags["hashbench.executor"] == "ray-train-2-workers"
    assert not any(paths.checkpoints.glob("*/state.pt"))  # the finished trial's checkpoint is removed
    resumed = int(run.data.tags["hashbench.resumed_from_epoch"])
    assert 2 <= resumed < epochs and resumed % 2 == 0
    c = tracking.client(f"sqlite:///{root / 'mlruns.db'}")
    steps = {m.step for m in c.get_metric_history(run.info.run_id, "loss/joint/loss")}
    assert steps == set(range(epochs))
    spec = stamp_data(expand_suite(load_params(params_file), "kw"), PreparedDataset(paths.prepared("digits")))[0]
    ref = run_trial(spec, paths.prepared("digits"), device="cpu").evaluation.flat_metrics()
    assert abs(run.data.metrics["i2i/map_at_all"] - ref["i2i/map@all"]) < 0.01
