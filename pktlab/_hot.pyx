# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The per-packet path, compiled.

Everything a packet touches on its way from NetfilterQueue to its verdict is
here: the dispatcher called by the reader, the ring the record lives in, the
core of ``Packet`` (its buffer, flags and layer lookup) and the ``Field``
descriptor that views are made of.  The Python modules around it
(``packet``, ``views``, ``record``, ``session``) hold the rest: anything that
runs per packet in Python costs as much as the kernel's own work, so only
user code (the handlers) should.

The dispatcher also batches verdicts: consecutive packets with the same
plain verdict (accept or drop, no mark, no new payload) are verdicted with
one NFQNL_MSG_VERDICT_BATCH message, which applies to every queued packet
with an id up to the one named; verdicts with a new payload or a mark are
NFQNL_MSG_VERDICT messages.  All of them wait in one buffer and are written
to the queue's netlink socket with one system call whenever the socket has
been read empty (or 64 messages wait).  NetfilterQueue has no call for
either, so the messages are built here.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.list cimport PyList_GET_ITEM
from cpython.object cimport PyObject
from cpython.ref cimport Py_REFCNT
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport errno
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, nanosleep, timespec
from posix.unistd cimport write

from netfilterqueue._impl cimport NetfilterQueue as NfQueue
from netfilterqueue._impl cimport Packet as NfPacket
from netfilterqueue._impl cimport nfq_handle_packet, nfq_q_handle, nfq_set_mode, nfq_set_verdict, u_int8_t

from pktlab._capture cimport CapturedPacket
from pktlab.errors import PacketFormatError

cdef extern from *:
    """
    static int pktlab_has_weakrefs(PyObject* o) {
        Py_ssize_t off = Py_TYPE(o)->tp_weaklistoffset;
        return off > 0 && *(PyObject**)((char*)o + off) != NULL;
    }
    """
    bint has_weakrefs "pktlab_has_weakrefs"(PyObject* o)

cdef extern from "<arpa/inet.h>":
    unsigned int htonl(unsigned int)
    const char* inet_ntop(int af, const void* src, char* dst, unsigned int size)
    int inet_pton(int af, const char* src, void* dst)

cdef extern from "<sys/socket.h>":
    int AF_INET
    int AF_INET6

cdef extern from "<sys/uio.h>":
    struct iovec:
        void* iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>":
    struct msghdr:
        void* msg_name
        unsigned int msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int recvmmsg(int fd, mmsghdr* msgs, unsigned int vlen, int flags, timespec* timeout) nogil
    int MSG_DONTWAIT
    int MSG_TRUNC

cdef extern from "<errno.h>":
    int EAGAIN
    int EINTR
    int ENOBUFS
    int EMSGSIZE

cdef extern from "libnetfilter_queue/libnetfilter_queue.h":
    int nfq_set_queue_flags(nfq_q_handle* qh, unsigned int mask, unsigned int flags)

cdef extern from "libnetfilter_queue/linux_nfnetlink_queue.h":
    int NFQA_CFG_F_FAIL_OPEN
    int NFQNL_COPY_PACKET

DEF READ_SLOTS = 16  # messages taken per recvmmsg call
DEF READ_SLOT_BYTES = 73728  # one netlink message: a 64 KiB packet and its attributes (< 1 KiB) fit

cdef enum:
    NF_DROP = 0
    NF_ACCEPT = 1
    NF_REPEAT = 4
    NFNL_SUBSYS_QUEUE = 3
    NFQNL_MSG_VERDICT = 1
    NFQA_MARK = 3
    NFQA_PAYLOAD = 10
    OUT_CAP = 196608  # waiting verdict messages; below the socket's default send buffer (212,992)

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


cdef inline double wall_time():
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline long long mono_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000000000LL + ts.tv_nsec


cdef inline const unsigned char* buf_ptr(object buf, Py_ssize_t* n) except NULL:
    if type(buf) is bytes:
        n[0] = PyBytes_GET_SIZE(buf)
        return <const unsigned char*>PyBytes_AS_STRING(buf)
    if type(buf) is bytearray:
        n[0] = PyByteArray_GET_SIZE(buf)
        return <const unsigned char*>PyByteArray_AS_STRING(buf)
    raise TypeError(f"packet buffer must be bytes or bytearray, not {type(buf).__name__}")


# ---------------------------------------------------------------------------
# Reading the queue
# ---------------------------------------------------------------------------

def configure_queue(NfQueue q, unsigned int copy_range, bint fail_open):
    """Set what NetfilterQueue's ``bind`` cannot: the full copy range and the fail-open flag.

    NetfilterQueue caps the copy range at 4016 bytes (its receive buffer is
    4 KiB) and never sets queue flags; pktlab reads with its own buffer
    (:class:`QueueReader`), so it can ask for whole packets, and it sets
    NFQA_CFG_F_FAIL_OPEN (an NFQNL_MSG_CONFIG message on the queue's own
    socket, through libnetfilter_queue) so that a full queue passes packets
    instead of dropping them.  Call right after ``bind`` in the reading thread.
    """
    if q.qh == NULL:
        raise RuntimeError("the queue is not bound")
    if nfq_set_mode(q.qh, NFQNL_COPY_PACKET, copy_range) < 0:
        raise OSError(errno, f"cannot set the copy range to {copy_range}")
    if nfq_set_queue_flags(q.qh, NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_FAIL_OPEN if fail_open else 0) < 0:
        raise OSError(errno, "cannot set the queue's fail-open flag (kernel older than 3.6?)")


