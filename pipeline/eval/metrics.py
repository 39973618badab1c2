"""Retrieval metrics of packed binary codes ranked by Hamming distance, exact and tie-aware.

Inputs
------
* Codes are PACKED: uint8 arrays ``(items, K/8)`` as written by :func:`pipeline.eval.codes.pack_codes`
  (``np.packbits`` of ``code >= 0``, faiss's binary layout). ``K`` is any multiple of 8.
* Labels are either multi-hot ``(items, C)`` (bool, or integers/floats equal to 0 or 1) or 1-D integer
  class ids (single-label; equivalent to one-hot rows, which is how a 1-D array is treated when the
  other side is multi-hot).
* Relevance: a database item is relevant to a query when they share at least one label (single-label:
  the same class). The graded relevance used by NDCG is the number of shared labels (0/1 single-label).

How it is computed
------------------
Hamming distances take only ``K + 1`` values, so nothing is sorted for the default tie rule: for every
query the engine counts the database items, the relevant items and the graded gains at each distance
0..K (XOR + ``np.bitwise_count`` on 8- to 64-bit words, query rows spread over threads, database in chunks so
memory stays O(database) per thread), and every metric follows from those counts in O(K) per query.
The deterministic tie rules (``index``, ``optimistic``, ``pessimistic``) need the order inside tie
groups: a stable counting sort of the small-integer distances, O(N) per query (pandas'
``groupsort_indexer`` when available and verified, else numpy's radix ``argsort(kind="stable")``),
then the ranks of the relevant items. With cut-offs only (no @all), only the items up to the distance
where the largest cut-off falls are sorted.

Compiled kernel: ``pipeline/eval/_hamming_kernel.c`` (an optional extension built by ``setup.py``; loaded with
ctypes by :mod:`pipeline.eval.kernels`, runs without the GIL, so query blocks use all threads in every tie
mode) does the same work with no sort at all: one pass per query builds the (distance, gain) histogram
and, with one running counter per tie-rule key, gives every relevant item its rank within its key; the
prefix sums of the histogram turn those into global ranks. It forms each precision with the same IEEE
operations and leaves the sums to numpy, so both paths give bit-identical results (tested).
``HASHBENCH_METRICS_BACKEND=numpy|kernel`` forces a path; by default the kernel is used when it was
built, else the numpy path below (the choice is logged once, logger ``pipeline.eval.metrics``).

Tie rules (``ties=``) of every ranking metric
---------------------------------------------
* ``"expected"`` (default): the expected value over all orderings of the items tied at one distance,
  all orderings equally likely (McSherry & Najork, "Computing Information Retrieval Performance
  Measures Efficiently in the Presence of Tied Scores", ECIR 2008). Closed forms, derived here:
  a tie group of ``n`` items with ``r`` relevant, preceded by ``N`` items of which ``R`` relevant, of
  which the first ``L`` positions are inside the cut-off. Each relevant item is at position ``j`` of the
  group with probability 1/n and, given that, each of the ``j-1`` earlier positions holds one of the
  other ``r-1`` relevant items with probability ``a = (r-1)/(n-1)``, so::

      E[sum of precisions at relevant items in the first L positions]
          = (r/n) * sum_{j=1..L} (R + 1 + (j-1) a) / (N + j)
          = (r/n) * [ (R + 1) A + a B ],   A = H(N+L) - H(N),   B = L - (N+1) A    (H: harmonic numbers)

  and the expected number of relevant items in the first ``L`` positions is ``L r / n``. AP@K with the
  ``"retrieved"`` normalisation is a ratio of two random quantities; it is computed EXACTLY (not as a
  ratio of expectations): the number ``X`` of relevant items in the cut part of the boundary group is
  hypergeometric, and given ``X = x`` the relevant items are uniform over the ``L`` cut positions, so
  ``E[AP@K] = sum_x P(X=x) (S_before + g(x)) / (R + x)`` with ``g(x)`` the formula above for ``x``
  relevant among ``L`` items. NDCG uses the mean gain of a tie group at each of its positions
  (exact by linearity; this is what ``sklearn.metrics.ndcg_score`` does with ``ignore_ties=False``).
  A and B (B = sum_j (j-1)/(N+j) >= 0) come from an extended-precision harmonic table, so no sum has
  cancellation; results agree with brute-force enumeration and direct summation to ~1e-13.
* ``"index"``: ties broken by ascending database index, i.e. a stable sort by distance; this is what
  reference code built on a stable ``argsort`` of the distances computes.
* ``"optimistic"`` / ``"pessimistic"``: inside a tie group the items of higher / lower graded
  relevance come first (relevant first / last), each subgroup in database-index order. They bound
  the other rules for mAP@all, P@K, R@K, NDCG@K and AP@K with a fixed denominator (``min_k_total``,
  ``total``); AP@K with ``retrieved`` is not monotone in the order (more relevant items retrieved
  also enlarge the denominator), so it can fall outside the bounds.

Threads: ``n_threads=None`` runs the count-only path (``ties="expected"``) in one thread (its
``np.bincount`` holds the GIL; threads measured slower) and the sorting path of the other tie rules
on all available cores (CPU affinity, capped by ``OMP_NUM_THREADS``). Query rows are independent, so
results do not depend on threads or block sizes.

Conventions (also returned in :attr:`RetrievalMetrics.conventions`)
-------------------------------------------------------------------
* AP@K normalisation (``ap_norm=``): ``"retrieved"`` (default) divides the sum of precisions at the
  relevant items of the top K by the number of relevant items in the top K, the convention of the
  DeepHash-pytorch / HashNet / CSQ ``CalcTopMap`` code (a query with none in the top K has AP 0);
  ``"min_k_total"`` divides by ``min(K, relevant items in the database)``; ``"total"`` by the number of
  relevant items in the database (DCMH's convention). mAP@all is the standard AP over the full ranking,
  where the three coincide.
* A query with no relevant database item has AP, recall and NDCG 0 and stays in every mean (like
  ``CalcTopMap``, which skips it but divides by the number of queries).
* Cut-offs larger than the database are clipped to the database size: P@K divides by ``min(K, N)``.
* NDCG@K: gain = graded relevance (linear, as ``sklearn.metrics.ndcg_score``), discount
  ``1/log2(rank+1)`` with ranks from 1, ideal DCG from the gains sorted in decreasing order.
* Precision within Hamming radius r and the P-R curve are set-based (items within radius r), so they do
  not depend on the tie rule. A query whose ball is empty counts as precision 0; the fraction of such
  queries is reported beside it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from pipeline.core.errors import HashBenchError, MetricsError
from pipeline.eval import kernels

__all__ = [
    "AP_NORMS",
    "TIE_MODES",
    "DistanceCounts",
    "MetricsError",
    "RetrievalMetrics",
    "average_precision",
    "average_precision_from_counts",
    "class_groups",
    "class_groups_by_threshold",
    "evaluate_retrieval",
    "graded_relevance",
    "hamming_distance_counts",
    "hamming_distances",
    "map_by_group",
    "mean_average_precision",
    "ndcg_at_k",
    "ndcg_from_counts",
    "pr_curve",
    "pr_curve_from_counts",
    "precision_recall_at_k",
    "precision_recall_from_counts",
    "precision_within_radius",
    "precision_within_radius_from_counts",
]

TIE_MODES = ("expected", "index", "optimistic", "pessimistic")
AP_NORMS = ("retrieved", "min_k_total", "total")
EMPTY_BALL_RULES = ("zero", "skip")

_DB_CHUNK = 1 << 16  # database items per XOR/popcount pass: keeps the uint64 scratch buffer in L2
_COUNTING_MIN = 4096  # rows at least this long use the counting sort (numpy's argsort below)
_MIX_BUDGET = 1 << 18  # elements per block of the hypergeometric mixture (expected AP@K, "retrieved")

_AP_NORM_TEXT = {
    "retrieved": "AP@K divided by the relevant items retrieved in the top K (DeepHash-pytorch/HashNet/CSQ "
    "CalcTopMap); a query with none in the top K has AP 0",
    "min_k_total": "AP@K divided by min(K, relevant items in the database)",
    "total": "AP@K divided by the relevant items in the whole database (DCMH)",
}
_TIES_TEXT = {
    "expected": "expected value over all orderings of tied items (McSherry & Najork, ECIR 2008), exact closed forms",
    "index": "ties broken by ascending database index (stable sort by Hamming distance)",
    "optimistic": "inside a tie group higher graded relevance first, then database index",
    "pessimistic": "inside a tie group lower graded relevance first, then database index",
}


# --------------------------------------------------------------------------------------------------
# input validation and preparation
# --------------------------------------------------------------------------------------------------


def _packed_codes(codes, name: str) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise MetricsError(f"{name} must be packed codes of shape (items, bits/8), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        hint = ""
        if arr.dtype in (np.int8, np.bool_) or np.issubdtype(arr.dtype, np.floating):
            hint = " (unpacked or real-valued codes? pack them with pipeline.eval.codes.pack_codes)"
        raise MetricsError(f"{name} must be packed uint8 codes (np.packbits layout), got dtype {arr.dtype}{hint}")
    if arr.shape[1] == 0:
        raise MetricsError(f"{name} has code length 0; the code length must be a positive multiple of 8 bits")
    if arr.shape[0] == 0:
        raise MetricsError(f"{name} is empty (0 items)")
    return arr


def _words(packed: np.ndarray) -> np.ndarray:
    """(N, B) bytes -> (N, W) unsigned words, zero-padded (padding never changes an XOR/AND popcount).

    1, 2 and 3-4 bytes become one uint8 / uint16 / uint32 word (less memory traffic than uint64)."""
    n, nbytes = packed.shape
    if nbytes <= 4:
        width = {1: 1, 2: 2}.get(nbytes, 4)
        dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32}[width]
    else:
        width, dtype = -(-nbytes // 8) * 8, np.uint64
    buf = np.zeros((n, width), dtype=np.uint8)
    buf[:, :nbytes] = packed
    return buf.view(dtype)


def _check_code_pair(query_codes, db_codes) -> tuple[np.ndarray, np.ndarray, int]:
    q = _packed_codes(query_codes, "query_codes")
    d = _packed_codes(db_codes, "db_codes")
    if q.shape[1] != d.shape[1]:
        raise MetricsError(
            f"query_codes have {q.shape[1] * 8} bits ({q.shape[1]} bytes) but db_codes {d.shape[1] * 8} bits "
            f"({d.shape[1]} bytes); both sides must use the same code length"
        )
    return q, d, q.shape[1] * 8


def _label_array(labels, n_items: int, name: str, items_name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim not in (1, 2):
        raise MetricsError(f"{name} must be 1-D class ids or a 2-D multi-hot matrix, got shape {arr.shape}")
    if arr.shape[0] != n_items:
        raise MetricsError(f"{name} has {arr.shape[0]} rows but {items_name} has {n_items} items")
    if arr.ndim == 1:
        if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
            raise MetricsError(f"{name}: 1-D labels must be integer class ids, got dtype {arr.dtype}")
        if arr.size and arr.min() < 0:
            raise MetricsError(f"{name}: class ids must be non-negative, got {int(arr.min())}")
        return arr.astype(np.int64, copy=False)
    if arr.shape[1] == 0:
        raise MetricsError(f"{name} has 0 label columns")
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise MetricsError(f"{name}: multi-hot labels must be bool, integer or float 0/1, got dtype {arr.dtype}")
    if not np.all((arr == 0) | (arr == 1)):
        raise MetricsError(f"{name}: multi-hot labels must contain only 0 and 1")
    return arr != 0


def _one_hot(ids: np.ndarray, n_classes: int, name: str) -> np.ndarray:
    if ids.size and ids.max() >= n_classes:
        raise MetricsError(f"{name}: class id {int(ids.max())} is out of range for {n_classes} label columns")
    out = np.zeros((ids.shape[0], n_classes), dtype=bool)
    out[np.arange(ids.shape[0]), ids] = True
    return out


@dataclass(frozen=True)
class _Labels:
    kind: str  # "ids" or "multi"
    q: np.ndarray  # (Q,) ids, or (Q, Lw) packed multi-hot words (see _words)
    db: np.ndarray  # (N,) ids, or (Lw, N) packed multi-hot words, word-major
    max_gain: int  # upper bound of the graded relevance (shared labels)


def _prepare_labels(query_labels, db_labels, n_query: int, n_db: int) -> _Labels:
    ql = _label_array(query_labels, n_query, "query_labels", "query_codes")
    dl = _label_array(db_labels, n_db, "db_labels", "db_codes")
    if ql.ndim == 1 and dl.ndim == 1:
        top = max(int(ql.max()), int(dl.max()))
        idt = np.uint8 if top < 256 else (np.uint16 if top < 65536 else np.int64)
        return _Labels("ids", ql.astype(idt), dl.astype(idt), 1)
    if ql.ndim == 1:
        ql = _one_hot(ql, dl.shape[1], "query_labels")
    if dl.ndim == 1:
        dl = _one_hot(dl, ql.shape[1], "db_labels")
    if ql.shape[1] != dl.shape[1]:
        raise MetricsError(f"query_labels have {ql.shape[1]} label columns but db_labels {dl.shape[1]}")
    max_gain = int(ql.sum(axis=1).max()) if ql.size else 0
    qw = _words(np.packbits(ql, axis=1))
    dw = np.ascontiguousarray(_words(np.packbits(dl, axis=1)).T)
    return _Labels("multi", qw, dw, max(1, max_gain))


@dataclass(frozen=True)
class _Problem:
    q_words: np.ndarray  # (Q, W) unsigned words (see _words)
    db_words: np.ndarray  # (W, N) the same words, word-major so every word plane is contiguous
    nbits: int
    labels: _Labels

    @property
    def n_query(self) -> int:
        return self.q_words.shape[0]

    @property
    def n_db(self) -> int:
        return self.db_words.shape[1]

    @property
    def dist_dtype(self):
        return np.uint8 if self.nbits <= 255 else np.uint16


def _prepare(query_codes, db_codes, query_labels, db_labels) -> _Problem:
    q, d, nbits = _check_code_pair(query_codes, db_codes)
    labels = _prepare_labels(query_labels, db_labels, q.shape[0], d.shape[0])
    return _Problem(_words(q), np.ascontiguousarray(_words(d).T), nbits, labels)


def _check_ties(ties: str) -> str:
    if ties not in TIE_MODES:
        raise MetricsError(f"unknown tie mode ties={ties!r}; allowed: {', '.join(TIE_MODES)}")
    return ties


def _check_norm(ap_norm: str) -> str:
    if ap_norm not in AP_NORMS:
        raise MetricsError(f"unknown ap_norm={ap_norm!r}; allowed: {', '.join(AP_NORMS)}")
    return ap_norm


def _check_k(k, allow_none: bool = True):
    if k is None:
        if allow_none:
            return None
        raise MetricsError("a cut-off k is required here (a positive integer)")
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise MetricsError(f"cut-off k must be a positive integer{' or None (all)' if allow_none else ''}, got {k!r}")
    return int(k)


def _k_eff(k: int | None, n_db: int) -> int:
    """A cut-off clipped to the database size (``None`` means the whole database)."""
    return n_db if k is None else min(int(k), n_db)


def _resolve_threads(n_threads: int | None) -> int:
    if n_threads is not None:
        if int(n_threads) < 1:
            raise MetricsError(f"n_threads must be >= 1, got {n_threads}")
        return int(n_threads)
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        n = min(n, int(env))
    return max(1, min(n, 16))


# --------------------------------------------------------------------------------------------------
# small exact helpers
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _harmonic(n: int) -> np.ndarray:
    """Harmonic numbers H(i) = sum_{j<=i} 1/j for i = 0..n, extended precision (differences stay exact)."""
    out = np.zeros(n + 1, dtype=np.longdouble)
    np.cumsum(1.0 / np.arange(1, n + 1, dtype=np.longdouble), out=out[1:])
    return out


@functools.lru_cache(maxsize=4)
def _discount_cumsum(n: int) -> np.ndarray:
    """D(p) = sum_{i=1..p} 1/log2(i+1), p = 0..n: cumulative DCG discount (Jarvelin & Kekalainen 2002)."""
    out = np.zeros(n + 1, dtype=np.longdouble)
    np.cumsum(1.0 / np.log2(np.arange(2, n + 2, dtype=np.longdouble)), out=out[1:])
    return out


def _safe_div(num, den) -> np.ndarray:
    """num / den elementwise, 0 where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


