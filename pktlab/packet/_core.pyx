# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The packet's core, compiled: its buffer and flags, layer lookup, view fields, and the fix-up after writes.

``pktlab.Packet`` (``pktlab/packet/model.py``) builds on :class:`PacketCore`,
the views on :class:`ViewCore` and :class:`Field`; the dispatcher
(``pktlab.pipeline._dispatch``) makes, reuses and finishes packets through
the functions declared in ``_core.pxd``.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.buffer cimport PyObject_CheckBuffer
from cpython.list cimport PyList_GET_ITEM
from cpython.number cimport PyNumber_Index
from libc.string cimport memcpy, memset

from pktlab._common cimport buf_ptr


cdef long long _message_copies = 0


cdef inline void _copied() noexcept:
    global _message_copies
    _message_copies += 1


cdef long long _shared_copies = 0


def shared_copies():
    """How many packets copied their bytes before a write because the verdict writer's thread may still have
    been reading them (a packet kept past a large verdict, then written), since the module was loaded."""
    return _shared_copies


def message_copies():
    """How many packets handlers saw over a queue message's buffer were copied out of it (by a write, a read
    of the whole buffer from Python, or the packet outliving its message), since the module was loaded."""
    return _message_copies


cdef long long _sums_taken = 0


def payload_sums_taken():
    """How many checksum fix-ups took the sum a write made of the payload it copied in instead of summing the
    payload again, since the module was loaded."""
    return _sums_taken


from pktlab.errors import CopyRangeError, PacketFormatError, brief


cdef extern from "<arpa/inet.h>":
    const char* inet_ntop(int af, const void* src, char* dst, unsigned int size)
    int inet_pton(int af, const char* src, void* dst)

cdef extern from "<sys/socket.h>":
    int AF_INET
    int AF_INET6

# view classes, set by pktlab.packet.model once the views are defined (they build on this module)
cdef object _IPv4 = None
cdef object _IPv6 = None
cdef object _UDP = None
cdef object _TCP = None
cdef object _ICMP = None
cdef object _ICMPv6 = None


def set_view_classes(ipv4, ipv6, udp, tcp, icmp, icmpv6):
    global _IPv4, _IPv6, _UDP, _TCP, _ICMP, _ICMPv6
    _IPv4, _IPv6, _UDP, _TCP, _ICMP, _ICMPv6 = ipv4, ipv6, udp, tcp, icmp, icmpv6



COPY_FIX = "attach with copy='auto' (copies what the handlers read) or copy='full'"


def not_copied(PacketCore pkt, str what, Py_ssize_t end):
    """The error of an access to bytes the copy range left in the kernel; marks the packet for a new copy."""
    cdef Py_ssize_t n = pkt_size(pkt)
    pkt._short = True
    if pkt._meta is not None and hasattr(pkt._meta, "l3"):  # a packet of a capture file: its snap length cut it
        return CopyRangeError(
            f"{what} needs {'the whole packet' if end <= 0 else f'bytes up to {end:,}'}, but the capture holds "
            f"only the first {n:,} of this {pkt._wire:,}-byte packet (its snap length); capture with a larger "
            "snap length (tcpdump -s 0) to read further",
            pkt._wire if end <= 0 else end, n, pkt._wire,
        )
    if end <= 0:  # a write: the verdict would carry the copied part only, and the kernel would cut the packet
        return CopyRangeError(
            f"{what} needs the whole packet, but the kernel copied only the first {n:,} of its "
            f"{pkt._wire:,} bytes (the session's copy range), and a verdict with the copied part would cut "
            f"it; the packet was not changed: {COPY_FIX}",
            pkt._wire, n, pkt._wire,
        )
    return CopyRangeError(
        f"{what} needs bytes up to {end:,}, but the kernel copied only the first {n:,} of this "
        f"{pkt._wire:,}-byte packet (the session's copy range): {COPY_FIX}",
        end, n, pkt._wire,
    )


def too_big(Py_ssize_t size, bint gso=False):
    """The error of a rewrite that made a packet larger than an IP packet can be."""
    hint = ("; it was a GSO packet (the kernel's batch of segments, up to 64 KiB), which leaves little room "
            "to grow: attach with gso=False (--no-gso) to rewrite segments") if gso else ""
    return PacketFormatError(
        f"the rewritten packet is {size:,} bytes; an IP packet holds at most 65,535, so it was not sent "
        f"and the packet got the error verdict as it arrived{hint}"
    )


