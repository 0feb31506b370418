"""A packet as HTML for notebooks: its layers and fields beside a hex dump.

Each layer has a colour; each field's bytes in the hex dump carry that colour
(alternating shades, so neighbouring fields stay apart) and a tooltip naming
every field in that byte with its value (``45``: ip.version = 4; ip.ihl = 5),
and the field table gives the same byte ranges.  The colours are translucent
tints with the text in the theme's own colour, so the display reads in light
and dark themes alike.  Checksums show in hex, TCP flags as letters.
"""

from __future__ import annotations

from html import escape
from typing import Any

from ..errors import PacketFormatError
from ._core import Field

# blue, green, amber, pink, violet, sky: a light and a stronger tint of each, over whatever the theme's background is
_RGB = ["59,130,246", "34,197,94", "245,158,11", "236,72,153", "139,92,246", "14,165,233"]
COLOURS = [f"rgba({c},0.18)" for c in _RGB]
SHADES = [f"rgba({c},0.34)" for c in _RGB]
MUTED = "opacity:0.6"  # offsets and byte ranges: the theme's text colour, fainter


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
                text = _text(view, name, value)
            except PacketFormatError:
                text = "(past the end)"
            rows.append((name, start, end, text))
    return rows


def _text(view: Any, name: str, value: Any) -> str:
    """A field's value as a person reads it: checksums in hex, TCP flags as letters, text quoted."""
    if isinstance(value, (bytes, str)):
        return repr(value)
    if isinstance(value, int) and ("chksum" in name or "checksum" in name):
        return f"0x{value:04x}"
    if name == "flagbits" and hasattr(view, "flags"):
        return f"{value} ({view.flags or 'none'})"
    return str(value)


def packet_html(pkt: Any, width: int = 16) -> str:
    data = bytes(pkt._buf)
    layers = _layers(pkt)
    owner: list[tuple[str, list[str]] | None] = [None] * len(data)  # per byte: (colour, the fields in it)
    tables = []
    for li, view in enumerate(layers):
        colour, shade = COLOURS[li % len(COLOURS)], SHADES[li % len(SHADES)]
        name = getattr(view, "layer", "") or type(view).__name__.lower()
        rows = []
        for fi, (fname, start, end, text) in enumerate(_fields(view)):
            tint = shade if fi % 2 else colour
            for i in range(max(start, 0), min(end, len(data))):
                o = owner[i]
                if o is not None and o[1][0].startswith(f"{name}."):  # a byte several fields share
                    o[1].append(f"{name}.{fname} = {text}")
                else:
                    owner[i] = (tint, [f"{name}.{fname} = {text}"])
            span = f"{start}" if end - start <= 1 else f"{start}–{end - 1}"
            rows.append(
                f"<tr style='background:{tint}'><td>{escape(fname)}</td><td>{escape(text)}</td>"
                f"<td style='{MUTED}'>{span}</td></tr>"
            )
        tables.append(
            f"<table style='border-collapse:collapse;margin-bottom:6px;font-size:12px;color:inherit'>"
            f"<tr><th colspan=3 style='text-align:left;background:{colour}'>{escape(name)}</th></tr>"
            f"<tr style='{MUTED}'><th style='text-align:left'>field</th><th style='text-align:left'>value</th>"
            f"<th style='text-align:left'>bytes</th></tr>" + "".join(rows) + "</table>"
        )
    lines = []
    for off in range(0, len(data), width):
        cells = []
        for i in range(off, min(off + width, len(data))):
            o = owner[i]
            style = f" style='background:{o[0]}' title='{escape('; '.join(o[1]), quote=True)}'" if o else ""
            cells.append(f"<span{style}>{data[i]:02x}</span>")
        lines.append(f"<span style='{MUTED}'>{off:04x}</span>  " + " ".join(cells))
    if pkt._wire:  # the copy range cut it: say where the bytes end
        lines.append(f"<span style='{MUTED}'>… {pkt._wire - len(data):,} more bytes not copied (copy range)</span>")
    dump = "<pre style='margin:0;font-size:12px;line-height:1.5'>" + "\n".join(lines) + "</pre>"
    head = escape(repr(pkt))
    return (
        f"<div><div style='font-family:monospace;margin-bottom:4px'>{head}</div>"
        f"<div style='display:flex;gap:16px;align-items:flex-start'><div>{''.join(tables)}</div>"
        f"<div>{dump}</div></div></div>"
    )
