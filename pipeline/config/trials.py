"""Resolution of trials: a method's block (and its variant's), merged training settings, the suite grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from methods.registry import get_method_class
from pipeline.config.model import EvalConfig, IncrementalTrial, Params, TrainConfig, TrialSpec, deep_merge, validate_model
from pipeline.core.errors import ConfigError
from pipeline.data.registry import get_dataset


def method_block(params: Params, method: str) -> dict[str, Any]:
    """The ``methods.<method>`` block as written, a variant's merged over its registered method's block
    (without the ``method`` key)."""
    impl = params.implementation(method)
    block = dict(params.methods.get(method) or {})
    if impl != method:
        block = deep_merge(params.methods.get(impl) or {}, block)
    block.pop("method", None)
    return block


def method_params(params: Params, method: str, override: Mapping[str, Any], where: str | None = None) -> dict[str, Any]:
    """Validated hyperparameters of ``method`` (a method or a variant; its block merged with a suite
    override), as a dict."""

    cls = get_method_class(params.implementation(method))
    block = deep_merge(method_block(params, method), override)
    block.pop("train", None)
    model = validate_model(cls.Params, block, where or f"methods.{method}", params.source)
    return model.model_dump(mode="json")


def method_train(params: Params, method: str) -> dict[str, Any]:
    """Training settings of ``method`` outside any suite, as a dict: the global ``train`` block < the
    method's recipe in code (its class's ``train_defaults``, e.g. DCMH's SGD schedule and sampler, each
    value with its source in the method's docstring) < the params.yaml ``methods.<method>.train`` block."""
    merged = params.train.model_dump()
    recipe = getattr(get_method_class(params.implementation(method)), "train_defaults", None) or {}
    merged = deep_merge(merged, recipe)
    return deep_merge(merged, method_block(params, method).get("train") or {})


def trial_train(params: Params, suite: str, method: str) -> TrainConfig:
    """Training settings of one method in one suite: global < method's recipe (code) < method's ``train``
    block < suite's ``train``."""
    merged = deep_merge(method_train(params, method), params.suites[suite].train)
    return validate_model(TrainConfig, merged, f"suites.{suite}.train (with methods.{method}.train)", params.source)


def expand_suite(params: Params, suite_name: str) -> list[TrialSpec]:
    """The trial grid of a suite: methods x bits x seeds, each fully resolved."""

    suite = params.suite(suite_name)
    spec = get_dataset(suite.dataset)
    protocol = suite.protocol or spec.default_protocol
    ds_params = params.dataset_params(suite.dataset).model_dump(mode="json")
    eval_cfg = validate_model(EvalConfig, deep_merge(params.eval.model_dump(), suite.eval), f"suites.{suite_name}.eval", params.source)
    trials = []
    for method in suite.methods:
        mp = method_params(params, method, suite.method_params.get(method, {}))
        train = trial_train(params, suite_name, method)
        for bits in suite.bits:
            if suite.tuned:
                mp, train = apply_tuned(params, suite.dataset, method, bits, suite.method_params.get(method, {}), trial_train(params, suite_name, method))
            incs = [None] if suite.incremental is None else [
                IncrementalTrial(new_classes=n, **suite.incremental.model_dump(exclude={"new_classes"})) for n in suite.incremental.new_classes
            ]
            for seed, inc in ((s, i) for s in suite.seeds for i in incs):
                trials.append(
                    TrialSpec(
                        suite=suite_name,
                        dataset=suite.dataset,
                        protocol=protocol,
                        method=params.implementation(method),
                        variant=method if params.implementation(method) != method else None,
                        incremental=inc,
                        bits=bits,
                        seed=seed,
                        method_params=mp,
                        dataset_params=ds_params,
                        train=train,
                        eval=eval_cfg,
                    )
                )
    return trials


def tuned_file(params: Params, dataset: str, method: str, bits: int) -> Path:
    """Where ``hashbench tune`` writes the best configuration: tuned/<dataset>/<method>-<bits>.yaml
    beside the params file."""
    return Path(params.source).resolve().parent / "tuned" / dataset / f"{method}-{bits}.yaml"


def apply_tuned(params: Params, dataset: str, method: str, bits: int, suite_override: Mapping[str, Any], train: TrainConfig) -> tuple[dict[str, Any], TrainConfig]:
    """Method parameters and training settings with a tuned file's ``method_params``/``train`` merged
    in (tuned values win over params.yaml and the suite's method_params). Changes the trial key."""
    path = tuned_file(params, dataset, method, bits)
    if not path.exists():
        raise ConfigError(f"{path}: no tuned configuration for {method} at {bits} bits on {dataset} (a suite has tuned: true); run `hashbench tune --method {method} --dataset {dataset} --bits {bits}`")
    try:
        body = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("method_params", {}), dict):
        raise ConfigError(f"{path}: expected a mapping with 'method_params'")
    mp = method_params(params, method, deep_merge(suite_override, body.get("method_params") or {}), where=f"{path}: method_params")
    train_cfg = validate_model(TrainConfig, deep_merge(train.model_dump(), body.get("train") or {}), "train", str(path))
    return mp, train_cfg


