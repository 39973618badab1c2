"""Loading params.yaml: read, merge overrides, validate into :class:`~pipeline.config.model.Params`, cross-check names."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from methods.registry import available_methods, available_variants, get_method_class
from pipeline.config.model import DEFAULT_PARAMS, EvalConfig, Params, deep_merge, validate_model
from pipeline.config.spaces import check_spaces
from pipeline.config.trials import method_params, trial_train
from pipeline.core.errors import ConfigError
from pipeline.data.registry import available_datasets, get_dataset


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: Mapping[str, Any] | None = None) -> Params:
    """Read, merge ``overrides`` into, and validate a params file; cross-check names against the registries."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found (run from the project root or pass --params)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    if overrides:
        raw = deep_merge(raw, overrides)
    raw = {**raw, "source": str(path)}
    if isinstance(raw.get("suites"), Mapping):
        raw["suites"], raw["suite_groups"] = expand_axes(raw["suites"], str(path))
    params = validate_model(Params, raw, "", str(path))
    check_params(params)
    return params


AXES = ("dataset", "protocol")


def expand_axes(suites: Mapping[str, Any], source: str) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Suites written as axes: a suite whose ``protocol`` is a list stands for one suite per protocol,
    named ``<suite>-<protocol>``; returns (concrete suites, {axes suite: its members}). (A list of
    datasets is refused: each bench stage of dvc.yaml depends on one dataset's prepared folder.)"""
    out: dict[str, Any] = {}
    groups: dict[str, list[str]] = {}
    for name, body in suites.items():
        if isinstance(body, Mapping) and isinstance(body.get("dataset"), list):
            raise ConfigError(
                f"{source}: suites.{name}.dataset: one dataset per suite (got a list {body['dataset']!r}); a suite's "
                "protocol may be a list (one suite per protocol), write one such suite per dataset"
            )
        if not isinstance(body, Mapping) or not any(isinstance(body.get(a), list) for a in AXES):
            out[name] = body
            continue
        values = [(a, body[a] if isinstance(body.get(a), list) else [body.get(a)]) for a in AXES]
        for a, vs in values:
            if not vs or any(not isinstance(v, str) for v in vs if v is not None):
                raise ConfigError(f"{source}: suites.{name}.{a}: expected a name or a non-empty list of names (got {body.get(a)!r})")
        members = []
        for ds in values[0][1]:
            for proto in values[1][1]:
                parts = [name] + [v for (a, _), v in zip(values, (ds, proto)) if isinstance(body.get(a), list)]
                member = "-".join(parts)
                if member in suites or member in out:
                    raise ConfigError(f"{source}: suites.{name}: its member {member!r} is also written out as a suite; rename one")
                out[member] = {**body, "dataset": ds, **({"protocol": proto} if proto is not None else {})}
                members.append(member)
        groups[name] = members
    return out, groups


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
SAFE_NAME_RULE = "1-100 characters from A-Z a-z 0-9 _ . -, starting with a letter or a digit"


def check_name(name: Any, where: str) -> None:
    """Raise a :class:`ConfigError` at ``where`` unless ``name`` is a safe name (:data:`SAFE_NAME`):
    names become file and folder names, MLflow experiment names and DVC stage names (``bench@<suite>``),
    so a ``/`` would write a nested path and a space or a quote breaks shell commands."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise ConfigError(f"{where}: the name {name!r} is not allowed: use {SAFE_NAME_RULE}")


def check_params(params: Params) -> None:
    """Cross-field checks: names are safe, every name refers to something registered and compatible."""

    src = params.source
    for section in ("datasets", "methods", "suites", "profiles"):
        for name in getattr(params, section):
            check_name(name, f"{src}: {section}.{name}")
    known_methods = available_methods()
    code_variants = available_variants()
    known_datasets = available_datasets()
    for name in params.datasets:
        if name not in known_datasets:
            raise ConfigError(f"{src}: datasets.{name}: unknown dataset {name!r}; available: {', '.join(known_datasets)}")
        params.dataset_params(name)
    # registered methods' blocks first, so an error in a method's block is reported there, not in a variant that inherits it
    for name, block in sorted(params.methods.items(), key=lambda kv: kv[0] not in known_methods):
        if block is not None and not isinstance(block, Mapping):
            raise ConfigError(f"{src}: methods.{name}: expected a mapping of hyperparameters, got {block!r}")
        impl = (block or {}).get("method")
        if impl is None:
            if name not in known_methods and name not in code_variants:
                raise ConfigError(
                    f"{src}: methods.{name}: unknown method {name!r}; available: {', '.join(known_methods)} "
                    f"(a variant needs 'method: <one of these>')"
                )
        elif not isinstance(impl, str) or impl not in known_methods:
            raise ConfigError(f"{src}: methods.{name}.method: {impl!r} is not a registered method; available: {', '.join(known_methods)}")
        elif name in known_methods and impl != name:
            raise ConfigError(f"{src}: methods.{name}.method: {name!r} is a registered method and cannot be a variant of {impl!r}; pick another name")
        elif impl != name and "method" in (params.methods.get(impl) or {}):
            raise ConfigError(f"{src}: methods.{name}.method: {impl!r} is itself a variant; a variant's 'method' must name a registered method")
        method_params(params, name, {})
    for sname, suite in params.suites.items():
        where = f"{src}: suites.{sname}"
        base, backbone = suite.dataset.partition("+")[::2]
        if base not in params.datasets:
            raise ConfigError(f"{where}.dataset: {base!r} is not configured under 'datasets'; configured: {', '.join(params.datasets)}")
        if "+" in suite.dataset:
            _check_feature_suite(params, sname, suite, base, backbone)
        if suite.profile not in params.profiles:
            raise ConfigError(f"{where}.profile: unknown profile {suite.profile!r}; defined profiles: {', '.join(params.profiles)}")
        spec = get_dataset(suite.dataset)
        protocol = suite.protocol or spec.default_protocol
        if protocol not in spec.protocols:
            raise ConfigError(f"{where}.protocol: dataset {suite.dataset!r} has no protocol {protocol!r}; available: {', '.join(spec.protocols)}")
        variants = sorted({*code_variants, *(n for n, b in params.methods.items() if (b or {}).get("method") not in (None, n))})
        for i, m in enumerate(suite.methods):
            if m not in known_methods and m not in variants:
                raise ConfigError(
                    f"{where}.methods[{i}]: unknown method {m!r}; available: {', '.join(known_methods)}"
                    + (f"; variants: {', '.join(variants)}" if variants else "")
                )
            cls = get_method_class(params.implementation(m))
            if suite.incremental is not None and not cls.supports_incremental:
                raise ConfigError(
                    f"{where}.methods[{i}]: method {m!r} does not support the incremental-class protocol of this suite "
                    f"(suites.{sname}.incremental); methods that do: "
                    + ", ".join(n for n in known_methods if get_method_class(n).supports_incremental)
                )
            missing = [mod for mod in cls.modalities if mod not in spec.modalities]
            if missing:
                raise ConfigError(
                    f"{where}.methods[{i}]: method {m!r} needs modalities {list(cls.modalities)}, dataset {suite.dataset!r} has {list(spec.modalities)}"
                )
        for m in suite.method_params:
            if m not in suite.methods:
                raise ConfigError(f"{where}.method_params.{m}: method {m!r} is not in this suite's methods {suite.methods}")
        for m in suite.methods:
            trial_train(params, sname, m)
            method_params(params, m, suite.method_params.get(m, {}), where=f"suites.{sname}.method_params.{m}", paper=suite.network == "paper")
        validate_model(EvalConfig, deep_merge(params.eval.model_dump(), suite.eval), f"suites.{sname}.eval", src)

    check_spaces(params)



def _check_feature_suite(params: Params, sname: str, suite, base: str, backbone: str) -> None:
    """A suite on ``<dataset>+<backbone>``: the backbone has ImageNet weights and every method accepts features."""
    from pipeline.data.weights import DEFAULT_WEIGHTS

    where = f"{params.source}: suites.{sname}"
    handcrafted = get_dataset(base).handcrafted  # <dataset>+<hand-crafted descriptor> (pipeline/data/handcrafted.py)
    if backbone not in DEFAULT_WEIGHTS and backbone not in handcrafted:
        raise ConfigError(
            f"{where}.dataset: {suite.dataset!r} names backbone {backbone!r}, which has no weights entry; "
            f"feature backbones: {', '.join(sorted(DEFAULT_WEIGHTS))}"
            + (f"; hand-crafted features of {base!r}: {', '.join(handcrafted)}" if handcrafted else "")
        )
    for i, m in enumerate(suite.methods):
        cls = get_method_class(params.implementation(m))
        if "features" not in cls.input_kinds:
            raise ConfigError(
                f"{where}.methods[{i}]: method {m!r} needs {sorted(cls.input_kinds)} input, but {suite.dataset!r} holds frozen "
                f"{backbone} features; run it on the pixel dataset {base!r} instead"
            )


def params_hash(path: str | Path = DEFAULT_PARAMS) -> str:
    """sha256 of the params file's bytes (provenance)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()

