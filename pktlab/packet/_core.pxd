# The packet core's declarations, for the dispatcher (pktlab/pipeline/_dispatch.pyx), and the three
# functions it calls on every packet, inline so that they cost no call across modules.
from cpython.object cimport PyObject
from cpython.ref cimport Py_REFCNT
from libc.string cimport memcpy

from pktlab._common cimport buf_ptr

cdef extern from *:
    """
    static int pktlab_has_weakrefs(PyObject* o) {
        Py_ssize_t off = Py_TYPE(o)->tp_weaklistoffset;
        return off > 0 && *(PyObject**)((char*)o + off) != NULL;
    }
    """
    bint has_weakrefs "pktlab_has_weakrefs"(PyObject* o)


cdef class ViewCore


cdef class PacketCore:
    cdef public object _meta
    # The packet's bytes: ``_data`` (bytes, or a bytearray once written), or, while a handler sees a packet of
    # the queue, the queue message's own buffer (``_mptr``/``_mlen``, ``_data`` None): no copy is made until a
    # write (``_writable``), a read of the whole buffer from Python (the ``_buf`` property), or the packet
    # outliving its message (``_own``, which the dispatcher calls before the reader reads into that buffer again)
    cdef object _data
    cdef const unsigned char* _mptr
    cdef Py_ssize_t _mlen
    # payloads already made as bytes, for sequence adjustment, which reads a rewritten TCP packet's payload as it
    # arrived and as the handler left it (64 KiB each on GSO packets): ``_arrived`` is the bytes from
    # ``_arrived_at`` to the end as the packet arrived (a read made while it lay over its queue message, which no
    # write has touched); ``_set`` the bytes from ``_set_at`` to the end that a write put there and no write
    # touched since.  Dropped by any other write and once the packet is done (see clear_payloads)
    cdef bytes _arrived
    cdef Py_ssize_t _arrived_at
    cdef bytes _set
    cdef Py_ssize_t _set_at
    # the one's-complement sum of the bytes from ``_set_at`` to the end (as ``csum_add`` gives it), made while a
    # write copied them in: the checksum fix-up then sums only the headers in front of them (valid while
    # ``_set_summed``, for a packet of ``_set_end`` bytes; ``_set`` holds them as bytes, or is None)
    cdef unsigned long long _set_sum
    cdef bint _set_summed
    cdef Py_ssize_t _set_end
    # the bytes from ``_set_at`` on are those the packet arrived with, in the same place: its first write changed
    # only bytes in front of its transport payload, and copied that payload with its sum (``_writable_head``)
    cdef bint _set_arrived
    # ``_data`` (bytes) is what the packet arrived with: a captured packet's bytes, or a queue message's copied out
    # (``_own``); not bytes a handler set (``_buf``)
    cdef bint _data_arrived
    # the bytearray went to the kernel by reference (the verdict writer's thread reads it after the verdict):
    # the next write copies it first
    cdef public bint _shared
    cdef public bint _dirty
    cdef public bint _modified
    cdef public object _mark
    cdef public object _owner  # (uid, gid) of the local socket the packet belongs to, from the queue (None: none)
    cdef public object _send  # where pkt.reply sends: the session's Sender (None: the packet has no session)
    cdef public object _flow  # the packet's Flow, or the session's flow table until tracking starts (None: no session)
    cdef public int _skbinfo  # the kernel's NFQA_SKB_INFO flags (1 checksum not ready, 2 GSO, 4 not verified)
    cdef public Py_ssize_t _wire  # the packet's whole length when only its first part was copied (0: copied whole)
    cdef public bint _short  # a read or write needed bytes that were not copied (the dispatcher may copy again)
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

    cpdef object _writable(self)
    cpdef object _writable_head(self, Py_ssize_t end)
    cpdef object _own(self)
    cpdef object _lend(self)
    cpdef bytes _bytes(self, Py_ssize_t start, Py_ssize_t end)
    cpdef int _replace(self, Py_ssize_t start, Py_ssize_t end, object data) except -1
    cpdef Py_ssize_t _size(self)
    cpdef int _need(self, Py_ssize_t end, str what) except -1
    cpdef void _relayout(self)
    cdef int _find_l4(self) except -1
    cdef Py_ssize_t _payload_at(self) except -2
    cdef object _copy_summed(self, Py_ssize_t at)
    cpdef tuple _upper(self)
    cdef object _layer(self, int proto, object cls)
    cdef object _whole(self, int version, object cls)


cdef class ViewCore:
    cdef public PacketCore _pkt
    cdef public Py_ssize_t _off

    cdef Py_ssize_t _payload_start(self) except -1


cdef inline Py_ssize_t ethernet_l3(const unsigned char* p, Py_ssize_t n) noexcept:
    """Where the IP header of an Ethernet frame starts (after up to three VLAN tags), or -1 if not IP."""
    cdef unsigned int etype
    cdef Py_ssize_t off = 14
    if n < 14:
        return -1
    etype = (p[12] << 8) | p[13]
    while (etype == 0x8100 or etype == 0x88A8) and n >= off + 4:
        etype = (p[off + 2] << 8) | p[off + 3]
        off += 4
        if off > 26:
            break
    return off if etype == 0x0800 or etype == 0x86DD else -1


