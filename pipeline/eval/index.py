"""faiss binary indexes behind one small interface: build, search, and the figures a benchmark reports.

Kinds (``INDEX_KINDS``):

* ``"flat"``: exhaustive Hamming search (``faiss.IndexBinaryFlat``; ``faiss.GpuIndexBinaryFlat`` when
  this faiss build has GPU support and a GPU is present; never assumed). Exact.
* ``"hash"``: ``faiss.IndexBinaryHash``: the first ``b`` bits of a code are a hash-table key; a search
  probes the buckets whose key is within ``nflip`` bit flips of the query's key and ranks the
  candidates by their exact Hamming distance (hash lookup of Hamming balls, Norouzi et al., "Fast
  Search in Hamming Space with Multi-Index Hashing", CVPR 2012).
* ``"multihash"``: ``faiss.IndexBinaryMultiHash``: ``nhash`` tables keyed on disjoint ``b``-bit
  substrings, each probed within ``nflip`` flips (multi-index hashing, Norouzi et al. 2012).

Codes are packed uint8 ``(N, K/8)`` (``pipeline.eval.codes.pack_codes``). Search returns faiss's
``(distances int32, ids int64)``; an approximate index that finds fewer than ``k`` candidates pads
with id ``-1`` and distance ``2**31 - 1`` (faiss's convention).

Defaults (``hash_bits``/``nhash``/``nflip`` = None), chosen on 1M x 64-bit label-correlated codes
(benchmarks/eval_bench.py) for a recall@100 around 0.6 at 0.1-1 ms per query:

* ``hash``: ``b = clip(round(log2 N) - 6, 8, min(K, 64))`` (about 64 items per bucket), ``nflip = 2``;
* ``multihash``: ``b = clip(round(log2 N) - 4, 8, min(K, 64))``, ``nhash = max(1, K // b)`` tables
  (all bits covered by disjoint substrings when b divides K), ``nflip = 1``.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import numpy as np

from pipeline.core.errors import HashBenchError

try:  # faiss is a project dependency; keep the import error readable if it is missing
    import faiss
except ImportError as exc:  # pragma: no cover
    faiss = None
    _FAISS_IMPORT_ERROR = exc
else:
    _FAISS_IMPORT_ERROR = None

__all__ = [
    "INDEX_KINDS",
    "BinaryIndex",
    "BinaryIndexError",
    "IndexStats",
    "build_index",
    "gpu_available",
    "measure_index",
    "memory_bytes",
    "search",
]

INDEX_KINDS = ("flat", "hash", "multihash")
_MISSING = np.iinfo(np.int32).max


class BinaryIndexError(HashBenchError):
    """Bad input to a binary index (kind, codes, parameters): the message names the argument."""


def _require_faiss():
    if faiss is None:  # pragma: no cover
        raise BinaryIndexError(f"faiss is not installed ({_FAISS_IMPORT_ERROR}); install faiss-cpu or faiss-gpu")
    return faiss


def gpu_available() -> bool:
    """True when this faiss build has GPU indexes and at least one GPU is visible."""
    f = _require_faiss()
    if not hasattr(f, "GpuIndexBinaryFlat") or not hasattr(f, "StandardGpuResources"):
        return False
    try:
        return f.get_num_gpus() > 0
    except Exception:  # pragma: no cover - broken driver: behave as CPU-only
        return False


@contextlib.contextmanager
def _faiss_threads(n_threads: int | None):
    """Temporarily set faiss's OpenMP threads (None: leave faiss's setting alone)."""
    f = _require_faiss()
    if n_threads is None:
        yield
        return
    if int(n_threads) < 1:
        raise BinaryIndexError(f"n_threads must be >= 1, got {n_threads}")
    previous = f.omp_get_max_threads()
    f.omp_set_num_threads(int(n_threads))
    try:
        yield
    finally:
        f.omp_set_num_threads(previous)


def _packed(codes, name: str, code_size: int | None = None) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise BinaryIndexError(f"{name} must be packed codes of shape (items, bits/8), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise BinaryIndexError(f"{name} must be packed uint8 codes (pipeline.eval.codes.pack_codes), got dtype {arr.dtype}")
    if arr.shape[1] == 0:
        raise BinaryIndexError(f"{name} has code length 0; the code length must be a positive multiple of 8 bits")
    if arr.shape[0] == 0:
        raise BinaryIndexError(f"{name} is empty (0 items)")
    if code_size is not None and arr.shape[1] != code_size:
        raise BinaryIndexError(f"{name} have {arr.shape[1] * 8} bits but the index holds {code_size * 8}-bit codes")
    return np.ascontiguousarray(arr)


@dataclass
class BinaryIndex:
    """A built faiss binary index and what is needed to use and describe it."""

    kind: str
    index: object  # the faiss index
    nbits: int
    ntotal: int
    device: str  # "cpu" or "gpu"
    params: dict = field(default_factory=dict)  # hash_bits, nhash, nflip where they apply
    _keep: object = None  # GPU resources that must outlive the index


def _hash_params(kind: str, nbits: int, n: int, hash_bits, nhash, nflip) -> dict:
    cap = min(nbits, 64)
    if hash_bits is None:
        b = int(min(cap, max(8, round(math.log2(max(n, 2))) - (6 if kind == "hash" else 4))))
    else:
        b = int(hash_bits)
    if not 1 <= b <= cap:
        raise BinaryIndexError(f"hash_bits must be in [1, {cap}] for {nbits}-bit codes, got {hash_bits}")
    flips = int(nflip) if nflip is not None else (2 if kind == "hash" else 1)
    if not 0 <= flips <= b:
        raise BinaryIndexError(f"nflip must be in [0, hash_bits={b}], got {nflip}")
    params = {"hash_bits": b, "nflip": flips}
    if kind == "multihash":
        m = int(nhash) if nhash is not None else max(1, nbits // b)
        if m < 1 or m * b > nbits:
            raise BinaryIndexError(f"nhash * hash_bits must be <= {nbits} bits (and nhash >= 1), got nhash={nhash}, hash_bits={b}")
        params["nhash"] = m
    elif nhash is not None:
        raise BinaryIndexError("nhash only applies to kind='multihash'")
    return params


def build_index(
    kind: str,
    db_codes,
    *,
    hash_bits: int | None = None,
    nhash: int | None = None,
    nflip: int | None = None,
    use_gpu: bool | str = "auto",
    n_threads: int | None = None,
) -> BinaryIndex:
    """Build a faiss binary index of ``kind`` over packed database codes (see the module doc for defaults)."""
    f = _require_faiss()
    if kind not in INDEX_KINDS:
        raise BinaryIndexError(f"unknown index kind {kind!r}; allowed: {', '.join(INDEX_KINDS)}")
    codes = _packed(db_codes, "db_codes")
    n, nbits = codes.shape[0], codes.shape[1] * 8
    if use_gpu not in (True, False, "auto"):
        raise BinaryIndexError(f"use_gpu must be True, False or 'auto', got {use_gpu!r}")
    with _faiss_threads(n_threads):
        if kind == "flat":
            gpu = gpu_available() if use_gpu == "auto" else bool(use_gpu)
            if gpu:
                if not gpu_available():
                    raise BinaryIndexError("use_gpu=True but this faiss build has no GPU support or no GPU is visible")
                res = f.StandardGpuResources()
                index = f.GpuIndexBinaryFlat(res, nbits)
                index.add(codes)
                return BinaryIndex(kind, index, nbits, n, "gpu", {}, res)
            index = f.IndexBinaryFlat(nbits)
            index.add(codes)
            return BinaryIndex(kind, index, nbits, n, "cpu", {})
        params = _hash_params(kind, nbits, n, hash_bits, nhash, nflip)
        if kind == "hash":
            index = f.IndexBinaryHash(nbits, params["hash_bits"])
        else:
            index = f.IndexBinaryMultiHash(nbits, params["nhash"], params["hash_bits"])
        index.nflip = params["nflip"]
        index.add(codes)
        return BinaryIndex(kind, index, nbits, n, "cpu", params)


def search(index: BinaryIndex, queries, k: int, *, n_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(distances int32 (Q, k), ids int64 (Q, k)) of the k nearest codes found; missing: id -1, distance 2**31-1."""
    if not isinstance(index, BinaryIndex):
        raise BinaryIndexError(f"search needs a BinaryIndex from build_index, got {type(index).__name__}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise BinaryIndexError(f"k must be a positive integer, got {k!r}")
    q = _packed(queries, "queries", index.nbits // 8)
    with _faiss_threads(n_threads):
        dist, ids = index.index.search(q, int(k))
    return dist, ids


def memory_bytes(index: BinaryIndex) -> int:
    """Size of faiss's serialisation of the index (codes + hash tables + header); GPU flat: ntotal * code_size."""
    f = _require_faiss()
    if index.device == "gpu":
        return int(index.ntotal * index.nbits // 8)
    return int(f.serialize_index_binary(index.index).size)


@dataclass
class IndexStats:
    """Figures of one index kind on one database; ``recall_at_k`` is None for the exact flat index."""

    kind: str
    build_seconds: float
    latency_p50_ms: float  # one query per search call
    latency_p95_ms: float
    batch_qps: float  # all queries in one search call
    memory_bytes: int  # faiss serialisation size (see memory_bytes)
    recall_at_k: float | None
    k: int
    n_db: int
    nbits: int
    device: str = "cpu"
    params: dict = field(default_factory=dict)


def _true_distances(queries: np.ndarray, db: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Exact Hamming distances between each query and the database items in ids (-1 -> max int)."""
    safe = np.where(ids >= 0, ids, 0)
    d = np.bitwise_count(queries[:, None, :] ^ db[safe]).sum(axis=2, dtype=np.int64)
    return np.where(ids >= 0, d, np.iinfo(np.int64).max)


def measure_index(
    kind: str,
    db_codes,
    query_codes,
    k: int = 100,
    n_latency_queries: int = 200,
    *,
    hash_bits: int | None = None,
    nhash: int | None = None,
    nflip: int | None = None,
    use_gpu: bool | str = "auto",
    n_threads: int | None = None,
) -> IndexStats:
    """Build time, single-query latency (p50/p95), batch throughput, memory and tie-aware recall@k vs exact search.

    recall@k of an approximate index: the fraction of its k results (over min(k, N) per query) whose
    exact Hamming distance is at most the k-th smallest exact distance, i.e. a result tied with the
    k-th true neighbour counts as correct (id overlap with one arbitrary exact top-k would not)."""
    db = _packed(db_codes, "db_codes")
    queries = _packed(query_codes, "query_codes", db.shape[1])
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise BinaryIndexError(f"k must be a positive integer, got {k!r}")
    if isinstance(n_latency_queries, bool) or not isinstance(n_latency_queries, (int, np.integer)) or n_latency_queries < 1:
        raise BinaryIndexError(f"n_latency_queries must be a positive integer, got {n_latency_queries!r}")
    k = int(k)
    with _faiss_threads(n_threads):
        t0 = time.perf_counter()
        index = build_index(kind, db, hash_bits=hash_bits, nhash=nhash, nflip=nflip, use_gpu=use_gpu)
        build_seconds = time.perf_counter() - t0
        index.index.search(queries[:1], k)  # warm-up (first-call allocations)
        lat = []
        for i in range(min(int(n_latency_queries), len(queries))):
            q = queries[i : i + 1]
            t0 = time.perf_counter()
            index.index.search(q, k)
            lat.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        dist, ids = index.index.search(queries, k)
        batch = time.perf_counter() - t0
        recall = None
        if kind != "flat":
            k_eff = min(k, db.shape[0])
            exact = _require_faiss().IndexBinaryFlat(index.nbits)
            exact.add(db)
            true_d, _ = exact.search(queries, k_eff)
            kth = true_d[:, k_eff - 1].astype(np.int64)
            got = _true_distances(queries, db, ids[:, :k_eff])
            recall = float((got <= kth[:, None]).sum() / (len(queries) * k_eff))
    lat_ms = np.array(lat) * 1e3
    return IndexStats(
        kind=kind,
        build_seconds=build_seconds,
        latency_p50_ms=float(np.percentile(lat_ms, 50)),
        latency_p95_ms=float(np.percentile(lat_ms, 95)),
        batch_qps=float(len(queries) / batch) if batch > 0 else float("inf"),
        memory_bytes=memory_bytes(index),
        recall_at_k=recall,
        k=k,
        n_db=int(db.shape[0]),
        nbits=index.nbits,
        device=index.device,
        params=dict(index.params),
    )
