"""The docs' how-to pages: every Python example runs, page by page, in a real kernel (live pages in this
process's privilege mode; replay pages in replay mode), and the site's own checks hold."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.conftest import _is_live

ROOT = Path(__file__).parents[1]
PAGES = sorted((ROOT / "docs" / "how-to").glob("*.md"))
FENCE = re.compile(r"(?P<note><!-- needs: (?P<needs>\w+) -->\n)?```python\n(?P<code>.*?)```", re.S)


def examples(page: Path) -> tuple[str, list[tuple[str | None, str]]]:
    """The page's kind (front matter ``examples: live|replay``) and its Python blocks with what each needs."""
    text = page.read_text()
    m = re.match(r"---\n(.*?)\n---\n", text, re.S)
    kind = re.search(r"^examples:\s*(\w+)", m.group(1), re.M).group(1) if m else "none"  # type: ignore[union-attr]
    return kind, [(b.group("needs"), b.group("code")) for b in FENCE.finditer(text)]


def test_every_page_with_code_says_how_it_runs() -> None:
    for page in PAGES:
        kind, blocks = examples(page)
        assert kind in ("live", "replay", "none"), f"{page.name}: examples: {kind} (live, replay or none)"
        assert blocks or kind == "none", f"{page.name} says examples: {kind} but has no ```python block"
        assert not blocks or kind != "none", f"{page.name} has Python examples; say examples: live or replay"


@pytest.mark.parametrize("page", [p for p in PAGES if examples(p)[1]], ids=lambda p: p.stem)
def test_how_to_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    kind, blocks = examples(page)
    if kind == "live" and not _is_live():
        pytest.skip("no live mode here (neither root nor user namespaces)")
    if kind == "replay":
        monkeypatch.setenv("PKTLAB_REPLAY", "1")
    root = os.geteuid() == 0 and os.environ.get("PKTLAB_PRIVILEGE") != "userns"
    cells = [nbformat.v4.new_code_cell(code) for needs, code in blocks if needs != "root" or root]
    for name in ("notebooks", "datasets"):  # paths the examples name, from the repository's top folder
        (tmp_path / name).symlink_to(ROOT / name)
    nb = nbformat.v4.new_notebook(cells=cells)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells for o in c.outputs if o.get("output_type") == "error"]
    assert not errors, errors


def _hooks():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "scripts" / "docs_hooks.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_reference_is_made_from_the_declarations() -> None:
    import pktlab
    from pktlab.notebook.magic import make_parsers
    from pktlab.options import ATTACH

    hooks = _hooks()
    api = hooks.api(None)
    for name in pktlab.__all__:  # every public name has an entry (or says which entry it shares)
        assert f'heading: "pktlab.{name}"' in api or f"### pktlab.{name}\n" in api, name
    magics = hooks.magics(None)
    for parser in make_parsers().values():
        assert f"### `{parser.prog}`" in magics and parser.description in magics
    options = hooks.options("ATTACH") + hooks.options("REPLAY")
    assert all(f"`{o.name}`" in options for o in ATTACH)
    errors = hooks.errors(None)
    assert all(f"`pktlab.{c}`" in errors for c in ("PktlabError", "CopyRangeError", "SendError", "TeardownError"))


def test_an_undocumented_field_fails_the_strict_build(caplog: pytest.LogCaptureFixture) -> None:
    hooks = _hooks()
    with caplog.at_level("WARNING", logger="mkdocs.hooks.pktlab"):
        hooks.fields("tests.test_docs:_Undocumented")
    assert "field b has no comment" in caplog.text and "field a" not in caplog.text


class _Undocumented:
    a: int  # documented
    b: int