cdef inline const unsigned char* pkt_ptr(PacketCore pkt, Py_ssize_t* n) except NULL:
    """The packet's bytes and their length, wherever they are (the queue message's buffer or its own)."""
    if pkt._mptr != NULL:
        n[0] = pkt._mlen
        return pkt._mptr
    return buf_ptr(pkt._data, n)


cdef inline Py_ssize_t pkt_size(PacketCore pkt) except -1:
    cdef Py_ssize_t n
    pkt_ptr(pkt, &n)
    return n


cdef inline void clear_payloads(PacketCore pkt) noexcept:
    """Forget the payloads kept as bytes (the packet's bytes changed, or it is done: no memory held twice)."""
    pkt._arrived = None
    pkt._set = None
    pkt._set_summed = False
    pkt._set_arrived = False
    pkt._data_arrived = False


cdef inline bint payload_as_arrived(PacketCore pkt, Py_ssize_t start, Py_ssize_t n) noexcept:
    """Whether the packet's bytes from ``start`` to its end ``n`` are known to be those it arrived with, in the
    same place (a write changed only headers in front of its transport payload, which starts at ``start``)."""
    return pkt._set_arrived and pkt._set_at == start and pkt._set_end == n


cdef inline bint as_arrived(PacketCore pkt, PacketCore orig) noexcept:
    """Whether ``pkt`` holds the very bytes ``orig`` holds, whole, unwritten (over the same queue message, or the
    same bytes object): giving it ``orig``'s bytes again would change nothing."""
    if pkt._wire:
        return False
    if pkt._mptr != NULL:
        return pkt._mptr == orig._mptr and pkt._mlen == orig._mlen
    return orig._mptr == NULL and type(pkt._data) is bytes and pkt._data is orig._data


cdef inline bytes arrived_payload(PacketCore pkt, Py_ssize_t start, Py_ssize_t n):
    """The packet's bytes from ``start`` to ``n`` as it arrived, if a read already made them (else None)."""
    if pkt._arrived is not None and pkt._arrived_at == start and len(pkt._arrived) == n - start:
        return pkt._arrived
    return None


cdef inline bytes set_payload(PacketCore pkt, Py_ssize_t start, Py_ssize_t n):
    """The packet's bytes from ``start`` to its end ``n`` now, if the write that put them there made them."""
    if pkt._set is not None and pkt._set_at == start and len(pkt._set) == n - start:
        return pkt._set
    return None


cdef inline void packet_over(PacketCore pkt, const unsigned char* p, Py_ssize_t n) noexcept:
    """Put the packet over a queue message's buffer (valid until the dispatcher is done with the message)."""
    clear_payloads(pkt)
    pkt._shared = False
    pkt._data = None
    pkt._mptr = p if p != NULL else <const unsigned char*>""
    pkt._mlen = n if p != NULL else 0


cdef inline PacketCore Packet_from(object cls, object meta, object data, double now):
    """A packet of class ``cls`` on ``data`` (the dispatcher's construction, without __init__)."""
    cdef PacketCore pkt = PacketCore.__new__(cls)
    pkt._meta = meta
    pkt._data = data
    pkt._mptr = NULL
    clear_payloads(pkt)
    pkt._shared = False
    pkt._mark = None
    pkt._flow = None
    pkt._send = None
    pkt._owner = None
    pkt._ipv = None
    pkt._l4v = None
    pkt._wire = 0
    pkt._short = False
    pkt.time = now
    return pkt


cdef inline int packet_done(PacketCore pkt) except -1:
    """Once its verdict is given: break the packet <-> view cycle, so it is freed at once, not by the GC, and
    give a packet over a queue message bytes of its own (whoever keeps it, the message's buffer is read into
    again)."""
    pkt._ipv = None
    pkt._l4v = None
    clear_payloads(pkt)  # (not _shared: the verdict writer may still be reading the packet's bytearray)
    if pkt._mptr != NULL:
        pkt._own()
    return 0


cdef inline bint packet_recycle(PacketCore pkt, Py_ssize_t refs) except -1:
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
    pkt._data = None
    pkt._mptr = NULL
    clear_payloads(pkt)
    pkt._shared = False
    pkt._mark = None
    pkt._flow = None
    pkt._send = None
    pkt._owner = None
    pkt._dirty = False
    pkt._modified = False
    pkt._l4known = False
    pkt._wire = 0
    pkt._short = False
    return True


cpdef fix_packet(PacketCore pkt)


