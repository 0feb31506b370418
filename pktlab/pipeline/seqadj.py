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

Everything here is plain Python on ints and bytes; the dispatcher calls
:meth:`SeqAdjuster.adjust` for TCP packets that are accepted (live and on
captures alike, see ``pipeline/_dispatch.pyx``).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Hashable
from dataclasses import dataclass, field

from ..errors import PktlabError

__all__ = ["Adjusted", "SeqAdjError", "SeqAdjWait", "SeqAdjuster", "Segment", "StreamMap"]

MOD = 1 << 32
HALF = 1 << 31
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10


class SeqAdjError(PktlabError):
    """A rewrite that cannot be made consistent with what already reached the receiver."""


class SeqAdjWait(Exception):  # noqa: N818 (a signal to the dispatcher, not an error)
    """The segment starts after bytes of its stream that have not passed yet (reordered or lost).

    Passing it now would fix where those bytes go, so that a rewrite changing their length
    when they come would be impossible; the dispatcher keeps it back for a moment instead
    (``adjust(..., wait=False)`` then passes it anyway).
    """


def _s32(x: int) -> int:
    """``x`` (mod 2**32) as a signed distance."""
    x %= MOD
    return x - MOD if x >= HALF else x


@dataclass
class _Edit:
    start: int
    end: int
    out: bytes
    before: int  # out - orig offset just before ``start``

    @property
    def after(self) -> int:
        return self.before + len(self.out) - (self.end - self.start)

    @property
    def out_start(self) -> int:
        return self.start + self.before

    @property
    def out_end(self) -> int:
        return self.start + self.before + len(self.out)


def _common_affixes(a: bytes, b: bytes) -> tuple[int, int]:
    """Lengths of the common prefix and (not overlapping it) common suffix of ``a`` and ``b``.

    By halving with slice comparisons (memcmp), not byte by byte in Python: this runs for
    every rewritten segment (a byte loop cost ~150 us per 1.4 KB segment).
    """
    n = min(len(a), len(b))
    lo, hi = 0, n  # a[:lo] == b[:lo]; the first difference, if any, is before hi
    if a[:n] != b[:n]:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if a[lo:mid] == b[lo:mid]:
                lo = mid
            else:
                hi = mid
        p = lo
    else:
        p = n
    la, lb, m = len(a), len(b), n - p  # the suffix may not overlap the prefix
    lo, hi = 0, m
    if a[la - m :] != b[lb - m :]:
        while hi - lo > 1:  # a's last lo bytes equal b's; the last hi do not
            mid = (lo + hi) // 2
            if a[la - mid : la - lo] == b[lb - mid : lb - lo]:
                lo = mid
            else:
                hi = mid
        s = lo
    else:
        s = m
    return p, s


