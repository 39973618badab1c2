"""The method contract: hooks that the shared training loop (pipeline/train/loop.py) calls.

A method never owns the training loop, evaluation, logging or checkpointing. It declares

* ``name``: the registry name used in params.yaml;
* ``modalities``: which modalities it consumes (``("image",)`` or ``("image", "text")``);
* ``input_kinds``: which prepared modality kinds it accepts (``features``, ``pixels``, ``bow``);
* ``Params``: a pydantic model of its hyperparameters (unknown keys are errors);

and implements the hooks below. The loop runs, per epoch, one pass over the training data for each
phase that :meth:`HashMethod.phases` returns, calling :meth:`training_step` per batch and stepping the
optimizer of that phase on the returned ``"loss"``. Alternating optimisation (e.g. DCMH's image pass,
then text pass, then the closed-form update of B) is expressed as phases plus :meth:`on_epoch_end`.

Methods without mini-batch gradient training (the classic shallow baselines: CMFH, SCM, SePH, STMH,
LSH, ITQ, SDH) subclass :class:`ClosedFormMethod`: ``trains_by_gradient`` is False, there are no
phases and no optimizers, and the whole solve (closed-form steps, alternating updates, a generic
solver) runs once in :meth:`HashMethod.on_train_start` over the whole training set
(``TrainData.batches()`` in index order, ``TrainData.labels``). The loop then runs at most one epoch
(an empty one: no phase, only :meth:`HashMethod.on_epoch_end`, where such a method reports its solver
diagnostics), whatever ``train.epochs`` says; ``encode`` applies the learnt out-of-sample projection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Mapping

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.errors import MethodError
from pipeline.core.types import MODALITY_KINDS, DataInfo, ModalitySpec

@dataclass
class TrainData:
    """Whole-training-set state handed to ``on_train_start`` / ``on_epoch_end``.

    ``labels`` is the (n_train, C) float32 multi-hot label matrix of the training split, on the
    training device, in the same order as the ``index`` field of every batch.
    ``batches`` iterates the training set once in a fixed order (no shuffling) and yields the same
    batch dictionaries as training, so a method can recompute per-item outputs when it needs them.
    """

    labels: torch.Tensor
    info: DataInfo
    batches: Any = None  # Callable[[], Iterable[dict[str, torch.Tensor]]]
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class ShardInfo:
    """Where a data-parallel rank's batch sits in the global batch; the loop sets it on the method
    (``HashMethod.shard_info``) before every ``training_step`` when training on several workers.

    ``global_index``: the training positions of the whole global batch (on the method's device);
    ``positions``: this rank's rows within it (``batch["index"] == global_index[positions]``);
    ``reduce_sum``: a sum of a tensor over the ranks (an all-reduce; every rank must call it alike)."""

    global_index: torch.Tensor
    positions: torch.Tensor
    reduce_sum: Callable[[torch.Tensor], torch.Tensor]

    @property
    def global_n(self) -> int:
        return int(self.global_index.shape[0])


class LayerInit(BaseModel):
    """Initialisation of the shared encoder block (methods/nets/encoders.py), a recipe setting of a method.

    ``default``: PyTorch's own layer initialisation (``nn.Linear``/``nn.Conv2d`` reset, Kaiming-uniform with
    a = sqrt(5)); nothing is redrawn. ``normal``: every weight and bias ~ N(0, ``std``^2) (DCMH's authors'
    code draws ``0.01 * randn`` for both). ``xavier``: Xavier/Glorot-uniform weights, zero biases.
    ``kaiming``: Kaiming-normal weights for ReLU (fan-in), zero biases. Applied by
    :func:`methods.nets.init.apply_layer_init` when the method is built, to the Linear and Conv layers of
    every :class:`~methods.nets.encoders.Encoder` of the method except trunks that loaded pretrained
    weights; recorded on the run as the ``layer_init`` provenance tag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: Literal["default", "normal", "xavier", "kaiming"] = "default"
    std: float = Field(0.01, gt=0, description="standard deviation of scheme 'normal'")

    def describe(self) -> str:
        if self.scheme == "default":
            return "pytorch default"
        if self.scheme == "normal":
            return f"normal(0, {self.std:g}) weights and biases"
        return f"{self.scheme} weights, zero biases"


class TemperedTanh(torch.nn.Module):
    """``tanh(z / temperature)`` as a module, for methods whose nets end in their hash activation; the
    method's :meth:`HashMethod.set_hash_temperature` sets ``temperature`` on every such module it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.temperature = 1.0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z if self.temperature == 1.0 else z / self.temperature)


class MethodParams(BaseModel):
    """Base of every method's hyperparameter model: unknown keys are rejected.

    ``layer_init`` (every method) initialises the shared encoder block; a method without one refuses a
    scheme other than ``default``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layer_init: LayerInit = Field(LayerInit(), description="initialisation of the shared encoder block (see LayerInit)")


