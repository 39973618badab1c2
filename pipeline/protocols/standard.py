"""``bench``: run a suite's trial grid on Ray Tune, each trial a Ray Train ``TorchTrainer``.

Flow of one suite:

1. expand the suite into fully resolved :class:`~pipeline.config.TrialSpec` objects;
2. drop every trial whose key already has a FINISHED MLflow run (resume: a finished trial is never
   run again, and a changed hyperparameter changes the key of that method's trials only);
3. run the rest as one Ray Tune grid. Each Tune trial (the *driver*) creates the MLflow run, starts a
   ``TorchTrainer`` with the ``ScalingConfig`` from ``resources``, whose workers run
   :func:`pipeline.train.loop.run_trial` and log per-epoch losses and the final metrics to that run;
   the driver then logs the artifacts, the per-trial overhead of Ray + MLflow, and marks the run
   FINISHED. A failing trial is marked FAILED with its error and the others go on;
4. write ``results/bench/<profile>/<suite>.json`` (the DVC output): every trial key with its run id.
   If any trial failed, the command exits non-zero *after* the finished ones are safely recorded,
   so a rerun retries only the failed ones.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.train import tracking
from pipeline.config import Params, TrialSpec, expand_suite, params_hash
from pipeline.data.formats import PreparedDataset
from pipeline.core.errors import HashBenchError, TrainingError
from pipeline.core.paths import ProjectPaths

log = logging.getLogger(__name__)

# Ray Train V2 (the default in recent Ray) and no usage-stats phone-home on offline machines.
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
# Trials queue for resources in Tune, not in Train; a slow start (busy 2-core machine, cold imports)
# must not fail a trial, so Train's 60 s worker-group start-up limit is raised.
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "900")
# A worker's ray.train.report blocks until the controller drains its one-slot result queue, which it
# does on every health check (2 s by default): poll faster so per-epoch reports cost little.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

# bench forwards every Nth epoch (and the last) to Ray for Tune's progress table; MLflow gets every epoch.
BENCH_RAY_REPORT_EVERY = 10


@dataclass
class BenchSummary:
    suite: str
    profile: str
    experiment_id: str
    tracking_uri: str
    trials: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: int = 0
    ran: int = 0
    failed: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0


# -- the Ray side ------------------------------------------------------------------------------------


class _RayObserver:
    """Per-epoch metrics: to Ray Train (forwarded to Tune) and, on rank 0, to the MLflow run."""

    def __init__(self, uri: str, run_id: str, rank: int, report_every: int = 1, sticky: bool = False, report=None):
        self.uri, self.run_id, self.rank, self.report_every = uri, run_id, rank, max(1, report_every)
        # report: ray.train.report on a Train worker (default); ray.tune.report in a Tune trial process
        self.report = report
        # sticky (tune): every report repeats the latest value of each metric, so a searcher that
        # needs its metric in every result (OptunaSearch) finds it even between evaluations
        self.sticky = sticky
        self.latest: dict[str, float] = {}

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.report is None:
            import ray.train

            self.report = ray.train.report
        if self.rank == 0:
            tracking.log_metrics(self.uri, self.run_id, metrics, step=epoch)
        # every worker decides alike (by epoch number), so the reports stay in step across workers
        dotted = {k.replace("/", "."): v for k, v in metrics.items()}
        if self.sticky:
            self.latest.update(dotted)
            dotted = dict(self.latest)
        if epoch % self.report_every == 0:
            self.report({"epoch": epoch, **dotted})


def _worker_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import pickle
    import tempfile

    import ray.train
    import torch

    from pipeline.train.loop import run_trial

    spec = TrialSpec.model_validate(config["spec"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = None
    if config["use_gpu"]:
        import ray.train.torch

        device = str(ray.train.torch.get_device())
    torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    if rank == 0 and config.get("pg_registry") and config.get("tune_trial_id"):
        _register_worker_group(Path(config["pg_registry"]), config["tune_trial_id"])
    observer = _RayObserver(config["tracking_uri"], config["run_id"], rank, config.get("ray_report_every", 1), sticky=bool(config.get("validation")))
    outcome = run_trial(spec, Path(config["prepared_dir"]), observer, device=device, validation=config.get("validation"))
    if rank == 0:
        final = _log_outcome(config["tracking_uri"], config["run_id"], spec, outcome)
        with open(config["outcome_file"], "wb") as f:
            pickle.dump({"train_seconds": outcome.train_seconds, "eval_seconds": outcome.eval_seconds, "metrics": final}, f)
    # ("done" is reserved by Tune: it would end the trial and kill the Train controller)
    ray.train.report({**observer.latest, "trial_complete": 1.0, "epoch": spec.train.epochs})


def _log_outcome(uri: str, run_id: str, spec: TrialSpec, outcome) -> dict[str, float]:
    """A finished trial's final metrics, timings, device tag and artifacts, into its MLflow run."""
    final = outcome.evaluation.flat_metrics()
    final.update(train_seconds=outcome.train_seconds, eval_seconds=outcome.eval_seconds, n_parameters=outcome.n_parameters)
    tracking.log_metrics(uri, run_id, final, step=spec.train.epochs)
    c = tracking.client(uri)
    c.set_tag(run_id, "device", outcome.device)
    for k, v in getattr(outcome, "tags", {}).items():  # the method's provenance (e.g. pretrained weights or random init)
        c.set_tag(run_id, k, str(v)[:5000])
    tracking.log_outcome_artifacts(uri, run_id, outcome)
    return final