cdef class QueueReader:
    """Reads every message waiting on a queue's socket and hands it to libnetfilter_queue.

    Unlike NetfilterQueue's ``run()``, it counts ENOBUFS (the kernel could not
    deliver a packet to the socket: it was dropped, or passed if fail-open)
    instead of ignoring it, its buffers take whole 64 KiB packets, and it
    takes up to 16 messages per system call (``recvmmsg``), releasing the GIL
    once per call rather than once per packet.

    A reader retired while a handler is stuck (:meth:`retire`) hands the
    messages it has taken from the socket but not yet dispatched to its
    successor, which dispatches them before reading the socket again: every
    packet still gets exactly one verdict.
    """

    cdef char* buf
    cdef mmsghdr msgs[READ_SLOTS]
    cdef iovec iov[READ_SLOTS]
    cdef int batch_n  # messages in the slots from the last recvmmsg
    cdef int next_i  # the next of them to dispatch
    cdef list pending  # messages handed over by a retired predecessor, dispatched first
    cdef public QueueReader successor
    cdef public long long enobufs
    cdef public long long messages
    cdef public long long calls  # recvmmsg calls that returned messages
    cdef public bint retired  # a successor reads the queue now; this one stops after its current message

    def __cinit__(self):
        cdef int i
        self.buf = <char*>malloc(READ_SLOTS * READ_SLOT_BYTES)
        if self.buf == NULL:
            raise MemoryError()
        memset(self.msgs, 0, sizeof(self.msgs))
        for i in range(READ_SLOTS):
            self.iov[i].iov_base = self.buf + i * READ_SLOT_BYTES
            self.iov[i].iov_len = READ_SLOT_BYTES
            self.msgs[i].msg_hdr.msg_iov = &self.iov[i]
            self.msgs[i].msg_hdr.msg_iovlen = 1
        self.pending = []

    def __dealloc__(self):
        free(self.buf)

    def retire(self, QueueReader successor):
        """Hand the queue over: ``successor`` gets every message taken but not dispatched yet.

        Called holding the GIL while this reader's thread is inside a handler
        (or asleep in ``recvmmsg``); that thread stops after its current
        message and hands over anything it reads later.
        """
        successor.enobufs += self.enobufs
        self.successor = successor
        self.retired = True
        self._hand_over()

    @property
    def waiting(self):
        """Messages handed over by a retired reader and not dispatched yet."""
        return len(self.pending)

    cdef int _hand_over(self) except -1:
        """Move the pending messages and the undispatched slots to the successor."""
        cdef int i
        left = self.pending
        self.pending = []
        for i in range(self.next_i, self.batch_n):
            left.append(PyBytes_FromStringAndSize(<char*>self.iov[i].iov_base, self.msgs[i].msg_len))
        self.next_i = self.batch_n
        if left:
            self.successor.pending.extend(left)
        return 0

    def read(self, NfQueue q, int fd, long long limit=-1):
        """Handle everything waiting on ``fd`` (at most ``limit`` messages) without blocking; return how many."""
        cdef int got, i, err
        cdef unsigned int want
        cdef long long n = 0
        cdef bytes msg
        try:
            while self.pending and (limit < 0 or n < limit):
                if self.retired:
                    self._hand_over()
                    return n
                msg = self.pending.pop(0)
                n += 1
                nfq_handle_packet(q.h, PyBytes_AS_STRING(msg), <int>PyBytes_GET_SIZE(msg))
            while (limit < 0 or n < limit) and not self.retired:
                want = READ_SLOTS if limit < 0 or limit - n >= READ_SLOTS else <unsigned int>(limit - n)
                with nogil:
                    got = recvmmsg(fd, self.msgs, want, MSG_DONTWAIT, NULL)
                    err = errno
                if got < 0:
                    if err == EAGAIN:
                        break
                    if err == ENOBUFS:
                        self.enobufs += 1
                        continue
                    if err == EINTR:
                        continue
                    raise OSError(err, "reading the queue's socket failed")
                self.calls += 1
                self.batch_n = got
                self.next_i = 0
                while self.next_i < self.batch_n:
                    if self.retired:
                        self._hand_over()
                        return n
                    i = self.next_i
                    self.next_i = i + 1
                    if self.msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
                        raise OSError(EMSGSIZE, f"a queue message was longer than {READ_SLOT_BYTES} bytes")
                    n += 1
                    nfq_handle_packet(q.h, <char*>self.iov[i].iov_base, <int>self.msgs[i].msg_len)
                if <unsigned int>got < want:
                    break  # the socket is empty now: no need to ask again
            return n
        finally:
            self.messages += n


# ---------------------------------------------------------------------------
# Lengths and checksums after a rewrite
# ---------------------------------------------------------------------------

def too_big(Py_ssize_t size):
    """The error of a rewrite that made a packet larger than an IP packet can be."""
    return PacketFormatError(
        f"the rewritten packet is {size:,} bytes; an IP packet holds at most 65,535, so it was not sent "
        "and the packet got the error verdict as it arrived"
    )


cdef inline unsigned long long csum_add(const unsigned char* p, Py_ssize_t n, unsigned long long s) nogil:
    """Add ``n`` bytes to a one's-complement sum as big-endian 16-bit words."""
    cdef Py_ssize_t i = 0
    while i + 1 < n:
        s += (p[i] << 8) | p[i + 1]
        i += 2
    if i < n:
        s += p[i] << 8
    return s


cdef inline unsigned int csum_fold(unsigned long long s) nogil:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


cdef inline void put16(unsigned char* p, unsigned int v) nogil:
    p[0] = (v >> 8) & 0xFF
    p[1] = v & 0xFF


