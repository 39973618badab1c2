"""The incremental-class protocol's data split (ADIH, paper 003 Sec. 3.1 and Table 1), for any prepared dataset.

The label set is split, seeded, into *original* and *new* classes:

* ``n_new = i`` (the paper's ADIH_i, i = 1, 2, 3): ``i`` classes drawn uniformly at random (seeded) are new;
* ``n_new = "majority"``: the new classes outnumber the original ones, ``floor(C / 2) + 1`` new
  (the paper's NUS-WIDE 11/10 of 21, MIRFlickr 12/11 of 23, Brain 6/5 of 11 are exactly this rule).

**Item rule (multi-label data):** an item belongs to the *increment* iff it carries at least one new
class; otherwise (all its labels original, or no label at all) it belongs to the *original* part. So
the original step never sees a new class, and every item with a new class arrives with the increment
(the paper does not state a rule; this is the one under which "training data of the original step do
not contain the new classes" holds). The same rule splits the database (old items' codes are computed
after the original step and never again) and the queries into *old* queries (no new class) and *new*
queries (at least one new class); evaluation uses old, new and all queries against the whole database.

The protocol split of the dataset (query / train / database) is not changed; this module only
partitions its parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.splits import Split
from pipeline.core.errors import DataError

MAJORITY = "majority"


@dataclass(frozen=True)
class ClassSplit:
    """Class ids (columns of the label matrix) of the original and the new classes, each sorted."""

    original: tuple[int, ...]
    new: tuple[int, ...]

    @property
    def n_classes(self) -> int:
        return len(self.original) + len(self.new)


def n_new_classes(n_classes: int, n_new: int | str) -> int:
    """The number of new classes for ``n_new`` (an int, or ``"majority"`` = ``floor(C/2) + 1``), validated."""
    if isinstance(n_new, str):
        if n_new != MAJORITY:
            raise DataError(f"incremental split: n_new must be a positive integer or {MAJORITY!r}, got {n_new!r}")
        count = n_classes // 2 + 1
    else:
        count = int(n_new)
    if not 1 <= count < n_classes:
        raise DataError(f"incremental split: n_new={n_new!r} gives {count} new classes; need 1 <= new < {n_classes} (the number of classes)")
    return count


def split_classes(n_classes: int, n_new: int | str, seed: int) -> ClassSplit:
    """Seeded choice of the new classes: the first ``n_new`` of a permutation of the class ids."""
    count = n_new_classes(n_classes, n_new)
    perm = np.random.default_rng(seed).permutation(n_classes)
    new = tuple(sorted(int(c) for c in perm[:count]))
    original = tuple(sorted(int(c) for c in perm[count:]))
    return ClassSplit(original=original, new=new)


def has_new_class(labels: np.ndarray, classes: ClassSplit) -> np.ndarray:
    """Boolean per item: True iff the item carries at least one new class (the item rule above)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] != classes.n_classes:
        raise DataError(f"incremental split: labels of shape {labels.shape} do not have {classes.n_classes} class columns")
    return labels[:, list(classes.new)].sum(axis=1) > 0


@dataclass(frozen=True)
class IncrementalSplit:
    """Indices (into the prepared dataset) of every part of the incremental protocol."""

    classes: ClassSplit
    train_original: np.ndarray
    train_new: np.ndarray
    database_original: np.ndarray
    database_new: np.ndarray
    query_old: np.ndarray
    query_new: np.ndarray

    @property
    def train_all(self) -> np.ndarray:
        return np.concatenate([self.train_original, self.train_new])

    @property
    def database(self) -> np.ndarray:
        """The whole database, original items first (the order of the evaluated database codes)."""
        return np.concatenate([self.database_original, self.database_new])

    @property
    def query(self) -> np.ndarray:
        """All queries, old ones first (the order of the evaluated query codes)."""
        return np.concatenate([self.query_old, self.query_new])

    def counts(self) -> dict[str, int]:
        return {
            name: int(len(getattr(self, name)))
            for name in ("train_original", "train_new", "database_original", "database_new", "query_old", "query_new")
        }


def incremental_split(split: Split, labels: np.ndarray, classes: ClassSplit, *, dataset: str = "?") -> IncrementalSplit:
    """Partition a protocol split by the item rule; every part must be non-empty."""
    labels = np.asarray(labels)
    is_new = has_new_class(labels, classes)

    def part(idx: np.ndarray, new: bool) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        return idx[is_new[idx] == new]

    out = IncrementalSplit(
        classes=classes,
        train_original=part(split.train, False),
        train_new=part(split.train, True),
        database_original=part(split.database, False),
        database_new=part(split.database, True),
        query_old=part(split.query, False),
        query_new=part(split.query, True),
    )
    empty = [k for k, v in out.counts().items() if v == 0]
    if empty:
        raise DataError(
            f"{dataset}: incremental split with new classes {list(classes.new)} leaves {empty} empty ({out.counts()}); "
            "choose another class seed or number of new classes"
        )
    return out
