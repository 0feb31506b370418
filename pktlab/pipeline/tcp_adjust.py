"""Sequence adjustment applied to packets: what the dispatcher calls for accepted TCP packets.

The dispatcher (``pipeline/_dispatch.pyx``) hands :class:`TcpAdjust` the packet
as the handlers left it and the bytes it arrived with; it reads the TCP fields
of both (in C, where the views would find them), asks
:class:`~pktlab.pipeline.seqadj.SeqAdjuster` what the packet must carry for the
connection to stay consistent, and writes that into the packet (sequence and
acknowledgement numbers, SACK edges, the payload), so that the usual fix-up
recomputes lengths and checksums.  Live and on captures alike: both sources go
through the one dispatcher.  Compiled with the algorithm, in ``pipeline/_seqadj.pyx``.
"""

from __future__ import annotations

from ._seqadj import SeqAdjError, TcpAdjust

__all__ = ["TcpAdjust", "SeqAdjError"]
