"""Hash of the code that determines a trial's result, for code-aware trial keys.

A method's code is its class's module and the modules of its base classes, plus every module of the
``methods`` package they import (transitively: nets, losses), plus the shared code every trial runs
(the training loop, the data loaders and the prepared format, the evaluation engine). Each module is
hashed as its AST with docstrings removed (``ast.dump`` without positions), so editing a comment, a
docstring or the formatting does not retrain, while any change to what the code does does.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import inspect

from methods.registry import get_method_class

SHARED_MODULES = (
    "methods.base",
    "pipeline.train.loop",
    "pipeline.data.loaders",
    "pipeline.data.formats",
    "pipeline.eval.evaluate",
)
PACKAGE = "methods"


@functools.lru_cache(maxsize=None)
def _module_source(name: str) -> tuple[str, tuple[str, ...]]:
    """(normalised AST dump, imported project modules) of module ``name``."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return "", ()
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imports: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
            imports.append(node.module)
            for alias in node.names:  # `from methods.nets import encoders` names a module too
                sub = f"{node.module}.{alias.name}"
                if importlib.util.find_spec(node.module) is not None and _is_module(sub):
                    imports.append(sub)
        elif isinstance(node, ast.Import):
            imports += [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
    return ast.dump(tree, annotate_fields=False, include_attributes=False), tuple(sorted(set(imports)))


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def modules_of(method: str) -> list[str]:
    """The modules whose code determines a trial of registered method ``method`` (sorted)."""
    cls = get_method_class(method)
    todo = [c.__module__ for c in inspect.getmro(cls) if c.__module__.split(".")[0] == PACKAGE] + list(SHARED_MODULES)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [m for m in _module_source(name)[1] if m not in seen]
    return sorted(seen)


#: the loop's plug-ins (pipeline/train/plugins.py and the mechanisms it wires in): part of the code of a trial
#: that switches any plug-in on, and only of those (so trials without plug-ins keep their keys)
PLUGIN_MODULES = ("pipeline.train.plugins", "pipeline.train.representation")


@functools.lru_cache(maxsize=None)
def code_hash(method: str, plugins: bool = False) -> str:
    """sha256 over the normalised code of :func:`modules_of` ``method`` (and :data:`PLUGIN_MODULES` with ``plugins``)."""
    h = hashlib.sha256()
    for name in modules_of(method) + (list(PLUGIN_MODULES) if plugins else []):
        h.update(name.encode() + b"\0" + _module_source(name)[0].encode() + b"\0")
    return h.hexdigest()
