"""Long-tail evaluation: long-tailed digits protocols, head/medium/tail mAP in the evaluator, the
class-group config, and the Table-2-layout report section (pipeline/report/longtail.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import ClassGroupsConfig, EvalConfig, IndexConfig
from pipeline.data.formats import PreparedDataset
from pipeline.data.longtail import long_tail_counts
from pipeline.eval.evaluate import evaluate_codes, query_class_groups
from pipeline.report.longtail import imbalance_factor, longtail_frame, markdown_table, render_longtail, table2


def test_long_tailed_digits_protocols(prepared_root):
    ds = PreparedDataset(prepared_root / "data" / "prepared" / "digits")
    labels = np.asarray(ds.labels)
    std = ds.split("standard")
    n_max = int(labels[std.train].sum(0).min())
    prev = None
    for name, factor in (("lt1", 1), ("lt10", 10), ("lt50", 50), ("lt100", 100)):
        sp = ds.split(name)
        counts = labels[sp.train].sum(0)
        assert counts.tolist() == long_tail_counts(n_max, 10, factor).tolist()
        assert np.array_equal(sp.query, np.sort(std.query)) and np.array_equal(sp.train, sp.database)
        assert np.isin(sp.train, std.train).all()
        if prev is not None:  # nested profiles (same seeded permutation per class)
            assert np.isin(sp.train, prev).all()
        prev = sp.train
    assert labels[ds.split("lt100").train].sum(0).tolist() == [139, 83, 49, 29, 17, 10, 6, 3, 2, 1]


def test_query_groups_by_fraction_threshold_and_multilabel():
    train = np.eye(4)[np.repeat(np.arange(4), [50, 30, 10, 2])]
    q = np.eye(4)[[0, 1, 2, 3]]
    g, note = query_class_groups(q, train, ClassGroupsConfig(by="fraction", head_frac=0.25, tail_frac=0.25))
    assert g.tolist() == ["head", "medium", "medium", "tail"] and "3:2=tail" in note
    g, _ = query_class_groups(q, train, ClassGroupsConfig(by="threshold", head_min=40, tail_max=5))
    assert g.tolist() == ["head", "medium", "medium", "tail"]
    # a multi-label query takes the group of its rarest label; a query without labels is "none"
    ml = np.array([[1, 0, 0, 1], [0, 0, 0, 0]])
    g, _ = query_class_groups(ml, train, ClassGroupsConfig(by="fraction", head_frac=0.25, tail_frac=0.25))
    assert g.tolist() == ["tail", "none"]
    with pytest.raises(ValueError, match="head_frac"):
        ClassGroupsConfig(head_frac=0.7, tail_frac=0.5)
    with pytest.raises(ValueError, match="tail_max"):
        EvalConfig(class_groups={"by": "threshold", "head_min": 5, "tail_max": 10})


def _ap(dist_row, rel_row):
    """AP@all of one query with distinct distances (no ties): mean precision at each relevant item."""
    order = np.argsort(dist_row, kind="stable")
    rel = rel_row[order]
    hits = np.cumsum(rel)
    return float(np.sum(rel * hits / np.arange(1, len(rel) + 1)) / rel.sum())


def test_group_map_in_evaluator_matches_hand_computed_ap():
    # 8 bits; database distances from each query are all distinct, so AP has no ties
    bits = 8
    db = -np.ones((5, bits))
    for i in range(5):
        db[i, :i + 1] = 1  # item i has i+1 ones -> distance to the all-(+1) query is 7 - i
    q = np.stack([np.ones(bits), -np.ones(bits), np.ones(bits)])
    db_classes = np.array([0, 1, 0, 2, 1])
    q_classes = np.array([0, 1, 2])
    db_labels, q_labels = np.eye(3)[db_classes], np.eye(3)[q_classes]
    train_labels = np.eye(3)[np.repeat([0, 1, 2], [9, 4, 1])]  # class 0 head, 1 medium, 2 tail
    cfg = EvalConfig(topk=[], random_baseline=False, index=IndexConfig(kinds=[]), class_groups={"by": "fraction"})
    res = evaluate_codes({"query": {"image": q}, "database": {"image": db}}, query_labels=q_labels, db_labels=db_labels,
                         directions=[("image", "image")], cfg=cfg, train_labels=train_labels)
    m = res.flat_metrics()
    dist = (bits - q @ db.T) / 2
    rel = (q_labels @ db_labels.T > 0).astype(float)
    aps = [_ap(dist[i], rel[i]) for i in range(3)]
    assert m["i2i/map@all/head"] == pytest.approx(aps[0])
    assert m["i2i/map@all/medium"] == pytest.approx(aps[1])
    assert m["i2i/map@all/tail"] == pytest.approx(aps[2])
    assert m["i2i/map@all"] == pytest.approx(np.mean(aps))
    assert m["i2i/n_queries/head"] == 1.0
    assert "0:9=head" in res.conventions["class_groups"] and "train labels" in res.conventions["class_groups"]
    # without per-group config nothing is added; without train labels the database counts are used (and said)
    plain = evaluate_codes({"query": {"image": q}, "database": {"image": db}}, query_labels=q_labels, db_labels=db_labels,
                           directions=[("image", "image")], cfg=cfg.model_copy(update={"class_groups": ClassGroupsConfig()}))
    assert not any("/head" in k for k in plain.flat_metrics()) and "class_groups" not in plain.conventions
    fallback = evaluate_codes({"query": {"image": q}, "database": {"image": db}}, query_labels=q_labels, db_labels=db_labels,
                              directions=[("image", "image")], cfg=cfg)
    assert "database" in fallback.conventions["class_groups"]


def _runs():
    rows = []
    for ds in ("cifar10", "imagenette"):
        for proto, base in (("lt100", 0.5), ("lt50", 0.6), ("lt10", 0.7), ("standard", 0.9)):
            for method, bonus in (("csq", 0.0), ("ltdual", 0.05)):
                for seed in (0, 1):
                    v = base + bonus + 0.01 * seed
                    rows.append({"suite": f"s-{ds}", "dataset": ds, "protocol": proto, "method": method, "bits": 32, "seed": seed,
                                 "m:i2i/map@all": v, "m:i2i/map@all/head": v + 0.2, "m:i2i/map@all/medium": v, "m:i2i/map@all/tail": v - 0.2,
                                 "m:epoch/pretrained": 0.0 if method == "ltdual" else np.nan})
    return pd.DataFrame(rows)


def test_imbalance_factor_parsing():
    assert imbalance_factor("lt100") == 100 and imbalance_factor("standard") is None
    assert imbalance_factor(None, "lt-digits-lt50") == 50 and imbalance_factor(None, "demo-digits") is None
    assert imbalance_factor("standard", "x-lt10") is None  # an explicit protocol wins


def test_table2_layout_and_values():
    lt = longtail_frame(_runs())
    assert set(lt["factor"]) == {100, 50, 10}  # the standard protocol is not a long-tail run
    t = table2(lt, "overall", bits=32)
    assert list(t.columns) == [("cifar10", 100), ("cifar10", 50), ("cifar10", 10), ("imagenette", 100), ("imagenette", 50), ("imagenette", 10)]
    assert t.loc["ltdual", ("cifar10", 100)] == pytest.approx(100 * np.mean([0.55, 0.56]))
    assert table2(lt, "tail", bits=32).loc["csq", ("imagenette", 10)] == pytest.approx(100 * np.mean([0.5, 0.51]))
    page = render_longtail(_runs())
    assert "Table 2" in page and page.index("<th>100</th>") < page.index("<th>50</th>") < page.index("<th>10</th>")
    assert "60.50 ± 0.71" in page  # csq, cifar10, IF 50, overall: seeds 0.60 and 0.61
    assert "WITHOUT ImageNet" in page and "ltdual: 12" in page
    md = markdown_table(lt, 32)
    assert md.splitlines()[0].startswith("| method | group | cifar10 IF100 | cifar10 IF50")
    assert render_longtail(pd.DataFrame()) == ""
