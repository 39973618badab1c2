"""Paper setups (issue 12): each method's network, ImageNet weights and recipe in the full suites; the backbone
learning-rate ratio as a parameter group of the shared loop; the step schedule; the weights each bench stage
depends on in dvc.yaml. Nothing here downloads or loads weights: trials are resolved, not trained."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import load_params, resolve_trial, suite_requests
from pipeline.config.model import LRScheduleConfig, OptimizerConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


def one_trial_per_method(params, suite):
    """The resolved first trial of every method of ``suite`` (bits and seeds do not change params or recipe)."""
    out, seen = [], set()
    for req in suite_requests(params, suite):
        if req.method not in seen:
            seen.add(req.method)
            out.append(resolve_trial(params, req))
    return out


def full_suites(params):
    return [n for n, s in params.suites.items() if s.profile == "full"]


#: what each method runs in a suite with network: paper (backbone parameter, backbone, weights entry)
PAPER_NETWORK = {
    "dcmh": ("image_backbone", "cnnf", "image_weights", "cnnf_imagenet_vgg_f"),
    "prdh": ("image_backbone", "cnnf", "image_weights", "cnnf_imagenet_vgg_f"),
    "cmhh": ("image_backbone", "cnnf", "image_weights", "cnnf_imagenet_vgg_f"),
    "mfpmc": ("image_backbone", "cnnf", "image_weights", "cnnf_imagenet_vgg_f"),
    "csq": ("backbone", "resnet50", "weights", "resnet50_imagenet1k_v1"),
    "orthohash": ("backbone", "alexnet", "weights", "alexnet_imagenet1k_v1"),
    "crh": ("backbone", "resnet34", "weights", "resnet34_imagenet1k_v1"),
    "ltdual": ("backbone", "dual", "swin_weights", "swin_t_imagenet1k_v1"),
}


def test_full_pixel_suites_use_each_papers_network_with_imagenet_weights(params):
    from pipeline.data.weights import get_weights

    paper_suites = [n for n in full_suites(params) if params.suites[n].network == "paper"]
    expected = {"full-crh-nabirds", "full-crh-coco", "full-mfpmc-mirflickr", "full-mfpmc-nuswide", "full-mfpmc-ablation-mirflickr",
                "full-mfpmc-ablation-nuswide", "full-lt-cifar10-lt100", "full-lt-cifar10-lt50", "full-lt-cifar10-lt10",
                "full-lt-imagenette-lt100", "full-lt-imagenette-lt50", "full-lt-imagenette-lt10"}
    assert expected <= set(paper_suites)
    checked = set()
    for suite in paper_suites:
        for t in one_trial_per_method(params, suite):
            bkey, backbone, wkey, weights = PAPER_NETWORK[t.method]
            assert t.method_params[bkey] == backbone, (suite, t.name)
            assert t.method_params[wkey] == weights, (suite, t.name)
            assert get_weights(weights).name == weights  # a registered entry, fetched by fetch-weights@<entry>
            checked.add(t.method)
    assert checked == set(PAPER_NETWORK)


def test_demo_and_cpu_suites_keep_their_own_setup(params):
    """The paper setup is opt-in: no demo/cpu trial names weights or gets a paper recipe."""
    for suite, cfg in params.suites.items():
        if cfg.profile not in ("demo", "cpu"):
            continue
        assert cfg.network == "default"
        for t in one_trial_per_method(params, suite):
            assert not any(k.endswith("weights") and v for k, v in t.method_params.items()), (suite, t.name)
            assert t.train.optimizer.backbone_lr_mult == 1.0
            assert "backbone_lr_mult" not in t.training_payload()["train"]["optimizer"]  # keys unchanged by the new field
            if t.method in ("csq", "orthohash", "crh"):  # the new encoder field stays out of their keys while unset
                assert "input_size" not in t.method_params


def test_recipes_in_the_full_suites(params):
    trials = {t.method: t for t in one_trial_per_method(params, "full-lt-cifar10-lt100")}
    csq, oh, lt = trials["csq"].train, trials["orthohash"].train, trials["ltdual"].train
    # CSQ's authors' code: Adam 1e-3, backbone x0.05, x0.7 every 10 epochs, 90 epochs, batch 64
    assert (csq.optimizer.name, csq.optimizer.lr, csq.optimizer.backbone_lr_mult) == ("adam", 1e-3, 0.05)
    assert (csq.lr_schedule.name, csq.lr_schedule.step_size, csq.lr_schedule.gamma, csq.epochs, csq.batch_size) == ("step", 10, 0.7, 90, 64)
    # OrthoHash's code: Adam 1e-4, wd 5e-4, StepLR at 0.8 of the run, 100 epochs, batch 256
    assert (oh.optimizer.lr, oh.optimizer.weight_decay, oh.lr_schedule.step_fraction, oh.epochs, oh.batch_size) == (1e-4, 5e-4, 0.8, 100, 256)
    # paper 004 Sec. 3.2: batch 32, 50 epochs, Adam 1e-3, cosine over the run
    assert (lt.batch_size, lt.epochs, lt.optimizer.name, lt.optimizer.lr) == (32, 50, "adam", 1e-3)
    assert trials["ltdual"].method_params["cosine_epochs"] == "train"
    dcmh = {t.method: t for t in one_trial_per_method(params, "full-mfpmc-mirflickr")}["dcmh"].train
    assert (dcmh.optimizer.name, dcmh.epochs, dcmh.lr_schedule.name) == ("sgd", 500, "linear")


def lr_factors(trial) -> list[float]:
    """The learning rate of every epoch of a trial relative to its first: the loop's schedule times a method's
    own per-epoch schedule (ltdual's cosine, applied at the end of each epoch to the next one)."""
    tr = trial.train
    out = []
    for e in range(tr.epochs):
        f = tr.lr_schedule.lr_at(tr.optimizer.lr, e, tr.epochs) / tr.optimizer.lr
        if trial.method == "ltdual":
            t = trial.method_params["cosine_epochs"]
            t = tr.epochs if t == "train" else t
            if t:
                f *= 0.5 * (1.0 + math.cos(math.pi * min(e, t) / t))
        out.append(f)
    return out


def test_no_full_suite_trains_at_lr_zero_before_its_last_epoch(params):
    """Issue 12: the full long-tail suites trained half the run at lr 0 (cosine over 50 of 100 epochs)."""
    for suite in full_suites(params):
        for t in one_trial_per_method(params, suite):
            f = lr_factors(t)
            assert all(x > 1e-9 for x in f), (suite, t.name, min(f), f.index(min(f)))


def test_lr_factor_check_would_catch_the_old_long_tail_setting(params):
    t = one_trial_per_method(params, "full-lt-cifar10-lt100")[-1]
    assert t.method == "ltdual"
    old = t.model_copy(update={"method_params": {**t.method_params, "cosine_epochs": 50}, "train": t.train.model_copy(update={"epochs": 100})})
    assert min(lr_factors(old)) == 0.0


def test_list_resolved_shows_cnnf_with_imagenet_weights_and_each_recipe():
    from pipeline.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["--root", str(ROOT), "list", "--resolved", "full-mfpmc-mirflickr"]) == 0
    setups = {line.split(":")[0].split()[-1]: line for line in buf.getvalue().splitlines() if line.startswith("  setup ")}
    assert set(setups) == {"dcmh", "prdh", "cmhh", "mfpmc"}
    for m, line in setups.items():
        assert '"image_backbone": "cnnf"' in line and '"image_weights": "cnnf_imagenet_vgg_f"' in line, line
    assert "sgd lr 0.0316228" in setups["dcmh"] and "500 epochs" in setups["dcmh"] and "random_batches" in setups["dcmh"]
    assert "sgd lr 0.001" in setups["mfpmc"]