cdef void fix_l4(unsigned char* p, Py_ssize_t n, int proto, Py_ssize_t off, unsigned long long pseudo, bint v4):
    cdef Py_ssize_t at
    cdef unsigned int c
    if proto == 6 and n >= off + 20:
        at = off + 16
    elif proto == 17 and n >= off + 8:
        put16(p + off + 4, <unsigned int>(n - off))
        at = off + 6
        if v4 and p[at] == 0 and p[at + 1] == 0:
            return  # IPv4 UDP without a checksum stays without
    elif proto == 1 and v4 and n >= off + 4:
        at = off + 2
        pseudo = 0
    elif proto == 58 and n >= off + 4:
        at = off + 2
    else:
        return
    put16(p + at, 0)
    c = csum_fold(csum_add(p + off, n - off, pseudo))
    if c == 0 and proto == 17:
        c = 0xFFFF
    put16(p + at, c)


def fix_packet(PacketCore pkt):
    """Recompute IP lengths and the IPv4, TCP, UDP, ICMP and ICMPv6 checksums after writes.

    Fragments keep their transport checksum (it spans all fragments).  A link
    header in front (Ethernet) is left as it is.
    """
    cdef object buf = pkt._writable()
    cdef Py_ssize_t l3 = pkt._l3
    cdef unsigned char* p = <unsigned char*>PyByteArray_AS_STRING(buf)
    cdef Py_ssize_t n = PyByteArray_GET_SIZE(buf)
    cdef Py_ssize_t ihl, off
    cdef unsigned long long pseudo
    cdef int proto
    pkt._dirty = False
    if l3 < 0 or l3 >= n:
        return
    p += l3
    n -= l3
    if n >= 20 and p[0] >> 4 == 4:
        ihl = (p[0] & 15) * 4
        if ihl < 20 or ihl > n or n > 0xFFFF:
            return
        put16(p + 2, <unsigned int>n)
        put16(p + 10, 0)
        put16(p + 10, csum_fold(csum_add(p, ihl, 0)))
        if ((p[6] << 8) | p[7]) & 0x3FFF:
            return
        pseudo = csum_add(p + 12, 8, 0) + p[9] + <unsigned long long>(n - ihl)
        fix_l4(p, n, p[9], ihl, pseudo, True)
    elif n >= 40 and p[0] >> 4 == 6:
        put16(p + 4, <unsigned int>((n - 40) & 0xFFFF))
        pkt._relayout()
        try:
            proto, off, frag = pkt._upper()
        except PacketFormatError:
            return
        if frag:
            return
        off -= l3
        pseudo = csum_add(p + 8, 32, 0) + ((n - off) >> 16) + ((n - off) & 0xFFFF) + proto
        fix_l4(p, n, proto, off, pseudo, False)


# ---------------------------------------------------------------------------
# Packet core
# ---------------------------------------------------------------------------

cdef class PacketCore:
    """Buffer, flags and layer lookup of a packet (``pktlab.Packet`` adds the rest)."""

    cdef public object _meta
    cdef public object _buf
    cdef public bint _dirty
    cdef public bint _modified
    cdef public object _mark
    cdef int _l4proto  # transport protocol (-1 none), its offset and whether the packet is a fragment:
    cdef Py_ssize_t _l4off  # found once per layout (see _relayout), kept in C: no tuple per packet
    cdef int _l4frag  # 0 not a fragment, 1 the first fragment, 2 a later one (no transport header)
    cdef bint _l4known
    cdef public object _ipv  # the IPv4/IPv6 view, made once (reset by _relayout when the layout may change)
    cdef public object _l4v  # the transport view, likewise
    cdef ViewCore _ipv_spare  # views of an earlier packet this (reused) packet object may take again
    cdef ViewCore _l4v_spare
    cdef public double time
    cdef public Py_ssize_t _l3  # where the IP header starts: 0 from a queue, 14/18 after Ethernet, -1 none
    cdef public bint _eth
    cdef object __weakref__

    def __init__(self, meta, data, double time=0.0, str link="ip"):
        cdef Py_ssize_t n
        cdef const unsigned char* p
        cdef unsigned int etype
        self._meta = meta
        self._buf = data
        self._mark = None
        self._ipv = None
        self._l4v = None
        self.time = time
        if link == "ethernet":
            self._eth = True
            p = buf_ptr(data, &n)
            self._l3 = -1
            if n >= 14:
                etype = (p[12] << 8) | p[13]
                off = 14
                while etype in (0x8100, 0x88A8) and n >= off + 4:  # VLAN tags (at most a few)
                    etype = (p[off + 2] << 8) | p[off + 3]
                    off += 4
                    if off > 26:
                        break
                if etype in (0x0800, 0x86DD):
                    self._l3 = off
        elif link != "ip":
            raise ValueError(f"link {link!r} is not 'ip' (what a queue gives) or 'ethernet'")

    cpdef object _writable(self):
        """The buffer as a bytearray (copied once), marking the packet modified."""
        if type(self._buf) is not bytearray:
            self._buf = bytearray(self._buf)
        self._modified = True
        return self._buf

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
        p = buf_ptr(self._buf, &n)
        if l3 >= 0:
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
        p = buf_ptr(self._buf, &n)
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
        return len(self._buf)


cdef PacketCore Packet_from(object cls, object meta, object data, double now):
    """A packet of class ``cls`` on ``data`` (the dispatcher's construction, without __init__)."""
    cdef PacketCore pkt = PacketCore.__new__(cls)
    pkt._meta = meta
    pkt._buf = data
    pkt._mark = None
    pkt._ipv = None
    pkt._l4v = None
    pkt.time = now
    return pkt


cdef void packet_done(PacketCore pkt):
    """Break the packet <-> view cycle once its verdict is given, so it is freed at once, not by the GC."""
    pkt._ipv = None
    pkt._l4v = None