def _close_trial(uri: str, run_id: str, spec: TrialSpec, t0: float, inner_seconds: float, final: dict[str, float]) -> None:
    """Wall time and Ray + MLflow overhead into the run, mark it FINISHED, hand the final result to Tune."""
    from ray import tune

    wall = time.perf_counter() - t0
    tracking.log_metrics(uri, run_id, {"trial_wall_seconds": wall, "overhead_seconds": wall - inner_seconds}, step=spec.train.epochs)
    tracking.end_run(uri, run_id, "FINISHED")
    tune.report({"run_id_hash": float(int(run_id[:8], 16)), "trial_wall_seconds": wall, **{k.replace("/", "."): v for k, v in final.items()}})


def _trial_driver(tune_config: dict, specs: dict[str, dict], settings: dict) -> None:
    """One Ray Tune trial: create the MLflow run, run the TorchTrainer, close the run.

    Tune's config holds only the trial key (so its progress table stays readable); the resolved
    specs and the shared settings come through ``tune.with_parameters``.
    """
    _drive(specs[tune_config["trial"]], settings)


def _drive(spec_json: dict, settings: dict, extra_tags: dict[str, str] | None = None) -> None:
    """Body of a Tune trial (bench's grid and ``hashbench tune``): MLflow run + TorchTrainer."""
    config = {**settings, "spec": spec_json}
    import pickle
    import tempfile

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    t0 = time.perf_counter()
    spec = TrialSpec.model_validate(config["spec"])
    uri = config["tracking_uri"]
    run_id = tracking.start_trial_run(uri, config["experiment_id"], spec, {**config["provenance"], **(extra_tags or {})})
    if config.get("pg_registry"):
        from ray import tune

        config["tune_trial_id"] = tune.get_context().get_trial_id()
    res = config["resources"]
    worker_resources = {"CPU": res["cpus_per_worker"]}
    if config["use_gpu"]:
        worker_resources["GPU"] = res["gpus_per_worker"]
    with tempfile.TemporaryDirectory() as tmp:
        outcome_file = str(Path(tmp) / "outcome.pkl")
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={**config, "run_id": run_id, "outcome_file": outcome_file},
            scaling_config=ScalingConfig(num_workers=res["num_workers"], use_gpu=config["use_gpu"], resources_per_worker=worker_resources),
            run_config=RunConfig(name=_safe(spec.key()), storage_path=config["storage_path"], callbacks=[TuneReportCallback()]),
        )
        try:
            trainer.fit()
            with open(outcome_file, "rb") as f:
                outcome = pickle.load(f)
        except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised for Tune
            tuning = bool(config.get("tune_trial_id"))
            # in a search, Tune stopping the trial (the releaser removed its worker group, or the actor exits) is no failure
            stopped = tuning and (_released_marker(Path(config["pg_registry"]), config["tune_trial_id"]).exists() or isinstance(exc, (SystemExit, KeyboardInterrupt)))
            _end_unfinished(uri, run_id, exc, stopped)
            raise
    _close_trial(uri, run_id, spec, t0, outcome["train_seconds"] + outcome["eval_seconds"], outcome["metrics"])


