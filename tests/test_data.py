"""Embedded datasets, the prepared format and the protocol splits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.data.formats import PreparedDataset, write_prepared, ModalityData
from pipeline.data.loaders import SplitData
from pipeline.data.registry import get_dataset
from pipeline.data.splits import Split, query_database_split
from pipeline.core.errors import DataError
from pipeline.core.paths import ProjectPaths


def test_wikipedia_protocol(prepared_root):
    ds = PreparedDataset(ProjectPaths.at(prepared_root).prepared("wikipedia"))
    ds.verify()
    split = ds.split("standard")
    assert split.counts() == {"query": 693, "train": 2173, "database": 2173}
    assert ds.labels.shape == (2866, 10) and ds.labels.sum(1).max() == 1
    assert ds.modality("image").shape == (2866, 128) and ds.modality("text").shape == (2866, 10)
    # the query part is exactly the source's test list, the rest is train = database
    assert np.intersect1d(split.query, split.database).size == 0
    assert ds.manifest["label_names"][0] == "art"


def test_digits_split_is_stratified_seeded_and_disjoint(prepared_root):
    ds = PreparedDataset(ProjectPaths.at(prepared_root).prepared("digits"))
    split = ds.split("standard")
    assert split.counts() == {"query": 360, "train": 1437, "database": 1437}
    q_counts = ds.labels[split.query].sum(0)
    assert q_counts.min() >= 34 and q_counts.max() <= 38  # ~36 per class
    assert ds.modality("image").dtype == np.uint8 and ds.modality("image").shape == (1797, 1, 8, 8)
    again = query_database_split(1797, 360, 0, stratify=ds.labels.argmax(1))
    np.testing.assert_array_equal(again.query, split.query)
    other = query_database_split(1797, 360, 1, stratify=ds.labels.argmax(1))
    assert not np.array_equal(other.query, split.query)


def test_prepare_is_deterministic(prepared_root, tmp_path):
    paths = ProjectPaths.at(prepared_root)
    for name in ("digits", "synthetic"):
        spec = get_dataset(name)
        spec.prepare(spec.Params(), paths.raw(name), tmp_path / name)
        a = json.loads((paths.prepared(name) / "manifest.json").read_text())["checksums"]
        b = json.loads((tmp_path / name / "manifest.json").read_text())["checksums"]
        assert a == b


def test_synthetic_layout(prepared_root):
    ds = PreparedDataset(ProjectPaths.at(prepared_root).prepared("synthetic"))
    assert ds.manifest["multi_label"] and ds.labels.sum(1).min() >= 1
    assert ds.modality_spec("text").kind == "bow"
    split = ds.split("standard")
    assert split.counts() == {"query": 200, "train": 600, "database": 1000}
    assert np.setdiff1d(split.train, split.database).size == 0


def test_loader_standardises_with_train_statistics(prepared_root):
    ds = PreparedDataset(ProjectPaths.at(prepared_root).prepared("wikipedia"))
    data = SplitData(ds, "standard", ("image", "text"))
    x = data.train.modality_rows("image", np.arange(len(data.train)))
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-4)
    batch = data.query.batch(np.array([3, 1, 2]))
    raw = np.asarray(ds.modality("text")[data.split.query[[3, 1, 2]]])
    mean, std = data.train._stats["text"]
    np.testing.assert_allclose(batch["text"].numpy(), (raw - mean) / std, rtol=1e-5)
    assert batch["labels"].shape == (3, 10)


def test_tampered_array_is_detected(prepared_root, tmp_path):
    import shutil

    src = ProjectPaths.at(prepared_root).prepared("digits")
    dst = tmp_path / "digits"
    shutil.copytree(src, dst)
    arr = np.load(dst / "labels.npy")
    arr[0, 0] ^= 1
    np.save(dst / "labels.npy", arr)
    with pytest.raises(DataError, match="labels.npy"):
        PreparedDataset(dst).verify()


def test_missing_prepared_dataset_message(tmp_path):
    with pytest.raises(DataError, match="hashbench prepare"):
        PreparedDataset(tmp_path / "wikipedia")


def test_fetch_detects_corrupt_raw_file(prepared_root, tmp_path):
    import shutil

    spec = get_dataset("wikipedia")
    raw = tmp_path / "raw"
    shutil.copytree(ProjectPaths.at(prepared_root).raw("wikipedia"), raw)
    with open(raw / "categories.list", "a") as f:
        f.write("extra\n")
    with pytest.raises(DataError, match="categories.list.*sha256"):
        spec.prepare(spec.Params(), raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_split_checks():
    s = Split(query=np.array([0, 1]), train=np.array([2]), database=np.array([1, 2, 3]))
    with pytest.raises(DataError, match="overlap"):
        s.check(4)
    with pytest.raises(DataError, match="outside"):
        Split(query=np.array([0]), train=np.array([5]), database=np.array([5])).check(4)


def test_interrupted_write_keeps_previous_version(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    labels = np.eye(2, dtype=np.uint8)[[0, 1, 0, 1]]
    split = Split(query=np.array([0]), train=np.array([1, 2, 3]), database=np.array([1, 2, 3]))
    kw = dict(dataset="t", labels=labels, label_names=["a", "b"], multi_label=False, splits={"standard": split}, sources={}, params={})
    write_prepared(out, modalities={"image": ModalityData("features", np.ones((4, 3)))}, **kw)
    before = (out / "manifest.json").read_text()
    with pytest.raises(DataError):
        write_prepared(out, modalities={"image": ModalityData("features", np.ones((5, 3)))}, **kw)  # wrong row count
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ds.verified.json", "ds"]  # no temp folder left behind (only the digest cache)
