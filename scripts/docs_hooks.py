"""mkdocs hooks: the reference pages made from the code's own declarations, and the strict checks mkdocs lacks.

A page asks for generated text with a marker, ``<!-- pktlab:NAME ARG -->``: ``api`` (every name of
``pktlab.__all__``, rendered by mkdocstrings from its docstring; a public name without one fails the build),
``magics`` (every ``%pktlab`` command from its parser), ``cli`` (the ``pktlab`` command's parser), ``options``
(``pktlab.options.ATTACH``), ``errors`` (the tree of ``pktlab.errors``), ``fields CLASS_OR_DICT`` (fields and
what each holds, from their declarations), ``include FILE`` (a file of the repository, e.g. BENCHMARKS.md).
Warnings go to mkdocs' logger, so ``mkdocs build --strict`` fails on them.
"""

from __future__ import annotations

import argparse
import html
import importlib
import inspect
import logging
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("mkdocs.hooks.pktlab")
MARKER = re.compile(r"<!-- pktlab:(\w+)(?: ([^>]*?))? -->")

# where each stage of the flow goes in the API reference (the order of the flow)
GROUPS = (
    ("pktlab.pipeline", "Sessions, handlers and the record"),
    ("pktlab.packet", "Packets, verdicts and protocols"),
    ("pktlab.lab", "Labs and link conditions"),
    ("pktlab.kernel", "The kernel's side: filters and offloads"),
    ("pktlab.measure", "Measurements: NetPIPE, traces, drops, costs"),
    ("pktlab.errors", "Errors"),
    ("pktlab", "Modes, datasets, the extension and the version"),
)


def _cell(text: Any) -> str:
    return html.escape(str(text)).replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _where(obj: Any) -> str:
    """The dotted path where a public object is defined (its docstring is read there)."""
    import sys

    if inspect.ismodule(obj):
        return obj.__name__
    if inspect.isclass(obj) or inspect.isfunction(obj):
        return f"{obj.__module__}.{obj.__qualname__}"
    for mname, module in sorted(sys.modules.items()):  # a constant: the pktlab module that assigns it
        if not mname.startswith("pktlab.") or module is None or not hasattr(module, "__file__"):
            continue
        for attr, value in vars(module).items():
            if value is obj and re.search(rf"^{attr}\s*[:=]", inspect.getsource(module), re.M):
                return f"{mname}.{attr}"
    raise LookupError(f"cannot tell where {obj!r} is defined")


def _public_names() -> list[tuple[str, str]]:
    """(public name, the dotted path of what it is) for each name of ``pktlab.__all__``."""
    import pktlab

    return [(name, _where(getattr(pktlab, name))) for name in pktlab.__all__]


def api(_arg: str | None) -> str:
    import griffe

    package = griffe.load("pktlab", search_paths=[str(ROOT)], allow_inspection=True, resolve_aliases=False)
    sections: dict[str, list[str]] = {title: [] for _, title in GROUPS}
    shown: dict[str, str] = {}
    for name, path in sorted(_public_names(), key=lambda n: n[0].lower()):
        title = next(t for prefix, t in GROUPS if path == prefix or path.startswith(prefix + "."))
        if path in shown:  # another name for an object shown already
            sections[title].append(f"### pktlab.{name}\n\nThe same object as [pktlab.{shown[path]}][{path}].")
            continue
        shown[path] = name
        try:
            obj = package[path.removeprefix("pktlab.")] if path != "pktlab" else package
        except (KeyError, griffe.AliasResolutionError):
            log.warning(f"reference/api: pktlab.{name} ({path}) is not found in the source")
            continue
        if obj.docstring is None or not obj.docstring.value.strip():
            log.warning(f"reference/api: pktlab.{name} ({path}) has no docstring; every public name is documented")
        heading = f"pktlab.{name}"
        options = "      show_root_heading: true\n      heading: \"" + heading + "\"\n"
        if obj.is_module:
            options += "      show_submodules: false\n      members: false\n"
        sections[title].append(f"::: {path}\n    options:\n{options}")
    return "\n\n".join(f"## {title}\n\n" + "\n\n".join(parts) for title, parts in sections.items() if parts)


def _arguments(parser: Any) -> list[tuple[str, str, str]]:
    rows = []
    for act in parser.arguments:  # pktlab.options.DeclaredParser keeps them
        name = ", ".join(act.option_strings) or act.dest.upper()
        if act.choices and not isinstance(act.choices, dict):
            name += " " + "|".join(str(c) for c in act.choices)
        default = "" if act.default in (None, False, argparse.SUPPRESS) or act.nargs == 0 else repr(act.default)
        rows.append((name, default, act.help or ""))
    return rows


