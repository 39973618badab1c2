"""The ``evaluate`` stage: metrics from the stored codes of finished trials, keyed by the evaluation settings.

Every finished trial logs its packed codes as the MLflow artifact ``codes.npz`` (arrays
``{part}_{modality}``, part in query/database; see :func:`pipeline.train.tracking.log_outcome_artifacts`).
This module reads them back, takes the query/database labels from the prepared dataset and its split,
and evaluates them under

* the profile's evaluation settings (the trial's ``eval`` block), and
* every *paper convention* the published tables need (:mod:`pipeline.report.published`): the paper's
  cut-off (mAP@K, or @all where the paper states none) with ties broken in index order, as the classic
  reference code does, and the tie-aware expectation (McSherry & Najork 2008) beside it.

Results go to ``results/eval/<profile>/<suite>.json``, keyed by ``"<trial key>|<evaluation key>"`` where
the evaluation key is :func:`spec_eval_key` (sha256 of the canonical JSON of the ``EvalConfig``). Only
missing keys are computed, so a change of cut-off or tie rule costs seconds and no training. Each trial
also lists its *views* (``profile`` and ``paper:<metric>/<ties>``) -> evaluation key, which is what the
report reads.

Deviations from the bench-time evaluation (:func:`pipeline.eval.evaluate.evaluate_codes`): no binary-index
timings and no random-code baseline here (both stay as the bench logged them); head/medium/tail groups are
not recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from pipeline.config.model import canonical_hash
from pipeline.config import EvalConfig
from pipeline.core.errors import HashBenchError
from pipeline.data.formats import PreparedDataset
from pipeline.eval.codelayer import evaluate_code_layer, training_rows
from pipeline.eval.evaluate import direction_name, retrieval_directions
from pipeline.eval.metrics import evaluate_retrieval

log = logging.getLogger(__name__)

SCHEMA = 1
PARTS = ("query", "database")
CODE_VIEW = "code"


def spec_eval_key(eval_cfg: EvalConfig) -> str:
    """sha256 of the canonical JSON of the evaluation settings (sorted keys, no spaces)."""
    return canonical_hash(eval_cfg.model_dump(mode="json"))


@dataclass(frozen=True)
class Convention:
    """A paper's way of computing a ranking metric: the cut-off (None = whole ranking) and the tie rule."""

    cutoff: int | None
    ties: str  # "index" | "expected"

    @property
    def name(self) -> str:
        return f"paper:map@{self.cutoff or 'all'}/{self.ties}"

    @property
    def metric(self) -> str:
        return f"map@{self.cutoff or 'all'}"

    def apply(self, base: EvalConfig) -> EvalConfig:
        """``base`` with this cut-off and tie rule (other settings, e.g. the AP@K normalisation, kept)."""
        data = base.model_dump(mode="json")
        data.update(topk=[self.cutoff] if self.cutoff else [], ties=self.ties, random_baseline=False)
        data.pop("code_layer", None)  # the code layer is its own view ("code"), not part of a paper convention
        return EvalConfig.model_validate(data)


def conventions_for(cutoffs: Iterable[int | None]) -> list[Convention]:
    """Index-order and tie-aware conventions for each distinct cut-off (None: mAP@all)."""
    ks = sorted(set(cutoffs), key=lambda k: (k is not None, k or 0))
    return [Convention(k, t) for k in ks for t in ("index", "expected")]


# -- codes and labels --------------------------------------------------------------------------------------


