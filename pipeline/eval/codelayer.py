"""Paper 000's code layer (Sec. 4.2, "码字层：面向检索路径的哈希结构重排") on the stored codes of a trial.

After training, with no change to the network: (1) per-bit statistics on the training set, the value
frequency (balance) and the correlation of each bit's cross-modal agreement with the similarity matrix,
give an importance order; low-importance bits go to the tail, so the first b bits of the re-ordered code
serve a b-bit index ("one model, several code lengths"); (2) a segmented multi-index
(:mod:`pipeline.eval.multiindex`, Norouzi et al. 2012/2014) probed in an order learned from where
relevant training pairs disagree, with a per-query radius and bucket budget; (3) a sliding-window
estimate of the bit statistics of a stream of database insertions that re-orders the index (never the
network) when it drifts past a threshold. Sec. 5 asks for each cell's mAP, NDCG@K, Recall@K and the
index's build time, query latency and memory: :func:`evaluate_code_layer` gives them for one trial.

Formulas (our reading; the paper gives none):

* balance of bit b: the binary entropy ``H(p_b)`` of its frequency ``p_b = P(bit = +1)`` (1 = balanced);
* similarity correlation: Pearson correlation over all (query-modality item i, database-modality item j)
  training pairs of the agreement ``a_ij = B^q_ib * B^d_jb`` with ``S_ij = 1[i, j share a label]``,
  computed exactly by matrix products (``sum_ij a_ij S_ij = B^q_b^T S B^d_b``); cross-modal: the mean of
  the two directions; pairs include i = j;
* importance ``= max(corr_b, 0) * mean over modalities of H(p_b)``; order = decreasing importance
  (:func:`importance_order`); one order for both modalities (a cross-modal distance needs the same bit
  positions);
* loss-sensitive bits: ``P(B^q_ib != B^d_jb | S_ij = 1)``, the per-bit disagreement of relevant pairs;
* probe radius cap: the smallest substring radius r such that a share ``target_recall`` of relevant
  training pairs has some substring within r (Norouzi's pigeonhole: that pair is found at radius r);
* drift: the largest per-bit difference of frequencies between the sliding window and the reference,
  against ``z * sqrt(0.25 (1/W + 1/N_ref))``, z the two-sided normal quantile at ``alpha / K``
  (Bonferroni over the K bits; 0.25 bounds p(1-p)).

Deviations: the paper collects the continuous outputs too; stored codes are binary only, so every
statistic is on signs. Redundancy between bits (paper: "削减比特冗余") is not modelled: the order is per
bit. Training codes are the database codes of the training items (the evaluate stage takes the rows of
``split.train`` inside ``split.database``; a protocol whose training items are not in the database is
refused, since codes.npz stores query and database codes only). The served-list metrics rank ties by
database index, for the exhaustive baseline and the multi-index alike.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from pipeline.config import CodeLayerConfig
from pipeline.core.errors import HashBenchError
from pipeline.eval.codes import unpack_codes
from pipeline.eval.evaluate import direction_name
from pipeline.eval.index import measure_index
from pipeline.eval.metrics import evaluate_retrieval
from pipeline.eval.multiindex import MultiIndex, default_segments, measure_multiindex, segment_bounds

log = logging.getLogger(__name__)

__all__ = [
    "BitStats",
    "DriftMonitor",
    "bit_stats",
    "binary_entropy",
    "drift_threshold",
    "evaluate_code_layer",
    "importance_order",
    "probe_radius",
    "served_metrics",
    "training_rows",
]


def binary_entropy(p) -> np.ndarray:
    """``H(p) = -p log2 p - (1-p) log2 (1-p)`` (0 at p in {0, 1})."""
    p = np.clip(np.asarray(p, dtype=float), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return np.nan_to_num(h, nan=0.0)


def _similarity(labels_q: np.ndarray, labels_d: np.ndarray) -> np.ndarray:
    """``S_ij = 1`` when items i and j share at least one label (float matrix)."""
    return ((np.asarray(labels_q, dtype=np.float64) @ np.asarray(labels_d, dtype=np.float64).T) > 0).astype(np.float64)


@dataclass
class BitStats:
    """Per-bit training statistics (original bit order)."""

    frequency: np.ndarray  # (modalities, K): P(bit = +1)
    correlation: np.ndarray  # (K,): Pearson corr of agreement with S, mean over directions
    disagreement: np.ndarray  # (K,): P(bits differ | relevant pair), mean over directions
    relevant_share: float  # share of relevant pairs

    @property
    def balance(self) -> np.ndarray:
        return binary_entropy(self.frequency).mean(axis=0)

    @property
    def importance(self) -> np.ndarray:
        return np.maximum(self.correlation, 0.0) * self.balance


def _pair_stats(bq: np.ndarray, bd: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Pearson corr of a_ij = bq_ib bd_jb with S_ij, P(a_ij = -1 | S_ij = 1)) per bit, over all pairs."""
    n_pairs = s.size
    e_as = np.einsum("ib,ib->b", bq, s @ bd) / n_pairs  # E[a S]
    e_a = bq.sum(0) * bd.sum(0) / n_pairs  # E[a]
    e_s = s.sum() / n_pairs
    var = (1 - e_a**2) * (e_s - e_s**2)
    corr = np.where(var > 0, (e_as - e_a * e_s) / np.sqrt(np.maximum(var, 1e-300)), 0.0)
    disagree = (1 - e_as / e_s) / 2 if e_s > 0 else np.full(bq.shape[1], 0.5)
    return corr, disagree


