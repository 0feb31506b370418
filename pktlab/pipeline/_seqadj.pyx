# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# (wraparound off: no negative index anywhere here)
"""TCP sequence adjustment, compiled: the algorithm :mod:`pktlab.pipeline.seqadj` describes, typed.

Positions are 64-bit integers relative to each direction's first sequence
number (a stream would need 2**63 bytes to overflow them); 32-bit values are
read as the position nearest the highest one seen.  Edits are typed objects
in a list sorted by start, searched by bisection in C; the byte comparisons
are ``memcmp`` over the payloads, never slices.  The public names
(:class:`SeqAdjuster`, :class:`Segment`, :class:`Adjusted`, :class:`StreamMap`,
the errors) are re-exported by ``pipeline/seqadj.py``, whose docstring is the
explanation of the algorithm.
"""

import threading

from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcmp

from pktlab._common cimport buf_ptr, tcp_stream_key
from pktlab.packet._core cimport PacketCore, arrived_payload, as_arrived, payload_as_arrived, pkt_ptr, set_payload

from pktlab.errors import PacketFormatError, PktlabError

__all__ = ["Adjusted", "SeqAdjError", "SeqAdjWait", "SeqAdjuster", "Segment", "StreamMap", "TcpAdjust",
           "common_affixes"]

MOD = 1 << 32
HALF = 1 << 31
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

cdef long long C_HALF = 1LL << 31
cdef long long MASK = 0xFFFFFFFF
cdef int F_FIN = 0x01, F_SYN = 0x02, F_RST = 0x04, F_ACK = 0x10
cdef int SACK = 5  # the TCP option


class SeqAdjError(PktlabError):
    """A rewrite that cannot be made consistent with what already reached the receiver."""


class SeqAdjWait(Exception):  # noqa: N818 (a signal to the dispatcher, not an error)
    """The segment starts after bytes of its stream that have not passed yet (reordered or lost).

    Passing it now would fix where those bytes go, so that a rewrite changing their length
    when they come would be impossible; the dispatcher keeps it back for a moment instead
    (``adjust(..., wait=False)`` then passes it anyway).
    """


cdef inline long long s32(long long x) noexcept:
    """``x`` (mod 2**32) as a signed distance."""
    x &= MASK
    return x - (C_HALF << 1) if x >= C_HALF else x


cdef inline long long lmin(long long a, long long b) noexcept:
    return a if a < b else b


cdef inline long long lmax(long long a, long long b) noexcept:
    return a if a > b else b


# -- bytes ---------------------------------------------------------------------------------------
cdef inline Py_ssize_t first_difference(const unsigned char* a, const unsigned char* b, Py_ssize_t n) noexcept:
    """How many leading bytes of ``a`` and ``b`` (``n`` each) are equal: memcmp by blocks, then bytes."""
    cdef Py_ssize_t i = 0
    while i + 256 <= n and memcmp(a + i, b + i, 256) == 0:
        i += 256
    while i < n and a[i] == b[i]:
        i += 1
    return i


cdef inline Py_ssize_t last_difference(const unsigned char* a, Py_ssize_t la, const unsigned char* b,
                                       Py_ssize_t lb, Py_ssize_t m) noexcept:
    """How many trailing bytes (at most ``m``) of ``a`` and ``b`` are equal."""
    cdef Py_ssize_t i = 0
    while i + 256 <= m and memcmp(a + la - i - 256, b + lb - i - 256, 256) == 0:
        i += 256
    while i < m and a[la - i - 1] == b[lb - i - 1]:
        i += 1
    return i


cdef tuple affixes(bytes a, bytes b):
    cdef const unsigned char* pa = <const unsigned char*>PyBytes_AS_STRING(a)
    cdef const unsigned char* pb = <const unsigned char*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t la = PyBytes_GET_SIZE(a), lb = PyBytes_GET_SIZE(b)
    cdef Py_ssize_t p = first_difference(pa, pb, la if la < lb else lb)
    return p, last_difference(pa, la, pb, lb, (la if la < lb else lb) - p)


def common_affixes(a, b) -> tuple:
    """Lengths of the common prefix and (not overlapping it) common suffix of ``a`` and ``b``."""
    return affixes(bytes(a), bytes(b))


cdef inline bint starts_with(bytes a, bytes b) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    return PyBytes_GET_SIZE(a) >= n and memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), n) == 0


cdef inline bint ends_with(bytes a, bytes b) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b), la = PyBytes_GET_SIZE(a)
    return la >= n and memcmp(PyBytes_AS_STRING(a) + la - n, PyBytes_AS_STRING(b), n) == 0


cdef inline bint same_bytes(bytes a, bytes b) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(a)
    if a is b:
        return True
    return n == PyBytes_GET_SIZE(b) and memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), n) == 0


# -- the map -------------------------------------------------------------------------------------
cdef class Edit:
    """The orig bytes ``[start, end)`` replaced by ``out``; ``before``: the out - orig offset just before it."""

    cdef public long long start, end, before
    cdef public bytes out

    def __init__(self, long long start, long long end, bytes out, long long before):
        self.start, self.end, self.out, self.before = start, end, out, before

    cdef inline long long after(self) noexcept:
        return self.before + PyBytes_GET_SIZE(self.out) - (self.end - self.start)

    cdef inline long long out_start(self) noexcept:
        return self.start + self.before

    cdef inline long long out_end(self) noexcept:
        return self.start + self.before + PyBytes_GET_SIZE(self.out)

    def __repr__(self) -> str:
        return f"Edit({self.start}, {self.end}, {self.out!r}, before={self.before})"