# One's-complement checksums (RFC 1071), shared with what cuts GSO packets (pktlab/kernel/_resend.pyx)
cdef extern from *:
    """
    #define PKTLAB_LITTLE (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    /* Copy the first n - n % 32 bytes of p to o and return the sum of their 32-bit words in the machine's byte
       order (what csum_add sums before it folds); *done is how many were copied (0 without SSE2). One pass: the
       sum is made while the bytes are in registers, where a copy and then a checksum read them twice. */
    static unsigned long long pktlab_copy_sum(unsigned char* o, const unsigned char* p, Py_ssize_t n,
                                              Py_ssize_t* done) {
    #if defined(__SSE2__)
        __m128i a1 = _mm_setzero_si128(), a2 = _mm_setzero_si128(), z = _mm_setzero_si128();
        unsigned long long r[2];
        Py_ssize_t i = 0;
        for (; i + 32 <= n; i += 32) {
            __m128i v = _mm_loadu_si128((const __m128i*)(p + i));
            __m128i w = _mm_loadu_si128((const __m128i*)(p + i + 16));
            _mm_storeu_si128((__m128i*)(o + i), v);
            _mm_storeu_si128((__m128i*)(o + i + 16), w);
            a1 = _mm_add_epi64(a1, _mm_add_epi64(_mm_unpacklo_epi32(v, z), _mm_unpackhi_epi32(v, z)));
            a2 = _mm_add_epi64(a2, _mm_add_epi64(_mm_unpacklo_epi32(w, z), _mm_unpackhi_epi32(w, z)));
        }
        _mm_storeu_si128((__m128i*)r, _mm_add_epi64(a1, a2));
        *done = i;
        return r[0] + r[1];
    #else
        (void)o; (void)p; (void)n;
        *done = 0;
        return 0;
    #endif
    }
    """
    bint PKTLAB_LITTLE
    unsigned long long pktlab_copy_sum(unsigned char* o, const unsigned char* p, Py_ssize_t n,
                                       Py_ssize_t* done) noexcept nogil


cdef inline unsigned long long csum_add(const unsigned char* p, Py_ssize_t n, unsigned long long s) noexcept nogil:
    """Add ``n`` bytes to a one's-complement sum as big-endian 16-bit words.

    Summed four bytes at a time in the machine's byte order, folded, and swapped back (RFC 1071:
    the one's-complement sum does not depend on byte order): a rewritten 64 KiB GSO packet's
    checksum took ~50 us two bytes at a time, most of a NAT handler's cost per packet.
    """
    cdef unsigned long long acc = 0
    cdef unsigned long long acc2 = 0
    cdef unsigned long long a
    cdef unsigned long long b
    cdef unsigned int w
    cdef unsigned short h
    cdef Py_ssize_t i = 0
    while i + 16 <= n:  # two 8-byte words per turn, their 32-bit halves into two sums (no carries lost)
        memcpy(&a, p + i, 8)
        memcpy(&b, p + i + 8, 8)
        acc += <unsigned int>a + (a >> 32)
        acc2 += <unsigned int>b + (b >> 32)
        i += 16
    acc += acc2
    while i + 4 <= n:
        memcpy(&w, p + i, 4)
        acc += w
        i += 4
    if i + 2 <= n:
        memcpy(&h, p + i, 2)
        acc += h
        i += 2
    if i < n:  # the last odd byte is the high byte of a big-endian word
        acc += p[i] if PKTLAB_LITTLE else (<unsigned long long>p[i]) << 8
    return s + csum_finish(acc)


cdef inline unsigned int fold16(unsigned long long s) noexcept nogil:
    """A one's-complement sum folded to 16 bits (its carries added back in)."""
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return <unsigned int>s


cdef inline unsigned int swap16(unsigned int s) noexcept nogil:
    return ((s & 0xFF) << 8) | (s >> 8)


cdef inline unsigned long long csum_finish(unsigned long long acc) noexcept nogil:
    """A sum of words in the machine's byte order folded to 16 bits, as a big-endian word."""
    return swap16(fold16(acc)) if PKTLAB_LITTLE else fold16(acc)


cdef inline unsigned long long csum_copy(unsigned char* o, const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """Copy ``n`` bytes from ``p`` to ``o`` and return ``csum_add(p, n, 0)``, in one pass where the CPU allows."""
    cdef Py_ssize_t done = 0
    cdef unsigned long long acc = pktlab_copy_sum(o, p, n, &done)
    memcpy(o + done, p + done, n - done)
    return csum_finish(acc) + csum_add(p + done, n - done, 0)  # (done is even: the rest's words line up)


cdef inline unsigned int csum_shift(unsigned long long s, bint odd) noexcept nogil:
    """A sum made of bytes as if they started at an even offset, folded, for bytes that start at an odd one
    (RFC 1071: the sum of the same words one byte over is the byte-swapped sum)."""
    return swap16(fold16(s)) if odd else fold16(s)


cdef inline unsigned int csum_fold(unsigned long long s) noexcept nogil:
    """The checksum field's value: the folded sum, complemented."""
    return (~fold16(s)) & 0xFFFF


cdef inline void put16(unsigned char* p, unsigned int v) noexcept nogil:
    p[0] = (v >> 8) & 0xFF
    p[1] = v & 0xFF
