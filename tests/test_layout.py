"""The package's shape: modules talk through public names, and no two modules import each other."""

from __future__ import annotations

import ast
import re
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


# The stages of the flow, in order: a module may import its own stage and earlier ones, never a later one
# (docs/explanation/design.md). The front (pktlab/__init__.py) re-exports everything and wires the pipeline's hooks.
STAGES = [
    {"errors", "version", "options", "teardown", "_common"},
    {"kernel", "packet"},
    {"pipeline"},
    {"lab"},
    {"measure", "datasets"},  # the bundled captures and the recorded traces (pktlab.Trace): the pipeline's hook
    {"notebook", "grading", "doctor", "hub"},
    {"testing", "cli", "__main__"},
]
_CIMPORT = re.compile(r"^\s*(?:from\s+(\.*[\w.]*)\s+c?import\s+([\w, ]+)|c?import\s+([\w.]+))", re.M)


def _stage(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    return next((i for i, names in enumerate(STAGES) if part in names), len(STAGES))  # the front: last


def _compiled_imports(path: Path) -> list[str]:
    """The pktlab modules a .pyx or .pxd file cimports or imports (Cython's syntax is not Python's ast)."""
    package = _module(path).rpartition(".")[0].split(".")
    out = []
    for m in _CIMPORT.finditer(path.read_text()):
        target = m.group(1) or m.group(3) or ""
        if target.startswith("."):
            dots = len(target) - len(target.lstrip("."))
            rest = [target.lstrip(".")] if target.strip(".") else []
            target = ".".join(package[: len(package) - (dots - 1)] + rest)
        if target.startswith("pktlab"):
            out.append(target)
    return out


def test_no_module_imports_a_later_stage_of_the_flow() -> None:
    """Lazy imports (in functions) and Cython's cimports count; the pipeline reaches later stages through its
    declared hooks (pktlab.pipeline.HOOKS), which the front fills."""
    bad = []
    for path in sorted(PKG.rglob("*.py")) + sorted(PKG.rglob("*.pyx")) + sorted(PKG.rglob("*.pxd")):
        mod = _module(path)
        if mod == "pktlab" or "_vendor" in path.parts:
            continue
        targets = [t for t, _ in _imports(path)] if path.suffix == ".py" else _compiled_imports(path)
        bad += [f"{mod} imports {t}" for t in targets if _stage(t) > _stage(mod)]
    assert not bad, bad



# names that are private by spelling but public by protocol (IPython's display hook, namedtuple's API, the
# interpreter's own): reading them is using the object as documented
PROTOCOL_NAMES = {"_repr_html_", "_repr_mimebundle_", "_ipython_display_", "_asdict", "_replace", "_fields",
                  "_make", "_field_defaults", "_exit", "_getframe", "_current_frames"}  # fmt: skip
_DECLARED = re.compile(r"^\s*(?:cdef|cpdef|def|class)\b[^=(:]*?\b(_[a-z]\w*)\b|^\s*(?:self\.)?(_[a-z]\w*)\s*[:=]", re.M)


def _declared_in(folder: Path, recursive: bool = False) -> set[str]:
    """Private names a package folder's own modules declare (Python, and Cython's .pyx/.pxd)."""
    names: set[str] = set()
    for path in folder.rglob("*") if recursive else folder.glob("*"):
        if path.suffix == ".py":
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    names.add(node.name)
                elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                    names.add(node.attr)
                elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    names.add(node.id)
        elif path.suffix in (".pyx", ".pxd"):
            names |= {a or b for a, b in _DECLARED.findall(path.read_text())}
    return {n for n in names if n.startswith("_")}


def _private_reads(path: Path) -> list[tuple[int, str]]:
    """``x._name`` in the file, where x is not self or cls (a private attribute of some other object)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and node.attr not in PROTOCOL_NAMES
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):  # fmt: skip
            out.append((node.lineno, node.attr))
    return out


def test_no_module_reads_a_private_attribute_of_another_stage() -> None:
    # a stage's folder is one unit (the views and the packet core share the packet's fields): a private name
    # may be used by the modules of the folder that declares it, and nowhere else
    bad = []
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG).parts
        own = _declared_in(PKG / parts[0], recursive=True) if len(parts) > 1 else _declared_in(PKG)
        bad += [f"{path.relative_to(PKG)}:{n} reads .{a}" for n, a in _private_reads(path) if a not in own]
    assert not bad, "\n".join(bad)


def test_no_test_reads_a_private_name() -> None:
    tests = Path(__file__).resolve().parent
    bad = []
    for path in tests.rglob("*.py"):
        own = _declared_in(path.parent)  # the tests' own helpers (private names of their folder)
        bad += [f"{path.relative_to(tests)}:{n} reads .{a}" for n, a in _private_reads(path) if a not in own]
    assert not bad, "\n".join(bad)
