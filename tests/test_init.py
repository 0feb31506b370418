"""The public front."""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import pktlab


def test_all_is_exactly_the_public_api() -> None:
    # submodules show up as attributes once imported; everything else must be in __all__
    public = {
        n for n in dir(pktlab) if not n.startswith("_") and not isinstance(getattr(pktlab, n), types.ModuleType)
    } - {"annotations"}
    exported_modules = {n for n in pktlab.__all__ if isinstance(getattr(pktlab, n), types.ModuleType)}
    assert exported_modules == {"bpf", "datasets"}  # the two submodules that are part of the API by name
    assert set(pktlab.__all__) - {"__version__"} == public | exported_modules
    for name in pktlab.__all__:
        assert hasattr(pktlab, name)


def test_the_names_type_checkers_see_are_the_names_loaded_at_first_use() -> None:
    """pktlab/__init__ names each public name twice: imported for type checkers, and in the table it loads from."""
    tree = ast.parse(Path(pktlab.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test))
    seen = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom)
        for alias in node.names:
            name = alias.asname or alias.name
            seen[name] = ("." * node.level + (node.module or "") + ("" if node.module else alias.name),
                          None if not node.module else alias.name)  # fmt: skip
    table = next(n for n in tree.body if isinstance(n, ast.AnnAssign) and ast.unparse(n.target) == "_EXPORTS")
    exports = ast.literal_eval(table.value)  # the table as written (read from the source, not the module's state)
    assert set(seen) == set(exports)
    for name, (module, attribute) in exports.items():
        if attribute is None:  # a module by name: `from . import datasets` or `from .kernel import bpf`
            assert getattr(pktlab, name).__name__ == "pktlab" + module
        else:
            assert seen[name] == (module, attribute), name


def test_import_is_light() -> None:
    code = "import sys, pktlab; print(','.join(m for m in ('pandas','scapy','IPython','bokeh') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_python_dash_m_pktlab_runs_the_command_line() -> None:
    out = subprocess.run([sys.executable, "-m", "pktlab", "--help"], capture_output=True, text=True, check=True).stdout
    assert "usage: pktlab" in out and "doctor" in out and "demo" in out
