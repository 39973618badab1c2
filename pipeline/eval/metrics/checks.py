"""Input checks of the retrieval metrics, and the preparation of codes and labels for the engine.

Inputs
------
* Codes are PACKED: uint8 arrays ``(items, K/8)`` as written by :func:`pipeline.eval.codes.pack_codes`
  (``np.packbits`` of ``code >= 0``, faiss's binary layout). ``K`` is any multiple of 8.
* Labels are either multi-hot ``(items, C)`` (bool, or integers/floats equal to 0 or 1) or 1-D integer
  class ids (single-label; equivalent to one-hot rows, which is how a 1-D array is treated when the
  other side is multi-hot).
* Relevance: a database item is relevant to a query when they share at least one label (single-label:
  the same class; the multi-label relevance of DCMH, Jiang & Li, CVPR 2017). The graded relevance used
  by NDCG is the number of shared labels (0/1 single-label).
* Tie rules (``ties=``), AP@K normalisations (``ap_norm=``) and P-R empty-ball rules (``empty_ball=``):
  the names accepted are :data:`TIE_MODES`, :data:`AP_NORMS` and :data:`EMPTY_BALL_RULES`; what they
  mean is documented in :mod:`pipeline.eval.metrics.ties` and :mod:`pipeline.eval.metrics.retrieval`.

Preparation: codes and packed multi-hot labels become unsigned words (:func:`as_words`; 1, 2 and 4 bytes
stay one uint8 / uint16 / uint32 word, longer codes uint64 words), the database side word-major, so the
engine (:mod:`pipeline.eval.metrics.engine`) XORs / ANDs contiguous word planes (Hamming 1950 distance =
popcount of the XOR). Every error is a :class:`~pipeline.core.errors.MetricsError` naming the argument.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from pipeline.core.errors import MetricsError

TIE_MODES = ("expected", "index", "optimistic", "pessimistic")
AP_NORMS = ("retrieved", "min_k_total", "total")
EMPTY_BALL_RULES = ("zero", "skip")


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


def as_words(packed: np.ndarray) -> np.ndarray:
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


def check_code_pair(query_codes, db_codes) -> tuple[np.ndarray, np.ndarray, int]:
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
class Labels:
    kind: str  # "ids" or "multi"
    q: np.ndarray  # (Q,) ids, or (Q, Lw) packed multi-hot words (see as_words)
    db: np.ndarray  # (N,) ids, or (Lw, N) packed multi-hot words, word-major
    max_gain: int  # upper bound of the graded relevance (shared labels)


def prepare_labels(query_labels, db_labels, n_query: int, n_db: int) -> Labels:
    ql = _label_array(query_labels, n_query, "query_labels", "query_codes")
    dl = _label_array(db_labels, n_db, "db_labels", "db_codes")
    if ql.ndim == 1 and dl.ndim == 1:
        top = max(int(ql.max()), int(dl.max()))
        idt = np.uint8 if top < 256 else (np.uint16 if top < 65536 else np.int64)
        return Labels("ids", ql.astype(idt), dl.astype(idt), 1)
    if ql.ndim == 1:
        ql = _one_hot(ql, dl.shape[1], "query_labels")
    if dl.ndim == 1:
        dl = _one_hot(dl, ql.shape[1], "db_labels")
    if ql.shape[1] != dl.shape[1]:
        raise MetricsError(f"query_labels have {ql.shape[1]} label columns but db_labels {dl.shape[1]}")
    max_gain = int(ql.sum(axis=1).max()) if ql.size else 0
    qw = as_words(np.packbits(ql, axis=1))
    dw = np.ascontiguousarray(as_words(np.packbits(dl, axis=1)).T)
    return Labels("multi", qw, dw, max(1, max_gain))


@dataclass(frozen=True)
class Problem:
    q_words: np.ndarray  # (Q, W) unsigned words (see as_words)
    db_words: np.ndarray  # (W, N) the same words, word-major so every word plane is contiguous
    nbits: int
    labels: Labels

    @property
    def n_query(self) -> int:
        return self.q_words.shape[0]

    @property
    def n_db(self) -> int:
        return self.db_words.shape[1]

    @property
    def dist_dtype(self):
        return np.uint8 if self.nbits <= 255 else np.uint16


def prepare_problem(query_codes, db_codes, query_labels, db_labels) -> Problem:
    q, d, nbits = check_code_pair(query_codes, db_codes)
    labels = prepare_labels(query_labels, db_labels, q.shape[0], d.shape[0])
    return Problem(as_words(q), np.ascontiguousarray(as_words(d).T), nbits, labels)


def check_ties(ties: str) -> str:
    if ties not in TIE_MODES:
        raise MetricsError(f"unknown tie mode ties={ties!r}; allowed: {', '.join(TIE_MODES)}")
    return ties


def check_norm(ap_norm: str) -> str:
    if ap_norm not in AP_NORMS:
        raise MetricsError(f"unknown ap_norm={ap_norm!r}; allowed: {', '.join(AP_NORMS)}")
    return ap_norm


def check_k(k, allow_none: bool = True):
    if k is None:
        if allow_none:
            return None
        raise MetricsError("a cut-off k is required here (a positive integer)")
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise MetricsError(f"cut-off k must be a positive integer{' or None (all)' if allow_none else ''}, got {k!r}")
    return int(k)


def clip_k(k: int | None, n_db: int) -> int:
    """A cut-off clipped to the database size (``None`` means the whole database)."""
    return n_db if k is None else min(int(k), n_db)


def resolve_threads(n_threads: int | None) -> int:
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


def check_radius(radius) -> int:
    """A Hamming radius: a non-negative integer."""
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise MetricsError(f"radius must be a non-negative integer, got {radius!r}")
    return int(radius)
