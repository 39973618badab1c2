"""Launching trials on Ray: one local Ray per command (bound to 127.0.0.1, logs to a file), trial
resources, the progress bar, and the Ray Train path for trials with several workers.

* **1 worker** (the default): a trial is an ordinary Ray Tune function trial; its body runs in the
  Tune trial process (no Ray Train controller, no worker group), which holds the worker's CPUs (and
  GPU). Bench grids reuse the trial actors (``reuse_actors``), so torch and the project are imported
  once per concurrent slot, not once per trial.
* **N workers**: the Tune trial process runs the executor and starts a Ray Train ``TorchTrainer``
  whose workers each run the body (:func:`distributed_body`); rank 0 logs per-epoch metrics to the
  MLflow run and hands the body's result and artifacts back through a Ray Train checkpoint. A stopped
  trial's worker group is released by :func:`worker_group_releaser` (Ray's own cleaner needs the
  dashboard, which a local HashBench Ray does not start).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline.config import ResourcesConfig, TrialSpec
from pipeline.core.errors import ConfigError, HashBenchError
from pipeline.train import tracking
from pipeline.train.executor import BodyResult, RunObserver, TrialBody, TrialContext, headline
from pipeline.train.loop import TrialObserver

log = logging.getLogger(__name__)

# Ray Train V2 (multi-worker trials) and no usage-stats phone-home on offline machines.
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "900")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# Tune's own console table and "trial result" lines: off; the launcher prints one line per trial.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

# A multi-worker trial's driver only waits on its TorchTrainer: on a local Ray it holds a slot of this
# custom resource instead of CPU, so every CPU stays free for the Train workers.
DRIVER_RESOURCE = "hashbench_trial_driver"
DRIVER_CPU_ON_CLUSTER = 0.01


@dataclass(frozen=True)
class Placement:
    """How a launch places its trials (from ``resources`` and the cluster)."""

    num_workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    use_gpu: bool
    concurrent: int
    ray_train: bool = False  # run even a 1-worker trial as a Ray Train TorchTrainer (tune.executor: train)
    max_failures: int = 0  # Ray Train worker-group restarts of a trial (resources.max_failures), resumed from its checkpoint

    @property
    def in_process(self) -> bool:
        return self.num_workers == 1 and not self.ray_train


def ray_log_file(log_dir: Path, name: str) -> Path:
    """``.hashbench/logs/<name>.log``: where Ray's driver-side messages of a launch go."""
    log_dir.mkdir(parents=True, exist_ok=True)
    return log_dir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.log"


#: Ray reads it when imported: "0" makes its node IP the loopback address (ray._private.services.get_node_ip_address),
#: and Ray's gRPC servers (GCS, raylet, core workers) then listen on 127.0.0.1 only (see init_ray)
RAY_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def init_ray(address: str | None, log_file: Path | None = None, verbose: bool = False) -> None:
    """Start (or join) Ray once per command; its driver-side log lines go to ``log_file`` (and to the
    terminal with ``verbose``), workers' output stays in Ray's session logs unless ``verbose``.

    A local Ray listens on 127.0.0.1 only, with Ray's token authentication (Ray's default for a new local
    cluster since 2.52; ``RAY_AUTH_MODE``). Ray 2.60 turns ``_node_ip_address="127.0.0.1"`` into the
    machine's routable IP (``services.resolve_ip_for_localhost``) and its servers then listen on every
    interface (``*``/``::``); its C++ servers listen on loopback only when the node IP is 127.0.0.1 (ray PR
    #20190; the bind-to-node-IP change, PR #55484, was reverted by #55962). The node IP is 127.0.0.1 when
    Ray's ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` is 0 at its import (``ray_constants.ENABLE_RAY_CLUSTER``,
    meant for single-node Ray on macOS and Windows; it disables joining other nodes, which a local Ray does
    not do), so this sets it before importing Ray. ``tests/test_launch_bind.py`` reads the listening
    sockets. With ``address`` (a cluster) nothing is changed."""
    if not address and "ray" not in sys.modules:
        os.environ.setdefault(RAY_LOOPBACK_ENV, "0")
    import ray

    if log_file is not None:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for name in ("ray", "ray.tune", "ray.train", "ray.data"):
            lg = logging.getLogger(name)
            lg.addHandler(handler)
            lg.setLevel(logging.INFO)
            lg.propagate = verbose
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=verbose, configure_logging=False)
    else:
        ray.init(
            address="local",  # a new Ray of this command's own, even when another one runs on this machine
            resources={DRIVER_RESOURCE: 10_000},
            include_dashboard=False,
            log_to_driver=verbose,
            configure_logging=False,
            _node_ip_address="127.0.0.1",
        )
        gcs = ray.get_runtime_context().gcs_address
        if not gcs.startswith("127.0.0.1:"):
            log.warning("the local Ray's node IP is %s, not 127.0.0.1: its servers listen on every interface (Ray was imported "
                        "before %s=0 could be set)", gcs, RAY_LOOPBACK_ENV)
    if log_file is not None:
        try:
            session = ray.get_runtime_context().gcs_address
            log.debug("ray gcs %s", session)
        except Exception:  # noqa: BLE001 - informational only
            pass


