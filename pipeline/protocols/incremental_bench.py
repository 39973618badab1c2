"""``bench`` for a suite with an ``incremental:`` block: the incremental-class protocol, trial by trial.

Each trial (method x bits x seed x new-class count) is one :func:`pipeline.protocols.incremental.run_incremental`:
original step, incremental step with the original codes fixed, full retraining, each timed. The trials
run one after another in the bench process, not as a Ray Tune grid: the protocol's figure of merit is
the training time of the incremental step against full retraining (ADIH's Table 6), and concurrent
trials on the same CPUs would distort exactly that ratio. Everything else is bench's: one MLflow run
per trial in the suite's experiment (keyed like every trial, so a rerun skips finished ones), every
resolved parameter, provenance tags, the metrics ``{stage}/{queries}/{direction}/{metric}`` with
``stage`` in original/increment/retrain and ``queries`` in old/new/all, the per-stage training seconds
``seconds/{stage}`` and ``increment_time_ratio`` (incremental step / full retraining), and a failed
trial recorded FAILED with its error while the others go on.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.train import tracking
from pipeline.config import TrialSpec

log = logging.getLogger(__name__)


def incremental_metrics(outcome) -> dict[str, float]:
    """The flat MLflow metrics of one incremental outcome (see the module docstring)."""
    final = {k: float(v) for k, v in outcome.metrics.items()}
    final.update({f"seconds/{k}": float(v) for k, v in outcome.seconds.items()})
    final.update({f"count/{k}": float(v) for k, v in outcome.counts.items()})
    inc, full = outcome.seconds.get("increment"), outcome.seconds.get("retrain")
    if outcome.incremental and inc is not None and full:
        final["increment_time_ratio"] = float(inc) / float(full)
    return final


def run_incremental_trials(pending: list[TrialSpec], common: dict[str, Any]) -> dict[str, str | None]:
    """Run every pending trial; returns ``{key: error or None}`` like the Ray grid of :mod:`pipeline.protocols.standard`."""
    from tqdm import tqdm

    from pipeline.protocols.incremental import run_incremental

    uri, exp_id = common["tracking_uri"], common["experiment_id"]
    errors: dict[str, str | None] = {}
    for spec in tqdm(pending, desc="incremental trials", unit="trial"):
        assert spec.incremental is not None, spec.key()
        inc = spec.incremental
        t0 = time.perf_counter()
        run_id = tracking.start_trial_run(uri, exp_id, spec, common["provenance"])
        try:
            outcome = run_incremental(
                spec,
                Path(common["prepared_dir"]),
                n_new=inc.new_classes,
                class_seed=inc.class_seed,
                increment_epochs=inc.increment_epochs,
                retrain=inc.retrain,
            )
            final = incremental_metrics(outcome)
            tracking.log_metrics(uri, run_id, final, step=spec.train.epochs)
            c = tracking.client(uri)
            c.set_tag(run_id, "hashbench.new_classes", ",".join(str(x) for x in outcome.classes.get("new", [])))
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "incremental.json"
                path.write_text(json.dumps({"key": spec.key(), **outcome.summary(), "history": outcome.history}, indent=2, sort_keys=True, default=float))
                c.log_artifact(run_id, str(path))
            tracking.log_metrics(uri, run_id, {"trial_wall_seconds": time.perf_counter() - t0}, step=spec.train.epochs)
            tracking.end_run(uri, run_id, "FINISHED")
            errors[spec.key()] = None
            log.info("%s: finished in %.1f s", spec.key(), time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - recorded as FAILED; the other trials go on
            tracking.end_run(uri, run_id, "FAILED", error=f"{type(exc).__name__}: {exc}")
            errors[spec.key()] = f"{type(exc).__name__}: {exc}"
            log.error("%s failed: %s", spec.key(), exc)
        except BaseException as exc:  # interrupted: the run is not left RUNNING, nothing finished is lost
            tracking.end_run(uri, run_id, "KILLED", error=f"interrupted: {type(exc).__name__}")
            raise
    return errors
