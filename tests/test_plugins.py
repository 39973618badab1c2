"""Loss-layer plug-ins of the shared loop (pipeline/train/plugins.py, paper 000 Sec. 4.3): each mechanism
against a hand-computed case, then switched on from params.yaml through the real loop."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from pipeline.config import PluginsConfig, TrainConfig
from pipeline.core.errors import ConfigError, MethodError
from pipeline.train.plugins import LossPlugins, balance_weights, hard_pair_weights, temperature_at, update_ema

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_temperature_schedule_values():
    # geometric from 4 to 1 over 3 epochs: 4, 2, 1; linear: 4, 2.5, 1
    assert [temperature_at(4.0, 1.0, e, 3) for e in range(3)] == pytest.approx([4.0, 2.0, 1.0])
    assert [temperature_at(4.0, 1.0, e, 3, "linear") for e in range(3)] == pytest.approx([4.0, 2.5, 1.0])
    assert temperature_at(4.0, 0.5, 0, 1) == 0.5


def test_temperature_sets_the_methods_activation():
    from methods.base import DataInfo, ModalitySpec
    from methods.registry import create_method

    info = DataInfo("toy", {"image": ModalitySpec("image", "features", (8,))}, 3, False, 10)
    m = create_method("csq", {"hidden": []}, info, 16)
    z = torch.tensor([[2.0, -1.0]])
    m.set_hash_temperature(4.0)
    assert torch.allclose(m.squash(z), torch.tanh(z / 4.0))
    info2 = DataInfo("toy", {"image": ModalitySpec("image", "features", (8,)), "text": ModalitySpec("text", "features", (6,))}, 3, True, 10)
    c = create_method("cmhh", {"image_hidden": [], "text_hidden": []}, info2, 16)
    c.set_hash_temperature(2.0)
    x = torch.randn(4, 8)
    assert torch.allclose(c.image_net(x), torch.tanh(c.image_net[0](x) / 2.0))
    d = create_method("dcmh", {"image_hidden": [], "text_hidden": []}, info2, 16)
    with pytest.raises(MethodError, match="tempered"):
        d.set_hash_temperature(2.0)


def test_balance_coefficients_on_two_terms_with_known_gradient_norms():
    # norms 1 and 3: mean 2 -> weights 2 and 2/3, sum 8/3 -> renormalised to sum 2: 1.5 and 0.5
    assert balance_weights({"a": 1.0, "b": 3.0}) == pytest.approx({"a": 1.5, "b": 0.5})
    # late boost x2 on 'b': 2 and 4/3 -> sum 10/3 -> 1.2 and 0.8
    assert balance_weights({"a": 1.0, "b": 3.0}, late={"b": 2.0}) == pytest.approx({"a": 1.2, "b": 0.8})
    assert balance_weights({"a": 0.0, "b": 2.0}) == pytest.approx({"a": 1.0, "b": 1.0})  # a zero-gradient term keeps 1
    # norms 1 and 1000: mean 500.5 -> 500.5 (clipped to 10) and 0.5005; renormalised to sum 2
    w = balance_weights({"a": 1.0, "b": 1000.0}, max_weight=10.0)
    assert w == pytest.approx({"a": 2 * 10 / 10.5005, "b": 2 * 0.5005 / 10.5005})
    # the late boost applies after the clip: a term at max_weight still gains (10 * 2 = 20 against 0.5005)
    w = balance_weights({"a": 1.0, "b": 1000.0}, late={"a": 2.0}, max_weight=10.0)
    assert w["a"] / w["b"] == pytest.approx(20 / 0.5005)


def test_ema_and_hard_pair_weights_hand_computed():
    ema = np.array([0.0, 1.0, 0.0])
    seen = np.array([False, True, False])
    # first visit takes the value, a later one decays: 0.9 * 1 + 0.1 * 3 = 1.2
    assert update_ema(ema, seen, np.array([5.0, 3.0, 2.0]), 0.9) == pytest.approx([5.0, 1.2, 2.0])
    ema = np.array([0.1, 0.2, 1.0, 2.0, 3.0])
    seen = np.ones(5, dtype=bool)
    # the 0.3-quantile of the EMAs is 0.2 + 0.2 * (1.0 - 0.2) = 0.36: items 0 and 1 are low-loss
    w = hard_pair_weights(ema, seen, np.array([0, 1, 2, 3]), 0.3, 0.5)
    raw = np.array([0.5, 0.5, 1.0, 1.0])
    assert w == pytest.approx(raw / raw.mean())


class _Toy(torch.nn.Module):
    """y = W x with two loss terms of known gradients on W (the 'hash layer', width = bits)."""

    bits = 2
    supports_temperature = False
    per_item_term = "a"

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.lin.weight.fill_(1.0)
        self.per_item_requested = False

    def losses(self):
        y = self.lin(torch.ones(1, 1))[0]  # (2,) = W
        a_items = torch.stack([1.0 * y[0], 1.0 * y[0]])  # d a / d W = (2, 0): norm 2
        b = 3.0 * y[1]  # d b / d W = (0, 3): norm 3
        return {"loss": a_items.sum() + b, "a": a_items.sum(), "b": b, "per_item": a_items}


def _plugins(cfg: dict, model):
    from types import SimpleNamespace

    spec = SimpleNamespace(method="toy", key=lambda: "toy")
    return LossPlugins(PluginsConfig.model_validate(cfg), model, spec, n_items=2, n_epochs=2)


def test_grad_balance_equalises_the_terms_gradients_in_the_loop_step():
    m = _Toy()
    pl = _plugins({"grad_balance": {"momentum": 0.0}}, m)
    pl.backward(m.losses(), {"index": torch.tensor([0, 1])}, list(m.parameters()))
    # norms 2 and 3 -> weights 2.5/2 and 2.5/3, renormalised to sum 2: 1.2 and 0.8; the weighted gradients
    # then have equal norms: 1.2 * 2 = 0.8 * 3 = 2.4
    assert m.lin.weight.grad[:, 0].tolist() == pytest.approx([2.4, 2.4])
    assert pl.epoch_metrics() == pytest.approx({"plugin/weight/a": 1.2, "plugin/weight/b": 0.8})


def test_term_clipping_caps_one_terms_gradient_norm():
    m = _Toy()
    pl = _plugins({"term_grad": {"max_norm": {"b": 1.5}, "scale": {"a": 0.5}}}, m)
    pl.backward(m.losses(), {"index": torch.tensor([0, 1])}, list(m.parameters()))
    # a scaled by 0.5 (gradient 2 -> 1), b clipped from norm 3 to 1.5
    assert m.lin.weight.grad[:, 0].tolist() == pytest.approx([1.0, 1.5])
    assert pl.epoch_metrics()["plugin/clipped/b"] == 1.0


def test_hard_pairs_down_weights_low_loss_items():
    m = _Toy()
    pl = _plugins({"hard_pairs": {"decay": 0.5, "quantile": 0.5, "low_weight": 0.0, "warmup_epochs": 0}}, m)
    assert m.per_item_requested
    pl.ema["joint"] = np.array([0.0, 10.0])  # item 0 has stayed in the low-loss range, item 1 not
    pl.seen["joint"] = np.array([True, True])
    pl.backward(m.losses(), {"index": torch.tensor([0, 1])}, list(m.parameters()))
    # EMAs after this step: 0.5 * 0 + 0.5 * 1 = 0.5 and 0.5 * 10 + 0.5 * 1 = 5.5; median 3: item 0 low ->
    # weights (0, 1) / 0.5 = (0, 2): d a / d W_0 = 0 * 1 + 2 * 1 = 2 (as unweighted), all of it from item 1
    assert pl.ema["joint"] == pytest.approx([0.5, 5.5])
    assert m.lin.weight.grad[:, 0].tolist() == pytest.approx([2.0, 3.0])


def test_plugins_refuse_methods_without_the_hook():
    m = _Toy()
    m.per_item_term = None
    with pytest.raises(MethodError, match="per-item"):
        _plugins({"hard_pairs": {}}, m)
    with pytest.raises(MethodError, match="tempered"):
        _plugins({"temperature": {}}, _Toy())


def test_plugins_are_typed_and_idle_plugins_leave_the_trial_hash_alone():
    assert not TrainConfig().plugins.active()
    assert "plugins" not in TrainConfig().model_dump()
    on = TrainConfig(plugins={"temperature": {"start": 3.0}})
    assert on.model_dump()["plugins"]["temperature"]["start"] == 3.0
    with pytest.raises(Exception):
        TrainConfig(plugins={"temperatur": {}})


def test_plugins_from_params_yaml_run_in_the_loop_and_combine(tmp_path, repo_params, prepared_root):
    from conftest import write_params
    from pipeline.config import expand_suite, load_params
    from pipeline.train.loop import run_trial

    p = copy.deepcopy(repo_params)
    p["methods"]["dcmh"] = {"image_hidden": [32], "text_hidden": [32]}
    plugins = {"grad_balance": {"late_terms": ["likelihood"], "late_start": 0.5}, "hard_pairs": {"warmup_epochs": 1}, "term_grad": {"max_norm": {"balance": 0.1}}}
    p["suites"] = {"t": {"profile": "demo", "dataset": "wikipedia", "methods": ["dcmh"], "bits": [16], "seeds": [0],
                         "train": {"epochs": 3, "plugins": plugins}, "eval": {"index": {"kinds": []}}}}
    spec = expand_suite(load_params(write_params(tmp_path, p)), "t")[0]
    out = run_trial(spec, prepared_root / "data" / "prepared" / "wikipedia", device="cpu")
    last = out.history[-1]
    assert {"plugin/weight/likelihood", "plugin/clipped/balance", "plugin/image/low_loss_items"} <= set(last)
    assert last["plugin/weight/likelihood"] > out.history[0]["plugin/weight/likelihood"] * 0.5  # boosted late
    assert all(np.isfinite(v) for h in out.history for v in h.values())
    p["suites"]["t"]["train"]["plugins"] = {"temperature": {}}
    with pytest.raises(MethodError, match="tempered"):
        run_trial(expand_suite(load_params(write_params(tmp_path, p)), "t")[0], prepared_root / "data" / "prepared" / "wikipedia", device="cpu")
    p["suites"]["t"]["train"]["plugins"] = {"hard_pair": {}}
    with pytest.raises(ConfigError, match="plugins.hard_pair"):
        expand_suite(load_params(write_params(tmp_path, p)), "t")