def alive_nodes() -> list[dict]:
    """The alive nodes of the Ray cluster this process is connected to."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def check_cluster_store(uri: str, n_nodes: int) -> None:
    """Refuse a multi-node cluster with a store only this machine can reach (Ray's docs: use a tracking
    server in a multi-node setting): workers on other nodes would write runs nobody sees, or fail."""
    if n_nodes > 1 and tracking.is_local_store(uri):
        raise ConfigError(
            f"the Ray cluster has {n_nodes} nodes but the MLflow store {uri!r} is local to this machine; set "
            "tracking.mlflow_uri (or MLFLOW_TRACKING_URI) to a tracking server every node reaches, e.g. start one with "
            "`hashbench tracking-server --host 0.0.0.0` and set tracking.mlflow_uri: http://<this host>:5000"
        )


def check_data_on_nodes(prepared_dir: Path, manifest_sha256: str) -> None:
    """Prepared data reaches the workers through a shared path (a network file system mounted at the same
    place on every node; arrays are memory-mapped, so the object store would copy what a mount shares):
    one tiny task per alive node reads the manifest there and compares its hash with this node's."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def manifest_hash(path: str) -> tuple[str, str]:
        import hashlib
        import socket

        f = Path(path) / "manifest.json"
        return socket.gethostname(), hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else ""

    nodes = alive_nodes()
    refs = [manifest_hash.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(prepared_dir)) for n in nodes]
    bad = []
    for n, (host, sha) in zip(nodes, ray.get(refs)):
        if sha != manifest_sha256:
            bad.append(f"node {n.get('NodeManagerAddress')} ({host}): " + ("no manifest.json" if not sha else f"manifest hash {sha[:12]}"))
    if bad:
        raise HashBenchError(
            f"prepared data {prepared_dir} (manifest {manifest_sha256[:12]}) is not the same on every Ray node: " + "; ".join(bad)
            + ". Put data/prepared on a file system mounted at the same path on every node"
        )


_WARM: dict[str, float] = {}


def warm_up(uri: str) -> float:
    """Pay a trial process's one-time costs before the first trial's clock starts: open the tracking
    store (import MLflow, create the SQL engine, check the schema) and build one torch optimizer (its
    first construction imports torch._dynamo, seconds on a busy CPU). Returns the seconds it took (0
    after the first call); logged on the run as ``process_start_seconds``, so the cost stays visible."""
    import time

    import torch

    if uri in _WARM:
        return 0.0
    t0 = time.perf_counter()
    tracking.client(uri).search_experiments(max_results=1)
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    _WARM[uri] = time.perf_counter() - t0
    return _WARM[uri]


def stop_ray() -> None:
    """Shut down this command's Ray (its trial processes end with it); nothing when Ray is not running."""
    import ray

    if ray.is_initialized():
        try:
            ray.shutdown()
        except Exception as exc:  # noqa: BLE001 - shutting down after an interrupt must not mask it
            log.warning("ray.shutdown: %s", exc)