# -- releasing the worker group of a trial that Tune stops ----------------------------------------------
#
# Ray Train V2 runs a trial's workers in a placement group created by the Train controller, an actor
# owned by the Tune trial process. When a scheduler (ASHA) stops the trial, Tune kills that process;
# the controller and workers die with it, but a placement group lives as long as the *job*, so its
# CPUs stay reserved and the next trials wait for a worker group forever. Ray's own remedy, a detached
# PlacementGroupCleaner per run (ray-project/ray#54305), asks the State API whether the controller is
# alive, and the State API is served by the dashboard, which a local HashBench Ray does not start
# (include_dashboard=False), so it never fires. Hence: rank 0 writes its placement group id to
# ``<pg_registry>/<trial id>``; the Tune callback below removes that group when the trial ends (it is
# already gone when the trial finished normally), after writing ``<trial id>.released`` so the dying
# driver records the run as stopped early rather than failed.


def _register_worker_group(registry: Path, trial_id: str) -> None:
    from ray.util import get_current_placement_group

    pg = get_current_placement_group()
    if pg is not None:
        registry.mkdir(parents=True, exist_ok=True)
        (registry / trial_id).write_text(pg.id.hex())


def _released_marker(registry: Path, trial_id: str) -> Path:
    return registry / f"{trial_id}.released"


def release_worker_group(registry: Path, trial_id: str) -> bool:
    """Remove the placement group registered for ``trial_id`` if it still exists; True if removed."""
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    path = registry / trial_id
    if not path.is_file():
        return False
    pg = PlacementGroup(PlacementGroupID.from_hex(path.read_text().strip()))
    path.unlink()
    state = ray.util.placement_group_table(pg).get("state")
    if state in (None, "REMOVED"):
        return False
    _released_marker(registry, trial_id).write_text(pg.id.hex())
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


def _drive_in_process(spec_json: dict, settings: dict, extra_tags: dict[str, str] | None = None) -> None:
    """Body of a 1-worker Tune trial that runs :func:`run_trial` in the Tune trial process itself.

    Equivalent to :func:`_drive` with ``num_workers: 1`` (same spec, loop, evaluation, MLflow run and
    per-epoch reports; a 1-worker TorchTrainer's process group has world size 1, which the loop
    treats as no distribution), minus the Train controller and worker group. ``hashbench tune`` uses
    it because a trial that the scheduler stops (ASHA) is then an ordinary Tune actor, whose CPUs (and
    GPU) Tune releases when it ends, while a stopped trial's TorchTrainer leaves behind a worker-group
    placement group that only Ray's dashboard-based cleaner would remove (see :func:`worker_group_releaser`).
    The trial's resources are the worker's: ``cpus_per_worker`` CPUs (+ ``gpus_per_worker`` GPUs).
    """
    import torch
    from ray import tune

    from pipeline.train.loop import run_trial

    t0 = time.perf_counter()
    spec = TrialSpec.model_validate(spec_json)
    uri = settings["tracking_uri"]
    run_id = tracking.start_trial_run(uri, settings["experiment_id"], spec, {**settings["provenance"], **(extra_tags or {}), "hashbench.executor": "tune-trial-process"})
    torch.set_num_threads(max(1, int(settings["cpus_per_worker"])))
    observer = _RayObserver(uri, run_id, 0, settings.get("ray_report_every", 1), sticky=bool(settings.get("validation")), report=tune.report)
    try:
        outcome = run_trial(spec, Path(settings["prepared_dir"]), observer, device="cuda" if settings["use_gpu"] else None, validation=settings.get("validation"))
        final = _log_outcome(uri, run_id, spec, outcome)
    except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised for Tune
        # Tune ends a trial it stops (ASHA) or an interrupted search by exiting the actor: SystemExit
        _end_unfinished(uri, run_id, exc, stopped=isinstance(exc, (SystemExit, KeyboardInterrupt)))
        raise
    _close_trial(uri, run_id, spec, t0, outcome.train_seconds + outcome.eval_seconds, final)


