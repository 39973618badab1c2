"""Batch samplers (pipeline/train/samplers.py), the lr schedule and the layer-init recipe setting."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch

from pipeline.config import LRScheduleConfig, SamplerName, TrainConfig
from pipeline.core.errors import ConfigError, MethodError, TrainingError
from pipeline.train.samplers import SAMPLERS, ClassBalanced, make_sampler


def _epochs(name, n, bs, seed, k=1, labels=None, world=1, rank=0):
    s = make_sampler(name, n, bs, labels)
    rng = np.random.default_rng(seed)
    return [s.epoch(rng, world=world, rank=rank) for _ in range(k)]


def test_sampler_names_agree_with_the_config():
    assert tuple(typing.get_args(SamplerName)) == SAMPLERS
    assert TrainConfig().sampler == "epoch_permutation"  # the loop's behaviour before samplers were a setting
    with pytest.raises(Exception, match="random_batches"):
        TrainConfig(sampler="shuffle")
    with pytest.raises(TrainingError, match="unknown sampler"):
        make_sampler("shuffle", 10, 2)


def test_epoch_permutation_covers_every_item_once_per_epoch_and_matches_the_old_loop():
    n, bs = 103, 10
    for batches in _epochs("epoch_permutation", n, bs, seed=5, k=3):
        assert [len(b) for b in batches] == [10] * 10 + [3]
        assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(n))
    # exactly the draws of the loop before this setting existed: one rng.permutation(n) per pass
    rng = np.random.default_rng(5)
    old = rng.permutation(n)
    assert np.array_equal(np.concatenate(_epochs("epoch_permutation", n, bs, seed=5)[0]), old)


def test_epoch_permutation_keeps_the_rank_sharding():
    n, bs, world = 50, 8, 2
    shards = [_epochs("epoch_permutation", n, bs, seed=1, world=world, rank=r)[0] for r in range(world)]
    order = np.random.default_rng(1).permutation(n)
    for r in range(world):
        assert np.array_equal(np.concatenate(shards[r]), order[r::world])
        assert all(len(b) <= bs for b in shards[r])


def test_random_batches_iterations_and_with_replacement_statistics():
    n, bs, epochs = 200, 16, 400
    runs = _epochs("random_batches", n, bs, seed=0, k=epochs)
    assert all(len(batches) == n // bs for batches in runs)  # n // batch iterations per epoch (DCMH's code)
    assert all(len(b) == bs and len(np.unique(b)) == bs for batches in runs for b in batches)  # distinct within a batch
    counts = np.stack([np.bincount(np.concatenate(batches), minlength=n) for batches in runs])  # (epochs, n)
    # an item appears Binomial(n // bs, bs / n) times per epoch: mean 12 * 0.08 = 0.96, variance 0.883
    p, k = bs / n, n // bs
    assert counts.mean() == pytest.approx(k * p)
    assert counts.var() == pytest.approx(k * p * (1 - p), rel=0.05)
    # so some items are missed in an epoch (P = (1 - p)^k = 0.368) and some drawn twice: not a permutation
    assert np.mean(counts == 0) == pytest.approx((1 - p) ** k, abs=0.02)
    assert (counts >= 2).any()
    # every item is equally likely over many epochs
    per_item = counts.sum(axis=0)
    assert per_item.min() > 0.8 * per_item.mean() and per_item.max() < 1.2 * per_item.mean()


def test_random_batches_small_part_and_distributed_slices():
    assert [len(b) for b in _epochs("random_batches", 5, 8, seed=0)[0]] == [8]  # one batch of all items plus repeats
    n, bs, world = 100, 10, 2
    a = [_epochs("random_batches", n, bs, seed=3, world=world, rank=r)[0] for r in range(world)]
    assert len(a[0]) == len(a[1]) == n // (bs * world)  # the same number of steps on every worker
    for b0, b1 in zip(*a):
        assert len(b0) == len(b1) == bs and not set(b0) & set(b1)  # disjoint slices of one global draw


def test_class_balanced_single_label_classes_equally_often():
    rng = np.random.default_rng(0)
    counts = [400, 40, 4]  # imbalance 100
    y = np.repeat(np.arange(3), counts)
    labels = np.eye(3, dtype=np.uint8)[y]
    runs = _epochs("class_balanced", len(y), 32, seed=1, k=100, labels=labels)
    assert all(len(batches) == -(-len(y) // 32) for batches in runs)  # ceil(n / batch) batches per epoch
    drawn = y[np.concatenate([b for batches in runs for b in batches])]
    share = np.bincount(drawn, minlength=3) / len(drawn)
    assert share == pytest.approx([1 / 3] * 3, abs=0.02)
    # within a class every item equally likely: the 4 tail items each about a quarter of the tail draws
    tail = np.concatenate([b for batches in runs for b in batches])
    tail = tail[y[tail] == 2]
    assert np.bincount(tail - 440, minlength=4) / len(tail) == pytest.approx([0.25] * 4, abs=0.05)
    del rng


def test_class_balanced_multi_label_definition():
    # class 0 on items 0-89, class 1 on items 80-99 (10 items carry both), item 100 has no label
    labels = np.zeros((101, 2), dtype=np.uint8)
    labels[:90, 0] = 1
    labels[80:100, 1] = 1
    s = ClassBalanced(101, 10, labels)
    assert [len(m) for m in s.members] == [90, 20, 1]  # unlabelled items form one class of their own
    draws = np.concatenate([b for _ in range(300) for b in s.epoch(np.random.default_rng(_))])
    # the drawing class is uniform over the 3: item 100 gets 1/3 of the slots, items 90-99 (class 1 only) 1/3 * 10/20
    assert np.mean(draws == 100) == pytest.approx(1 / 3, abs=0.02)
    assert np.mean((draws >= 90) & (draws < 100)) == pytest.approx(1 / 6, abs=0.02)
    # an item with both labels is reachable through either class: 1/3 * 1/90 + 1/3 * 1/20 per slot
    assert np.mean(draws == 85) == pytest.approx(1 / 270 + 1 / 60, abs=0.004)
    with pytest.raises(TrainingError, match="needs the training labels"):
        make_sampler("class_balanced", 10, 2)


@pytest.mark.parametrize("name", SAMPLERS)
def test_same_seed_same_batches(name):
    labels = np.eye(4, dtype=np.uint8)[np.arange(60) % 4]
    a = _epochs(name, 60, 7, seed=11, k=3, labels=labels)
    b = _epochs(name, 60, 7, seed=11, k=3, labels=labels)
    c = _epochs(name, 60, 7, seed=12, k=3, labels=labels)
    flat = lambda runs: np.concatenate([x for batches in runs for x in batches])  # noqa: E731
    assert [[x.tolist() for x in e] for e in a] == [[x.tolist() for x in e] for e in b]
    assert not np.array_equal(flat(a), flat(c))
    assert all(x.dtype == np.int64 for e in a for x in e)


def test_lr_schedule_values():
    lin = LRScheduleConfig(name="linear", final_lr=1e-6)
    lr0 = 10**-1.5
    vals = [lin.lr_at(lr0, e, 500) for e in range(500)]
    assert vals == pytest.approx(list(np.linspace(lr0, 1e-6, 500)))  # DCMH's authors' TensorFlow schedule
    log = LRScheduleConfig(name="log", final_lr=1e-3)
    assert [log.lr_at(lr0, e, 500) for e in range(500)] == pytest.approx(list(np.logspace(-1.5, -3, 500)))  # their MATLAB one
    assert LRScheduleConfig().lr_at(0.01, 7, 10) == 0.01
    assert lin.lr_at(0.01, 0, 1) == 0.01


def test_fit_applies_the_sampler_and_the_lr_schedule_per_phase(tmp_path, repo_params, prepared_root):
    """The shared loop draws the configured sampler anew for every phase and sets every optimizer's rate per epoch."""
    from conftest import trial_spec
    from methods.base import TrainData
    from methods.registry import create_method
    from pipeline.data.formats import PreparedDataset
    from pipeline.data.loaders import SplitData
    from pipeline.train.loop import fit, make_train_data

    spec = trial_spec(tmp_path, repo_params, "dcmh", 16, 3, dataset="wikipedia", method_params={"image_hidden": [8], "text_hidden": [8]})
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"batch_size": 100})})
    assert spec.train.sampler == "random_batches" and spec.train.lr_schedule.name == "linear"  # DCMH's recipe
    ds = PreparedDataset(prepared_root / "data/prepared/wikipedia")
    data = SplitData(ds, "standard", ("image", "text"))
    info = ds.info("standard")
    method = create_method("dcmh", spec.method_params, info, 16)
    seen: list[tuple[str, tuple[int, ...], float]] = []
    step = method.training_step

    def spy(batch, phase):
        seen.append((phase, tuple(batch["index"].tolist()), method_opts[phase].param_groups[0]["lr"]))
        return step(batch, phase)

    method.training_step = spy
    real_configure = method.configure_optimizers

    def configure(make):
        method_opts.update(real_configure(make))
        return method_opts

    method_opts: dict = {}
    method.configure_optimizers = configure
    td: TrainData = make_train_data(data.train, info, 100, "cpu")
    history, _ = fit(method, data.train, td, spec, np.random.default_rng(0), "cpu", start=lambda: method.on_train_start(td))
    n = len(data.train)
    per_phase = n // 100
    assert len(seen) == 3 * 2 * per_phase  # epochs x phases x n // batch
    rng = np.random.default_rng(0)
    sampler = make_sampler("random_batches", n, 100)
    expected = [tuple(b.tolist()) for _ in range(3 * 2) for b in sampler.epoch(rng)]
    assert [s[1] for s in seen] == expected  # one draw per phase, from the loop's seeded generator
    lrs = [h["lr"] for h in history]
    assert lrs == pytest.approx(list(np.linspace(10**-1.5, 1e-6, 3)))
    assert {round(s[2], 12) for s in seen[per_phase * 2 :][: per_phase * 2]} == {round(lrs[1], 12)}


