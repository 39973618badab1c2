"""Protocol splits (query / train / database index arrays), seeded by the dataset's split seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.errors import DataError


@dataclass(frozen=True)
class Split:
    """Index arrays into the prepared dataset. ``train`` is a subset of ``database`` unless
    ``train_in_database`` is False (then train is disjoint from the database, as ADIH's protocols)."""

    query: np.ndarray
    train: np.ndarray
    database: np.ndarray
    train_in_database: bool = True

    def parts(self) -> dict[str, np.ndarray]:
        return {"query": self.query, "train": self.train, "database": self.database}

    def counts(self) -> dict[str, int]:
        return {k: int(len(v)) for k, v in self.parts().items()}

    def check(self, n_items: int, *, dataset: str = "?", protocol: str = "?", train_in_database: bool | None = None) -> None:
        """Raise unless indices are in range, unique per part, and query is disjoint from train/database;
        train must lie in the database (``train_in_database``, default: the split's own field) or, when
        not, be disjoint from it."""
        where = f"{dataset} protocol {protocol!r}"
        if train_in_database is None:
            train_in_database = self.train_in_database
        for part, idx in self.parts().items():
            if idx.ndim != 1 or len(idx) == 0:
                raise DataError(f"{where}: split part {part!r} must be a non-empty 1-D index array")
            if idx.min() < 0 or idx.max() >= n_items:
                raise DataError(f"{where}: split part {part!r} has indices outside [0, {n_items})")
            if len(np.unique(idx)) != len(idx):
                raise DataError(f"{where}: split part {part!r} has duplicate indices")
        if np.intersect1d(self.query, self.database).size:
            raise DataError(f"{where}: query and database overlap")
        if np.intersect1d(self.query, self.train).size:
            raise DataError(f"{where}: query and train overlap")
        if train_in_database and np.setdiff1d(self.train, self.database).size:
            raise DataError(f"{where}: train is not a subset of database")
        if not train_in_database and np.intersect1d(self.train, self.database).size:
            raise DataError(f"{where}: train and database overlap (the protocol keeps them disjoint)")


def query_database_split(
    n_items: int,
    n_query: int,
    seed: int,
    *,
    n_train: int | None = None,
    stratify: np.ndarray | None = None,
    train_in_database: bool = True,
) -> Split:
    """Seeded protocol split: ``n_query`` queries, the rest database, ``n_train`` training items drawn from
    the database (all of it when None). With ``stratify`` (class ids), queries are drawn per class in
    proportion to class size (largest-remainder rounding), so every class is represented. With
    ``train_in_database=False`` the training items are then removed from the database (query, train and
    database disjoint: "the rest is the retrieval set", ADIH's protocols); the draws are the same."""
    if not 0 < n_query < n_items:
        raise DataError(f"n_query={n_query} must be in (0, {n_items})")
    rng = np.random.default_rng(seed)
    if stratify is None:
        perm = rng.permutation(n_items)
        query = np.sort(perm[:n_query])
    else:
        stratify = np.asarray(stratify)
        classes, counts = np.unique(stratify, return_counts=True)
        exact = counts * n_query / n_items
        take = np.floor(exact).astype(int)
        for i in np.argsort(-(exact - take), kind="stable")[: n_query - take.sum()]:
            take[i] += 1
        picked = []
        for c, k in zip(classes, take):
            members = np.flatnonzero(stratify == c)
            picked.append(rng.choice(members, size=k, replace=False))
        query = np.sort(np.concatenate(picked))
    database = np.setdiff1d(np.arange(n_items), query)
    if n_train is None:
        train = database.copy()
    else:
        if not 0 < n_train <= len(database):
            raise DataError(f"n_train={n_train} must be in (0, {len(database)}] (the database size)")
        train = np.sort(rng.choice(database, size=n_train, replace=False))
    if not train_in_database:
        if n_train is None or n_train == len(database):
            raise DataError(f"n_train={n_train} leaves no database items once the training items are removed (n_items={n_items}, n_query={n_query})")
        database = np.setdiff1d(database, train)
    return Split(query=query.astype(np.int64), train=train.astype(np.int64), database=database.astype(np.int64), train_in_database=train_in_database)