cdef class StreamMap:
    """The orig → out map of one direction of one connection (positions, not 32-bit values)."""

    cdef public long long max_edits, history
    cdef public list edits  # Edit, sorted by start
    cdef public long long base  # offset before the first kept edit
    cdef long long _acked  # the receiver has every byte before this orig position (has_acked)
    cdef bint has_acked
    cdef long long _known  # below this the edits were forgotten (has_known)
    cdef bint has_known
    cdef public list passed  # disjoint, sorted orig ranges (a, b) that were accepted
    cdef public long long high  # highest orig position seen (for reading 32-bit values)

    def __init__(self, long long max_edits=65536, long long history=1 << 20):
        self.max_edits = max_edits
        self.history = history
        self.edits = []
        self.base = 0
        self.passed = []
        self.high = 0

    @property
    def acked(self):
        return self._acked if self.has_acked else None

    @property
    def known(self):
        return self._known if self.has_known else None

    @property
    def offset(self) -> int:
        """The out - orig offset after every edit (what new bytes are shifted by)."""
        return (<Edit>self.edits[len(self.edits) - 1]).after() if self.edits else self.base

    cdef inline Py_ssize_t after_start(self, long long p) noexcept:
        """How many edits start at or before ``p`` (bisect_right on the starts)."""
        cdef Py_ssize_t lo = 0, hi = len(self.edits), mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if p < (<Edit>self.edits[mid]).start:
                hi = mid
            else:
                lo = mid + 1
        return lo

    cdef inline Py_ssize_t after_out_start(self, long long q) noexcept:
        cdef Py_ssize_t lo = 0, hi = len(self.edits), mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if q < (<Edit>self.edits[mid]).out_start():
                hi = mid
            else:
                lo = mid + 1
        return lo

    cpdef long long cut(self, long long p):
        """Where orig position ``p`` falls in the out stream."""
        cdef Py_ssize_t i = self.after_start(p) - 1
        cdef Edit e
        if i < 0:
            return p + self.base
        e = self.edits[i]
        if p >= e.end:
            return p + e.after()
        return e.out_start() + lmin(p - e.start, PyBytes_GET_SIZE(e.out))

    cpdef long long uncut(self, long long q):
        """The highest orig position whose cut is at most ``q`` (for acknowledgements)."""
        cdef Py_ssize_t i = self.after_out_start(q) - 1
        cdef Edit e
        if i < 0:
            return q - self.base
        e = self.edits[i]
        if q >= e.out_end():
            return q - e.after()
        if e.end == e.start:  # inside inserted bytes: the byte before them is the last one covered
            return e.start - 1
        return e.start + lmin(q - e.out_start(), e.end - e.start - 1)

    cpdef bytes render(self, long long s, long long e, bytes data):
        """The out bytes of orig ``[s, e)`` whose original bytes are ``data``."""
        cdef list pieces = None
        cdef long long pos = s, a, b, lo, hi, stop, n
        cdef Py_ssize_t i = self.after_start(s) - 1
        cdef Py_ssize_t count = len(self.edits)
        cdef Edit ed
        if i < 0:
            i = 0
        while i < count:
            ed = self.edits[i]
            i += 1
            a, b = ed.start, ed.end
            if a == b:
                if not (s < a <= e):
                    if a > e:
                        break
                    continue
            elif not (a < e and b > s):
                if a >= e:
                    break
                continue
            if pieces is None:
                pieces = []
            if a > pos:
                pieces.append(data[pos - s : a - s])
                pos = a
            n = PyBytes_GET_SIZE(ed.out)
            lo = 0 if pos == a else lmin(pos - a, n)
            stop = lmin(b, e)
            hi = n if stop == b else lmin(stop - a, n)
            pieces.append(ed.out[lo:hi])
            pos = stop
        if pieces is None:  # no edit in the range: the bytes as they are (no copy)
            return data if s < e else b""
        if pos < e:
            pieces.append(data[pos - s :])
        return b"".join(pieces)

    # -- what passed -----------------------------------------------------------------------
    def passed_end(self):
        return self.passed[len(self.passed) - 1][1] if self.passed else None

    cpdef mark_passed(self, long long s, long long e):
        """Note that the bytes [s, e) of the stream went on (merged into the passed ranges)."""
        cdef list out
        cdef bint placed = False
        cdef long long a, b
        cdef tuple r
        if e <= s:
            return
        if self.passed:  # the common case: the stream goes on from its last passed range
            r = self.passed[len(self.passed) - 1]
            a, b = r
            if a <= s <= b:
                if e > b:
                    self.passed[len(self.passed) - 1] = (a, e)
                return
        out = []
        for r in self.passed:
            a, b = r
            if b < s:
                out.append(r)
            elif a > e:
                if not placed:
                    out.append((s, e))
                    placed = True
                out.append(r)
            else:
                s, e = lmin(a, s), lmax(b, e)
        if not placed:
            out.append((s, e))
        self.passed = out

    cpdef list runs(self, long long s, long long e):
        """``[s, e)`` cut into runs ``(start, end, passed_before)``."""
        cdef list out = []
        cdef long long pos = s, a, b
        cdef list passed = self.passed
        cdef tuple r
        if self.has_acked:
            passed = [(lmin(s, self._acked), self._acked), *passed]
        for r in passed:
            a, b = r
            if b <= pos:
                continue
            if a >= e:
                break
            if a > pos:
                out.append((pos, a, False))
            out.append((lmax(a, pos), lmin(b, e), True))
            pos = lmin(b, e)
        if pos < e:
            out.append((pos, e, False))
        return out

    # -- changes -------------------------------------------------------------------------
    cpdef add_edit(self, long long start, long long end, bytes out):
        """Record that orig ``[start, end)`` (bytes that never passed) becomes ``out``."""
        cdef Py_ssize_t i
        cdef long long before
        self.check_edit(start, end, out)
        if start == end and not out:
            return
        if len(self.edits) >= self.max_edits:  # acknowledged edits kept as history make room (check_edit counted)
            self._forget(len(self.edits) - self.max_edits + 1)
        i = self.after_start(start)
        before = (<Edit>self.edits[i - 1]).after() if i else self.base
        # (edits are never merged: a merged edit would place the bytes inside it differently)
        self.edits.insert(i, Edit(start, end, out, before))

    cpdef acknowledged(self, long long p):
        """The receiver has every byte before orig position ``p``."""
        cdef Py_ssize_t k = 0, count
        cdef long long a, b
        cdef tuple r
        cdef list kept
        if self.has_acked and p <= self._acked:
            return
        self._acked = p
        self.has_acked = True
        kept = []
        for r in self.passed:
            a, b = r
            if b > p:
                kept.append(r if a >= p else (p, b))
        self.passed = kept
        count = len(self.edits)
        while k < count and (<Edit>self.edits[k]).end < p - self.history:
            k += 1
        self._forget(k)

    cdef _forget(self, Py_ssize_t k):
        """Fold the first ``k`` edits (acknowledged ones only) into the base offset."""
        cdef Py_ssize_t n = 0
        cdef Py_ssize_t limit = k if k < len(self.edits) else len(self.edits)
        cdef Edit ed
        if not self.has_acked:
            return
        while n < limit:
            ed = self.edits[n]
            if not (ed.end <= self._acked and ed.start < self._acked):
                break
            n += 1
        if n:
            ed = self.edits[n - 1]
            self.base = ed.after()
            self._known = ed.end
            self.has_known = True
            del self.edits[:n]

    cpdef check_edit(self, long long start, long long end, bytes out):
        """Raise SeqAdjError if :meth:`add_edit` would (changing nothing)."""
        cdef Py_ssize_t foldable = 0, count = len(self.edits)
        cdef Edit ed
        if start == end and not out:
            return
        if PyBytes_GET_SIZE(out) != end - start:
            if self.passed and self.passed[len(self.passed) - 1][1] > end:
                raise SeqAdjError(
                    f"the rewrite changes the length of bytes {start}..{end} of the stream, but later bytes have "
                    "already reached the receiver at their old place (this segment comes after a loss); a length "
                    "change is only possible in bytes that are the newest the sender sent"
                )
            if self.after_start(start) < count:
                raise SeqAdjError("a length change before bytes already rewritten is not possible")
        if count >= self.max_edits:
            while foldable < count and self.has_acked:
                ed = self.edits[foldable]
                if not (ed.end <= self._acked and ed.start < self._acked):
                    break
                foldable += 1
            if count - foldable >= self.max_edits:
                raise SeqAdjError(
                    f"more than {self.max_edits} rewrites in this direction of the connection are not yet "
                    "acknowledged; the rewrite was not made"
                )

    cpdef StreamMap local(self, long long s, long long e):
        """A map holding only the edits that place ``[s, e]`` (for rendering a segment with a new edit)."""
        cdef Py_ssize_t i0 = self.after_start(s) - 1
        cdef Py_ssize_t i1 = self.after_start(e)
        cdef StreamMap other = StreamMap(1LL << 62, self.history)
        if i0 < 0:
            i0 = 0
        other.edits = self.edits[i0:i1]
        other.base = (<Edit>other.edits[0]).before if other.edits else self.cut(s) - s
        return other