cdef bint packet_recycle(PacketCore pkt, Py_ssize_t refs):
    """Empty a packet that nothing but the dispatcher references, for reuse by the next packet.

    Allocating and freeing a packet and its two views is a fair share of a
    handler's cost per packet; a packet nobody kept (the usual case) is
    reused instead, with its views kept aside (detached) for the next one.
    ``refs`` is how many references the caller holds.  Anything else that
    references the packet (a handler that kept it or one of its views, a
    weak reference, a failure record) makes this return False, having only
    broken the packet <-> view cycle.
    """
    cdef ViewCore ipv = pkt._ipv
    cdef ViewCore l4v = pkt._l4v
    cdef Py_ssize_t expect = refs
    cdef bint seen = False
    # a cached view references the packet; one that anybody else references (the packet's
    # field and ``ipv``/``l4v`` here make two) keeps the packet visible through it
    if ipv is not None and ipv._pkt is pkt:
        expect += 1
        seen = seen or Py_REFCNT(ipv) != 2
    if l4v is not None and l4v._pkt is pkt:
        expect += 1
        seen = seen or Py_REFCNT(l4v) != 2
    if seen or Py_REFCNT(pkt) != expect or has_weakrefs(<PyObject*>pkt):
        packet_done(pkt)
        return False
    if ipv is not None and ipv._pkt is pkt:
        ipv._pkt = None
        pkt._ipv_spare = ipv
    if l4v is not None and l4v._pkt is pkt:
        l4v._pkt = None
        pkt._l4v_spare = l4v
    pkt._ipv = None
    pkt._l4v = None
    pkt._meta = None
    pkt._buf = None
    pkt._mark = None
    pkt._dirty = False
    pkt._modified = False
    pkt._l4known = False
    return True


# ---------------------------------------------------------------------------
# Views and fields
# ---------------------------------------------------------------------------

cdef class ViewCore:
    """A layer seen at offset ``_off`` of packet ``_pkt``."""

    cdef public PacketCore _pkt
    cdef public Py_ssize_t _off

    def __init__(self, PacketCore pkt, Py_ssize_t offset):
        self._pkt = pkt
        self._off = offset


# IPv4 addresses already formatted (a packet stream has few distinct ones): a direct-mapped
# table of 4096 entries, looked up without allocating; a collision just formats again
DEF ADDR4_BITS = 12
cdef unsigned int _ADDR4_KEYS[1 << ADDR4_BITS]
cdef list _ADDR4_TEXT = [None] * (1 << ADDR4_BITS)


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
        cdef const unsigned char* p = buf_ptr(v._pkt._buf, &n)
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
        buf_ptr(pkt._buf, &n)
        if start < 0 or start + self._nbytes > n:
            raise self._short(v, n)
        encoded = None
        if self.kind is int:
            if value < 0 or value >> self.bits:
                raise ValueError(f"{self.name} is {self.bits} bits wide; {value} does not fit")
        elif self._addr:
            text_b = (value if isinstance(value, str) else str(value)).encode("ascii", "replace")
            if inet_pton(AF_INET if self._addr == 4 else AF_INET6, text_b, addr) != 1:
                raise ValueError(f"{self.name} takes an IPv{self._addr} address; {value!r} is not one")
        else:
            from pktlab.packet.views.codec import encode

            encoded = encode(self.kind, value, self._nbytes, self.name)  # raises before anything changes
        buf = pkt._writable()
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


# ---------------------------------------------------------------------------
# The record's ring
# ---------------------------------------------------------------------------

cdef struct Slot:
    double time
    long long ns
    unsigned int id
    unsigned int size
    unsigned short keep
    unsigned char hook
    unsigned char code
    unsigned char flags  # 1 modified, 2 error, 4 has a handler name or error text in the lists