cdef int fix_l4(unsigned char* p, Py_ssize_t n, int proto, Py_ssize_t off, unsigned long long pseudo, bint v4,
                Py_ssize_t tail_at, unsigned long long tail_sum):
    """Set the transport header's checksum (and a UDP length): 1 if the sum of the bytes from ``tail_at`` on,
    ``tail_sum``, was taken instead of summing them again (``tail_at`` -1: none is known), 0 if not, -1 if the
    transport header is cut short (nothing written)."""
    cdef Py_ssize_t at
    cdef unsigned int c
    cdef bint known
    if proto == 6:
        if n < off + 20:
            return -1
        at = off + 16
    elif proto == 17:
        if n < off + 8:
            return -1
        put16(p + off + 4, <unsigned int>(n - off))
        at = off + 6
        if v4 and p[at] == 0 and p[at + 1] == 0:
            return 0  # IPv4 UDP without a checksum stays without
    elif proto == 1 and v4 or proto == 58:
        if n < off + 4:
            return -1
        at = off + 2
        if proto == 1:
            pseudo = 0
    else:
        return 0
    put16(p + at, 0)
    known = at + 2 <= tail_at <= n  # the known bytes lie after every field written here
    if known:
        c = csum_fold(csum_add(p + off, tail_at - off, pseudo) + csum_shift(tail_sum, (tail_at - off) & 1))
    else:
        c = csum_fold(csum_add(p + off, n - off, pseudo))
    if c == 0 and proto == 17:
        c = 0xFFFF
    put16(p + at, c)
    return 1 if known else 0


cdef str cut_short(int proto, Py_ssize_t have):
    cdef str name = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6"}[proto]
    cdef int whole = {6: 20, 17: 8}.get(proto, 4)
    return f"its {name} header is cut short ({have} of its {whole} bytes are there)"


cpdef fix_packet(PacketCore pkt):
    """Recompute IP lengths and the IPv4, TCP, UDP, ICMP and ICMPv6 checksums after writes.

    Fragments keep their transport checksum (it spans all fragments).  A link
    header in front (Ethernet) is left as it is.  A payload a write copied in with its sum
    (``PacketCore._set_sum``) is not summed again, and stays known: only headers in front of it are written.

    Returns None, or, when the writes left headers that cannot be read (an IPv4 header length beyond the
    packet, a transport header cut short), why: the packet is then left as written from that header on
    (a malformed packet may be what the handler wants to send; the dispatcher tells its user).
    """
    cdef bytes tail = pkt._set
    cdef bint summed = pkt._set_summed
    cdef bint arrived = pkt._set_arrived
    cdef Py_ssize_t tail_at = pkt._set_at
    cdef unsigned long long tail_sum = pkt._set_sum
    cdef object buf = pkt._writable()
    cdef Py_ssize_t l3 = pkt._l3
    cdef unsigned char* p = <unsigned char*>PyByteArray_AS_STRING(buf)
    cdef Py_ssize_t n = PyByteArray_GET_SIZE(buf)
    cdef Py_ssize_t ihl, off
    cdef unsigned long long pseudo
    cdef int proto, r
    pkt._dirty = False
    if l3 < 0 or l3 >= n:
        return None  # no IP header (a link header of another protocol): nothing to fix
    if not summed or tail_at < l3 or pkt._set_end != n:
        tail_at = l3 - 1  # none known (-1 once relative to the IP header)
    p += l3
    n -= l3
    tail_at -= l3
    if p[0] >> 4 == 4:
        if n < 20:
            return f"it is {n} bytes from the IP header on, shorter than an IPv4 header (20)"
        ihl = (p[0] & 15) * 4
        if ihl < 20:
            return f"its IPv4 header length field (ihl {ihl // 4}) says {ihl} bytes, less than the 20 it has at least"
        if ihl > n:
            return f"its IPv4 header length field (ihl {ihl // 4}) says {ihl} bytes, more than the packet's {n}"
        if n > 0xFFFF:
            return None  # (refused before the verdict: too_big)
        put16(p + 2, <unsigned int>n)
        put16(p + 10, 0)
        put16(p + 10, csum_fold(csum_add(p, ihl, 0)))
        if ((p[6] << 8) | p[7]) & 0x3FFF:
            return None
        pseudo = csum_add(p + 12, 8, 0) + p[9] + <unsigned long long>(n - ihl)
        r = fix_l4(p, n, p[9], ihl, pseudo, True, tail_at, tail_sum)
        if r < 0:
            return cut_short(p[9], n - ihl)
        if r:
            keep_set(pkt, tail, arrived)
    elif p[0] >> 4 == 6:
        if n < 40:
            return f"it is {n} bytes from the IP header on, shorter than an IPv6 header (40)"
        put16(p + 4, <unsigned int>((n - 40) & 0xFFFF))
        pkt._relayout()
        try:
            proto, off, frag = pkt._upper()
        except PacketFormatError as exc:
            return str(exc)
        if frag:
            return None
        off -= l3
        pseudo = csum_add(p + 8, 32, 0) + ((n - off) >> 16) + ((n - off) & 0xFFFF) + proto
        r = fix_l4(p, n, proto, off, pseudo, False, tail_at, tail_sum)
        if r < 0:
            return cut_short(proto, n - off)
        if r:
            keep_set(pkt, tail, arrived)
    else:
        return f"its first byte says IP version {p[0] >> 4}, neither 4 nor 6"
    return None


