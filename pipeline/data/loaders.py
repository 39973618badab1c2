"""Batches of prepared data as tensors, read from the memory maps by index.

Feature modalities are standardised with the mean and standard deviation of the *training* part
(so no statistic leaks from queries); pixels are scaled to [0, 1]; bag-of-words rows are densified
per batch. Batches are dictionaries ``{"index", "labels", <modality>...}`` as the method contract
(:mod:`methods.base`) describes; ``index`` is the position within the part being iterated.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from pipeline.data.formats import PreparedDataset


class PartView:
    """One part of a split (query, train or database) of a prepared dataset."""

    def __init__(self, ds: PreparedDataset, indices: np.ndarray, modalities: Sequence[str], stats: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.ds = ds
        self.indices = np.asarray(indices, dtype=np.int64)
        self.modalities = tuple(modalities)
        self._stats = stats
        self._arrays = {m: ds.modality(m) for m in self.modalities}
        self._kinds = {m: ds.modality_spec(m).kind for m in self.modalities}
        self.labels = np.asarray(ds.labels[self.indices], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.indices)

    def modality_rows(self, modality: str, positions: np.ndarray) -> np.ndarray:
        """Float32 rows of ``modality`` at ``positions`` (positions within this part)."""
        rows = self.indices[positions]
        order = np.argsort(rows, kind="stable")  # sorted reads are kinder to memory maps
        arr = self._arrays[modality]
        kind = self._kinds[modality]
        if kind == "bow":
            out = arr[rows[order]].toarray().astype(np.float32)
        else:
            out = np.asarray(arr[rows[order]], dtype=np.float32)
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        out = out[inv]
        if kind == "pixels":
            out /= 255.0
        elif kind == "features":
            mean, std = self._stats[modality]
            out = (out - mean) / std
        return out

    def batch(self, positions: np.ndarray, device: torch.device | str = "cpu", pin_memory: bool = False) -> dict[str, torch.Tensor]:
        """One batch on ``device``; ``pin_memory``: through page-locked host memory, copied asynchronously (CUDA)."""
        positions = np.asarray(positions, dtype=np.int64)

        def move(a: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(a)
            if pin_memory:
                return t.pin_memory().to(device, non_blocking=True)
            return t.to(device)

        out = {"index": move(positions), "labels": move(self.labels[positions])}
        for m in self.modalities:
            out[m] = move(self.modality_rows(m, positions))
        return out

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: np.random.Generator | None = None, device="cpu") -> Iterator[dict[str, torch.Tensor]]:
        order = np.arange(len(self))
        if shuffle:
            order = (generator or np.random.default_rng()).permutation(len(self))
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start : start + batch_size], device=device)


class SplitData:
    """The query, train and database parts of one protocol, sharing the training statistics."""

    def __init__(self, ds: PreparedDataset, protocol: str, modalities: Sequence[str], validation_fraction: float | None = None, validation_seed: int = 0):
        self.ds = ds
        self.protocol = protocol
        self.split = ds.split(protocol)
        self.modalities = tuple(modalities)
        train_idx, query_idx, db_idx = self.split.train, self.split.query, self.split.database
        self.validation = bool(validation_fraction)
        if validation_fraction:
            # tuning: never look at the reporting queries; carve queries from the training split
            train_idx, query_idx = carve_validation(self.split.train, validation_fraction, validation_seed)
            db_idx = train_idx
        stats = {}
        for m in self.modalities:
            if ds.modality_spec(m).kind == "features":
                x = np.asarray(ds.modality(m)[np.sort(train_idx)], dtype=np.float64)
                std = x.std(0)
                std[std < 1e-8] = 1.0
                stats[m] = (x.mean(0).astype(np.float32), std.astype(np.float32))
        self.train = PartView(ds, train_idx, self.modalities, stats)
        self.query = PartView(ds, query_idx, self.modalities, stats)
        self.database = PartView(ds, db_idx, self.modalities, stats)


def carve_validation(train: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split training indices into (remaining training items, held-out validation queries), seeded.

    The validation protocol of ``hashbench tune``: queries are the held-out training items, the
    database and the training set are the remaining training items; the test queries are untouched.
    """
    train = np.asarray(train, dtype=np.int64)
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    n_val = max(1, int(round(len(train) * fraction)))
    perm = np.random.default_rng(seed).permutation(len(train))
    return np.sort(train[perm[n_val:]]), np.sort(train[perm[:n_val]])