# --------------------------------------------------------------------------------------------------
# distances, relevance and per-distance counts
# --------------------------------------------------------------------------------------------------


def hamming_distances(query_codes, db_codes) -> np.ndarray:
    """Full (Q, N) Hamming distance matrix of packed codes: popcount(q XOR d) (Hamming 1950); for small inputs."""
    q, d, nbits = _check_code_pair(query_codes, db_codes)
    qw, dw = _words(q), _words(d)
    out = np.zeros((q.shape[0], d.shape[0]), dtype=np.uint8 if nbits <= 255 else np.uint16)
    for w in range(qw.shape[1]):
        out += np.bitwise_count(qw[:, w, None] ^ dw[None, :, w])
    return out


def graded_relevance(query_labels, db_labels) -> np.ndarray:
    """(Q, N) number of shared labels, relevant when > 0 (multi-label relevance of DCMH, Jiang & Li, CVPR 2017); class ids: 0/1."""
    ql = np.asarray(query_labels)
    dl = np.asarray(db_labels)
    lab = _prepare_labels(ql, dl, ql.shape[0] if ql.ndim else 0, dl.shape[0] if dl.ndim else 0)
    if lab.kind == "ids":
        return (lab.q[:, None] == lab.db[None, :]).astype(np.int64)
    out = np.zeros((lab.q.shape[0], lab.db.shape[1]), dtype=np.int64)
    for w in range(lab.q.shape[1]):
        out += np.bitwise_count(lab.q[:, w, None] & lab.db[None, w, :])
    return out


