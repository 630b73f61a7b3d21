"""The package's layers: every import points down, no module imports another in a circle, the pure layers never
import pytest, and only the engine's runner calls the model.

The layers, bottom to top (a module may import its own layer and the ones listed for it):

    core         -> core
    model        -> core
    engine       -> model, core
    experiments  -> engine, model, core
    assertions   -> experiments, engine, model, core
    session      -> core
    top level    -> anything (the public facades: __init__, metrics, explain, strategies, hookspecs, plugin)
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "pytest_interp"
NAME = "pytest_interp"

ALLOWED = {
    "core": {"core"},
    "model": {"model", "core"},
    "engine": {"engine", "model", "core"},
    "experiments": {"experiments", "engine", "model", "core"},
    "assertions": {"assertions", "experiments", "engine", "model", "core"},
    "session": {"session", "core"},
}
PURE = {"core", "model", "engine", "experiments", "assertions"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[int, str, str]]:
    """(line, imported module, the import as written) for every import of a package module or a third-party
    top-level name, TYPE_CHECKING blocks excluded."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if _in_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append((node.lineno, alias.name, ast.unparse(node)))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((node.lineno, sub if sub in known else target, ast.unparse(node)))
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else None


def _graph() -> tuple[dict[str, Path], dict[str, list[tuple[int, str, str]]]]:
    known = _modules()
    return known, {m: _imports(m, p, known) for m, p in known.items()}


def test_the_layers_exist() -> None:
    known = _modules()
    for layer in ALLOWED:
        assert any(_layer(m) == layer for m in known), f"no module in layer {layer!r}"
    flat = [m for m in known if m.count(".") == 1 and m.split(".")[1].startswith("_")]
    assert not flat, f"private modules outside the layers: {flat}"


def test_imports_point_down() -> None:
    known, graph = _graph()
    bad = []
    for module, imports in graph.items():
        layer = _layer(module)
        if layer is None:
            continue
        for line, target, text in imports:
            if not target.startswith(NAME + ".") and target != NAME:
                continue
            to = _layer(target)
            if to is None or to not in ALLOWED[layer]:
                bad.append(f"{known[module].relative_to(PKG.parent)}:{line}: {text}  ({layer} -> {to or 'top level'})")
    assert not bad, "imports that point up or sideways:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    known, graph = _graph()
    edges = {m: sorted({t for _, t, _ in imps if t in known and t != m}) for m, imps in graph.items()}
    # the package root re-exports lazily; its (TYPE_CHECKING-free) imports are all downward
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in edges.get(m, []):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in edges:
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_pure_layers_never_import_pytest() -> None:
    known, graph = _graph()
    bad = [f"{known[m].relative_to(PKG.parent)}:{line}: {text}" for m, imps in graph.items()
           if _layer(m) in PURE for line, target, text in imps if target.split(".")[0] in ("pytest", "_pytest")]
    assert not bad, "pytest imported by a pure layer:\n" + "\n".join(bad)


_MODEL_CALL = re.compile(r"\.model\(|\bmodel\(\s*(input_ids|inputs_embeds)|\.forward\(|torch\.autograd\.grad|"
                         r"\.backward\(")


def test_only_the_runner_calls_the_model() -> None:
    bad = []
    for module, path in _modules().items():
        if module == f"{NAME}.engine.runner":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _MODEL_CALL.search(code) and "def " not in code:
                bad.append(f"{path.relative_to(PKG.parent)}:{i}: {line.strip()}")
    assert not bad, "model calls outside engine/runner.py:\n" + "\n".join(bad)


@pytest.mark.parametrize("text, expect", [("from ..experiments.ablation import ablate", "experiments")])
def test_the_checker_sees_an_upward_import(tmp_path: Path, text: str, expect: str) -> None:
    """The checks above can fail: an engine module importing an experiment is reported with its line."""
    path = PKG / "engine" / "runner.py"
    imports = _imports(f"{NAME}.engine.runner", path, _modules())
    assert all(_layer(t) != expect for _, t, _ in imports if t.startswith(NAME))
    fake = tmp_path / "runner.py"
    fake.write_text(text + "\n")
    got = _imports(f"{NAME}.engine.runner", fake, _modules())
    assert [(_layer(t), line) for line, t, _ in got] == [(expect, 1)]
    assert expect not in ALLOWED["engine"]
