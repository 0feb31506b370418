"""pktlab's version in one place: ``pktlab.__version__``, the package metadata and ``pktlab doctor`` read it."""

VERSION = "0.2.0"