# -- segments ------------------------------------------------------------------------------------
cdef class Segment:
    """The TCP fields of one packet that sequence adjustment reads and writes."""

    cdef public object src, dst
    cdef public int sport, dport, flags
    cdef public long long seq, ack
    cdef public bytes payload
    cdef public list sack

    def __init__(self, src, int sport, dst, int dport, long long seq, long long ack, int flags, payload,
                 sack=None):
        self.src, self.sport, self.dst, self.dport = src, sport, dst, dport
        self.seq, self.ack, self.flags = seq, ack, flags
        self.payload = payload if type(payload) is bytes else bytes(payload)
        self.sack = list(sack) if sack is not None else []

    def __repr__(self) -> str:
        return (f"Segment({self.src!r}, {self.sport}, {self.dst!r}, {self.dport}, seq={self.seq}, ack={self.ack}, "
                f"flags={self.flags:#x}, payload={len(self.payload)} bytes, sack={self.sack})")


cdef class Adjusted:
    """What the packet must carry: sequence and acknowledgement numbers, payload and SACK blocks."""

    cdef public long long seq, ack
    cdef public bytes payload
    cdef public list sack
    cdef public long long trimmed  # bytes acknowledged long ago cut off the front of a retransmission

    def __init__(self, long long seq, long long ack, bytes payload, list sack, long long trimmed=0):
        self.seq, self.ack, self.payload, self.sack, self.trimmed = seq, ack, payload, sack, trimmed

    def __repr__(self) -> str:
        return f"Adjusted(seq={self.seq}, ack={self.ack}, payload={len(self.payload)} bytes, sack={self.sack})"