@dataclass
class DistanceCounts:
    """Per-query counts at each Hamming distance 0..K: everything the ``expected`` metrics need.

    ``gain`` is the sum of graded relevance (shared labels) at each distance and ``gain_hist[q, g]`` the
    number of database items with graded relevance ``g``; when computed with ``graded=False`` on
    multi-label data both use binary relevance (``gain == relevant``)."""

    items: np.ndarray  # (Q, K+1) int64
    relevant: np.ndarray  # (Q, K+1) int64
    gain: np.ndarray  # (Q, K+1) int64
    gain_hist: np.ndarray  # (Q, G+1) int64

    @property
    def nbits(self) -> int:
        return self.items.shape[1] - 1

    @property
    def n_query(self) -> int:
        return self.items.shape[0]

    @property
    def n_db(self) -> int:
        return int(self.items[0].sum()) if self.items.shape[0] else 0

    @property
    def total_relevant(self) -> np.ndarray:
        return self.relevant.sum(axis=1)


@dataclass(frozen=True)
class _Spec:
    ties: str  # "expected" -> counts only; otherwise ranked statistics too
    ks: tuple  # cut-offs (int or None) of the ranked statistics
    counts: bool  # compute DistanceCounts
    graded: bool  # graded relevance (number of shared labels) instead of binary
    dcg: bool  # ranked DCG at the cut-offs


@dataclass
class _Output:
    counts: DistanceCounts | None
    total_relevant: np.ndarray  # (Q,)
    prec_sum: np.ndarray | None = None  # (Q, nk) sum of precisions at relevant items in the top k
    rel_found: np.ndarray | None = None  # (Q, nk) relevant items in the top k
    dcg: np.ndarray | None = None  # (Q, nk)
    gain_hist: np.ndarray | None = None  # (Q, G+1)


@functools.lru_cache(maxsize=1)
def _counting_sorter():
    """pandas' O(N) stable counting sort (``groupsort_indexer``) if present and correct here, else None.

    About 2-3x faster than numpy's radix ``argsort`` for the 0..K distances and releases the GIL; it is
    a private pandas function, so it is checked against ``np.argsort(kind="stable")`` before use and the
    numpy sort is used whenever it is missing or disagrees."""
    try:
        from pandas._libs.algos import groupsort_indexer
    except Exception:  # pragma: no cover - pandas missing or reorganised
        return None
    rng = np.random.default_rng(0)
    try:
        for n_groups in (1, 3, 65, 300):
            key = rng.integers(0, n_groups, size=5000).astype(np.intp)
            if not np.array_equal(groupsort_indexer(key, n_groups)[0], np.argsort(key, kind="stable")):
                return None  # pragma: no cover
    except Exception:  # pragma: no cover
        return None
    return groupsort_indexer


