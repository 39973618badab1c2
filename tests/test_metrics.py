"""pipeline.eval.metrics against slow, obviously-correct references written independently here.

The references never use the engine's counting: distances come from ``np.unpackbits`` and a
bit-by-bit comparison, relevance from Python set intersections, rankings from Python's ``sorted``
with an explicit (distance, tie-breaker, index) key, and every metric is a plain loop over ranks.
The tie-aware expectation is checked against the average over ALL orderings of tied items (exact
enumeration on tiny problems) and against Monte Carlo averages over random tie orders.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pipeline.eval import metrics as M
from pipeline.eval.metrics import engine as E  # the engine's tunables and sorter, patched below
from pipeline.core.errors import HashBenchError

NORMS = ("retrieved", "min_k_total", "total")

_HAVE_KERNEL = __import__("pipeline.eval.kernels", fromlist=["load_kernel"]).load_kernel() is not None


@pytest.fixture(autouse=True, params=["numpy", "kernel"])
def metrics_backend(request, monkeypatch):
    """Every test runs on both backends: the numpy path and the compiled kernel (skipped when not built)."""
    if request.param == "kernel" and not _HAVE_KERNEL:
        pytest.skip("compiled kernel pipeline.eval._hamming_kernel not built")
    monkeypatch.setenv("HASHBENCH_METRICS_BACKEND", request.param)
    return request.param


# --------------------------------------------------------------------------------------------------
# independent references
# --------------------------------------------------------------------------------------------------


def ref_distances(qc: np.ndarray, dc: np.ndarray) -> np.ndarray:
    qb = np.unpackbits(qc, axis=1).astype(np.int64)
    db = np.unpackbits(dc, axis=1).astype(np.int64)
    return np.array([[int(np.sum(a != b)) for b in db] for a in qb])


def ref_gains(ql, dl) -> np.ndarray:
    ql, dl = np.asarray(ql), np.asarray(dl)
    if ql.ndim == 1 and dl.ndim == 1:
        return np.array([[int(a == b) for b in dl] for a in ql])
    qs = [set(np.flatnonzero(r)) if ql.ndim == 2 else {int(r)} for r in ql]
    ds = [set(np.flatnonzero(r)) if dl.ndim == 2 else {int(r)} for r in dl]
    return np.array([[len(a & b) for b in ds] for a in qs])


def ref_order(dist_row, gain_row, ties: str) -> list[int]:
    idx = range(len(dist_row))
    if ties == "index":
        return sorted(idx, key=lambda i: (dist_row[i], i))
    if ties == "optimistic":
        return sorted(idx, key=lambda i: (dist_row[i], -gain_row[i], i))
    if ties == "pessimistic":
        return sorted(idx, key=lambda i: (dist_row[i], gain_row[i], i))
    raise ValueError(ties)


def ref_ranked(gains_in_rank_order, k, ap_norm="retrieved") -> dict[str, float]:
    """AP@k, P@k, R@k, NDCG@k of one ranked list of graded gains (relevant = gain > 0), plain loops."""
    g = list(gains_in_rank_order)
    n = len(g)
    ke = n if k is None else min(k, n)
    total = sum(1 for x in g if x > 0)
    hits, s = 0, 0.0
    for pos in range(1, ke + 1):
        if g[pos - 1] > 0:
            hits += 1
            s += hits / pos
    if k is None or ke == n or ap_norm == "total":
        den = total
    elif ap_norm == "min_k_total":
        den = min(ke, total)
    else:
        den = hits
    ap = s / den if den else 0.0
    dcg = sum(g[p] / math.log2(p + 2) for p in range(ke))
    ideal = sorted(g, reverse=True)
    idcg = sum(ideal[p] / math.log2(p + 2) for p in range(ke))
    return {
        "ap": ap,
        "p": hits / ke,
        "r": hits / total if total else 0.0,
        "ndcg": dcg / idcg if idcg else 0.0,
    }


def ref_all(qc, dc, ql, dl, ties, k, ap_norm="retrieved") -> dict[str, np.ndarray]:
    dist, gain = ref_distances(qc, dc), ref_gains(ql, dl)
    rows = [ref_ranked([gain[q, i] for i in ref_order(dist[q], gain[q], ties)], k, ap_norm) for q in range(len(dist))]
    return {key: np.array([r[key] for r in rows]) for key in rows[0]}


def tie_groups(dist_row) -> list[list[int]]:
    return [[i for i in range(len(dist_row)) if dist_row[i] == d] for d in sorted(set(dist_row))]


def ref_expected_exact(dist_row, gain_row, k, ap_norm="retrieved") -> dict[str, float]:
    """Average over every ordering of the tied items (all orderings of every tie group)."""
    groups = tie_groups(dist_row)
    acc: dict[str, float] = {}
    count = 0
    for perms in itertools.product(*[itertools.permutations(g) for g in groups]):
        order = [i for p in perms for i in p]
        res = ref_ranked([gain_row[i] for i in order], k, ap_norm)
        for key, v in res.items():
            acc[key] = acc.get(key, 0.0) + v
        count += 1
    return {key: v / count for key, v in acc.items()}


def random_problem(rng, nq, ndb, nbits, n_classes=None, n_labels=None, density=0.3):
    qc = np.packbits(rng.random((nq, nbits)) < 0.5, axis=1)
    dc = np.packbits(rng.random((ndb, nbits)) < 0.5, axis=1)
    if n_classes is not None:
        return qc, dc, rng.integers(0, n_classes, nq), rng.integers(0, n_classes, ndb)
    ql = (rng.random((nq, n_labels)) < density).astype(np.uint8)
    dl = (rng.random((ndb, n_labels)) < density).astype(np.uint8)
    return qc, dc, ql, dl


def engine_values(qc, dc, ql, dl, ties, k, ap_norm="retrieved", **kw) -> dict[str, np.ndarray]:
    """Per-query AP@k and the means of P/R/NDCG from the public functions."""
    ap = M.average_precision(qc, dc, ql, dl, k=k, ties=ties, ap_norm=ap_norm, **kw)
    out = {"ap": ap}
    if k is not None:
        out["p"], out["r"] = M.precision_recall_at_k(qc, dc, ql, dl, k, ties=ties, **kw)
        out["ndcg"] = M.ndcg_at_k(qc, dc, ql, dl, k, ties=ties, **kw)
    return out


# --------------------------------------------------------------------------------------------------
# distances and counts
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nbits", [8, 16, 24, 64, 72, 256])
def test_hamming_distances_and_counts(nbits):
    rng = np.random.default_rng(nbits)
    qc, dc, ql, dl = random_problem(rng, 7, 53, nbits, n_labels=5)
    ref = ref_distances(qc, dc)
    np.testing.assert_array_equal(M.hamming_distances(qc, dc), ref)
    gain = ref_gains(ql, dl)
    np.testing.assert_array_equal(M.graded_relevance(ql, dl), gain)
    counts = M.hamming_distance_counts(qc, dc, ql, dl, graded=True)
    for q in range(7):
        np.testing.assert_array_equal(counts.items[q], np.bincount(ref[q], minlength=nbits + 1))
        np.testing.assert_array_equal(counts.relevant[q], np.bincount(ref[q], weights=gain[q] > 0, minlength=nbits + 1))
        np.testing.assert_array_equal(counts.gain[q], np.bincount(ref[q], weights=gain[q], minlength=nbits + 1))
        np.testing.assert_array_equal(counts.gain_hist[q][: gain[q].max() + 1], np.bincount(gain[q]))
    assert counts.nbits == nbits and counts.n_db == 53 and counts.n_query == 7


def test_counts_chunking_and_threads_do_not_change_results(monkeypatch):
    rng = np.random.default_rng(5)
    qc, dc, ql, dl = random_problem(rng, 23, 300, 16, n_labels=70, density=0.05)  # 70 labels: 2 label words
    base = M.evaluate_retrieval(qc, dc, ql, dl, topk=(10, 50), ties="index", n_threads=1)
    monkeypatch.setattr(E, "_DB_CHUNK", 37)  # database chunks that do not divide anything
    for threads, block in [(1, 1), (2, 3), (3, 100)]:
        other = M.evaluate_retrieval(qc, dc, ql, dl, topk=(10, 50), ties="index", n_threads=threads, block_size=block)
        assert other.values == base.values
        np.testing.assert_array_equal(other.per_query_ap, base.per_query_ap)


# --------------------------------------------------------------------------------------------------
# hand-worked example
# --------------------------------------------------------------------------------------------------


def test_hand_worked_example():
    # 8-bit codes, query 00000000; database (index: code, distance, class), query class 0:
    #   0: 00000001  d=1  class 1 (not relevant)
    #   1: 00000000  d=0  class 1 (not relevant)
    #   2: 00000010  d=1  class 0 (relevant)
    #   3: 00000011  d=2  class 0 (relevant)
    #   4: 00000100  d=1  class 0 (relevant)
    # Tie groups: d=0 {1: N}; d=1 {0: N, 2: R, 4: R}; d=2 {3: R}. Relevant in total: 3.
    # index ties:  ranking 1,0,2,4,3 = N N R R R -> precisions 1/3, 2/4, 3/5 -> AP = (1/3+1/2+3/5)/3 = 43/90
    # optimistic:  N | R R N | R            -> 1/2, 2/3, 3/5            -> AP = 53/90
    # expected: the d=1 group (ranks 2..4, 2 of 3 relevant) in its 3 equally likely arrangements
    #   RRN: 1/2+2/3 = 7/6, RNR: 1/2+2/4 = 1, NRR: 1/3+2/4 = 5/6, mean 1; plus 3/5 at rank 5 -> AP = 1.6/3 = 8/15
    # AP@2 expected: rank 2 is the first of the d=1 group, relevant with prob. 2/3 (precision 1/2 then)
    #   retrieved: 2/3 * (1/2)/1 = 1/3; min_k_total: (2/3 * 1/2)/min(2,3) = 1/6; total: (1/3)/3 = 1/9
    #   P@2 = (2/3)/2 = 1/3, R@2 = (2/3)/3 = 2/9;   index ties: top 2 = N N -> AP@2 = 0, P@2 = 0
    # NDCG@3 expected: rank 1 gain 0, ranks 2-3 mean gain 2/3 -> DCG = 2/3 (1/log2 3 + 1/log2 4)
    #   ideal: 1 + 1/log2 3 + 1/log2 4
    # radius 0: one item, not relevant -> precision 0, recall 0; radius 1: 4 items, 2 relevant -> 1/2, 2/3;
    # radius >= 2: 5 items, 3 relevant -> 3/5, 1.
    q = np.packbits(np.zeros((1, 8), bool), axis=1)
    db = np.array([[0b00000001], [0b00000000], [0b00000010], [0b00000011], [0b00000100]], dtype=np.uint8)
    ql, dl = np.array([0]), np.array([1, 1, 0, 0, 0])
    ap = lambda **kw: float(M.mean_average_precision(q, db, ql, dl, **kw))  # noqa: E731
    assert ap(ties="index") == pytest.approx(43 / 90, abs=1e-15)
    assert ap(ties="optimistic") == pytest.approx(53 / 90, abs=1e-15)
    assert ap(ties="pessimistic") == pytest.approx(43 / 90, abs=1e-15)
    assert ap(ties="expected") == pytest.approx(8 / 15, abs=1e-15)
    assert ap(k=2, ap_norm="retrieved") == pytest.approx(1 / 3, abs=1e-15)
    assert ap(k=2, ap_norm="min_k_total") == pytest.approx(1 / 6, abs=1e-15)
    assert ap(k=2, ap_norm="total") == pytest.approx(1 / 9, abs=1e-15)
    assert ap(k=2, ties="index") == 0.0
    assert M.precision_recall_at_k(q, db, ql, dl, 2) == pytest.approx((1 / 3, 2 / 9), abs=1e-15)
    assert M.precision_recall_at_k(q, db, ql, dl, 2, ties="index") == (0.0, 0.0)
    ndcg = (2 / 3) * (1 / math.log2(3) + 1 / 2) / (1 + 1 / math.log2(3) + 1 / 2)
    assert M.ndcg_at_k(q, db, ql, dl, 3) == pytest.approx(ndcg, abs=1e-15)
    curve = M.pr_curve(q, db, ql, dl)
    np.testing.assert_allclose(curve["precision"], [0, 1 / 2] + [3 / 5] * 7, atol=1e-15)
    np.testing.assert_allclose(curve["recall"], [0, 2 / 3] + [1] * 7, atol=1e-15)
    np.testing.assert_array_equal(curve["radius"], np.arange(9))
    assert M.precision_within_radius(q, db, ql, dl, radius=1) == (0.5, 0.0)
    assert M.precision_within_radius(q, db, ql, dl, radius=0) == (0.0, 0.0)  # not empty, just irrelevant


# --------------------------------------------------------------------------------------------------
# deterministic tie rules against sorted-list references
# --------------------------------------------------------------------------------------------------


CASES = [
    # (nbits, n_query, n_db, labels)  labels: ("single", n_classes) or ("multi", n_labels)
    (8, 12, 60, ("single", 4)),
    (8, 12, 60, ("multi", 6)),
    (16, 10, 80, ("multi", 5)),
    (256, 6, 40, ("single", 3)),
    (256, 6, 40, ("multi", 4)),
]


def _case_problem(case, seed):
    nbits, nq, ndb, (kind, c) = case
    rng = np.random.default_rng(seed)
    if kind == "single":
        return random_problem(rng, nq, ndb, nbits, n_classes=c)
    return random_problem(rng, nq, ndb, nbits, n_labels=c)


@pytest.mark.parametrize("ties", ["index", "optimistic", "pessimistic"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}bit-{c[3][0]}")
def test_deterministic_ties_match_reference(case, ties):
    qc, dc, ql, dl = _case_problem(case, 11)
    for k in (None, 1, 7, 25, 1000):  # 1000 > database size: clipped
        for norm in NORMS if k is not None else ("retrieved",):
            ref = ref_all(qc, dc, ql, dl, ties, k, norm)
            got = engine_values(qc, dc, ql, dl, ties, k, norm)
            np.testing.assert_allclose(got["ap"], ref["ap"], rtol=1e-12, atol=1e-15)
            if k is not None:
                assert got["p"] == pytest.approx(ref["p"].mean(), abs=1e-13)
                assert got["r"] == pytest.approx(ref["r"].mean(), abs=1e-13)
                assert got["ndcg"] == pytest.approx(ref["ndcg"].mean(), abs=1e-13)


@pytest.mark.parametrize("sorter", ["counting", "numpy"])
def test_index_mode_equals_stable_argsort_reference_code(sorter, monkeypatch):
    """The classic reference loop (stable argsort of distances, cumulative precision) on many ties.

    6000 items, so the engine uses its O(N) counting sort (pandas' groupsort_indexer) when available;
    the ``numpy`` case forces the numpy radix-argsort fallback."""
    if sorter == "numpy":
        monkeypatch.setattr(E, "_counting_sorter", lambda: None)
    rng = np.random.default_rng(3)
    qc, dc, ql, dl = random_problem(rng, 20, 6000, 16, n_labels=8, density=0.15)
    dist = M.hamming_distances(qc, dc)
    np.testing.assert_array_equal(dist[:3], ref_distances(qc[:3], dc))
    rel = M.graded_relevance(ql, dl) > 0
    for topk in (None, 100, 2500):
        ap_ref = []
        for i in range(len(qc)):
            g = rel[i][np.argsort(dist[i], kind="stable")][:topk]
            hits = np.cumsum(g)
            ap_ref.append(float(np.sum(hits[g] / (np.flatnonzero(g) + 1.0)) / g.sum()) if g.sum() else 0.0)
        got = M.average_precision(qc, dc, ql, dl, k=topk, ties="index")
        np.testing.assert_allclose(got, ap_ref, rtol=1e-13, atol=0)


@pytest.mark.parametrize("nbits", [8, 256])
@pytest.mark.parametrize("sorter", ["counting", "numpy"])
def test_deterministic_ties_on_a_larger_database(sorter, nbits, monkeypatch):
    if sorter == "numpy":
        monkeypatch.setattr(E, "_counting_sorter", lambda: None)
    rng = np.random.default_rng(31)
    qc, dc, ql, dl = random_problem(rng, 4, 5000, nbits, n_labels=5)
    for ties in ("index", "optimistic", "pessimistic"):
        for k in (None, 60, 4500):
            ref = ref_all(qc, dc, ql, dl, ties, k, "min_k_total")
            got = engine_values(qc, dc, ql, dl, ties, k, "min_k_total")
            np.testing.assert_allclose(got["ap"], ref["ap"], rtol=1e-12)
            if k is not None:
                assert got["ndcg"] == pytest.approx(ref["ndcg"].mean(), abs=1e-13)
                assert got["p"] == pytest.approx(ref["p"].mean(), abs=1e-13)


def test_counting_sorter_is_checked():
    sorter = E._counting_sorter()
    if sorter is not None:
        key = np.random.default_rng(0).integers(0, 65, 10_000).astype(np.intp)
        np.testing.assert_array_equal(sorter(key, 65)[0], np.argsort(key, kind="stable"))


# --------------------------------------------------------------------------------------------------
# expected ties: exact enumeration, Monte Carlo, ordering, sklearn
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("labels", ["single", "multi"])
def test_expected_equals_average_over_all_tie_orderings(labels):
    # Tiny problems (7 database items, 4-bit-like spread via 8-bit codes with few set bits) so that
    # every ordering of every tie group can be enumerated; the engine must match to float precision.
    rng = np.random.default_rng(7 if labels == "single" else 8)
    nq, ndb = 8, 7
    qc = np.packbits(rng.random((nq, 8)) < 0.15, axis=1)
    dc = np.packbits(rng.random((ndb, 8)) < 0.15, axis=1)
    if labels == "single":
        ql, dl = rng.integers(0, 2, nq), rng.integers(0, 2, ndb)
    else:
        ql = (rng.random((nq, 3)) < 0.5).astype(np.uint8)
        dl = (rng.random((ndb, 3)) < 0.5).astype(np.uint8)
    dist, gain = ref_distances(qc, dc), ref_gains(ql, dl)
    assert max(len(g) for q in range(nq) for g in tie_groups(dist[q])) >= 3  # real ties
    for k in (None, 1, 2, 3, 5, 10):
        for norm in NORMS if k is not None else ("retrieved",):
            ref = [ref_expected_exact(dist[q], gain[q], k, norm) for q in range(nq)]
            got = engine_values(qc, dc, ql, dl, "expected", k, norm)
            np.testing.assert_allclose(got["ap"], [r["ap"] for r in ref], rtol=1e-12, atol=1e-14)
            if k is not None:
                assert got["p"] == pytest.approx(np.mean([r["p"] for r in ref]), abs=1e-13)
                assert got["r"] == pytest.approx(np.mean([r["r"] for r in ref]), abs=1e-13)
                assert got["ndcg"] == pytest.approx(np.mean([r["ndcg"] for r in ref]), abs=1e-13)


def test_expected_matches_monte_carlo_over_random_tie_orders():
    # 2000 random tie orders per query; tolerance: 5 standard errors of the Monte Carlo mean (computed
    # from the sample) plus 1e-9, per query and metric. With 6 queries x 8 values, a false failure has
    # probability ~1e-5.
    rng = np.random.default_rng(21)
    nq, ndb, n_perm = 6, 40, 2000
    qc, dc, ql, dl = random_problem(rng, nq, ndb, 8, n_labels=4, density=0.3)
    dist, gain = ref_distances(qc, dc), ref_gains(ql, dl)
    ks = (5, 17)
    engine = {("all", "ap"): M.average_precision(qc, dc, ql, dl)}
    for k in ks:
        for norm in NORMS:
            engine[(k, norm)] = M.average_precision(qc, dc, ql, dl, k=k, ap_norm=norm)
    counts = M.hamming_distance_counts(qc, dc, ql, dl, graded=True)
    for k in ks:
        engine[(k, "p")], engine[(k, "r")] = M.precision_recall_from_counts(counts, k)
        engine[(k, "ndcg")] = M.ndcg_from_counts(counts, k)
    for q in range(nq):
        samples: dict = {key: [] for key in engine}
        for _ in range(n_perm):
            order = np.lexsort((rng.random(ndb), dist[q]))  # random order inside every tie group
            g = gain[q][order]
            samples[("all", "ap")].append(ref_ranked(g, None)["ap"])
            for k in ks:
                res = {norm: ref_ranked(g, k, norm) for norm in NORMS}
                for norm in NORMS:
                    samples[(k, norm)].append(res[norm]["ap"])
                for key in ("p", "r", "ndcg"):
                    samples[(k, key)].append(res["retrieved"][key])
        for key, vals in samples.items():
            vals = np.array(vals)
            tol = 5 * vals.std(ddof=1) / math.sqrt(n_perm) + 1e-9
            assert abs(vals.mean() - engine[key][q]) <= tol, (q, key, vals.mean(), engine[key][q], tol)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}bit-{c[3][0]}")
def test_optimistic_expected_pessimistic_order(case):
    qc, dc, ql, dl = _case_problem(case, 2)
    vals = {t: M.evaluate_retrieval(qc, dc, ql, dl, topk=(3, 10, 35), ties=t, ap_norm="min_k_total").values for t in ("optimistic", "expected", "pessimistic")}
    for key in vals["expected"]:
        if key.startswith(("map", "p@", "r@", "ndcg")) and not key.startswith("p@r"):
            assert vals["optimistic"][key] >= vals["expected"][key] - 1e-12, key
            assert vals["expected"][key] >= vals["pessimistic"][key] - 1e-12, key
    # the same for AP@k normalised by the total number of relevant items (a fixed denominator)
    for k in (3, 10):
        o, e, p = (M.average_precision(qc, dc, ql, dl, k=k, ties=t, ap_norm="total") for t in ("optimistic", "expected", "pessimistic"))
        assert np.all(o >= e - 1e-12) and np.all(e >= p - 1e-12)


def test_map_all_matches_sklearn_without_ties():
    # sklearn's average_precision_score treats tied scores as ONE threshold (precision at the end of the
    # tie group), which is not the tie-aware expectation. Both are the standard AP when no two
    # database items are at the same distance, so we build such data: item i differs from the query in
    # exactly d_i bits with all d_i distinct (one query per problem).
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    for trial in range(5):
        ndb, nbits = 60, 256
        qbits = rng.random(nbits) < 0.5
        dists = rng.permutation(np.arange(ndb) * 3 + 1)
        db = np.array([qbits ^ (np.isin(np.arange(nbits), rng.choice(nbits, d, replace=False))) for d in dists])
        qc, dc = np.packbits(qbits[None], axis=1), np.packbits(db, axis=1)
        ql = (rng.random((1, 6)) < 0.5).astype(np.uint8)
        ql[0, trial % 6] = 1
        dl = (rng.random((ndb, 6)) < 0.3).astype(np.uint8)
        rel = (dl @ ql[0]) > 0
        expected_ap = average_precision_score(rel, -dists)
        for ties in M.TIE_MODES:
            assert M.mean_average_precision(qc, dc, ql, dl, ties=ties) == pytest.approx(expected_ap, abs=1e-13)


@pytest.mark.parametrize("labels", ["single", "multi"])
def test_expected_ndcg_matches_sklearn_tie_averaging(labels):
    # sklearn.metrics.ndcg_score(ignore_ties=False) gives every item of a tie group the group's mean gain,
    # which is the expected DCG over random tie orders; with gains = shared labels they must agree.
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(4)
    if labels == "single":
        qc, dc, ql, dl = random_problem(rng, 25, 120, 8, n_classes=5)
    else:
        qc, dc, ql, dl = random_problem(rng, 25, 120, 8, n_labels=6, density=0.3)
    dist, gain = ref_distances(qc, dc), ref_gains(ql, dl)
    for k in (1, 5, 20, 119, 120, 500):
        ours = M.ndcg_at_k(qc, dc, ql, dl, k)
        theirs = ndcg_score(gain, -dist.astype(float), k=min(k, 120), ignore_ties=False)
        assert ours == pytest.approx(theirs, abs=1e-13)


# --------------------------------------------------------------------------------------------------
# edge cases
# --------------------------------------------------------------------------------------------------


def test_query_without_relevant_items_counts_as_zero():
    rng = np.random.default_rng(9)
    qc, dc, _, _ = random_problem(rng, 3, 20, 8, n_classes=2)
    ql, dl = np.array([0, 1, 7]), rng.integers(0, 2, 20)  # class 7 has no database item
    for ties in M.TIE_MODES:
        ap = M.average_precision(qc, dc, ql, dl, ties=ties)
        assert ap[2] == 0.0 and ap[:2].min() > 0
        res = M.evaluate_retrieval(qc, dc, ql, dl, topk=(5,), ties=ties)
        assert res.values["no_relevant"] == pytest.approx(1 / 3)
        assert res.per_query_ap[2] == 0.0


@pytest.mark.parametrize("ties", M.TIE_MODES)
def test_identical_codes_everywhere(ties):
    # every database item at distance 0: one tie group; index = database order, expected = mean over orders
    q = np.zeros((2, 1), np.uint8)
    db = np.zeros((7, 1), np.uint8)
    ql, dl = np.array([0, 1]), np.array([1, 0, 0, 1, 0, 1, 1])
    dist, gain = ref_distances(q, db), ref_gains(ql, dl)
    for k in (None, 2, 4, 10):
        for norm in NORMS:
            if ties == "expected":
                ref = [ref_expected_exact(dist[i], gain[i], k, norm)["ap"] for i in range(2)]
            else:
                ref = ref_all(q, db, ql, dl, ties, k, norm)["ap"]
            np.testing.assert_allclose(M.average_precision(q, db, ql, dl, k=k, ties=ties, ap_norm=norm), ref, rtol=1e-12)
    res = M.evaluate_retrieval(q, db, ql, dl, topk=(3,), ties=ties, radius=0)
    assert res.values["p@r0"] == pytest.approx(np.mean([3 / 7, 4 / 7]))
    assert res.values["empty_ball@r0"] == 0.0


def test_k_larger_than_database_is_clipped():
    rng = np.random.default_rng(12)
    qc, dc, ql, dl = random_problem(rng, 5, 30, 8, n_classes=3)
    for ties in M.TIE_MODES:
        big = M.evaluate_retrieval(qc, dc, ql, dl, topk=(30, 10_000), ties=ties).values
        for name in ("map", "p", "r", "ndcg"):
            assert big[f"{name}@10000"] == pytest.approx(big[f"{name}@30"], abs=1e-14)
        assert big["map@10000"] == pytest.approx(big["map@all"], abs=1e-14)
        assert big["r@10000"] == pytest.approx(1.0)  # every query has relevant items here


def test_empty_ball_and_pr_curve_conventions():
    rng = np.random.default_rng(13)
    qc, dc, ql, dl = random_problem(rng, 40, 25, 16, n_labels=4)
    dist, rel = ref_distances(qc, dc), ref_gains(ql, dl) > 0
    curve = M.pr_curve(qc, dc, ql, dl)
    skip = M.pr_curve(qc, dc, ql, dl, empty_ball="skip")
    for r in range(17):
        inside = dist <= r
        ret, hit = inside.sum(1), (inside & rel).sum(1)
        prec = np.array([h / n if n else 0.0 for h, n in zip(hit, ret)])
        rec = np.array([h / t if t else 0.0 for h, t in zip(hit, rel.sum(1))])
        assert curve["precision"][r] == pytest.approx(prec.mean(), abs=1e-14)
        assert curve["recall"][r] == pytest.approx(rec.mean(), abs=1e-14)
        assert curve["empty_ball"][r] == pytest.approx((ret == 0).mean(), abs=1e-14)
        nonempty = ret > 0
        assert skip["precision"][r] == pytest.approx(prec[nonempty].mean() if nonempty.any() else 0.0, abs=1e-14)
        if r == 2:
            p2, e2 = M.precision_within_radius(qc, dc, ql, dl, radius=2)
            assert p2 == pytest.approx(prec.mean(), abs=1e-14) and e2 == pytest.approx((ret == 0).mean())
            assert 0 < e2 < 1  # the case really has empty balls
    assert curve["recall"][-1] == pytest.approx((rel.sum(1) > 0).mean())


def test_evaluate_retrieval_composes_the_individual_functions():
    rng = np.random.default_rng(14)
    qc, dc, ql, dl = random_problem(rng, 20, 90, 16, n_labels=5)
    for ties in M.TIE_MODES:
        res = M.evaluate_retrieval(qc, dc, ql, dl, topk=(10, 40), ties=ties, ap_norm="min_k_total", radius=3)
        v = res.values
        assert v["map@all"] == pytest.approx(M.mean_average_precision(qc, dc, ql, dl, ties=ties), abs=1e-14)
        assert v["map@10"] == pytest.approx(M.mean_average_precision(qc, dc, ql, dl, k=10, ties=ties, ap_norm="min_k_total"), abs=1e-14)
        p, r = M.precision_recall_at_k(qc, dc, ql, dl, 40, ties=ties)
        assert (v["p@40"], v["r@40"]) == pytest.approx((p, r), abs=1e-14)
        assert v["ndcg@40"] == pytest.approx(M.ndcg_at_k(qc, dc, ql, dl, 40, ties=ties), abs=1e-14)
        assert v["p@r3"] == pytest.approx(M.precision_within_radius(qc, dc, ql, dl, 3)[0], abs=1e-14)
        assert set(res.pr_curve) >= {"radius", "precision", "recall"} and len(res.pr_curve["precision"]) == 17
        assert res.per_query_ap.shape == (20,)
        assert {"ties", "ap_norm", "pr_empty_ball", "p@r_empty_ball"} <= set(res.conventions)
        both = M.mean_average_precision(qc, dc, ql, dl, k=[None, 10], ties=ties, ap_norm="min_k_total")
        np.testing.assert_allclose(both, [v["map@all"], v["map@10"]], atol=1e-14)
    empty = M.evaluate_retrieval(qc, dc, ql, dl, topk=())
    assert set(empty.values) == {"map@all", "p@r2", "empty_ball@r2", "no_relevant"}


def test_label_formats_are_equivalent():
    rng = np.random.default_rng(15)
    qc, dc, ql, dl = random_problem(rng, 10, 50, 8, n_classes=4)
    one_hot = lambda y: np.eye(4, dtype=np.uint8)[y]  # noqa: E731
    ref = M.evaluate_retrieval(qc, dc, ql, dl, topk=(5,)).values
    for a, b in [(one_hot(ql), one_hot(dl)), (one_hot(ql).astype(bool), dl), (ql, one_hot(dl).astype(np.float32))]:
        assert M.evaluate_retrieval(qc, dc, a, b, topk=(5,)).values == pytest.approx(ref, abs=1e-14)


def test_expected_ap_large_groups_numerically_stable():
    # many items per tie group (8-bit codes, 20k items) and a cut-off inside a group: compare the
    # closed forms with a direct float summation of their defining sums.
    rng = np.random.default_rng(16)
    qc, dc, ql, dl = random_problem(rng, 3, 20_000, 8, n_classes=3)
    counts = M.hamming_distance_counts(qc, dc, ql, dl)
    for k in (None, 1234):
        got = M.average_precision_from_counts(counts, k, "total")
        for q in range(3):
            n, r = counts.items[q], counts.relevant[q]
            ke = 20_000 if k is None else k
            big_n = big_r = 0
            s = 0.0
            for d in range(9):
                cut = min(max(ke - big_n, 0), n[d])
                if r[d] and cut:
                    a = (r[d] - 1) / (n[d] - 1) if n[d] > 1 else 0.0
                    j = np.arange(1, cut + 1)
                    s += r[d] / n[d] * math.fsum((big_r + 1 + (j - 1) * a) / (big_n + j))
                big_n, big_r = big_n + n[d], big_r + r[d]
            assert got[q] == pytest.approx(s / r.sum(), rel=1e-12)


def test_expected_ap_retrieved_with_large_tie_groups_monte_carlo():
    # AP@K normalised by the retrieved relevant items is a ratio of random quantities when K cuts a tie
    # group; the engine's exact hypergeometric expectation against 4000 random rankings (each tie group
    # shuffled independently). Tolerance: 5 Monte Carlo standard errors.
    n = np.array([[3, 40, 700, 1500, 800, 0, 0, 0, 0]])
    r = np.array([[1, 10, 200, 300, 50, 0, 0, 0, 0]])
    counts = M.DistanceCounts(items=n, relevant=r, gain=r.copy(), gain_hist=np.array([[n.sum() - r.sum(), r.sum()]]))
    rng = np.random.default_rng(0)
    samples = 4000
    groups = [np.r_[np.ones(rr, bool), np.zeros(nn - rr, bool)] for nn, rr in zip(n[0], r[0]) if nn]
    rankings = np.stack([np.concatenate([rng.permutation(g) for g in groups]) for _ in range(samples)])
    for k in (30, 500, 1000, 2999):
        top = rankings[:, :k]
        hits = np.cumsum(top, axis=1)
        prec_sum = (top * hits / np.arange(1, k + 1)).sum(axis=1)
        found = top.sum(axis=1)
        ap = np.where(found > 0, prec_sum / np.maximum(found, 1), 0.0)
        got = M.average_precision_from_counts(counts, k, "retrieved")[0]
        tol = 5 * ap.std(ddof=1) / math.sqrt(samples) + 1e-12
        assert abs(ap.mean() - got) <= tol, (k, ap.mean(), got, tol)


# --------------------------------------------------------------------------------------------------
# class groups
# --------------------------------------------------------------------------------------------------


def test_class_groups_and_map_by_group():
    counts = np.array([500, 3, 120, 40, 40, 7])
    groups = M.class_groups(counts, head_frac=1 / 3, tail_frac=1 / 3)
    # decreasing frequency: 0 (500), 2 (120), 3 (40), 4 (40, later index), 5 (7), 1 (3)
    assert list(groups) == ["head", "tail", "head", "medium", "medium", "tail"]
    assert list(M.class_groups_by_threshold(counts, head_min=100, tail_max=20)) == ["head", "tail", "head", "medium", "medium", "tail"]
    ap = np.array([0.9, 0.1, 0.5, 0.7, 0.3])
    query_class = np.array([0, 1, 3, 2, 5])
    res = M.map_by_group(ap, groups[query_class])
    assert list(res) == ["head", "medium", "tail"]
    assert res == pytest.approx({"head": 0.8, "medium": 0.5, "tail": 0.2})
    with pytest.raises(M.MetricsError):
        M.map_by_group(ap, groups[:3])
    with pytest.raises(M.MetricsError):
        M.class_groups(counts, head_frac=0.8, tail_frac=0.5)


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------


def test_bad_input_raises_project_errors():
    rng = np.random.default_rng(17)
    qc, dc, ql, dl = random_problem(rng, 4, 10, 16, n_labels=3)
    assert issubclass(M.MetricsError, HashBenchError)
    bad = [
        (dict(query_codes=qc.astype(np.int8)), "dtype"),
        (dict(query_codes=np.unpackbits(qc, axis=1).astype(np.float32)), "pack"),
        (dict(db_codes=dc[:, :1]), "same code length"),
        (dict(db_codes=dc[0]), "shape"),
        (dict(query_codes=qc[:0]), "empty"),
        (dict(query_codes=np.zeros((4, 0), np.uint8)), "multiple of 8"),
        (dict(query_labels=ql[:3]), "rows"),
        (dict(db_labels=dl[:, :2]), "label columns"),
        (dict(db_labels=dl * 2), "only 0 and 1"),
        (dict(query_labels=np.array([0, 1, -1, 0]), db_labels=np.zeros(10, int)), "non-negative"),
        (dict(query_labels=np.array([0.0, 1, 1, 0]), db_labels=np.zeros(10, int)), "integer class ids"),
        (dict(query_labels=np.array([0, 1, 5, 0])), "out of range"),
        (dict(ties="random"), "tie mode"),
        (dict(ap_norm="k"), "ap_norm"),
        (dict(topk=(0,)), "positive integer"),
        (dict(radius=-1), "radius"),
        (dict(block_size=0), "block_size"),
        (dict(n_threads=0), "n_threads"),
    ]
    for override, message in bad:
        kw = dict(query_codes=qc, db_codes=dc, query_labels=ql, db_labels=dl)
        kw.update(override)
        args = [kw.pop(n) for n in ("query_codes", "db_codes", "query_labels", "db_labels")]
        with pytest.raises(M.MetricsError, match=message):
            M.evaluate_retrieval(*args, **kw)
    with pytest.raises(M.MetricsError, match="cut-off"):
        M.average_precision(qc, dc, ql, dl, k=2.5)
    with pytest.raises(M.MetricsError, match="cut-off"):
        M.precision_recall_at_k(qc, dc, ql, dl, None)
    with pytest.raises(M.MetricsError, match="empty_ball"):
        M.pr_curve(qc, dc, ql, dl, empty_ball="nan")


# --------------------------------------------------------------------------------------------------
# compiled kernel == numpy path, bit for bit
# --------------------------------------------------------------------------------------------------


def _all_outputs(qc, dc, ql, dl, ties, backend, monkeypatch, **kw):
    monkeypatch.setenv("HASHBENCH_METRICS_BACKEND", backend)
    res = M.evaluate_retrieval(qc, dc, ql, dl, topk=(1, 7, 150, 10_000), ties=ties, **kw)
    ap = M.average_precision(qc, dc, ql, dl, k=[None, 5, 99, 400], ties=ties, **kw)
    ap_cut = M.average_precision(qc, dc, ql, dl, k=[3, 60], ties=ties, ap_norm="min_k_total", **kw)
    nd = M.ndcg_at_k(qc, dc, ql, dl, 33, ties=ties, **kw)
    pr = M.precision_recall_at_k(qc, dc, ql, dl, 77, ties=ties, **kw)
    counts = M.hamming_distance_counts(qc, dc, ql, dl, graded=True, **kw)
    return res, ap, ap_cut, nd, pr, counts


@pytest.mark.skipif(not _HAVE_KERNEL, reason="compiled kernel not built")
@pytest.mark.parametrize("nbits", [8, 16, 24, 64, 72, 128, 256])
@pytest.mark.parametrize("labels", ["single", "multi", "multi-wide"])
@pytest.mark.parametrize("metrics_backend", ["numpy"], indirect=True)  # it switches backends itself
def test_kernel_and_numpy_paths_are_bit_identical(nbits, labels, monkeypatch, metrics_backend):
    rng = np.random.default_rng(nbits * 7 + len(labels))
    if labels == "single":
        qc, dc, ql, dl = random_problem(rng, 9, 1500, nbits, n_classes=4)
    else:
        qc, dc, ql, dl = random_problem(rng, 9, 1500, nbits, n_labels=6 if labels == "multi" else 70, density=0.1)
    # many ties: the database repeats a few codes, and one query equals a database item
    dc = dc[rng.integers(0, 40, dc.shape[0])]
    qc[0] = dc[5]
    for ties in M.TIE_MODES:
        a = _all_outputs(qc, dc, ql, dl, ties, "numpy", monkeypatch)
        b = _all_outputs(qc, dc, ql, dl, ties, "kernel", monkeypatch, n_threads=2, block_size=2)
        assert a[0].values == b[0].values
        np.testing.assert_array_equal(a[0].per_query_ap, b[0].per_query_ap)
        for key in a[0].pr_curve:
            np.testing.assert_array_equal(a[0].pr_curve[key], b[0].pr_curve[key])
        for x, y in zip(a[1:5], b[1:5]):
            np.testing.assert_array_equal(x, y)
        for f in ("items", "relevant", "gain", "gain_hist"):
            np.testing.assert_array_equal(getattr(a[5], f), getattr(b[5], f))


def test_backend_selection(monkeypatch):
    from pipeline.eval import kernels

    monkeypatch.setenv("HASHBENCH_METRICS_BACKEND", "numpy")
    assert kernels.backend() == "numpy"
    monkeypatch.setenv("HASHBENCH_METRICS_BACKEND", "bogus")
    with pytest.raises(HashBenchError, match="HASHBENCH_METRICS_BACKEND"):
        kernels.backend()
    monkeypatch.setenv("HASHBENCH_METRICS_BACKEND", "auto")
    assert kernels.backend() == ("kernel" if _HAVE_KERNEL else "numpy")
    monkeypatch.setenv("HASHBENCH_METRICS_BACKEND", "kernel")
    if _HAVE_KERNEL:
        assert kernels.backend() == "kernel"
    else:
        with pytest.raises(HashBenchError, match="not built"):
            kernels.backend()
