"""The frozen-features stage on a tiny prepared dataset with a tiny backbone: order, dtype, manifest,
resume after an interruption, checksum mismatch, and training on the features (no network)."""

from __future__ import annotations

import copy
import hashlib
import io
import json

import numpy as np
import pytest
import torch

from pipeline.core.errors import ConfigError, DataError, MethodError
from pipeline.data import features as FE
from pipeline.data.registry import get_dataset
from pipeline.data import weights as W
from pipeline.data.download import LOCK_ENV, RemoteFile
from pipeline.data.formats import ModalityData, PreparedDataset, write_prepared
from pipeline.data.splits import Split
from tests.conftest import write_params

N, S = 45, 8


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv(LOCK_ENV, str(tmp_path / "lock.json"))
    monkeypatch.setenv(W.WEIGHTS_DIR_ENV, str(tmp_path / "weights"))
    before = dict(W._EXTRA)
    yield
    W._EXTRA.clear()
    W._EXTRA.update(before)


@pytest.fixture
def tiny(tmp_path, one_torch_thread):
    """A prepared 3-class pixel dataset (45 items of 3 x 8 x 8) and a fetched small_cnn weights entry."""
    from methods.nets.encoders import SmallCNN

    rng = np.random.default_rng(0)
    y = np.arange(N) % 3
    pixels = rng.integers(0, 256, size=(N, 3, S, S), dtype=np.uint8)
    pixels[y == 0] //= 2
    labels = np.eye(3, dtype=np.uint8)[y]
    split = Split(query=np.arange(0, 9), train=np.arange(9, 45), database=np.arange(9, 45))
    src = tmp_path / "data" / "prepared" / "toy"
    write_prepared(src, dataset="toy", labels=labels, label_names=["a", "b", "c"], multi_label=False,
                   modalities={"image": ModalityData("pixels", pixels)}, splits={"standard": split}, sources={}, params={})
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(SmallCNN(3, S, S).state_dict(), buf)
    payload = buf.getvalue()
    folder = tmp_path / "weights" / "tiny_cnn"
    folder.mkdir(parents=True)
    (folder / "tiny.pth").write_bytes(payload)  # placed by hand: a manual entry with a published sha256
    W.register_weights(W.WeightsEntry(name="tiny_cnn", architecture="small_cnn", license="test", source="manual", input_size=S,
                                      file=RemoteFile(name="tiny.pth", sha256=hashlib.sha256(payload).hexdigest())))
    W.fetch_weights("tiny_cnn")
    return src, pixels


def _extract(src, **kw):
    out = src.with_name(FE.feature_dataset_name("toy", "small_cnn"))
    kw = {"batch_size": 8, "flush_every": 8, "progress": False, "device": "cpu", **kw}
    return out, FE.extract_features(src, out, "small_cnn", "tiny_cnn", **kw)


def _reference(pixels):
    trunk, _ = FE.build_extractor("small_cnn", str(W.resolve_weights("tiny_cnn").path), 3, S)
    with torch.no_grad():
        return trunk(torch.from_numpy(pixels).float() / 255).numpy()


def test_features_rows_follow_the_prepared_order_with_manifest(tiny):
    src, pixels = tiny
    out, block = _extract(src)
    ds = PreparedDataset(out)
    ds.verify()
    arr = ds.modality("image")
    assert arr.dtype == np.float16 and arr.shape == (N, 128)
    np.testing.assert_allclose(arr.astype(np.float32), _reference(pixels), rtol=2e-3, atol=2e-3)  # row i = item i
    spec = ds.modality_spec("image")
    assert spec.kind == "features" and spec.shape == (128,)
    src_ds = PreparedDataset(src)
    assert np.array_equal(ds.labels, src_ds.labels) and np.array_equal(ds.split("standard").query, src_ds.split("standard").query)
    f = ds.manifest["features"]
    assert f["backbone"] == "small_cnn" and f["weights"] == "tiny_cnn" and f["weights_sha256"] == W.resolve_weights("tiny_cnn").sha256
    assert f["input_size"] == S and "bilinear" in f["preprocessing"] and f["counts"] == {"n_items": N, "dim": 128}
    assert f["array_sha256"] == ds.manifest["checksums"]["image.npy"] and f["source_manifest_sha256"] == src_ds.manifest_sha256
    assert block["status"] == "extracted" and ds.name == "toy+small_cnn"
    assert not out.with_name(".toy+small_cnn.partial").exists()
    # a second run reuses the verified output
    assert _extract(src)[1]["status"] == "up-to-date"


