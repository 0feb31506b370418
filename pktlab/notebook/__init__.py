"""The notebook side: magics, dashboard, controls and the statistics behind them.

Its packages come with ``pktlab[notebook]``; the core installs without Jupyter, and a notebook feature
asked for without them says so in one sentence (:func:`require`).
"""

from __future__ import annotations

import importlib.util

from ..errors import notebook_extra_missing

EXTRA = ("IPython", "bokeh", "jupyter_bokeh", "ipywidgets")  # pyproject.toml's [notebook] extra, by import name


def require(what: str) -> None:
    """Raise :class:`~pktlab.errors.MissingToolError` naming the extra when one of its packages is missing."""
    for name in EXTRA:
        if importlib.util.find_spec(name) is None:
            raise notebook_extra_missing(what, ModuleNotFoundError(f"No module named {name!r}", name=name))
