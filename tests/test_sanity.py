"""Sanity references: the leakage audit (by index and by content hash, with a planted duplicate) and the
classifier's one-hot codes (Sablayrolles et al., ICASSP 2017), and how the report shows both."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipeline.config import EvalConfig
from pipeline.data.splits import Split
from pipeline.data.formats import PreparedDataset
from pipeline.eval.sanity import REFERENCES_FILE, classifier_reference, dataset_directions, dataset_sanity, leakage_audit, predicted_codes, profile_sanity, row_digests
from pipeline.report.build import build_report
from pipeline.report.collect import ProfileRuns
from pipeline.report.references import leakage_table, load_references, reference_rows


def test_row_digests_dense_and_sparse():
    x = np.arange(12, dtype=np.uint8).reshape(4, 3)
    x[3] = x[1]
    d = row_digests(x)
    assert d[1] == d[3] and len(set(d)) == 3
    assert d[0] == hashlib.sha256(b"|u1(3,)" + x[0].tobytes()).hexdigest()
    assert row_digests(x.astype(np.float32))[0] != d[0]  # the dtype is part of the content
    csr = sp.csr_matrix(np.array([[0, 2, 0, 1], [1, 0, 0, 0], [0, 2, 0, 1]], dtype=np.float32))
    s = row_digests(csr)
    assert s[0] == s[2] != s[1]


def test_leakage_audit_finds_a_planted_duplicate():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (20, 8), dtype=np.uint8)
    split = Split(query=np.arange(0, 5), train=np.arange(5, 20), database=np.arange(5, 20))
    clean = leakage_audit(split, {"image": row_digests(x)})
    assert clean["train_is_database"] and clean["sizes"] == {"query": 5, "train": 15, "database": 15}
    m = clean["modalities"]["image"]
    assert m["query_database"] == {"by_index": 0, "by_content": 0, "by_content_other_items": 0}
    assert m["database_train"]["by_index"] == 15
    x[2] = x[11]  # plant: query item 2 is a copy of database item 11
    text = rng.random((20, 3))
    planted = leakage_audit(split, {"image": row_digests(x), "text": row_digests(text)})
    qd = planted["modalities"]["image"]["query_database"]
    assert qd == {"by_index": 0, "by_content": 1, "by_content_other_items": 1}
    assert planted["modalities"]["text"]["query_database"]["by_content"] == 0
    assert planted["modalities"]["item"]["query_database"]["by_content"] == 0  # the pair differs in its text
    # an index shared between query and database counts by index too
    shared = Split(query=np.array([0, 1, 5]), train=np.arange(5, 20), database=np.arange(5, 20))
    assert leakage_audit(shared, {"image": row_digests(x)})["modalities"]["image"]["query_database"]["by_index"] == 1


def test_predicted_codes_one_hot_and_multi_label():
    rng = np.random.default_rng(1)
    centers = np.eye(3) * 6
    y = rng.integers(0, 3, 90)
    x = centers[y] + rng.standard_normal((90, 3))
    onehot = np.eye(3, dtype=np.uint8)[y]
    (codes,) = predicted_codes(x, onehot, [x], multi_label=False)
    assert codes.shape == (90, 8) and ((codes == 1).sum(1) == 1).all() and (codes[:, 3:] == -1).all()
    assert (codes[:, :3].argmax(1) == y).mean() > 0.95
    multi = np.stack([y == 0, y != 0, y == 2], 1).astype(np.uint8)
    (mc,) = predicted_codes(x, multi, [x], multi_label=True)
    assert ((mc[:, :3] == 1).sum(1) >= 1).all() and (mc[:, :3] == 1).astype(np.uint8).tolist() == multi.tolist()


def test_digits_references_and_report(prepared_root, tmp_path):
    ds = PreparedDataset(prepared_root / "data" / "prepared" / "digits")
    ref = dataset_sanity(ds, "standard", [("image", "image")], EvalConfig(), tmp_path / "cache")
    leak = ref["leakage"]
    assert leak["train_is_database"] and leak["modalities"]["image"]["query_database"]["by_index"] == 0
    assert ref["classifier"]["i2i"]["map@all"] > 0.8  # a linear classifier on 8x8 digits: ~0.94 mAP@all
    assert list((tmp_path / "cache").glob("digits-standard-*.json"))
    assert dataset_sanity(ds, "standard", [("image", "image")], EvalConfig(), tmp_path / "cache") == ref  # from the cache
    rows = reference_rows(ref, "i2i")
    assert rows[0]["label"].startswith("classifier one-hot") and rows[0]["value"] == ref["classifier"]["i2i"]["map@all"]
    box = leakage_table(ref)
    assert box["notes"] == ["database = training set (by design of this protocol)"] and box["rows"][0]["cells"][0] == "0 / 0"
    df = pd.DataFrame([{"suite": "s", "dataset": "digits", "protocol": "standard", "method": "csq", "bits": 16, "seed": s, "run_id": f"r{s}",
                        "m:i2i/map@all": 0.5 + s / 100} for s in (0, 1)])
    prepared = lambda n: prepared_root / "data" / "prepared" / n  # noqa: E731
    stage = profile_sanity({("digits", "standard"): EvalConfig(), ("nowhere", "standard"): EvalConfig()}, prepared, tmp_path / "cache")
    assert stage["digits/standard"]["leakage"] == ref["leakage"] and "error" in stage["nowhere/standard"]
    (tmp_path / REFERENCES_FILE).write_text(json.dumps(stage))
    refs = load_references(tmp_path / REFERENCES_FILE)
    assert set(refs) == {("digits", "standard"), ("nowhere", "standard")} and load_references(tmp_path / "absent.json") == {}
    assert leakage_table(refs[("nowhere", "standard")])["error"]
    html = build_report(ProfileRuns("demo", df, {}, []), tmp_path / "r", title="T", notes={}, references=refs).read_text()
    assert "classifier one-hot (reference)" in html and "Leakage audit" in html and 'data-table="leakage-s"' in html


def test_directions_of_a_cross_modal_dataset(prepared_root):
    ds = PreparedDataset(prepared_root / "data" / "prepared" / "wikipedia")
    assert dataset_directions(ds) == [("image", "image"), ("text", "text"), ("image", "text"), ("text", "image")]


def test_multi_label_classifier_reference(prepared_root):
    ds = PreparedDataset(prepared_root / "data" / "prepared" / "synthetic")
    bow = [m for m, meta in ds.manifest["modalities"].items() if meta["kind"] == "bow"]  # the cheap modality: 8 label fits on 200-word counts
    protocol = sorted(ds.manifest["protocols"])[0]
    out = classifier_reference(ds, protocol, [(bow[0], bow[0])], EvalConfig())
    (v,) = out.values()
    assert ds.manifest["multi_label"] and 0.3 < v["map@all"] <= 1