cdef inline void keep_set(PacketCore pkt, bytes tail, bint arrived) noexcept:
    """The known tail at ``_set_at`` is there still (after writes in front of it only)."""
    global _sums_taken
    _sums_taken += 1
    pkt._set = tail
    pkt._set_summed = True
    pkt._set_arrived = arrived


# ---------------------------------------------------------------------------
# Packet core
# ---------------------------------------------------------------------------

cdef class PacketCore:
    """Buffer, flags and layer lookup of a packet (``pktlab.Packet`` adds the rest)."""

    def __init__(self, meta, data, double time=0.0, str link="ip"):
        cdef Py_ssize_t n
        cdef const unsigned char* p
        self._meta = meta
        self._data = data
        self._mptr = NULL
        self._mark = None
        self._ipv = None
        self._l4v = None
        self.time = time
        if link == "ethernet":
            self._eth = True
            p = buf_ptr(data, &n)
            self._l3 = ethernet_l3(p, n)
        elif link != "ip":
            raise ValueError(f"link {link!r} is not 'ip' (what a queue gives) or 'ethernet'")

    cpdef object _writable(self):
        """The buffer as a bytearray (copied once), marking the packet modified.

        Refuses a packet of which only a part was copied: its verdict would cut it in the kernel.
        """
        if self._wire:
            raise not_copied(self, "a rewrite", 0)
        self._set = None  # the caller may write anywhere in what it gets
        self._set_summed = False
        self._set_arrived = False
        self._data_arrived = False
        if self._mptr != NULL:  # over the queue message: copied from it straight into the bytearray
            self._data = PyByteArray_FromStringAndSize(<const char*>self._mptr, self._mlen)
            self._mptr = NULL
            _copied()
        elif type(self._data) is not bytearray or self._shared:  # (shared: the verdict writer may still read it)
            if self._shared:
                global _shared_copies
                _shared_copies += 1
            self._data = bytearray(self._data)
            self._shared = False
        self._modified = True
        return self._data

    cpdef object _writable_head(self, Py_ssize_t end):
        """:meth:`_writable` for a write of bytes before ``end`` only: a payload a write put from ``end`` on
        stays known (sequence adjustment's and the fields' writes in the headers keep the handler's payload).

        The first write of a TCP or UDP packet in front of its payload (a field of a header: a TTL, an address,
        a port) copies that payload with its checksum sum, as it arrived: the fix-up then sums only the headers,
        and sequence adjustment knows the payload unchanged without comparing it (one pass over a 64 KiB GSO
        packet instead of three)."""
        cdef bytes kept = self._set
        cdef bint summed = self._set_summed
        cdef bint arrived = self._set_arrived
        cdef Py_ssize_t at
        if not self._wire and end >= 0 and (self._mptr != NULL or (type(self._data) is bytes and not self._shared)):
            at = self._payload_at()
            if at >= end:
                return self._copy_summed(at)
        buf = self._writable()
        if (kept is not None or summed or arrived) and 0 <= end <= self._set_at:
            self._set = kept
            self._set_summed = summed
            self._set_arrived = arrived
        return buf

    cdef Py_ssize_t _payload_at(self) except -2:
        """Where the TCP or UDP payload of a whole, unfragmented packet starts (-1: another packet, or one whose
        transport header cannot be read)."""
        cdef Py_ssize_t n, off, at
        cdef const unsigned char* p
        try:
            if not self._l4known:
                self._find_l4()
        except PacketFormatError:
            return -1
        if self._l4frag or (self._l4proto != 6 and self._l4proto != 17):
            return -1
        p = pkt_ptr(self, &n)
        off = self._l4off
        if self._l4proto == 17:
            return off + 8 if off + 8 <= n else -1
        if off + 20 > n:
            return -1
        at = off + (p[off + 12] >> 4) * 4
        return at if off + 20 <= at <= n else -1

    cdef object _copy_summed(self, Py_ssize_t at):
        """The packet's bytes (over its queue message, or bytes) as a bytearray of its own, the bytes from ``at``
        on copied with their sum, kept as the known tail (as it arrived, when they were what it arrived with)."""
        cdef Py_ssize_t n
        cdef const unsigned char* p = pkt_ptr(self, &n)
        cdef bint over_message = self._mptr != NULL
        cdef bint arrived = over_message or self._data_arrived  # (not bytes a handler put there)
        new = PyByteArray_FromStringAndSize(NULL, n)
        cdef unsigned char* o = <unsigned char*>PyByteArray_AS_STRING(new)
        memcpy(o, p, at)
        self._set_sum = csum_copy(o + at, p + at, n - at)
        if over_message:
            _copied()
        self._set = arrived_payload(self, at, n)  # a read of the payload as it arrived (made over a message only)
        self._set_at = at
        self._set_end = n
        self._set_summed = True
        self._set_arrived = arrived
        self._data_arrived = False
        self._data = new
        self._mptr = NULL
        self._shared = False
        self._modified = True
        return new

    cpdef object _own(self):
        """The packet's bytes as an object of its own (copied from the queue message if it is over one)."""
        if self._mptr != NULL:
            self._data = PyBytes_FromStringAndSize(<const char*>self._mptr, self._mlen)
            self._mptr = NULL
            self._data_arrived = True  # (a message is what the packet arrived with: a write copies it out first)
            _copied()
        return self._data

    cpdef object _lend(self):
        """The packet's bytes for code that may write into them behind the packet's back (a bytearray once
        written: ``copied_bytes``): what a write knew of the payload it put there (``_set``, its sum) is
        forgotten, so that the fix-up sums what is there."""
        data = self._own()
        if type(data) is bytearray:
            self._set = None
            self._set_summed = False
            self._set_arrived = False
        return data

    @property
    def _buf(self):
        """The packet's bytes (bytes, or a bytearray once written): Python code's way to the whole buffer.

        A packet over a queue message gets its own copy here, once; views read single fields and slices
        without one (:meth:`_bytes`, :meth:`_size`, and the fields in C).
        """
        return self._own()

    @_buf.setter
    def _buf(self, data):
        buf_ptr(data, &self._mlen)  # refuses anything but bytes or a bytearray
        self._data = data
        self._mptr = NULL
        self._shared = False
        clear_payloads(self)

    cpdef int _replace(self, Py_ssize_t start, Py_ssize_t end, object data) except -1:
        """Bytes ``start`` to ``end`` replaced by ``data`` (a write; a length may change).

        A packet without a bytearray yet (over its queue message, or holding bytes) gets one made in one
        pass, head, new bytes and tail, rather than copied whole and then moved about.
        """
        cdef Py_ssize_t n, m
        cdef Py_ssize_t n0 = pkt_size(self)
        cdef const unsigned char* p
        cdef const unsigned char* q
        cdef unsigned char* o
        cdef bint tail
        cdef bint summed = False
        cdef unsigned long long tail_sum = 0
        if self._wire:
            raise not_copied(self, "a rewrite", 0)
        if type(data) is not bytes and type(data) is not bytearray:
            data = bytes(data)
        tail = type(data) is bytes and start >= 0 and end >= n0  # the packet's bytes from ``start`` on are ``data``
        self._set = None
        self._set_summed = False
        self._set_arrived = False
        if start < 0 or end < 0 or (self._mptr == NULL and type(self._data) is bytearray):
            self._writable()[start:end] = data
        else:
            p = pkt_ptr(self, &n)
            q = buf_ptr(data, &m)
            if start > n:
                start = n
            if end > n:
                end = n
            if end < start:
                end = start
            new = PyByteArray_FromStringAndSize(NULL, start + m + (n - end))
            o = <unsigned char*>PyByteArray_AS_STRING(new)
            memcpy(o, p, start)
            if tail:  # copied with its checksum sum, which the fix-up then takes (fix_packet)
                tail_sum = csum_copy(o + start, q, m)
                summed = True
            else:
                memcpy(o + start, q, m)
            memcpy(o + start + m, p + end, n - end)
            if self._mptr != NULL:
                _copied()
            self._data = new
            self._mptr = NULL
            self._shared = False
        if tail:
            self._set = data
            self._set_at = start if start <= n0 else n0
            self._set_end = pkt_size(self)
            self._set_sum = tail_sum
            self._set_summed = summed
        self._modified = True
        self._dirty = True
        self._relayout()
        return 0

    def __reduce__(self):
        """Pickling and ``copy.copy``: the packet's bytes (its own: copied out of a queue message first), metadata
        and flags; views are made again when asked for.  (Cython's automatic pickling would read the message
        pointer as a C string.)"""
        return (_restore, (type(self), self._meta, self._own(), self.time, self._l3, self._eth, self._dirty,
                           self._modified, self._mark, self._owner, self._send, self._flow, self._skbinfo, self._wire,
                           self._short))

    cpdef bytes _bytes(self, Py_ssize_t start, Py_ssize_t end):
        """``bytes(self._buf[start:end])`` for ``0 <= start``, without a copy of the rest (``end`` past the end:
        to the end)."""
        cdef Py_ssize_t n
        cdef const unsigned char* p = pkt_ptr(self, &n)
        if end > n:
            end = n
        if start < 0:
            raise ValueError("start must not be negative")
        if end <= start:
            return b""
        if self._mptr != NULL and end == n:  # a payload as it arrived: a handler and sequence adjustment read it again
            if self._arrived is None or self._arrived_at != start:
                self._arrived = PyBytes_FromStringAndSize(<const char*>p + start, end - start)
                self._arrived_at = start
            return self._arrived
        return PyBytes_FromStringAndSize(<const char*>p + start, end - start)

    cpdef Py_ssize_t _size(self):
        """How many bytes the packet has here (``len(self._buf)`` without a copy)."""
        return pkt_size(self)

    cpdef int _need(self, Py_ssize_t end, str what) except -1:
        """Raise :class:`CopyRangeError` when bytes up to ``end`` were not copied (``end`` < 0: the whole packet)."""
        if self._wire:
            if end < 0 or end > self._wire:
                end = self._wire  # the whole packet, or a read past its end: what of it exists
            if end > pkt_size(self):
                raise not_copied(self, what, end)
        return 0

    @property
    def copied(self):
        """How many bytes of the packet the kernel copied to user space (all of them unless the copy range cut it)."""
        return pkt_size(self)

    @property
    def complete(self):
        """True when the whole packet was copied (see :attr:`copied`)."""
        return self._wire == 0

    cpdef void _relayout(self):
        """Forget the layers found so far: the bytes were changed in a way that may move them."""
        self._l4known = False
        self._ipv = None
        self._l4v = None

    cdef int _find_l4(self) except -1:
        cdef Py_ssize_t n
        cdef const unsigned char* p
        cdef Py_ssize_t l3 = self._l3
        cdef int ihl
        self._l4proto = -1
        self._l4off = 0
        self._l4frag = 0
        p = pkt_ptr(self, &n)
        if l3 >= 0:
            if self._wire and n < l3 + 40:  # too little copied to tell the IP header's version and length
                self._need(l3 + (20 if n > l3 and p[l3] >> 4 == 4 else 40), "the IP header")
            p += l3
            n -= l3
            if n >= 20 and p[0] >> 4 == 4:
                ihl = (p[0] & 15) * 4
                if ihl < 20:
                    raise PacketFormatError(f"IPv4 header length field says {ihl} bytes, less than 20")
                self._l4proto = p[9]
                self._l4off = l3 + ihl
                if ((p[6] << 8) | p[7]) & 0x1FFF:
                    self._l4frag = 2
                elif p[6] & 0x20:
                    self._l4frag = 1
            elif n >= 40 and p[0] >> 4 == 6:
                self._l4proto, self._l4off, self._l4frag = _IPv6(self, l3).upper()
        self._l4known = True
        return 0

    cpdef tuple _upper(self):
        """(transport protocol, its offset, fragment: 0 none, 1 the first, 2 a later one); (-1, 0, 0) when not IP."""
        if not self._l4known:
            self._find_l4()
        return (self._l4proto, self._l4off, self._l4frag)

    cdef object _layer(self, int proto, object cls):
        if self._l4v is not None and type(self._l4v) is cls:
            return self._l4v
        cdef Py_ssize_t n
        cdef const unsigned char* p
        cdef ViewCore v
        if not self._l4known:
            self._find_l4()
        if self._l4proto != proto:
            return None
        if self._l4frag == 2:
            return None  # a non-first fragment has no transport header
        if self._l4v_spare is not None and type(self._l4v_spare) is cls:
            v = self._l4v_spare
            self._l4v_spare = None
        else:
            v = ViewCore.__new__(cls)
        v._pkt = self
        v._off = self._l4off
        self._l4v = v
        return v

    cdef object _whole(self, int version, object cls):
        cdef Py_ssize_t n
        cdef const unsigned char* p
        cdef ViewCore v
        if self._ipv is not None and type(self._ipv) is cls:
            return self._ipv
        p = pkt_ptr(self, &n)
        if self._wire and 0 <= self._l3 and n <= self._l3:
            self._need(self._l3 + 1, "the IP header")
        if self._l3 < 0 or n <= self._l3 or p[self._l3] >> 4 != version:
            return None
        if self._ipv_spare is not None and type(self._ipv_spare) is cls:
            v = self._ipv_spare
            self._ipv_spare = None
        else:
            v = ViewCore.__new__(cls)
        v._pkt = self
        v._off = self._l3
        self._ipv = v
        return v

    @property
    def ip(self):
        """The IPv4 header, or None for other packets."""
        return self._whole(4, _IPv4)

    @property
    def ipv6(self):
        """The IPv6 header, or None for other packets."""
        return self._whole(6, _IPv6)

    @property
    def udp(self):
        """The UDP header and payload, or None."""
        return self._layer(17, _UDP)

    @property
    def tcp(self):
        """The TCP header and payload, or None."""
        return self._layer(6, _TCP)

    @property
    def icmp(self):
        """The ICMP (v4) message, or None."""
        return self._layer(1, _ICMP)

    @property
    def icmpv6(self):
        """The ICMPv6 message, or None."""
        return self._layer(58, _ICMPv6)

    def __len__(self):
        """The packet's length (in the kernel: also when only its first part was copied)."""
        return self._wire if self._wire else pkt_size(self)


