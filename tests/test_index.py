"""pipeline.eval.index: exact flat search, approximate hash indexes, the measured figures, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.eval import index as X
from pipeline.core.errors import HashBenchError

faiss = pytest.importorskip("faiss")


def brute_force(queries: np.ndarray, db: np.ndarray) -> np.ndarray:
    """(Q, N) Hamming distances from unpacked bits, independent of faiss and of the XOR path."""
    qb = np.unpackbits(queries, axis=1).astype(np.int16)
    dbb = np.unpackbits(db, axis=1).astype(np.int16)
    return (qb[:, None, :] != dbb[None, :, :]).sum(axis=2)


@pytest.fixture(scope="module")
def codes():
    rng = np.random.default_rng(0)
    db = rng.integers(0, 256, size=(3000, 4), dtype=np.uint8)  # 32-bit codes: many ties
    queries = np.concatenate([db[:10] ^ rng.integers(0, 2, size=(10, 4), dtype=np.uint8), rng.integers(0, 256, size=(20, 4), dtype=np.uint8)])
    return db, queries


@pytest.mark.parametrize("nbits", [8, 32, 64, 256])
def test_flat_search_returns_exact_k_nearest_distances(nbits):
    rng = np.random.default_rng(nbits)
    db = rng.integers(0, 256, size=(500, nbits // 8), dtype=np.uint8)
    queries = rng.integers(0, 256, size=(15, nbits // 8), dtype=np.uint8)
    index = X.build_index("flat", db, use_gpu=False)
    dist, ids = X.search(index, queries, 20)
    ref = brute_force(queries, db)
    np.testing.assert_array_equal(dist, np.sort(ref, axis=1)[:, :20])
    np.testing.assert_array_equal(np.take_along_axis(ref, ids, axis=1), dist)  # ids consistent with distances
    assert all(len(set(row)) == 20 for row in ids)


def test_flat_search_k_larger_than_database_pads():
    db = np.arange(5, dtype=np.uint8)[:, None]
    dist, ids = X.search(X.build_index("flat", db, use_gpu=False), db[:2], 8)
    assert (ids[:, 5:] == -1).all() and (dist[:, 5:] == np.iinfo(np.int32).max).all()
    assert sorted(ids[0, :5]) == list(range(5))


@pytest.mark.parametrize("kind", ["hash", "multihash"])
def test_hash_indexes_return_true_distances_and_valid_recall(codes, kind):
    db, queries = codes
    index = X.build_index(kind, db)
    assert index.params["hash_bits"] >= 8 and "nflip" in index.params
    dist, ids = X.search(index, queries, 10)
    ref = brute_force(queries, db)
    found = ids >= 0
    assert found.any()
    np.testing.assert_array_equal(dist[found], np.take_along_axis(ref, np.where(found, ids, 0), axis=1)[found])
    # the near-duplicates of database items are found at their true distance
    assert (dist[:10, 0] == np.sort(ref[:10], axis=1)[:, 0]).all()
    stats = X.measure_index(kind, db, queries, k=10, n_latency_queries=5)
    assert 0.0 <= stats.recall_at_k <= 1.0
    assert stats.memory_bytes > db.nbytes  # codes plus hash tables
    # recall computed independently: results within the k-th true distance
    kth = np.sort(ref, axis=1)[:, 9]
    got = np.where(found, np.take_along_axis(ref, np.where(found, ids, 0), axis=1), 10**9)
    assert stats.recall_at_k == pytest.approx((got <= kth[:, None]).sum() / got.size)


def test_more_flips_never_lowers_recall(codes):
    db, queries = codes
    r = [X.measure_index("hash", db, queries, k=10, n_latency_queries=2, hash_bits=16, nflip=f).recall_at_k for f in (0, 1, 2, 3)]
    assert r == sorted(r) and r[-1] > r[0]


def test_measure_flat(codes):
    db, queries = codes
    stats = X.measure_index("flat", db, queries, k=7, n_latency_queries=10, n_threads=1)
    assert stats.kind == "flat" and stats.recall_at_k is None
    assert stats.build_seconds >= 0 and stats.batch_qps > 0
    assert 0 < stats.latency_p50_ms <= stats.latency_p95_ms
    assert stats.memory_bytes >= db.nbytes
    assert (stats.k, stats.n_db, stats.nbits) == (7, 3000, 32)
    assert stats.device in ("cpu", "gpu")


def test_gpu_is_never_assumed():
    assert isinstance(X.gpu_available(), bool)
    if not X.gpu_available():
        with pytest.raises(X.BinaryIndexError, match="GPU"):
            X.build_index("flat", np.zeros((4, 1), np.uint8), use_gpu=True)
        assert X.build_index("flat", np.zeros((4, 1), np.uint8)).device == "cpu"


def test_bad_input_raises():
    db = np.zeros((10, 2), np.uint8)
    assert issubclass(X.BinaryIndexError, HashBenchError)
    cases = [
        (lambda: X.build_index("ivf", db), "unknown index kind"),
        (lambda: X.build_index("flat", db.astype(np.int8)), "uint8"),
        (lambda: X.build_index("flat", db[0]), "shape"),
        (lambda: X.build_index("flat", db[:0]), "empty"),
        (lambda: X.build_index("hash", db, hash_bits=17), "hash_bits"),
        (lambda: X.build_index("hash", db, nflip=-1), "nflip"),
        (lambda: X.build_index("hash", db, nhash=2), "nhash"),
        (lambda: X.build_index("multihash", db, nhash=3, hash_bits=8), "nhash"),
        (lambda: X.build_index("flat", db, use_gpu="yes"), "use_gpu"),
        (lambda: X.search(X.build_index("flat", db), np.zeros((2, 3), np.uint8), 1), "bits"),
        (lambda: X.search(X.build_index("flat", db), db, 0), "positive"),
        (lambda: X.search(db, db, 1), "BinaryIndex"),
        (lambda: X.measure_index("flat", db, db, k=0), "positive"),
        (lambda: X.measure_index("flat", db, db, n_latency_queries=0), "n_latency_queries"),
        (lambda: X.measure_index("flat", db, db, n_threads=0), "n_threads"),
    ]
    for fn, message in cases:
        with pytest.raises(X.BinaryIndexError, match=message):
            fn()
