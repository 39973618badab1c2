"""Paper 000's representation layer, the loss layer's remainder and the per-epoch diagnostics
(pipeline/train/representation.py, wired by pipeline/train/plugins.py): each mechanism against a hand-computed
case, then through the real loop."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.config import PluginsConfig
from pipeline.core.errors import MethodError
from pipeline.train import representation as rep
from pipeline.train.plugins import LossPlugins

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Toy(torch.nn.Module):
    """A 'backbone' Linear(3, 4), then a 'head' Linear(4, 2) (the hash layer: width = bits); two modalities share it
    here, with the phases named after them. Terms: ``inter`` and ``other``, both functions of the head's output."""

    bits = 2
    modalities = ("image", "text")
    per_item_term = "inter"
    inter_modal_term = "inter"
    trains_by_gradient = True

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = torch.nn.Linear(3, 4)
        self.head = torch.nn.Sequential(torch.nn.Linear(4, 2))
        self.info = SimpleNamespace(modalities={"image": SimpleNamespace(kind="features"), "text": SimpleNamespace(kind="features")})
        self.per_item_requested = False

    def representation_inputs(self):
        return {"image": self.head}

    def losses(self, x, inter_weight=1.0, other_weight=1.0):
        h = self.head(self.backbone(x))
        inter_items = inter_weight * h[:, 0]
        other = other_weight * h[:, 1].sum()
        return {"loss": inter_items.sum() + other, "inter": inter_items.sum(), "other": other, "per_item": inter_items}


def _plugins(cfg: dict, model, n_items=4, n_epochs=3, train_data=None):
    spec = SimpleNamespace(method="toy", key=lambda: "toy", seed=0)
    return LossPlugins(PluginsConfig.model_validate(cfg), model, spec, n_items=n_items, n_epochs=n_epochs, train_data=train_data)


def _step(pl, m, x, phase="image", **kw):
    losses = m.losses(x, **kw)
    params = list(m.backbone.parameters()) + list(m.head.parameters())
    for p in params:
        p.grad = None
    pl.before_backward(losses, {"index": torch.arange(len(x))}, params, phase)
    losses["loss"].backward()
    pl.after_backward(params, phase)
    return params


def test_calibration_starts_as_identity_and_only_the_inter_modal_term_moves_it():
    cal = rep.Calibration(4, gate=True)
    x = torch.randn(5, 4)
    assert torch.allclose(cal(x), x)  # weight 1, gate 2 sigmoid(0) = 1
    m = _Toy()
    pl = _plugins({"calibration": {"lr": 0.01}}, m)
    w0 = m.calibration_image.weight.detach().clone()
    x = torch.ones(2, 3)
    # inter has zero weight: its gradient on the calibration is 0, while 'other' has a gradient there; the
    # calibration must not move (Adam from a zero gradient does not step), the network gets 'other''s gradient
    params = _step(pl, m, x, inter_weight=0.0)
    assert torch.equal(m.calibration_image.weight, w0)
    assert m.head[0].weight.grad[1].abs().sum() > 0
    assert all(p.grad is None for p in pl.cal_params)  # the loop's backward left nothing behind on them
    # now inter alone has a gradient: Adam's first step moves each weight by lr against the sign of d inter / d w
    m2 = _Toy()
    pl2 = _plugins({"calibration": {"lr": 0.01}}, m2)
    feats = m2.backbone(x).detach()
    g = (feats * m2.head[0].weight[0].detach()).sum(0)  # d/dw of sum_i sum_j W_0j (w_j f_ij) (gate 1 at init, its slope aside)
    _step(pl2, m2, x, other_weight=0.0)
    moved = m2.calibration_image.weight.detach() - 1.0
    assert moved.numpy() == pytest.approx((-0.01 * np.sign(g.numpy())), abs=1e-6)
    # and 'other' with weight 1 changes nothing of that step (same gradient from inter)
    m3 = _Toy()
    pl3 = _plugins({"calibration": {"lr": 0.01}}, m3)
    _step(pl3, m3, x, other_weight=5.0)
    assert torch.allclose(m3.calibration_image.weight, m2.calibration_image.weight)


def test_replay_queue_from_a_known_loss_ranking():
    ema = np.array([0.5, 3.0, 1.0, 3.0, 9.0, 0.2])
    seen = np.array([True, True, True, True, False, True])
    # item 4 is unseen; 1 and 3 tie (lower index first), then 2
    assert rep.replay_queue(ema, seen, 3).tolist() == [1, 3, 2]
    assert rep.replay_queue(ema, seen, 10).tolist() == [1, 3, 2, 0, 5]