def placement(res: ResourcesConfig, *, override_concurrency: int | None = None, ray_train: bool = False) -> Placement:
    """Worker count, per-worker resources and how many trials run at once on the current cluster."""
    import ray

    cluster = ray.cluster_resources()
    use_gpu = res.use_gpu if res.use_gpu != "auto" else cluster.get("GPU", 0) > 0
    per_trial = res.num_workers * res.cpus_per_worker
    if (res.num_workers > 1 or ray_train) and cluster.get(DRIVER_RESOURCE, 0) < 1:
        per_trial += DRIVER_CPU_ON_CLUSTER
    fits = int(cluster.get("CPU", 1) // per_trial) if per_trial > 0 else 1
    if use_gpu and res.gpus_per_worker > 0:
        fits = min(fits, int(cluster.get("GPU", 0) // (res.num_workers * res.gpus_per_worker)))
    concurrent = override_concurrency or res.max_concurrent_trials or max(1, fits)
    return Placement(
        res.num_workers, res.cpus_per_worker, res.gpus_per_worker if use_gpu else 0.0, bool(use_gpu), concurrent, ray_train, res.max_failures
    )


def trial_resources(p: Placement) -> dict[str, float]:
    """Resources of one Tune trial: the worker's own (in-process) or a driver slot (TorchTrainer)."""
    import ray

    if p.in_process:
        return {"CPU": p.cpus_per_worker, **({"GPU": p.gpus_per_worker} if p.use_gpu else {})}
    if ray.cluster_resources().get(DRIVER_RESOURCE, 0) >= 1:
        return {"CPU": 0, DRIVER_RESOURCE: 1}
    return {"CPU": DRIVER_CPU_ON_CLUSTER}


#: the Ray node a trial's process ran on (its Tune trial process: the trainer's driver for N workers); with the
#: host name (``hashbench.host``) it tells the nodes of a cluster apart, also several nodes on one host
TAG_RAY_NODE = "hashbench.ray_node"


def node_tags() -> dict[str, str]:
    """``{TAG_RAY_NODE: node id}`` of this process's Ray node; empty outside Ray."""
    import ray

    if not ray.is_initialized():
        return {}
    return {TAG_RAY_NODE: ray.get_runtime_context().get_node_id()}


def trial_context(base: TrialContext, p: Placement, report: Callable | None) -> TrialContext:
    """The context a trial runs with on this placement (device, threads, Ray report function, node tag)."""
    return dataclasses.replace(
        base,
        device="cuda" if p.use_gpu else base.device,
        threads=max(1, int(p.cpus_per_worker)),
        report=report,
        executor="tune-trial-process" if p.in_process else f"ray-train-{p.num_workers}-workers",
        extra_tags={**base.extra_tags, **node_tags()},
    )


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def dotted(metrics: dict[str, float]) -> dict[str, float]:
    """Tune result keys: '/' would nest the result dict, so ``i2t/map@all`` is sent as ``i2t.map@all``."""
    return {k.replace("/", "."): float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}


# -- progress ---------------------------------------------------------------------------------------------


def progress_callback(total: int, describe: Callable[[str], str], desc: str):
    """A Tune callback: a progress bar over trials and one line per finished or failed trial."""
    from ray import tune
    from tqdm import tqdm

    class Progress(tune.Callback):
        def __init__(self):
            self.bar = tqdm(total=total, desc=desc, unit="trial", file=sys.stderr, dynamic_ncols=True, leave=True)
            self.failed = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            r = trial.last_result or {}
            metrics = {k.replace(".", "/", 1): v for k, v in r.items() if isinstance(v, (int, float))}
            seconds = r.get("trial_wall_seconds", float("nan"))
            if r.get("trial_complete"):
                self.bar.write(f"  done    {describe(trial.config.get('trial', trial.trial_id))}  {headline(metrics)}  {seconds:.1f} s")
            self.bar.update(1)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.failed += 1
            self.bar.write(f"  FAILED  {describe(trial.config.get('trial', trial.trial_id))} (see the error below)")
            self.bar.update(1)

        def on_experiment_end(self, trials, **info):
            self.bar.close()

    return Progress()


# -- several workers: Ray Train -----------------------------------------------------------------------------


class _WorkerObserver(TrialObserver):
    """On a Train worker: rank 0 logs to MLflow; every rank reports (alike) so the workers stay in step."""

    def __init__(self, ctx: TrialContext, run_id: str, rank: int):
        self.rank = rank
        self.mlflow = RunObserver(dataclasses.replace(ctx, report=None), run_id) if rank == 0 else None
        self.every = max(1, ctx.report_every)
        self.latest: dict[str, float] = {}

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        import ray.train

        if self.mlflow is not None:
            self.mlflow.on_epoch(epoch, metrics)
        self.latest.update(dotted(metrics))
        if epoch % self.every == 0:
            ray.train.report({"epoch": epoch, **self.latest})


def _worker_loop(config: dict) -> None:
    """Runs on every Ray Train worker: the body on this rank; rank 0 returns its result as a checkpoint."""
    import ray.train

    ctx: TrialContext = config["ctx"]
    body: TrialBody = config["body"]
    spec = TrialSpec.model_validate(config["spec"])
    rank = ray.train.get_context().get_world_rank()
    if ctx.device == "cuda":
        import ray.train.torch

        ctx = dataclasses.replace(ctx, device=str(ray.train.torch.get_device()))
    if rank == 0 and config.get("pg_registry") and config.get("tune_trial_id"):
        register_worker_group(Path(config["pg_registry"]), config["tune_trial_id"])
    observer = _WorkerObserver(ctx, config["run_id"], rank)
    ctx = dataclasses.replace(ctx, checkpoint_hook=lambda c: ray_train_checkpointer(c, rank, observer))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        result = body(spec, ctx, observer, out)
        checkpoint = None
        if rank == 0:
            with open(out / "_body_result.pkl", "wb") as f:
                pickle.dump(result, f)
            checkpoint = ray.train.Checkpoint.from_directory(str(out))
        ray.train.report({**observer.latest, "trial_complete": 1.0}, checkpoint=checkpoint)


def ray_train_checkpointer(c, rank: int, observer: "_WorkerObserver"):
    """A trial's :class:`~pipeline.train.checkpoint.Checkpointer` on a Ray Train worker: rank 0 writes the
    folder, every rank reports it (rank 0 with the folder as a Ray checkpoint) so the ranks stay in step, and
    a worker group restarted after a failure resumes from ``ray.train.get_checkpoint()`` when the folder
    is not on this node."""
    import ray.train

    def on_save(directory: Path) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(directory)) if rank == 0 else None
        ray.train.report(dict(observer.latest), checkpoint=checkpoint)

    def restored() -> Path | None:
        found = ray.train.get_checkpoint()
        if found is None:
            return None
        return Path(found.to_directory())

    return dataclasses.replace(c, write=rank == 0, on_save=on_save, restored=restored)


def distributed_body(body: TrialBody, p: Placement, storage_path: Path, pg_registry: Path | None = None) -> TrialBody:
    """A body that runs ``body`` on ``p.num_workers`` Ray Train workers (data parallel)."""

    def run(spec: TrialSpec, ctx: TrialContext, observer: TrialObserver, out_dir: Path) -> BodyResult:
        from ray import tune
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
        from ray.tune.integration.ray_train import TuneReportCallback

        run_id = observer.run_id if isinstance(observer, RunObserver) else ""
        worker = {"CPU": p.cpus_per_worker, **({"GPU": p.gpus_per_worker} if p.use_gpu else {})}
        trial_id = tune.get_context().get_trial_id() if pg_registry else None
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={
                "ctx": dataclasses.replace(ctx, report=None),
                "body": body,
                "spec": spec.model_dump(mode="json"),
                "run_id": run_id,
                "pg_registry": str(pg_registry) if pg_registry else None,
                "tune_trial_id": trial_id,
            },
            scaling_config=ScalingConfig(num_workers=p.num_workers, use_gpu=p.use_gpu, resources_per_worker=worker),
            run_config=RunConfig(
                name=safe_name(f"{spec.key()}-{run_id[:8]}"),
                storage_path=str(storage_path),
                callbacks=[TuneReportCallback()] if ctx.report else [],
                failure_config=FailureConfig(max_failures=p.max_failures),
            ),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"{spec.key()}: the Ray Train workers returned no result")
        with result.checkpoint.as_directory() as d:
            for f in Path(d).iterdir():
                if f.name != "_body_result.pkl" and f.is_file():
                    shutil.copy2(f, out_dir / f.name)
            with open(Path(d) / "_body_result.pkl", "rb") as fh:
                return pickle.load(fh)

    return run


# Releasing the worker group of a multi-worker trial that Tune stops (ASHA): rank 0 writes its placement
# group id to ``<registry>/<trial id>``; the callback removes that group when the trial ends (it is gone
# already when the trial finished normally), after writing ``<trial id>.released``.


def register_worker_group(registry: Path, trial_id: str) -> None:
    from ray.util import get_current_placement_group

    pg = get_current_placement_group()
    if pg is not None:
        registry.mkdir(parents=True, exist_ok=True)
        (registry / trial_id).write_text(pg.id.hex())


def released_marker(registry: Path, trial_id: str) -> Path:
    return registry / f"{trial_id}.released"


def release_worker_group(registry: Path, trial_id: str) -> bool:
    """Remove the placement group registered for ``trial_id`` if it still exists; True if removed."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    path = registry / trial_id
    if not path.is_file():
        return False
    from ray._raylet import PlacementGroupID  # Ray's id type (no public constructor from hex)

    pg = PlacementGroup(PlacementGroupID.from_hex(path.read_text().strip()))
    path.unlink()
    state = ray.util.placement_group_table(pg).get("state")
    if state in (None, "REMOVED"):
        return False
    released_marker(registry, trial_id).write_text(pg.id.hex())
    remove_placement_group(pg)
    log.info("trial %s ended with its Ray Train worker group still placed: released placement group %s", trial_id, pg.id.hex())
    return True


def worker_group_releaser(registry: str | Path):
    """A Ray Tune callback releasing the worker group of every trial that ends (see above)."""
    from ray import tune

    class WorkerGroupReleaser(tune.Callback):
        def __init__(self, registry: Path):
            self.registry = Path(registry)

        def on_trial_complete(self, iteration, trials, trial, **info):
            release_worker_group(self.registry, trial.trial_id)

        def on_trial_error(self, iteration, trials, trial, **info):
            release_worker_group(self.registry, trial.trial_id)

    return WorkerGroupReleaser(Path(registry))


def first_error_line(exc: Any) -> str:
    """A trial's own error, without Ray's wrapping: the last line of the innermost exception text."""
    text = str(exc)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", ln):
            return ln
    return lines[-1] if lines else type(exc).__name__
