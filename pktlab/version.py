"""pktlab's version in one place: ``pktlab.__version__``, the package metadata and ``pktlab doctor`` read it."""

VERSION = "0.5.11"
"""pktlab's version, ``pktlab.__version__`` (a changelog entry per version: CHANGELOG.md)."""
