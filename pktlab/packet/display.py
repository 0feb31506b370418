"""A packet as HTML for notebooks: its layers and fields beside a hex dump.

Each layer has a colour; each field's bytes in the hex dump carry that colour
(alternating shades, so neighbouring fields stay apart) and a tooltip naming
the field and its value, and the field table gives the same byte ranges.
"""

from __future__ import annotations

from html import escape
from typing import Any

from ..errors import PacketFormatError
from ._core import Field

COLOURS = ["#dbeafe", "#dcfce7", "#fef3c7", "#fce7f3", "#ede9fe", "#e0f2fe"]
SHADES = ["#bfdbfe", "#bbf7d0", "#fde68a", "#fbcfe8", "#ddd6fe", "#bae6fd"]


def _layers(pkt: Any) -> list[Any]:
    """The views present in a packet, outermost first; a layer that cannot be parsed is left out."""
    from .user_protocols import registry

    getters = [lambda n=n: getattr(pkt, n) for n in ("eth", "ip", "ipv6", "transport", "dns")]
    getters += [lambda n=n: registry.lookup(pkt, n) for n in registry.names]
    out = []
    for get in getters:
        try:
            view = get()
        except PacketFormatError:
            continue
        if view is not None:
            out.append(view)
    return out


def _fields(view: Any) -> list[tuple[str, int, int, str]]:
    """(name, first byte, end byte, value text) of each field of a view, in order."""
    from .user_protocols import VarField

    rows = []
    for klass in reversed(type(view).__mro__):
        for name, f in vars(klass).items():
            if isinstance(f, Field):
                start = view._off + f.bit // 8
                end = view._off + (f.bit + f.bits + 7) // 8
            elif isinstance(f, VarField):
                try:
                    start, n = f._span(view)
                except PacketFormatError:
                    continue
                end = start + n
            else:
                continue
            try:
                value = getattr(view, name)
                text = repr(value) if isinstance(value, (bytes, str)) else str(value)
            except PacketFormatError:
                text = "(past the end)"
            rows.append((name, start, end, text))
    return rows


def packet_html(pkt: Any, width: int = 16) -> str:
    data = bytes(pkt._buf)
    layers = _layers(pkt)
    owner: list[tuple[str, str] | None] = [None] * len(data)  # per byte: (colour, tooltip)
    tables = []
    for li, view in enumerate(layers):
        colour, shade = COLOURS[li % len(COLOURS)], SHADES[li % len(SHADES)]
        name = getattr(view, "layer", "") or type(view).__name__.lower()
        rows = []
        for fi, (fname, start, end, text) in enumerate(_fields(view)):
            tint = shade if fi % 2 else colour
            for i in range(max(start, 0), min(end, len(data))):
                owner[i] = (tint, f"{name}.{fname} = {text}")
            span = f"{start}" if end - start <= 1 else f"{start}–{end - 1}"
            rows.append(
                f"<tr style='background:{tint}'><td>{escape(fname)}</td><td>{escape(text)}</td>"
                f"<td style='color:#666'>{span}</td></tr>"
            )
        tables.append(
            f"<table style='border-collapse:collapse;margin-bottom:6px;font-size:12px'>"
            f"<tr><th colspan=3 style='text-align:left;background:{colour}'>{escape(name)}</th></tr>"
            + "".join(rows)
            + "</table>"
        )
    lines = []
    for off in range(0, len(data), width):
        cells = []
        for i in range(off, min(off + width, len(data))):
            o = owner[i]
            style = f" style='background:{o[0]}' title='{escape(o[1], quote=True)}'" if o else ""
            cells.append(f"<span{style}>{data[i]:02x}</span>")
        lines.append(f"<span style='color:#888'>{off:04x}</span>  " + " ".join(cells))
    dump = "<pre style='margin:0;font-size:12px;line-height:1.5'>" + "\n".join(lines) + "</pre>"
    head = escape(repr(pkt))
    return (
        f"<div><div style='font-family:monospace;margin-bottom:4px'>{head}</div>"
        f"<div style='display:flex;gap:16px;align-items:flex-start'><div>{''.join(tables)}</div>"
        f"<div>{dump}</div></div></div>"
    )
