"""MLflow conventions: one experiment per suite, one run per trial, provenance tags on every run.

The store is the embedded sqlite database ``mlruns.db`` in the project (git-ignored) with artifacts
under ``mlartifacts/``, unless ``tracking.mlflow_uri`` is set; the environment variable
``MLFLOW_TRACKING_URI`` overrides both. Runs are written with :class:`mlflow.MlflowClient` and explicit
run ids (no global active run), so several Ray workers can log at once.

A trial is *finished* when its run has status FINISHED and the tag ``hashbench.trial_key``; ``bench``
skips those keys, which is the whole resume mechanism.
"""

from __future__ import annotations

import json
import logging
import re
import os
import platform
import subprocess
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from pipeline.config import TrackingConfig, TrialSpec
from pipeline.config.model import KEY_VERSION
from pipeline.core.paths import ProjectPaths

log = logging.getLogger(__name__)

TAG_KEY = "hashbench.trial_key"
PACKAGES = ("hashbench", "torch", "numpy", "ray", "mlflow", "faiss-cpu", "faiss-gpu", "pandas", "pydantic", "dvc")


def tracking_uri(cfg: TrackingConfig, paths: ProjectPaths) -> str:
    """MLFLOW_TRACKING_URI, else ``tracking.mlflow_uri``, else the project's sqlite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.mlflow_uri or f"sqlite:///{paths.mlflow_db}"


def is_local_store(uri: str) -> bool:
    """True for a store only this machine can reach: an sqlite database or a file store (a path)."""
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    return scheme in ("", "file", "sqlite") or len(scheme) == 1  # a bare path (or a Windows drive letter)


def server_command(paths: ProjectPaths, host: str = "127.0.0.1", port: int = 5000, backend_store_uri: str | None = None, artifacts: str | None = None) -> list[str]:
    """The ``mlflow server`` command of ``hashbench tracking-server``: a SQL backend
    (``.hashbench/mlflow-server.db`` by default) and artifact serving (``mlartifacts-server/``), so every
    node of a cluster logs runs and artifacts over HTTP (``tracking.mlflow_uri: http://HOST:PORT``)."""
    import sys

    backend = backend_store_uri or f"sqlite:///{paths.root.resolve() / '.hashbench' / 'mlflow-server.db'}"
    dest = artifacts or str(paths.root.resolve() / "mlartifacts-server")
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend,
        "--serve-artifacts", "--artifacts-destination", dest,
        "--host", host, "--port", str(int(port)),
        "--workers", "1",
    ]  # fmt: skip


def artifact_location(cfg: TrackingConfig, paths: ProjectPaths, experiment: str) -> str | None:
    """Artifact folder of a new experiment: inside the project for the embedded store."""
    if os.environ.get("MLFLOW_TRACKING_URI") or cfg.mlflow_uri:
        return None
    root = Path(cfg.artifact_root)
    if not root.is_absolute():
        root = paths.root / root
    return (root / experiment.replace("/", "_")).as_uri()


def experiment_name(cfg: TrackingConfig, suite: str) -> str:
    return f"{cfg.experiment_prefix}/{suite}"


def client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str, artifacts: str | None) -> str:
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=artifacts)
    except Exception:  # created concurrently by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def finished_trials(uri: str, experiment_id: str) -> dict[str, str]:
    """{trial key: run id} of the FINISHED runs of an experiment (newest run wins)."""
    c = client(uri)
    out: dict[str, str] = {}
    token = None
    while True:
        page = c.search_runs(
            [experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time ASC"],
            max_results=1000,
            page_token=token,
        )
        for run in page:
            key = run.data.tags.get(TAG_KEY)
            if key:
                out[key] = run.info.run_id
        token = page.token
        if not token:
            return out


# -- provenance ----------------------------------------------------------------------------------


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    out["python"] = platform.python_version()
    return out


def provenance_tags(paths: ProjectPaths, params_file: Path, params_sha256: str, manifest_sha256: str) -> dict[str, str]:
    """Tags that say exactly what produced a run (the device is added by the worker)."""
    commit = _git(["rev-parse", "HEAD"], paths.root)
    status = _git(["status", "--porcelain", "--untracked-files=no"], paths.root)
    tags = {
        "git.commit": commit or "unknown",
        "git.dirty": "unknown" if status is None else str(bool(status)).lower(),
        "hashbench.params_file": str(params_file),
        "hashbench.params_sha256": params_sha256,
        "data.manifest_sha256": manifest_sha256,
        "host": platform.node(),
    }
    tags.update({f"version.{k}": v for k, v in package_versions().items()})
    return tags


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)


