"""The per-trial loop, written once for every method: seeds, data, method hooks, evaluation.

:func:`run_trial` knows nothing of Ray or MLflow: it takes a :class:`TrialSpec`, the prepared
dataset folder and a :class:`TrialObserver` (which the Ray worker implements with ``ray.train.report``
and MLflow), so it can be tested and profiled on its own.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from methods.base import TrainData
from methods.registry import create_method, get_method_class
from pipeline.config import OptimizerConfig, TrialSpec
from pipeline.data.formats import PreparedDataset
from pipeline.data.loaders import SplitData
from pipeline.data.weights import resolve_method_weights
from pipeline.core.errors import MethodError, TrainingError
from pipeline.eval.evaluate import EvaluationResult, evaluate_codes, retrieval_directions

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU. An explicit ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"train.device is {name!r} but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (the trial seed varies the model only, never the split)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def optimizer_factory(cfg: OptimizerConfig):
    """A function building the configured optimizer over a parameter iterable."""

    def make(parameters):
        parameters = [p for p in parameters if p.requires_grad]
        if cfg.name == "adam":
            return torch.optim.Adam(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.name == "adamw":
            return torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(parameters, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    return make


class TrialObserver:
    """Receives progress from :func:`run_trial`. The default does nothing."""

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:  # noqa: D401
        pass


@dataclass
class TrialOutcome:
    """What a finished trial produced."""

    evaluation: EvaluationResult
    history: list[dict[str, float]]
    train_seconds: float
    eval_seconds: float
    device: str
    n_parameters: int
    extras: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)  # the method's provenance tags (HashMethod.provenance_tags)


def _distributed_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _average_gradients(module: torch.nn.Module, world: int) -> None:
    for p in module.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)
            p.grad /= world


@dataclass(frozen=True)
class Validation:
    """Tuning mode of :func:`run_trial`: a validation split carved (seeded) from the training split
    (queries = held-out training items, database = training = the remaining items) replaces the
    protocol's query/database, and the metrics are computed on it every ``every`` epochs (and after
    the last), reported to the observer with the final metrics' names (e.g. ``i2t/map@all``)."""

    fraction: float = 0.2
    seed: int = 0
    every: int = 1


def run_trial(
    spec: TrialSpec, prepared_dir: Path, observer: TrialObserver | None = None, device: str | None = None, validation: Validation | dict | None = None
) -> TrialOutcome:
    """Train ``spec.method`` on the prepared dataset, then encode and evaluate every direction.

    With ``validation`` (tuning), training and evaluation use the validation split (the protocol's
    queries are never touched) and the validation metrics are reported per epoch."""
    if isinstance(validation, dict):
        validation = Validation(**validation)
    observer = observer or TrialObserver()
    dev = resolve_device(device or spec.train.device)
    rank, world = _distributed_world()
    cls = get_method_class(spec.method)
    if world > 1 and not cls.supports_distributed:
        raise MethodError(
            f"method {spec.method!r} keeps whole-training-set state (alternating/closed-form updates) and does not "
            f"support {world} data-parallel workers; set resources.num_workers: 1"
        )
    seed_everything(spec.seed)
    ds = PreparedDataset(prepared_dir)
    if validation is not None:
        data = SplitData(ds, spec.protocol, cls.modalities, validation_fraction=validation.fraction, validation_seed=validation.seed)
        every = validation.every or spec.train.eval_every or 1
        quick_eval = spec.eval.model_copy(update={"index": spec.eval.index.model_copy(update={"kinds": []}), "random_baseline": False})
    else:
        data = SplitData(ds, spec.protocol, cls.modalities)
    info = ds.info(spec.protocol)
    if len(data.train) != info.n_train:  # tuning: the training set is the validation split's training part
        info = dataclasses.replace(info, n_train=len(data.train))
    # weights names (registry entries) in *weights parameters -> the fetched, verified local files
    method_params, init_tags = resolve_method_weights(spec.method_params, project_root(prepared_dir))
    init_tags.update(initialisation_tags(spec.method_params, info, init_tags, ds.manifest.get("features")))
    method = create_method(spec.method, method_params, info, spec.bits).to(dev)
    n_params = sum(p.numel() for p in method.parameters())
    bs = spec.train.batch_size
    rng = np.random.default_rng(spec.seed)
    train_data = make_train_data(data.train, info, bs, dev)

    after_epoch = None
    if validation is not None:

        def after_epoch(epoch: int, metrics: dict[str, float]) -> None:
            if epoch == 0 or (epoch + 1) % every == 0 or epoch + 1 == spec.train.epochs:
                method.eval()
                val = evaluate_codes(
                    encode_parts(method, data, bs, dev),
                    query_labels=data.query.labels,
                    db_labels=data.database.labels,
                    directions=retrieval_directions(cls.modalities),
                    cfg=quick_eval,
                )
                metrics.update(val.flat_metrics())

    history, train_seconds = fit(
        method,
        data.train,
        train_data,
        spec,
        rng,
        dev,
        start=lambda: method.on_train_start(train_data),
        observer=observer,
        after_epoch=after_epoch,
        world=world,
        rank=rank,
    )

    t1 = time.perf_counter()
    method.eval()
    codes = encode_parts(method, data, bs, dev)
    evaluation = evaluate_codes(
        codes,
        query_labels=data.query.labels,
        db_labels=data.database.labels,
        directions=retrieval_directions(cls.modalities),
        cfg=spec.eval,
        train_labels=data.train.labels,
    )
    eval_seconds = time.perf_counter() - t1
    return TrialOutcome(
        evaluation=evaluation,
        history=history,
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        device=str(dev),
        n_parameters=n_params,
        tags=merge_provenance(init_tags, method.provenance_tags()),
    )