class StreamMap:
    """The orig → out map of one direction of one connection (positions, not 32-bit values)."""

    def __init__(self, max_edits: int = 65536, history: int = 1 << 20) -> None:
        self.max_edits = max_edits
        self.history = history
        self.edits: list[_Edit] = []
        self._starts: list[int] = []
        self._out_starts: list[int] = []
        self.base = 0  # offset before the first kept edit
        self.acked: int | None = None  # the receiver has every byte before this orig position
        self.known: int | None = None  # below this the edits were forgotten (the map is exact from here on)
        self.passed: list[tuple[int, int]] = []  # disjoint, sorted orig ranges that were accepted
        self.high = 0  # highest orig position seen (for reading 32-bit values)

    # -- the map ---------------------------------------------------------------------
    @property
    def offset(self) -> int:
        """The out - orig offset after every edit (what new bytes are shifted by)."""
        return self.edits[-1].after if self.edits else self.base

    def cut(self, p: int) -> int:
        """Where orig position ``p`` falls in the out stream."""
        i = bisect_right(self._starts, p) - 1
        if i < 0:
            return p + self.base
        e = self.edits[i]
        if p >= e.end:
            return p + e.after
        return e.out_start + min(p - e.start, len(e.out))

    def uncut(self, q: int) -> int:
        """The highest orig position whose cut is at most ``q`` (for acknowledgements)."""
        i = bisect_right(self._out_starts, q) - 1
        if i < 0:
            return q - self.base
        e = self.edits[i]
        if q >= e.out_end:
            return q - e.after
        if e.end == e.start:  # inside inserted bytes: the byte before them is the last one covered
            return e.start - 1
        return e.start + min(q - e.out_start, e.end - e.start - 1)

    def render(self, s: int, e: int, data: bytes) -> bytes:
        """The out bytes of orig ``[s, e)`` whose original bytes are ``data``."""
        pieces = []
        pos = s
        i = max(bisect_right(self._starts, s) - 1, 0)
        while i < len(self.edits):
            ed = self.edits[i]
            i += 1
            a, b = ed.start, ed.end
            if a == b:
                if not s < a <= e:
                    if a > e:
                        break
                    continue
            elif not (a < e and b > s):
                if a >= e:
                    break
                continue
            if a > pos:
                pieces.append(data[pos - s : a - s])
                pos = a
            lo = 0 if pos == a else min(pos - a, len(ed.out))
            stop = min(b, e)
            hi = len(ed.out) if stop == b else min(stop - a, len(ed.out))
            pieces.append(ed.out[lo:hi])
            pos = stop
        if pos < e:
            pieces.append(data[pos - s :])
        return b"".join(pieces)

    # -- what passed -----------------------------------------------------------------------
    def passed_end(self) -> int | None:
        return self.passed[-1][1] if self.passed else None

    def mark_passed(self, s: int, e: int) -> None:
        """Note that the bytes [s, e) of the stream went on (merged into the passed ranges)."""
        if e <= s:
            return
        out = []
        placed = False
        for a, b in self.passed:
            if b < s:
                out.append((a, b))
            elif a > e:
                if not placed:
                    out.append((s, e))
                    placed = True
                out.append((a, b))
            else:
                s, e = min(a, s), max(b, e)
        if not placed:
            out.append((s, e))
        self.passed = out

    def runs(self, s: int, e: int) -> list[tuple[int, int, bool]]:
        """``[s, e)`` cut into runs ``(start, end, passed_before)``."""
        out = []
        pos = s
        passed = self.passed
        if self.acked is not None:
            passed = [(min(s, self.acked), self.acked), *passed]
        for a, b in passed:
            if b <= pos:
                continue
            if a >= e:
                break
            if a > pos:
                out.append((pos, a, False))
            out.append((max(a, pos), min(b, e), True))
            pos = min(b, e)
        if pos < e:
            out.append((pos, e, False))
        return out

    # -- changes -------------------------------------------------------------------------
    def add_edit(self, start: int, end: int, out: bytes) -> None:
        """Record that orig ``[start, end)`` (bytes that never passed) becomes ``out``."""
        self.check_edit(start, end, out)
        if start == end and not out:
            return
        if len(self.edits) >= self.max_edits:  # acknowledged edits kept as history make room (check_edit counted)
            self._forget(len(self.edits) - self.max_edits + 1)
        i = bisect_right(self._starts, start)
        before = self.edits[i - 1].after if i else self.base
        # (edits are never merged: a merged edit would place the bytes inside it differently)
        self.edits.insert(i, _Edit(start, end, out, before))
        self._starts.insert(i, start)
        self._out_starts.insert(i, start + before)

    def acknowledged(self, p: int) -> None:
        """The receiver has every byte before orig position ``p``."""
        if self.acked is not None and p <= self.acked:
            return
        self.acked = p
        self.passed = [(max(a, p), b) for a, b in self.passed if b > p]
        k = 0
        while k < len(self.edits) and self.edits[k].end < p - self.history:
            k += 1
        self._forget(k)

    def _forget(self, k: int) -> None:
        """Fold the first ``k`` edits (acknowledged ones only) into the base offset."""
        if self.acked is None:
            return
        n = 0
        while n < min(k, len(self.edits)) and self.edits[n].end <= self.acked and self.edits[n].start < self.acked:
            n += 1
        if n:
            self.base = self.edits[n - 1].after
            self.known = self.edits[n - 1].end
            del self.edits[:n], self._starts[:n], self._out_starts[:n]

    def check_edit(self, start: int, end: int, out: bytes) -> None:
        """Raise SeqAdjError if :meth:`add_edit` would (changing nothing)."""
        if start == end and not out:
            return
        if len(out) != end - start:
            tail = self.passed_end()
            if tail is not None and tail > end:
                raise SeqAdjError(
                    f"the rewrite changes the length of bytes {start}..{end} of the stream, but later bytes have "
                    "already reached the receiver at their old place (this segment comes after a loss); a length "
                    "change is only possible in bytes that are the newest the sender sent"
                )
            if bisect_right(self._starts, start) < len(self.edits):
                raise SeqAdjError("a length change before bytes already rewritten is not possible")
        if len(self.edits) >= self.max_edits:
            foldable = 0
            while (foldable < len(self.edits) and self.acked is not None and self.edits[foldable].end <= self.acked
                   and self.edits[foldable].start < self.acked):  # fmt: skip
                foldable += 1
            if len(self.edits) - foldable >= self.max_edits:
                raise SeqAdjError(
                    f"more than {self.max_edits} rewrites in this direction of the connection are not yet "
                    "acknowledged; the rewrite was not made"
                )

    def local(self, s: int, e: int) -> StreamMap:
        """A map holding only the edits that place ``[s, e]`` (for rendering a segment with a new edit)."""
        i0 = max(bisect_right(self._starts, s) - 1, 0)
        i1 = bisect_right(self._starts, e)
        other = StreamMap(1 << 62, self.history)
        other.edits = self.edits[i0:i1]
        other._starts, other._out_starts = self._starts[i0:i1], self._out_starts[i0:i1]
        other.base = other.edits[0].before if other.edits else self.cut(s) - s
        return other


