"""LTDual (methods/ltdual.py, paper 004): loss terms on hand-computed cases, the dual-stream trunk,
the zero-mean hash layer, weights provenance, training on long-tailed digits, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import methods.ltdual  # noqa: F401  (registers "ltdual")
from methods.base import DataInfo, ModalitySpec
from methods.losses.longtail import (
    bce_quantization_loss,
    gaussian_estimator,
    hash_proxy_loss,
    proxy_similarities,
    self_distillation_loss,
)
from methods.ltdual import LTDual, LTDualParams
from methods.nets.dual_stream import DualStream, ZeroMeanHashLayer, build_trunk, load_pretrained
from pipeline.core.errors import MethodError
from tests.conftest import trial_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIGITS = DataInfo("digits", {"image": ModalitySpec("image", "pixels", (1, 8, 8))}, 10, False, 100)


# -- loss terms against the formulas, by hand ---------------------------------------------------------


def test_self_distillation_hand_computed_and_teacher_detached():
    hs = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    ht = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], requires_grad=True)
    # cos = [1/sqrt2, -1] -> mean(1 - cos) = (1 - 0.70710678 + 2) / 2
    got = self_distillation_loss(hs, ht)
    assert got.item() == pytest.approx((1 - 1 / math.sqrt(2) + 2) / 2, rel=1e-6)
    got.backward()
    assert ht.grad is None and hs.grad is not None  # teacher gets no gradient (DHD)


def test_hash_proxy_hand_computed():
    h = torch.tensor([[2.0, 0.0]])
    proxies = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-1.0, -1.0]])
    cos = np.array([1.0, 0.0, -1 / math.sqrt(2)])
    assert torch.allclose(proxy_similarities(h, proxies), torch.tensor(cos[None, :], dtype=torch.float32), atol=1e-6)
    tau = 0.5
    logits = cos / tau
    logp = logits - np.log(np.exp(logits).sum())
    got = hash_proxy_loss(h, proxies, torch.tensor([[0.0, 1.0, 0.0]]), tau)
    assert got.item() == pytest.approx(-logp[1], rel=1e-5)
    # multi-hot labels are normalised to sum 1 (DHD): mean of the two classes' -log p
    got = hash_proxy_loss(h, proxies, torch.tensor([[1.0, 1.0, 0.0]]), tau)
    assert got.item() == pytest.approx(-(logp[0] + logp[1]) / 2, rel=1e-5)
    with pytest.raises(ValueError):
        hash_proxy_loss(h, proxies, torch.tensor([[1.0, 0.0, 0.0]]), 0.0)


def test_bce_quantization_hand_computed():
    h = torch.tensor([[0.5, -0.9]])
    m, s = 1.0, 0.5
    assert gaussian_estimator(torch.tensor(0.5), m, s).item() == pytest.approx(math.exp(-0.25 / 0.5), rel=1e-6)

    def g(x, mu):
        return math.exp(-((x - mu) ** 2) / (2 * s * s))

    def hb(u, v):
        return -(u * math.log(v) + (1 - u) * math.log(1 - v))

    # bit 0: h = 0.5 > 0 -> b+ = 1, b- = 0; bit 1: h = -0.9 -> b+ = 0, b- = 1
    want0 = hb(1, g(0.5, 1)) + hb(0, g(0.5, -1))
    want1 = hb(0, g(-0.9, 1)) + hb(1, g(-0.9, -1))
    got = bce_quantization_loss(h, m=m, sigma=s)
    assert got.item() == pytest.approx((want0 + want1) / 2, rel=1e-5)
    # binary codes at +-m are (almost) loss-free; codes near 0 are expensive
    assert bce_quantization_loss(torch.tensor([[1.0, -1.0]])).item() < 1e-3
    assert bce_quantization_loss(torch.tensor([[0.05, -0.05]])).item() > 1.0


# -- architecture --------------------------------------------------------------------------------------


def test_tiny_dual_stream_fuses_with_learnable_weights_and_zero_mean_codes():
    m = LTDual(LTDualParams(size="tiny", seed=0), DIGITS, 16)
    assert isinstance(m.trunk, DualStream)
    local, glob = m.trunk.local.model, m.trunk.global_.model
    assert type(local).__name__ == "EfficientNet" and type(glob).__name__ == "SwinTransformer"
    x = torch.rand(6, 1, 8, 8)
    f = m.trunk(x)
    assert f.shape == (6, m.trunk.out_dim)
    with torch.no_grad():
        m.trunk.alpha.fill_(2.0)
        m.trunk.beta.fill_(0.0)
    f2 = m.trunk(x)
    d_local = m.trunk.local.out_dim
    assert torch.allclose(f2[:, :d_local], 2 * m.trunk.local(x)) and torch.all(f2[:, d_local:] == 0)
    # BN hash layer without shift: zero-mean pre-activations over the batch
    layer = ZeroMeanHashLayer(12, 8)
    layer.train()
    z = layer.bn(layer.linear(torch.randn(64, 12) * 4 + 7))
    assert torch.allclose(z.mean(0), torch.zeros(8), atol=1e-5)
    assert layer(torch.randn(1, 12)).shape == (1, 8)  # a one-item batch uses the running statistics


def test_training_step_terms_sum_to_loss_and_weights_apply():
    m = LTDual(LTDualParams(size="tiny", seed=0, lambda1=0.3, lambda2=0.7), DIGITS, 16)
    m.train()
    batch = {"image": torch.rand(8, 1, 8, 8), "labels": torch.eye(10)[torch.arange(8)]}
    out = m.training_step(batch, "joint")
    assert set(out) == {"loss", "hash_proxy", "self_distill", "bce_quant"}
    assert out["loss"].item() == pytest.approx(sum(out[k].item() for k in ("hash_proxy", "self_distill", "bce_quant")), rel=1e-6)
    out["loss"].backward()
    assert m.proxies.grad is not None and m.trunk.alpha.grad is not None


def test_augmentation_strength_scales_with_probability():
    m = LTDual(LTDualParams(size="tiny", seed=0, hflip=False), DIGITS, 16)
    x = torch.rand(256, 1, 8, 8)
    assert torch.equal(m.augment(x, 0.0), x)
    weak = (m.augment(x, 0.2) - x).abs().flatten(1).sum(1)
    strong = (m.augment(x, 1.0) - x).abs().flatten(1).sum(1)
    assert (weak < 1e-6).float().mean() > 0.4  # most items untouched by the weak group
    assert (strong < 1e-6).float().mean() < 0.05 and strong.mean() > 2 * weak.mean()


def test_backbone_switch_features_and_errors():
    feats = DataInfo("f", {"image": ModalitySpec("image", "features", (20,))}, 10, False, 100)
    m = LTDual(LTDualParams(seed=0), feats, 16)
    assert m.backbone_name == "features" and m.weights_status == {"trunk": "none (cached features)"}
    cnn = LTDual(LTDualParams(backbone="small_cnn", seed=0), DIGITS, 16)
    assert type(cnn.trunk).__name__ == "SmallCNN" and not cnn.pretrained
    with pytest.raises(MethodError, match="needs pixels"):
        LTDual(LTDualParams(backbone="dual"), feats, 16)
    with pytest.raises(MethodError, match="tiny"):
        LTDual(LTDualParams(backbone="resnet50", size="tiny"), DIGITS, 16)
    with pytest.raises(MethodError, match="does not exist"):
        LTDual(LTDualParams(backbone="alexnet", weights="/nonexistent/alexnet.pth"), DIGITS, 16)


def test_pretrained_weights_from_file_and_random_init_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    trunk, status = build_trunk("resnet18", "full", 3, None)
    assert status.startswith("random-init")  # nothing in the (empty) hub cache: said, not hidden
    m = LTDual(LTDualParams(backbone="resnet18", seed=0), DataInfo("x", {"image": ModalitySpec("image", "pixels", (3, 64, 64))}, 3, False, 10), 16)
    assert not m.pretrained and m.provenance_tags()["weights.resnet18"].startswith("random-init")
    # a local state_dict is loaded (exact tensors), and reported as pretrained
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    model = torchvision.models.resnet18(weights=None)
    assert load_pretrained(model, "resnet18", str(path)).startswith("pretrained (file")
    assert torch.equal(model.conv1.weight, ref.conv1.weight)
    # the hub-cache path is used when the file is there
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(ref.state_dict(), cache / "resnet18-f37072fd.pth")
    assert load_pretrained(torchvision.models.resnet18(weights=None), "resnet18", None).startswith("pretrained (hub-cache")


def test_cosine_annealing_schedule():
    m = LTDual(LTDualParams(size="tiny", seed=0, cosine_epochs=4), DIGITS, 16)
    opt = m.configure_optimizers(lambda ps: torch.optim.Adam(list(ps), lr=1e-3))["joint"]
    lrs = []
    for e in range(5):
        m.on_epoch_end(e, None)
        lrs.append(opt.param_groups[0]["lr"])
    want = [1e-3 * 0.5 * (1 + math.cos(math.pi * min(e + 1, 4) / 4)) for e in range(5)]
    assert lrs == pytest.approx(want)


# -- real training ------------------------------------------------------------------------------------


def test_ltdual_trains_on_long_tailed_digits_beats_random_and_is_deterministic(tmp_path, repo_params, prepared_root):
    from pipeline.train.loop import run_trial

    def spec_for(seed):
        spec = trial_spec(tmp_path, repo_params, "ltdual", 16, epochs=6, seed=seed,
                          method_params={"size": "tiny", "hflip": False, "cosine_epochs": 6})
        return spec.model_copy(update={"protocol": "lt100", "train": spec.train.model_copy(update={"batch_size": 32}),
                                       "eval": spec.eval.model_copy(update={"class_groups": spec.eval.class_groups.model_copy(update={"by": "fraction"}),
                                                                           "index": spec.eval.index.model_copy(update={"kinds": []})})})

    spec = spec_for(0)
    d = prepared_root / "data" / "prepared" / "digits"
    out = run_trial(spec, d)
    m = out.evaluation.flat_metrics()
    # 6 epochs on 339 long-tailed digits (IF 100): random codes give ~0.11; require a clear margin (measured 0.46-0.47, seeds 0-2)
    assert m["i2i/map@all"] > m["i2i/random/map@all"] + 0.25
    assert {"i2i/map@all/head", "i2i/map@all/medium", "i2i/map@all/tail"} <= set(m)
    assert m["i2i/map@all/head"] > m["i2i/map@all/tail"]
    again = run_trial(spec, d)
    assert np.array_equal(out.evaluation.packed["query"]["image"], again.evaluation.packed["query"]["image"])


def test_cosine_follows_the_trials_epochs_and_no_suite_reaches_lr_zero_early(tmp_path, repo_params):
    """cosine_epochs 'train': the period is the trial's epochs (TrainData.extras), so every epoch trains at lr > 0;
    and no suite of params.yaml sets a period shorter than its epochs (paper 004 anneals over its whole run)."""
    from methods.base import TrainData
    from pipeline.config import expand_suite, load_params
    from tests.conftest import write_params

    m = LTDual(LTDualParams(size="tiny", seed=0), DIGITS, 16)
    opt = m.configure_optimizers(lambda ps: torch.optim.Adam(list(ps), lr=1e-3))["joint"]
    data = TrainData(labels=torch.zeros(4, DIGITS.n_classes), info=DIGITS, extras={"epochs": 5})
    m._cosine_period = m.cosine_period(data)
    used = []
    for e in range(5):
        used.append(opt.param_groups[0]["lr"])  # the lr epoch e trains with
        m.on_epoch_end(e, data)
    assert used[0] == pytest.approx(1e-3) and min(used) > 0 and used == sorted(used, reverse=True)
    params = load_params(write_params(tmp_path, repo_params))
    for suite in params.suites:
        for t in expand_suite(params, suite):
            if t.method == "ltdual":
                period = t.method_params["cosine_epochs"]
                assert period in (None, "train") or period >= t.train.epochs, f"{suite}: {t.name} anneals to lr 0 at epoch {period} of {t.train.epochs}"