# Packet_from, packet_done and packet_recycle are inline, in _core.pxd: the dispatcher calls them per packet.


def _restore(cls, meta, data, double time, Py_ssize_t l3, bint eth, bint dirty, bint modified, mark, owner, send,
             flow, int skbinfo, Py_ssize_t wire, bint short):
    """A packet as :meth:`PacketCore.__reduce__` gave it."""
    cdef PacketCore pkt = Packet_from(cls, meta, data, time)
    pkt._l3, pkt._eth, pkt._dirty, pkt._modified, pkt._mark = l3, eth, dirty, modified, mark
    pkt._owner, pkt._send, pkt._flow, pkt._skbinfo, pkt._wire, pkt._short = owner, send, flow, skbinfo, wire, short
    return pkt


# ---------------------------------------------------------------------------
# Views and fields
# ---------------------------------------------------------------------------

cdef class ViewCore:
    """A layer seen at offset ``_off`` of packet ``_pkt``."""

    def __init__(self, PacketCore pkt not None, Py_ssize_t offset):
        self._pkt = pkt
        self._off = offset

    @property
    def packet(self):
        """The packet this view is a window on."""
        return self._pkt

    @property
    def payload(self):
        """The bytes after this layer's header."""
        cdef Py_ssize_t start = self._payload_start()
        if self._pkt._wire:  # only a part was copied (the message is made only then: this is a hot path)
            self._pkt._need(-1, f"{type(self).__name__.lower()}.payload")
        return self._pkt._bytes(start, pkt_size(self._pkt))

    @payload.setter
    def payload(self, data):
        cdef Py_ssize_t start = self._payload_start()
        if type(data) is not bytes:
            data = as_bytes(data, f"{type(self).__name__.lower()}.payload")
        self._pkt._replace(start, pkt_size(self._pkt), data)

    cdef Py_ssize_t _payload_start(self) except -1:
        """The view's ``payload_offset``, read here for a TCP or UDP header that is all there (no Python call)."""
        cdef Py_ssize_t n, hl
        cdef const unsigned char* p = pkt_ptr(self._pkt, &n)
        cdef object cls = type(self)
        if cls is _TCP and self._off + 13 <= n:
            hl = (p[self._off + 12] >> 4) * 4
            if hl >= 20 and self._off + hl <= n:
                return self._off + hl
        elif cls is _UDP and self._off + 8 <= n:
            return self._off + 8
        return self.payload_offset  # the view's own, with its errors


