"""Hand-crafted image features as a prepared modality (pipeline/data/handcrafted.py; issue 16).

NUS-WIDE's official 500-d SIFT bag of visual words and a hand-placed 512-d MIRFlickr descriptor, on tiny
files in the official layouts (NUS-WIDE placed by copying, MIRFlickr's archives served from 127.0.0.1):
fetch records the descriptor's sha256, prepare writes ``<dataset>+<feature>`` whose image rows are the
descriptor rows of exactly the prepared items (checked against an independent selection), with the
source's labels, text and splits; ``--handcrafted`` alone rewrites the same bytes; a classic method
trains on it through the real config path, and a bad matrix or a damaged file is refused.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import pipeline.data.mirflickr25k as mir
import pipeline.data.nuswide as nus
from pipeline.core.errors import ConfigError, DataError
from pipeline.data import download as dl
from pipeline.data.formats import PreparedDataset
from pipeline.data.registry import get_dataset
from tests.conftest import trial_spec
from tests.fixtures_archives import NUS_CONCEPTS, RangeServer, build_mirflickr, build_nuswide, write_descriptor_matrix


@pytest.fixture(autouse=True)
def offline_safe(monkeypatch, tmp_path):
    monkeypatch.setattr(dl, "SETTINGS", dl.DownloadSettings(backoff=0.01, connect_timeout=2.0, read_timeout=5.0, progress=False))
    monkeypatch.setenv(dl.LOCK_ENV, str(tmp_path / "checksums.lock.json"))
    monkeypatch.setenv("HASHBENCH_DECODE_WORKERS", "2")


def same_as_source(feat: PreparedDataset, src: PreparedDataset) -> None:
    assert feat.manifest["n_items"] == src.manifest["n_items"]
    np.testing.assert_array_equal(feat.labels[:], src.labels[:])
    assert (feat.modality("text") != src.modality("text")).nnz == 0
    for p in src.manifest["protocols"]:
        a, b = feat.split(p), src.split(p)
        for part in ("query", "train", "database"):
            np.testing.assert_array_equal(getattr(a, part), getattr(b, part))


def nuswide_raw(tmp_path):
    raw = tmp_path / "raw"
    info = build_nuswide(raw)
    bow = write_descriptor_matrix(raw / "Low_Level_Features" / "BoW_int.dat", len(info["paths"]), 500, seed=11, integer=True)
    params = get_dataset("nuswide").Params(image_size=8, n_concepts=4, dcmh={"query": 6, "train": 12}, adih={"query": 5, "train": 10},
                                           dpsh_query_per_class=2, dpsh_train_per_class=3)
    return raw, info, bow, params


def test_nuswide_bow_is_fetched_prepared_and_rewritten_identically(tmp_path):
    spec = get_dataset("nuswide")
    raw, info, bow, params = nuswide_raw(tmp_path)
    spec.fetch(params, raw)
    rel = nus.HANDCRAFTED["sift-bow500"].path
    assert dl.ChecksumLock().get("nuswide", rel)["origin"] == "first-use"
    prep = tmp_path / "prepared" / "nuswide"
    spec.prepare(params, raw, prep)
    out = tmp_path / "prepared" / "nuswide+sift-bow500"
    feat, src = PreparedDataset(out), PreparedDataset(prep)
    feat.verify()
    # independent selection of the items: images with one of the 4 most frequent concepts
    freq = info["labels"].sum(0).astype(int)
    top = sorted(sorted(range(81), key=lambda j: (-freq[j], NUS_CONCEPTS[j]))[:4])
    kept = np.flatnonzero(info["labels"][:, top].sum(1) > 0)
    assert feat.modality_spec("image").kind == "features" and feat.modality("image").shape == (len(kept), 500)
    np.testing.assert_array_equal(feat.modality("image")[:], bow[kept])
    same_as_source(feat, src)
    assert feat.manifest["dataset"] == "nuswide+sift-bow500" and rel in feat.manifest["sources"]
    assert feat.manifest["params"]["handcrafted"]["source_manifest_sha256"] == src.manifest_sha256
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = spec.prepare_handcrafted(params, raw, prep, "sift-bow500")
    assert again == out and {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(DataError, match="no hand-crafted feature 'gist'"):
        spec.prepare_handcrafted(params, raw, prep, "gist")
    # the descriptor damaged after the fetch: refused, moved aside
    with open(raw / rel, "a") as f:
        f.write("1 " * 500 + "\n")
    with pytest.raises(dl.ChecksumMismatch, match="BoW_int.dat"):
        spec.prepare_handcrafted(params, raw, prep, "sift-bow500")


def test_nuswide_without_the_descriptor_and_with_a_bad_one(tmp_path):
    spec = get_dataset("nuswide")
    raw, info, _, params = nuswide_raw(tmp_path)
    rel = nus.HANDCRAFTED["sift-bow500"].path
    (raw / rel).unlink()
    spec.fetch(params, raw)
    spec.prepare(params, raw, tmp_path / "p" / "nuswide")
    assert not (tmp_path / "p" / "nuswide+sift-bow500").exists()  # optional: prepared without it
    with pytest.raises(DataError, match="was not fetched.*hashbench fetch nuswide"):
        spec.prepare_handcrafted(params, raw, tmp_path / "p" / "nuswide", "sift-bow500")
    write_descriptor_matrix(raw / rel, len(info["paths"]) - 1, 500, seed=1, integer=True)  # one line short
    spec.fetch(params, raw)
    with pytest.raises(DataError, match=r"79 lines x 500 values, expected 80 x 500"):
        spec.prepare(params, raw, tmp_path / "p" / "nuswide")


def test_mirflickr_placed_descriptor_served_archives(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    info = build_mirflickr(www)
    spec = get_dataset("mirflickr25k")
    raw, prep = tmp_path / "raw", tmp_path / "prepared" / "mirflickr25k"
    sift = write_descriptor_matrix(raw / mir.HANDCRAFTED["sift512"].path, len(info["tags"]), 512, seed=5, integer=False)
    with RangeServer(www) as srv:
        params = spec.Params(mirror=srv.url, image_size=8, min_tag_count=3, dcmh={"query": 6, "train": 10}, adih={"query": 9, "train": 12})
        spec.fetch(params, raw)
    spec.prepare(params, raw, prep)
    tags, labels = info["tags"], info["labels"]
    count = Counter(t for ts in tags for t in set(ts))
    vocab = {t for t, c in count.items() if c >= 3}
    kept = [i for i in range(len(tags)) if labels[i] and any(t in vocab for t in tags[i])]
    feat = PreparedDataset(prep.with_name("mirflickr25k+sift512"))
    np.testing.assert_array_equal(feat.modality("image")[:], sift[kept])
    same_as_source(feat, PreparedDataset(prep))


def test_a_classic_method_trains_on_the_handcrafted_dataset(tmp_path, repo_params):
    from pipeline.train.loop import run_trial

    spec = get_dataset("nuswide")
    raw, _, _, _ = nuswide_raw(tmp_path)
    p = dict(repo_params)
    p["datasets"] = {**repo_params["datasets"], "nuswide": {"image_size": 8, "n_concepts": 4, "dcmh": {"query": 6, "train": 12},
                                                           "adih": {"query": 5, "train": 10}, "dpsh_query_per_class": 2, "dpsh_train_per_class": 3}}
    params = spec.Params(**p["datasets"]["nuswide"])
    spec.fetch(params, raw)
    spec.prepare(params, raw, tmp_path / "data" / "prepared" / "nuswide")
    # LSH (image -> image): the cheapest classic method; the cross-modal ones solve 1,000-d text systems
    ts = trial_spec(tmp_path, p, "lsh", 64, epochs=1, dataset="nuswide+sift-bow500")
    ts = ts.model_copy(update={"eval": ts.eval.model_copy(update={"index": ts.eval.index.model_copy(update={"kinds": []})})})
    out = run_trial(ts, tmp_path / "data" / "prepared" / "nuswide+sift-bow500", device="cpu")
    m = out.evaluation.flat_metrics()
    assert 0 < m["i2i/map@all"] <= 1 and out.history
    p["suites"] = {"x": {"profile": "demo", "dataset": "nuswide+gist", "methods": ["cmfh"], "bits": [16], "seeds": [0]}}
    from pipeline.config import load_params
    from tests.conftest import write_params

    with pytest.raises(ConfigError, match="hand-crafted features of 'nuswide': sift-bow500"):
        load_params(write_params(tmp_path, p))
