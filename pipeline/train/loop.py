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

from methods.base import ShardInfo, TrainData
from methods.nets import backbone_parameter_ids
from methods.registry import create_method, get_method_class
from pipeline.config import OptimizerConfig, TrialSpec
from pipeline.data.formats import PreparedDataset
from pipeline.data.loaders import SplitData
from pipeline.data.weights import resolve_method_weights
from pipeline.core.errors import MethodError, TrainingError
from pipeline.eval.evaluate import EvaluationResult, evaluate_codes, retrieval_directions
from pipeline.train.plugins import make_plugins
from pipeline.train.samplers import make_sampler
from pipeline.train import checkpoint as ckpt
from pipeline.train import distributed
from pipeline.train.precision import Precision

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


def optimizer_factory(cfg: OptimizerConfig, method: torch.nn.Module | None = None):
    """A function building the configured optimizer over a parameter iterable.

    With ``cfg.backbone_lr_mult`` other than 1 and the ``method`` given, the parameters of its pretrainable pixel
    backbones (:func:`methods.nets.backbone_parameter_ids`) form a second parameter group at ``lr *
    backbone_lr_mult`` (the papers' smaller fine-tuning rate of the backbone); the loop's lr schedule keeps
    that ratio. A method's own optimizer code is not involved."""
    backbone = backbone_parameter_ids(method) if method is not None and cfg.backbone_lr_mult != 1.0 else set()

    def make(parameters):
        parameters = [p for p in parameters if p.requires_grad]
        body = [p for p in parameters if id(p) in backbone]
        head = [p for p in parameters if id(p) not in backbone]
        groups: list[dict[str, Any]] = [{"params": head}] if head or not body else []
        if body:
            groups.append({"params": body, "lr": cfg.lr * cfg.backbone_lr_mult})
        if cfg.name == "adam":
            return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.name == "adamw":
            return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

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
    spec: TrialSpec,
    prepared_dir: Path,
    observer: TrialObserver | None = None,
    device: str | None = None,
    validation: Validation | dict | None = None,
    checkpoint: ckpt.Checkpointer | None = None,
) -> TrialOutcome:
    """Train ``spec.method`` on the prepared dataset, then encode and evaluate every direction.

    With ``validation`` (tuning), training and evaluation use the validation split (the protocol's
    queries are never touched) and the validation metrics are reported per epoch."""
    if isinstance(validation, dict):
        validation = Validation(**validation)
    observer = observer or TrialObserver()
    dev = resolve_device(device or spec.train.device)
    rank, world = distributed.world()
    cls = get_method_class(spec.method)
    if world > 1 and not cls.supports_distributed:
        raise MethodError(
            f"method {spec.method!r} does not declare supports_distributed (data-parallel training on {world} workers "
            f"does not match one worker for it yet); set resources.num_workers: 1"
        )
    seed_everything(spec.seed)
    ds = PreparedDataset(prepared_dir)
    ds.check()  # sizes, .npy headers and sha256 against the manifest (cached digests): corrupted data is refused, not trained on
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
        checkpoint=checkpoint,
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
    if not any(k.startswith("weights.") for k in method_tags):  # e.g. only the base's layer_init tag
        return {**init_tags, **method_tags}
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
    checkpoint: ckpt.Checkpointer | None = None,
) -> tuple[list[dict[str, float]], float]:
    """The epoch loop, written once: ``start()`` (a method hook, timed), then per epoch one pass over
    ``part`` (a :class:`~pipeline.data.loaders.PartView`) per phase of the method, stepping that phase's
    optimizer on ``training_step``'s ``"loss"``, then ``on_epoch_end``. Optimizers come from
    ``configure_optimizers`` (fresh ones each call). ``after_epoch(epoch, metrics)`` may add metrics
    before the observer sees them. Returns (per-epoch history, seconds including ``start``).

    The batches of every pass come from the ``train.sampler`` (pipeline/train/samplers.py), drawn from
    ``rng`` anew for each phase; with ``train.lr_schedule`` other than ``constant`` every optimizer's rate
    is set at the start of each epoch (logged as ``lr``). ``train.plugins`` (pipeline/train/plugins.py) set
    the hash temperature per epoch and shape how the step's loss terms are backpropagated. With several
    workers each global batch of ``train.batch_size`` is shared among the ranks (pipeline/train/distributed.py).

    With ``checkpoint`` (:mod:`pipeline.train.checkpoint`), a checkpoint found there is restored after
    ``start()`` (its epochs are replayed to the observer, training goes on from the next one) and the
    state is saved every ``checkpoint.every`` epochs."""
    observer = observer or TrialObserver()
    opts = method.configure_optimizers(optimizer_factory(spec.train.optimizer, method))
    bs = spec.train.batch_size
    n_epochs = spec.train.epochs if epochs is None else int(epochs)
    if not method.trains_by_gradient:  # closed-form methods solve in start(): one empty epoch
        n_epochs = min(n_epochs, 1)
    sampler = make_sampler(
        spec.train.sampler, len(part), bs, labels=getattr(part, "labels", None) if spec.train.sampler == "class_balanced" else None
    )
    schedule = spec.train.lr_schedule
    lr0 = spec.train.optimizer.lr
    base_lrs = {phase: [g["lr"] for g in opt.param_groups] for phase, opt in opts.items()}
    plugins = make_plugins(spec.train.plugins, method, spec, len(part), n_epochs, train_data)
    if plugins is not None and plugins.single_worker and (world > 1 or spec.train.precision == "fp16"):
        raise TrainingError(
            f"{spec.key()}: train.plugins other than temperature act on each step's loss terms and gradients, "
            "which is implemented for one worker without a gradient scaler: set resources.num_workers: 1 and train.precision: fp32 or bf16"
        )
    train_data.extras["epochs"] = n_epochs  # e.g. a schedule over the run (ltdual's cosine_epochs: train)
    t0 = time.perf_counter()
    if start is not None:
        start()
    history: list[dict[str, float]] = []
    first_epoch = 0
    if checkpoint is not None:
        state = checkpoint.load() if rank == 0 else None
        if world > 1:  # rank 0's find, on every rank (so every rank draws the same permutations)
            box = [state, checkpoint.replay]
            torch.distributed.broadcast_object_list(box, src=0)
            state, checkpoint.replay = box
        if state is not None:
            first_epoch, history = ckpt.restore(state, method, opts, rng)
            for h in history if checkpoint.replay else []:
                observer.on_epoch(int(h["epoch"]), {k: v for k, v in h.items() if k != "epoch"})
    amp = Precision(spec.train.precision, torch.device(dev))
    pin = {"pin_memory": True} if spec.train.pin_memory is True or (spec.train.pin_memory == "auto" and torch.device(dev).type == "cuda") else {}
    if world > 1:  # one starting point on every rank (rank 0's initialisation and on_train_start state)
        distributed.broadcast_parameters(method)
        distributed.broadcast_buffers(method)
    def clip_and_step(opt):
        if spec.train.grad_clip:
            amp.unscale(opt)
            torch.nn.utils.clip_grad_norm_(method.parameters(), spec.train.grad_clip)
        amp.step(opt)

    def one_step(batch, phase, opt, params_, sums, counts, epoch, tag=""):
        """One single-worker step: forward, backward (through the plug-ins), clip, optimizer step; losses summed under ``loss/<tag><phase>/``."""
        with amp.autocast():
            losses = method.training_step(batch, phase)
        total = losses["loss"]
        if not torch.isfinite(total):
            raise TrainingError(
                f"{spec.key()}: non-finite loss in epoch {epoch}, phase {phase!r}: "
                + ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items() if k != "per_item")
            )
        if plugins is not None:
            plugins.before_backward(losses, batch, params_, phase)
        if plugins is not None and plugins.shapes_loss:
            plugins.backward(losses, batch, params_, phase)
        else:
            amp.backward(total)
        if plugins is not None:
            plugins.after_backward(params_, phase)
        for name, value in losses.items():
            if name == "per_item":
                continue
            key = f"loss/{tag}{phase}/{name}"
            sums[key] += float(value.detach())
            counts[key] += 1
        clip_and_step(opt)

    for epoch in range(first_epoch, n_epochs):
        te = time.perf_counter()
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        lr_now = schedule.lr_at(lr0, epoch, n_epochs)
        if plugins is not None:
            plugins.on_epoch_start(epoch)
        if schedule.name != "constant":
            for phase_, opt_ in opts.items():
                for g, base in zip(opt_.param_groups, base_lrs[phase_]):
                    g["lr"] = base * lr_now / lr0
        n_batches: dict[str, int] = {}
        for phase in method.phases(epoch):
            if phase not in opts:
                raise MethodError(f"method {spec.method!r} returned phase {phase!r} without an optimizer (has {sorted(opts)})")
            opt = opts[phase]
            method.train()
            owned = []
            n_batches[phase] = 0
            params_ = [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
            step_bufs = method.distributed_step_buffers(phase) if world > 1 else ()
            for glob in sampler.epoch(rng):  # the global batches of the pass; each rank takes its share
                local = distributed.shard(glob, rank, world)
                n_batches[phase] += 1
                opt.zero_grad(set_to_none=True)
                if world > 1:
                    owned.append(local)
                    scale = method.distributed_loss_scale(len(local), len(glob)) if len(local) else 0.0
                    finite = True
                    if step_bufs and len(glob) < world:
                        raise TrainingError(
                            f"{spec.key()}: a global batch of {len(glob)} items on {world} data-parallel workers leaves a worker "
                            f"without items, which {spec.method!r} needs in every step: change train.batch_size or resources.num_workers"
                        )
                    if step_bufs:
                        method.shard_info = ShardInfo(
                            torch.as_tensor(glob, device=dev), torch.arange(rank, len(glob), world), distributed.reduce_sum
                        )
                    if len(local):
                        with amp.autocast():
                            losses = method.training_step(part.batch(local, device=dev, **pin), phase)
                        finite = bool(torch.isfinite(losses["loss"]))
                        if finite:
                            amp.backward(losses["loss"])
                            for name, value in losses.items():
                                if name != "per_item":
                                    sums[f"loss/{phase}/{name}"] += float(value.detach()) * scale
                    if step_bufs:
                        distributed.sync_step_rows(method, step_bufs, glob)
                    try:
                        distributed.all_reduce_gradients([p for g in opt.param_groups for p in g["params"]], scale, finite)
                    except TrainingError as exc:
                        raise TrainingError(f"{spec.key()}: epoch {epoch}, phase {phase!r}: {exc}") from None
                    clip_and_step(opt)
                else:
                    one_step(part.batch(local, device=dev, **pin), phase, opt, params_, sums, counts, epoch)
            method.shard_info = None
            if plugins is not None and world == 1:  # paper 000's hard-pair replay: extra steps on the hardest items
                for batch in plugins.replay_batches(phase, part, bs, dev):
                    opt.zero_grad(set_to_none=True)
                    one_step(batch, phase, opt, params_, sums, counts, epoch, tag="replay/")
            if world > 1:
                distributed.gather_item_rows(method, method.distributed_item_buffers(phase), np.concatenate(owned) if owned else np.zeros(0, np.int64))
        if world > 1:  # the global batches' losses: sum over ranks of loss_r * n_r / n, per batch of the phase
            comm = distributed.comm_device(method)
            keys = distributed.all_keys(set(sums), comm)
            sums = defaultdict(float, distributed.all_reduce_sums({k: sums.get(k, 0.0) for k in keys}, comm))
            counts = defaultdict(int, {k: n_batches[k.split("/")[1]] for k in keys})
        with torch.no_grad():
            extra = method.on_epoch_end(epoch, train_data) or {}
            if world > 1:  # the update ran on every rank from the same gathered state: rank 0's result wins
                distributed.broadcast_buffers(method)
        metrics = {k: sums[k] / counts[k] for k in sums}
        metrics.update({f"epoch/{k}": float(v) for k, v in extra.items()})
        if schedule.name != "constant":
            metrics["lr"] = lr_now
        if plugins is not None:
            metrics.update(plugins.epoch_metrics())
        metrics["epoch_seconds"] = time.perf_counter() - te
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise TrainingError(f"{spec.key()}: non-finite values after epoch {epoch}: {bad}")
        if after_epoch is not None:
            after_epoch(epoch, metrics)
        if plugins is not None:
            plugins.observe(epoch, metrics)  # e.g. the plateau temperature, from this epoch's (validation) metrics
        history.append({"epoch": epoch, **metrics})
        observer.on_epoch(epoch, metrics)
        if checkpoint is not None and checkpoint.due(epoch + 1, n_epochs):
            checkpoint.save(ckpt.capture(method, opts, rng, epoch + 1, history))
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