def bit_stats(codes: dict[str, np.ndarray], labels: np.ndarray, directions: list[tuple[str, str]], max_items: int | None = None, seed: int = 0) -> BitStats:
    """:class:`BitStats` of training codes ``{modality: (N, K) in {-1,+1}}`` with labels (N, C); with
    ``max_items`` a seeded subset of the items is used (all pairs among them)."""
    n = len(labels)
    rows = np.arange(n)
    if max_items is not None and n > max_items:
        rows = np.sort(np.random.default_rng(seed).choice(n, max_items, replace=False))
    y = np.asarray(labels)[rows]
    s = _similarity(y, y)
    b = {m: np.asarray(c, dtype=np.float64)[rows] for m, c in codes.items()}
    corrs, dis = [], []
    for qm, dm in directions:
        c, d = _pair_stats(b[qm], b[dm], s)
        corrs.append(c)
        dis.append(d)
    mods = sorted({m for d in directions for m in d})
    freq = np.stack([(b[m] > 0).mean(0) for m in mods])
    return BitStats(freq, np.mean(corrs, axis=0), np.mean(dis, axis=0), float(s.mean()))


def importance_order(importance: np.ndarray) -> np.ndarray:
    """Bit positions by decreasing importance (ties: lower position first)."""
    imp = np.asarray(importance, dtype=float)
    return np.lexsort((np.arange(len(imp)), -imp))


def probe_radius(codes: dict[str, np.ndarray], labels: np.ndarray, directions, order: np.ndarray, m: int, target_recall: float, max_items: int = 1000, seed: int = 0) -> int:
    """Smallest substring radius r at which a share ``target_recall`` of relevant training pairs has some
    substring (of the ``m`` segments of the ordered code) within distance r, i.e. is found by pigeonhole."""
    n = len(labels)
    rows = np.sort(np.random.default_rng(seed).choice(n, min(n, max_items), replace=False))
    y = np.asarray(labels)[rows]
    rel = _similarity(y, y) > 0
    bounds = segment_bounds(len(order), m)
    best = []
    for qm, dm in directions:
        bq = np.asarray(codes[qm])[rows][:, order] > 0
        bd = np.asarray(codes[dm])[rows][:, order] > 0
        seg_min = None
        for s, e in bounds:
            d = np.count_nonzero(bq[:, None, s:e] != bd[None, :, s:e], axis=2)
            seg_min = d if seg_min is None else np.minimum(seg_min, d)
        best.append(seg_min[rel])
    allmin = np.concatenate(best)
    return int(np.quantile(allmin, target_recall, method="higher")) if len(allmin) else 0