# IPv4 addresses already formatted (a packet stream has few distinct ones): a direct-mapped
# table of 4096 entries, looked up without allocating; a collision just formats again
DEF ADDR4_BITS = 12
cdef unsigned int _ADDR4_KEYS[1 << ADDR4_BITS]
cdef list _ADDR4_TEXT = [None] * (1 << ADDR4_BITS)


def as_bytes(data, str what) -> bytes:
    """``data`` as bytes for a write of ``what`` (bytes, bytearray, memoryview: anything with a buffer); a str
    or an int is refused with the reason (``bytes(5)`` is five NUL bytes, not what a rewrite meant)."""
    if PyObject_CheckBuffer(data):
        return bytes(data)
    if isinstance(data, str):
        raise TypeError(f"{what} takes bytes, not str; encode the text first ({brief(data)}.encode())")
    raise TypeError(f"{what} takes bytes (or a bytearray), not {type(data).__name__} {brief(data)}")


def as_int(value, str what, int bits) -> int:
    """``value`` as an int for a field ``what`` (an int, or what says it is one: numpy's); else refused."""
    try:
        return PyNumber_Index(value)
    except TypeError:
        raise TypeError(f"{what} takes an int of {bits} bits, not {type(value).__name__} {brief(value)}") from None


cdef class Field:
    """A field ``bits`` wide, ``bit`` bits into its view.

    ``kind`` is ``int`` (unsigned, network order; any width), ``"le"``
    (unsigned, little-endian, whole bytes), ``"text"`` (fixed width, NUL
    padded), ``"ipv4"``, ``"ipv6"`` (addresses as text), ``"mac"`` or ``bytes``.
    """

    cdef public str name
    cdef public int bit
    cdef public int bits
    cdef public object kind
    cdef Py_ssize_t _byte
    cdef Py_ssize_t _nbytes
    cdef int _shift
    cdef unsigned long long _mask
    cdef bint _small_int  # an int of at most 64 bits: read and written in C
    cdef int _addr  # 4 or 6 for an address field of whole bytes: formatted in C

    def __init__(self, int bit, int bits, kind=int):
        if bit < 0 or bits < 1:
            raise ValueError("a field needs bit >= 0 and bits >= 1")
        self.bit = bit
        self.bits = bits
        self.kind = kind
        self.name = ""
        self._byte = bit // 8
        end = (bit + bits + 7) // 8
        self._nbytes = end - self._byte
        self._shift = end * 8 - (bit + bits)
        self._small_int = kind is int and self._nbytes <= 8
        self._addr = 0
        if bit % 8 == 0 and ((kind == "ipv4" and bits == 32) or (kind == "ipv6" and bits == 128)):
            self._addr = 4 if kind == "ipv4" else 6
        self._mask = (1ULL << bits) - 1 if bits < 64 else 0xFFFFFFFFFFFFFFFFULL

    def __set_name__(self, owner, name):
        self.name = name

    @property
    def nbytes(self):
        return self._nbytes

    cdef object _short(self, ViewCore v, Py_ssize_t n):
        start = v._off + self._byte
        if v._pkt._wire and start + self._nbytes <= v._pkt._wire:
            return not_copied(v._pkt, f"{type(v).__name__.lower()}.{self.name}", start + self._nbytes)
        return PacketFormatError(
            f"{type(v).__name__.lower()}.{self.name} lies past the end of the {n}-byte packet "
            f"(needs bytes {start}..{start + self._nbytes - 1}); the packet is truncated or its "
            "header lengths are wrong"
        )

    def __get__(self, instance, owner):
        if instance is None:
            return self
        cdef ViewCore v = <ViewCore?>instance
        cdef Py_ssize_t n, i
        cdef const unsigned char* p = pkt_ptr(v._pkt, &n)
        cdef Py_ssize_t start = v._off + self._byte
        cdef unsigned long long val = 0
        cdef char text[48]
        cdef unsigned int key, slot
        if start < 0 or start + self._nbytes > n:
            raise self._short(v, n)
        if self._small_int:
            for i in range(self._nbytes):
                val = (val << 8) | p[start + i]
            return (val >> self._shift) & self._mask
        if self._addr == 4:
            key = (<unsigned int>p[start] << 24) | (p[start + 1] << 16) | (p[start + 2] << 8) | p[start + 3]
            slot = (key * 2654435761U) >> (32 - ADDR4_BITS)
            out = <object>PyList_GET_ITEM(_ADDR4_TEXT, slot)
            if out is not None and _ADDR4_KEYS[slot] == key:
                return out
            if inet_ntop(AF_INET, p + start, text, sizeof(text)) == NULL:
                raise PacketFormatError(f"{self.name} cannot be read as an IPv4 address")
            out = text.decode("ascii")
            _ADDR4_TEXT[slot] = out
            _ADDR4_KEYS[slot] = key
            return out
        if self._addr:
            if inet_ntop(AF_INET if self._addr == 4 else AF_INET6, p + start, text, sizeof(text)) == NULL:
                raise PacketFormatError(f"{self.name} cannot be read as an IPv{self._addr} address")
            return text.decode("ascii")
        raw = PyBytes_FromStringAndSize(<const char*>p + start, self._nbytes)
        if self.kind is int:
            width = <object>self.bits  # a Python int: a mask wider than 64 bits must not be a C shift
            return (int.from_bytes(raw, "big") >> self._shift) & ((1 << width) - 1)
        from pktlab.packet.views.codec import decode

        return decode(self.kind, raw)

    def __set__(self, instance, value):
        cdef ViewCore v = <ViewCore?>instance
        cdef PacketCore pkt = v._pkt
        cdef Py_ssize_t n, i
        cdef Py_ssize_t start = v._off + self._byte
        cdef unsigned long long val, old
        cdef unsigned char* p
        cdef unsigned char addr[16]
        pkt_ptr(pkt, &n)
        if start < 0 or start + self._nbytes > n:
            raise self._short(v, n)
        encoded = None
        if self.kind is int:
            if type(value) is not int:
                value = as_int(value, self.name, self.bits)
            if value < 0 or value >> self.bits:
                raise ValueError(f"{self.name} is {self.bits} bits wide; {value} does not fit")
        elif self._addr:
            text_b = (value if isinstance(value, str) else str(value)).encode("ascii", "replace")
            if inet_pton(AF_INET if self._addr == 4 else AF_INET6, text_b, addr) != 1:
                raise ValueError(f"{self.name} takes an IPv{self._addr} address; {value!r} is not one")
        else:
            from pktlab.packet.views.codec import encode

            encoded = encode(self.kind, value, self._nbytes, self.name)  # raises before anything changes
        buf = pkt._writable_head(start + self._nbytes)
        p = <unsigned char*>PyByteArray_AS_STRING(buf)
        if self._small_int:
            val = value
            old = 0
            for i in range(self._nbytes):
                old = (old << 8) | p[start + i]
            old = (old & ~(self._mask << self._shift)) | (val << self._shift)
            for i in range(self._nbytes - 1, -1, -1):
                p[start + i] = old & 0xFF
                old >>= 8
        elif self._addr:
            memcpy(p + start, addr, self._nbytes)
        elif self.kind is int:
            cur = int.from_bytes(bytes(buf[start:start + self._nbytes]), "big")
            width = <object>self.bits
            mask = ((1 << width) - 1) << self._shift
            cur = (cur & ~mask) | (int(value) << self._shift)
            buf[start:start + self._nbytes] = cur.to_bytes(self._nbytes, "big")
        else:
            buf[start:start + self._nbytes] = encoded
        pkt._dirty = True