cdef class Direction:
    """One direction of a connection: its map and how 32-bit values become positions."""

    cdef public long long isn  # the 32-bit value of position 0
    cdef public StreamMap map

    def __init__(self, long long isn, long long max_edits, long long history):
        self.isn = isn
        self.map = StreamMap(max_edits, history)

    cdef inline long long pos(self, long long value) noexcept:
        cdef long long ref = self.map.high
        return ref + s32(value - self.isn - ref)

    cdef inline long long out_pos(self, long long value) except? -1:
        cdef long long ref = self.map.cut(self.map.high)
        return ref + s32(value - self.isn - ref)

    cdef inline long long value(self, long long p) noexcept:
        return (self.isn + p) & MASK


cdef class Plan:
    """Where a segment goes and what it carries; the state changes wait for :meth:`Connection.adjust`."""

    cdef long long seq, trimmed, s, e
    cdef bytes payload
    cdef tuple edit


cdef class Connection:
    """Adjustment state of one TCP connection (both directions), kept by :class:`SeqAdjuster`."""

    cdef public object key
    cdef public long long max_edits, history
    cdef public dict dirs  # (address, port) -> Direction
    cdef public dict fin  # each direction's FIN, as the 32-bit sequence number it takes
    cdef public bint closed
    cdef public object closed_at
    cdef public double last
    cdef public bint unseen  # said once: the peer acknowledged bytes that never passed pktlab

    def __init__(self, key, long long max_edits, long long history):
        self.key = key
        self.max_edits = max_edits
        self.history = history
        self.dirs = {}
        self.fin = {}
        self.closed = False
        self.closed_at = None
        self.last = 0.0
        self.unseen = False

    cdef Direction _dir(self, tuple ep, Segment seg, bint create, object sent_end):
        cdef Direction d = self.dirs.get(ep)
        cdef long long end = 0
        if d is None and create:
            d = Direction((seg.seq + (1 if seg.flags & F_SYN else 0)) & MASK, self.max_edits, self.history)
            # what came before passed as it was; with flow tracking's sent_end, later bytes may have too
            if sent_end is not None:
                end = lmax(d.pos(<long long>sent_end), 0)
            d.map.passed = [(-C_HALF, end)]
            d.map.high = end
            self.dirs[ep] = d
        return d

    cpdef object adjust(self, Segment seg, bytes out, object sent_end=None, bint wait=False):
        cdef tuple ep = (seg.src, seg.sport)
        cdef tuple back = (seg.dst, seg.dport)
        cdef bint changed = out is not None and not same_bytes(out, seg.payload)
        cdef bint new_dir = ep not in self.dirs
        cdef Direction d, o
        cdef Plan plan
        cdef long long seq, ack, p, lo, hi, left, right, trimmed
        cdef bytes payload
        cdef list sack
        cdef tuple block
        self._check_unseen(seg, back)
        d = self._dir(ep, seg, changed, sent_end)
        try:
            plan = self._plan(d, seg, out if changed else None, wait)
        except (SeqAdjError, SeqAdjWait):
            if new_dir:
                self.dirs.pop(ep, None)
            raise
        if seg.flags & F_FIN:
            self.fin[ep] = (seg.seq + PyBytes_GET_SIZE(seg.payload) + (1 if seg.flags & F_SYN else 0)) & MASK
        if seg.flags & F_RST:
            self.closed = True
        o = self.dirs.get(back)
        if plan is None and not (o is not None and seg.flags & F_ACK):
            return None
        if plan is None:
            seq, payload, trimmed = seg.seq, (out if changed else seg.payload), 0
        else:
            seq, payload, trimmed = plan.seq, plan.payload, plan.trimmed
        ack, sack = seg.ack, seg.sack
        if o is not None and seg.flags & F_ACK:
            p = o.map.uncut(o.out_pos(seg.ack))
            ack = o.value(p)
            sack = []
            for block in seg.sack:
                left, right = block
                lo = o.map.uncut(o.out_pos(left) - 1) + 1
                hi = o.map.uncut(o.out_pos(right))
                if hi > lo:
                    sack.append((o.value(lo), o.value(hi)))
        if plan is not None:  # commit
            if plan.edit is not None:
                d.map.add_edit(plan.edit[0], plan.edit[1], plan.edit[2])
            d.map.mark_passed(plan.s, plan.e)
            d.map.high = lmax(d.map.high, plan.e)
        if o is not None and seg.flags & F_ACK:
            o.map.acknowledged(o.pos(ack))
        if seg.flags & F_ACK and back in self.fin and ep in self.fin and s32(ack - <long long>self.fin[back]) > 0:
            self.closed = True  # both sides sent their FIN and this acknowledges the last one
        return Adjusted(seq, ack, payload, sack, trimmed)

    cdef int _check_unseen(self, Segment seg, tuple back) except -1:
        """Raise SeqAdjError (once, nothing changed) if ``seg`` acknowledges rewritten bytes that never passed.

        A receiver can only acknowledge what reached it.  Bytes beyond the highest that passed
        through the session reached it some other way: the queue passed them unseen (full and
        fail-open, before the connection's first rewrite made it fail-closed).  They went at their
        old places, so the rewritten stream the receiver has is not what the handler meant.
        """
        cdef Direction o = self.dirs.get(back)
        cdef long long end, at
        if self.unseen or o is None or not seg.flags & F_ACK or not (o.map.edits or o.map.base):
            return 0
        end = o.map.cut(o.map.high) + (1 if back in self.fin else 0)  # a FIN takes a sequence number
        at = o.out_pos(seg.ack)
        if at > end:
            self.unseen = True
            raise SeqAdjError(
                f"the receiver acknowledges {at - end} byte(s) of this connection that never "
                "passed pktlab: the kernel passed them unseen (the queue was full and fails open) before its first "
                "rewrite, so the receiver's stream is not the rewritten one; attach with fail_open=False (or a "
                "larger max_len) to rewrite TCP at this rate"
            )
        return 0

    cdef Plan _plan(self, Direction d, Segment seg, bytes out, bint wait):
        """Where the segment goes and what it carries (None: it goes as it is); changes nothing."""
        cdef StreamMap m, view
        cdef long long s, e, tail, trimmed = 0, p, q
        cdef bint has_tail, all_old
        cdef bytes data, rendered = None
        cdef list runs
        cdef tuple edit = None
        cdef Plan plan
        if d is None:
            return None
        m = d.map
        s = d.pos(seg.seq + (1 if seg.flags & F_SYN else 0))
        e = s + PyBytes_GET_SIZE(seg.payload)
        if wait and (e > s or seg.flags & F_FIN):
            has_tail = bool(m.passed)
            tail = m.passed[len(m.passed) - 1][1] if has_tail else 0
            if m.has_acked:
                tail = m._acked if not has_tail else lmax(tail, m._acked)
                has_tail = True
            if has_tail and s > tail:
                raise SeqAdjWait(f"bytes {tail}..{s} of the stream have not passed yet")
        data = seg.payload
        if m.has_known and s < m._known:  # the receiver has the front of it: send only the rest
            trimmed = lmin(m._known, e) - s
            data = data[trimmed:]
            s += trimmed
            if out is not None:
                p, q = affixes(seg.payload, out)
                if q >= PyBytes_GET_SIZE(data):
                    out = None  # only bytes acknowledged long ago were changed: they are not sent again
                elif p >= trimmed:
                    out = out[trimmed:]
                else:
                    all_old = all(old for _a, _b, old in m.runs(s, e))
                    if all_old and (ends_with(out, data) or ends_with(out, m.render(s, e, data))):
                        out = None  # rewritten again in front; the rest is what went the first time
                    else:
                        raise SeqAdjError(
                            "the rewrite changes bytes the receiver acknowledged long ago; they cannot be changed now"
                        )
        runs = m.runs(s, e)
        if out is not None:
            rendered = m.render(s, e, data)  # ``data`` itself when no earlier edit lies in the segment
            edit = new_edit(m, s, e, data, out, runs, rendered)
        view = m
        plan = Plan()
        if edit is not None:
            m.check_edit(edit[0], edit[1], edit[2])  # raises, nothing changed, when the edit is impossible
            view = m.local(s, e)  # only the edits around the segment: no copy of the whole map per packet
            if rendered is data:
                # the segment's bytes carry no earlier edit: its one edit was read off ``out`` (the bytes around
                # it are ``data``'s), so what goes is ``out`` itself (no copy; the caller knows it by identity)
                plan.payload = out
            view.add_edit(edit[0], edit[1], edit[2])
        if plan.payload is None:
            plan.payload = view.render(s, e, data)
        plan.seq = d.value(view.cut(s) - (1 if seg.flags & F_SYN else 0))
        plan.trimmed = trimmed
        plan.s, plan.e = s, e
        plan.edit = edit
        return plan


