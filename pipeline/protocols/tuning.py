"""``hashbench tune``: hyperparameter search (or a one-parameter sweep) on the bench trial code.

    hashbench tune --method csq --dataset wikipedia --bits 32            Optuna + ASHA (tune: in params.yaml)
    hashbench tune --method dcmh --dataset wikipedia --bits 16 --search random --num-samples 20
    hashbench tune --method csq --dataset wikipedia --bits 32 --sweep csq.lambda_q=0.001,0.01,0.1

* Same trainer and evaluation as ``bench``: every trial calls :func:`pipeline.train.loop.run_trial`
  with ``validation`` set: a seeded validation split is carved from the *training* split
  (``tune.validation_fraction``; queries = held-out training items, database = training = the rest),
  so tuning never sees the protocol's query set used for reporting. The validation metric is
  reported every epoch; the ASHA scheduler (``tune.scheduler: asha``, the default) stops weak trials
  from it. With ``tune.executor: auto`` and 1 worker a trial runs the loop in its Tune trial process
  (:func:`pipeline.protocols.standard._drive_in_process`: it holds the worker's CPUs/GPU, and a stopped trial
  frees them when Tune ends it); otherwise it is bench's Ray Train ``TorchTrainer``
  (:func:`pipeline.protocols.standard._drive`), and a stopped trial's worker group is released by
  :func:`pipeline.protocols.standard.worker_group_releaser` (Ray's own cleaner needs the dashboard; see there).
* Default: the first trial is params.yaml's configuration (``tune.evaluate_default``, when it lies in
  the space), so the sensitivity section compares best and default on the same validation split.
* MLflow: experiment ``<prefix>/tune/<dataset>/<method>-<bits>``; one parent run per search, every
  trial a child run (tag ``mlflow.parentRunId``). A failing trial is FAILED with ``hashbench.error``;
  a trial stopped early by ASHA is KILLED with ``hashbench.tune_status=stopped_early``.
* Resume: the Tune experiment lives in ``.hashbench/ray/tune/<name>``; rerunning the same command
  restores it (``Tuner.restore``) and runs only what did not finish.
* Output: the best configuration in ``tuned/<dataset>/<method>-<bits>.yaml`` (``method_params`` and any
  searched ``train`` settings), which a suite takes with ``tuned: true`` (the trial keys change with
  the parameters), and ``reports/tune/<dataset>-<method>-<bits>.html`` with the sensitivity plots
  (:mod:`pipeline.report.sensitivity`; ``hashbench report --profile P`` shows the same section for
  every finished search on a dataset of the profile).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import yaml

from methods.registry import get_method_class
from pipeline.eval.evaluate import direction_name, retrieval_directions
from pipeline.protocols import launch
from pipeline.protocols.standard import body_for, stamp_data
from pipeline.train import tracking
from pipeline.config import Params, TrainConfig, TrialRequest, TrialSpec, deep_merge, method_params, params_hash, resolve_trial, tuned_file
from pipeline.data.formats import PreparedDataset
from pipeline.core.errors import ConfigError, TrainingError
from pipeline.core.paths import ProjectPaths
from pipeline.config.spaces import check_distribution, check_name, parse_sweep, split_sample, to_ray
from pipeline.train.executor import TrialContext, TrialStopped, execute_trial
from pipeline.train.loop import Validation

log = logging.getLogger(__name__)

TAG_PARENT = "mlflow.parentRunId"
TAG_SEARCH = "hashbench.tune_search"


@dataclass
class TuneSummary:
    name: str
    parent_run_id: str
    experiment_id: str
    metric: str
    mode: str
    trials: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    best_file: Path | None = None
    report: Path | None = None
    wall_seconds: float = 0.0


def default_metric(method: str, params: Params | None = None) -> str:
    impl = params.implementation(method) if params is not None else method
    q, d = retrieval_directions(get_method_class(impl).modalities)[0]
    return f"{direction_name(q, d)}/map@all"


def base_spec(params: Params, method: str, dataset: str, bits: int, seed: int, epochs: int, name: str) -> TrialSpec:
    """The trial everything is sampled around: params.yaml's method parameters and training settings
    (through the one resolution of trials), ``epochs`` epochs, no random-codes baseline."""
    return resolve_trial(
        params,
        TrialRequest(
            label=name, dataset=dataset, method=method, bits=bits, seed=seed, train_override={"epochs": epochs}, eval_override={"random_baseline": False}, where=f"tune --method {method}"
        ),
    )


def default_point(params: Params, method: str, space: dict[str, Any], base: TrialSpec) -> dict[str, Any] | None:
    """params.yaml's value of every searched name, or None when one lies outside its distribution
    (then the search cannot start from it)."""
    train = base.train.model_dump(mode="json")
    point: dict[str, Any] = {}
    for name, dist in space.items():
        if name.startswith("train."):
            value: Any = train
            for part in name.split(".")[1:]:
                value = value[part]
        else:
            value = base.method_params.get(name)
        kind, args = check_distribution(name, dist)
        inside = (
            value in args
            if kind in ("choice", "grid")
            else isinstance(value, (int, float)) and not isinstance(value, bool) and args[0] <= value <= args[1] and (kind != "randint" or float(value).is_integer())
        )
        if not inside:
            log.warning("tune: the default %s=%r is outside tune.spaces.%s.%s %r; the search does not evaluate the default", name, value, method, name, dist)
            return None
        point[name] = value
    return point


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _tune_trial(tune_config: dict, base: dict, ctx: TrialContext, p: launch.Placement, storage: str, pg_registry: str, default: dict | None) -> None:
    """One Tune trial of a search: the sampled configuration applied to the base spec, run by the executor."""
    from ray import tune

    sample = {k: _plain(v) for k, v in tune_config.items() if k != "seed"}
    mp, train = split_sample(sample)
    body = dict(base)
    body["method_params"] = {**base["method_params"], **mp}
    body["train"] = TrainConfig.model_validate(deep_merge(base["train"], train)).model_dump(mode="json")
    if "seed" in tune_config:
        body["seed"] = int(tune_config["seed"])
    # a sample the method rejects fails inside the trial (its MLflow run is FAILED with the reason)
    spec = TrialSpec.model_validate(body)
    tags = {
        TAG_PARENT: ctx.extra_tags[TAG_PARENT],
        TAG_SEARCH: spec.suite,
        "hashbench.tune_sample": json.dumps(sample),
        "hashbench.tune_trial_id": tune.get_context().get_trial_id(),
        **({"hashbench.tune_default": "1"} if default is not None and sample == default else {}),
    }
    run_ctx = launch.trial_context(ctx, p, report=tune.report)
    run_ctx = replace(run_ctx, extra_tags={**run_ctx.extra_tags, **tags})
    try:
        record = execute_trial(spec, run_ctx, body_for(p, Path(storage), pg_registry=Path(pg_registry)))
    except BaseException as exc:
        # a multi-worker trial whose worker group the releaser removed was stopped by the scheduler, not failed
        if not p.in_process and launch.released_marker(Path(pg_registry), tune.get_context().get_trial_id()).exists():
            raise TrialStopped("stopped by the scheduler") from exc
        raise
    tune.report({"trial_complete": 1.0, "trial_wall_seconds": record.wall_seconds, **launch.dotted(record.metrics)})


def _parent_run(uri: str, exp_id: str, name: str, info: dict[str, str], fresh: bool = False) -> str:
    """The search's parent run: reused when resuming (same search name), else (or with ``fresh``) created."""
    c = tracking.client(uri)
    found = c.search_runs([exp_id], filter_string=f"tags.`{TAG_SEARCH}` = '{name}' and tags.`hashbench.tune_parent` = '1'", max_results=1)
    if found and fresh:
        c.set_tag(found[0].info.run_id, "hashbench.tune_parent", "superseded")
    elif found:
        run_id = found[0].info.run_id
        if found[0].info.status != "RUNNING":
            c.update_run(run_id, "RUNNING")
        for k, v in info.items():
            c.set_tag(run_id, k, v)
        return run_id
    run = c.create_run(exp_id, tags={TAG_SEARCH: name, "hashbench.tune_parent": "1", **info}, run_name=name)
    return run.info.run_id


