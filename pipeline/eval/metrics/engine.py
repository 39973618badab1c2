"""The counting engine: per query, the database items, relevant items and graded gains at each Hamming
distance (and, for the deterministic tie rules, the ranks of the relevant items), with no full sort.

How it is computed
------------------
Hamming distances (Hamming 1950: popcount of the XOR of two codes) take only ``K + 1`` values, so
nothing is sorted for the default tie rule: for every query the engine counts the database items, the
relevant items and the graded gains at each distance 0..K (XOR + ``np.bitwise_count`` on 8- to 64-bit
words, query rows spread over threads, database in chunks so memory stays O(database) per thread), and
every metric follows from those counts in O(K) per query (:mod:`pipeline.eval.metrics.ties`; the idea of
computing tie-aware measures from per-score counts is McSherry & Najork's, ECIR 2008).
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

Threads: ``n_threads=None`` runs the count-only path (``ties="expected"``) in one thread (its
``np.bincount`` holds the GIL; threads measured slower) and the sorting path of the other tie rules
on all available cores (CPU affinity, capped by ``OMP_NUM_THREADS``). Query rows are independent, so
results do not depend on threads or block sizes.

:func:`run_engine` is the one entry point of the metric modules: a prepared :class:`~pipeline.eval.metrics.checks.Problem`
and a :class:`Spec` (what to compute) in, an :class:`Output` (counts and/or ranked statistics) out.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pipeline.core.errors import MetricsError
from pipeline.eval import kernels
from pipeline.eval.metrics.checks import Problem, as_words, check_code_pair, clip_k, prepare_labels, prepare_problem, resolve_threads

_DB_CHUNK = 1 << 16  # database items per XOR/popcount pass: keeps the uint64 scratch buffer in L2
_COUNTING_MIN = 4096  # rows at least this long use the counting sort (numpy's argsort below)


def hamming_distances(query_codes, db_codes) -> np.ndarray:
    """Full (Q, N) Hamming distance matrix of packed codes: popcount(q XOR d) (Hamming 1950); for small inputs."""
    q, d, nbits = check_code_pair(query_codes, db_codes)
    qw, dw = as_words(q), as_words(d)
    out = np.zeros((q.shape[0], d.shape[0]), dtype=np.uint8 if nbits <= 255 else np.uint16)
    for w in range(qw.shape[1]):
        out += np.bitwise_count(qw[:, w, None] ^ dw[None, :, w])
    return out


def graded_relevance(query_labels, db_labels) -> np.ndarray:
    """(Q, N) number of shared labels, relevant when > 0 (multi-label relevance of DCMH, Jiang & Li, CVPR 2017); class ids: 0/1."""
    ql = np.asarray(query_labels)
    dl = np.asarray(db_labels)
    lab = prepare_labels(ql, dl, ql.shape[0] if ql.ndim else 0, dl.shape[0] if dl.ndim else 0)
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
class Spec:
    ties: str  # "expected" -> counts only; otherwise ranked statistics too
    ks: tuple  # cut-offs (int or None) of the ranked statistics
    counts: bool  # compute DistanceCounts
    graded: bool  # graded relevance (number of shared labels) instead of binary
    dcg: bool  # ranked DCG at the cut-offs


@dataclass
class Output:
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

    def __init__(self, prob: Problem, spec: Spec, out: Output, n_gain: int):
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
            self.ks_eff = np.array([clip_k(k, n) for k in spec.ks], dtype=np.int64)
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
    def make(cls, prob: Problem, spec: Spec, out: Output, n_gain: int):
        if kernels.backend() != "kernel":
            return None
        d1 = prob.nbits + 1
        keys = d1 if spec.ties in ("index", "expected") else d1 * n_gain
        if keys > 65536 or n_gain > 65536:
            return None  # keys and gains are uint16 in the kernel: numpy path
        return cls(prob, spec, out, n_gain, kernels.load_kernel())

    def __init__(self, prob: Problem, spec: Spec, out: Output, n_gain: int, lib):
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
            self.ks_eff = np.array([clip_k(k, n) for k in spec.ks], dtype=np.int64)
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


def run_engine(prob: Problem, spec: Spec, block_size: int | None, n_threads: int | None) -> Output:
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
    out = Output(counts=counts, total_relevant=np.zeros(nq, np.int64))
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
        threads = resolve_threads(n_threads)
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
    prob = prepare_problem(query_codes, db_codes, query_labels, db_labels)
    spec = Spec("expected", (), counts=True, graded=graded, dcg=False)
    return run_engine(prob, spec, block_size, n_threads).counts