cdef class Ring:
    """The last ``capacity`` packets in preallocated memory, and counters over all of them.

    A packet's entry is a fixed-size slot plus its first ``snaplen`` bytes in
    one big buffer: recording allocates nothing and touches two cache lines,
    where a ring of Python tuples allocated four objects per packet and freed
    four cold ones.  Entries become tuples only when read (:meth:`snapshot`).
    """

    cdef public Py_ssize_t capacity
    cdef public Py_ssize_t snaplen
    cdef public long long n
    cdef public long long accepted
    cdef public long long dropped
    cdef public long long repeated
    cdef public long long errors
    cdef Slot* slots
    cdef unsigned char* heads
    cdef list by
    cdef list err

    def __cinit__(self, Py_ssize_t capacity, Py_ssize_t snaplen=256):
        if capacity < 1:
            raise ValueError("record capacity must be at least 1")
        if snaplen < 0 or snaplen > 65535:
            raise ValueError("snaplen must be 0..65535")
        self.capacity = capacity
        self.snaplen = snaplen
        self.slots = <Slot*>calloc(capacity, sizeof(Slot))
        self.heads = <unsigned char*>malloc(capacity * snaplen if snaplen else 1)
        if self.slots == NULL or self.heads == NULL:
            raise MemoryError(f"cannot allocate a record of {capacity} packets x {snaplen} bytes")
        # touch every page now, so the reader does not take a page fault every 16 packets later
        memset(self.heads, 0, capacity * snaplen if snaplen else 1)
        self.by = [None] * capacity
        self.err = [None] * capacity

    def __dealloc__(self):
        free(self.slots)
        free(self.heads)

    def clear(self):
        """Forget every entry and counter (a capture read again starts a fresh record)."""
        cdef Py_ssize_t i
        self.n = self.accepted = self.dropped = self.repeated = self.errors = 0
        memset(self.slots, 0, self.capacity * sizeof(Slot))
        for i in range(self.capacity):
            self.by[i] = None
            self.err[i] = None

    cdef inline Slot* _next(self):
        cdef Py_ssize_t i = self.n % self.capacity
        cdef Slot* s = &self.slots[i]
        if s.flags & 4:  # forget the objects of the entry this slot held
            self.by[i] = None
            self.err[i] = None
        self.n += 1
        return s

    cdef inline void _count(self, int code, bint error):
        if code == NF_ACCEPT:
            self.accepted += 1
        elif code == NF_DROP:
            self.dropped += 1
        else:
            self.repeated += 1
        if error:
            self.errors += 1

    cdef void push(self, double t, unsigned int pid, unsigned char hook, Py_ssize_t size,
                   const unsigned char* head, Py_ssize_t avail, int code, long long ns,
                   object by, object err, bint modified):
        cdef Py_ssize_t i = self.n % self.capacity
        cdef Slot* s = self._next()
        cdef Py_ssize_t keep = avail if avail < self.snaplen else self.snaplen
        s.time = t
        s.ns = ns
        s.id = pid
        s.size = <unsigned int>size
        s.keep = <unsigned short>keep
        s.hook = hook
        s.code = <unsigned char>code
        s.flags = (1 if modified else 0) | (2 if err is not None else 0)
        if keep:
            memcpy(self.heads + i * self.snaplen, head, keep)
        if by is not None or err is not None:
            self.by[i] = by
            self.err[i] = err
            s.flags |= 4
        self._count(code, err is not None)

    def append(self, double time, unsigned int pid, unsigned char hook, Py_ssize_t size, bytes head, int code,
               handler, long long ns, error, bint modified):
        """Add one entry from Python (tests and tools; the dispatcher writes slots directly)."""
        self.push(time, pid, hook, size, <const unsigned char*>PyBytes_AS_STRING(head), len(head), code, ns,
                  handler, error, modified)

    def count_since(self, double t):
        """How many of the packets held arrived at or after time ``t`` (newest first, stops early)."""
        cdef long long n = self.n
        cdef Py_ssize_t cap = self.capacity
        cdef Py_ssize_t held = n if n < cap else cap
        cdef Py_ssize_t k
        cdef long long c = 0
        for k in range(held):
            if self.slots[(n - 1 - k) % cap].time < t:
                break
            c += 1
        return c

    def snapshot(self, entry, verdicts, hooks, Py_ssize_t last=-1):
        """The entries still held (the newest ``last`` if >= 0), oldest first, each an ``entry(...)``.

        ``verdicts`` maps a verdict code to its name, ``hooks`` a hook number to its name.
        """
        cdef long long n = self.n
        cdef Py_ssize_t cap = self.capacity
        cdef Py_ssize_t count = n if n < cap else cap
        cdef Py_ssize_t start = 0 if n <= cap else n % cap
        if 0 <= last < count:
            start = (start + count - last) % cap
            count = last
        cdef Py_ssize_t k, i
        cdef Slot* s
        out = []
        for k in range(count):
            i = (start + k) % cap
            s = &self.slots[i]
            out.append(entry(
                s.time, s.id, hooks[s.hook] if s.hook < len(hooks) else str(s.hook), s.size,
                PyBytes_FromStringAndSize(<const char*>self.heads + i * self.snaplen, s.keep),
                verdicts[s.code], self.by[i], s.ns / 1000.0, self.err[i], bool(s.flags & 1),
            ))
        return out


# ---------------------------------------------------------------------------
# The dispatcher: NetfilterQueue's callback
# ---------------------------------------------------------------------------

cdef inline Py_ssize_t record_offset(NfPacket nf):
    """Where the record's copy of a packet starts: its IP header (a capture's link header is left out)."""
    cdef CapturedPacket cp
    if nf._queue is not None:
        return 0
    cp = <CapturedPacket>nf
    return cp.l3 if cp.l3 > 0 else 0