def run_tune(
    params: Params,
    paths: ProjectPaths,
    *,
    method: str,
    dataset: str,
    bits: int,
    params_file: Path,
    search: str | None = None,
    num_samples: int | None = None,
    epochs: int | None = None,
    sweep: str | None = None,
    fresh: bool = False,
    page: Callable[[str, str, str, Path], Path] | None = None,
) -> TuneSummary:
    """Run (or resume) a search; write the best configuration and the sensitivity report."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    t0 = time.perf_counter()
    cfg = params.tune
    search = search or cfg.search
    metric = cfg.metric if cfg.metric != "auto" else default_metric(method, params)
    epochs = epochs or cfg.epochs
    seeds = [cfg.seed]
    if sweep:
        smethod, sname, values = parse_sweep(sweep)
        if smethod != method:
            raise ConfigError(f"--sweep {sweep!r} names method {smethod!r} but --method is {method!r}")
        space = {sname: {"grid": values}}
        seeds = _suite_seeds(params, dataset, method)
        search = "grid"
        name = f"sweep-{dataset}-{method}-{bits}b-{sname}"
    else:
        space = params.tune.spaces.get(method)
        if not space:
            raise ConfigError(f"{params.source}: tune.spaces.{method}: no search space for method {method!r}; declare e.g. tune.spaces.{method}.<param>: {{loguniform: [1e-4, 1e-1]}}")
        name = f"tune-{dataset}-{method}-{bits}b"
    for pname, dist in space.items():
        where = f"{params.source}: tune.spaces.{method}.{pname}"
        check_name(params, method, pname, where)
        check_distribution(where, dist)

    base = base_spec(params, method, dataset, bits, cfg.seed, epochs, name)
    point = default_point(params, method, space, base) if cfg.evaluate_default and not sweep else None
    prepared_dir = paths.prepared(dataset)
    ds = PreparedDataset(prepared_dir)
    uri = tracking.tracking_uri(params.tracking, paths)
    exp_name = f"{params.tracking.experiment_prefix}/tune/{dataset}/{method}-{bits}"
    exp_id = tracking.ensure_experiment(uri, exp_name, tracking.artifact_location(params.tracking, paths, exp_name.replace("/", "-")))
    storage = paths.ray_storage / "tune"
    exp_path = storage / name
    if fresh and exp_path.exists():
        import shutil

        shutil.rmtree(exp_path)
    parent = _parent_run(
        uri,
        exp_id,
        name,
        {
            "hashbench.metric": metric,
            "hashbench.validation": f"fraction={cfg.validation_fraction} seed={cfg.validation_seed} of the training split (queries = held-out training items; database = training = the rest)",
            "hashbench.search": search,
            "hashbench.mode": cfg.mode,
            "hashbench.dataset": dataset,
            "hashbench.method": method,
            "hashbench.bits": str(bits),
            "hashbench.tune_space": json.dumps(space),
            "hashbench.tune_default": json.dumps(point if point is not None else {k: _default_value(base, k) for k in space}),
            "hashbench.tune_default_evaluated": "1" if point is not None else "0",
            "hashbench.tune_schedule": f"up to {epochs} epochs"
            + ("" if sweep or cfg.scheduler == "fifo" else f", ASHA (grace {cfg.grace_period}, reduction factor {cfg.reduction_factor:g})")
            + (f", seeds {seeds}" if len(seeds) > 1 else f", seed {seeds[0]}"),
        },
        fresh=fresh,
    )

    launch.init_ray(params.resources.ray_address, launch.ray_log_file(paths.logs, name))
    res = params.resources
    p = launch.placement(res, override_concurrency=cfg.max_concurrent_trials, ray_train=cfg.executor == "train")
    pg_registry = storage / f"{name}.worker-groups"
    ctx = TrialContext(
        tracking_uri=uri,
        experiment_id=exp_id,
        prepared_dir=prepared_dir,
        provenance=tracking.provenance_tags(paths, params_file, params_hash(params_file), ds.manifest_sha256),
        validation=Validation(fraction=cfg.validation_fraction, seed=cfg.validation_seed, every=cfg.eval_every),
        report_every=1,
        sticky=True,
        extra_tags={TAG_PARENT: parent},
    )
    base_json = stamp_data([base], ds)[0].model_dump(mode="json")
    trainable = tune.with_resources(
        tune.with_parameters(_tune_trial, base=base_json, ctx=ctx, p=p, storage=str(paths.ray_storage / "train"), pg_registry=str(pg_registry), default=point),
        launch.trial_resources(p),
    )
    tune_metric = metric.replace("/", ".")
    concurrent = p.concurrent
    callbacks = [launch.worker_group_releaser(pg_registry)]
    samples = 1 if search == "grid" else (num_samples or cfg.num_samples)
    if tune.Tuner.can_restore(str(exp_path)):
        log.info("resuming search %s from %s", name, exp_path)
        tuner = tune.Tuner.restore(str(exp_path), trainable=trainable, resume_errored=False, restart_errored=False, resume_unfinished=True)
    else:
        param_space = to_ray(space, grid_ok=search == "grid")
        if len(seeds) > 1:
            param_space["seed"] = tune.grid_search(seeds)
        search_alg = None
        if search == "optuna":
            from optuna.samplers import TPESampler
            from ray.tune.search.optuna import OptunaSearch

            search_alg = OptunaSearch(metric=tune_metric, mode=cfg.mode, sampler=TPESampler(seed=cfg.seed), points_to_evaluate=[point] if point else None)
        elif search == "random" and point:
            from ray.tune.search import BasicVariantGenerator

            search_alg = BasicVariantGenerator(points_to_evaluate=[point])
        scheduler = (
            FIFOScheduler()
            if sweep or cfg.scheduler == "fifo"
            else ASHAScheduler(time_attr="training_iteration", max_t=epochs + 2, grace_period=cfg.grace_period, reduction_factor=cfg.reduction_factor)
        )
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=tune_metric,
                mode=cfg.mode,
                search_alg=search_alg,
                scheduler=scheduler,
                num_samples=samples,
                max_concurrent_trials=concurrent,
            ),
            run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=1, callbacks=callbacks),
        )
    results = tuner.fit()
    summary = TuneSummary(name=name, parent_run_id=parent, experiment_id=exp_id, metric=metric, mode=cfg.mode)
    trials = getattr(getattr(results, "_experiment_analysis", None), "trials", None) or []
    unfinished = [t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")]
    if unfinished or (search != "grid" and len(results) < samples):
        # Ctrl-C (or a lost Ray): the children of unfinished trials are marked interrupted (a resume reruns
        # those trials), and no best configuration is written from a partial search
        _close_children(uri, exp_id, parent, unfinished=set(unfinished))
        tracking.client(uri).set_tag(parent, "hashbench.tune_status", "interrupted")
        tracking.end_run(uri, parent, "KILLED")
        raise TrainingError(
            f"search {name} interrupted with {len(results) - len(unfinished)} of {samples if search != 'grid' else len(results)} trials done; "
            "rerun the same command to resume it (done trials are kept)"
        )
    _close_children(uri, exp_id, parent)
    for r in results:
        cfg_ = {k: v for k, v in (r.config or {}).items()}
        m = r.metrics or {}
        finished = r.error is None and "trial_wall_seconds" in m
        summary.trials.append(
            {
                "config": cfg_,
                "value": m.get(tune_metric),
                "status": "finished" if finished else ("failed" if r.error is not None else "stopped_early"),
                "error": None if r.error is None else f"{type(r.error).__name__}: {r.error}",
                "epochs": m.get("epoch"),
                "default": point is not None and {k: _plain(v) for k, v in cfg_.items() if k != "seed"} == point,
            }
        )
    done = [t for t in summary.trials if t["status"] == "finished" and t["value"] is not None]
    if done and not sweep:
        best = (max if cfg.mode == "max" else min)(done, key=lambda t: t["value"])
        summary.best = best
        summary.best_file = write_best(params, dataset, method, bits, best, metric, cfg, parent, search, len(summary.trials))
        c = tracking.client(uri)
        c.log_metric(parent, "best_value", float(best["value"]))
        c.set_tag(parent, "hashbench.best_config", json.dumps({k: _plain(v) for k, v in best["config"].items()}))
    tracking.end_run(uri, parent, "FINISHED")
    if page is not None:  # the sensitivity page (pipeline.report.sensitivity, a layer above; the CLI passes it)
        summary.report = page(uri, exp_id, parent, paths.reports / "tune" / f"{dataset}-{method}-{bits}.html")
    summary.wall_seconds = time.perf_counter() - t0
    return summary


def _default_value(base: TrialSpec, name: str) -> Any:
    if name.startswith("train."):
        value: Any = base.train.model_dump(mode="json")
        for part in name.split(".")[1:]:
            value = value.get(part) if isinstance(value, dict) else None
        return value
    return base.method_params.get(name)


def _suite_seeds(params: Params, dataset: str, method: str) -> list[int]:
    for s in params.suites.values():
        if s.dataset == dataset and method in s.methods:
            return list(s.seeds)
    return [params.tune.seed]


def _close_children(uri: str, exp_id: str, parent: str, unfinished: set[str] | None = None) -> None:
    """Children still RUNNING after the search were stopped by ASHA: mark them KILLED. With
    ``unfinished`` (Tune trial ids of an interrupted search), those trials' runs are tagged interrupted."""
    c = tracking.client(uri)
    for run in c.search_runs([exp_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent}'", max_results=10_000):
        if unfinished and run.data.tags.get("hashbench.tune_trial_id") in unfinished:
            c.set_tag(run.info.run_id, "hashbench.tune_status", "interrupted")
            if run.info.status == "RUNNING":
                c.set_terminated(run.info.run_id, "KILLED")
        elif run.info.run_id != parent and (
            run.info.status == "RUNNING" or (run.info.status == "KILLED" and run.data.tags.get("hashbench.status") == "stopped" and "hashbench.tune_status" not in run.data.tags)
        ):  # stopped by the scheduler (the executor closed it KILLED, or its actor ended first)
            c.set_tag(run.info.run_id, "hashbench.tune_status", "stopped_early")
            if run.info.status == "RUNNING":
                c.set_terminated(run.info.run_id, "KILLED")


def write_best(params: Params, dataset: str, method: str, bits: int, best: dict, metric: str, cfg, parent: str, search: str, n_trials: int) -> Path:
    """tuned/<dataset>/<method>-<bits>.yaml: what ``tuned: true`` suites take as method parameters."""
    sample = {k: v for k, v in best["config"].items() if k != "seed"}
    mp, train = split_sample(sample)
    body = {
        "method": method,
        "dataset": dataset,
        "bits": bits,
        "method_params": method_params(params, method, mp),
        "train": train,
        "metric": metric,
        "mode": cfg.mode,
        "validation_value": float(best["value"]),
        "validation": {"fraction": cfg.validation_fraction, "seed": cfg.validation_seed, "split": "held out from the training split"},
        "search": {"algorithm": search, "trials": n_trials, "mlflow_parent_run_id": parent},
    }
    path = tuned_file(params, dataset, method, bits)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Written by `hashbench tune`; a suite with `tuned: true` takes method_params (and train) from here.\n"
    path.write_text(header + yaml.safe_dump(body, sort_keys=False))
    return path


__all__ = ["run_tune", "TuneSummary", "write_best", "default_metric"]