def test_an_interrupted_extraction_resumes_and_never_leaves_a_trusted_half_array(tiny, monkeypatch):
    src, pixels = tiny
    full = _reference(pixels)
    real = FE.build_extractor
    calls = {"n": 0}

    def flaky(*a, **k):
        trunk, dim = real(*a, **k)
        fwd = trunk.forward

        def forward(x):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt  # e.g. Ctrl-C during the third batch
            return fwd(x)

        trunk.forward = forward
        return trunk, dim

    monkeypatch.setattr(FE, "build_extractor", flaky)
    with pytest.raises(KeyboardInterrupt):
        _extract(src)
    out = src.with_name("toy+small_cnn")
    assert not out.exists()  # nothing a later stage could trust
    with pytest.raises(DataError, match="no prepared dataset here"):
        PreparedDataset(out)
    partial = src.with_name(".toy+small_cnn.partial")
    assert json.loads((partial / FE.PROGRESS).read_text())["done"] == 16
    monkeypatch.setattr(FE, "build_extractor", real)
    out, block = _extract(src)
    assert block["status"] == "resumed" and block["rows_this_run"] == N - 16
    np.testing.assert_allclose(PreparedDataset(out).modality("image").astype(np.float32), full, rtol=2e-3, atol=2e-3)
    # a partial run of another configuration is not continued
    shutil_out = out.rename(out.with_name("kept"))
    with pytest.raises(KeyboardInterrupt):
        calls["n"] = 0
        monkeypatch.setattr(FE, "build_extractor", flaky)
        _extract(src)
    monkeypatch.setattr(FE, "build_extractor", real)
    _, block = _extract(src, input_size=16)
    assert block["status"] == "extracted" and block["input_size"] == 16
    assert shutil_out.exists()


def test_a_damaged_feature_array_is_detected_and_extracted_again(tiny, caplog):
    src, pixels = tiny
    out, block = _extract(src)
    arr = np.load(out / "image.npy", mmap_mode="r+")
    arr[3] = 0
    arr.flush()
    del arr
    with pytest.raises(DataError, match="image.npy: sha256 .* does not match the manifest"):
        PreparedDataset(out).verify()
    _, again = _extract(src)
    assert again["status"] == "extracted" and "damaged" in caplog.text
    PreparedDataset(out).verify()


def test_unfetched_weights_and_non_pixel_sources_are_refused(tiny, tmp_path):
    src, _ = tiny
    with pytest.raises(DataError, match="not fetched.*hashbench fetch-weights efficientnet_lite0_imagenet"):
        FE.extract_features(src, tmp_path / "x", "efficientnet_lite0", progress=False)
    out, _ = _extract(src)
    with pytest.raises(DataError, match="features are extracted from pixels"):
        FE.extract_features(out, tmp_path / "y", "small_cnn", "tiny_cnn", progress=False)
    with pytest.raises(DataError, match="are for backbone 'small_cnn', not 'resnet18'"):
        FE.extract_features(src, tmp_path / "z", "resnet18", "tiny_cnn", progress=False)


