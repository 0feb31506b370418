"""The flow: sources (queue, capture) into one dispatcher, the handler chain, held packets, the record, ``Session``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# What the pipeline uses of later stages of the flow, by name, registered by pktlab's front (``pktlab/__init__.py``)
# so that the pipeline imports none of them: "dashboard", "controls" and "monitor" (the notebook layer, imported
# only when called) and "dataset" (a bundled capture's path from its name, and "datasets": their names).
HOOKS: dict[str, Callable[..., Any]] = {}