def trial_params(spec: TrialSpec) -> dict[str, str]:
    """Every resolved setting of a trial, flattened to ``section.key`` strings."""
    out: dict[str, str] = {}
    dumped = spec.model_dump(mode="json")
    for section in ("method_params", "dataset_params", "train", "eval"):
        _flatten(section, dumped[section], out)
    for k in ("suite", "dataset", "protocol", "method", "bits", "seed"):
        out[k] = str(dumped[k])
    out["method"] = spec.name
    out["implementation"] = spec.method
    if dumped.get("incremental"):
        _flatten("incremental", dumped["incremental"], out)
    return out


def trial_tags(spec: TrialSpec, provenance: Mapping[str, str]) -> dict[str, str]:
    return {
        TAG_KEY: spec.key(),
        "hashbench.resolved_sha256": spec.resolved_hash(),
        "hashbench.key_version": str(KEY_VERSION),
        "hashbench.eval_key": spec.eval_key(),
        "hashbench.code_sha256": spec.code_sha256,
        "hashbench.suite": spec.suite,
        "hashbench.dataset": spec.dataset,
        "hashbench.protocol": spec.protocol,
        "hashbench.method": spec.name,
        "hashbench.implementation": spec.method,
        **({"hashbench.incremental_new": str(spec.incremental.new_classes)} if spec.incremental else {}),
        "hashbench.bits": str(spec.bits),
        "hashbench.seed": str(spec.seed),
        "eval.ties": spec.eval.ties,
        "eval.ap_norm": spec.eval.ap_norm,
        "mlflow.runName": f"{spec.name}-{spec.bits}b-s{spec.seed}",
        **provenance,
    }


def start_trial_run(uri: str, experiment_id: str, spec: TrialSpec, provenance: Mapping[str, str]) -> str:
    """Create the run of a trial (status RUNNING) with its params and tags; return the run id."""
    import mlflow.entities

    c = client(uri)
    run = c.create_run(experiment_id, tags=trial_tags(spec, provenance), run_name=f"{spec.name}-{spec.bits}b-s{spec.seed}")
    params = [mlflow.entities.Param(k, v[:6000]) for k, v in trial_params(spec).items()]
    for i in range(0, len(params), 100):
        c.log_batch(run.info.run_id, params=params[i : i + 100])
    return run.info.run_id


def log_metrics(uri: str, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    import time

    import mlflow.entities

    ts = int(time.time() * 1000)
    items = [mlflow.entities.Metric(metric_name(k), float(v), ts, step or 0) for k, v in metrics.items()]
    c = client(uri)
    for i in range(0, len(items), 500):
        c.log_batch(run_id, metrics=items[i : i + 500])


def metric_name(name: str) -> str:
    """MLflow-safe metric name: MLflow does not allow '@', so ``map@100`` is logged as ``map_at_100``."""
    return name.replace("@", "_at_")


def metric_name_from_mlflow(name: str) -> str:
    """Inverse of :func:`metric_name` for the cut-off names it produces (``_at_`` before a number or ``all``)."""
    return re.sub(r"_at_(?=(?:\d+|all|r\d+)(?:/|$))", "@", name)


def write_outcome_artifacts(outcome, out_dir: Path) -> None:
    """Codes, P-R curves, per-epoch history and the full evaluation of a trial outcome, as files in ``out_dir``."""
    import numpy as np

    ev = outcome.evaluation
    arrays = {f"{part}_{mod}": codes for part, mods in ev.packed.items() for mod, codes in mods.items()}
    np.savez_compressed(out_dir / "codes.npz", **arrays)
    curves = {name: {k: np.asarray(v).tolist() for k, v in d.metrics.pr_curve.items()} for name, d in ev.directions.items()}
    (out_dir / "pr_curves.json").write_text(json.dumps(curves))
    (out_dir / "history.json").write_text(json.dumps(outcome.history, indent=1))
    evaluation = {
        "conventions": ev.conventions,
        "directions": {name: {"metrics": d.metrics.values, "index": [asdict(s) for s in d.index]} for name, d in ev.directions.items()},
        "train_seconds": outcome.train_seconds,
        "eval_seconds": outcome.eval_seconds,
        "device": outcome.device,
    }
    (out_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=1, default=float))


def log_artifact_dir(uri: str, run_id: str, folder: Path) -> None:
    """Every file in ``folder`` as an artifact of the run (one call; nothing when the folder is empty)."""
    if any(folder.iterdir()):
        client(uri).log_artifacts(run_id, str(folder))


def set_tags(uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    """Tags on a run in one batch (values truncated to MLflow's limit)."""
    import mlflow.entities

    items = [mlflow.entities.RunTag(k, str(v)[:5000]) for k, v in tags.items()]
    c = client(uri)
    for i in range(0, len(items), 100):
        c.log_batch(run_id, tags=items[i : i + 100])


def end_run(uri: str, run_id: str, status: str, error: str | None = None) -> None:
    c = client(uri)
    if error:
        c.set_tag(run_id, "hashbench.error", error[:5000])
    c.set_terminated(run_id, status=status)