def test_methods_train_on_features_and_pixel_backbones_refuse(tmp_path, repo_params, prepared_root, one_torch_thread):
    """digits+small_cnn: a feature dataset made from the prepared digits; CSQ trains on it through the real config path."""
    import shutil

    from methods.nets.encoders import SmallCNN
    from pipeline.config import expand_suite, load_params
    from pipeline.train.loop import run_trial

    root = tmp_path / "proj"
    shutil.copytree(prepared_root / "data" / "prepared" / "digits", root / "data" / "prepared" / "digits")
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(SmallCNN(1, 8, 8).state_dict(), buf)
    (tmp_path / "weights" / "dcnn").mkdir(parents=True)
    (tmp_path / "weights" / "dcnn" / "d.pth").write_bytes(buf.getvalue())
    W.register_weights(W.WeightsEntry(name="dcnn", architecture="small_cnn", license="t", source="manual", input_size=8,
                                      file=RemoteFile(name="d.pth", sha256=hashlib.sha256(buf.getvalue()).hexdigest())))
    W.fetch_weights("dcnn")
    monkey_default = dict(W.DEFAULT_WEIGHTS)
    W.DEFAULT_WEIGHTS["small_cnn"] = "dcnn"
    try:
        FE.extract_features(root / "data" / "prepared" / "digits", root / "data" / "prepared" / "digits+small_cnn", "small_cnn", progress=False, device="cpu")
        p = copy.deepcopy(repo_params)
        p["suites"] = {"f": {"profile": "demo", "dataset": "digits+small_cnn", "methods": ["csq"], "bits": [16], "seeds": [0], "train": {"epochs": 3}}}
        params = load_params(write_params(tmp_path, p))
        spec = expand_suite(params, "f")[0]
        assert spec.dataset == "digits+small_cnn"
        outcome = run_trial(spec, root / "data" / "prepared" / "digits+small_cnn", device="cpu")
        assert outcome.evaluation.flat_metrics()["i2i/map@all"] > 0.3
        assert outcome.tags["hashbench.init"] == "frozen-features small_cnn (dcnn)"
        assert outcome.tags["features.weights"].startswith("dcnn sha256=")
        # a pixel backbone on features refuses clearly
        p["methods"]["csq"] = {**p["methods"].get("csq", {}), "backbone": "resnet18"}
        spec = expand_suite(load_params(write_params(tmp_path, p)), "f")[0]
        with pytest.raises(MethodError, match="is 'features'.*backbone 'resnet18' needs pixels"):
            run_trial(spec, root / "data" / "prepared" / "digits+small_cnn", device="cpu")
        # a method that needs pixels is refused by the config check
        from methods.csq import CSQ

        p["methods"]["csq"].pop("backbone")
        orig = CSQ.input_kinds
        CSQ.input_kinds = frozenset({"pixels"})
        try:
            with pytest.raises(ConfigError, match="method 'csq' needs \\['pixels'\\] input, but 'digits\\+small_cnn' holds frozen small_cnn features"):
                load_params(write_params(tmp_path, p))
        finally:
            CSQ.input_kinds = orig
        p["suites"]["f"]["dataset"] = "digits+nonet"
        with pytest.raises(ConfigError, match="names backbone 'nonet', which has no weights entry"):
            load_params(write_params(tmp_path, p))
    finally:
        W.DEFAULT_WEIGHTS.clear()
        W.DEFAULT_WEIGHTS.update(monkey_default)


def test_dvc_feature_stages_cover_every_feature_suite(repo_params):
    from pathlib import Path

    import yaml

    dvc = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())
    stages = dvc["stages"]["features"]["foreach"]
    handcrafted = dvc["stages"]["handcrafted"]["foreach"]
    for name, s in repo_params["suites"].items():
        if "+" in s["dataset"]:
            assert s["dataset"] in stages or s["dataset"] in handcrafted, f"suite {name}: no features@ or handcrafted@{s['dataset']} stage in dvc.yaml"
    for key, item in handcrafted.items():
        assert key == get_dataset(item["dataset"]).handcrafted[item["feature"]].dataset_name(item["dataset"])
    for key, item in stages.items():
        assert key == FE.feature_dataset_name(item["dataset"], item["backbone"])
        assert W.get_weights(item["weights"]).architecture == item["backbone"]
        assert item["weights"] in dvc["stages"]["fetch-weights"]["foreach"]


def test_the_features_command(tiny, tmp_path, capsys):
    from pipeline.cli import main

    src, _ = tiny
    rc = main(["--root", str(tmp_path), "features", "toy", "--backbone", "small_cnn", "--weights", "tiny_cnn", "--device", "cpu", "--batch-size", "16"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "toy+small_cnn: 45 x 128 float16 features (extracted)" in out and "tiny_cnn" in out
    PreparedDataset(tmp_path / "data" / "prepared" / "toy+small_cnn").verify()
    assert main(["--root", str(tmp_path), "features", "toy", "--backbone", "resnet18"]) == 2  # no weights entry fetched: a clear error
