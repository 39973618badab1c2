"""One trial of the incremental-class protocol (ADIH, paper 003, Algorithm 2 and Table 6).

:func:`run_incremental` runs, on one prepared dataset and one :class:`~pipeline.config.TrialSpec`:

1. **original step**: the method trained from scratch on the training items of the original classes
   (:mod:`pipeline.data.incremental` gives the split), with the shared epoch loop
   (:func:`pipeline.train.loop.fit`); then the database items of the original classes are encoded once
   and those codes are frozen (they are never recomputed);
2. **incremental step**: ``method.on_increment_start(old, new)`` (the hook of :mod:`methods.base`), then
   the same loop over the new classes' training items (followed by the original items the method asks
   to revisit with ``increment_replay``, none by default), for ``increment_epochs``; the database items
   of the new classes are encoded with the updated networks;
3. **full retraining** (reference, and ADIH-I): a fresh model (same seed) trained on all training items,
   the whole database encoded by it.

Each stage is timed (the incremental step's time includes ``on_increment_start``; training time
excludes encoding and evaluation, as in ``run_trial``) and evaluated on the *old* queries (no new
class), the *new* queries and *all* queries against the whole database (original + new items); the
original step is also evaluated on the old queries against the original database, before the increment.

Feature standardisation uses the statistics of the original training items in every stage (the
networks' input normalisation cannot change after the original step; the retrained reference uses the
same inputs so the comparison is of training only).

A method with ``supports_incremental = False`` is refused with a clear error. A method whose
parameters have ``incremental: false`` (ADIH-I) skips the incremental step: its "increment" results are
the full retraining's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from methods.registry import create_method, get_method_class
from pipeline.config import TrialSpec
from pipeline.data.formats import PreparedDataset
from pipeline.data.incremental import IncrementalSplit, incremental_split, split_classes
from pipeline.data.loaders import PartView
from pipeline.core.errors import MethodError
from pipeline.eval.evaluate import evaluate_codes, retrieval_directions
from pipeline.train.loop import TrialObserver, fit, make_train_data, resolve_device, seed_everything

log = logging.getLogger(__name__)

STAGES = ("original", "increment", "retrain")
QUERY_SETS = ("old", "new", "all")


@dataclass
class IncrementalOutcome:
    """Metrics ``{stage}/{queries}/{direction}/{metric}``, training seconds per stage, counts, histories."""

    metrics: dict[str, float]
    seconds: dict[str, float]
    counts: dict[str, int]
    classes: dict[str, list[int]]
    history: dict[str, list[dict[str, float]]]
    incremental: bool
    extras: dict[str, Any] = field(default_factory=dict)
    old_database_codes: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def summary(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "seconds": self.seconds,
            "counts": self.counts,
            "classes": self.classes,
            "incremental": self.incremental,
            **self.extras,
        }


def _feature_stats(ds: PreparedDataset, indices: np.ndarray, modalities) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Mean / std of the feature modalities over ``indices`` (as :class:`pipeline.data.loaders.SplitData`)."""
    stats = {}
    for m in modalities:
        if ds.modality_spec(m).kind == "features":
            x = np.asarray(ds.modality(m)[np.sort(indices)], dtype=np.float64)
            std = x.std(0)
            std[std < 1e-8] = 1.0
            stats[m] = (x.mean(0).astype(np.float32), std.astype(np.float32))
    return stats


@torch.no_grad()
def encode_part(method, part: PartView, batch_size: int, device) -> dict[str, np.ndarray]:
    """Real-valued codes {modality: (N, bits)} of one part."""
    method.eval()
    return {
        m: np.concatenate([method.encode(b, m).float().cpu().numpy() for b in part.batches(batch_size, device=device)])
        for m in part.modalities
    }


def _evaluate(prefix, query_codes, query_labels, db_codes, db_labels, n_old_queries, directions, cfg) -> dict[str, float]:
    """Flat metrics of old / new / all queries (rows ``[:n_old]`` / ``[n_old:]`` / all) against one database."""
    out: dict[str, float] = {}
    sl = {"old": slice(0, n_old_queries), "new": slice(n_old_queries, None), "all": slice(None)}
    for name, s in sl.items():
        codes = {"query": {m: c[s] for m, c in query_codes.items()}, "database": db_codes}
        res = evaluate_codes(codes, query_labels=query_labels[s], db_labels=db_labels, directions=directions, cfg=cfg)
        out.update({f"{prefix}/{name}/{k}": v for k, v in res.flat_metrics().items()})
    return out