def test_step_schedule_matches_torch_steplr():
    for sched, epochs, size in ((LRScheduleConfig(name="step", step_size=10, gamma=0.7), 35, 10), (LRScheduleConfig(name="step", step_fraction=0.8, gamma=0.1), 100, 80)):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
        ref = torch.optim.lr_scheduler.StepLR(opt, step_size=size, gamma=sched.gamma)
        for e in range(epochs):
            assert sched.lr_at(0.5, e, epochs) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), e
            opt.step()
            ref.step()
    with pytest.raises(ValueError, match="exactly one of step_size"):
        LRScheduleConfig(name="step")
    assert "gamma" not in LRScheduleConfig(name="linear").model_dump()  # other schedules' keys unchanged


def test_backbone_lr_mult_is_a_parameter_group_of_the_loop(one_torch_thread):
    from methods.base import DataInfo
    from methods.registry import create_method
    from pipeline.core.types import ModalitySpec
    from pipeline.train.loop import optimizer_factory

    info = DataInfo(dataset="t", modalities={"image": ModalitySpec("image", "pixels", (3, 32, 32))}, n_classes=4, n_train=8, multi_label=False)
    torch.manual_seed(0)
    m = create_method("csq", {"backbone": "resnet18", "hidden": [16], "input_size": 40}, info, 16)
    cfg = OptimizerConfig(name="adam", lr=1e-3, backbone_lr_mult=0.05)
    opt = m.configure_optimizers(optimizer_factory(cfg, m))["joint"]
    head, body = opt.param_groups
    trunk = {id(p) for p in m.net.trunk.parameters()}
    assert {id(p) for p in body["params"]} == trunk and trunk.isdisjoint(id(p) for p in head["params"])
    assert (head["lr"], body["lr"]) == (1e-3, pytest.approx(5e-5))
    assert len(head["params"]) + len(body["params"]) == len(list(m.parameters()))
    one = m.configure_optimizers(optimizer_factory(OptimizerConfig(), m))["joint"]
    assert len(one.param_groups) == 1  # at the default 1.0: one group, as before
    seen = []
    m.net.trunk.inner.register_forward_pre_hook(lambda mod, a: seen.append(tuple(a[0].shape[-2:])))
    m.net(torch.rand(2, 3, 32, 32))
    assert seen == [(40, 40)]  # input_size resizes in front of the backbone