def test_replay_branch_yields_the_queue_augmented_and_leaves_the_emas_alone():
    m = _Toy()
    pl = _plugins({"replay": {"size": 3, "start_epoch": 0, "dropout": 0.0, "noise": 0.0}}, m, n_items=5)
    pl.items.ema["image"] = np.array([0.1, 5.0, 2.0, 4.0, 0.3])
    pl.items.seen["image"] = np.ones(5, dtype=bool)

    class Part:
        def batch(self, idx, device="cpu"):
            idx = torch.as_tensor(idx)
            return {"index": idx, "image": idx[:, None].float().repeat(1, 3), "text": idx[:, None].float().repeat(1, 3)}

    pl.on_epoch_start(0)
    batches = list(pl.replay_batches("image", Part(), 2, "cpu"))
    assert [b["index"].tolist() for b in batches] == [[1, 3], [2]]
    assert torch.equal(batches[0]["image"], torch.tensor([[1.0] * 3, [3.0] * 3]))  # no dropout, no noise: unchanged
    assert not pl.replaying
    pl.replaying = True  # a replayed step's per-item losses do not enter the EMAs
    before = pl.items.ema["image"].copy()
    _step(pl, m, torch.ones(2, 3))
    assert np.array_equal(pl.items.ema["image"], before)


def test_augmentations():
    gen = torch.Generator().manual_seed(0)
    cfg = SimpleNamespace(word_dropout=0.5, dropout=0.0, noise=0.0, crop=0, jitter=0.0)
    bow = torch.tensor([[1.0, 0.0, 2.0, 1.0] * 25])
    out = rep.augment(bow, "bow", cfg, gen)
    assert set(torch.unique(out).tolist()) <= {0.0, 1.0, 2.0} and bool(((out == 0) | (out == bow)).all())
    assert 0 < int(((bow > 0) & (out == 0)).sum()) < int((bow > 0).sum())  # some words dropped, not all
    x = torch.randn(6, 5)
    assert torch.equal(rep.augment(x, "features", cfg, gen), x)
    pix = torch.rand(3, 1, 8, 8)
    assert torch.equal(rep.augment(pix, "pixels", cfg, gen), pix)
    strong = rep.augment(pix, "pixels", SimpleNamespace(crop=2, jitter=0.3), gen)
    assert strong.shape == pix.shape and float(strong.min()) >= 0 and float(strong.max()) <= 1 and not torch.equal(strong, pix)


def test_modality_scaling_coefficients_for_known_losses():
    # losses 1 and 3: shares 1/4, 3/4 -> c = 2 * share = 0.5 and 1.5 (mean 1): the weaker, higher-loss modality gains
    assert rep.modality_scales({"image": 1.0, "text": 3.0}, 0.25, 4.0) == pytest.approx({"image": 0.5, "text": 1.5})
    # 0.1 and 3.9: 0.05 clipped up to 0.25, 1.95 kept
    assert rep.modality_scales({"image": 0.1, "text": 3.9}, 0.25, 4.0) == pytest.approx({"image": 0.25, "text": 1.95})
    assert rep.modality_scales({"image": 0.0, "text": 0.0}, 0.25, 4.0) == {"image": 1.0, "text": 1.0}


def test_modality_scale_multiplies_the_passes_gradient():
    x = torch.ones(2, 3)
    sign = float(np.sign(float(_Toy().losses(x)["inter"].detach())))  # make the text pass's inter loss L positive
    lt = abs(float(_Toy().losses(x)["inter"].detach()))
    m = _Toy()
    pl = _plugins({"modality_scale": {"momentum": 0.0, "max_scale": 4.0}}, m)
    pl.mloss = {"image": 1.0, "text": 3.0}
    params = _step(pl, m, x, phase="text", inter_weight=sign)
    # the step's own loss replaced text's EMA (momentum 0): c_text = 2 L / (1 + L), within [0.25, 4]
    c = min(max(2 * lt / (1.0 + lt), 0.25), 4.0)
    ref = _Toy()
    ref_params = list(ref.backbone.parameters()) + list(ref.head.parameters())
    ref.losses(x, inter_weight=sign)["loss"].backward()
    for p, q in zip(params, ref_params):
        assert torch.allclose(p.grad, c * q.grad)
    assert pl.epoch_metrics()["plugin/modality_scale/text"] == pytest.approx(c)
    with pytest.raises(MethodError, match="one pass per modality"):
        _step(pl, m, x, phase="joint")


