"""params.yaml validation: good files load, bad ones fail with the key, the value and what is allowed."""

from __future__ import annotations

import copy

import pytest

from methods.registry import available_methods
from pipeline.config import expand_suite, load_params
from pipeline.core.errors import ConfigError
from tests.conftest import REPO, write_params


def test_repository_params_load():
    params = load_params(REPO / "params.yaml")
    assert set(params.suites_of_profile("demo")) == {"demo-wikipedia", "demo-digits", "demo-digits-lt100"}
    assert params.train.device == "auto"
    trials = expand_suite(params, "demo-wikipedia")
    assert len(trials) == 7 * 2 * 2
    assert {t.method for t in trials} == {"dcmh", "prdh", "cmhh", "mfpmc", "adih", "cmfh", "seph-km"}
    assert {t.method_params["image_hidden"] == [512] for t in trials if t.method == "mfpmc"} == {True}  # suite override
    assert all(t.train.epochs == 30 for t in trials)  # suite override applied


def _bad(tmp_path, repo_params, mutate) -> str:
    p = copy.deepcopy(repo_params)
    mutate(p)
    with pytest.raises(ConfigError) as exc:
        load_params(write_params(tmp_path, p))
    return str(exc.value)


def test_bits_not_multiple_of_8(tmp_path, repo_params):
    msg = _bad(tmp_path, repo_params, lambda p: p["suites"]["demo-digits"].update(bits=[16, 12]))
    assert "suites.demo-digits.bits" in msg and "12" in msg and "multiple of 8" in msg


def test_negative_bits(tmp_path, repo_params):
    msg = _bad(tmp_path, repo_params, lambda p: p["suites"]["demo-digits"].update(bits=[-8]))
    assert "suites.demo-digits.bits" in msg and "positive multiple of 8" in msg


def test_unknown_method_lists_available(tmp_path, repo_params):
    msg = _bad(tmp_path, repo_params, lambda p: p["suites"]["demo-digits"].update(methods=["csq", "dcmhx"]))
    assert "suites.demo-digits.methods[1]" in msg and "dcmhx" in msg and "csq" in msg and "dcmh" in msg


def test_unknown_dataset(tmp_path, repo_params):
    msg = _bad(tmp_path, repo_params, lambda p: p["datasets"].update(imagenet={}))
    assert "datasets.imagenet" in msg and "available" in msg and "wikipedia" in msg


def test_suite_dataset_not_configured(tmp_path, repo_params):
    msg = _bad(tmp_path, repo_params, lambda p: p["suites"]["demo-digits"].update(dataset="cifar"))
    assert "suites.demo-digits.dataset" in msg and "cifar" in msg


def test_wrong_type(tmp_path, repo_params):
    msg = _bad(tmp_path, repo_params, lambda p: p["train"].update(epochs="many"))
    assert "train.epochs" in msg and "many" in msg


def test_unknown_key_in_train(tmp_path, repo_params):
    msg = _bad(tmp_path, repo_params, lambda p: p["train"].update(epoch=3))
    assert "train.epoch" in msg and "unknown key" in msg


def test_unknown_method_hyperparameter(tmp_path, repo_params):
    msg = _bad(tmp_path, repo_params, lambda p: p["methods"].setdefault("csq", {}).update(lambdaa=1.0))
    assert "methods.csq.lambdaa" in msg and "unknown key" in msg


def test_bad_device(tmp_path, repo_params):
    msg = _bad(tmp_path, repo_params, lambda p: p["train"].update(device="tpu"))
    assert "train.device" in msg and "auto" in msg


def test_cross_modal_method_on_image_only_dataset(tmp_path, repo_params):
    msg = _bad(tmp_path, repo_params, lambda p: p["suites"]["demo-digits"].update(methods=["dcmh"]))
    assert "dcmh" in msg and "text" in msg and "digits" in msg


def test_unknown_profile(tmp_path, repo_params):
    msg = _bad(tmp_path, repo_params, lambda p: p["suites"]["demo-digits"].update(profile="fast"))
    assert "suites.demo-digits.profile" in msg and "demo" in msg


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_trial_key_changes_only_for_changed_method(tmp_path, repo_params):
    p = copy.deepcopy(repo_params)
    p["suites"]["mixed"] = {"profile": "demo", "dataset": "wikipedia", "methods": ["dcmh", "csq"], "bits": [16], "seeds": [0]}
    before = {t.method: t.key() for t in expand_suite(load_params(write_params(tmp_path, p)), "mixed")}
    p["methods"].setdefault("csq", {})["lambda_q"] = 0.5
    after = {t.method: t.key() for t in expand_suite(load_params(write_params(tmp_path, p)), "mixed")}
    assert before["dcmh"] == after["dcmh"]
    assert before["csq"] != after["csq"]