def _end_unfinished(uri: str, run_id: str, exc: BaseException, stopped: bool) -> None:
    """A trial that did not finish: KILLED + ``hashbench.tune_status=stopped_early`` when Tune stopped
    it, else FAILED with the error (``hashbench.error``)."""
    if stopped:
        tracking.client(uri).set_tag(run_id, "hashbench.tune_status", "stopped_early")
        tracking.end_run(uri, run_id, "KILLED")
    else:
        tracking.end_run(uri, run_id, "FAILED", error=f"{type(exc).__name__}: {exc}")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# A Tune trial's driver only waits on its TorchTrainer, so on a local Ray it holds a slot of this custom
# resource instead of CPU: every CPU stays free for the Train workers. On a cluster that does not
# define it, the driver takes a sliver of CPU instead (and the concurrency computation allows for it).
DRIVER_RESOURCE = "hashbench_trial_driver"
DRIVER_CPU_ON_CLUSTER = 0.01


def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(resources={DRIVER_RESOURCE: 10_000}, include_dashboard=False, log_to_driver=True, configure_logging=True, logging_level=logging.WARNING)


def _driver_resources(cluster: dict[str, float]) -> dict[str, float]:
    if cluster.get(DRIVER_RESOURCE, 0) >= 1:
        return {"CPU": 0, DRIVER_RESOURCE: 1}
    return {"CPU": DRIVER_CPU_ON_CLUSTER}


def _fitting_trials(cluster: dict[str, float], res, use_gpu: bool) -> int:
    """How many trials' worker groups fit in the cluster at once (at least 1).

    Ray Train gives a worker group a fixed time to start; letting Tune launch more trials than fit
    makes the surplus wait on resources and fail with a start-up timeout, so the grid is throttled.
    """
    per_trial_cpu = res.num_workers * res.cpus_per_worker
    if cluster.get(DRIVER_RESOURCE, 0) < 1:
        per_trial_cpu += DRIVER_CPU_ON_CLUSTER
    fits = int(cluster.get("CPU", 1) // per_trial_cpu)
    if use_gpu and res.gpus_per_worker > 0:
        fits = min(fits, int(cluster.get("GPU", 0) // (res.num_workers * res.gpus_per_worker)))
    return max(1, fits)


def _run_grid(pending: list[TrialSpec], params: Params, paths: ProjectPaths, common: dict[str, Any], suite: str) -> dict[str, str | None]:
    """Run ``pending`` trials as one Tune grid; {trial key: error message or None}."""
    import ray
    from ray import tune

    _init_ray(params.resources.ray_address)
    res = params.resources
    use_gpu = res.use_gpu
    if use_gpu == "auto":
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    config = {
        **common,
        "use_gpu": bool(use_gpu),
        "resources": res.model_dump(),
        "cpus_per_worker": res.cpus_per_worker,
        "storage_path": str(paths.ray_storage / "train"),
        "ray_report_every": BENCH_RAY_REPORT_EVERY,
    }
    specs = {t.key(): t.model_dump(mode="json") for t in pending}
    space = {"trial": tune.grid_search(list(specs))}
    concurrent = res.max_concurrent_trials or _fitting_trials(ray.cluster_resources(), res, bool(use_gpu))
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trial_driver, specs=specs, settings=config), _driver_resources(ray.cluster_resources())),
        param_space=space,
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrent,
            trial_name_creator=lambda t: _safe(t.config["trial"]),
            trial_dirname_creator=lambda t: _safe(f"{t.config['trial']}-{t.trial_id}"),
        ),
        run_config=tune.RunConfig(name=_safe(suite), storage_path=str(paths.ray_storage / "tune"), verbose=1),
    )
    results = tuner.fit()
    out: dict[str, str | None] = {}
    for r in results:
        key = r.config["trial"]
        out[key] = None if r.error is None else f"{type(r.error).__name__}: {r.error}"
    return out


