"""Method registry: ``@register_method`` on the class, plus one line in ``_MODULES``; variants of a method are
``register_variant(name, method, description, **params)`` next to it in its module.

Modules are imported lazily the first time the registry is queried, so importing ``methods`` stays
cheap and a broken method module fails with its own traceback only when the registry is used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Mapping

from methods.base import DataInfo, HashMethod, MethodParams
from pipeline.core.errors import MethodError

# One line per method module. Adding a method = one file + one line here.
_MODULES: tuple[str, ...] = (
    "methods.dcmh",
    "methods.csq",
    "methods.prdh",
    "methods.cmhh",
    "methods.crh",
    "methods.orthohash",
    "methods.adih",
    "methods.mfpmc",
    "methods.ltdual",
    "methods.classic.cmfh",
    "methods.classic.scm",
    "methods.classic.seph",
    "methods.classic.stmh",
    "methods.classic.lsh",
    "methods.classic.itq",
    "methods.classic.sdh",
)

_REGISTRY: dict[str, type[HashMethod]] = {}
_VARIANTS: dict[str, "Variant"] = {}
_loaded = False


@dataclass(frozen=True)
class Variant:
    """A named variant of a registered method (an ablation, a smaller backbone): parameter overrides
    registered next to the method in its module; params.yaml may override them further."""

    name: str
    method: str
    params: Mapping[str, Any]
    description: str = ""


def register_variant(name: str, method: str, description: str = "", **params: Any) -> Variant:
    """Register variant ``name`` of ``method`` with parameter overrides ``params``."""
    if name in _REGISTRY or (name in _VARIANTS and _VARIANTS[name].method != method):
        raise MethodError(f"variant name {name!r} is already a method or a variant of another method")
    _VARIANTS[name] = Variant(name, method, dict(params), description)
    return _VARIANTS[name]


def available_variants() -> dict[str, Variant]:
    """Every variant registered in code, by name."""
    _load()
    return dict(sorted(_VARIANTS.items()))


def register_method(cls: type[HashMethod]) -> type[HashMethod]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if not cls.name:
        raise MethodError(f"{cls.__qualname__} has no 'name'")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise MethodError(f"method name {cls.name!r} registered twice ({_REGISTRY[cls.name].__module__}, {cls.__module__})")
    _REGISTRY[cls.name] = cls
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    for module in _MODULES:
        importlib.import_module(module)
    _loaded = True
    bad = [v for v in _VARIANTS.values() if v.method not in _REGISTRY or set(v.params) - set(_REGISTRY[v.method].Params.model_fields)]
    if bad:
        raise MethodError(f"variant {bad[0].name!r}: method {bad[0].method!r} is not registered or has no parameters {sorted(set(bad[0].params))}")


def available_methods() -> list[str]:
    """Sorted names of every registered method."""
    _load()
    return sorted(_REGISTRY)


def get_method_class(name: str) -> type[HashMethod]:
    """The class registered as ``name``; a clear error listing the known names otherwise."""
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MethodError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def create_method(name: str, params: Mapping[str, Any] | MethodParams | None, info: DataInfo, bits: int) -> HashMethod:
    """Build method ``name`` for data ``info`` and code length ``bits``."""
    cls = get_method_class(name)
    if params is None:
        params = cls.Params()
    elif not isinstance(params, MethodParams):
        params = cls.Params(**dict(params))
    missing = [m for m in cls.modalities if m not in info.modalities]
    if missing:
        raise MethodError(
            f"method {name!r} needs modalities {list(cls.modalities)} but dataset {info.dataset!r} has {sorted(info.modalities)}"
        )
    for m in cls.modalities:
        kind = info.modalities[m].kind
        if kind not in cls.input_kinds:
            raise MethodError(
                f"method {name!r} does not accept {m!r} input of kind {kind!r} (dataset {info.dataset!r}); it accepts {sorted(cls.input_kinds)}"
            )
    method = cls(params, info, bits)
    from methods.nets.init import apply_layer_init

    method.layer_init_applied = apply_layer_init(method, params.layer_init, name)
    return method