cdef tuple new_edit(StreamMap m, long long s, long long e, bytes data, bytes out, list runs, bytes rendered):
    """The edit a handler's new payload ``out`` makes to orig ``[s, e)`` (``data``, as sent: ``rendered``), or an
    error."""
    cdef list new = [(r[0], r[1]) for r in runs if not r[2]]
    cdef long long p, q, lo, hi, a, b
    cdef bytes head, tail, mid, orig
    cdef Edit first, last
    cdef list spans
    cdef Py_ssize_t n_out = PyBytes_GET_SIZE(out)
    if same_bytes(out, data) or same_bytes(out, rendered):
        return None
    if not new:
        # a retransmission: what went the first time goes again.  A handler rewriting it again cuts it
        # where this segment is cut, which may differ from the first time; that is fine as long as it
        # changes only bytes that were rewritten then
        p, q = affixes(data, out)
        lo, hi = s + p, e - q
        spans = [x for x in m.edits
                 if ((<Edit>x).start < e and (<Edit>x).end > s)
                 or ((<Edit>x).start == (<Edit>x).end and s < (<Edit>x).start <= e)]  # fmt: skip
        if spans:
            first, last = spans[0], spans[len(spans) - 1]
            if first.start <= lo and hi <= last.end:
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
    heads = (data[: a - s], m.render(s, a, data[: a - s]))
    tails = (data[b - s :], m.render(b, e, data[b - s :]))
    for head in heads:
        if not starts_with(out, head):
            continue
        for tail in tails:
            if n_out >= PyBytes_GET_SIZE(head) + PyBytes_GET_SIZE(tail) and ends_with(out, tail):
                mid = out[PyBytes_GET_SIZE(head) : n_out - PyBytes_GET_SIZE(tail)]
                orig = data[a - s : b - s]
                p, q = affixes(orig, mid)
                if p == 0 and q == PyBytes_GET_SIZE(orig):  # bytes inserted before the first new byte: an insertion
                    q -= 1  # there would belong to the bytes before it, which already went; take one new byte
                return a + p, b - q, mid[p : PyBytes_GET_SIZE(mid) - q]
    raise SeqAdjError(
        "the rewrite changes bytes that have already passed; only bytes that pass for the first time can "
        "be rewritten"
    )