class _RowKernel:
    """Per-thread scratch buffers and the per-query-row computation."""

    def __init__(self, prob: _Problem, spec: _Spec, out: _Output, n_gain: int):
        self.prob, self.spec, self.out = prob, spec, out
        n = prob.n_db
        lab = prob.labels
        self.ranked = spec.ties != "expected"
        self.chunk = min(n, _DB_CHUNK)
        self.xbuf = np.empty(self.chunk, dtype=prob.db_words.dtype)
        self.pc = np.empty(self.chunk, dtype=np.uint8)
        self.lbuf = self.ybuf = None
        if lab.kind == "multi":
            self.lbuf = np.empty(self.chunk, dtype=lab.db.dtype)
            if lab.db.shape[0] > 1:
                self.ybuf = np.empty(self.chunk, dtype=lab.db.dtype)
        row = n if self.ranked else self.chunk
        dist_dtype = prob.dist_dtype
        if (
            spec.ties == "index"
            and not spec.counts
            and n >= _COUNTING_MIN
            and _counting_sorter() is not None
            and any(k is None or k >= n for k in spec.ks)
        ):
            dist_dtype = np.intp  # the counting sort's input type: popcounts are written into it directly
        self.dist = np.empty(row, dtype=dist_dtype)
        self.rel = np.empty(row, dtype=np.bool_)
        self.n_gain = n_gain  # bins of graded relevance: G + 1 (2 when binary)
        self.gain = None
        if spec.graded and lab.kind == "multi":
            self.gain = np.empty(row, dtype=np.uint8 if lab.max_gain <= 255 else np.uint16)
        d1 = prob.nbits + 1
        self.n_bins = d1 * n_gain
        self.key = None
        if spec.counts:
            kdt = np.uint8 if self.n_bins <= 256 else (np.uint16 if self.n_bins <= 65536 else np.int64)
            self.key = np.empty(self.chunk, dtype=kdt)
        if self.ranked:
            self.ks_eff = np.array([_k_eff(k, n) for k in spec.ks], dtype=np.int64)
            self.full_sort = any(k is None for k in spec.ks) or int(self.ks_eff.max()) >= n
            self.skey_dtype = np.uint16 if d1 * n_gain <= 65536 else np.int64
        self.ibuf = self.sbuf = self.ranks = self.inv_ranks = None

    # -- one query row ---------------------------------------------------------------------------
    def _fill(self, qi: int, s: int, e: int, o: int) -> None:
        """Distances, relevance (and gains) of database items s..e into the buffers at offset o."""
        prob, lab = self.prob, self.prob.labels
        m = e - s
        x, pc = self.xbuf[:m], self.pc[:m]
        dist = self.dist[o : o + m]
        qw = prob.q_words[qi]
        for w in range(prob.db_words.shape[0]):
            np.bitwise_xor(prob.db_words[w, s:e], qw[w], out=x)
            if w == 0:
                np.bitwise_count(x, out=dist)
            else:
                np.add(dist, np.bitwise_count(x, out=pc), out=dist)
        rel = self.rel[o : o + m]
        if lab.kind == "ids":
            np.equal(lab.db[s:e], lab.q[qi], out=rel)
            return
        lq = lab.q[qi]
        lx = self.lbuf[:m]
        gain = None if self.gain is None else self.gain[o : o + m]
        np.bitwise_and(lab.db[0, s:e], lq[0], out=lx)
        if gain is not None:
            np.bitwise_count(lx, out=gain)
        if self.ybuf is not None:
            y = self.ybuf[:m]
            for w in range(1, lab.db.shape[0]):
                np.bitwise_and(lab.db[w, s:e], lq[w], out=y)
                if gain is not None:
                    np.add(gain, np.bitwise_count(y, out=pc), out=gain)
                np.bitwise_or(lx, y, out=lx)
        np.not_equal(lx, 0, out=rel)

    def _count(self, o: int, m: int, hist: np.ndarray) -> None:
        """Joint histogram of (distance, graded relevance) of one chunk, added to ``hist``."""
        key = self.key[:m]
        dist, rel = self.dist[o : o + m], self.rel[o : o + m]
        g = rel if self.gain is None else self.gain[o : o + m]
        if self.n_gain == 2 and key.dtype == np.uint8:
            np.add(dist, dist, out=key)
            np.add(key, rel, out=key)
        else:
            np.multiply(dist, key.dtype.type(self.n_gain), out=key, casting="unsafe")
            np.add(key, g, out=key, casting="unsafe")
        hist += np.bincount(key, minlength=self.n_bins)

    def row(self, qi: int) -> None:
        n = self.prob.n_db
        hist = np.zeros(self.n_bins, dtype=np.int64) if self.spec.counts else None
        for s in range(0, n, self.chunk):
            e = min(n, s + self.chunk)
            o = s if self.ranked else 0
            self._fill(qi, s, e, o)
            if hist is not None:
                self._count(o, e - s, hist)
        out = self.out
        items = None
        if hist is not None:
            j = hist.reshape(self.prob.nbits + 1, self.n_gain)
            c = out.counts
            items = c.items[qi] = j.sum(axis=1)
            c.relevant[qi] = items - j[:, 0]
            c.gain[qi] = j @ np.arange(self.n_gain)
            c.gain_hist[qi] = j.sum(axis=0)
            out.total_relevant[qi] = c.relevant[qi].sum()
        if self.ranked:
            self._ranked(qi, items)

    def _sort_key(self, sel) -> np.ndarray:
        """Stable-sort key of the tie rule, for all items (sel None) or the selected ones."""
        dist = self.dist if sel is None else self.dist[sel]
        if self.spec.ties == "index":
            return dist
        g = self.rel if self.gain is None else self.gain
        g = g if sel is None else g[sel]
        key = dist.astype(self.skey_dtype) * self.n_gain
        if self.spec.ties == "optimistic":  # higher gain first
            key += self.n_gain - 1
            key -= g
        else:
            key += g
        return key

    def _stable_order(self, key: np.ndarray) -> np.ndarray:
        """Permutation sorting ``key`` (small non-negative ints) stably: pandas' counting sort when usable."""
        sorter = _counting_sorter()
        if sorter is None or key.size < _COUNTING_MIN:
            return np.argsort(key, kind="stable")
        if key.dtype != np.intp:
            if self.ibuf is None:
                self.ibuf = np.empty(self.prob.n_db, dtype=np.intp)
            buf = self.ibuf[: key.size]
            np.copyto(buf, key, casting="unsafe")
            key = buf
        return sorter(key, self.n_bins)[0]

    def _ranked(self, qi: int, items) -> None:
        spec, out, n = self.spec, self.out, self.prob.n_db
        rel = self.rel
        if self.full_sort:
            order = self._stable_order(self._sort_key(None))  # counting / radix sort of small ints: O(N)
            r_tot = None
        else:
            # only the items up to the distance where the largest cut-off falls can be ranked in the top k
            if items is None:
                items = np.bincount(self.dist, minlength=self.prob.nbits + 1)
            last = int(np.searchsorted(np.cumsum(items), int(self.ks_eff.max())))
            cand = np.flatnonzero(self.dist <= last)
            order = cand[self._stable_order(self._sort_key(cand))]
            r_tot = int(np.count_nonzero(rel))
        if self.sbuf is None:
            self.sbuf = np.empty(n, dtype=np.bool_)
        pos = np.flatnonzero(np.take(rel, order, out=self.sbuf[: order.size]))  # 0-based ranks of relevant items
        if r_tot is None:
            r_tot = pos.size
        out.total_relevant[qi] = r_tot
        found = np.searchsorted(pos, self.ks_eff)  # relevant items ranked above each cut-off
        out.rel_found[qi] = found
        if pos.size == 0:
            out.prec_sum[qi] = 0.0
            if out.dcg is not None:
                out.dcg[qi] = 0.0
        else:
            if self.ranks is None:
                self.ranks = np.arange(1, self.prob.n_db + 1, dtype=np.float64)
                self.inv_ranks = 1.0 / self.ranks
            # precision at the t-th relevant item = t / rank; summed up to each cut-off
            prec = np.take(self.inv_ranks, pos)
            np.multiply(prec, self.ranks[: pos.size], out=prec)
            out.prec_sum[qi] = [prec[:m].sum() for m in found.tolist()]
            if out.dcg is not None:
                gains = np.take(self.gain, np.take(order, pos)).astype(np.float64) if self.gain is not None else 1.0
                dcg = gains / np.log2(pos + 2.0)
                out.dcg[qi] = [dcg[:m].sum() for m in found.tolist()]
        if out.dcg is not None and out.counts is None:
            g = self.rel if self.gain is None else self.gain
            out.gain_hist[qi] = np.bincount(g, minlength=self.n_gain)[: self.n_gain]