# -- the entry point -------------------------------------------------------------------------------------


def run_bench(params: Params, suite_name: str, paths: ProjectPaths, *, params_file: Path, dry_run: bool = False) -> BenchSummary:
    """Run (or resume) one suite and write its summary file; raise if any trial failed."""
    t0 = time.perf_counter()
    suite = params.suite(suite_name)
    trials = expand_suite(params, suite_name)
    prepared_dir = paths.prepared(suite.dataset)
    dataset = PreparedDataset(prepared_dir)
    uri = tracking.tracking_uri(params.tracking, paths)
    exp_name = tracking.experiment_name(params.tracking, suite_name)
    exp_id = tracking.ensure_experiment(uri, exp_name, tracking.artifact_location(params.tracking, paths, exp_name))
    done = tracking.finished_trials(uri, exp_id)
    pending = [t for t in trials if t.key() not in done]
    summary = BenchSummary(suite=suite_name, profile=suite.profile, experiment_id=exp_id, tracking_uri=uri, skipped=len(trials) - len(pending))
    log.info("suite %s: %d trials, %d already finished, %d to run", suite_name, len(trials), summary.skipped, len(pending))
    errors: dict[str, str | None] = {}
    if pending and not dry_run:
        common = {
            "tracking_uri": uri,
            "experiment_id": exp_id,
            "prepared_dir": str(prepared_dir),
            "provenance": tracking.provenance_tags(paths, params_file, params_hash(params_file), dataset.manifest_sha256),
        }
        if suite.incremental is not None:  # timed protocol: trial by trial, see pipeline/protocols/incremental_bench.py
            from pipeline.protocols.incremental_bench import run_incremental_trials

            errors = run_incremental_trials(pending, common)
        else:
            errors = _run_grid(pending, params, paths, common, suite_name)
        summary.ran = len(pending)
    done = tracking.finished_trials(uri, exp_id)
    for t in trials:
        key = t.key()
        status = "finished" if key in done else ("failed" if errors.get(key) else "pending")
        summary.trials[key] = {"method": t.name, "bits": t.bits, "seed": t.seed, "run_id": done.get(key), "status": status, "error": errors.get(key)}
        if status != "finished" and not dry_run:
            summary.failed.append(key)
    summary.wall_seconds = time.perf_counter() - t0
    if not dry_run:
        _write_summary(paths.bench_result(suite.profile, suite_name), summary, dataset.manifest_sha256)
    if summary.failed:
        lines = "\n".join(f"  {k}: {summary.trials[k]['error'] or 'did not finish'}" for k in summary.failed)
        raise TrainingError(
            f"suite {suite_name}: {len(summary.failed)} of {len(trials)} trials did not finish (the others are saved; rerun to retry):\n{lines}"
        )
    return summary


def _write_summary(path: Path, summary: BenchSummary, manifest_sha256: str) -> None:
    """The DVC output of a bench stage: which run holds each trial (no timings, so it is stable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "suite": summary.suite,
        "profile": summary.profile,
        "experiment_id": summary.experiment_id,
        "data_manifest_sha256": manifest_sha256,
        "trials": summary.trials,
    }
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    incomplete = path.with_suffix(".incomplete.json")
    if summary.failed:
        # keep the partial record for humans but do not let DVC mistake it for a complete output
        path.replace(incomplete)
    elif incomplete.exists():
        incomplete.unlink()


__all__ = ["BenchSummary", "run_bench", "HashBenchError"]
