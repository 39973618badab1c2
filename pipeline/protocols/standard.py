"""The standard protocol: ``bench`` runs a suite's trial grid on Ray Tune; each trial trains, encodes
and evaluates one method (:func:`standard_body`) inside the one executor
(:func:`pipeline.train.executor.execute_trial`).

Flow of one suite:

1. resolve the suite into :class:`~pipeline.config.TrialSpec` objects (:func:`pipeline.config.expand_suite`),
   each stamped with the prepared data's manifest hash (verified against the arrays first);
2. take the suite's lock (a second ``bench`` of the same suite exits with a clear message), mark runs
   left RUNNING by dead processes KILLED, and drop every trial whose training key already has a
   FINISHED MLflow run (resume);
3. run the rest as one Ray Tune grid: a 1-worker trial runs in its Tune trial process (trial actors
   reused across the grid), an N-worker trial as a Ray Train ``TorchTrainer``
   (:mod:`pipeline.protocols.launch`). The terminal shows a progress bar and one line per trial; Ray's
   messages go to ``.hashbench/logs/bench-<suite>.log`` (``-v`` shows them);
4. write ``results/bench/<profile>/<suite>.json`` (the DVC output): every trial key with its run id.
   A failed trial's own error is listed; the command fails *after* the finished trials are recorded,
   so a rerun retries only what did not finish. Ctrl-C stops the grid, closes the runs, and says how
   to resume.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.config import Params, TrialSpec, expand_suite, params_hash
from pipeline.core.errors import ConfigError, HashBenchError, TrainingError
from pipeline.core.paths import ProjectPaths
from pipeline.data.formats import PreparedDataset
from pipeline.protocols import launch
from pipeline.protocols.incremental import run_incremental_trials
from pipeline.train import tracking
from pipeline.train.executor import BodyResult, TrialContext, execute_trial, reap_dead_runs
from pipeline.train.checkpoint import Checkpointer
from pipeline.train.loop import TrialObserver, run_trial

log = logging.getLogger(__name__)

# a bench trial forwards only every Nth epoch (and its final result) to Tune; MLflow gets every epoch
BENCH_REPORT_EVERY = 10


class Interrupted(HashBenchError):
    """A launch was interrupted (Ctrl-C): finished trials are kept, the rerun resumes."""


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


# -- the trial body ---------------------------------------------------------------------------------------


def standard_body(spec: TrialSpec, ctx: TrialContext, observer: TrialObserver, out_dir: Path) -> BodyResult:
    """Train, encode, evaluate (on the validation split when ``ctx.validation``); artifacts into ``out_dir``."""
    checkpointer = trial_checkpointer(spec, ctx)
    outcome = run_trial(spec, ctx.prepared_dir, observer, device=ctx.device, validation=ctx.validation, checkpoint=checkpointer)
    tracking.write_outcome_artifacts(outcome, out_dir)
    tags = dict(outcome.tags)
    if checkpointer is not None:
        checkpointer.clear()
        if checkpointer.resumed_from is not None:
            tags["hashbench.resumed_from_epoch"] = str(checkpointer.resumed_from)
    final = outcome.evaluation.flat_metrics()
    final.update(train_seconds=outcome.train_seconds, eval_seconds=outcome.eval_seconds, n_parameters=outcome.n_parameters)
    return BodyResult(
        metrics=final, inner_seconds=outcome.train_seconds + outcome.eval_seconds, device=outcome.device, tags=tags, history=outcome.history
    )


def trial_checkpointer(spec: TrialSpec, ctx: TrialContext) -> Checkpointer | None:
    """The in-process trial's checkpoints (``<checkpoint_root>/<trial key>``), or None when the launch has no
    checkpoint root or ``train.checkpoint_every`` is 0 (and no earlier run left a checkpoint to resume)."""
    if ctx.checkpoint_root is None or ctx.validation is not None:
        return None
    directory = Path(ctx.checkpoint_root) / launch.safe_name(spec.key())
    if spec.train.checkpoint_every == 0 and not directory.exists() and ctx.checkpoint_hook is None:
        return None
    checkpointer = Checkpointer(directory, every=spec.train.checkpoint_every, trial=spec.key())
    return ctx.checkpoint_hook(checkpointer) if ctx.checkpoint_hook is not None else checkpointer


def body_for(p: launch.Placement, storage: Path, body=standard_body, pg_registry: Path | None = None):
    """``body`` as it runs on this placement: in the trial process, or on Ray Train workers."""
    return body if p.in_process else launch.distributed_body(body, p, storage, pg_registry)


def _grid_trial(config: dict, specs: dict[str, dict], ctx: TrialContext, p: launch.Placement, storage: str) -> None:
    """One Tune trial of a bench grid (runs in the Tune trial process)."""
    from ray import tune

    spec = TrialSpec.model_validate(specs[config["trial"]])
    start = launch.warm_up(ctx.tracking_uri)
    run_ctx = launch.trial_context(ctx, p, report=tune.report)
    record = execute_trial(spec, run_ctx, body_for(p, Path(storage)), extra_metrics={"process_start_seconds": start})
    tune.report({"trial_complete": 1.0, "trial_wall_seconds": record.wall_seconds, "overhead_seconds": record.overhead_seconds, **launch.dotted(record.metrics)})


# -- the launcher ------------------------------------------------------------------------------------------


class SuiteLock:
    """An exclusive lock on ``.hashbench/locks/<suite>.lock`` (released when the process ends, even by SIGKILL)."""

    def __init__(self, paths: ProjectPaths, suite: str):
        paths.locks.mkdir(parents=True, exist_ok=True)
        self.path = paths.locks / f"{launch.safe_name(suite)}.lock"
        self.suite = suite
        self.fd: int | None = None

    def __enter__(self) -> "SuiteLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise HashBenchError(
                f"suite {self.suite}: another bench of this suite is running ({holder}; lock {self.path}); "
                "wait for it to finish, then rerun (finished trials are skipped)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def stamp_data(trials: list[TrialSpec], dataset: PreparedDataset) -> list[TrialSpec]:
    """The trials with the prepared data's manifest hash (part of the training key), after checking the
    arrays against the manifest (:meth:`PreparedDataset.check`: a corrupted array is refused, naming the file)."""
    sha = dataset.check()
    return [t.model_copy(update={"data_sha256": sha}) for t in trials]


def describe(spec: TrialSpec) -> str:
    inc = f" new={spec.incremental.new_classes}" if spec.incremental else ""
    return f"{spec.name:<14s} {spec.bits:>3d} bits  seed {spec.seed}{inc}"


def _run_grid(pending: list[TrialSpec], params: Params, paths: ProjectPaths, ctx: TrialContext, suite: str) -> dict[str, str | None]:
    """Run ``pending`` as one Tune grid; {trial key: own error message or None}."""
    from ray import tune

    p = launch.placement(params.resources)
    specs = {t.key(): t.model_dump(mode="json") for t in pending}
    by_key = {t.key(): t for t in pending}
    storage = paths.ray_storage / "train"
    progress = launch.progress_callback(len(pending), lambda k: describe(by_key[k]) if k in by_key else k, f"bench {suite}")
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_grid_trial, specs=specs, ctx=ctx, p=p, storage=str(storage)), launch.trial_resources(p)),
        param_space={"trial": tune.grid_search(list(specs))},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=p.concurrent,
            reuse_actors=p.in_process,
            trial_name_creator=lambda t: launch.safe_name(t.config["trial"]),
            trial_dirname_creator=lambda t: launch.safe_name(f"{t.config['trial']}-{t.trial_id}"),
        ),
        run_config=tune.RunConfig(name=launch.safe_name(suite), storage_path=str(paths.ray_storage / "tune"), verbose=0, callbacks=[progress]),
    )
    results = tuner.fit()
    out: dict[str, str | None] = {}
    for r in results:
        if not r.config:  # a trial Tune never started (interrupted grid)
            continue
        key = r.config["trial"]
        if r.error is not None:
            out[key] = launch.first_error_line(r.error)
        elif (r.metrics or {}).get("trial_complete"):
            out[key] = None
    return out


def fetch_trial_weights(trials, paths: ProjectPaths) -> list[str]:
    """Fetch (or verify) every weights entry the trials' ``*weights`` parameters name, before any trial starts,
    so that a missing file fails the suite at once (offline: naming URL and place) and the trials' workers
    only read verified local files. Returns the entries."""
    from pipeline.data.weights import fetch_weights, get_weights, is_weights_name

    names = sorted({get_weights(v).name for t in trials for k, v in t.method_params.items() if k.endswith("weights") and is_weights_name(v)})
    for name in names:
        fetch_weights(name, paths.root)
    return names


def run_bench(params: Params, suite_name: str, paths: ProjectPaths, *, params_file: Path, dry_run: bool = False, verbose: bool = False) -> BenchSummary:
    """Run (or resume) one suite and write its summary file; raise if any trial did not finish."""
    t0 = time.perf_counter()
    suite = params.suite(suite_name)
    prepared_dir = paths.prepared(suite.dataset)
    dataset = PreparedDataset(prepared_dir)
    trials = stamp_data(expand_suite(params, suite_name), dataset)
    uri = tracking.tracking_uri(params.tracking, paths)
    exp_name = tracking.experiment_name(params.tracking, suite_name)
    exp_id = tracking.ensure_experiment(uri, exp_name, tracking.artifact_location(params.tracking, paths, exp_name))
    summary = BenchSummary(suite=suite_name, profile=suite.profile, experiment_id=exp_id, tracking_uri=uri)
    if dry_run:
        done = tracking.finished_trials(uri, exp_id)
        summary.skipped = sum(t.key() in done for t in trials)
        for t in trials:
            summary.trials[t.key()] = _trial_entry(t, done.get(t.key()), "finished" if t.key() in done else "pending", None)
        return summary
    with SuiteLock(paths, suite_name):
        reap_dead_runs(uri, exp_id)
        done = tracking.finished_trials(uri, exp_id)
        pending = [t for t in trials if t.key() not in done]
        summary.skipped = len(trials) - len(pending)
        log.info("suite %s: %d trials, %d already finished, %d to run", suite_name, len(trials), summary.skipped, len(pending))
        errors: dict[str, str | None] = {}
        interrupted = False
        if pending:
            fetch_trial_weights(pending, paths)
            ctx = TrialContext(
                tracking_uri=uri,
                experiment_id=exp_id,
                prepared_dir=prepared_dir,
                provenance=tracking.provenance_tags(paths, params_file, params_hash(params_file), dataset.manifest_sha256),
                report_every=BENCH_REPORT_EVERY,
                checkpoint_root=paths.checkpoints,
            )
            try:
                if suite.incremental is not None:  # timed protocol: trial by trial (pipeline/protocols/incremental.py)
                    errors = run_incremental_trials(pending, ctx)
                else:
                    launch.init_ray(params.resources.ray_address, launch.ray_log_file(paths.logs, f"bench-{suite_name}"), verbose)
                    n_nodes = len(launch.alive_nodes())
                    launch.check_cluster_store(uri, n_nodes)
                    if n_nodes > 1:
                        launch.check_data_on_nodes(prepared_dir, dataset.manifest_sha256)
                    errors = _run_grid(pending, params, paths, ctx, suite_name)
            except KeyboardInterrupt:
                interrupted = True
            summary.ran = len(pending)
            unfinished = any(errors.get(t.key(), "unfinished") == "unfinished" for t in pending)
            if interrupted or unfinished:  # end the trial processes, then close the runs they left RUNNING
                launch.stop_ray()
            reap_dead_runs(uri, exp_id, wait_s=20.0 if (interrupted or unfinished) else 0.0)
        done = tracking.finished_trials(uri, exp_id)
        for t in trials:
            key = t.key()
            status = "finished" if key in done else ("failed" if errors.get(key) else "pending")
            summary.trials[key] = _trial_entry(t, done.get(key), status, errors.get(key))
            if status != "finished":
                summary.failed.append(key)
        summary.wall_seconds = time.perf_counter() - t0
        _write_summary(paths.bench_result(suite.profile, suite_name), summary, dataset.manifest_sha256)
    n_done = len(trials) - len(summary.failed)
    if interrupted or (summary.failed and not any(summary.trials[k]["error"] for k in summary.failed)):
        raise Interrupted(f"suite {suite_name}: interrupted with {n_done} of {len(trials)} trials finished (they are saved); rerun the same command to resume")
    if summary.failed:
        lines = "\n".join(f"  {describe(next(t for t in trials if t.key() == k))}: {summary.trials[k]['error'] or 'did not finish'}" for k in summary.failed)
        raise TrainingError(f"suite {suite_name}: {len(summary.failed)} of {len(trials)} trials did not finish (the others are saved; rerun to retry):\n{lines}")
    return summary


def run_named(params: Params, name: str, paths: ProjectPaths, *, params_file: Path, dry_run: bool = False, verbose: bool = False) -> list[BenchSummary]:
    """Run a suite, or every member of a suite written as axes (then also write the group's summary
    ``results/bench/<profile>/<name>.json``, the DVC output of its stage, once every member finished)."""
    members = params.members(name)
    if members == [name]:
        return [run_bench(params, name, paths, params_file=params_file, dry_run=dry_run, verbose=verbose)]
    summaries, errors = [], []
    for member in members:
        try:
            summaries.append(run_bench(params, member, paths, params_file=params_file, dry_run=dry_run, verbose=verbose))
        except Interrupted:
            raise
        except HashBenchError as exc:
            errors.append(str(exc))
    if not dry_run:
        profile = params.suites[members[0]].profile
        path = paths.bench_result(profile, name)
        body = {"suite_group": name, "members": {s.suite: {"trials": len(s.trials), "experiment_id": s.experiment_id} for s in summaries}}
        path.parent.mkdir(parents=True, exist_ok=True)
        if errors:
            path.unlink(missing_ok=True)
        else:
            tmp = path.with_suffix(".json.part")
            tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
            tmp.replace(path)
    if errors:
        raise TrainingError("\n".join(errors))
    return summaries


def _trial_entry(t: TrialSpec, run_id: str | None, status: str, error: str | None) -> dict[str, Any]:
    return {"method": t.name, "bits": t.bits, "seed": t.seed, "run_id": run_id, "status": status, "error": error}


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


__all__ = ["BenchSummary", "Interrupted", "SuiteLock", "body_for", "describe", "run_bench", "run_named", "stamp_data", "standard_body"]