def _u64_rows(words: np.ndarray) -> np.ndarray:
    """(items, W) unsigned words (any width) -> (items, ceil(bytes/8)) uint64, item-major, zero padded."""
    a = np.ascontiguousarray(words)
    b = a.view(np.uint8).reshape(a.shape[0], -1)
    nb = -(-b.shape[1] // 8) * 8
    if nb != b.shape[1]:
        b = np.concatenate([b, np.zeros((b.shape[0], nb - b.shape[1]), np.uint8)], axis=1)
    return np.ascontiguousarray(b).view(np.uint64)


class _KernelRows:
    """The compiled kernel (pipeline/eval/_hamming_kernel.c) behind the numpy path's interface: same outputs,
    bit for bit (the kernel forms every precision with the same IEEE operations; numpy does the sums).

    Index ties need no sort: pass 1 histograms (distance, gain) per query, the prefix sums give the
    first rank of every tie-rule key, and pass 2 in database order hands out ranks with one running
    counter per key, writing the precision at each relevant item at its place in rank order."""

    _TIE = {"index": 0, "optimistic": 1, "pessimistic": 2}

    @classmethod
    def make(cls, prob: _Problem, spec: _Spec, out: _Output, n_gain: int):
        if kernels.backend() != "kernel":
            return None
        d1 = prob.nbits + 1
        keys = d1 if spec.ties in ("index", "expected") else d1 * n_gain
        if keys > 65536 or n_gain > 65536:
            return None  # keys and gains are uint16 in the kernel: numpy path
        return cls(prob, spec, out, n_gain, kernels.load_kernel())

    def __init__(self, prob: _Problem, spec: _Spec, out: _Output, n_gain: int, lib):
        self.prob, self.spec, self.out, self.n_gain, self.lib = prob, spec, out, n_gain, lib
        lab = prob.labels
        self.qc = _u64_rows(prob.q_words)
        self.dc = _u64_rows(prob.db_words.T)
        if lab.kind == "ids":
            self.lkind, self.ql, self.dl = 0, lab.q.astype(np.int64), lab.db.astype(np.int64)
        else:
            self.lkind, self.ql, self.dl = 1, _u64_rows(lab.q), _u64_rows(lab.db.T)
        self.wc, self.wl = self.qc.shape[1], (self.ql.shape[1] if self.lkind else 1)
        self.graded = int(spec.graded and lab.kind == "multi")
        n = prob.n_db
        self.nb = (prob.nbits + 1) * n_gain
        if spec.ties != "expected":
            self.ks_eff = np.array([_k_eff(k, n) for k in spec.ks], dtype=np.int64)
            self.limit = n if (any(k is None for k in spec.ks) or int(self.ks_eff.max()) >= n) else int(self.ks_eff.max())
            self.inv_ranks = 1.0 / np.arange(1, n + 1, dtype=np.float64)

    def _fill_counts(self, q0: int, q1: int, hist: np.ndarray) -> None:
        j = hist.reshape(q1 - q0, self.prob.nbits + 1, self.n_gain)
        c = self.out.counts
        items = c.items[q0:q1] = j.sum(axis=2)
        c.relevant[q0:q1] = items - j[:, :, 0]
        c.gain[q0:q1] = j @ np.arange(self.n_gain)
        c.gain_hist[q0:q1] = j.sum(axis=1)
        self.out.total_relevant[q0:q1] = c.relevant[q0:q1].sum(axis=1)

    def block(self, q0: int, q1: int) -> None:
        if self.spec.ties == "expected":
            hist = np.empty((q1 - q0, self.nb), dtype=np.int64)
            hs = np.empty(self.lib.hb_segments() * self.nb, dtype=np.int64)
            self.lib.hb_hist(
                self.qc.ctypes.data, self.dc.ctypes.data, self.prob.n_db, self.wc, self.lkind, self.ql.ctypes.data,
                self.dl.ctypes.data, self.wl, self.graded, self.n_gain, self.prob.nbits, q0, q1, hist.ctypes.data,
                hs.ctypes.data,
            )
            if self.out.counts is not None:
                self._fill_counts(q0, q1, hist)
            return
        self._ranked_block(q0, q1)

    def _ranked_block(self, q0: int, q1: int) -> None:
        spec, out, n, lib = self.spec, self.out, self.prob.n_db, self.lib
        n_keys = self.nb if spec.ties != "index" else self.prob.nbits + 1
        size = max(1, min(n, self.limit))
        hist = np.empty((q1 - q0, self.nb), dtype=np.int64)
        scratch = np.empty(lib.hb_segments() * (self.nb + 2 * n_keys) + 2 * (n + 1), np.int64)
        prec, pos, gains = np.empty(size, np.float64), np.empty(size, np.int64), np.empty(size, np.uint16)
        nw = np.zeros(1, np.int64)
        tie = self._TIE[spec.ties]
        qstride, lstride = self.wc * 8, (self.wl * 8 if self.lkind else 8)
        qc0, ql0 = self.qc.ctypes.data, self.ql.ctypes.data
        args_mid = (self.dc.ctypes.data, n, self.wc, self.lkind)
        args_lab = (self.dl.ctypes.data, self.wl, self.graded, self.n_gain, self.prob.nbits, tie, self.limit)
        args_buf = (scratch.ctypes.data, self.inv_ranks.ctypes.data,
                    prec.ctypes.data, pos.ctypes.data, gains.ctypes.data, nw.ctypes.data)
        hist0 = hist.ctypes.data
        ks_eff, dcg_on = self.ks_eff, out.dcg is not None
        for qi in range(q0, q1):
            r_tot = lib.hb_rank(qc0 + qi * qstride, *args_mid, ql0 + qi * lstride, *args_lab,
                                hist0 + (qi - q0) * self.nb * 8, *args_buf)
            out.total_relevant[qi] = r_tot
            m = int(nw[0])
            p = pos[:m]
            found = np.searchsorted(p, ks_eff)
            out.rel_found[qi] = found
            if m == 0:
                out.prec_sum[qi] = 0.0
                if dcg_on:
                    out.dcg[qi] = 0.0
                continue
            out.prec_sum[qi] = [prec[:f].sum() for f in found.tolist()]
            if dcg_on:
                top = int(found.max())
                g = gains[:top].astype(np.float64) if self.graded else 1.0
                dcg = g / np.log2(p[:top] + 2.0)
                out.dcg[qi] = [dcg[:f].sum() for f in found.tolist()]
        j = hist.reshape(q1 - q0, self.prob.nbits + 1, self.n_gain)
        if out.counts is not None:
            self._fill_counts(q0, q1, hist)
            out.total_relevant[q0:q1] = (j.sum(axis=2) - j[:, :, 0]).sum(axis=1)
        elif out.dcg is not None:
            out.gain_hist[q0:q1] = j.sum(axis=1)


def _default_block(n_query: int, n_threads: int) -> int:
    return max(1, min(256, -(-n_query // (8 * n_threads))))


def _run(prob: _Problem, spec: _Spec, block_size: int | None, n_threads: int | None) -> _Output:
    nq, d1 = prob.n_query, prob.nbits + 1
    n_gain = prob.labels.max_gain + 1 if (spec.graded and prob.labels.kind == "multi") else 2
    counts = None
    if spec.counts:
        counts = DistanceCounts(
            items=np.zeros((nq, d1), np.int64),
            relevant=np.zeros((nq, d1), np.int64),
            gain=np.zeros((nq, d1), np.int64),
            gain_hist=np.zeros((nq, n_gain), np.int64),
        )
    out = _Output(counts=counts, total_relevant=np.zeros(nq, np.int64))
    if spec.ties != "expected":
        nk = len(spec.ks)
        out.prec_sum = np.zeros((nq, nk))
        out.rel_found = np.zeros((nq, nk), np.int64)
        if spec.dcg:
            out.dcg = np.zeros((nq, nk))
            out.gain_hist = counts.gain_hist if counts is not None else np.zeros((nq, n_gain), np.int64)
    kernel = _KernelRows.make(prob, spec, out, n_gain)
    # np.bincount holds the GIL, so the numpy count-only path ("expected") does not gain from threads
    # (measured: slower with 2); the sorting path of the deterministic tie rules and the compiled kernel
    # (which runs without the GIL) do. An explicit n_threads wins.
    if n_threads is None and spec.ties == "expected" and kernel is None:
        threads = 1
    else:
        threads = _resolve_threads(n_threads)
    if block_size is None:
        block_size = _default_block(nq, threads)
    elif int(block_size) < 1:
        raise MetricsError(f"block_size must be >= 1 query, got {block_size}")
    blocks = [(s, min(nq, s + int(block_size))) for s in range(0, nq, int(block_size))]

    def work(block: tuple[int, int]) -> None:
        if kernel is not None:
            kernel.block(*block)
            return
        rows = _RowKernel(prob, spec, out, n_gain)
        for qi in range(*block):
            rows.row(qi)

    if threads == 1 or len(blocks) == 1:
        for b in blocks:
            work(b)
    else:
        with ThreadPoolExecutor(max_workers=min(threads, len(blocks))) as pool:
            list(pool.map(work, blocks))
    return out


def hamming_distance_counts(
    query_codes,
    db_codes,
    query_labels,
    db_labels,
    *,
    graded: bool = False,
    block_size: int | None = None,
    n_threads: int | None = None,
) -> DistanceCounts:
    """Per-query counts of items, relevant items and gains at each Hamming distance (McSherry & Najork, ECIR 2008)."""
    prob = _prepare(query_codes, db_codes, query_labels, db_labels)
    spec = _Spec("expected", (), counts=True, graded=graded, dcg=False)
    return _run(prob, spec, block_size, n_threads).counts


# --------------------------------------------------------------------------------------------------
# metrics from counts (tie rule "expected", or set-based)
# --------------------------------------------------------------------------------------------------


def _groups(counts: DistanceCounts, k_eff: int):
    n = counts.items
    r = counts.relevant
    before_n = np.cumsum(n, axis=1) - n
    before_r = np.cumsum(r, axis=1) - r
    cut = np.clip(k_eff - before_n, 0, n)  # positions of each tie group inside the cut-off
    return n, r, before_n, before_r, cut


def _harmonic_sums(before_n, cut, harmonic) -> tuple[np.ndarray, np.ndarray]:
    """A = sum_{j=1..L} 1/(N+j) = H(N+L)-H(N) and B = sum_{j=1..L} (j-1)/(N+j) = L-(N+1)A, float64.

    Both are taken in extended precision (B is a difference of close numbers when N >> L) and are
    non-negative, so the sums built from them below have no cancellation."""
    ld = np.longdouble
    a = harmonic[before_n + cut] - harmonic[before_n]
    b = cut.astype(ld) - (before_n.astype(ld) + 1) * a
    return a.astype(np.float64), np.maximum(b, 0).astype(np.float64)


def _expected_prec_sums(n, r, before_n, before_r, cut, harmonic) -> np.ndarray:
    """(r/n) [(R+1) A + a B], a=(r-1)/(n-1): E[sum of precisions at relevant items in the cut] per tie group."""
    a_sum, b_sum = _harmonic_sums(before_n, cut, harmonic)
    a = _safe_div(r - 1, n - 1) * (n > 1)
    inner = (before_r + 1.0) * a_sum + a * b_sum
    return np.where((r > 0) & (cut > 0), _safe_div(r, n) * inner, 0.0)


def _expected_ap_retrieved(n, r, before_n, before_r, cut, contrib, harmonic) -> np.ndarray:
    """E[S/(R_b+X)]: exact expectation over the hypergeometric X of relevant items cut from the boundary group."""
    nq, d1 = n.shape
    qi = np.arange(nq)
    inside = cut > 0
    b = d1 - 1 - np.argmax(inside[:, ::-1], axis=1)  # last group that is (partly) inside the cut-off
    nb, rb, big_n, big_r, lb = n[qi, b], r[qi, b], before_n[qi, b], before_r[qi, b], cut[qi, b]
    s_prev = contrib.sum(axis=1) - contrib[qi, b]
    a_sum, b_sum = _harmonic_sums(big_n, lb, harmonic)
    lo = np.maximum(0, lb - (nb - rb))
    hi = np.minimum(lb, rb)
    width = hi - lo + 1
    result = np.zeros(nq, dtype=np.float64)
    order = np.argsort(width, kind="stable")
    start = 0
    while start < nq:  # blocks of queries with similar widths so the padded matrix stays small
        wmax = int(width[order[start]])
        stop = start + 1
        while stop < nq and (stop - start + 1) * max(wmax, int(width[order[stop]])) <= _MIX_BUDGET:
            wmax = max(wmax, int(width[order[stop]]))
            stop += 1
        sel = order[start:stop]
        start = stop
        x = lo[sel, None] + np.arange(wmax)[None, :]
        valid = x <= hi[sel, None]
        n_, r_, l_ = nb[sel, None], rb[sel, None], lb[sel, None]
        # hypergeometric P(X=x) from log P(x+1)/P(x) = log[(r-x)(L-x)] - log[(x+1)(n-r-L+x+1)], lo <= x < hi
        step_ok = x < hi[sel, None]
        num = np.where(step_ok, (r_ - x) * (l_ - x), 1).astype(np.float64)
        den = np.where(step_ok, (x + 1) * (n_ - r_ - l_ + x + 1), 1).astype(np.float64)
        logw = np.zeros(x.shape, dtype=np.float64)
        if wmax > 1:
            np.cumsum(np.log(num[:, :-1]) - np.log(den[:, :-1]), axis=1, out=logw[:, 1:])
        logw = np.where(valid, logw, -np.inf)
        w = np.exp(logw - logw.max(axis=1, keepdims=True))
        p = w / w.sum(axis=1, keepdims=True)
        # g(x) = (x/L) [(R+1) A + b_x B], b_x = (x-1)/(L-1): E[precision sum in the cut | X = x]
        bx = _safe_div(x - 1, np.broadcast_to(l_ - 1, x.shape))
        g = _safe_div(x, np.broadcast_to(l_, x.shape)) * ((big_r[sel, None] + 1.0) * a_sum[sel, None] + bx * b_sum[sel, None])
        den_ap = big_r[sel, None] + x
        val = _safe_div(s_prev[sel, None] + g, np.where(valid, den_ap, 0))
        result[sel] = (p * val).sum(axis=1)
    return result


def average_precision_from_counts(counts: DistanceCounts, k: int | None = None, ap_norm: str = "retrieved") -> np.ndarray:
    """Per-query expected AP@k under random tie order (McSherry & Najork, ECIR 2008; closed forms in the module doc)."""
    _check_norm(ap_norm)
    k = _check_k(k)
    n_db = counts.n_db
    ke = _k_eff(k, n_db)
    n, r, before_n, before_r, cut = _groups(counts, ke)
    harmonic = _harmonic(n_db)
    contrib = _expected_prec_sums(n, r, before_n, before_r, cut, harmonic)
    r_tot = r.sum(axis=1)
    if ke >= n_db or ap_norm == "total":
        return _safe_div(contrib.sum(axis=1), r_tot)
    if ap_norm == "min_k_total":
        return _safe_div(contrib.sum(axis=1), np.minimum(ke, r_tot))
    return _expected_ap_retrieved(n, r, before_n, before_r, cut, contrib, harmonic)


def precision_recall_from_counts(counts: DistanceCounts, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query expected P@k and R@k: E[relevant in top k] = sum over tie groups of L r / n (McSherry & Najork 2008)."""
    k = _check_k(k, allow_none=False)
    ke = _k_eff(k, counts.n_db)
    n, r, _, _, cut = _groups(counts, ke)
    found = (_safe_div(r, n) * cut).sum(axis=1)
    return found / ke, _safe_div(found, r.sum(axis=1))


def _idcg(gain_hist: np.ndarray, k_eff: int, disc: np.ndarray) -> np.ndarray:
    """Ideal DCG@k from the histogram of graded relevance values (gains sorted in decreasing order)."""
    rev = gain_hist[:, :0:-1]  # counts of gains G, G-1, ..., 1
    ends = np.cumsum(rev, axis=1)
    starts = ends - rev
    gains = np.arange(gain_hist.shape[1] - 1, 0, -1, dtype=np.longdouble)
    part = disc[np.minimum(ends, k_eff)] - disc[np.minimum(starts, k_eff)]
    return (part * gains).sum(axis=1).astype(np.float64)


def ndcg_from_counts(counts: DistanceCounts, k: int) -> np.ndarray:
    """Per-query expected NDCG@k, mean gain of each tie group at its positions (Jarvelin & Kekalainen 2002; McSherry & Najork 2008)."""
    k = _check_k(k, allow_none=False)
    n_db = counts.n_db
    ke = _k_eff(k, n_db)
    n, _, before_n, _, cut = _groups(counts, ke)
    disc = _discount_cumsum(n_db)
    mean_gain = np.zeros(n.shape, dtype=np.longdouble)
    np.divide(counts.gain.astype(np.longdouble), n.astype(np.longdouble), out=mean_gain, where=n > 0)
    dcg = (mean_gain * (disc[before_n + cut] - disc[before_n])).sum(axis=1).astype(np.float64)
    return _safe_div(dcg, _idcg(counts.gain_hist, ke, disc))


def pr_curve_from_counts(counts: DistanceCounts, empty_ball: str = "zero") -> dict[str, np.ndarray]:
    """Precision and recall of the items within Hamming radius r = 0..K, averaged over queries (Wang et al., "A Survey on Learning to Hash", TPAMI 2018)."""
    if empty_ball not in EMPTY_BALL_RULES:
        raise MetricsError(f"unknown empty_ball={empty_ball!r}; allowed: {', '.join(EMPTY_BALL_RULES)}")
    ret = np.cumsum(counts.items, axis=1)
    hit = np.cumsum(counts.relevant, axis=1)
    prec = _safe_div(hit, ret)
    rec = _safe_div(hit, counts.total_relevant[:, None])
    empty = ret == 0
    if empty_ball == "zero":
        p_mean = prec.mean(axis=0)
    else:
        p_mean = _safe_div(prec.sum(axis=0), (~empty).sum(axis=0))
    return {
        "radius": np.arange(counts.items.shape[1]),
        "precision": p_mean,
        "recall": rec.mean(axis=0),
        "empty_ball": empty.mean(axis=0),
    }


def precision_within_radius_from_counts(counts: DistanceCounts, radius: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Per-query precision of the items within Hamming radius r (0 for an empty ball) and the empty-ball mask (Wang et al., TPAMI 2018)."""
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise MetricsError(f"radius must be a non-negative integer, got {radius!r}")
    rr = min(int(radius), counts.nbits)
    ret = counts.items[:, : rr + 1].sum(axis=1)
    hit = counts.relevant[:, : rr + 1].sum(axis=1)
    return _safe_div(hit, ret), ret == 0


# --------------------------------------------------------------------------------------------------
# metrics from codes and labels
# --------------------------------------------------------------------------------------------------


def _ks(k) -> tuple[tuple, bool]:
    if k is None or isinstance(k, (int, np.integer)):
        return (_check_k(k),), True
    if isinstance(k, Sequence) or isinstance(k, np.ndarray):
        ks = tuple(_check_k(v) for v in k)
        if not ks:
            raise MetricsError("k must be a cut-off, None, or a non-empty sequence of them")
        return ks, False
    raise MetricsError(f"cut-off k must be a positive integer, None or a sequence of them, got {k!r}")


def _ranked_ap(out: _Output, j: int, k: int | None, n_db: int, ap_norm: str) -> np.ndarray:
    ke = _k_eff(k, n_db)
    s, found, r_tot = out.prec_sum[:, j], out.rel_found[:, j], out.total_relevant
    if ke >= n_db or ap_norm == "total":
        return _safe_div(s, r_tot)
    if ap_norm == "min_k_total":
        return _safe_div(s, np.minimum(ke, r_tot))
    return _safe_div(s, found)


def average_precision(
    query_codes,
    db_codes,
    query_labels,
    db_labels,
    *,
    k=None,
    ties: str = "expected",
    ap_norm: str = "retrieved",
    block_size: int | None = None,
    n_threads: int | None = None,
) -> np.ndarray:
    """Per-query AP@k (k=None: all) ranking by Hamming distance (Manning et al., IR book, Sec. 8.4; ties per module doc).

    ``k`` may be a sequence of cut-offs, computed in one pass: the result is then (Q, len(k))."""
    _check_ties(ties)
    _check_norm(ap_norm)
    ks, scalar = _ks(k)
    prob = _prepare(query_codes, db_codes, query_labels, db_labels)
    if ties == "expected":
        counts = _run(prob, _Spec(ties, (), True, False, False), block_size, n_threads).counts
        res = np.stack([average_precision_from_counts(counts, kk, ap_norm) for kk in ks], axis=1)
    else:
        out = _run(prob, _Spec(ties, ks, False, False, False), block_size, n_threads)
        res = np.stack([_ranked_ap(out, j, kk, prob.n_db, ap_norm) for j, kk in enumerate(ks)], axis=1)
    return res[:, 0] if scalar else res


def mean_average_precision(
    query_codes,
    db_codes,
    query_labels,
    db_labels,
    *,
    k=None,
    ties: str = "expected",
    ap_norm: str = "retrieved",
    block_size: int | None = None,
    n_threads: int | None = None,
):
    """mAP@k: mean over queries of AP@k (Manning et al., IR book, Sec. 8.4); a float, or an array for a sequence of k."""
    ap = average_precision(
        query_codes, db_codes, query_labels, db_labels, k=k, ties=ties, ap_norm=ap_norm, block_size=block_size, n_threads=n_threads
    )
    return float(ap.mean()) if ap.ndim == 1 else ap.mean(axis=0)


def precision_recall_at_k(
    query_codes,
    db_codes,
    query_labels,
    db_labels,
    k: int,
    *,
    ties: str = "expected",
    block_size: int | None = None,
    n_threads: int | None = None,
) -> tuple[float, float]:
    """Mean P@k and R@k over queries (Manning et al., IR book, Sec. 8.3); k is clipped to the database size."""
    _check_ties(ties)
    k = _check_k(k, allow_none=False)
    prob = _prepare(query_codes, db_codes, query_labels, db_labels)
    if ties == "expected":
        counts = _run(prob, _Spec(ties, (), True, False, False), block_size, n_threads).counts
        p, r = precision_recall_from_counts(counts, k)
    else:
        out = _run(prob, _Spec(ties, (k,), False, False, False), block_size, n_threads)
        found = out.rel_found[:, 0]
        p, r = found / _k_eff(k, prob.n_db), _safe_div(found, out.total_relevant)
    return float(p.mean()), float(r.mean())


def ndcg_at_k(
    query_codes,
    db_codes,
    query_labels,
    db_labels,
    k: int,
    *,
    ties: str = "expected",
    block_size: int | None = None,
    n_threads: int | None = None,
) -> float:
    """Mean NDCG@k, gain = shared labels, discount 1/log2(rank+1) (Jarvelin & Kekalainen, TOIS 2002)."""
    _check_ties(ties)
    k = _check_k(k, allow_none=False)
    prob = _prepare(query_codes, db_codes, query_labels, db_labels)
    if ties == "expected":
        counts = _run(prob, _Spec(ties, (), True, True, False), block_size, n_threads).counts
        return float(ndcg_from_counts(counts, k).mean())
    out = _run(prob, _Spec(ties, (k,), True, True, True), block_size, n_threads)
    ke = _k_eff(k, prob.n_db)
    idcg = _idcg(out.gain_hist, ke, _discount_cumsum(prob.n_db))
    return float(_safe_div(out.dcg[:, 0], idcg).mean())


def pr_curve(
    query_codes,
    db_codes,
    query_labels,
    db_labels,
    *,
    empty_ball: str = "zero",
    block_size: int | None = None,
    n_threads: int | None = None,
) -> dict[str, np.ndarray]:
    """P-R curve by Hamming radius 0..K ("radius", "precision", "recall", "empty_ball"); see pr_curve_from_counts."""
    counts = hamming_distance_counts(query_codes, db_codes, query_labels, db_labels, block_size=block_size, n_threads=n_threads)
    return pr_curve_from_counts(counts, empty_ball)


def precision_within_radius(
    query_codes,
    db_codes,
    query_labels,
    db_labels,
    radius: int = 2,
    *,
    block_size: int | None = None,
    n_threads: int | None = None,
) -> tuple[float, float]:
    """(mean precision within Hamming radius r, empty balls counted as 0; fraction of empty balls) (Wang et al., TPAMI 2018)."""
    counts = hamming_distance_counts(query_codes, db_codes, query_labels, db_labels, block_size=block_size, n_threads=n_threads)
    prec, empty = precision_within_radius_from_counts(counts, radius)
    return float(prec.mean()), float(empty.mean())


# --------------------------------------------------------------------------------------------------
# class groups (long-tail analysis)
# --------------------------------------------------------------------------------------------------


def class_groups(train_class_counts, head_frac: float = 1 / 3, tail_frac: float = 1 / 3) -> np.ndarray:
    """Group of each class by training frequency: the ``head_frac`` most frequent classes "head", the ``tail_frac`` rarest "tail", the rest "medium" (Liu et al., OLTR, CVPR 2019).

    Classes are ranked by decreasing count, equal counts by class index; group sizes are
    ``round(head_frac * C)`` and ``round(tail_frac * C)``."""
    counts = np.asarray(train_class_counts)
    if counts.ndim != 1 or counts.size == 0:
        raise MetricsError(f"train_class_counts must be a non-empty 1-D array, got shape {counts.shape}")
    if not (0 <= head_frac <= 1 and 0 <= tail_frac <= 1 and head_frac + tail_frac <= 1):
        raise MetricsError(f"head_frac and tail_frac must be in [0, 1] with a sum <= 1, got {head_frac}, {tail_frac}")
    c = counts.size
    order = np.lexsort((np.arange(c), -counts.astype(np.float64)))
    n_head = int(round(head_frac * c))
    n_tail = min(int(round(tail_frac * c)), c - n_head)
    out = np.full(c, "medium", dtype=object)
    out[order[:n_head]] = "head"
    if n_tail:
        out[order[c - n_tail :]] = "tail"
    return out.astype(str)


def class_groups_by_threshold(train_class_counts, head_min: int = 100, tail_max: int = 20) -> np.ndarray:
    """Group of each class by training count: > head_min "head", < tail_max "tail", else "medium" (OLTR many/medium/few-shot, Liu et al., CVPR 2019)."""
    counts = np.asarray(train_class_counts)
    if counts.ndim != 1 or counts.size == 0:
        raise MetricsError(f"train_class_counts must be a non-empty 1-D array, got shape {counts.shape}")
    if tail_max > head_min:
        raise MetricsError(f"tail_max ({tail_max}) must not exceed head_min ({head_min})")
    return np.where(counts > head_min, "head", np.where(counts < tail_max, "tail", "medium")).astype(str)


def map_by_group(per_query_ap, groups) -> dict[str, float]:
    """Mean per-query AP within each query group, e.g. ``class_groups(...)[query_class]`` (per-group mAP as in OLTR, Liu et al., CVPR 2019)."""
    ap = np.asarray(per_query_ap, dtype=np.float64)
    grp = np.asarray(groups)
    if ap.ndim != 1 or grp.shape != ap.shape:
        raise MetricsError(f"per_query_ap {ap.shape} and groups {grp.shape} must be 1-D of the same length")
    names = [str(g) for g in np.unique(grp)]
    preferred = [g for g in ("head", "medium", "tail") if g in names]
    return {g: float(ap[grp.astype(str) == g].mean()) for g in preferred + sorted(set(names) - set(preferred))}


# --------------------------------------------------------------------------------------------------
# everything at once
# --------------------------------------------------------------------------------------------------


@dataclass
class RetrievalMetrics:
    values: dict[str, float]  # "map@all", "map@100", "p@100", "r@100", "ndcg@100", "p@r2", "empty_ball@r2", ...
    pr_curve: dict[str, np.ndarray]  # "radius", "precision", "recall" (and "empty_ball"), length K+1
    per_query_ap: np.ndarray  # AP@all per query (for class-group analysis)
    conventions: dict[str, str] = field(default_factory=dict)


def evaluate_retrieval(
    query_codes,
    db_codes,
    query_labels,
    db_labels,
    *,
    topk=(100,),
    ties: str = "expected",
    ap_norm: str = "retrieved",
    radius: int = 2,
    block_size: int | None = None,
    n_threads: int | None = None,
) -> RetrievalMetrics:
    """mAP@all, mAP@k, P@k, R@k, NDCG@k, P-R curve and P@r in one pass over the database (conventions in the module doc)."""
    _check_ties(ties)
    _check_norm(ap_norm)
    topk = tuple(_check_k(k, allow_none=False) for k in topk)
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise MetricsError(f"radius must be a non-negative integer, got {radius!r}")
    prob = _prepare(query_codes, db_codes, query_labels, db_labels)
    n_db = prob.n_db
    graded = prob.labels.kind == "multi" and bool(topk)
    ks = (None,) + topk
    out = _run(prob, _Spec(ties, ks, True, graded, bool(topk)), block_size, n_threads)
    counts = out.counts
    values: dict[str, float] = {}
    if ties == "expected":
        per_query_ap = average_precision_from_counts(counts, None, ap_norm)
    else:
        per_query_ap = _ranked_ap(out, 0, None, n_db, ap_norm)
    values["map@all"] = float(per_query_ap.mean())
    disc = _discount_cumsum(n_db) if topk else None
    for j, k in enumerate(topk, start=1):
        ke = _k_eff(k, n_db)
        if ties == "expected":
            ap = average_precision_from_counts(counts, k, ap_norm)
            p, r = precision_recall_from_counts(counts, k)
            nd = ndcg_from_counts(counts, k)
        else:
            ap = _ranked_ap(out, j, k, n_db, ap_norm)
            found = out.rel_found[:, j]
            p, r = found / ke, _safe_div(found, out.total_relevant)
            nd = _safe_div(out.dcg[:, j], _idcg(counts.gain_hist, ke, disc))
        values[f"map@{k}"] = float(ap.mean())
        values[f"p@{k}"] = float(p.mean())
        values[f"r@{k}"] = float(r.mean())
        values[f"ndcg@{k}"] = float(nd.mean())
    prec_r, empty_r = precision_within_radius_from_counts(counts, radius)
    values[f"p@r{radius}"] = float(prec_r.mean())
    values[f"empty_ball@r{radius}"] = float(empty_r.mean())
    values["no_relevant"] = float((counts.total_relevant == 0).mean())
    curve = pr_curve_from_counts(counts, "zero")
    conventions = {
        "ties": f"{ties}: {_TIES_TEXT[ties]}",
        "ap_norm": f"{ap_norm}: {_AP_NORM_TEXT[ap_norm]}",
        "map@all": "standard AP over the full ranking (sum of precisions at relevant items / relevant items in the database)",
        "relevance": "shares at least one label (single-label: same class); NDCG gain = number of shared labels",
        "ndcg": "linear gain, discount 1/log2(rank+1), ideal DCG from the sorted gains (as sklearn.metrics.ndcg_score)",
        "no_relevant": "a query without relevant database items has AP, recall and NDCG 0 and stays in the mean",
        "k_clip": "cut-offs larger than the database are clipped to its size (P@K divides by min(K, N))",
        "pr_empty_ball": "P-R curve: radius r retrieves the items at distance <= r; an empty ball counts as precision 0 "
        "and every query stays in the mean; queries without relevant items have recall 0",
        "p@r_empty_ball": f"p@r{radius}: a query with no item within radius {radius} counts as precision 0; "
        f"empty_ball@r{radius} is the fraction of such queries",
    }
    return RetrievalMetrics(values=values, pr_curve=curve, per_query_ap=per_query_ap, conventions=conventions)