@dataclass
class Segment:
    """The TCP fields of one packet that sequence adjustment reads and writes."""

    src: Hashable
    sport: int
    dst: Hashable
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes
    sack: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Adjusted:
    """What the packet must carry: sequence and acknowledgement numbers, payload and SACK blocks."""

    seq: int
    ack: int
    payload: bytes
    sack: list[tuple[int, int]]
    trimmed: int = 0  # bytes acknowledged long ago cut off the front of a retransmission


class _Direction:
    """One direction of a connection: its map and how 32-bit values become positions."""

    def __init__(self, isn: int, max_edits: int, history: int) -> None:
        self.isn = isn  # the 32-bit value of position 0
        self.map = StreamMap(max_edits, history)

    def pos(self, value: int) -> int:
        ref = self.map.high
        return ref + _s32(value - self.isn - ref)

    def out_pos(self, value: int) -> int:
        ref = self.map.cut(self.map.high)
        return ref + _s32(value - self.isn - ref)

    def value(self, p: int) -> int:
        return (self.isn + p) % MOD


class Connection:
    """Adjustment state of one TCP connection (both directions), kept by :class:`SeqAdjuster`."""

    def __init__(self, key: tuple, max_edits: int, history: int) -> None:
        self.key = key
        self.max_edits = max_edits
        self.history = history
        self.dirs: dict[tuple, _Direction] = {}
        self.fin: dict[tuple, int] = {}  # each direction's FIN, as the 32-bit sequence number it takes
        self.closed = False
        self.closed_at: float | None = None
        self.last = 0.0
        self.unseen = False  # said once: the peer acknowledged bytes that never passed pktlab

    def _dir(self, ep: tuple, seg: Segment, create: bool, sent_end: int | None) -> _Direction | None:
        d = self.dirs.get(ep)
        if d is None and create:
            start = (seg.seq + (1 if seg.flags & SYN else 0)) % MOD
            d = _Direction(start, self.max_edits, self.history)
            # what came before passed as it was; with flow tracking's sent_end, later bytes may have too
            end = max(d.pos(sent_end), 0) if sent_end is not None else 0
            d.map.passed = [(-HALF, end)]
            d.map.high = end
            self.dirs[ep] = d
        return d

    def adjust(
        self, seg: Segment, out: bytes | None, sent_end: int | None = None, wait: bool = False
    ) -> Adjusted | None:
        ep = (seg.src, seg.sport)
        back = (seg.dst, seg.dport)
        self._check_unseen(seg, back)
        changed = out is not None and out != seg.payload
        new_dir = ep not in self.dirs
        d = self._dir(ep, seg, changed, sent_end)
        try:
            plan = self._plan(d, seg, out if changed else None, wait)
        except (SeqAdjError, SeqAdjWait):
            if new_dir:
                self.dirs.pop(ep, None)
            raise
        if seg.flags & FIN:
            self.fin[ep] = (seg.seq + len(seg.payload) + (1 if seg.flags & SYN else 0)) % MOD
        if seg.flags & RST:
            self.closed = True
        if plan is None and not (self.dirs.get(back) and seg.flags & ACK):
            return None
        if plan is None:
            seq, payload, trimmed, commit = seg.seq, (out if changed else seg.payload), 0, None
        else:
            seq, payload, trimmed, commit = plan
        ack, sack = seg.ack, seg.sack
        o = self.dirs.get(back)
        if o is not None and seg.flags & ACK:
            p = o.map.uncut(o.out_pos(seg.ack))
            ack = o.value(p)
            sack = []
            for left, right in seg.sack:
                lo = o.map.uncut(o.out_pos(left) - 1) + 1
                hi = o.map.uncut(o.out_pos(right))
                if hi > lo:
                    sack.append((o.value(lo), o.value(hi)))
        if commit is not None:
            commit()
        if o is not None and seg.flags & ACK:
            o.map.acknowledged(o.pos(ack))
        if seg.flags & ACK and back in self.fin and ep in self.fin and _s32(ack - self.fin[back]) > 0:
            self.closed = True  # both sides sent their FIN and this acknowledges the last one
        return Adjusted(seq, ack, payload, sack, trimmed)

    def _check_unseen(self, seg: Segment, back: tuple) -> None:
        """Raise SeqAdjError (once, nothing changed) if ``seg`` acknowledges rewritten bytes that never passed.

        A receiver can only acknowledge what reached it.  Bytes beyond the highest that passed
        through the session reached it some other way: the queue passed them unseen (full and
        fail-open, before the connection's first rewrite made it fail-closed).  They went at their
        old places, so the rewritten stream the receiver has is not what the handler meant.
        """
        o = self.dirs.get(back)
        if self.unseen or o is None or not seg.flags & ACK or not (o.map.edits or o.map.base):
            return
        end = o.map.cut(o.map.high) + (1 if back in self.fin else 0)  # a FIN takes a sequence number
        if o.out_pos(seg.ack) > end:
            self.unseen = True
            raise SeqAdjError(
                f"the receiver acknowledges {o.out_pos(seg.ack) - end} byte(s) of this connection that never "
                "passed pktlab: the kernel passed them unseen (the queue was full and fails open) before its first "
                "rewrite, so the receiver's stream is not the rewritten one; attach with fail_open=False (or a "
                "larger max_len) to rewrite TCP at this rate"
            )

    def _plan(self, d: _Direction | None, seg: Segment, out: bytes | None, wait: bool = False):
        """Where the segment goes and what it carries; the state changes wait for ``commit``."""
        if d is None:
            return None
        m = d.map
        data_start = seg.seq + (1 if seg.flags & SYN else 0)
        s = d.pos(data_start)
        e = s + len(seg.payload)
        if wait and (e > s or seg.flags & FIN):
            tail = m.passed_end()
            if m.acked is not None:
                tail = m.acked if tail is None else max(tail, m.acked)
            if tail is not None and s > tail:
                raise SeqAdjWait(f"bytes {tail}..{s} of the stream have not passed yet")
        data = seg.payload
        trimmed = 0
        if m.known is not None and s < m.known:  # the receiver has the front of it: send only the rest
            trimmed = min(m.known, e) - s
            data = data[trimmed:]
            s += trimmed
            if out is not None:
                p, q = _common_affixes(seg.payload, out)
                if q >= len(data):
                    out = None  # only bytes acknowledged long ago were changed: they are not sent again
                elif p >= trimmed:
                    out = out[trimmed:]
                elif all(old for _a, _b, old in m.runs(s, e)) and (
                    out.endswith(data) or out.endswith(m.render(s, e, data))
                ):
                    out = None  # rewritten again in front; the rest is what went the first time
                else:
                    raise SeqAdjError(
                        "the rewrite changes bytes the receiver acknowledged long ago; they cannot be changed now"
                    )
        runs = m.runs(s, e)
        edit = None
        if out is not None:
            edit = self._new_edit(m, s, e, data, out, runs)
        view = m
        if edit is not None:
            m.check_edit(*edit)  # raises, nothing changed, when the edit is impossible
            view = m.local(s, e)  # only the edits around the segment: no copy of the whole map per packet
            view.add_edit(*edit)
        payload = view.render(s, e, data)
        seq_pos = view.cut(s) - (1 if seg.flags & SYN else 0)

        def commit() -> None:
            if edit is not None:
                m.add_edit(*edit)
            m.mark_passed(s, e)
            m.high = max(m.high, e)

        return d.value(seq_pos), payload, trimmed, commit

    @staticmethod
    def _new_edit(m: StreamMap, s: int, e: int, data: bytes, out: bytes, runs) -> tuple[int, int, bytes] | None:
        """The edit a handler's new payload ``out`` makes to orig ``[s, e)`` (``data``), or an error."""
        new = [(a, b) for a, b, old in runs if not old]
        rendered = m.render(s, e, data)
        if out in (data, rendered):
            return None
        if not new:
            # a retransmission: what went the first time goes again.  A handler rewriting it again cuts it
            # where this segment is cut, which may differ from the first time; that is fine as long as it
            # changes only bytes that were rewritten then
            p, q = _common_affixes(data, out)
            lo, hi = s + p, e - q
            spans = [x for x in m.edits if (x.start < e and x.end > s) or (x.start == x.end and s < x.start <= e)]
            if spans and spans[0].start <= lo and hi <= spans[-1].end:
                return None
            raise SeqAdjError(
                f"the handler changed bytes {lo - s}..{hi - s} of a segment that is behind bytes of its stream "
                "that already went on unchanged (a retransmission, or a segment held or reordered); the receiver "
                "may have them as they were, so they cannot be changed now"
            )
        if len(new) > 1:
            raise SeqAdjError("a segment that fills several gaps of the stream at once cannot be rewritten")
        a, b = new[0]
        # the handler's output is [old bytes before][its output for the new bytes][old bytes after],
        # the old ones either as they arrived or as they were sent
        heads = {data[: a - s], m.render(s, a, data[: a - s])}
        tails = {data[b - s :], m.render(b, e, data[b - s :])}
        for head in heads:
            if not out.startswith(head):
                continue
            for tail in tails:
                if len(out) >= len(head) + len(tail) and out.endswith(tail):
                    mid = out[len(head) : len(out) - len(tail)]
                    orig = data[a - s : b - s]
                    p, q = _common_affixes(orig, mid)
                    if p == 0 and q == len(orig):  # bytes inserted before the first new byte: an insertion
                        q -= 1  # there would belong to the bytes before it, which already went; take one new byte
                    return a + p, b - q, mid[p : len(mid) - q]
        raise SeqAdjError(
            "the rewrite changes bytes that have already passed; only bytes that pass for the first time can "
            "be rewritten"
        )


