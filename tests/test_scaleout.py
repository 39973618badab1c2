"""Scale-out through bench: the multi-node store refusal, the tracking-server command, a SIGKILLed bench
that resumes its trial from the last in-trial checkpoint, a 2-worker Ray Train trial (gloo) that
loses a worker, resumes from Ray Train's checkpoint and logs a FINISHED run, and a bench on a 2-node
Ray cluster on loopback (`ray start --head` + `ray start --address`, own ports, temp dir and token) logging
to `hashbench tracking-server`."""

from __future__ import annotations

import copy
import os
import shutil
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


# -- a multi-node Ray cluster on loopback with an MLflow tracking server --------------------------------------


def _free_ports(n: int) -> list[int]:
    import socket

    socks, ports = [], []
    for _ in range(n):  # held open together, so the n ports differ
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _own_processes(marker: str) -> list[int]:
    """Pids of live processes whose command line contains ``marker`` (a temp dir only this test uses)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def _stop_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 120.0, log: Path | None = None) -> None:
    import socket

    t0 = time.time()
    while True:
        assert proc.poll() is None, f"{what} exited ({proc.returncode})" + (f": {log.read_text()[-3000:]}" if log else "")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.time() - t0 < timeout, f"{what} not listening on {port} after {timeout} s"
        time.sleep(0.3)


def _wait_log(log: Path, text: str, proc: subprocess.Popen, what: str, timeout: float = 180.0) -> None:
    t0 = time.time()
    while text not in (log.read_text(errors="replace") if log.exists() else ""):
        assert proc.poll() is None, f"{what} exited ({proc.returncode}): {log.read_text(errors='replace')[-3000:]}"
        assert time.time() - t0 < timeout, f"{what}: no {text!r} after {timeout} s: {log.read_text(errors='replace')[-3000:]}"
        time.sleep(0.3)


@pytest.fixture
def loopback_cluster(request):
    """Two Ray nodes on this host: ``ray start --head --block`` and ``ray start --address --block``
    subprocesses (own session group each), each with 1 CPU and its own custom resource, every port chosen
    free on 127.0.0.1, a temp dir of their own and token authentication with a token of their own. The
    finalizer ends both process groups and then any process whose command line names the temp dir."""
    import tempfile

    tmp = tempfile.mkdtemp(prefix="hbray-", dir="/tmp")  # short: Ray's Unix socket paths must fit 107 bytes
    token = Path(tmp) / "auth_token"
    token.write_text(os.urandom(16).hex())
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")},  # a cluster's nodes need it unset
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    ray_bin = str(Path(sys.executable).with_name("ray"))
    procs: list[subprocess.Popen] = []

    def cleanup():
        for p in reversed(procs):
            _stop_group(p)
        for pid in _own_processes(tmp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)

    request.addfinalizer(cleanup)

    def node(name: str, *args: str) -> None:
        ports = _free_ports(7)
        cmd = [ray_bin, "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0",
               "--resources", f'{{"{name}": 1}}', "--object-store-memory", str(100 * 2**20),
               "--node-manager-port", str(ports[0]), "--object-manager-port", str(ports[1]),
               "--dashboard-agent-listen-port", str(ports[2]), "--dashboard-agent-grpc-port", str(ports[3]),
               "--metrics-export-port", str(ports[4]), "--runtime-env-agent-port", str(ports[5]),
               "--min-worker-port", "0", "--max-worker-port", "0", "--disable-usage-stats", *args]  # fmt: skip
        log = open(Path(tmp) / f"{name}.out", "w")
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp))

    gcs = _free_ports(1)[0]
    node("hb_node_head", "--head", "--port", str(gcs), "--temp-dir", tmp, "--include-dashboard", "false")
    _wait_port(gcs, procs[0], "Ray head", log=Path(tmp) / "hb_node_head.out")
    node("hb_node_b", "--address", f"127.0.0.1:{gcs}")
    for name, proc in zip(("hb_node_head", "hb_node_b"), procs):  # `ray start` says so once its raylet is registered
        _wait_log(Path(tmp) / f"{name}.out", "Ray runtime started", proc, name)
    return {"address": f"127.0.0.1:{gcs}", "env": env, "tmp": tmp}


@pytest.fixture
def tracking_server(tmp_path, request):
    """``hashbench tracking-server`` (sqlite backend, artifact serving) on a free port of 127.0.0.1."""
    port = _free_ports(1)[0]
    root = tmp_path / "server"
    root.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "--root", str(root), "tracking-server", "--port", str(port)],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    request.addfinalizer(lambda: _stop_group(proc))
    _wait_port(port, proc, "MLflow tracking server")
    return f"http://127.0.0.1:{port}"


@pytest.mark.e2e
def test_bench_on_a_two_node_cluster_logs_to_a_tracking_server(tmp_path, prepared_root, repo_params, loopback_cluster, tracking_server):
    """`hashbench bench` of a 2-trial suite on a 2-node Ray cluster (one host, loopback) with
    tracking.mlflow_uri = the tracking server: one trial per node (each node has 1 CPU, each trial takes it),
    both runs FINISHED in the server with their node tagged, their artifacts downloadable through the server;
    the same bench with the local sqlite store is refused, naming the setting."""
    import mlflow
    import numpy as np

    (tmp_path / "proj").mkdir()
    root = _project(tmp_path / "proj", prepared_root)
    p = copy.deepcopy(repo_params)
    p["methods"]["csq"] = {"backbone": "mlp", "hidden": [64]}
    p["suites"] = {"mn": {"profile": "demo", "dataset": "digits", "methods": ["csq"], "bits": [16], "seeds": [0, 1],
                          "train": {"epochs": 5, "batch_size": 256}}}
    p["resources"] = {"cpus_per_worker": 1, "ray_address": loopback_cluster["address"]}
    p["tracking"] = {"mlflow_uri": tracking_server}
    params_file = write_params(root, p)
    env = {k: v for k, v in loopback_cluster["env"].items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "pipeline.cli", "--root", str(root), "--params", str(params_file), "bench", "--suite", "mn"]
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-4000:]

    c = mlflow.MlflowClient(tracking_server)
    exp = c.get_experiment_by_name("hashbench/mn")
    runs = c.search_runs([exp.experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs), [(r.info.status, r.data.tags.get("hashbench.error")) for r in runs]
    assert len({r.data.tags["hashbench.ray_node"] for r in runs}) == 2  # one trial on each node (1 CPU each)
    for r in runs:
        assert r.info.artifact_uri.startswith("mlflow-artifacts:"), r.info.artifact_uri  # served, not a local path
        names = {a.path for a in c.list_artifacts(r.info.run_id)}
        assert "codes.npz" in names, names
        local = mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path="codes.npz", tracking_uri=tracking_server, dst_path=str(tmp_path / r.info.run_id))
        with np.load(local) as z:
            assert len(z.files) > 0
    assert not (root / "mlruns.db").exists()  # nothing went to a local store

    p["tracking"] = {"mlflow_uri": f"sqlite:///{root / 'mlruns.db'}"}
    p["suites"]["mn"]["seeds"] = [2]
    write_params(root, p)
    refused = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300, env=env)
    assert refused.returncode != 0
    assert "tracking.mlflow_uri" in refused.stderr and "2 nodes" in refused.stderr, refused.stderr[-3000:]
