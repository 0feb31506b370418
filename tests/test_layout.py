"""The package's shape: modules talk through public names, and no two modules import each other."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "pktlab"


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import in the file, lazy ones (in functions) included."""
    mod = _module(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("pktlab"):
                continue
            names = [a.name for a in node.names]
            # "from . import x": x is a module when a file or package of that name exists
            where = PKG.parent / target.replace(".", "/")
            subs = [n for n in names if any((where / n).with_suffix(x).exists() for x in (".py", ".pyx"))
                    or (where / n).is_dir()]  # fmt: skip
            out += [(f"{target}.{n}", []) for n in subs]
            if len(subs) < len(names):
                out.append((target, [n for n in names if n not in subs]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("pktlab")]
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PKG.rglob("*.py")}
    return {m: {t for t, _ in _imports(p) if t in files and t != m} for m, p in files.items()}


def test_no_module_imports_another_modules_private_name() -> None:
    bad = []
    for path in PKG.rglob("*.py"):
        for target, names in _imports(path):
            compiled = target.rpartition(".")[2].startswith("_")  # pktlab._hot, pktlab._capture: their job
            bad += [f"{_module(path)} imports {target}.{n}" for n in names if n.startswith("_") and not compiled]
    assert not bad, bad


def test_no_import_cycles() -> None:
    """Lazy imports inside functions count too: a cycle through them still ties two modules together."""
    graph = _graph()
    graph.pop("pktlab", None)  # the public front imports everything; only __main__ imports it back
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start)
    assert not cycles, cycles