def test_head_only_phase_freezes_the_backbone():
    m = _Toy()
    pl = _plugins({"head_only": {"steps": 2, "epochs": [1]}}, m)
    opt = torch.optim.SGD(list(m.parameters()), lr=0.1)
    x = torch.ones(2, 3)

    def snap():
        return [p.detach().clone() for p in m.backbone.parameters()], [p.detach().clone() for p in m.head.parameters()]

    pl.on_epoch_start(0)  # not a stage switch: everything moves
    b0, h0 = snap()
    _step(pl, m, x)
    opt.step()
    b1, h1 = snap()
    assert not torch.equal(b0[0], b1[0]) and not torch.equal(h0[0], h1[0])
    pl.on_epoch_start(1)  # stage switch: the first 2 steps update only the hash layer
    for _ in range(2):
        _step(pl, m, x)
        opt.step()
    b2, h2 = snap()
    assert all(torch.equal(a, b) for a, b in zip(b1, b2)) and not torch.equal(h1[0], h2[0])
    _step(pl, m, x)  # the third step of the epoch trains everything again
    opt.step()
    assert not torch.equal(b2[0], snap()[0][0])
    assert pl.epoch_metrics()["plugin/head_only_steps"] == 2.0


def test_plateau_rule_on_a_synthetic_metric_sequence_drives_the_temperature():
    rule = rep.PlateauRule("max", patience=2)
    seq = [0.10, 0.20, 0.20, 0.19, 0.30, 0.30, 0.30]
    # best 0.2 at epoch 1; epochs 2, 3 do not improve -> lowered at 3; best 0.3 at 4; 5, 6 -> lowered at 6
    assert [rule.step(v) for v in seq] == [False, False, False, True, False, False, True]
    low = rep.PlateauRule("min", patience=1, min_delta=0.1)
    assert [low.step(v) for v in [1.0, 0.95, 0.8]] == [False, True, False]  # 0.95 is within 10% of 1.0
    m = _Toy()
    m.supports_temperature = True
    temps = []
    m.set_hash_temperature = temps.append
    pl = _plugins({"temperature": {"schedule": "plateau", "start": 4.0, "end": 1.0, "monitor": "i2t/map@all", "patience": 2}, "head_only": {}}, m, n_epochs=8)
    for e, v in enumerate(seq + [0.3]):
        pl.on_epoch_start(e)
        pl.observe(e, {"i2t/map@all": v})
    assert temps == [4.0, 4.0, 4.0, 4.0, 2.0, 2.0, 2.0, 1.0]
    assert pl.switch_epochs == {4, 7}  # the head-only phase follows each temperature step


def test_diagnostics_hand_computed():
    prev = np.array([[1.0, -1.0], [0.5, 2.0]])
    now = np.array([[-1.0, -1.0], [0.0, -2.0]])
    assert rep.bit_flip_fraction(prev, now) == 0.5  # bits (0, 0) and (1, 1); 0.5 -> 0.0 keeps +1
    gv = rep.GradVariance()
    for g in ([1.0, 0.0], [3.0, 0.0], [2.0, 3.0]):
        gv.add("a", torch.tensor(g))
    gv.add("b", torch.tensor([5.0]))
    # mean (2, 1): E||g||^2 = 23/3, ||mean||^2 = 5 -> 8/3; one step -> 0
    assert gv.pop() == pytest.approx({"a": 8 / 3, "b": 0.0})
    hs = rep.HardSet(4, z=1.0)
    seen = np.ones(4, dtype=bool)
    assert hs.update(0, np.array([1.0, 1.0, 1.0, 5.0]), seen)[0] == 1  # mean 2, sd sqrt(3): only 5 > 3.73
    size, stays = hs.update(1, np.array([1.0, 1.0, 4.0, 2.0]), seen)  # > 2 + sqrt(1.5): item 3 leaves after 1 epoch, 2 enters
    assert size == 1 and stays.tolist() == [1.0]
    size, stays = hs.update(3, np.ones(4), seen)  # sd 0: nothing is above the mean
    assert size == 0 and stays.tolist() == [2.0]
    items = rep.ItemLoss(3, decay=0.5)
    items.update("image", np.array([0, 1]), np.array([2.0, 4.0]))
    items.update("image", np.array([0]), np.array([4.0]))  # 0.5 * 2 + 0.5 * 4 = 3
    items.update("text", np.array([0, 1, 2]), np.array([1.0, 1.0, 1.0]))
    tot, seen = items.total()
    assert tot.tolist() == [4.0, 5.0, 1.0] and seen.tolist() == [True, True, False]
    fs = rep.FeatureGradStats(quantile=0.8, z=2.0)
    assert rep.FeatureGradStats.high_loss(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), 0.8).tolist() == [False] * 4 + [True]
    fs.add("image", torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]]), torch.tensor([True, False, True]))
    # norms over the masked rows: (3, 4); top 10% = the largest one: 4 / 7; none above 3.5 + 2 * 0.5
    assert fs.pop() == pytest.approx({"image/top10_share": 4 / 7, "image/unstable": 0.0})


