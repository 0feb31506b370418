"""TCP sequence adjustment: keep a connection consistent when handlers change segment lengths.

When a handler makes a TCP segment's payload longer or shorter, the byte
stream the receiver sees no longer lines up with the one the sender wrote:
later segments must start further on (or back), and the receiver's
acknowledgements and SACK blocks must be translated back before the sender
sees them.  netfilter's NAT helpers do this for FTP and SIP
(``nf_conntrack_seqadj.c``) with one correction position per direction,
which is enough for a helper that rewrites one command at a time; handlers
here rewrite any segment, retransmissions are split and merged differently
by the sender, and segments can be dropped (by the handler or on the way),
so this module keeps, per direction, the map from the sender's byte stream
(*orig* positions) to the receiver's (*out* positions):

* an **edit** replaced the orig bytes ``[start, end)`` by ``out`` (either may be
  empty); edits are kept in order with the offset before each;
* ``cut(p)`` is where orig position ``p`` falls in the out stream.  Inside an
  edit the first ``min(p - start, len(out))`` bytes of its output come before
  ``p``; its whole output comes before ``end``.  So any way of splitting the
  orig stream into segments splits the out stream into consecutive pieces:
  a retransmission, however cut, gets the same bytes at the same place;
* the orig ranges that have **passed** (been accepted) are remembered: a new
  rewrite may change bytes that never passed; bytes that passed keep what
  they were sent as, and a length change is possible only where no later byte
  has passed yet (after a loss, later bytes went out at their old positions);
* what the receiver acknowledged counts as passed; its edits are kept for
  ``history`` more bytes (a retransmission that the receiver partly has, or a
  handler rewriting it again the same way, still lines up exactly) and then
  folded into one offset; a retransmission reaching further back is cut to
  the bytes still known (the receiver has the rest).  That bounds the memory
  to what is in flight, and at most ``max_edits`` edits are kept.

Sequence numbers are 32-bit and wrap: positions are kept as unbounded ints
relative to the first sequence number seen, and each 32-bit value is read as
the position nearest the highest one seen.

The algorithm is compiled (``pipeline/_seqadj.pyx``: typed positions, edits
found by bisection in C, payloads compared with ``memcmp``); this module names
it.  :class:`TcpAdjust` applies it to packets: the dispatcher hands it each
accepted TCP packet as the handlers left it and the bytes it arrived with; it
reads the TCP fields of both in C, asks :meth:`SeqAdjuster.adjust` what the
packet must carry, and writes that into the packet (sequence and
acknowledgement numbers, SACK edges, the payload), so that the usual fix-up
recomputes lengths and checksums, live and on captures alike
(``pipeline/_dispatch.pyx``).
"""

from ._seqadj import (
    ACK,
    FIN,
    HALF,
    MOD,
    RST,
    SYN,
    Adjusted,
    Segment,
    SeqAdjError,
    SeqAdjuster,
    SeqAdjWait,
    StreamMap,
    TcpAdjust,
    common_affixes,
)

__all__ = ["ACK", "FIN", "HALF", "MOD", "RST", "SYN", "Adjusted", "SeqAdjError", "SeqAdjWait", "SeqAdjuster",
           "Segment", "StreamMap", "TcpAdjust", "common_affixes"]