def test_bench_stages_depend_on_the_weights_their_trials_load(params):
    """dvc.yaml's bench@<suite> deps (through dvc-bench.yaml) list the weights folders, as DVC itself reads them."""
    from dvc.repo import Repo

    from pipeline.config import dvcvars

    assert (ROOT / dvcvars.BENCH_VARS).read_text() == dvcvars.render(params), "dvc-bench.yaml is stale: run `hashbench dvc-vars`"
    stages = {s.addressing: s for s in Repo(str(ROOT)).index.stages}
    deps = {name: {str(d.def_path) for d in s.deps} for name, s in stages.items() if name.startswith("bench@")}
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())["suites"]
    assert set(deps) == {f"bench@{n}" for n in raw}  # every suite of params.yaml has its stage
    assert "data/weights/cnnf_imagenet_vgg_f" in deps["bench@full-mfpmc-mirflickr"]
    assert {d for d in deps["bench@full-crh-coco"] if d.startswith("data/weights/")} == {
        "data/weights/resnet50_imagenet1k_v1", "data/weights/alexnet_imagenet1k_v1", "data/weights/resnet34_imagenet1k_v1"}
    for name, cfg in raw.items():
        if cfg["profile"] == "demo":
            assert not any(d.startswith("data/weights/") for d in deps[f"bench@{name}"]), name
    fetch = {str(o.def_path) for n, s in stages.items() if n.startswith("fetch-weights@") for o in s.outs}
    needed = {d for ds in deps.values() for d in ds if d.startswith("data/weights/")}
    assert needed <= fetch  # each is the out of a fetch-weights@<entry> stage
