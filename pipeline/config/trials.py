"""Resolution of trials: a method's block (and its variant's), merged training settings, the suite grid."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from methods.registry import available_variants, get_method_class
from pipeline.config.codehash import code_hash
from pipeline.config.model import EvalConfig, IncrementalTrial, Params, TrainConfig, TrialSpec, deep_merge, validate_model
from pipeline.core.errors import ConfigError
from pipeline.data.registry import get_dataset


def method_block(params: Params, method: str) -> dict[str, Any]:
    """The ``methods.<method>`` block as written; for a variant: the registered method's block < the
    variant's parameters registered in code (``register_variant``) < its own params.yaml block (without
    the ``method`` key)."""
    impl = params.implementation(method)
    block = dict(params.methods.get(method) or {})
    if impl != method:
        code = available_variants().get(method)
        base = deep_merge(params.methods.get(impl) or {}, dict(code.params) if code is not None and code.method == impl else {})
        block = deep_merge(base, block)
    block.pop("method", None)
    return block


def paper_setup(params: Params, method: str, part: str) -> dict[str, Any]:
    """The ``params`` or ``train`` part of the method's paper setup (its class's ``paper_setup``)."""
    return dict(get_method_class(params.implementation(method)).paper_setup.get(part) or {})


def method_params(params: Params, method: str, override: Mapping[str, Any], where: str | None = None, paper: bool = False) -> dict[str, Any]:
    """Validated hyperparameters of ``method`` (a method or a variant; its block merged with a suite
    override), as a dict; with ``paper`` the method's paper setup lies under its block."""

    cls = get_method_class(params.implementation(method))
    block = deep_merge(method_block(params, method), override)
    if paper:
        block = deep_merge(paper_setup(params, method, "params"), block)
    block.pop("train", None)
    model = validate_model(cls.Params, block, where or f"methods.{method}", params.source)
    return model.model_dump(mode="json")


def method_train(params: Params, method: str, paper: bool = False) -> dict[str, Any]:
    """Training settings of ``method`` outside any suite, as a dict: the global ``train`` block < the
    method's recipe in code (its class's ``train_defaults``, e.g. DCMH's SGD schedule and sampler, each
    value with its source in the method's docstring) < with ``paper``, its paper setup's ``train`` part <
    the params.yaml ``methods.<method>.train`` block."""
    merged = params.train.model_dump()
    recipe = get_method_class(params.implementation(method)).train_defaults
    merged = deep_merge(merged, recipe)
    if paper:
        merged = deep_merge(merged, paper_setup(params, method, "train"))
    return deep_merge(merged, method_block(params, method).get("train") or {})


def trial_train(params: Params, suite: str, method: str) -> TrainConfig:
    """Training settings of one method in one suite: global < method's recipe (code) < method's ``train``
    block < suite's ``train``."""
    cfg = params.suites[suite]
    merged = deep_merge(method_train(params, method, paper=cfg.network == "paper"), cfg.train)
    return validate_model(TrainConfig, merged, f"suites.{suite}.train (with methods.{method}.train)", params.source)


@dataclass(frozen=True)
class TrialRequest:
    """What a launcher asks for; :func:`resolve_trial` turns it into a :class:`TrialSpec`.

    ``train_override`` and ``method_override`` are layered over the global ``train`` and the method's
    (or variant's) block; ``eval_override`` over the global ``eval``; ``tuned`` takes the method
    parameters (and searched train settings) from ``tuned/<dataset>/<method>-<bits>.yaml``.
    ``where`` names the origin in error messages (``suites.demo-digits``, ``--method``)."""

    label: str
    dataset: str
    method: str
    bits: int
    seed: int
    protocol: str | None = None
    train_override: Mapping[str, Any] = field(default_factory=dict)
    method_override: Mapping[str, Any] = field(default_factory=dict)
    eval_override: Mapping[str, Any] = field(default_factory=dict)
    tuned: bool = False
    incremental: IncrementalTrial | None = None
    where: str = ""
    paper_network: bool = False  # the suite's network: paper (the method's paper_setup under its block)


