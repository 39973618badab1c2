"""The one trial executor: everything a trial does around its body, written once.

:func:`execute_trial` opens the trial's MLflow run (resolved parameters, trial/eval keys, provenance,
the method's tags, pid and host of the process that owns it), runs the *body* (the standard trial,
the tuning trial, the incremental-class trial), logs what the body returns (final metrics, tags,
artifacts written into a folder the executor provides), its timings and the overhead around the body,
and closes the run:

* FINISHED when the body returned;
* KILLED (tag ``hashbench.status=stopped`` or ``interrupted``) when the trial was stopped by a
  scheduler (ASHA ends a trial by raising ``SystemExit`` in it), interrupted (Ctrl-C) or its Ray actor
  was ended;
* FAILED with the error (tag ``hashbench.error``) for any other exception, which is re-raised.

A run left RUNNING by a process that died (SIGKILL, a lost node) is reaped by :func:`reap_dead_runs`
before a launcher decides what to run: the pid/host tags tell whether its owner is still alive.

The executor knows nothing of Ray: launchers (pipeline/protocols) schedule trials and hand in a
``report`` function (``ray.tune.report`` in a Tune trial process, nothing in a plain loop) through the
:class:`TrialContext`.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from pipeline.config import TrialSpec
from pipeline.core.errors import HashBenchError
from pipeline.data.staging import pid_alive
from pipeline.train import tracking
from pipeline.train.loop import TrialObserver, Validation

log = logging.getLogger(__name__)

TAG_STATUS = "hashbench.status"
TAG_PID = "hashbench.pid"
TAG_HOST = "hashbench.host"
TAG_EXECUTOR = "hashbench.executor"


class TrialStopped(HashBenchError):
    """Raised inside a body when its launcher stops the trial on purpose (the run ends KILLED, not FAILED)."""


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one launch shares (typed; replaces the old ``settings`` dict).

    ``report`` forwards per-epoch metrics to the scheduler (``ray.tune.report`` in a Tune trial);
    ``report_every`` thins those reports (MLflow gets every epoch); ``sticky`` repeats the latest value
    of every metric in each report (a searcher such as Optuna needs its metric in every result).
    """

    tracking_uri: str
    experiment_id: str
    prepared_dir: Path
    provenance: Mapping[str, str]
    device: str | None = None  # None: the spec's train.device ("auto": CUDA when present)
    threads: int = 1
    validation: Validation | None = None
    report: Callable[[dict[str, float]], None] | None = None
    report_every: int = 1
    sticky: bool = False
    executor: str = "in-process"
    extra_tags: Mapping[str, str] = field(default_factory=dict)
    checkpoint_root: Path | None = None  # .hashbench/checkpoints: in-trial checkpoints (train.checkpoint_every) by trial key
    checkpoint_hook: Callable[[Any], Any] | None = None  # adapts a trial's Checkpointer to its launcher (Ray Train: report, restore)


@dataclass
class BodyResult:
    """What a trial body hands back to the executor."""

    metrics: dict[str, float]
    inner_seconds: float  # training + evaluation: everything else in the trial's wall time is overhead
    device: str
    tags: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


class TrialBody(Protocol):
    def __call__(self, spec: TrialSpec, ctx: TrialContext, observer: TrialObserver, out_dir: Path) -> BodyResult: ...


@dataclass
class TrialRecord:
    """A finished trial as its launcher sees it."""

    key: str
    run_id: str
    metrics: dict[str, float]
    wall_seconds: float
    overhead_seconds: float


class RunObserver(TrialObserver):
    """Per-epoch metrics into the MLflow run and, thinned, to the scheduler."""

    def __init__(self, ctx: TrialContext, run_id: str):
        self.ctx, self.run_id = ctx, run_id
        self.latest: dict[str, float] = {}
        self.reports = 0

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        tracking.log_metrics(self.ctx.tracking_uri, self.run_id, metrics, step=epoch)
        if self.ctx.report is None:
            return
        dotted = {k.replace("/", "."): float(v) for k, v in metrics.items()}
        if self.ctx.sticky:
            self.latest.update(dotted)
            dotted = dict(self.latest)
        if epoch % max(1, self.ctx.report_every) == 0:
            self.ctx.report({"epoch": epoch, **dotted})
            self.reports += 1