# -- layer initialisation ------------------------------------------------------------------------------
def _info():
    from methods.base import DataInfo, ModalitySpec

    return DataInfo("toy", {"image": ModalitySpec("image", "features", (32,)), "text": ModalitySpec("text", "features", (10,))}, 4, True, 64)


def _linears(net):
    return [m for m in net.modules() if isinstance(m, torch.nn.Linear)]


def test_layer_init_normal_sets_every_encoder_layer_and_is_recorded():
    from methods.registry import create_method

    torch.manual_seed(0)
    m = create_method("dcmh", {"image_hidden": [512], "text_hidden": [512], "layer_init": {"scheme": "normal", "std": 0.05}}, _info(), 16)
    for layer in _linears(m.image_net) + _linears(m.text_net):
        assert float(layer.weight.detach().std()) == pytest.approx(0.05, rel=0.1)
        assert abs(float(layer.weight.detach().mean())) < 0.01
        assert float(layer.bias.detach().std()) == pytest.approx(0.05, rel=0.5)  # biases N(0, std) too (DCMH's authors' code)
    assert m.provenance_tags()["layer_init"] == "normal(0, 0.05) weights and biases on 4 layers of 2 encoder(s)"


def test_layer_init_schemes_and_default_draws_nothing():
    from methods.registry import create_method, get_method_class

    cls = get_method_class("csq")
    torch.manual_seed(1)
    a = create_method("csq", {"hidden": [256], "layer_init": {"scheme": "default"}}, _info(), 16)
    after_a = torch.get_rng_state()
    torch.manual_seed(1)
    b = cls(cls.Params(hidden=[256]), _info(), 16)  # the constructor alone, no init step
    assert torch.equal(after_a, torch.get_rng_state())  # 'default' draws nothing: results are what they were
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.provenance_tags()["layer_init"] == "pytorch default"
    x = create_method("csq", {"hidden": [256], "layer_init": {"scheme": "xavier"}}, _info(), 16)
    first = _linears(x.net)[0]
    bound = (6 / (32 + 256)) ** 0.5
    assert float(first.weight.detach().abs().max()) <= bound and float(first.weight.detach().abs().max()) > 0.9 * bound
    assert float(first.bias.detach().abs().max()) == 0.0
    k = create_method("csq", {"hidden": [4096], "layer_init": {"scheme": "kaiming"}}, _info(), 16)
    first = _linears(k.net)[0]
    assert float(first.weight.detach().std()) == pytest.approx((2 / 32) ** 0.5, rel=0.05)
    assert float(first.bias.detach().abs().max()) == 0.0


def test_layer_init_refused_without_shared_encoders():
    from methods.registry import create_method

    with pytest.raises(MethodError, match="shared encoder block"):
        create_method("mfpmc", {"image_hidden": [16], "text_hidden": [16], "layer_init": {"scheme": "normal"}}, _info(), 16)


def test_layer_init_unknown_scheme_names_the_key(tmp_path, repo_params):
    import copy

    from conftest import write_params
    from pipeline.config import expand_suite, load_params

    p = copy.deepcopy(repo_params)
    p["methods"].setdefault("csq", {})["layer_init"] = {"scheme": "orthogonal"}
    with pytest.raises(ConfigError, match=r"methods\.csq\.layer_init\.scheme"):
        expand_suite(load_params(write_params(tmp_path, p)), "demo-digits")
