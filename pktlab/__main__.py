"""``python -m pktlab``: the same command line as ``pktlab`` (see :mod:`pktlab.cli`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
