"""A dashboard's patches reach a page's view that starts reading at any fragment (jupyter_bokeh's receiver counts).

Bokeh's own Receiver (the state machine BokehJS's receiver mirrors: header, metadata, content, by position)
reads the comm messages a widget sent, starting at each fragment in turn, as a view drawn at that moment would.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from bokeh.layouts import column
from bokeh.models import Div
from bokeh.protocol import Protocol
from bokeh.protocol.receiver import Receiver
from jupyter_bokeh import BokehModel

from pktlab.notebook.bokeh_widget import FRAGMENTS, LiveBokehModel

TEXTS = [f"packets {n}" for n in range(1, 7)]


def sent_fragments(cls: type[BokehModel]) -> list[Any]:
    """The patch fragments a widget of ``cls`` sends while two Divs change together, as the dashboard's update does."""
    counter, table = Div(text="packets 0"), Div(text="rows 0")
    widget = cls(column(counter, table))
    fragments: list[Any] = []
    widget.send = lambda content, buffers=None: fragments.append(content.get("payload"))  # type: ignore[method-assign]
    doc = counter.document
    for n, text in enumerate(TEXTS, 1):
        doc.hold("combine")
        counter.text, table.text = text, f"rows {n}"
        doc.unhold()
    return fragments


def texts_applied(fragments: list[Any], start: int) -> list[str]:
    """The counter texts a view gets reading from fragment ``start`` on; where it can no longer read, the list ends."""

    async def read() -> list[str]:
        receiver, out = Receiver(Protocol()), []
        for f in fragments[start:]:
            try:
                msg = await receiver.consume(f)
            except Exception:  # what a view one fragment off meets from here on
                break
            if msg is not None:
                out += [e["new"] for e in msg.content["events"] if str(e.get("new", "")).startswith("packets")]
        return out

    return asyncio.run(read())


@pytest.mark.parametrize("start", range(9))
def test_a_view_joining_at_any_fragment_gets_every_later_patch_once(start: int) -> None:
    fragments = sent_fragments(LiveBokehModel)
    assert None not in fragments and len(fragments) % FRAGMENTS == 0
    # it misses only the patch it joined in the middle of: it gets what a view joining at the next patch gets
    next_patch = -(-start // FRAGMENTS) * FRAGMENTS
    got = texts_applied(fragments, start)
    assert got == texts_applied(fragments, next_patch)
    assert got[-1] == TEXTS[-1] and len(got) == len(set(got))
    assert texts_applied(fragments, 0) == TEXTS


def test_jupyter_bokeh_s_own_patches_freeze_a_view_that_joins_between_fragments() -> None:
    # why LiveBokehModel exists: the same changes as jupyter_bokeh sends them, read from the second fragment on
    fragments = sent_fragments(BokehModel)
    assert texts_applied(fragments, 0) == TEXTS
    assert TEXTS[-1] not in texts_applied(fragments, 1)
