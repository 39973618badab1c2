"""Segmented multi-index over binary codes: paper 000's code-layer index (Sec. 4.2), on multi-index hashing.

Source: Norouzi, Punjani, Fleet, "Fast Search in Hamming Space with Multi-Index Hashing", CVPR 2012 and
"Fast Exact Search in Hamming Space with Multi-Index Hashing", TPAMI 36(6) 2014. A K-bit code is cut
into ``m`` disjoint contiguous substrings, one hash table per substring (Sec. 3 of the TPAMI paper).
Pigeonhole (their Proposition 1): if ``||h - g||_H <= r`` then some substring j has
``||h^j - g^j||_H <= floor(r / m)``. The incremental form used for exact k-NN search (their Sec. 4.2):
when table j has been probed completely up to substring radius ``r_j``, an item not found yet has a
substring distance >= ``r_j + 1`` in every table, so its full distance is >= ``sum_j (r_j + 1)``; search
stops as soon as the k-th best candidate's distance is below that bound (exact, ties included).

Paper 000 (Sec. 4.2, "码字层"), what this module adds on top:

* probing order of the segments "from where past retrieval errors concentrate" and bit flips "first on
  the loss-sensitive bits", both from offline statistics: ``p_b`` = share of relevant training pairs whose
  codes differ in bit b (a retrieval error of a radius-0 probe). A probe (table j, flip mask F) is scored
  by the log-probability under independent bits that a relevant item's substring j equals the probed key,
  ``sum_{b in F} log p_b + sum_{b in seg j, not in F} log(1 - p_b)`` (:func:`probe_score`); probes run in
  decreasing score. This is the multi-probe ordering of Lv et al. (VLDB 2007) applied to multi-index
  tables; segments where relevant pairs often disagree rank low, and a flip of a bit that often differs
  between relevant pairs ranks before a flip of a stable bit.
* a per-query budget: a probe radius cap ``r_max`` (from the offline statistics, see
  :mod:`pipeline.eval.codelayer`), a cap on probed buckets, and a stop once ``n_candidates`` distinct
  items were found; the candidates are ranked by their full Hamming distance.

Deviations: the tables are a CSR layout in numpy (sorted unique keys, offsets, item ids) searched with
``np.searchsorted``, in Python per query, so latency is not comparable to faiss's C++ loops at equal work
(compare ``candidates`` scanned as well); the budgeted search is approximate by design and only the full
budget (:meth:`MultiIndex.search_exact`) carries Norouzi's exactness guarantee; ``m`` defaults to
Norouzi's ``round(K / log2 N)``.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np

from pipeline.core.errors import HashBenchError

__all__ = ["MultiIndex", "ProbePlan", "default_segments", "probe_score", "segment_bounds", "hamming_to_all", "measure_multiindex"]


def default_segments(nbits: int, n_items: int) -> int:
    """Norouzi et al. (TPAMI 2014, Sec. 4.3): ``m = K / log2 N`` substrings, rounded, at least 1, at most K."""
    return int(min(nbits, max(1, round(nbits / math.log2(max(n_items, 2))))))


def segment_bounds(nbits: int, m: int) -> list[tuple[int, int]]:
    """``m`` contiguous substrings covering ``nbits`` bits, lengths differing by at most one (longer first)."""
    if not 1 <= m <= nbits:
        raise HashBenchError(f"multi-index: segments must be in [1, {nbits}] for {nbits}-bit codes, got {m}")
    base, extra = divmod(nbits, m)
    out, start = [], 0
    for j in range(m):
        length = base + (1 if j < extra else 0)
        out.append((start, start + length))
        start += length
    return out


def _as_bool(bits) -> np.ndarray:
    arr = np.asarray(bits)
    if arr.ndim != 2:
        raise HashBenchError(f"multi-index: codes must be (items, bits) in {{-1,+1}} or {{0,1}}, got shape {arr.shape}")
    return arr > 0


def _keys(bits: np.ndarray) -> np.ndarray:
    """Integer key of each row of a boolean (N, s) substring, bit i of the substring = 2**i (s <= 62)."""
    weights = np.left_shift(np.int64(1), np.arange(bits.shape[1], dtype=np.int64))
    return bits.astype(np.int64) @ weights


def hamming_to_all(query_bool: np.ndarray, db_bool: np.ndarray) -> np.ndarray:
    """Hamming distance of one boolean code to every boolean row of ``db_bool`` (brute force)."""
    return np.count_nonzero(db_bool != query_bool[None, :], axis=1)


def _flip_masks(length: int, radius: int) -> np.ndarray:
    """Every XOR mask of exactly ``radius`` set bits among ``length`` bits (itertools order)."""
    if radius == 0:
        return np.zeros(1, dtype=np.int64)
    combos = np.array(list(itertools.combinations(range(length), radius)), dtype=np.int64)
    return np.left_shift(np.int64(1), combos).sum(axis=1)


def probe_score(mask: int, log_p: np.ndarray, log_q: np.ndarray) -> float:
    """log P(a relevant item's substring = query substring XOR mask) under independent bits:
    ``sum_{b in mask} log p_b + sum_{b not in mask} log(1 - p_b)`` (p_b: offline per-bit disagreement rate)."""
    flipped = (int(mask) >> np.arange(len(log_p))) & 1
    return float(np.where(flipped == 1, log_p, log_q).sum())


@dataclass
class ProbePlan:
    """The offline probe sequence of a budgeted search: (table, XOR mask) pairs in decreasing score."""

    tables: np.ndarray  # int, table of each probe
    masks: np.ndarray  # int64, flip mask of each probe
    scores: np.ndarray  # float, probe_score of each probe
    radius: int  # the substring radius cap used to build it


class MultiIndex:
    """``m`` hash tables over disjoint substrings of the (optionally re-ordered) codes; see the module doc."""

    def __init__(self, db_codes, segments: int | None = None, order=None):
        bits = _as_bool(db_codes)
        n, nbits = bits.shape
        if n == 0:
            raise HashBenchError("multi-index: the database is empty")
        self.nbits, self.ntotal = nbits, n
        self.order = np.arange(nbits) if order is None else np.asarray(order, dtype=np.int64)
        if sorted(self.order.tolist()) != list(range(nbits)):
            raise HashBenchError(f"multi-index: order must be a permutation of range({nbits})")
        m = default_segments(nbits, n) if segments is None else int(segments)
        self.bounds = segment_bounds(nbits, m)
        if max(e - s for s, e in self.bounds) > 62:
            raise HashBenchError(f"multi-index: substrings of more than 62 bits; use more segments than {m}")
        self.bits = np.ascontiguousarray(bits[:, self.order])
        self.tables = []  # per table: (sorted unique keys, offsets into ids, item ids sorted by key)
        for s, e in self.bounds:
            keys = _keys(self.bits[:, s:e])
            ids = np.argsort(keys, kind="stable").astype(np.int32)
            uniq, starts = np.unique(keys[ids], return_index=True)
            offsets = np.append(starts, n).astype(np.int64)
            self.tables.append((uniq, offsets, ids))

    @property
    def m(self) -> int:
        return len(self.bounds)

    def memory_bytes(self) -> int:
        """Bytes of the packed codes plus, per table, its keys (int64), offsets (int64) and item ids (int32)."""
        codes = self.ntotal * math.ceil(self.nbits / 8)
        return int(codes + sum(u.nbytes + o.nbytes + i.nbytes for u, o, i in self.tables))

    def query_keys(self, query_bool: np.ndarray) -> list[int]:
        q = query_bool[self.order]
        return [int(_keys(q[None, s:e])[0]) for s, e in self.bounds]

    def _lookup(self, j: int, keys: np.ndarray) -> np.ndarray:
        """Item ids in the buckets of table j whose key is in ``keys`` (possibly empty)."""
        uniq, offsets, ids = self.tables[j]
        pos = np.searchsorted(uniq, keys)
        pos = np.minimum(pos, len(uniq) - 1)
        hit = uniq[pos] == keys
        if not hit.any():
            return ids[:0]
        starts, ends = offsets[pos[hit]], offsets[pos[hit] + 1]
        lengths = ends - starts
        shift = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        return ids[np.arange(lengths.sum()) + shift]

    def search_exact(self, query_codes, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact k-NN by incremental multi-index search (Norouzi et al. TPAMI 2014, Sec. 4.2): per query,
        every table probed at substring radius 0, then 1, ... until the k-th candidate's distance is below
        the pigeonhole bound ``sum_j (r_j + 1)`` of the unseen items. Returns (distances, ids, candidates)."""
        qb = _as_bool(query_codes)[:, self.order]
        k_eff = min(int(k), self.ntotal)
        dist = np.full((len(qb), k_eff), np.iinfo(np.int32).max, dtype=np.int64)
        out = np.full((len(qb), k_eff), -1, dtype=np.int64)
        n_cand = np.zeros(len(qb), dtype=np.int64)
        masks = {}
        for qi, q in enumerate(qb):
            seen = np.zeros(self.ntotal, dtype=bool)
            cand_ids, cand_d = [], []
            done = [-1] * self.m
            qkeys = [int(_keys(q[None, s:e])[0]) for s, e in self.bounds]
            r = 0
            while True:
                for j, (s, e) in enumerate(self.bounds):
                    length = e - s
                    if r > length:
                        continue
                    if (length, r) not in masks:
                        masks[(length, r)] = _flip_masks(length, r)
                    found = self._lookup(j, np.int64(qkeys[j]) ^ masks[(length, r)])
                    found = found[~seen[found]]
                    seen[found] = True
                    if len(found):
                        cand_ids.append(found)
                        cand_d.append(np.count_nonzero(self.bits[found] != q[None, :], axis=1))
                    done[j] = r
                    complete = any(done[t] >= (b[1] - b[0]) for t, b in enumerate(self.bounds))
                    bound = math.inf if complete else sum(d + 1 for d in done)
                    if cand_ids:
                        ids_all, d_all = np.concatenate(cand_ids), np.concatenate(cand_d)
                        if len(ids_all) >= k_eff and np.partition(d_all, k_eff - 1)[k_eff - 1] < bound:
                            break
                    if complete:
                        break
                else:
                    r += 1
                    continue
                break
            ids_all, d_all = np.concatenate(cand_ids), np.concatenate(cand_d)
            top = np.lexsort((ids_all, d_all))[:k_eff]
            out[qi, : len(top)], dist[qi, : len(top)] = ids_all[top], d_all[top]
            n_cand[qi] = len(ids_all)
        return dist, out, n_cand

    def plan(self, disagree: np.ndarray, radius: int) -> ProbePlan:
        """The probe sequence from per-bit disagreement rates of relevant pairs (in the original bit order):
        every (table, mask) with at most ``radius`` flips, by decreasing :func:`probe_score`."""
        p = np.clip(np.asarray(disagree, dtype=float)[self.order], 1e-6, 1 - 1e-6)
        log_p, log_q = np.log(p), np.log1p(-p)
        tables, masks, scores = [], [], []
        for j, (s, e) in enumerate(self.bounds):
            length = e - s
            for r in range(min(radius, length) + 1):
                ms = _flip_masks(length, r)
                flipped = ((ms[:, None] >> np.arange(length)) & 1) == 1
                sc = np.where(flipped, log_p[s:e], log_q[s:e]).sum(axis=1)
                tables.append(np.full(len(ms), j))
                masks.append(ms)
                scores.append(sc)
        t, mk, sc = np.concatenate(tables), np.concatenate(masks), np.concatenate(scores)
        order = np.lexsort((mk, t, -sc))
        return ProbePlan(t[order], mk[order], sc[order], int(radius))

    def search_budget(self, query_codes, k: int, plan: ProbePlan, *, n_candidates: int, max_buckets: int | None = None):
        """Approximate k-NN: probes of ``plan`` in order until ``n_candidates`` distinct items were found or
        ``max_buckets`` probes were made; candidates ranked by full Hamming distance (ties by id).
        Returns (distances, ids, candidates) with id -1 / distance 2**31-1 where fewer than k were found."""
        qb = _as_bool(query_codes)[:, self.order]
        k_eff = min(int(k), self.ntotal)
        dist = np.full((len(qb), k_eff), np.iinfo(np.int32).max, dtype=np.int64)
        out = np.full((len(qb), k_eff), -1, dtype=np.int64)
        n_cand = np.zeros(len(qb), dtype=np.int64)
        limit = len(plan.masks) if max_buckets is None else min(len(plan.masks), int(max_buckets))
        step = 8  # probes looked up together (vectorised); the stop is checked between groups
        for qi, q in enumerate(qb):
            qkeys = np.array([int(_keys(q[None, s:e])[0]) for s, e in self.bounds], dtype=np.int64)
            seen = np.zeros(self.ntotal, dtype=bool)
            got = []
            count = 0
            for g in range(0, limit, step):
                t, mk = plan.tables[g : min(g + step, limit)], plan.masks[g : min(g + step, limit)]
                for j in np.unique(t):
                    found = self._lookup(int(j), qkeys[j] ^ mk[t == j])
                    found = np.unique(found[~seen[found]])
                    seen[found] = True
                    if len(found):
                        got.append(found)
                        count += len(found)
                if count >= n_candidates:
                    break
            if got:
                ids_all = np.concatenate(got)
                d_all = np.count_nonzero(self.bits[ids_all] != q[None, :], axis=1)
                top = np.lexsort((ids_all, d_all))[:k_eff]
                out[qi, : len(top)], dist[qi, : len(top)] = ids_all[top], d_all[top]
            n_cand[qi] = count
        return dist, out, n_cand


@dataclass
class MultiIndexStats:
    """Figures of the code-layer multi-index on one database, in the fields of :class:`pipeline.eval.index.IndexStats`."""

    kind: str
    build_seconds: float
    latency_p50_ms: float
    latency_p95_ms: float
    batch_qps: float
    memory_bytes: int
    recall_at_k: float
    k: int
    n_db: int
    nbits: int
    mean_candidates: float
    params: dict = field(default_factory=dict)


def exact_kth(query_bool: np.ndarray, db_bool: np.ndarray, k: int) -> np.ndarray:
    """k-th smallest exact Hamming distance per query (brute force)."""
    k_eff = min(int(k), len(db_bool))
    d = np.count_nonzero(query_bool[:, None, :] != db_bool[None, :, :], axis=2)
    return np.partition(d, k_eff - 1, axis=1)[:, k_eff - 1]


def tie_aware_recall(dist: np.ndarray, kth: np.ndarray) -> float:
    """Share of served results whose exact distance is at most the k-th true distance (the rule of
    :func:`pipeline.eval.index.measure_index`: a result tied with the k-th neighbour counts)."""
    return float((dist <= kth[:, None]).sum() / dist.size)


def measure_multiindex(index_factory, query_codes, k: int, search, n_latency_queries: int = 200, kind: str = "codelayer", params: dict | None = None) -> tuple[MultiIndexStats, np.ndarray, np.ndarray]:
    """Build time, one-query latency p50/p95, batch throughput, memory, tie-aware recall@k and mean
    candidates of ``search(index, queries, k) -> (dist, ids, candidates)``; also returns (dist, ids)."""
    t0 = time.perf_counter()
    index = index_factory()
    build = time.perf_counter() - t0
    qb = _as_bool(query_codes)
    lat = []
    for i in range(min(int(n_latency_queries), len(qb))):
        t0 = time.perf_counter()
        search(index, qb[i : i + 1], k)
        lat.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    dist, ids, cand = search(index, qb, k)
    batch = time.perf_counter() - t0
    kth = exact_kth(qb, index.bits[:, np.argsort(index.order)], k)
    lat_ms = np.array(lat) * 1e3
    stats = MultiIndexStats(
        kind=kind,
        build_seconds=build,
        latency_p50_ms=float(np.percentile(lat_ms, 50)),
        latency_p95_ms=float(np.percentile(lat_ms, 95)),
        batch_qps=float(len(qb) / batch) if batch > 0 else float("inf"),
        memory_bytes=index.memory_bytes(),
        recall_at_k=tie_aware_recall(dist, kth),
        k=int(min(k, index.ntotal)),
        n_db=index.ntotal,
        nbits=index.nbits,
        mean_candidates=float(cand.mean()),
        params={"segments": index.m, **(params or {})},
    )
    return stats, dist, ids