def resolve_trial(params: Params, req: TrialRequest) -> TrialSpec:
    """The one resolution of a trial (bench suites, tune searches and incremental trials all use it)."""
    src, where = params.source, req.where or req.label
    base, _, backbone = req.dataset.partition("+")  # <dataset>+<backbone>: frozen features of <dataset>
    if base not in params.datasets:
        raise ConfigError(f"{src}: {where}: dataset {base!r} is not configured under 'datasets'; configured: {', '.join(params.datasets)}")
    if not isinstance(req.bits, int) or req.bits <= 0 or req.bits % 8:
        raise ConfigError(f"{src}: {where}: bits {req.bits!r} is not a positive multiple of 8")
    ds = get_dataset(req.dataset)
    impl = params.implementation(req.method)
    cls = get_method_class(impl)
    missing = [m for m in cls.modalities if m not in ds.modalities]
    if missing:
        raise ConfigError(f"{src}: {where}: method {req.method!r} needs modalities {list(cls.modalities)}, dataset {req.dataset!r} has {list(ds.modalities)}")
    if backbone and "features" not in cls.input_kinds:
        raise ConfigError(
            f"{src}: {where}: method {req.method!r} needs {sorted(cls.input_kinds)} input, but {req.dataset!r} holds frozen "
            f"{backbone} features; run it on the pixel dataset {base!r} instead"
        )
    protocol = req.protocol or ds.default_protocol
    if protocol not in ds.protocols:
        raise ConfigError(f"{src}: {where}: dataset {req.dataset!r} has no protocol {protocol!r}; available: {', '.join(ds.protocols)}")
    merged = method_train(params, req.method, paper=req.paper_network)
    train = validate_model(TrainConfig, deep_merge(merged, req.train_override), f"{where}.train (with methods.{req.method}.train)", src)
    if req.tuned:
        mp, train = apply_tuned(params, req.dataset, req.method, req.bits, req.method_override, train)
    else:
        mp = method_params(params, req.method, req.method_override, where=f"{where}.method_params.{req.method}" if req.method_override else None, paper=req.paper_network)
    eval_cfg = validate_model(EvalConfig, with_paper_cutoff(deep_merge(params.eval.model_dump(), req.eval_override), ds, protocol), f"{where}.eval", src)
    return TrialSpec(
        suite=req.label,
        dataset=req.dataset,
        protocol=protocol,
        method=impl,
        variant=req.method if impl != req.method else None,
        incremental=req.incremental,
        bits=req.bits,
        seed=req.seed,
        method_params=mp,
        dataset_params=params.dataset_params(req.dataset).model_dump(mode="json"),
        train=train,
        eval=eval_cfg,
        code_sha256=code_hash(impl, plugins=train.plugins.active()),
    )


def with_paper_cutoff(eval_block: dict[str, Any], ds, protocol: str) -> dict[str, Any]:
    """``eval_block`` with the protocol's paper cut-off (:meth:`pipeline.data.registry.DatasetSpec.map_cutoff`,
    e.g. mAP@5000 on NUS-WIDE's ``dpsh``) added to ``topk``, so it is always reported beside mAP@all."""
    k = ds.map_cutoff(protocol).k
    topk = list(eval_block.get("topk") or [])
    if k is None or k in topk:
        return eval_block
    return {**eval_block, "topk": [*topk, k]}


def suite_requests(params: Params, suite_name: str) -> list[TrialRequest]:
    """A suite's grid: methods x bits x seeds (x new-class counts of an incremental suite)."""
    suite = params.suite(suite_name)
    incs = [None] if suite.incremental is None else [
        IncrementalTrial(new_classes=n, **suite.incremental.model_dump(exclude={"new_classes"})) for n in suite.incremental.new_classes
    ]
    return [
        TrialRequest(
            label=suite_name,
            dataset=suite.dataset,
            method=method,
            bits=bits,
            seed=seed,
            protocol=suite.protocol,
            train_override=suite.train,
            method_override=suite.method_params.get(method, {}),
            eval_override=suite.eval,
            tuned=suite.tuned,
            incremental=inc,
            where=f"suites.{suite_name}",
            paper_network=suite.network == "paper",
        )
        for method in suite.methods
        for bits in suite.bits
        for seed in suite.seeds
        for inc in incs
    ]


def expand_suite(params: Params, suite_name: str) -> list[TrialSpec]:
    """The trial grid of a suite, each trial fully resolved."""
    return [resolve_trial(params, r) for r in suite_requests(params, suite_name)]


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