def test_method_train_override_precedence(tmp_path, repo_params):
    p = copy.deepcopy(repo_params)
    p["methods"].setdefault("csq", {})["train"] = {"optimizer": {"lr": 0.01}, "epochs": 7}
    params = load_params(write_params(tmp_path, p))
    t = expand_suite(params, "demo-digits")[0]
    assert t.train.optimizer.lr == 0.01
    assert t.train.epochs == 30  # the suite's own train block wins over the method's
    assert t.train.optimizer.name == "adam"  # untouched keys keep the global value


# -- method variants (ablations) ------------------------------------------------------------------
def _with_variant(repo_params, **variant):
    p = copy.deepcopy(repo_params)
    p["methods"]["crh-u"] = {"method": "crh", **variant}
    p["suites"]["demo-digits"]["methods"] = ["crh", "crh-u"]
    p["suites"]["demo-digits"]["method_params"] = {}
    return p


def test_variant_inherits_and_overrides_its_method(tmp_path, repo_params):
    p = _with_variant(repo_params, reassign=False, train={"epochs": 7})
    p["methods"].setdefault("crh", {})["margin"] = 0.3
    params = load_params(write_params(tmp_path, p))
    trials = {(t.name, t.bits, t.seed): t for t in expand_suite(params, "demo-digits")}
    base, var = trials[("crh", 16, 0)], trials[("crh-u", 16, 0)]
    assert (base.method, base.variant) == ("crh", None)
    assert (var.method, var.variant) == ("crh", "crh-u")
    assert base.method_params["reassign"] is True and var.method_params["reassign"] is False
    assert var.method_params["margin"] == 0.3 == base.method_params["margin"]  # inherited from methods.crh
    assert var.train.epochs == 30  # the suite's train block still wins over the variant's
    assert var.key().startswith("digits/crh-u/16b/s0/") and base.key().startswith("digits/crh/16b/s0/")
    assert var.resolved_hash() != base.resolved_hash()


def test_variant_with_equal_parameters_is_a_distinct_trial(tmp_path, repo_params):
    p = copy.deepcopy(repo_params)
    p["methods"]["crh-same"] = {"method": "crh"}  # a params.yaml variant that changes nothing
    p["suites"]["demo-digits"].update(methods=["crh", "crh-same"], method_params={})
    params = load_params(write_params(tmp_path, p))
    t = {x.name: x for x in expand_suite(params, "demo-digits") if x.bits == 16 and x.seed == 0}
    assert t["crh"].method_params == t["crh-same"].method_params
    assert t["crh"].resolved_hash() != t["crh-same"].resolved_hash()


def test_training_key_is_versioned_and_ignores_suite_and_eval(tmp_path, repo_params):
    from pipeline.config import KEY_VERSION, canonical_hash

    params = load_params(write_params(tmp_path, repo_params))
    t = expand_suite(params, "demo-digits")[0]
    payload = {"key_version": KEY_VERSION, **t.model_dump(mode="json", exclude={"suite": True, "eval": True, "train": {"checkpoint_every": True, "pin_memory": True}})}
    assert t.resolved_hash() == canonical_hash(payload)
    # another suite name or other evaluation settings: same training key, other evaluation key
    other = t.model_copy(update={"suite": "elsewhere", "eval": t.eval.model_copy(update={"topk": [5000], "ties": "index"})})
    assert other.key() == t.key() and other.eval_key() != t.eval_key()
    # the prepared data and the code are part of it
    assert t.model_copy(update={"data_sha256": "f" * 64}).key() != t.key()
    assert t.model_copy(update={"code_sha256": "0" * 64}).key() != t.key()
    assert len(t.code_sha256) == 64


def test_variant_errors_name_the_key(tmp_path, repo_params):
    msg = _bad(tmp_path, repo_params, lambda p: p["methods"].update({"crh-x": {"method": "nope"}}))
    assert "methods.crh-x.method" in msg and "'nope'" in msg and "crh" in msg
    msg = _bad(tmp_path, repo_params, lambda p: p["methods"].update({"crh-x": {"method": "crh", "reassignn": False}}))
    assert "methods.crh-x.reassignn" in msg and "unknown key" in msg
    msg = _bad(tmp_path, repo_params, lambda p: p["methods"].update({"csq": {"method": "crh"}}))
    assert "methods.csq.method" in msg and "registered method" in msg
    msg = _bad(tmp_path, repo_params, lambda p: p["methods"].update({"a": {"method": "crh"}, "b": {"method": "a"}}))
    assert "methods.b.method" in msg
    msg = _bad(tmp_path, repo_params, lambda p: p["methods"].update({"crhu": {"reassign": False}}))
    assert "methods.crhu" in msg and "variant needs 'method" in msg


def test_unknown_suite_method_lists_variants(tmp_path, repo_params):
    p = _with_variant(repo_params)
    p["suites"]["demo-digits"]["methods"] = ["crh", "crh-v"]
    msg = _bad(tmp_path, p, lambda p: None)
    assert "suites.demo-digits.methods[1]" in msg and "variants: " in msg and "crh-u" in msg.split("variants: ")[1]