class HashMethod(torch.nn.Module):
    """Base class of every hashing method. Subclasses register with ``@register_method``.

    Batches are dictionaries with keys ``index`` (LongTensor of positions in the training split),
    ``labels`` (float multi-hot, (B, C)) and one tensor per modality (``image``, ``text``).
    """

    name: ClassVar[str] = ""
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    input_kinds: ClassVar[frozenset[str]] = frozenset(MODALITY_KINDS)
    Params: ClassVar[type[MethodParams]] = MethodParams
    paper: ClassVar[str] = ""
    #: capabilities, declared here (never probed with getattr): data-parallel training on several workers
    #: (the loop shards batches and all-reduces gradients; whole-training-set state must be gathered), and
    #: the incremental-class protocol (see :meth:`on_increment_start`)
    supports_distributed: ClassVar[bool] = False
    #: False for methods that learn without mini-batch SGD (see :class:`ClosedFormMethod`): the loop
    #: then runs at most one (empty) epoch.
    trains_by_gradient: ClassVar[bool] = True
    #: The method's training recipe: a partial ``train`` block (e.g. ``{"sampler": "random_batches",
    #: "optimizer": {"name": "sgd", ...}}``) from its paper or its authors' code, each value's source in
    #: the method's docstring. It overrides params.yaml's global ``train`` block; ``methods.<name>.train``
    #: and a suite's ``train`` override it. Subclasses inherit it unless they set their own.
    train_defaults: ClassVar[Mapping[str, Any]] = {}
    #: The paper's own setup on pixel data, applied in suites with ``network: paper`` (the full profile):
    #: ``{"params": {...}, "train": {...}}``, method parameters (the image network, its ImageNet weights entry,
    #: input size, head) and a partial ``train`` block (optimiser, schedule, epochs, batch size, backbone lr
    #: ratio) from the paper or its authors' code, each value's source in the method's docstring. It sits
    #: above ``train_defaults`` and below params.yaml's ``methods.<name>`` block and the suite's settings.
    #: Kept apart from ``train_defaults`` because the recipes are for fine-tuning a pretrained network:
    #: the CPU suites on features (demo, cpu) keep their own settings and trial keys.
    paper_setup: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: True when the method's hash activation is ``tanh(z / hash_temperature)`` (through :meth:`squash`), so the
    #: loop's temperature plug-in (pipeline/train/plugins.py) may set ``hash_temperature`` each epoch.
    supports_temperature: ClassVar[bool] = False
    #: Name of the loss term whose per-item parts ``training_step`` returns as ``"per_item"`` (a (B,) tensor
    #: summing to that term) while ``per_item_requested`` is True (the loop's hard-pair plug-in sets it);
    #: None: the method offers none.
    per_item_term: ClassVar[str | None] = None
    #: Name of the loss term that couples the modalities (paper 000's inter-modal hash-code loss), for the loop's
    #: representation plug-ins (calibration, gradient statistics, modality scaling); None: the method names none.
    inter_modal_term: ClassVar[str | None] = None

    def __init__(self, params: MethodParams, info: DataInfo, bits: int) -> None:
        super().__init__()
        self.params = params
        self.info = info
        self.bits = int(bits)
        self.hash_temperature = 1.0  # set by the temperature plug-in; 1 means the plain activation
        self.per_item_requested = False  # set by the hard-pair plug-in (see per_item_term)
        self.shard_info: ShardInfo | None = None  # set by the loop on every step when training data-parallel

    def squash(self, z: torch.Tensor) -> torch.Tensor:
        """The tempered hash activation ``tanh(z / hash_temperature)`` of methods with ``supports_temperature``."""
        t = self.hash_temperature
        return torch.tanh(z if t == 1.0 else z / t)

    def set_hash_temperature(self, temperature: float) -> None:
        """Set the temperature of the hash activation (:meth:`squash` and every :class:`TemperedTanh` inside)."""
        if not self.supports_temperature:
            raise MethodError(f"method {self.name!r} has no tempered hash activation (supports_temperature is False)")
        self.hash_temperature = float(temperature)
        for m in self.modules():
            if isinstance(m, TemperedTanh):
                m.temperature = float(temperature)

    def representation_inputs(self) -> dict[str, torch.nn.Module]:
        """Per modality, the module whose input is that modality's backbone features (a flat (B, d) tensor): the
        loop's representation plug-ins attach a forward pre-hook there (feature calibration, gradient statistics).
        The default offers none."""
        return {}

    # -- hooks -----------------------------------------------------------------------------------
    def configure_optimizers(self, make_optimizer) -> dict[str, torch.optim.Optimizer]:
        """Return one optimizer per phase. ``make_optimizer(parameters)`` builds the configured one."""
        return {"joint": make_optimizer(self.parameters())}

    def phases(self, epoch: int) -> list[str]:
        """Names of the passes over the training data in this epoch (keys of the optimizers)."""
        return ["joint"]

    def on_train_start(self, data: TrainData) -> None:
        """Called once before the first epoch, after the method is on its device."""

    def training_step(self, batch: dict[str, torch.Tensor], phase: str) -> dict[str, torch.Tensor]:
        """Return the named loss terms of this batch; ``"loss"`` is the total the loop backpropagates."""
        raise NotImplementedError

    def on_epoch_end(self, epoch: int, data: TrainData) -> dict[str, float]:
        """Called after every epoch (closed-form updates go here); may return values to log."""
        return {}

    def encode(self, batch: dict[str, torch.Tensor], modality: str) -> torch.Tensor:
        """Real-valued codes (B, bits) for ``modality``; the evaluator takes the sign."""
        raise NotImplementedError

    # -- data-parallel training (pipeline/train/distributed.py); only used when supports_distributed ----------
    def distributed_loss_scale(self, local_n: int, global_n: int) -> float:
        """Weight of one rank's gradient in the global batch's: ``local_n / global_n`` when ``"loss"`` is a
        mean over the batch's items (the default), 1.0 when it is a sum over them."""
        return local_n / global_n

    def distributed_item_buffers(self, phase: str) -> tuple[str, ...]:
        """Names of the (n_train, ...) buffers whose rows ``training_step`` of ``phase`` writes at
        ``batch["index"]``; the loop gathers every rank's rows into every rank after the phase's pass."""
        return ()

    def distributed_step_buffers(self, phase: str) -> tuple[str, ...]:
        """Names of the (n_train, ...) buffers whose rows ``training_step`` of ``phase`` writes at
        ``batch["index"]`` and that later steps of the same pass read: the loop copies the global batch's rows
        of every rank into every rank after each step, so each rank's buffer is the 1-worker buffer at every
        step (not only after the pass, as :meth:`distributed_item_buffers`). A method naming buffers here uses
        :attr:`shard_info` collectives inside ``training_step``: the loop refuses global batches with fewer
        items than workers for it (every rank must take part in each step)."""
        return ()

    # helpers for whole-batch terms under data parallelism (identity on one worker)
    def global_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (detached) summed over the ranks' shards of the global batch; ``t`` itself on one worker."""
        return t if self.shard_info is None else self.shard_info.reduce_sum(t.detach())

    def global_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The global batch's rows (detached) from every rank's ``rows`` (this rank's shard); ``rows`` on one worker."""
        if self.shard_info is None:
            return rows
        info = self.shard_info
        full = torch.zeros((info.global_n,) + tuple(rows.shape[1:]), dtype=rows.dtype, device=rows.device)
        full[info.positions.to(rows.device)] = rows.detach()
        return info.reduce_sum(full)

    def shared_term(self, term: torch.Tensor, local_n: int) -> torch.Tensor:
        """A term whose value is computed alike on every rank from global sums (a full-set balance term, a
        global-batch covariance), normalised by this rank's ``local_n`` as on one worker: its gradient is kept,
        its value scaled by the rank's share ``local_n / global_n``, so that the loop's sum over the ranks of the
        logged terms (each times :meth:`distributed_loss_scale`, the share or 1) is the 1-worker value.
        Identity on one worker."""
        if self.shard_info is None:
            return term
        w = local_n / self.shard_info.global_n
        return term + (w - 1.0) * term.detach()

    @torch.no_grad()
    def store_train_labels(self, labels: torch.Tensor) -> None:
        """Copy ``TrainData.labels`` into the method's ``train_labels`` buffer, refusing a shape other than (n_train, n_classes)."""
        buf = self.train_labels
        if tuple(labels.shape) != tuple(buf.shape):
            raise MethodError(
                f"{self.name}: training labels of dataset {self.info.dataset!r} have shape {tuple(labels.shape)}, "
                f"expected (n_train, n_classes) = {tuple(buf.shape)}"
            )
        buf.copy_(labels.to(buf))

    def provenance_tags(self) -> dict[str, str]:
        """Tags recorded on the trial's MLflow run (e.g. where pretrained weights came from, or that there were
        none). The base records the layer initialisation applied when the method was built (``layer_init``);
        an override should extend ``super().provenance_tags()``."""
        applied = getattr(self, "layer_init_applied", None)
        return {"layer_init": applied} if applied else {}

    # -- incremental-class protocol (pipeline/protocols/incremental.py) -----------------------------------
    #: True when the method implements :meth:`on_increment_start`; the incremental runner refuses others.
    supports_incremental: ClassVar[bool] = False

    @classmethod
    def capabilities(cls) -> dict[str, object]:
        """What the method declares: modalities, input kinds, distributed, incremental (``hashbench list``)."""
        return {
            "modalities": list(cls.modalities),
            "input_kinds": sorted(cls.input_kinds),
            "distributed": cls.supports_distributed,
            "incremental": cls.supports_incremental,
            "closed_form": not cls.trains_by_gradient,
        }

    def increment_replay(self, n_old: int):
        """Positions (into the original step's training items, an int array) that the incremental step's
        passes should revisit after the new items (rehearsal); the default is none. The runner appends
        these items to ``new`` (their batch ``index`` is ``n_new + j`` for the j-th replayed item)."""
        import numpy as np

        return np.zeros(0, dtype=np.int64)

    def on_increment_start(self, old: TrainData, new: TrainData) -> None:
        """Called once between the original step and the incremental step of the incremental-class protocol.

        ``old`` is the original step's training data (already trained on), ``new`` the items of the new
        classes, whose batches' ``index`` counts positions within the new items. After this hook the
        loop runs the same epochs/phases/``training_step``/``on_epoch_end`` over ``new`` only (with fresh
        optimizers from :meth:`configure_optimizers`). A method must keep what it learnt of the old
        items (their codes) unchanged; the runner encodes the old database before the increment and
        never again.
        """
        raise MethodError(f"method {self.name!r} does not support the incremental-class protocol (no on_increment_start)")


class ClosedFormMethod(HashMethod):
    """Base of methods that train in closed form / by alternating exact updates, not by mini-batch SGD.

    A subclass implements :meth:`solve` (the whole training on the full training set, given as float64
    NumPy arrays: one (n_train, dim) matrix per modality in ``modalities`` and the (n_train, C) labels)
    and ``encode``. Learnt projections live in buffers (sized in ``__init__``) so a state_dict restores
    the model. :meth:`solve` may return diagnostics (e.g. the objective per iteration); the last value
    of each is reported as an epoch metric and the whole list is kept in ``self.diagnostics``.
    """

    trains_by_gradient: ClassVar[bool] = False

    def __init__(self, params: MethodParams, info: DataInfo, bits: int) -> None:
        super().__init__(params, info, bits)
        self.diagnostics: dict[str, list[float]] = {}
        #: (n_train, bits) real codes the solve learnt jointly for the training items from all their
        #: modalities (CMFH's V, SePH's H, STMH's G2), for methods whose papers index the database with
        #: them; None otherwise. Not part of the state_dict; the shared evaluator encodes every item from
        #: one modality and never reads it (benchmarks/classic_wikipedia.py reports both conventions).
        self.unified_train_codes: np.ndarray | None = None

    def configure_optimizers(self, make_optimizer) -> dict[str, torch.optim.Optimizer]:
        return {}

    def phases(self, epoch: int) -> list[str]:
        return []

    def training_step(self, batch: dict[str, torch.Tensor], phase: str) -> dict[str, torch.Tensor]:
        raise MethodError(f"{self.name}: trains in closed form in on_train_start; it has no training_step")

    @torch.no_grad()
    def on_train_start(self, data: TrainData) -> None:
        if data.batches is None:
            raise MethodError(f"{self.name}: TrainData.batches is missing; a closed-form method needs the whole training set")
        n = int(data.labels.shape[0])
        feats = {m: np.zeros((n, self.info.modalities[m].dim), dtype=np.float64) for m in self.modalities}
        seen = np.zeros(n, dtype=bool)
        for batch in data.batches():
            idx = batch["index"].cpu().numpy()
            for m in self.modalities:
                feats[m][idx] = batch[m].reshape(len(idx), -1).double().cpu().numpy()
            seen[idx] = True
        if not seen.all():
            raise MethodError(
                f"{self.name}: TrainData.batches of dataset {self.info.dataset!r} covered {int(seen.sum())} of {n} training items"
            )
        labels = data.labels.double().cpu().numpy()
        diagnostics = self.solve(feats, labels) or {}
        self.diagnostics = {k: [float(v) for v in vals] for k, vals in diagnostics.items()}

    def solve(self, features: dict, labels) -> dict[str, list[float]] | None:
        """Train on the whole training set (``features[m]``: (n, dim) float64 arrays; ``labels``: (n, C))."""
        raise NotImplementedError

    def on_epoch_end(self, epoch: int, data: TrainData) -> dict[str, float]:
        return {k: v[-1] for k, v in self.diagnostics.items() if v}

    def set_buffer(self, name: str, value) -> None:
        """Copy a NumPy array into the registered buffer ``name`` (shape-checked)."""
        buf = getattr(self, name)
        t = torch.as_tensor(value, dtype=buf.dtype)
        if tuple(t.shape) != tuple(buf.shape):
            raise MethodError(f"{self.name}: solved {name} has shape {tuple(t.shape)}, expected {tuple(buf.shape)}")
        buf.copy_(t.to(buf.device))