def execute_trial(spec: TrialSpec, ctx: TrialContext, body: TrialBody, extra_metrics: Mapping[str, float] | None = None) -> TrialRecord:
    """Run ``body`` for ``spec`` inside its MLflow run; the run is always closed (see the module docstring).
    ``extra_metrics`` (e.g. the launcher's ``process_start_seconds``) are logged with the timings."""
    import torch

    t0 = time.perf_counter()
    uri = ctx.tracking_uri
    tags = {**ctx.provenance, **ctx.extra_tags, TAG_EXECUTOR: ctx.executor, TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname()}
    run_id = tracking.start_trial_run(uri, ctx.experiment_id, spec, tags)
    torch.set_num_threads(max(1, int(ctx.threads)))
    observer = RunObserver(ctx, run_id)
    try:
        with tempfile.TemporaryDirectory(prefix="hashbench-trial-") as tmp:
            result = body(spec, ctx, observer, Path(tmp))
            final = {k: float(v) for k, v in result.metrics.items()}
            tracking.log_metrics(uri, run_id, final, step=spec.train.epochs)
            tracking.set_tags(uri, run_id, {"device": result.device, **result.tags})
            tracking.log_artifact_dir(uri, run_id, Path(tmp))
    except (KeyboardInterrupt, SystemExit, TrialStopped) as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else "stopped"
        _close_quietly(uri, run_id, "KILLED", {TAG_STATUS: reason})
        raise
    except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised for the launcher
        _close_quietly(uri, run_id, "FAILED", {TAG_STATUS: "failed"}, error=f"{type(exc).__name__}: {exc}")
        raise
    wall = time.perf_counter() - t0
    overhead = max(0.0, wall - result.inner_seconds)
    tracking.log_metrics(uri, run_id, {"trial_wall_seconds": wall, "overhead_seconds": overhead, **(extra_metrics or {})}, step=spec.train.epochs)
    tracking.set_tags(uri, run_id, {TAG_STATUS: "finished"})
    tracking.end_run(uri, run_id, "FINISHED")
    return TrialRecord(key=spec.key(), run_id=run_id, metrics=final, wall_seconds=wall, overhead_seconds=overhead)


def _close_quietly(uri: str, run_id: str, status: str, tags: dict[str, str], error: str | None = None) -> None:
    """Close a run that did not finish; a tracking failure here must not hide the trial's own error."""
    try:
        tracking.set_tags(uri, run_id, tags)
        tracking.end_run(uri, run_id, status, error=error)
    except Exception as exc:  # noqa: BLE001
        log.error("could not mark MLflow run %s %s: %s", run_id, status, exc)


def headline(metrics: Mapping[str, float]) -> str:
    """One short ``i2t map@all 0.412 t2i ...`` string of a trial's headline mAPs."""
    parts = []
    for k in sorted(metrics):
        if k.endswith("/map@all") and k.count("/") == 1 and math.isfinite(metrics[k]):
            parts.append(f"{k.split('/')[0]} {metrics[k]:.3f}")
    if not parts:
        for k in sorted(metrics):
            if k.endswith("/map@all") and math.isfinite(metrics[k]):
                parts.append(f"{k.rsplit('/', 2)[0]} {metrics[k]:.3f}")
                if len(parts) == 2:
                    break
    return ("mAP@all " + ", ".join(parts)) if parts else ""


# -- runs left behind by dead processes --------------------------------------------------------------


def reap_dead_runs(uri: str, experiment_id: str, *, max_age_hours: float = 72.0, wait_s: float = 0.0) -> list[str]:
    """Mark KILLED (``hashbench.status=lost``) every RUNNING trial run of the experiment whose owner
    process is gone: on this host, its pid is not alive; on another host, it has not logged for
    ``max_age_hours``. With ``wait_s``, keep looking that long for owners on this host that are still
    ending (after an interrupt). Returns the run ids reaped."""
    deadline = time.monotonic() + wait_s
    reaped = _reap_once(uri, experiment_id, max_age_hours)
    while time.monotonic() < deadline and _live_local_runs(uri, experiment_id):
        time.sleep(0.5)
        reaped += _reap_once(uri, experiment_id, max_age_hours)
    return reaped


def _live_local_runs(uri: str, experiment_id: str) -> list[str]:
    host = socket.gethostname()
    runs = tracking.client(uri).search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000)
    return [r.info.run_id for r in runs if r.data.tags.get(TAG_HOST) == host and tracking.TAG_KEY in r.data.tags]


def _reap_once(uri: str, experiment_id: str, max_age_hours: float) -> list[str]:
    c = tracking.client(uri)
    host = socket.gethostname()
    now_ms = time.time() * 1000
    reaped = []
    for run in c.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000):
        tags = run.data.tags
        if tracking.TAG_KEY not in tags or tags.get("hashbench.tune_parent") == "1":
            continue
        pid, owner = tags.get(TAG_PID), tags.get(TAG_HOST)
        if owner == host and pid and pid.isdigit():
            dead = not pid_alive(int(pid)) or int(pid) == os.getpid()
        else:
            dead = (now_ms - (run.info.start_time or now_ms)) > max_age_hours * 3600_000
        if dead:
            _close_quietly(uri, run.info.run_id, "KILLED", {TAG_STATUS: "lost", "hashbench.error": "the process running this trial died (reaped by the next launch)"})
            reaped.append(run.info.run_id)
    if reaped:
        log.info("marked %d run(s) of dead processes KILLED", len(reaped))
    return reaped


__all__ = [
    "BodyResult",
    "RunObserver",
    "TrialBody",
    "TrialContext",
    "TrialRecord",
    "TrialStopped",
    "execute_trial",
    "headline",
    "reap_dead_runs",
]