cdef class Dispatcher:
    """Runs the handler chain on each packet and gives exactly one verdict.

    One runner for every source: packets from the kernel queue (NetfilterQueue's
    packets; verdicts batched to the queue's socket) and packets from a capture
    (:class:`CapturedPacket`; verdicts to the capture source's output).
    """

    cdef object chain
    cdef Ring ring
    cdef object _default
    cdef object _on_error
    cdef int default_code
    cdef int error_code
    cdef object packet_cls
    cdef object verdict_cls
    cdef PacketCore spare  # the last packet, emptied, when no handler kept it: the next one reuses it
    cdef public long long reused
    # batch verdicts
    cdef public int fd
    cdef public int batch_limit
    cdef int b_code
    cdef unsigned int b_last
    cdef int b_count
    cdef unsigned char msg[32]
    cdef public long long batch_messages
    # verdict messages waiting to be written together (see _queue_verdict)
    cdef unsigned char* out
    cdef Py_ssize_t out_len
    cdef int out_count
    cdef public long long writes
    cdef public long long internal_errors
    cdef public object last_internal_error
    # the handler call in progress, for the watchdog (see rescue())
    cdef long long busy_t0
    cdef unsigned long long busy_seq
    cdef unsigned long long seq
    cdef object busy_nf
    cdef object busy_handler
    cdef double busy_time
    cdef object busy_data
    cdef set stolen
    cdef public long long rescued
    cdef public bint watch_stop
    # holding: packets a predicate picks wait for a verdict given later (Session.hold)
    cdef public object hold_fn
    cdef public object on_hold
    cdef public long long held_count

    def __init__(self, chain, Ring ring, default, on_error, packet_cls,
                 verdict_cls, bytes batch_prefix, int batch_limit):
        self.chain = chain
        self.ring = ring
        self.packet_cls = packet_cls
        self.verdict_cls = verdict_cls
        self.set_verdicts(default, on_error)
        if len(batch_prefix) != 24:
            raise ValueError("batch prefix must be 24 bytes")
        memcpy(self.msg, PyBytes_AS_STRING(batch_prefix), 24)
        self.batch_limit = batch_limit
        self.fd = -1
        self.b_code = -1
        self.stolen = set()
        self.out = <unsigned char*>malloc(OUT_CAP)
        if self.out == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.out)

    def set_verdicts(self, default, on_error):
        self._default = default
        self._on_error = on_error
        self.default_code = default.code
        self.error_code = on_error.code

    # -- verdicts --------------------------------------------------------------
    cdef int _batch_add(self, unsigned int pid, int code) except -1:
        if self.b_count and code != self.b_code:
            self._flush()
        self.b_code = code
        self.b_last = pid
        self.b_count += 1
        if self.b_count >= self.batch_limit:
            self._flush()
        return 0

    cdef int _close_run(self) except -1:
        """Append the pending batch verdict (if any) to the outgoing messages."""
        cdef unsigned int v
        if not self.b_count:
            return 0
        if self.out_len + 32 > OUT_CAP:
            self._write()
        v = htonl(self.b_code)
        memcpy(self.msg + 24, &v, 4)
        v = htonl(self.b_last)
        memcpy(self.msg + 28, &v, 4)
        memcpy(self.out + self.out_len, self.msg, 32)
        self.out_len += 32
        self.out_count += 1
        self.b_count = 0
        self.batch_messages += 1
        return 0

    cdef int _write(self) except -1:
        """Write every waiting verdict message with one system call.

        The kernel's netlink receive loop handles each message of the buffer in
        order, exactly as if they had been sent one by one.
        """
        cdef Py_ssize_t n = self.out_len
        if not n:
            return 0
        self.out_len = 0
        self.out_count = 0
        self.writes += 1
        if write(self.fd, self.out, n) != n:
            raise OSError(errno, "verdict write failed")
        return 0

    cdef int _flush(self) except -1:
        self._close_run()
        self._write()
        return 0

    cdef int _queue_verdict(self, unsigned int pid, int code, object mark, object buf) except -1:
        """Queue one NFQNL_MSG_VERDICT (with a mark and/or a new payload) behind the waiting messages."""
        cdef const unsigned char* p = NULL
        cdef Py_ssize_t n = 0
        cdef Py_ssize_t size
        cdef unsigned char* m
        cdef unsigned int v
        cdef unsigned short a
        if buf is not None:
            p = buf_ptr(buf, &n)
            if n > 0xFFFF - 4:
                raise ValueError(f"a packet of {n} bytes cannot be given back to the kernel (at most 65531)")
        size = 32 + (8 if mark is not None else 0) + ((4 + ((n + 3) & ~3)) if buf is not None else 0)
        self._close_run()
        if self.out_len + size > OUT_CAP or self.out_count >= self.batch_limit:
            self._write()
        m = self.out + self.out_len
        memcpy(m, self.msg, 24)
        v = <unsigned int>size
        memcpy(m, &v, 4)  # nlmsg_len (host order)
        a = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT
        memcpy(m + 4, &a, 2)  # nlmsg_type (host order)
        v = htonl(code)
        memcpy(m + 24, &v, 4)
        v = htonl(pid)
        memcpy(m + 28, &v, 4)
        m += 32
        if mark is not None:
            a = 8
            memcpy(m, &a, 2)
            a = NFQA_MARK
            memcpy(m + 2, &a, 2)
            v = htonl(<unsigned int>(mark & 0xFFFFFFFF))
            memcpy(m + 4, &v, 4)
            m += 8
        if buf is not None:
            a = <unsigned short>(4 + n)
            memcpy(m, &a, 2)
            a = NFQA_PAYLOAD
            memcpy(m + 2, &a, 2)
            memcpy(m + 4, p, n)
            memset(m + 4 + n, 0, ((n + 3) & ~3) - n)
        self.out_len += size
        self.out_count += 1
        return 0

    def flush(self):
        """Send the pending batch verdict (the reader calls this whenever its socket is empty)."""
        self._flush()

    cdef int _give(self, NfPacket nf, int code, bint plain) except -1:
        if plain and code != NF_REPEAT and self.batch_limit > 1 and self.fd >= 0 and self.held_count == 0:
            self._batch_add(nf.id, code)
            return 0
        if self.b_count:
            self._flush()
        if code == NF_ACCEPT:
            nf.accept()
        elif code == NF_DROP:
            nf.drop()
        else:
            nf.repeat()
        return 0

    cdef int _give_payload(self, NfPacket nf, int code, object buf, object mark) except -1:
        """Verdict with a new payload and/or mark straight from the packet's bytearray (no copy to bytes).

        With batching on, the message joins the waiting ones (one write for
        many packets); otherwise it goes out at once through libnetfilter_queue.
        """
        cdef const unsigned char* p
        cdef Py_ssize_t n
        if nf._verdict_is_set:
            raise RuntimeError("verdict already given for this packet")
        if nf._queue is None:  # a captured packet: the verdict carries its payload and mark to the output
            if mark is not None:
                nf.set_mark(mark)
            if buf is not None:
                nf.set_payload(bytes(buf))
            self._give(nf, code, False)
            return 0
        if nf._queue.qh == NULL:
            raise RuntimeError("the queue has been unbound")
        if self.batch_limit > 1 and self.fd >= 0:  # an NFQNL_MSG_VERDICT names its packet: safe while holding
            self._queue_verdict(nf.id, code, mark, buf)
            nf._verdict_is_set = True
            return 0
        self._flush()
        if mark is not None:
            nf.set_mark(mark)
            if buf is None:
                self._give(nf, code, False)
                return 0
            nf.set_payload(bytes(buf))
            self._give(nf, code, False)
            return 0
        p = buf_ptr(buf, &n)
        if nfq_set_verdict(nf._queue.qh, nf.id, code, <unsigned int>n, <unsigned char*>p) < 0:
            raise OSError(errno, "verdict with payload failed")
        nf._verdict_is_set = True
        return 0

    cdef object _internal(self, NfPacket nf, exc):
        """pktlab's own failure on a packet: count it and still give one verdict."""
        self.internal_errors += 1
        self.last_internal_error = f"{type(exc).__name__}: {exc}"
        try:
            self._give(nf, NF_DROP if self.error_code == NF_DROP else NF_ACCEPT, False)
        except BaseException:
            pass  # the verdict was already given or the queue is gone
        return self._on_error

    # -- hung handlers -------------------------------------------------------------
    cdef void _returned(self, unsigned long long my_seq, object h, PacketCore pkt):
        """A handler whose packet the watchdog already verdicted has returned: it rejoins the chain.

        The packet is done as after any verdict: left in its packet <-> view cycle it would keep the
        queue (and its socket) alive after detach until the cyclic collector ran.
        """
        packet_done(pkt)
        self.stolen.discard(my_seq)
        try:
            self.chain.unstick(h)
        except BaseException:
            pass

    def wait_overdue(self, long long deadline_ns, long long period_ns, long long max_wait_ns):
        """Sleep until a handler call is past the deadline (1), ``max_wait_ns`` passed (2) or stop (0).

        Runs without the GIL: the watchdog does not take the interpreter from
        the reader thread every period, only when there is something to do.
        """
        cdef long long start = mono_ns()
        cdef long long t0, now
        cdef int result = 0
        cdef timespec ts
        ts.tv_sec = period_ns // 1000000000
        ts.tv_nsec = period_ns % 1000000000
        with nogil:
            while True:
                nanosleep(&ts, NULL)
                if self.watch_stop:
                    result = 0
                    break
                t0 = self.busy_t0
                now = mono_ns()
                if t0 != 0 and now - t0 >= deadline_ns:
                    result = 1
                    break
                if now - start >= max_wait_ns:
                    result = 2
                    break
        return result

    def rescue(self, long long deadline_ns):
        """Called by the watchdog: if a handler has run longer than the deadline, verdict its packet now.

        The handler's packet gets the error verdict and a record entry, the
        handler is returned so the caller can mark it stuck and start a new
        reader; when the handler finally returns, its thread finds the packet
        taken and gives no second verdict.  Runs holding the GIL, so the
        reader thread is inside handler code, never half-way through a verdict.
        """
        cdef long long t0 = self.busy_t0
        cdef long long now = mono_ns()
        cdef NfPacket nf
        cdef Py_ssize_t off
        if t0 == 0 or now - t0 < deadline_ns or self.busy_nf is None:
            return None
        nf = self.busy_nf
        h = self.busy_handler
        data = self.busy_data
        self.stolen.add(self.busy_seq)
        self.busy_t0 = 0
        self.busy_nf = None
        self.busy_data = None
        err = f"handler {h.name!r} did not return within {deadline_ns / 1e6:.0f} ms; the packet got the error verdict"
        code = self.error_code
        try:
            self._give(nf, NF_DROP if code == NF_DROP else NF_ACCEPT, False)
        except BaseException as exc:
            code = self._internal(nf, exc).code
        self.rescued += 1
        off = record_offset(nf)
        self.ring.push(self.busy_time, nf.id, nf.hook, len(data) - off,
                       <const unsigned char*>PyBytes_AS_STRING(data) + off, len(data) - off, code, now - t0, h.name,
                       err, False)
        return h

    # -- per packet -------------------------------------------------------------
    def __call__(self, NfPacket nf):
        cdef PacketCore pkt = None
        cdef bytes data = None
        if self.hold_fn is not None:
            data = nf.get_payload()
            pkt = self._packet(nf, data, None)
            if self._hold(nf, pkt):
                return
        chain = self.chain.active
        if not chain:
            self._fast(nf)
        else:
            self._run(nf, chain, pkt, data)  # the packet the predicate saw goes on through the chain

    # -- holding ---------------------------------------------------------------------
    cdef bint _hold(self, NfPacket nf, PacketCore pkt):
        """Keep the packet without a verdict if the hold predicate picks it; True when held."""
        try:
            if not self.hold_fn(pkt):
                return False
            self._flush()  # verdicts for the packets before it go first
            self.on_hold(nf, pkt)
            self.held_count += 1  # from now on no batch verdict (it would cover the held id too)
            return True
        except BaseException as exc:  # a predicate that fails holds nothing; the packet goes on
            self.internal_errors += 1
            self.last_internal_error = f"hold predicate: {type(exc).__name__}: {exc}"
            return False

    def give_held(self, NfPacket nf, PacketCore pkt, verdict, str by, bytes original):
        """The verdict of a held packet, given now (from any thread); recorded like any other.

        ``original`` is the packet as it arrived (the record keeps packets as they came).
        """
        cdef int code = verdict.code
        cdef Py_ssize_t off
        if nf._verdict_is_set:
            raise RuntimeError("this packet already has its verdict")
        try:
            self._flush()
            self._give_packet(nf, pkt, code, False)
            self._flush()  # the reader may be idle: send it now
        finally:
            self.held_count -= 1
        packet_done(pkt)  # as after any verdict: no packet <-> view cycle keeping the queue alive
        off = record_offset(nf)
        self.ring.push(pkt.time, nf.id, nf.hook, len(original) - off,
                       <const unsigned char*>PyBytes_AS_STRING(original) + off, len(original) - off, code, 0, by,
                       None, pkt._modified)

    cdef int _give_packet(self, NfPacket nf, PacketCore pkt, int code, bint plain) except -1:
        """The verdict of one packet with what the handlers did to it: a mark, a rewrite (fixed up here)."""
        if pkt._mark is None and not pkt._modified:
            self._give(nf, code, plain)
            return 0
        if pkt._modified and pkt._dirty:
            fix_packet(pkt)
        if code == NF_REPEAT:
            if pkt._mark is not None:
                nf.set_mark(pkt._mark)
            if pkt._modified:
                nf.set_payload(bytes(pkt._buf))
            self._give(nf, code, False)
        else:
            self._give_payload(nf, code, pkt._buf if pkt._modified else None, pkt._mark)
        return 0

    cdef void _fast(self, NfPacket nf):
        cdef int code = self.default_code
        cdef Py_ssize_t n = nf.payload_len if nf.payload != NULL else 0
        cdef Py_ssize_t off = 0
        cdef double now
        cdef CapturedPacket cp
        if nf._queue is None:
            cp = <CapturedPacket>nf
            now = cp.time
            off = record_offset(nf)
            if off > n:
                off = n
        else:
            now = wall_time()
        try:
            self._give(nf, code, True)
        except BaseException as exc:
            code = self._internal(nf, exc).code
        self.ring.push(now, nf.id, nf.hook, n - off, nf.payload + off, n - off, code, 0, None, None, False)

    cdef PacketCore _packet(self, NfPacket nf, bytes data, PacketCore spare):
        """The packet handlers see: ``spare`` (an emptied earlier one) reused, or a new one."""
        cdef PacketCore pkt
        cdef CapturedPacket cp
        cdef double now
        cdef bint captured = nf._queue is None
        if captured:
            cp = <CapturedPacket>nf
            now = cp.time
        else:
            now = wall_time()
        if spare is not None:
            pkt = spare
            pkt._meta = nf
            pkt._buf = data
            pkt.time = now
            self.reused += 1
        else:
            pkt = Packet_from(self.packet_cls, nf, data, now)
        if captured:
            pkt._l3 = cp.l3
            pkt._eth = cp.eth
        elif pkt._eth:  # a spare that last held a captured frame
            pkt._l3 = 0
            pkt._eth = False
        return pkt

    cdef void _run(self, NfPacket nf, tuple chain, PacketCore pkt=None, bytes data=None):
        """The chain on one packet (``pkt`` and its ``data`` already made when a hold predicate saw it)."""
        cdef long long t0 = mono_ns()
        cdef double now = 0.0
        cdef int code
        cdef Py_ssize_t off
        cdef bint given = False
        cdef bint own = pkt is None
        cdef bint modified = False
        verdict = None
        by = None
        err = None
        if data is None:
            data = b""
        try:
            if own:
                data = nf.get_payload()
                pkt = self._packet(nf, data, self.spare)
                self.spare = None
            now = pkt.time
            self.seq += 1
            my_seq = self.seq
            self.busy_nf = nf
            self.busy_time = now
            self.busy_data = data
            self.busy_seq = my_seq
            self.busy_t0 = t0  # the deadline runs from the packet's start in the chain
            h = None
            for h in chain:
                self.busy_handler = h
                try:
                    v = h.fn(pkt)
                except BaseException as exc:
                    self.busy_t0 = 0
                    if self.stolen and my_seq in self.stolen:
                        self._returned(my_seq, h, pkt)
                        return
                    err = self.chain.failed(h, pkt, exc)
                    verdict = self._on_error
                    by = h.name
                    pkt._modified = False  # the error verdict applies to the packet as it arrived
                    pkt._mark = None
                    break
                if self.stolen and my_seq in self.stolen:
                    self._returned(my_seq, h, pkt)
                    return
                if v is not None:
                    self.busy_t0 = 0  # before any Python code of pktlab's own: no rescue from here on
                    if type(v) is not self.verdict_cls:
                        v, err = self.chain.bad_return(h, pkt, v)
                        if v is None:
                            v = self._on_error
                            pkt._modified = False  # as it arrived, as for a handler that raised
                            pkt._mark = None
                    verdict = v
                    by = h.name
                    break
            self.busy_t0 = 0
            self.busy_nf = None
            self.busy_data = None
            if verdict is None:
                verdict = self._default
            if pkt._modified and h is not None and len(pkt._buf) - record_offset(nf) > 65535:
                err = self.chain.failed(h, pkt, too_big(len(pkt._buf) - record_offset(nf)))
                verdict = self._on_error
                by = h.name
                pkt._modified = False
                pkt._mark = None
            code = verdict.code
            self._give_packet(nf, pkt, code, True)
            given = True
        except BaseException as exc:
            if not given:
                verdict = self._internal(nf, exc)
        if pkt is not None:
            modified = pkt._modified
            # only this frame references a packet the dispatcher made and no handler kept: reuse it
            if own and packet_recycle(pkt, 1):
                self.spare = pkt
            else:
                packet_done(pkt)
        if now == 0.0:  # the packet could not be made (pktlab's own failure)
            now = wall_time()
        off = record_offset(nf)
        if off > len(data):
            off = len(data)
        self.ring.push(now, nf.id, nf.hook, len(data) - off, <const unsigned char*>PyBytes_AS_STRING(data) + off,
                       len(data) - off, verdict.code, mono_ns() - t0, by, err, modified)