def read_codes(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """``codes.npz`` -> {part: {modality: packed uint8 codes}}; every part must be present."""
    out: dict[str, dict[str, np.ndarray]] = {p: {} for p in PARTS}
    with np.load(path) as z:
        for name in z.files:
            part, _, modality = name.partition("_")
            if part not in out or not modality:
                raise HashBenchError(f"{path}: unexpected array {name!r}; expected {{query,database}}_<modality>")
            out[part][modality] = np.asarray(z[name], dtype=np.uint8)
    missing = [p for p in PARTS if not out[p]]
    if missing:
        raise HashBenchError(f"{path}: no {' or '.join(missing)} codes (arrays: {sorted(z.files)})")
    return out


def download_codes(client, run_id: str, dest: Path) -> dict[str, dict[str, np.ndarray]]:
    try:
        path = client.download_artifacts(run_id, "codes.npz", str(dest))
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types for a missing artifact
        raise HashBenchError(f"run {run_id}: no codes.npz artifact ({exc}); rerun its trial with `hashbench bench`") from None
    return read_codes(Path(path))


def split_labels(prepared_root: Path, protocol: str) -> tuple[np.ndarray, np.ndarray]:
    """(query labels, database labels) of a prepared dataset's protocol split."""
    ds = PreparedDataset(prepared_root)
    split = ds.split(protocol)
    labels = np.asarray(ds.labels)
    return labels[split.query], labels[split.database]


def split_training_rows(prepared_root: Path, protocol: str) -> np.ndarray:
    """Positions of a protocol's training items among its database items (the code layer's training codes)."""
    split = PreparedDataset(prepared_root).split(protocol)
    return training_rows(split.train, split.database)


def stored_directions(codes: dict[str, dict[str, np.ndarray]]) -> list[tuple[str, str]]:
    """The directions a trial was evaluated in, from the modalities its codes cover."""
    mods = tuple(m for m in ("image", "text") if m in codes["query"] and m in codes["database"])
    mods += tuple(sorted(m for m in codes["query"] if m in codes["database"] and m not in mods))
    return retrieval_directions(mods)


def evaluate_stored(codes, query_labels: np.ndarray, db_labels: np.ndarray, cfg: EvalConfig) -> tuple[dict[str, float], dict[str, str]]:
    """``{direction}/{metric}`` values and the conventions text for stored (packed) codes under ``cfg``."""
    values: dict[str, float] = {}
    conventions: dict[str, str] = {}
    for qm, dm in stored_directions(codes):
        q, d = codes["query"][qm], codes["database"][dm]
        if len(q) != len(query_labels) or len(d) != len(db_labels):
            raise HashBenchError(
                f"stored codes ({len(q)} query, {len(d)} database) do not match the split's labels "
                f"({len(query_labels)} query, {len(db_labels)} database): was the dataset prepared again since the trial?"
            )
        m = evaluate_retrieval(q, d, query_labels, db_labels, topk=tuple(cfg.topk), ties=cfg.ties, ap_norm=cfg.ap_norm, radius=cfg.radius)
        name = direction_name(qm, dm)
        values.update({f"{name}/{k}": float(v) for k, v in m.values.items()})
        conventions.update(m.conventions)
    return values, conventions


# -- the stage ---------------------------------------------------------------------------------------------


@dataclass
class StoredTrial:
    """What the stage needs of one finished trial."""

    key: str
    run_id: str
    dataset: str
    protocol: str
    eval: EvalConfig


@dataclass
class EvaluateSummary:
    path: Path
    trials: int = 0
    computed: int = 0
    reused: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def read_results(path: Path) -> dict:
    if not path.is_file():
        return {"schema": SCHEMA, "evaluations": {}, "trials": {}}
    data = json.loads(path.read_text())
    if data.get("schema") != SCHEMA:
        log.warning("%s: schema %s, expected %s: recomputing everything", path, data.get("schema"), SCHEMA)
        return {"schema": SCHEMA, "evaluations": {}, "trials": {}}
    return data


def evaluate_trials(
    trials: list[StoredTrial],
    out_path: Path,
    *,
    conventions: list[Convention],
    load_codes: Callable[[str], dict[str, dict[str, np.ndarray]]],
    load_labels: Callable[[str, str], tuple[np.ndarray, np.ndarray]],
    load_train_rows: Callable[[str, str], np.ndarray] | None = None,
) -> EvaluateSummary:
    """Evaluate every trial under its profile settings and each convention; reuse stored keys; write ``out_path``.

    ``load_codes(run_id)`` and ``load_labels(dataset, protocol)`` are injected so tests need no MLflow.
    A trial whose settings have ``code_layer`` also gets the view ``code`` (paper 000's code layer,
    :func:`pipeline.eval.codelayer.evaluate_code_layer`), which needs ``load_train_rows(dataset, protocol)``:
    the positions of the training items among the database codes."""
    t0 = time.perf_counter()
    results = read_results(out_path)
    evaluations, views_out = results["evaluations"], {}
    summary = EvaluateSummary(out_path, trials=len(trials))
    labels_cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    for t in trials:
        views = {"profile": t.eval, **{c.name: c.apply(t.eval) for c in conventions}}
        if t.eval.code_layer is not None and load_train_rows is not None:
            views[CODE_VIEW] = t.eval
        keys = {name: spec_eval_key(cfg) for name, cfg in views.items()}
        if t.eval.code_layer is not None and load_train_rows is not None:
            keys[CODE_VIEW] = f"{CODE_VIEW}-{spec_eval_key(t.eval)}"
        views_out[t.key] = {"run_id": t.run_id, "views": keys}
        todo = {name: views[name] for name, k in keys.items() if f"{t.key}|{k}" not in evaluations}
        summary.reused += len(keys) - len(todo)
        if not todo:
            continue
        codes = load_codes(t.run_id)
        if (t.dataset, t.protocol) not in labels_cache:
            labels_cache[(t.dataset, t.protocol)] = load_labels(t.dataset, t.protocol)
        ql, dl = labels_cache[(t.dataset, t.protocol)]
        for name, cfg in todo.items():
            s = time.perf_counter()
            extra = {}
            if name == CODE_VIEW:
                values, extra["details"] = evaluate_code_layer(codes, ql, dl, load_train_rows(t.dataset, t.protocol), stored_directions(codes), cfg.code_layer)
                conv = {"code_layer": "served top-k, ties by database index; see pipeline/eval/codelayer.py"}
            else:
                values, conv = evaluate_stored(codes, ql, dl, cfg)
            evaluations[f"{t.key}|{keys[name]}"] = {
                "trial_key": t.key,
                "run_id": t.run_id,
                "eval_key": keys[name],
                "eval": cfg.model_dump(mode="json"),
                "metrics": values,
                "conventions": conv,
                "seconds": time.perf_counter() - s,
                **extra,
            }
            summary.computed += 1
    results["trials"] = views_out
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.part")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    tmp.replace(out_path)
    summary.seconds = time.perf_counter() - t0
    return summary


def view_metrics(results: dict, trial_key: str, view: str) -> dict[str, float] | None:
    """The metrics of one trial under one view (``profile`` or a convention name), or None when absent."""
    entry = results.get("trials", {}).get(trial_key)
    if not entry or view not in entry["views"]:
        return None
    ev = results["evaluations"].get(f"{trial_key}|{entry['views'][view]}")
    return ev["metrics"] if ev else None