cdef tuple connection_key(Segment seg):
    a, b = (seg.src, seg.sport), (seg.dst, seg.dport)
    return (a, b) if a <= b else (b, a)


cdef class SeqAdjuster:
    """Sequence adjustment for every TCP connection a session rewrites (bounded; idle ones expire).

    A connection's state starts with the first rewrite of a segment's payload
    (from then on a retransmission gets the bytes that went first, whether or not
    the length changed) and goes away ``linger`` seconds after a RST or after both FINs were
    acknowledged (a late retransmission of the end still lines up), or after
    ``idle_timeout`` seconds without a packet.
    """

    cdef public long long max_connections, max_edits, history
    cdef public double idle_timeout, linger
    cdef public dict connections
    cdef double _swept

    def __init__(self, long long max_connections=65536, double idle_timeout=600.0, long long max_edits=65536,
                 double linger=5.0, long long history=1 << 20):
        self.max_connections = max_connections
        self.history = history
        self.idle_timeout = idle_timeout
        self.max_edits = max_edits
        self.linger = linger
        self.connections = {}
        self._swept = 0.0

    @staticmethod
    def key(Segment seg) -> tuple:
        """The connection's key: its two endpoints, in order."""
        return connection_key(seg)

    def __len__(self) -> int:
        return len(self.connections)

    cpdef object adjust(self, Segment seg, object out, double now, object sent_end=None, bint wait=False):
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
        cdef bytes new = None if out is None else (out if type(out) is bytes else bytes(out))
        cdef Connection c
        cdef Direction d = None
        self.expire(now)
        k = connection_key(seg)
        c = self.connections.get(k)
        if c is not None and seg.flags & F_SYN and not seg.flags & F_ACK:
            d = c.dirs.get((seg.src, seg.sport))
        if d is not None and d.pos((seg.seq + 1) & MASK) != 0:
            del self.connections[k]  # a new connection on the same ports
            c = None
        if c is None:
            if new is None or same_bytes(new, seg.payload):
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
            res = c.adjust(seg, new, sent_end, wait)
        finally:
            if not c.dirs:
                self.connections.pop(k, None)
        c.last = now
        if c.closed and c.closed_at is None:
            c.closed_at = now
        return res

    cpdef expire(self, double now):
        """Forget connections idle for ``idle_timeout`` s or ended ``linger`` s ago (looks at most once a second)."""
        if now - self._swept >= 1.0:
            self._sweep(now)

    cpdef _sweep(self, double now):
        cdef Connection c
        self._swept = now
        gone = [k for k, c in self.connections.items()
                if now - c.last > self.idle_timeout or (c.closed_at is not None and now - c.closed_at > self.linger)]
        for k in gone:
            del self.connections[k]


# -- applied to packets --------------------------------------------------------------------------
cdef inline unsigned int get32(const unsigned char* p) noexcept:
    return (<unsigned int>p[0] << 24) | (<unsigned int>p[1] << 16) | (<unsigned int>p[2] << 8) | p[3]


cdef inline void put32(unsigned char* p, unsigned int v) noexcept:
    p[0] = (v >> 24) & 0xFF
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