def _command(heading: str, what: str, parser: Any, syntax: str | None = None) -> str:
    """One command's section: its heading, what it does, its syntax, a table of its arguments."""
    text = f"### {heading}\n\n{what}\n" + (f"\n```\n{syntax}\n```\n" if syntax else "")
    rows = _arguments(parser)
    return text + ("\n" + _table(("argument", "default", "what it is"), rows) + "\n" if rows else "")


def magics(_arg: str | None) -> str:
    from pktlab.notebook.magic import make_parsers, syntax

    return "\n".join(_command(f"`{p.prog}`{{ #{key} }}", p.description, p, syntax(p))
                     for key, p in make_parsers().items())  # fmt: skip


def cli(_arg: str | None) -> str:
    from pktlab.cli import make_parser

    return "\n".join(_command(f"`pktlab {name}`", what, p) for name, (what, p) in make_parser().commands.items())


def options(arg: str | None) -> str:
    """``options ATTACH`` or ``options REPLAY``: a table of the declared options."""
    from pktlab import options as declared

    which = arg or "ATTACH"
    rows = [(f"`{o.name}`", repr(o.default), o.magic_flag() if o.magic else "(none)", o.help)
            for o in getattr(declared, which)]  # fmt: skip
    magic = "%pktlab attach" if which == "ATTACH" else "%pktlab replay"
    return _table(("option", "default", f"{magic} flag", "what it is"), rows)


def errors(_arg: str | None) -> str:
    from pktlab import errors as mod

    def walk(cls: type, depth: int) -> list[str]:
        doc = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
        if not doc:
            log.warning(f"reference/errors: {cls.__name__} has no docstring")
        bases = [b.__name__ for b in cls.__bases__ if b.__module__ == "builtins" and b is not Exception]
        also = f" (also a `{'`, `'.join(bases)}`)" if bases else ""
        lines = [f"{'    ' * depth}- `pktlab.{cls.__name__}`{also}: {doc}"]
        for sub in sorted(cls.__subclasses__(), key=lambda c: c.__name__):
            if sub.__module__ == mod.__name__:
                lines += walk(sub, depth + 1)
        return lines

    return "\n".join(walk(mod.PktlabError, 0))


FIELD = re.compile(r"^\s+(\w+): [^#=]+?(?:=[^#]*)?(?:#\s*(?P<doc>.*))?$")


def fields(arg: str | None) -> str:
    """``fields module:Name``: a class's declared fields with their comments, or a dict's keys and values."""
    module, _, name = (arg or "").partition(":")
    obj = getattr(importlib.import_module(module), name)
    if isinstance(obj, dict):
        rows = [(f"`{k}`", v) for k, v in obj.items()]
    else:
        rows = []
        for line in inspect.getsource(obj).splitlines():
            m = FIELD.match(line)
            if m and m.group(1) in getattr(obj, "__annotations__", {}):
                if not m.group("doc"):
                    log.warning(f"{arg}: field {m.group(1)} has no comment saying what it holds")
                rows.append((f"`{m.group(1)}`", m.group("doc") or ""))
    return _table(("field", "what it holds"), rows)


def include(arg: str | None) -> str:
    path = ROOT / (arg or "")
    text = path.read_text()
    text = text.split("\n", 1)[1] if text.startswith("# ") else text  # the page has its own title
    # links between files of the repository are not pages of the site: the file's path, as code
    return re.sub(r"\[([^\]]+)\]\((?!https?:)([^)#]+)\)", lambda m: f"`{m.group(2)}`", text)


GENERATORS = {"api": api, "magics": magics, "cli": cli, "options": options, "errors": errors, "fields": fields,
              "include": include}  # fmt: skip


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    def replace(m: re.Match[str]) -> str:
        make = GENERATORS.get(m.group(1))
        if make is None:
            log.warning(f"{page.file.src_uri}: unknown marker {m.group(0)}")
            return m.group(0)
        return make(m.group(2))

    return MARKER.sub(replace, markdown)


ROLE = re.compile(r":(?:class|meth|func|data|attr|mod|obj|exc):(?=<code>)")


def on_page_content(html_text: str, **_: Any) -> str:
    """Docstrings name objects with Sphinx roles (:class:`Session`); the page shows just the name."""
    return ROLE.sub("", html_text)