# -- served-list metrics ----------------------------------------------------------------------------------


def served_metrics(ids: np.ndarray, query_labels: np.ndarray, db_labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per query AP@k (normalised by relevant items retrieved), NDCG@k (gain = number of shared labels,
    ideal from all database items) and Recall@k (relevant retrieved / all relevant) of served id lists
    (Q, k) in rank order, id -1 = nothing served at that rank."""
    ql = np.asarray(query_labels, dtype=np.float64)
    dl = np.asarray(db_labels, dtype=np.float64)
    k = ids.shape[1]
    safe = np.where(ids >= 0, ids, 0)
    gain = np.einsum("qc,qkc->qk", ql, dl[safe]) * (ids >= 0)
    rel = gain > 0
    cum = np.cumsum(rel, axis=1)
    ranks = np.arange(1, k + 1)
    n_ret = cum[:, -1]
    ap = np.where(n_ret > 0, (rel * cum / ranks).sum(1) / np.maximum(n_ret, 1), 0.0)
    disc = 1.0 / np.log2(ranks + 1)
    dcg = ((2.0**gain - 1) * disc).sum(1)
    all_gain = ql @ dl.T
    ideal = -np.sort(-all_gain, axis=1)[:, :k]
    idcg = ((2.0**ideal - 1) * disc[: ideal.shape[1]]).sum(1)
    ndcg = np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1), 0.0)
    total = (all_gain > 0).sum(1)
    recall = np.where(total > 0, n_ret / np.maximum(total, 1), 0.0)
    return {"ap": ap, "ndcg": ndcg, "recall": recall}


def _summ(prefix: str, k: int, per_query: dict[str, np.ndarray]) -> dict[str, float]:
    return {f"{prefix}/map@{k}": float(per_query["ap"].mean()), f"{prefix}/ndcg@{k}": float(per_query["ndcg"].mean()), f"{prefix}/r@{k}": float(per_query["recall"].mean())}


# -- drift ------------------------------------------------------------------------------------------------


def drift_threshold(nbits: int, window: int, n_reference: int, alpha: float = 0.01) -> float:
    """``z_{1 - alpha / (2K)} * sqrt(0.25 * (1/W + 1/N_ref))``: the largest per-bit frequency difference
    between a window of W and a reference of N_ref items that sampling alone exceeds with probability
    <= alpha (Bonferroni over K bits, p(1-p) <= 1/4)."""
    z = float(norm.ppf(1 - alpha / (2 * nbits)))
    return z * math.sqrt(0.25 * (1.0 / window + 1.0 / n_reference))


class DriftMonitor:
    """Sliding-window bit frequencies of a stream of inserted codes against a reference; past the
    threshold it re-orders the index (``on_drift(new_order)``, no retraining) and the window becomes the
    new reference (the threshold is recomputed for a reference of W items). The new order keeps the
    training correlations and takes the balance of the window."""

    def __init__(self, reference_codes, correlation: np.ndarray, window: int = 200, alpha: float = 0.01, threshold: float | None = None, on_drift=None):
        ref = np.asarray(reference_codes) > 0
        if window < 1:
            raise HashBenchError(f"drift monitor: window must be >= 1, got {window}")
        self.nbits = ref.shape[1]
        self.window = int(window)
        self.reference = ref.mean(0)
        self.n_reference = len(ref)
        self.correlation = np.asarray(correlation, dtype=float)
        self.alpha, self.fixed_threshold = alpha, threshold
        self.threshold = drift_threshold(self.nbits, self.window, self.n_reference, alpha) if threshold is None else float(threshold)
        self.on_drift = on_drift
        self.order = importance_order(np.maximum(self.correlation, 0) * binary_entropy(self.reference))
        self._buf = np.zeros((0, self.nbits), dtype=bool)
        self.seen = 0
        self.events: list[dict] = []

    def statistic(self, window_bits: np.ndarray) -> float:
        """max_b |window frequency - reference frequency|."""
        return float(np.abs(window_bits.mean(0) - self.reference).max())

    def insert(self, codes) -> list[dict]:
        """Feed inserted codes (in stream order); returns the drift events they caused."""
        new = np.asarray(codes) > 0
        events = []
        for row in new:  # per insertion: the window is the last `window` items since the last re-order
            self._buf = np.concatenate([self._buf[-(self.window - 1):] if self.window > 1 else self._buf[:0], row[None]])
            self.seen += 1
            if len(self._buf) < self.window:
                continue
            stat = self.statistic(self._buf)
            if stat > self.threshold:
                crossed = self.threshold
                self.reference = self._buf.mean(0)
                self.n_reference = len(self._buf)
                if self.fixed_threshold is None:  # a reference of W items is noisier than the original one
                    self.threshold = drift_threshold(self.nbits, self.window, self.n_reference, self.alpha)
                self.order = importance_order(np.maximum(self.correlation, 0) * binary_entropy(self.reference))
                ev = {"position": self.seen, "statistic": stat, "threshold": crossed, "order": self.order.copy()}
                events.append(ev)
                self.events.append(ev)
                if self.on_drift is not None:
                    self.on_drift(self.order)
                self._buf = self._buf[:0]
        return events


# -- one trial's stored codes -----------------------------------------------------------------------------


def training_rows(train_idx: np.ndarray, database_idx: np.ndarray) -> np.ndarray:
    """Positions of the training items in the database part (codes.npz holds query and database codes);
    a protocol whose training items are not all in the database is refused."""
    pos = {int(v): i for i, v in enumerate(np.asarray(database_idx))}
    missing = [int(v) for v in np.asarray(train_idx) if int(v) not in pos]
    if missing:
        raise HashBenchError(
            f"code layer: {len(missing)} training items are not in the database, and codes.npz stores only query and "
            f"database codes; the training-set statistics need them (e.g. item {missing[0]})"
        )
    return np.array([pos[int(v)] for v in np.asarray(train_idx)], dtype=np.int64)


def _pack(bits: np.ndarray) -> np.ndarray:
    return np.packbits(bits > 0, axis=1)


def evaluate_code_layer(
    packed: dict[str, dict[str, np.ndarray]],
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    train_rows: np.ndarray,
    directions: list[tuple[str, str]],
    cfg: CodeLayerConfig,
) -> tuple[dict[str, float], dict]:
    """Metrics of the code layer on one trial's stored (packed) codes: ``{direction}/...`` values and
    details (orders, radius, per-bit statistics). Per direction:

    * ``plain/{map,ndcg,r}@k`` and ``plain/index/flat/*``: the exhaustive faiss IndexBinaryFlat serving top-k;
    * ``code/{map,ndcg,r}@k`` and ``code/index/codelayer/*``: the importance-ordered, budgeted multi-index;
    * ``code/index/multihash_nflip{1,2}/*``: faiss IndexBinaryMultiHash (same m, 1 or 2 flips) on the same codes;
    * ``code/index/mih_exact/*``: the multi-index at full budget (exact; recall 1 expected);
    * ``prefix{b}/map@all`` (+ ``_natural``, ``_reverse``): mAP@all of the first b bits of the importance
      order, of the stored order and of the reversed importance order, for b = 8, 16, ... < K."""
    t0 = time.perf_counter()
    mods = sorted({m for d in directions for m in d})
    unpacked = {part: {m: unpack_codes(packed[part][m]) for m in mods} for part in ("query", "database")}
    nbits = unpacked["database"][mods[0]].shape[1]
    train_codes = {m: unpacked["database"][m][train_rows] for m in mods}
    train_labels = np.asarray(db_labels)[train_rows]
    stats = bit_stats(train_codes, train_labels, directions, max_items=int(math.isqrt(cfg.max_train_pairs)))
    order = importance_order(stats.importance)
    n_db = len(db_labels)
    m = cfg.segments or default_segments(nbits, n_db)
    radius = probe_radius(train_codes, train_labels, directions, order, m, cfg.target_recall)
    k = min(cfg.k, n_db)
    values: dict[str, float] = {}
    for qm, dm in directions:
        name = direction_name(qm, dm)
        q, d = unpacked["query"][qm], unpacked["database"][dm]
        qp, dp = packed["query"][qm], packed["database"][dm]
        flat = measure_index("flat", dp, qp, k=k, n_latency_queries=cfg.latency_queries, use_gpu=False)
        exact_ids = _exact_ids(q > 0, d > 0, k)
        values.update(_summ(f"{name}/plain", k, served_metrics(exact_ids, query_labels, db_labels)))
        values.update(_index_values(f"{name}/plain/index/flat", flat))
        for flips in (1, 2):
            mh = measure_index("multihash", dp, qp, k=k, n_latency_queries=cfg.latency_queries, nhash=m, hash_bits=nbits // m, nflip=flips)
            values.update(_index_values(f"{name}/code/index/multihash_nflip{flips}", mh))

        def budget(ix, qs, kk):
            return ix.search_budget(qs, kk, plan, n_candidates=int(cfg.candidate_factor * kk), max_buckets=cfg.max_buckets)

        index = MultiIndex(d, segments=m, order=order)
        plan = index.plan(stats.disagreement, radius)
        st, _, ids = measure_multiindex(lambda: MultiIndex(d, segments=m, order=order), q, k, budget, cfg.latency_queries, params={"radius": radius, "probes": len(plan.masks)})
        values.update(_index_values(f"{name}/code/index/codelayer", st))
        values[f"{name}/code/index/codelayer/mean_candidates"] = st.mean_candidates
        values.update(_summ(f"{name}/code", k, served_metrics(ids, query_labels, db_labels)))
        ex, _, _ = measure_multiindex(lambda: MultiIndex(d, segments=m, order=order), q, k, lambda ix, qs, kk: ix.search_exact(qs, kk), min(cfg.latency_queries, 50), kind="mih_exact")
        values.update(_index_values(f"{name}/code/index/mih_exact", ex))
        values[f"{name}/code/index/mih_exact/mean_candidates"] = ex.mean_candidates
        for b in range(8, nbits, 8):
            for tag, perm in (("", order), ("_natural", np.arange(nbits)), ("_reverse", order[::-1])):
                sel = perm[:b]
                r = evaluate_retrieval(_pack(q[:, sel]), _pack(d[:, sel]), query_labels, db_labels, topk=(), ties="expected")
                values[f"{name}/prefix{b}{tag}/map@all"] = float(r.values["map@all"])
    details = {
        "order": order.tolist(),
        "segments": m,
        "radius": radius,
        "importance": stats.importance.tolist(),
        "correlation": stats.correlation.tolist(),
        "balance": stats.balance.tolist(),
        "disagreement": stats.disagreement.tolist(),
        "seconds": time.perf_counter() - t0,
    }
    return values, details


def _exact_ids(qb: np.ndarray, db: np.ndarray, k: int) -> np.ndarray:
    """Exhaustive top-k ids by (Hamming distance, database index)."""
    d = np.count_nonzero(qb[:, None, :] != db[None, :, :], axis=2)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def _index_values(prefix: str, st) -> dict[str, float]:
    out = {}
    for key in ("build_seconds", "latency_p50_ms", "latency_p95_ms", "batch_qps", "memory_bytes", "recall_at_k"):
        v = getattr(st, key, None)
        if v is not None:
            out[f"{prefix}/{key}"] = float(v)
    return out