def project_root(prepared_dir: Path) -> Path:
    """The project root of a prepared dataset folder ``<root>/data/prepared/<name>`` (where data/weights lives)."""
    return Path(prepared_dir).resolve().parent.parent.parent


def merge_provenance(init_tags: dict[str, str], method_tags: dict[str, str]) -> dict[str, str]:
    """The loop's initialisation tags with a method's own provenance (e.g. ltdual's per-stream ``weights.<stream>``),
    which wins: the loop's guesses from backbone parameters are dropped and ``hashbench.init`` follows the method."""
    if not method_tags:
        return dict(init_tags)
    out = {k: v for k, v in init_tags.items() if not (k.startswith("weights.") and v.startswith("random-init"))}
    out.update(method_tags)
    if "features.backbone" not in out:
        streams = {k[len("weights."):]: v for k, v in method_tags.items() if k.startswith("weights.") and not v.startswith("none")}
        random = [k for k, v in streams.items() if v.startswith("random-init")]
        if random:
            out["hashbench.init"] = "random-init (" + ", ".join(random) + ")"
        elif streams:
            out["hashbench.init"] = "pretrained (" + ", ".join(streams) + ")"
    return out


#: backbone parameter -> its weights parameter, in the methods' parameter models
_BACKBONE_WEIGHTS = {"backbone": "weights", "image_backbone": "image_weights"}


def initialisation_tags(method_params: dict, info, weight_tags: dict[str, str], features: dict | None) -> dict[str, str]:
    """``hashbench.init`` (``pretrained`` / ``random-init`` / ``frozen-features`` / ``n/a``) and, per image backbone
    parameter without weights, ``weights.<param>: random-init (<backbone>)``; plus the feature set's provenance."""
    tags: dict[str, str] = {}
    image = info.modalities.get("image")
    random_init = []
    if image is not None and image.kind == "pixels":
        for bkey, wkey in _BACKBONE_WEIGHTS.items():
            if bkey not in method_params:
                continue
            name = method_params[bkey]
            if name in ("mlp",):
                continue
            if method_params.get(wkey) is None and f"weights.{wkey}" not in weight_tags:
                shown = name
                tags[f"weights.{wkey}"] = f"random-init ({shown})"
                random_init.append(shown)
    if features:
        tags["features.backbone"] = str(features.get("backbone"))
        tags["features.weights"] = f"{features.get('weights')} sha256={features.get('weights_sha256')}"
        tags["features.input_size"] = str(features.get("input_size"))
        tags["hashbench.init"] = f"frozen-features {features.get('backbone')} ({features.get('weights')})"
    elif random_init:
        tags["hashbench.init"] = "random-init (" + ", ".join(random_init) + ")"
    elif weight_tags:
        tags["hashbench.init"] = "pretrained (" + ", ".join(v.split(" sha256=")[0].removeprefix("pretrained ") for v in weight_tags.values()) + ")"
    return tags


