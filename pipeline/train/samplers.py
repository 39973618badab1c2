"""Batch samplers of the shared loop (``train.sampler``): which training items each mini-batch holds.

The order of mini-batches is part of a paper's recipe (issue 19: DCMH's authors draw a fresh random
batch per iteration, and one permutation per epoch changes its result through its bit-balance term),
so it is a training setting applied by :func:`pipeline.train.loop.fit` for every method and per phase of
alternating methods, never a method's own loop. Every sampler is pure and deterministic for a seed: it
draws only from the ``numpy.random.Generator`` it is handed (the loop's, seeded by the trial seed).

``epoch_permutation`` (the default, what the loop always did)
    One permutation of the ``n`` items per epoch (per phase), cut into ``ceil(n / batch)`` batches
    (the last one shorter): every item exactly once per epoch.
``random_batches``
    ``n // batch`` iterations per epoch (at least one), each a fresh batch of ``batch`` distinct items
    drawn uniformly without replacement within the batch, independently of the other iterations (with
    replacement across them): an item is in a given batch with probability ``batch / n`` and appears
    ``Binomial(n // batch, batch / n)`` times per epoch. As DCMH's authors' code draws (its TensorFlow
    demo: ``num_train / batch_size`` iterations of ``permutation(num_train)[:batch_size]``; its MATLAB
    demo runs ``ceil`` instead of ``floor`` of that ratio).
``class_balanced``
    A common long-tail remedy (re-sampling), *not part of paper 004* (the long-tail dual-stream model
    trains on the plain long-tailed data) nor of any source paper here: ``ceil(n / batch)`` batches per
    epoch, each slot drawn by picking a class uniformly among the classes that have training items, then
    an item uniformly among that class's items (with replacement). Multi-label data: an item "belongs"
    to every class whose label it carries, so the drawn class is uniform (each class is the drawing
    class of ``batch / C`` slots per batch in expectation) while the item drawn for it may carry other
    labels too; items with no label at all form one extra class of their own, so that no item is
    unreachable. Single-label data: every class fills ``batch / C`` slots in expectation.

Distributed data-parallel training (``world`` workers, rank ``rank``, every worker with the same
generator state): ``epoch_permutation`` keeps the loop's historical sharding, ``order[rank::world]`` of the
epoch's permutation cut into batches of ``batch`` per worker; the random samplers draw a global batch
of ``batch * world`` items per iteration and hand each worker its ``[rank::world]`` slice, so every
worker runs the same number of steps (the gradient all-reduce needs it) with ``batch`` items each.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np

from pipeline.core.errors import TrainingError

SamplerName = Literal["epoch_permutation", "random_batches", "class_balanced"]
SAMPLERS: tuple[str, ...] = ("epoch_permutation", "random_batches", "class_balanced")


class Sampler:
    """Mini-batches of positions ``0..n-1`` for one pass (epoch or phase) over a training part."""

    name: ClassVar[str] = ""

    def __init__(self, n: int, batch_size: int, labels: np.ndarray | None = None) -> None:
        if n < 1:
            raise TrainingError(f"sampler {self.name!r}: the training part is empty")
        if batch_size < 1:
            raise TrainingError(f"sampler {self.name!r}: batch size must be positive, got {batch_size}")
        self.n = int(n)
        self.batch_size = int(batch_size)

    def epoch(self, rng: np.random.Generator, world: int = 1, rank: int = 0) -> list[np.ndarray]:
        """The batches (int64 position arrays) of one pass for worker ``rank`` of ``world``."""
        raise NotImplementedError

    def _global_draws(self, rng: np.random.Generator, world: int, rank: int, iterations: int, draw) -> list[np.ndarray]:
        """``iterations`` global batches of ``batch_size * world`` items from ``draw(rng, size)``, each
        sliced ``[rank::world]``."""
        size = self.batch_size * world
        out = []
        for _ in range(iterations):
            b = np.asarray(draw(rng, size), dtype=np.int64)
            out.append(b[rank::world] if world > 1 else b)
        return out


class EpochPermutation(Sampler):
    """One permutation per pass, every item once (the loop's behaviour before samplers were a setting)."""

    name = "epoch_permutation"

    def epoch(self, rng: np.random.Generator, world: int = 1, rank: int = 0) -> list[np.ndarray]:
        order = rng.permutation(self.n)
        if world > 1:
            order = order[rank::world]
        bs = self.batch_size
        return [order[s : s + bs] for s in range(0, len(order), bs)]


class RandomBatches(Sampler):
    """``n // batch`` fresh random batches per pass, distinct items within a batch (DCMH's authors' draw)."""

    name = "random_batches"

    def iterations(self, world: int = 1) -> int:
        return max(1, self.n // (self.batch_size * world))

    def epoch(self, rng: np.random.Generator, world: int = 1, rank: int = 0) -> list[np.ndarray]:
        n = self.n

        def draw(g: np.random.Generator, size: int) -> np.ndarray:
            if size <= n:
                return g.choice(n, size=size, replace=False)
            # a batch larger than the training part: every item, then the rest with replacement
            return np.concatenate([g.permutation(n), g.integers(0, n, size - n)])

        return self._global_draws(rng, world, rank, self.iterations(world), draw)


class ClassBalanced(Sampler):
    """Class-balanced re-sampling (long-tail remedy, not part of paper 004): class uniform, then item uniform."""

    name = "class_balanced"

    def __init__(self, n: int, batch_size: int, labels: np.ndarray | None = None) -> None:
        super().__init__(n, batch_size, labels)
        if labels is None:
            raise TrainingError("sampler 'class_balanced' needs the training labels")
        lab = np.asarray(labels) > 0
        if lab.ndim != 2 or lab.shape[0] != n:
            raise TrainingError(f"sampler 'class_balanced': labels of shape {lab.shape} for {n} items; expected ({n}, C)")
        members = [np.flatnonzero(lab[:, c]) for c in range(lab.shape[1])]
        unlabelled = np.flatnonzero(~lab.any(axis=1))
        if len(unlabelled):
            members.append(unlabelled)
        #: item positions of every class that has items (plus the unlabelled items as one class)
        self.members: list[np.ndarray] = [m.astype(np.int64) for m in members if len(m)]

    def iterations(self, world: int = 1) -> int:
        return max(1, -(-self.n // (self.batch_size * world)))

    def epoch(self, rng: np.random.Generator, world: int = 1, rank: int = 0) -> list[np.ndarray]:
        members = self.members
        sizes = np.array([len(m) for m in members])

        def draw(g: np.random.Generator, size: int) -> np.ndarray:
            classes = g.integers(0, len(members), size)
            picks = (g.random(size) * sizes[classes]).astype(np.int64)
            return np.array([members[c][p] for c, p in zip(classes, picks)], dtype=np.int64)

        return self._global_draws(rng, world, rank, self.iterations(world), draw)


_CLASSES: dict[str, type[Sampler]] = {c.name: c for c in (EpochPermutation, RandomBatches, ClassBalanced)}


def make_sampler(name: str, n: int, batch_size: int, labels: np.ndarray | None = None) -> Sampler:
    """The sampler ``name`` (one of :data:`SAMPLERS`) over ``n`` items."""
    try:
        cls = _CLASSES[name]
    except KeyError:
        raise TrainingError(f"unknown sampler {name!r}; available: {', '.join(SAMPLERS)}") from None
    return cls(n, batch_size, labels)
