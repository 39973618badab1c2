"""Search spaces of ``hashbench tune``: ``tune.spaces.<method>.<name>: {<distribution>: args}`` in params.yaml.

Distributions: ``loguniform: [lo, hi]`` (0 < lo < hi), ``uniform: [lo, hi]``, ``randint: [lo, hi]``
(integers, both ends included), ``choice: [v, ...]``, ``grid: [v, ...]`` (every value, crossed with
the other grid axes). A name is a field of the method's parameter model (``lambda_q``) or a training
setting with the ``train.`` prefix (``train.optimizer.lr``, ``train.batch_size``). Errors name the key.
"""

from __future__ import annotations

from typing import Any, Mapping

from methods.registry import available_methods, get_method_class
from pipeline.config.model import TrainConfig
from pipeline.core.errors import ConfigError

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice", "grid")


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_distribution(where: str, dist: Any) -> tuple[str, list]:
    """Validate one distribution; return (kind, arguments)."""
    if not isinstance(dist, Mapping) or len(dist) != 1:
        raise ConfigError(f"{where}: expected one distribution like {{loguniform: [1e-4, 1e-1]}}; allowed: {', '.join(DISTRIBUTIONS)} (got {dist!r})")
    (kind, args), = dist.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: unknown distribution {kind!r}; allowed: {', '.join(DISTRIBUTIONS)}")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}.{kind}: expected a non-empty list (got {args!r})")
    if kind in ("loguniform", "uniform", "randint"):
        if len(args) != 2 or not all(_num(a) for a in args) or not args[0] < args[1]:
            raise ConfigError(f"{where}.{kind}: expected [low, high] numbers with low < high (got {args!r})")
        if kind == "loguniform" and args[0] <= 0:
            raise ConfigError(f"{where}.loguniform: bounds must be positive (got {args!r}); use choice to add 0")
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            raise ConfigError(f"{where}.randint: bounds must be integers (got {args!r})")
    return kind, list(args)


def check_name(params, method: str, name: str, where: str) -> None:

    if name.startswith("train."):
        model, parts = TrainConfig, name.split(".")[1:]
        for i, part in enumerate(parts):
            field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
            if field is None:
                raise ConfigError(f"{where}: unknown training setting {name!r}")
            ann = field.annotation
            model = ann if isinstance(ann, type) and hasattr(ann, "model_fields") else None
            if model is None and i < len(parts) - 1:
                raise ConfigError(f"{where}: unknown training setting {name!r}")
        if model is not None:
            raise ConfigError(f"{where}: {name!r} is a group of settings; name one value in it")
        return
    fields = get_method_class(params.implementation(method)).Params.model_fields
    if name not in fields:
        raise ConfigError(f"{where}: unknown hyperparameter {name!r} of method {method!r}; known: {', '.join(sorted(fields))} (or train.*)")


def check_spaces(params) -> None:
    """Every space names a known method and hyperparameter and a valid distribution."""

    src = params.source
    for method, space in params.tune.spaces.items():
        if params.implementation(method) not in available_methods():
            raise ConfigError(f"{src}: tune.spaces.{method}: unknown method {method!r}; available: {', '.join(available_methods())} (or a variant under methods:)")
        for name, dist in space.items():
            where = f"{src}: tune.spaces.{method}.{name}"
            check_name(params, method, name, where)
            check_distribution(where, dist)


def to_ray(space: Mapping[str, Any], grid_ok: bool = True) -> dict[str, Any]:
    """The Ray Tune sampling domains of a validated space (keys kept as written)."""
    from ray import tune

    out = {}
    for name, dist in space.items():
        kind, args = check_distribution(f"tune.spaces.*.{name}", dist)
        if kind == "loguniform":
            out[name] = tune.loguniform(float(args[0]), float(args[1]))
        elif kind == "uniform":
            out[name] = tune.uniform(float(args[0]), float(args[1]))
        elif kind == "randint":
            out[name] = tune.randint(args[0], args[1] + 1)
        elif kind == "choice":
            out[name] = tune.choice(args)
        else:
            out[name] = tune.grid_search(args) if grid_ok else tune.choice(args)
    return out


def parse_sweep(text: str) -> tuple[str, str, list[Any]]:
    """``csq.lambda_q=0.001,0.01,0.1`` -> ("csq", "lambda_q", [0.001, 0.01, 0.1])."""
    import yaml

    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--sweep {text!r}: expected METHOD.PARAM=V1,V2,... e.g. csq.lambda_q=0.001,0.01,0.1")
    lhs, rhs = text.split("=", 1)
    method, name = lhs.split(".", 1)
    values = [yaml.safe_load(v) for v in rhs.split(",") if v.strip()]
    if not values:
        raise ConfigError(f"--sweep {text!r}: no values")
    return method, name, values


def split_sample(sample: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A sampled configuration -> (method parameter overrides, nested train overrides)."""
    mp: dict[str, Any] = {}
    train: dict[str, Any] = {}
    for name, value in sample.items():
        if hasattr(value, "item"):
            value = value.item()
        if name.startswith("train."):
            node = train
            parts = name.split(".")[1:]
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
        else:
            mp[name] = value
    return mp, train
