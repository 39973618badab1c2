"""The architecture rule (README, "Architecture"): imports point down the layers only, no import cycles,
no module imports another module's private names, and methods/ depends on pipeline.core only."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# lowest first; a module may import from its own layer and the layers below
LAYERS = [
    "pipeline.core",
    "methods",
    "pipeline.data",
    "pipeline.config",
    "pipeline.eval",
    "pipeline.train",
    "pipeline.protocols",
    "pipeline.report",
    "pipeline.cli",
]


def _modules() -> dict[str, Path]:
    out = {}
    for top in ("pipeline", "methods"):
        for f in (REPO / top).rglob("*.py"):
            parts = list(f.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _layer(mod: str) -> int:
    best = -1
    for i, prefix in enumerate(LAYERS):
        if mod == prefix or mod.startswith(prefix + "."):
            best = i
    if best < 0 and mod == "pipeline":
        return 0
    assert best >= 0, f"module {mod} is in no layer of {LAYERS}"
    return best


def _imports(modules: dict[str, Path]):
    """(importer, imported module, imported names) for every project import, in-function ones included."""
    for mod, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] in ("pipeline", "methods"):
                names = [a.name for a in node.names]
                subs = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in modules]
                yield mod, node.module, [n for n in names if f"{node.module}.{n}" not in modules]
                for s in subs:
                    yield mod, s, []
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in ("pipeline", "methods"):
                        yield mod, a.name, []


def test_imports_point_down_and_use_no_private_names():
    modules = _modules()
    upward, private = [], []
    for mod, target, names in _imports(modules):
        if target not in modules:
            continue
        if _layer(target) > _layer(mod):
            upward.append(f"{mod} -> {target}")
        private += [f"{mod} imports {target}.{n}" for n in names if n.startswith("_") and target != mod]
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)
    assert not private, "private names used across modules:\n" + "\n".join(private)


def test_methods_depend_on_the_core_contract_only():
    bad = [f"{m} -> {t}" for m, t, _ in _imports(_modules()) if m.startswith("methods") and t.startswith("pipeline") and not t.startswith("pipeline.core")]
    assert not bad, "methods/ importing pipeline internals:\n" + "\n".join(bad)


def test_no_import_cycles():
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, target, _ in _imports(modules):
        if target in modules and target != mod and not (mod.startswith(target + ".")):  # a package's own submodules are not a cycle
            graph[mod].add(target)
    # Tarjan's strongly connected components
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not sccs, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in sccs)
