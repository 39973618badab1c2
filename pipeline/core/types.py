"""Core data types shared by methods, data and the training loop (the bottom layer: imports nothing of the project)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

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