def run_incremental(
    spec: TrialSpec,
    prepared_dir: Path,
    *,
    n_new: int | str,
    class_seed: int = 0,
    increment_epochs: int | None = None,
    retrain: bool = True,
    device: str | None = None,
    observer: TrialObserver | None = None,
) -> IncrementalOutcome:
    """Original step, incremental step (old codes fixed) and full retraining of ``spec.method``; see the module docstring."""
    cls = get_method_class(spec.method)
    if not getattr(cls, "supports_incremental", False):
        raise MethodError(
            f"method {spec.method!r} does not support the incremental-class protocol "
            "(it needs supports_incremental = True and an on_increment_start hook, see methods/base.py)"
        )
    dev = resolve_device(device or spec.train.device)
    ds = PreparedDataset(prepared_dir)
    split = ds.split(spec.protocol)
    labels = np.asarray(ds.labels)
    classes = split_classes(labels.shape[1], n_new, class_seed)
    isplit: IncrementalSplit = incremental_split(split, labels, classes, dataset=ds.name)
    mods = cls.modalities
    stats = _feature_stats(ds, isplit.train_original, mods)

    def view(idx):
        return PartView(ds, idx, mods, stats)

    tr_old, tr_new, tr_all = view(isplit.train_original), view(isplit.train_new), view(isplit.train_all)
    db_old, db_new, queries = view(isplit.database_original), view(isplit.database_new), view(isplit.query)
    n_old_q = len(isplit.query_old)
    db_labels = np.concatenate([db_old.labels, db_new.labels])
    directions = retrieval_directions(mods)
    cfg = spec.eval.model_copy(update={"index": spec.eval.index.model_copy(update={"kinds": []})})
    bs = spec.train.batch_size
    info = ds.info(spec.protocol)
    metrics: dict[str, float] = {}
    seconds: dict[str, float] = {}
    history: dict[str, list] = {}

    # 1. original step
    seed_everything(spec.seed)
    method = create_method(spec.method, spec.method_params, replace(info, n_train=len(tr_old)), spec.bits).to(dev)
    incremental = bool(getattr(method.params, "incremental", True))
    td_old = make_train_data(tr_old, method.info, bs, dev)
    rng = np.random.default_rng(spec.seed)
    history["original"], seconds["original"] = fit(
        method, tr_old, td_old, spec, rng, dev, start=lambda: method.on_train_start(td_old), observer=observer
    )
    old_db_codes = encode_part(method, db_old, bs, dev)  # frozen from here on
    q_codes = encode_part(method, queries, bs, dev)
    old_q = {m: c[:n_old_q] for m, c in q_codes.items()}
    res = evaluate_codes(
        {"query": old_q, "database": old_db_codes}, query_labels=queries.labels[:n_old_q], db_labels=db_old.labels, directions=directions, cfg=cfg
    )
    metrics.update({f"original/old/{k}": v for k, v in res.flat_metrics().items()})
    log.info("incremental %s: original step on %d items, %.1f s", spec.key(), len(tr_old), seconds["original"])

    # 2. incremental step (old codes fixed)
    extras: dict[str, Any] = {}
    if incremental:
        before = {k: v.detach().clone() for k, v in method.named_buffers()}
        replay = np.asarray(method.increment_replay(len(tr_old)), dtype=np.int64)
        inc_part = view(np.concatenate([isplit.train_new, isplit.train_original[replay]])) if len(replay) else tr_new
        td_new = make_train_data(inc_part, method.info, bs, dev)
        extras["replayed_old_items"] = int(len(replay))
        history["increment"], seconds["increment"] = fit(
            method,
            inc_part,
            td_new,
            spec,
            rng,
            dev,
            start=lambda: method.on_increment_start(td_old, td_new),
            epochs=increment_epochs,
            observer=observer,
        )
        after = dict(method.named_buffers())
        extras["changed_old_buffers"] = sorted(k for k, v in before.items() if k in after and not torch.equal(v, after[k]))
        new_db = encode_part(method, db_new, bs, dev)
        db_codes = {m: np.concatenate([old_db_codes[m], new_db[m]]) for m in mods}
        metrics.update(_evaluate("increment", encode_part(method, queries, bs, dev), queries.labels, db_codes, db_labels, n_old_q, directions, cfg))
        # how much re-encoding the old database would have changed it (it is not re-encoded)
        again = encode_part(method, db_old, bs, dev)
        extras["old_db_bits_changed_if_reencoded"] = float(np.mean([np.mean((again[m] >= 0) != (old_db_codes[m] >= 0)) for m in mods]))
        log.info("incremental %s: incremental step on %d items, %.1f s", spec.key(), len(tr_new), seconds["increment"])

    # 3. full retraining (reference; ADIH-I's result)
    retrain_metrics: dict[str, float] = {}
    if retrain or not incremental:
        seed_everything(spec.seed)
        full = create_method(spec.method, spec.method_params, replace(info, n_train=len(tr_all)), spec.bits).to(dev)
        td_all = make_train_data(tr_all, full.info, bs, dev)
        history["retrain"], seconds["retrain"] = fit(
            full, tr_all, td_all, spec, np.random.default_rng(spec.seed), dev, start=lambda: full.on_train_start(td_all)
        )
        full_db = {m: np.concatenate([a, b]) for (m, a), b in zip(encode_part(full, db_old, bs, dev).items(), encode_part(full, db_new, bs, dev).values())}
        retrain_metrics = _evaluate("retrain", encode_part(full, queries, bs, dev), queries.labels, full_db, db_labels, n_old_q, directions, cfg)
        metrics.update(retrain_metrics)
        del full

    if not incremental:
        seconds["increment"] = seconds["retrain"]
        metrics.update({k.replace("retrain/", "increment/", 1): v for k, v in retrain_metrics.items()})
    if "retrain" in seconds:
        extras["increment_over_retrain_seconds"] = seconds["increment"] / max(seconds["retrain"], 1e-9)
    return IncrementalOutcome(
        metrics=metrics,
        seconds=seconds,
        counts=isplit.counts(),
        classes={"original": list(classes.original), "new": list(classes.new)},
        history=history,
        incremental=incremental,
        extras=extras,
        old_database_codes=old_db_codes,
    )


