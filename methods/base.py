"""The method contract: hooks that the shared training loop (pipeline/train_loop.py) calls.

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

MODALITY_KINDS = ("features", "pixels", "bow")


@dataclass(frozen=True)
class ModalitySpec:
    """One modality of a prepared dataset as the networks see it.

    ``kind`` is ``features`` (dense float vector, shape ``(dim,)``), ``pixels`` (uint8 image stored
    channels-first, shape ``(C, H, W)``; the loader scales it to [0, 1] floats) or ``bow``
    (bag-of-words counts, shape ``(vocab,)``, delivered dense float).
    """

    name: str
    kind: str
    shape: tuple[int, ...]

    @property
    def dim(self) -> int:
        """Number of input values per item (product of the shape)."""
        n = 1
        for s in self.shape:
            n *= int(s)
        return n


@dataclass(frozen=True)
class DataInfo:
    """What a method may know about the training data when it is built."""

    dataset: str
    modalities: Mapping[str, ModalitySpec]
    n_classes: int
    multi_label: bool
    n_train: int
    label_names: tuple[str, ...] = ()


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
