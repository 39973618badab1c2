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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch
from pydantic import BaseModel, ConfigDict

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


class MethodParams(BaseModel):
    """Base of every method's hyperparameter model: unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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

    def __init__(self, params: MethodParams, info: DataInfo, bits: int) -> None:
        super().__init__()
        self.params = params
        self.info = info
        self.bits = int(bits)

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
        """Tags recorded on the trial's MLflow run (e.g. where pretrained weights came from, or that there were none)."""
        return {}

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
