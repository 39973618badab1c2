"""Read the runs of a profile back from MLflow into pandas.

The bench summaries (``results/bench/<profile>/<suite>.json``) say which run holds each *current*
trial, so runs of superseded hyperparameters never leak into a report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline.report.flags import SETUP_PARAMS
from pipeline.train import tracking
from pipeline.core.errors import HashBenchError


@dataclass
class ProfileRuns:
    profile: str
    runs: pd.DataFrame  # one row per trial: suite, dataset, method, bits, seed, run_id, tags..., metric columns
    curves: dict[str, dict]  # run_id -> {direction: {"radius", "precision", "recall"}}
    missing_suites: list[str]
    histories: dict[str, list[dict]] = field(default_factory=dict)  # run_id -> per-epoch metrics (history.json)


def load_summaries(bench_dir: Path, suites: list[str]) -> tuple[dict[str, dict], list[str]]:
    found, missing = {}, []
    for suite in suites:
        path = bench_dir / f"{suite}.json"
        if path.is_file():
            found[suite] = json.loads(path.read_text())
        else:
            missing.append(suite)
    return found, missing


def collect_runs(uri: str, bench_dir: Path, suites: list[str], profile: str) -> ProfileRuns:
    """A DataFrame of every finished trial of ``suites`` with its final metrics and provenance tags."""
    summaries, missing = load_summaries(bench_dir, suites)
    c = tracking.client(uri)
    rows, curves, histories = [], {}, {}
    for suite, summary in summaries.items():
        for key, trial in summary["trials"].items():
            run_id = trial.get("run_id")
            if trial.get("status") != "finished" or not run_id:
                continue
            try:
                run = c.get_run(run_id)
            except Exception as exc:  # noqa: BLE001
                raise HashBenchError(
                    f"{bench_dir / (suite + '.json')}: run {run_id} of trial {key} is not in the MLflow store {uri} ({exc}); "
                    "was the store moved? rerun `hashbench bench --suite " + suite + "`"
                ) from None
            tags = run.data.tags
            row = {
                "suite": suite,
                "trial_key": key,
                "run_id": run_id,
                "dataset": tags.get("hashbench.dataset"),
                "protocol": tags.get("hashbench.protocol"),
                "method": tags.get("hashbench.method"),
                "bits": int(tags.get("hashbench.bits", trial["bits"])),
                "seed": int(tags.get("hashbench.seed", trial["seed"])),
                "ties": tags.get("eval.ties"),
                "ap_norm": tags.get("eval.ap_norm"),
                "git_commit": tags.get("git.commit"),
                "git_dirty": tags.get("git.dirty"),
                "device": tags.get("device"),
                "manifest": tags.get("data.manifest_sha256"),
                "incremental_new": tags.get("hashbench.incremental_new"),
                "init": tags.get("hashbench.init"),  # pretrained / random-init / frozen-features (pipeline/train/loop.py)
                "weights": "; ".join(f"{k[len('weights.'):]}={v}" for k, v in sorted(tags.items()) if k.startswith("weights.")) or None,  # incremental-class protocol trials only
            }
            row["implementation"] = tags.get("hashbench.implementation")
            row.update({f"p:{k}": v for k, v in run.data.params.items() if k in SETUP_PARAMS})  # pipeline/report/flags.py
            row.update({f"m:{tracking.metric_name_from_mlflow(k)}": v for k, v in run.data.metrics.items()})
            rows.append(row)
            curves[run_id] = _load_json_artifact(c, run_id, "pr_curves.json", {})
            histories[run_id] = _load_json_artifact(c, run_id, "history.json", [])
    df = pd.DataFrame(rows)
    return ProfileRuns(profile=profile, runs=df, curves=curves, missing_suites=missing, histories=histories)


def _load_json_artifact(c, run_id: str, name: str, default):
    """A run's JSON artifact (P-R curves, per-epoch history), or ``default`` when the run has none."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = c.download_artifacts(run_id, name, tmp)
        except Exception:  # noqa: BLE001 - a run without the artifact still reports its numbers
            return default
        return json.loads(Path(path).read_text())