cdef Py_ssize_t sack_blocks(const unsigned char* o, Py_ssize_t n, list blocks) noexcept:
    """Append a TCP option list's SACK blocks to ``blocks``; where the first block starts in it (-1: none)."""
    cdef Py_ssize_t i = 0, size, j, at
    cdef unsigned char kind
    while i < n:
        kind = o[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= n or o[i + 1] < 2:
            break  # a malformed option list: nothing to read after it
        size = o[i + 1]
        if kind == SACK and size >= 10 and i + size <= n:
            at = i + 2
            j = at
            while j + 8 <= i + size:
                blocks.append((get32(o + j), get32(o + j + 4)))
                j += 8
            return at
        i += size
    return -1


cdef long long _payload_copies = 0


cdef inline void _count_copy(Py_ssize_t n) noexcept:
    global _payload_copies
    if n > 0:
        _payload_copies += 1


def payload_copies() -> int:
    """How many TCP payloads sequence adjustment copied into bytes of its own since the module was loaded (a
    payload a handler read as it arrived, or wrote whole, is taken as the handler's bytes object)."""
    return _payload_copies


cdef struct TcpLoc:
    const unsigned char* p  # the packet's bytes (valid until the buffer changes: read again after a write)
    Py_ssize_t n, l3, off, doff, start  # their length, the IP and TCP headers' offsets, the TCP header's length,
    # where the payload starts


cdef bint find_tcp(PacketCore pkt, TcpLoc* t) except -1:
    """Where a packet's TCP header and payload are, read in C (what the views would say): True for a TCP
    segment whose header is all there, False otherwise (as ``pkt.tcp`` would be None or raise).  On the
    caller's stack: a held packet's verdict from the notebook and the reader thread may both be here."""
    pkt._find_l4()
    if pkt._l4proto != 6 or pkt._l4frag == 2:
        return False
    t.p = pkt_ptr(pkt, &t.n)
    t.l3 = pkt._l3 if pkt._l3 > 0 else 0
    t.off = pkt._l4off
    if t.off + 20 > t.n:
        return False
    t.doff = (t.p[t.off + 12] >> 4) * 4
    t.start = t.off + t.doff
    return t.doff >= 20 and t.start <= t.n


cdef bytes stream_key(const TcpLoc* t):
    """A TCP segment's stream, as the dispatcher notes how far each went (``tcp_stream_key``)."""
    cdef unsigned char key[36]
    return (<char*>key)[:tcp_stream_key(t.p + t.l3, t.off - t.l3, key)]


cdef class TcpAdjust:
    """One session's sequence adjustment, applied to packets: what the dispatcher calls for accepted TCP packets.

    It reads the TCP fields of the packet as the handlers left it and of the bytes it arrived
    with, asks :class:`SeqAdjuster` what the packet must carry for the connection to stay
    consistent, and writes that into the packet (sequence and acknowledgement numbers, SACK edges,
    the payload), so that the usual fix-up recomputes lengths and checksums.  Live and on captures
    alike: both sources go through the one dispatcher.
    """

    cdef public SeqAdjuster adjuster
    cdef public int headroom
    cdef public bint clamp  # take headroom off SYNs' MSS (the dispatcher: only while a handler may grow segments)
    cdef object _lock  # the reader thread and a held packet's verdict from the notebook

    def __init__(self, SeqAdjuster adjuster=None, int headroom=64):
        self.adjuster = adjuster if adjuster is not None else SeqAdjuster()
        self.headroom = headroom
        self.clamp = True
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """Whether any connection has state, so that every accepted TCP packet must be looked at."""
        return len(self.adjuster.connections) > 0

    def expire(self, double now) -> None:
        """Let connections that were idle or ended long enough before ``now`` go (at most once a second)."""
        with self._lock:
            self.adjuster.expire(now)

    cdef int _clamp_mss(self, PacketCore pkt) except -1:
        """Take ``headroom`` bytes off a SYN's MSS option: segments a handler grows then still fit the path.

        Without it a full-sized segment grown by a rewrite is larger than the
        link's MTU and is dropped on the way (with DF set, as TCP sends them).
        """
        cdef TcpLoc t
        cdef Py_ssize_t i = 0, size, end
        cdef unsigned int mss, new
        cdef unsigned char* w
        if not find_tcp(pkt, &t):
            return 0
        end = t.start
        i = t.off + 20
        while i + 1 < end and t.p[i] != 0:
            if t.p[i] == 1:
                i += 1
                continue
            size = t.p[i + 1]
            if size < 2:
                return 0
            if t.p[i] == 2 and size == 4 and i + 4 <= end:
                mss = (t.p[i + 2] << 8) | t.p[i + 3]
                new = mss - self.headroom if mss > <unsigned int>(536 + self.headroom) else 536
                if new < mss:
                    w = <unsigned char*>PyByteArray_AS_STRING(pkt._writable())
                    w[i + 2] = (new >> 8) & 0xFF
                    w[i + 3] = new & 0xFF
                    pkt._dirty = True
                return 0
            i += size
        return 0

    def apply(self, PacketCore pkt, original, bint rewrite=True, bint wait=False, high=None):
        """Make the accepted TCP packet ``pkt`` consistent with its connection, in place.

        ``original``: the packet's bytes as it arrived (``pkt`` may hold a handler's
        rewrite), or a packet holding them (the dispatcher's, over the queue message).  ``rewrite=False`` adjusts the packet as it arrived instead (what
        the error verdict sends).  Raises :class:`SeqAdjError`, changing nothing,
        when the handler's rewrite cannot be made consistent, and ``SeqAdjWait`` (with
        ``wait``) for a segment that comes after a gap in its stream.  ``high``: how far each stream
        has gone through accepted packets (the dispatcher's :class:`~pktlab.pipeline._streams.StreamEnds`, or
        any mapping with ``get``; keys as the dispatcher makes them).
        """
        # the packet as it arrived: the packet itself when no handler changed it (no second parse).  Not with
        # rewrite=False: the dispatcher then clears _modified of a packet that may still hold a refused rewrite
        cdef bint same = rewrite and not pkt._modified
        cdef PacketCore orig
        cdef TcpLoc o, t
        cdef const unsigned char* p
        cdef list sack = []
        cdef Py_ssize_t at, a
        cdef bytes out = None, src, dst, opts, payload
        cdef Segment seg
        cdef Adjusted res
        try:
            if same:
                pkt._need(-1, "tcp.payload")
                orig = pkt
            elif isinstance(original, PacketCore):
                orig = original
            else:
                orig = pkt.like(original)
            if not find_tcp(orig, &o):
                return
            if rewrite and not same and not find_tcp(pkt, &t):
                return
            p = o.p
            a = 4 if p[o.l3] >> 4 == 4 else 16
            at = 12 if a == 4 else 8
            src = (<const char*>p)[o.l3 + at : o.l3 + at + a]
            dst = (<const char*>p)[o.l3 + at + a : o.l3 + at + 2 * a]
            opts = (<const char*>p)[o.off + 20 : o.start]
            at = sack_blocks(p + o.off + 20, o.doff - 20, sack)
            # the payloads as bytes: those the handler already made when it can be told that they are the same
            # bytes (64 KiB each on a GSO packet), else copied
            payload = arrived_payload(pkt, o.start, o.n)
            if payload is None:
                payload = (<const char*>p)[o.start : o.n]
                _count_copy(o.n - o.start)
            seg = Segment(src, (p[o.off] << 8) | p[o.off + 1], dst, (p[o.off + 2] << 8) | p[o.off + 3],
                          get32(p + o.off + 4), get32(p + o.off + 8), p[o.off + 13], payload, sack)
            sent_end = high.get(stream_key(&o)) if high else None
            if rewrite and pkt._modified:
                out = set_payload(pkt, t.start, t.n)
                if out is None and t.start == o.start and t.n == o.n and payload_as_arrived(pkt, t.start, t.n):
                    out = payload  # only headers in front of it were written: no copy, and no edit by identity
                if out is None:
                    out = (<const char*>t.p)[t.start : t.n]
                    _count_copy(t.n - t.start)
        except PacketFormatError:  # a TCP header that cannot be read as it arrived: nothing to adjust by
            return
        with self._lock:
            res = self.adjuster.adjust(seg, out, pkt.time, sent_end, wait)
        if res is not None:
            self._write(pkt, orig, seg, res, opts, at, rewrite, out)
        if seg.flags & F_SYN and self.headroom > 0 and self.clamp:
            self._clamp_mss(pkt)

    cdef int _write(self, PacketCore pkt, PacketCore orig, Segment seg, Adjusted res, bytes o_opts, Py_ssize_t at,
                    bint rewrite, bytes out) except -1:
        """Put what the adjuster says into the packet's fields (a handler's own change of a field is kept).

        ``orig``: the packet as it arrived; ``out``: the payload the handlers left (None: unchanged)."""
        cdef TcpLoc t
        cdef unsigned char* w
        cdef Py_ssize_t size, start
        cdef bytes opt
        if not rewrite and not as_arrived(pkt, orig):  # adjust the packet as it arrived: it replaces whatever the
            pkt.set_payload(orig._bytes(pkt._l3 if pkt._l3 > 0 else 0, orig._size()))  # handlers did
        if not find_tcp(pkt, &t):
            return 0
        if res.seq != seg.seq or res.ack != seg.ack:  # (in the header: the handler's payload stays known)
            w = <unsigned char*>PyByteArray_AS_STRING(pkt._writable_head(t.off + 12))
            if res.seq != seg.seq:
                put32(w + t.off + 4, <unsigned int>((res.seq + get32(w + t.off + 4) - seg.seq) & MASK))
            if res.ack != seg.ack:
                put32(w + t.off + 8, <unsigned int>((res.ack + get32(w + t.off + 8) - seg.ack) & MASK))
            find_tcp(pkt, &t)
        if res.sack != seg.sack and at >= 0 and t.doff - 20 >= at \
                and memcmp(t.p + t.off + 20, PyBytes_AS_STRING(o_opts), at) == 0:
            # the option keeps its place and size; blocks that map to nothing make room for NOPs
            size = (<const unsigned char*>PyBytes_AS_STRING(o_opts))[at - 1]
            opt = bytes([SACK, 2 + 8 * len(res.sack)]) if res.sack else b""
            opt += b"".join(x.to_bytes(4, "big") + y.to_bytes(4, "big") for x, y in res.sack)
            start = t.off + 20 + at - 2
            pkt._writable()[start : start + size] = opt + b"\x01" * (size - len(opt))
            find_tcp(pkt, &t)
        if rewrite and out is not None and res.payload is out:
            pass  # the handlers' payload goes as they left it (the fields above are not in it)
        elif not (PyBytes_GET_SIZE(res.payload) == t.n - t.start
                  and memcmp(t.p + t.start, PyBytes_AS_STRING(res.payload), t.n - t.start) == 0):
            pkt._replace(t.start, t.n, res.payload)
        pkt._dirty = True
        return 0