class SeqAdjuster:
    """Sequence adjustment for every TCP connection a session rewrites (bounded; idle ones expire).

    A connection's state starts with the first rewrite of a segment's payload
    (from then on a retransmission gets the bytes that went first, whether or not
    the length changed) and goes away ``linger`` seconds after a RST or after both FINs were
    acknowledged (a late retransmission of the end still lines up), or after
    ``idle_timeout`` seconds without a packet.
    """

    def __init__(
        self,
        max_connections: int = 65536,
        idle_timeout: float = 600.0,
        max_edits: int = 65536,
        linger: float = 5.0,
        history: int = 1 << 20,
    ) -> None:
        self.max_connections = max_connections
        self.history = history
        self.idle_timeout = idle_timeout
        self.max_edits = max_edits
        self.linger = linger
        self.connections: dict[tuple, Connection] = {}
        self._swept = 0.0

    @staticmethod
    def key(seg: Segment) -> tuple:
        a, b = (seg.src, seg.sport), (seg.dst, seg.dport)
        return (a, b) if a <= b else (b, a)  # type: ignore[operator]

    def __len__(self) -> int:
        return len(self.connections)

    def adjust(
        self, seg: Segment, out: bytes | None, now: float, sent_end: int | None = None, wait: bool = False
    ) -> Adjusted | None:
        """What an accepted segment must carry (``out``: the handler's new payload, if any).

        ``None``: the segment goes as it is (with ``out``, if given).  Raises
        :class:`SeqAdjError`, with nothing changed, when the rewrite cannot be made
        consistent; the segment can then go without it (``adjust(seg, None, now)``).
        ``wait=True``: raise :class:`SeqAdjWait` (nothing changed) for a segment of a
        stream with state that starts after bytes that have not passed yet.
        ``sent_end``: the sequence number after the highest byte of this direction
        that passed before (from flow tracking), so that a first length change is
        refused where later bytes have already gone.
        """
        self.expire(now)
        k = self.key(seg)
        c = self.connections.get(k)
        d = c.dirs.get((seg.src, seg.sport)) if c is not None and seg.flags & SYN and not seg.flags & ACK else None
        if d is not None and d.pos((seg.seq + 1) % MOD) != 0:
            del self.connections[k]  # a new connection on the same ports
            c = None
        if c is None:
            if out is None or out == seg.payload:
                return None
            if len(self.connections) >= self.max_connections:
                self._sweep(now)
            if len(self.connections) >= self.max_connections:
                raise SeqAdjError(
                    f"{self.max_connections} connections already have rewritten lengths; the rewrite was not made"
                )
            c = Connection(k, self.max_edits, self.history)
            self.connections[k] = c
        try:
            res = c.adjust(seg, out, sent_end, wait)
        finally:
            if not c.dirs:
                self.connections.pop(k, None)
        c.last = now
        if c.closed and c.closed_at is None:
            c.closed_at = now
        return res

    def expire(self, now: float) -> None:
        """Forget connections idle for ``idle_timeout`` s or ended ``linger`` s ago (looks at most once a second)."""
        if now - self._swept >= 1.0:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        self._swept = now
        gone = [
            k
            for k, c in self.connections.items()
            if now - c.last > self.idle_timeout or (c.closed_at is not None and now - c.closed_at > self.linger)
        ]
        for k in gone:
            del self.connections[k]
