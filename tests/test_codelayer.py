"""Paper 000's code layer (pipeline/eval/codelayer.py, pipeline/eval/multiindex.py) against hand-computed
cases and brute force: bit ordering with planted important bits, multi-index = exhaustive search at a
full probe budget, a hand-computed bucket case, the drift trigger on the incremental-class split."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.config import CodeLayerConfig
from pipeline.data.incremental import has_new_class, split_classes
from pipeline.eval.codelayer import (
    DriftMonitor,
    binary_entropy,
    bit_stats,
    drift_threshold,
    evaluate_code_layer,
    importance_order,
    probe_radius,
    served_metrics,
    training_rows,
)
from pipeline.eval.multiindex import MultiIndex, default_segments, probe_score, segment_bounds


def planted(n=300, nbits=16, n_classes=4, seed=0):
    """Labels and codes where bits 3 and 11 are the class's bits (informative, balanced), bit 5 is constant
    (+1 everywhere: no information) and the rest are fair coins."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    labels = np.eye(n_classes, dtype=np.uint8)[y]
    codes = rng.choice([-1, 1], size=(n, nbits)).astype(np.int8)
    codes[:, 3] = np.where(y % 2 == 0, 1, -1)
    codes[:, 11] = np.where(y // 2 == 0, 1, -1)
    codes[:, 5] = 1
    return labels, codes


def test_bit_order_puts_planted_bits_first():
    labels, codes = planted()
    stats = bit_stats({"image": codes}, labels, [("image", "image")])
    order = importance_order(stats.importance)
    assert set(order[:2].tolist()) == {3, 11}
    assert stats.balance[5] == 0.0 and stats.importance[5] == 0.0  # constant bit: no balance, no importance
    # bit 3 agrees on every relevant pair: zero disagreement; a coin bit disagrees on about half
    assert stats.disagreement[3] == 0.0 and 0.4 < stats.disagreement[0] < 0.6


def test_correlation_matches_brute_force_over_pairs():
    rng = np.random.default_rng(1)
    labels = (rng.random((40, 3)) < 0.4).astype(np.uint8)
    bi, bt = rng.choice([-1, 1], (40, 8)), rng.choice([-1, 1], (40, 8))
    stats = bit_stats({"image": bi, "text": bt}, labels, [("image", "text"), ("text", "image")])
    s = np.array([[float((labels[i] & labels[j]).any()) for j in range(40)] for i in range(40)])
    for b in range(8):
        c = [np.corrcoef((x[:, None, b] * y[None, :, b]).ravel(), s.ravel())[0, 1] for x, y in ((bi, bt), (bt, bi))]
        assert stats.correlation[b] == pytest.approx(np.mean(c), abs=1e-12)
        dis = [((x[:, None, b] != y[None, :, b]) & (s > 0)).sum() / (s > 0).sum() for x, y in ((bi, bt), (bt, bi))]
        assert stats.disagreement[b] == pytest.approx(np.mean(dis), abs=1e-12)
    assert binary_entropy([0.5, 1.0, 0.25]) == pytest.approx([1.0, 0.0, 0.8112781244591328])


def test_segments_and_default_m():
    assert segment_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert default_segments(32, 2173) == 3  # round(32 / log2(2173) = 2.89)
    assert default_segments(16, 2173) == 1


def test_hand_computed_buckets():
    # 4-bit codes, 2 tables of 2 bits; key = bit0 + 2 * bit1 of each substring (bit = code > 0)
    db = np.array([[1, 1, -1, -1], [1, -1, -1, -1], [-1, -1, 1, 1], [1, 1, 1, 1]])
    ix = MultiIndex(db, segments=2)
    keys0, _, ids0 = ix.tables[0]
    assert keys0.tolist() == [0, 1, 3] and ids0.tolist() == [2, 1, 0, 3]  # item 2 key 0, item 1 key 1, items 0, 3 key 3
    keys1, _, ids1 = ix.tables[1]
    assert keys1.tolist() == [0, 3] and ids1.tolist() == [0, 1, 2, 3]
    assert sorted(ix._lookup(0, np.array([3, 2]))) == [0, 3]
    # query 1,1,-1,-1 = item 0: distances 0, 1, 4, 2
    d, ids, cand = ix.search_exact(np.array([[1, 1, -1, -1]]), k=2)
    assert ids[0].tolist() == [0, 1] and d[0].tolist() == [0, 1]
    # radius 0 finds items 0, 3 (table 0) and 0, 1 (table 1); bound after radius 0 is 2 > d(item 1) = 1: stop
    assert cand[0] == 3
    # score of flipping bit 0 of a 2-bit table with p = (0.1, 0.3): log 0.1 + log 0.7
    assert probe_score(1, np.log([0.1, 0.3]), np.log([0.9, 0.7])) == pytest.approx(np.log(0.1) + np.log(0.7))


@pytest.mark.parametrize("nbits,m,n", [(16, 2, 400), (24, 3, 300), (13, 4, 200)])
def test_multi_index_exact_equals_exhaustive(nbits, m, n):
    rng = np.random.default_rng(nbits)
    centers = rng.choice([-1, 1], (5, nbits))
    db = centers[rng.integers(0, 5, n)] * np.where(rng.random((n, nbits)) < 0.15, -1, 1)
    q = centers[rng.integers(0, 5, 30)] * np.where(rng.random((30, nbits)) < 0.15, -1, 1)
    order = rng.permutation(nbits)
    ix = MultiIndex(db, segments=m, order=order)
    for k in (1, 7, 50, n):
        d, ids, _ = ix.search_exact(q, k)
        brute = np.count_nonzero((q[:, None, :] > 0) != (db[None, :, :] > 0), axis=2)
        ref = np.sort(brute, axis=1)[:, :k]
        assert (d == ref).all()  # the k smallest distances, exactly
        assert (np.take_along_axis(brute, ids, 1) == d).all()  # and the ids have them
        # the budgeted search with every probe and no stop is exhaustive too
        plan = ix.plan(np.full(nbits, 0.2), radius=nbits)
        d2, _, c2 = ix.search_budget(q, k, plan, n_candidates=n + 1)
        assert (d2 == ref).all() and (c2 == n).all()


def test_plan_orders_loss_sensitive_flips_first():
    ix = MultiIndex(np.random.default_rng(0).choice([-1, 1], (50, 8)), segments=2)
    p = np.array([0.05, 0.4, 0.05, 0.05, 0.3, 0.3, 0.3, 0.3])
    plan = ix.plan(p, radius=1)
    # first: table 0 unflipped (P = .95^3 * .6 > table 1's .7^4); then, of the 1-flips, bit 1 (p = 0.4) first
    assert (plan.tables[0], plan.masks[0]) == (0, 0)
    one_flip_t0 = [mk for t, mk in zip(plan.tables, plan.masks) if t == 0 and mk != 0]
    assert one_flip_t0[0] == 2  # bit 1 of table 0
    assert len(plan.masks) == 2 * (1 + 4)


def test_probe_radius_and_served_metrics_hand_case():
    labels, codes = planted(n=120)
    order = importance_order(bit_stats({"image": codes}, labels, [("image", "image")]).importance)
    assert probe_radius({"image": codes}, labels, [("image", "image")], order, m=16, target_recall=0.5) == 0
    ql = np.array([[1, 0], [0, 1]])
    dl = np.array([[1, 0], [0, 1], [1, 1], [0, 1]])
    ids = np.array([[1, 0, -1], [3, 0, 2]])
    m = served_metrics(ids, ql, dl)
    # q0: relevant db 0 and 2; ranks: 1 no, 2 yes -> AP = 1/2; recall 1/2
    # q1: relevant db 1, 2, 3; ranks: yes, no, yes -> AP = (1 + 2/3) / 2; recall 2/3
    assert m["ap"] == pytest.approx([0.5, (1 + 2 / 3) / 2])
    assert m["recall"] == pytest.approx([0.5, 2 / 3])
    ideal0 = 1 + 1 / np.log2(3)
    assert m["ndcg"][0] == pytest.approx((1 / np.log2(3)) / ideal0)


def test_training_rows():
    assert training_rows(np.array([5, 2]), np.array([2, 3, 5])).tolist() == [2, 0]
    with pytest.raises(Exception, match="not in the database"):
        training_rows(np.array([7]), np.array([2, 3]))


def _incremental_stream(planted_drift: bool, seed: int = 0):
    """Codes of the original classes as reference, and a stream of insertions: the increment's items
    (new classes; with planted_drift their codes set bits 0-3 to +1) or, without drift, more items of the
    original classes drawn the same way."""
    rng = np.random.default_rng(seed)
    n, nbits, c = 3000, 16, 10
    labels = np.eye(c, dtype=np.uint8)[rng.integers(0, c, n)]
    classes = split_classes(c, 3, seed=0)
    new = has_new_class(labels, classes)
    codes = rng.choice([-1, 1], (n, nbits)).astype(np.int8)
    old_idx, new_idx = np.flatnonzero(~new), np.flatnonzero(new)
    ref, rest = old_idx[:1200], old_idx[1200:]
    if planted_drift:
        stream = codes[new_idx].copy()
        stream[:, :4] = np.where(rng.random((len(new_idx), 4)) < 0.9, 1, -1)
    else:
        stream = codes[rest]
    return codes[ref], stream


def test_drift_triggers_with_planted_drift_and_reorders_only_the_index():
    ref, stream = _incremental_stream(True)
    calls = []
    mon = DriftMonitor(ref, correlation=np.ones(16), window=200, on_drift=calls.append)
    first_order = mon.order.copy()
    events = mon.insert(stream)
    assert events and events[0]["position"] == 200  # the first full window already shows the planted shift
    assert events[0]["statistic"] > 0.3 > mon.threshold
    assert len(calls) == len(events)
    # bits 0-3 are now nearly constant: low balance, so they move behind the balanced bits
    assert set(calls[0][-4:].tolist()) == {0, 1, 2, 3} and not np.array_equal(calls[0], first_order)
    assert len(events) == 1  # after the re-order the window is the new reference: no repeated trigger


def test_drift_does_not_trigger_without_drift():
    ref, stream = _incremental_stream(False)
    mon = DriftMonitor(ref, correlation=np.ones(16), window=200)
    assert mon.insert(stream) == []
    assert mon.threshold == pytest.approx(drift_threshold(16, 200, 1200, 0.01))


def test_evaluate_code_layer_on_stored_codes():
    labels, codes = planted(n=260, nbits=16)
    packed = {"query": {"image": np.packbits(codes[:60] > 0, 1)}, "database": {"image": np.packbits(codes[60:] > 0, 1)}}
    rows = np.arange(200)
    cfg = CodeLayerConfig(k=20, latency_queries=5, segments=2)
    values, details = evaluate_code_layer(packed, labels[:60], labels[60:], rows, [("image", "image")], cfg)
    assert values["i2i/code/index/mih_exact/recall_at_k"] == 1.0
    assert set(details["order"][:2]) == {3, 11}
    # the two planted bits alone rank by class exactly: mAP@all of the first 8 ordered bits beats the stored order's
    assert values["i2i/prefix8/map@all"] > values["i2i/prefix8_natural/map@all"]
    assert 0 <= values["i2i/code/r@20"] <= values["i2i/plain/r@20"] + 1e-9 or values["i2i/code/index/codelayer/recall_at_k"] < 1


def test_evaluate_stage_adds_the_code_view(tmp_path):
    from pipeline.config import EvalConfig
    from pipeline.eval.stored import CODE_VIEW, StoredTrial, conventions_for, evaluate_trials, spec_eval_key, view_metrics

    labels, codes = planted(n=200, nbits=16)
    packed = {"query": {"image": np.packbits(codes[:40] > 0, 1)}, "database": {"image": np.packbits(codes[40:] > 0, 1)}}
    plain = EvalConfig(topk=[10], random_baseline=False)
    with_code = plain.model_copy(update={"code_layer": CodeLayerConfig(k=10, latency_queries=3)})
    assert spec_eval_key(EvalConfig.model_validate(plain.model_dump(mode="json"))) == spec_eval_key(plain)
    assert "code_layer" not in plain.model_dump()  # unset: evaluation keys of existing settings unchanged
    trials = [StoredTrial("a", "r1", "d", "p", plain), StoredTrial("b", "r2", "d", "p", with_code)]
    out = tmp_path / "s.json"
    evaluate_trials(trials, out, conventions=conventions_for([None]), load_codes=lambda r: packed,
                    load_labels=lambda d, p: (labels[:40], labels[40:]), load_train_rows=lambda d, p: np.arange(160))
    import json

    res = json.loads(out.read_text())
    assert CODE_VIEW not in res["trials"]["a"]["views"] and CODE_VIEW in res["trials"]["b"]["views"]
    # the paper-convention views of both trials share their keys: the code layer is not part of them
    assert res["trials"]["a"]["views"]["paper:map@all/index"] == res["trials"]["b"]["views"]["paper:map@all/index"]
    code = view_metrics(res, "b", CODE_VIEW)
    assert code["i2i/code/index/mih_exact/recall_at_k"] == 1.0 and "i2i/plain/map@10" in code


def test_drift_reference_of_one_window_gets_its_own_threshold():
    ref, stream = _incremental_stream(True)
    mon = DriftMonitor(ref, correlation=np.ones(16), window=200)
    before = mon.threshold
    mon.insert(stream[:200])
    assert mon.threshold == pytest.approx(drift_threshold(16, 200, 200, 0.01)) and mon.threshold > before