def test_plugins_refuse_methods_without_the_hooks():
    m = _Toy()
    m.inter_modal_term = None
    with pytest.raises(MethodError, match="inter_modal_term"):
        _plugins({"calibration": {}}, m)
    m = _Toy()
    m.representation_inputs = lambda: {}
    with pytest.raises(MethodError, match="representation_inputs"):
        _plugins({"grad_stats": {}}, m)
    m = _Toy()
    m.per_item_term = None
    with pytest.raises(MethodError, match="per-item"):
        _plugins({"replay": {}}, m)


def test_code_hash_covers_the_plugins_only_when_on():
    from pipeline.config.codehash import code_hash

    assert code_hash("dcmh", plugins=True) != code_hash("dcmh")
    assert code_hash("dcmh", plugins=False) == code_hash("dcmh")


def test_representation_plugins_and_diagnostics_in_the_loop(tmp_path, repo_params, prepared_root):
    from conftest import write_params
    from pipeline.config import expand_suite, load_params
    from pipeline.train.loop import run_trial

    def run(plugins, method="dcmh", epochs=3):
        p = copy.deepcopy(repo_params)
        p["methods"][method] = {"image_hidden": [16], "text_hidden": [16]}
        p["suites"] = {"t": {"profile": "demo", "dataset": "wikipedia", "methods": [method], "bits": [16], "seeds": [0],
                             "train": {"epochs": epochs, "optimizer": {"name": "adam", "lr": 0.001}, "lr_schedule": {"name": "constant"}, "plugins": plugins},
                             "eval": {"index": {"kinds": []}}}}
        spec = expand_suite(load_params(write_params(tmp_path, p)), "t")[0]
        return run_trial(spec, prepared_root / "data" / "prepared" / "wikipedia", device="cpu")

    plain = run({})
    watched = run({"diagnostics": {}, "grad_stats": {}})
    # diagnostics and gradient statistics watch, they do not change training
    assert watched.evaluation.flat_metrics()["i2t/map@all"] == plain.evaluation.flat_metrics()["i2t/map@all"]
    h = watched.history
    assert {"diag/bit_flip", "diag/bit_flip/image", "diag/grad_var/likelihood", "diag/hard_set", "diag/feat_grad/image/unstable"} <= set(h[0])
    assert all(0.0 <= e["diag/bit_flip"] <= 1.0 for e in h)
    assert h[0]["diag/bit_flip"] > h[-1]["diag/bit_flip"]  # codes settle
    assert all(e["diag/hard_set"] > 0 for e in h) and sum(e["diag/hard_exits"] for e in h) > 0
    both = run({"calibration": {}, "replay": {"size": 64}, "modality_scale": {}, "head_only": {"epochs": [2], "steps": 3}, "grad_balance": {}})
    hb = both.history
    assert hb[1]["plugin/replayed_items"] == 2 * 64  # one replay batch per phase (image, text)
    assert "plugin/head_only_steps" not in hb[1] and hb[2]["plugin/head_only_steps"] == 2 * 3
    assert {"loss/replay/image/likelihood", "plugin/modality_scale/text"} <= set(hb[1])
    assert all(np.isfinite(v) for e in hb for v in e.values())
    mf = run({"calibration": {}, "replay": {"size": 32}, "diagnostics": {}}, method="mfpmc", epochs=2)
    assert mf.history[1]["plugin/replayed_items"] == 32 and "diag/grad_var/j1_likelihood" in mf.history[1]
    with pytest.raises(MethodError, match="one pass per modality"):
        run({"modality_scale": {}}, method="mfpmc", epochs=1)


def test_cross_modal_methods_expose_their_backbone_features_and_inter_modal_term():
    from methods.base import DataInfo, ModalitySpec
    from methods.registry import create_method

    info = DataInfo("toy", {"image": ModalitySpec("image", "features", (8,)), "text": ModalitySpec("text", "features", (6,))}, 3, True, 10)
    x = {"image": torch.randn(4, 8), "text": torch.randn(4, 6)}
    for name, term in (("dcmh", "likelihood"), ("prdh", "inter"), ("cmhh", "focal"), ("mfpmc", "j1_likelihood")):
        m = create_method(name, {"image_hidden": [4], "text_hidden": [4]}, info, 16)
        assert m.inter_modal_term == term
        before = m.encode(x, "image").detach()
        pl = _plugins({"calibration": {}}, m, n_items=10)
        assert set(pl.calib) == {"image", "text"}
        assert torch.allclose(m.encode(x, "image"), before)  # the calibration starts as the identity
        with torch.no_grad():
            m.calibration_image.weight.zero_()
        assert not torch.allclose(m.encode(x, "image"), before)  # and sits in the encoding path