def test_hashbench_list_shows_variants_with_their_changes(capsys):
    from pipeline.cli import main

    assert main(["--params", str(REPO / "params.yaml"), "list"]) == 0
    out = capsys.readouterr().out
    assert "variants (registered next to their method; params.yaml methods.<name> may add or override):" in out
    assert "crh-u            = crh with reassign=False, multi_head=False  [code]  CRH-U ablation" in out
    assert "mfpmc-base       = mfpmc with imfm=False, tmfm=False, lfpmc=False" in out


def test_variants_registered_in_code_resolve_and_take_params_yaml_overrides(tmp_path, repo_params):
    from methods.registry import available_variants

    code = available_variants()
    assert {"crh-u", "crh-m", "mfpmc-base", "adih-i", "ltdual-tiny"} <= set(code)
    assert all(v.method in available_methods() and v.description for v in code.values())
    p = copy.deepcopy(repo_params)
    p["methods"]["crh-u"] = {"margin": 0.25}  # a tweak of a code variant: no `method:` needed
    p["suites"]["demo-digits"]["methods"] = ["crh", "crh-u", "crh-m"]
    p["suites"]["demo-digits"]["method_params"] = {}
    t = {x.name: x for x in expand_suite(load_params(write_params(tmp_path, p)), "demo-digits") if x.bits == 16 and x.seed == 0}
    assert t["crh-u"].method == "crh" and t["crh-u"].method_params["reassign"] is False and t["crh-u"].method_params["margin"] == 0.25
    assert t["crh-u"].method_params["multi_head"] is False  # CRH-U = CRH-M without reassignment (CRH article)
    assert t["crh-m"].method_params["multi_head"] is False and t["crh-m"].method_params["reassign"] is True
    assert t["crh"].method_params["reassign"] is True


def test_a_suite_written_as_axes_expands_to_one_suite_per_protocol(tmp_path, repo_params):
    params = load_params(write_params(tmp_path, repo_params))
    assert params.members("cpu-lt-digits") == ["cpu-lt-digits-lt100", "cpu-lt-digits-lt50", "cpu-lt-digits-lt10"]
    assert params.members("demo-digits") == ["demo-digits"]
    s = params.suite("cpu-lt-digits-lt50")
    assert (s.dataset, s.protocol, s.profile) == ("digits", "lt50", "cpu")
    trials = expand_suite(params, "cpu-lt-digits-lt10")
    assert {t.protocol for t in trials} == {"lt10"} and len(trials) == 4 * 1 * 3
    assert "cpu-lt-digits-lt100" in params.suites_of_profile("cpu") and "cpu-lt-digits" not in params.suites_of_profile("cpu")
    p = copy.deepcopy(repo_params)
    p["suites"]["demo-digits"]["dataset"] = ["digits", "wikipedia"]
    with pytest.raises(ConfigError, match=r"suites\.demo-digits\.dataset: one dataset per suite"):
        load_params(write_params(tmp_path, p))


def test_method_recipe_sits_between_global_and_method_train(tmp_path, repo_params):
    """DCMH's recipe (its class's train_defaults) overrides the global train block; methods.dcmh.train and the
    suite's train override the recipe; methods without a recipe keep the global settings."""
    p = copy.deepcopy(repo_params)
    p["train"]["grad_clip"] = 5.0
    p["suites"]["mixed"] = {"profile": "demo", "dataset": "wikipedia", "methods": ["dcmh", "prdh"], "bits": [16], "seeds": [0]}
    t = {x.method: x for x in expand_suite(load_params(write_params(tmp_path, p)), "mixed")}
    d = t["dcmh"].train
    assert (d.optimizer.name, d.optimizer.momentum, d.sampler, d.lr_schedule.name, d.batch_size) == ("sgd", 0.0, "random_batches", "linear", 128)
    assert d.optimizer.lr == pytest.approx(10**-1.5) and d.lr_schedule.final_lr == 1e-6
    assert d.grad_clip == 5.0  # keys the recipe does not set keep the global value
    assert t["dcmh"].method_params["layer_init"] == {"scheme": "normal", "std": 0.01}
    assert (t["prdh"].train.optimizer.name, t["prdh"].train.sampler) == ("adam", "epoch_permutation")  # no recipe of its own
    assert t["prdh"].method_params["layer_init"]["scheme"] == "default"
    p["methods"].setdefault("dcmh", {})["train"] = {"sampler": "epoch_permutation"}
    p["suites"]["mixed"]["train"] = {"lr_schedule": {"name": "constant"}}
    d2 = {x.method: x for x in expand_suite(load_params(write_params(tmp_path, p)), "mixed")}["dcmh"].train
    assert (d2.sampler, d2.lr_schedule.name, d2.optimizer.name) == ("epoch_permutation", "constant", "sgd")


def test_sampler_and_schedule_errors_name_the_key(tmp_path, repo_params):
    msg = _bad(tmp_path, repo_params, lambda p: p["train"].update(sampler="shuffled"))
    assert "train.sampler" in msg and "random_batches" in msg
    msg = _bad(tmp_path, repo_params, lambda p: p["train"].update(lr_schedule={"name": "cosine"}))
    assert "train.lr_schedule.name" in msg
