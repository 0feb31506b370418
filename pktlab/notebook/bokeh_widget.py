"""jupyter_bokeh's ``BokehModel``, with document patches that a page's view can join at any point.

jupyter_bokeh sends each document patch as three comm messages (Bokeh's wire fragments: header,
metadata, content, then binary buffers if any), and the view in the page feeds them to a receiver
that only counts positions, created with the view.  A view drawn between two fragments of one patch
(the dashboard's output drawn while updates flow: after a page reload, in a second tab, or when
Notebook 7 draws a cell scrolled into view) reads every later patch one fragment off, applies none
of them and stays frozen at its first state: in the browser test the dashboard's counter stayed at
0 while 2,009 datagrams went through the queue.

:class:`LiveBokehModel` sends every fragment of a patch as the same JSON object, which is at once a
valid header (message type and id, no binary buffers), metadata and content (the patch's events).
A receiver that starts at any fragment then assembles whole patches, and applies each one once.
A patch that carries binary buffers (numpy columns; the dashboard's patches have none) is sent the
usual way.
"""

from __future__ import annotations

import json
from typing import Any

from jupyter_bokeh import BokehModel

FRAGMENTS = 3  # header, metadata, content: what the page's receiver counts for a patch without buffers


class LiveBokehModel(BokehModel):
    """A ``BokehModel`` whose updates reach views created at any moment (see the module's docstring)."""

    def _document_patched(self, event: Any) -> None:
        from bokeh.protocol import Protocol

        if event.setter is self:  # a change made by the page itself
            return
        msg = Protocol().create("PATCH-DOC", [event])
        if msg.buffers:  # binary fragments follow the content: sent as jupyter_bokeh sends them
            for part in (msg.header_json, msg.metadata_json, msg.content_json):
                self.send({"msg": "patch", "payload": part})
            for buffer in msg.buffers:
                self.send({"msg": "patch", "payload": json.dumps(buffer.ref)})
                self.send({"msg": "patch"}, [buffer.to_bytes()])
            return
        whole = json.dumps({**json.loads(msg.header_json), **json.loads(msg.content_json)})
        for _ in range(FRAGMENTS):
            self.send({"msg": "patch", "payload": whole})