def incremental_spec(
    params,
    method: str,
    dataset: str,
    bits: int,
    seed: int = 0,
    epochs: int | None = None,
    method_overrides: dict[str, Any] | None = None,
    protocol: str | None = None,
) -> TrialSpec:
    """A :class:`TrialSpec` for ``hashbench incremental``: the method's params.yaml block (plus overrides),
    the global ``train`` settings (with the method's recipe, its ``train`` block and ``epochs``), the global ``eval``."""
    from pipeline.config import TrainConfig, method_params, method_train
    from pipeline.data.registry import get_dataset
    from pipeline.core.errors import ConfigError

    if dataset not in params.datasets:
        raise ConfigError(f"{params.source}: dataset {dataset!r} is not configured under 'datasets'; configured: {', '.join(params.datasets)}")
    ds_spec = get_dataset(dataset)
    mp = method_params(params, method, method_overrides or {}, where=f"incremental --method {method} --param")
    train = method_train(params, method)
    if epochs is not None:
        train["epochs"] = int(epochs)
    try:
        train_cfg = TrainConfig.model_validate(train)
    except Exception as exc:  # pydantic ValidationError, with the key in its text
        raise ConfigError(f"{params.source}: train settings for the incremental trial: {exc}") from None
    return TrialSpec(
        suite="incremental",
        dataset=dataset,
        protocol=protocol or ds_spec.default_protocol,
        method=params.implementation(method),
        variant=method if params.implementation(method) != method else None,
        bits=int(bits),
        seed=int(seed),
        method_params=mp,
        dataset_params=params.dataset_params(dataset).model_dump(mode="json"),
        train=train_cfg,
        eval=params.eval,
    )
