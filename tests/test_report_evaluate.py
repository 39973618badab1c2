"""The evaluate stage: metrics from stored codes, keyed by the evaluation settings, recomputed only when missing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.config import EvalConfig
from pipeline.core.errors import HashBenchError
from pipeline.eval.codes import pack_codes
from pipeline.eval.evaluate import evaluate_codes
from pipeline.eval.stored import (
    Convention,
    StoredTrial,
    conventions_for,
    evaluate_trials,
    read_codes,
    spec_eval_key,
    view_metrics,
)


def _problem(seed=0, n_q=30, n_db=120, bits=16, classes=4):
    rng = np.random.default_rng(seed)
    yq, yd = rng.integers(0, classes, n_q), rng.integers(0, classes, n_db)
    centers = rng.standard_normal((classes, bits))
    real = {
        "query": {"image": centers[yq] + 1.5 * rng.standard_normal((n_q, bits)), "text": centers[yq] + 1.5 * rng.standard_normal((n_q, bits))},
        "database": {"image": centers[yd] + 1.5 * rng.standard_normal((n_db, bits)), "text": centers[yd] + 1.5 * rng.standard_normal((n_db, bits))},
    }
    onehot = lambda y: np.eye(classes, dtype=np.uint8)[y]  # noqa: E731
    return real, onehot(yq), onehot(yd)


def _index_order_map(q, d, lq, ld):
    """Slow reference: stable sort by Hamming distance (index order in ties), AP over the full ranking."""
    aps = []
    for i in range(len(q)):
        dist = (q[i][None, :] != d).sum(1)
        order = np.argsort(dist, kind="stable")
        rel = ((lq[i][None, :] & ld[order]).sum(1) > 0).astype(float)
        if rel.sum() == 0:
            aps.append(0.0)
            continue
        hits = np.cumsum(rel)
        aps.append(float((hits / np.arange(1, len(rel) + 1) * rel).sum() / rel.sum()))
    return float(np.mean(aps))


def test_eval_key_is_canonical():
    a, b = EvalConfig(topk=[500, 100]), EvalConfig(topk=[100, 500])
    assert spec_eval_key(a) == spec_eval_key(b) and len(spec_eval_key(a)) == 64
    assert spec_eval_key(a) != spec_eval_key(EvalConfig(topk=[100]))
    assert spec_eval_key(a) != spec_eval_key(EvalConfig(topk=[100, 500], ties="index"))


def test_conventions_cover_each_cutoff_with_both_tie_rules():
    cs = conventions_for([None, 5000, None, 1000])
    assert [c.name for c in cs] == [
        "paper:map@all/index", "paper:map@all/expected", "paper:map@1000/index", "paper:map@1000/expected", "paper:map@5000/index", "paper:map@5000/expected"
    ]
    cfg = Convention(1000, "index").apply(EvalConfig(topk=[100], ap_norm="total"))
    assert (cfg.topk, cfg.ties, cfg.ap_norm, cfg.random_baseline) == ([1000], "index", "total", False)


def test_stored_evaluation_matches_bench_evaluation_and_a_slow_reference(tmp_path):
    real, lq, ld = _problem()
    packed = {p: {m: pack_codes(c) for m, c in mods.items()} for p, mods in real.items()}
    base = EvalConfig(topk=[50], random_baseline=False)
    trial = StoredTrial("toy/dcmh/16b/s0/abc", "run0", "toy", "standard", base)
    out = tmp_path / "eval.json"
    s = evaluate_trials([trial], out, conventions=conventions_for([None]), load_codes=lambda r: packed, load_labels=lambda d, p: (lq, ld))
    assert (s.computed, s.reused) == (3, 0)
    results = json.loads(out.read_text())
    prof = view_metrics(results, trial.key, "profile")
    ref = evaluate_codes(real, query_labels=lq, db_labels=ld, directions=[("image", "text"), ("text", "image")], cfg=base.model_copy(update={"index": base.index.model_copy(update={"kinds": []})}))
    for k, v in ref.flat_metrics().items():
        assert prof[k] == pytest.approx(v, abs=1e-12), k
    idx = view_metrics(results, trial.key, "paper:map@all/index")
    sign = {p: {m: np.where(c >= 0, 1, -1) for m, c in mods.items()} for p, mods in real.items()}
    assert idx["i2t/map@all"] == pytest.approx(_index_order_map(sign["query"]["image"], sign["database"]["text"], lq, ld), abs=1e-12)
    assert idx["t2i/map@all"] == pytest.approx(_index_order_map(sign["query"]["text"], sign["database"]["image"], lq, ld), abs=1e-12)
    assert view_metrics(results, trial.key, "paper:map@all/expected")["i2t/map@all"] == pytest.approx(prof["i2t/map@all"], abs=1e-12)


def test_only_missing_keys_are_computed(tmp_path):
    real, lq, ld = _problem(1)
    packed = {p: {m: pack_codes(c) for m, c in mods.items()} for p, mods in real.items()}
    calls = []

    def load(run_id):
        calls.append(run_id)
        return packed

    out = tmp_path / "eval.json"
    kw = dict(conventions=conventions_for([None]), load_codes=load, load_labels=lambda d, p: (lq, ld))
    t = lambda cfg: [StoredTrial("k", "r", "toy", "standard", cfg)]  # noqa: E731
    evaluate_trials(t(EvalConfig(topk=[10])), out, **kw)
    again = evaluate_trials(t(EvalConfig(topk=[10])), out, **kw)
    assert (again.computed, again.reused, calls) == (0, 3, ["r"])  # nothing loaded the second time
    changed = evaluate_trials(t(EvalConfig(topk=[20])), out, **kw)
    assert (changed.computed, changed.reused) == (1, 2)  # only the profile view; the paper conventions are unchanged
    results = json.loads(out.read_text())
    assert "i2t/map@20" in view_metrics(results, "k", "profile") and len(results["evaluations"]) == 4


def test_bad_codes_and_mismatched_labels_raise(tmp_path):
    p = tmp_path / "codes.npz"
    np.savez(p, query_image=np.zeros((2, 2), np.uint8))
    with pytest.raises(HashBenchError, match="no database codes"):
        read_codes(p)
    np.savez(p, junk=np.zeros((2, 2), np.uint8), database_image=np.zeros((2, 2), np.uint8))
    with pytest.raises(HashBenchError, match="unexpected array 'junk'"):
        read_codes(p)
    real, lq, ld = _problem(2)
    packed = {p_: {m: pack_codes(c) for m, c in mods.items()} for p_, mods in real.items()}
    with pytest.raises(HashBenchError, match="do not match the split"):
        evaluate_trials([StoredTrial("k", "r", "toy", "standard", EvalConfig())], tmp_path / "e.json", conventions=[], load_codes=lambda r: packed, load_labels=lambda d, p_: (lq[:5], ld))