def make_train_data(part, info, batch_size: int, device) -> TrainData:
    """The :class:`TrainData` of a training part: its labels on ``device`` and a fixed-order batch iterator."""
    return TrainData(
        labels=torch.from_numpy(part.labels).to(device),
        info=info,
        batches=lambda: part.batches(batch_size, shuffle=False, device=device),
    )


def fit(
    method,
    part,
    train_data: TrainData,
    spec: TrialSpec,
    rng: np.random.Generator,
    dev,
    *,
    start=None,
    epochs: int | None = None,
    observer: TrialObserver | None = None,
    after_epoch=None,
    world: int = 1,
    rank: int = 0,
) -> tuple[list[dict[str, float]], float]:
    """The epoch loop, written once: ``start()`` (a method hook, timed), then per epoch one pass over
    ``part`` (a :class:`~pipeline.data.loaders.PartView`) per phase of the method, stepping that phase's
    optimizer on ``training_step``'s ``"loss"``, then ``on_epoch_end``. Optimizers come from
    ``configure_optimizers`` (fresh ones each call). ``after_epoch(epoch, metrics)`` may add metrics
    before the observer sees them. Returns (per-epoch history, seconds including ``start``)."""
    observer = observer or TrialObserver()
    opts = method.configure_optimizers(optimizer_factory(spec.train.optimizer))
    bs = spec.train.batch_size
    n_epochs = spec.train.epochs if epochs is None else int(epochs)
    train_data.extras["epochs"] = n_epochs  # e.g. a schedule over the run (ltdual's cosine_epochs: train)
    t0 = time.perf_counter()
    if start is not None:
        start()
    history: list[dict[str, float]] = []
    for epoch in range(n_epochs):
        te = time.perf_counter()
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        for phase in method.phases(epoch):
            if phase not in opts:
                raise MethodError(f"method {spec.method!r} returned phase {phase!r} without an optimizer (has {sorted(opts)})")
            opt = opts[phase]
            order = rng.permutation(len(part))
            if world > 1:
                order = order[rank::world]
            method.train()
            for start_ in range(0, len(order), bs):
                batch = part.batch(order[start_ : start_ + bs], device=dev)
                losses = method.training_step(batch, phase)
                total = losses["loss"]
                if not torch.isfinite(total):
                    raise TrainingError(
                        f"{spec.key()}: non-finite loss in epoch {epoch}, phase {phase!r}: "
                        + ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
                    )
                opt.zero_grad(set_to_none=True)
                total.backward()
                if world > 1:
                    _average_gradients(method, world)
                if spec.train.grad_clip:
                    torch.nn.utils.clip_grad_norm_(method.parameters(), spec.train.grad_clip)
                opt.step()
                for name, value in losses.items():
                    key = f"loss/{phase}/{name}"
                    sums[key] += float(value.detach())
                    counts[key] += 1
        with torch.no_grad():
            extra = method.on_epoch_end(epoch, train_data) or {}
        metrics = {k: sums[k] / counts[k] for k in sums}
        metrics.update({f"epoch/{k}": float(v) for k, v in extra.items()})
        metrics["epoch_seconds"] = time.perf_counter() - te
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise TrainingError(f"{spec.key()}: non-finite values after epoch {epoch}: {bad}")
        if after_epoch is not None:
            after_epoch(epoch, metrics)
        history.append({"epoch": epoch, **metrics})
        observer.on_epoch(epoch, metrics)
    return history, time.perf_counter() - t0


@torch.no_grad()
def encode_parts(method, data: SplitData, batch_size: int, device) -> dict[str, dict[str, np.ndarray]]:
    """Real-valued codes {part: {modality: (N, bits)}} of the query and database parts."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for part_name, part in (("query", data.query), ("database", data.database)):
        out[part_name] = {}
        for modality in data.modalities:
            chunks = [method.encode(batch, modality).float().cpu().numpy() for batch in part.batches(batch_size, device=device)]
            out[part_name][modality] = np.concatenate(chunks)
    return out
