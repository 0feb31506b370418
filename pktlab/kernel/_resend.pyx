# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Sending whole IP packets from a namespace's raw socket, in C: replies, and rewritten packets re-sent.

In a lab of user-namespace mode Linux drops a queued packet whose verdict carries a new payload
(``nfqnl_mangle`` answers EPERM when the packet's namespace belongs to a user namespace other than
the initial one), so there the dispatcher hands each rewritten packet to a :class:`Resender`
(``Dispatcher.reinject``) and drops the original.  That runs once per rewritten packet, on the
reader's thread: the send is made here without Python objects per packet (the destination's MTU
is remembered, the verdict's mark rides in an ``SO_MARK`` control message).  A raw socket does not
cut a GSO packet, so a TCP packet longer than its route's MTU is cut here as the kernel's
``tcp_gso_segment`` would (each segment its own sequence number, CWR only on the first, FIN and
PSH only on the last, IPv4 ids counting up, checksums computed), and all its segments leave in one
``sendmmsg``, their payloads read in place.

The sockets, the route's MTU and the words of an error come from the namespace's
:class:`pktlab.kernel.sender.RawSender`.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.pythread cimport (
    NOWAIT_LOCK,
    WAIT_LOCK,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_release_lock,
    PyThread_type_lock,
)
from libc.errno cimport EINTR, errno
from libc.stdlib cimport free, realloc
from libc.string cimport memcmp, memcpy, memset

from pktlab._common cimport iovec, mmsghdr, msghdr, socklen_t
from pktlab.packet._core cimport csum_add, csum_fold, put16

from pktlab.errors import PacketFormatError, SendError


cdef extern from "<sys/socket.h>" nogil:
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    cmsghdr* CMSG_FIRSTHDR(msghdr*)
    unsigned char* CMSG_DATA(cmsghdr*)
    size_t CMSG_SPACE(size_t)
    size_t CMSG_LEN(size_t)
    int sendmmsg(int fd, mmsghdr* msgs, unsigned int vlen, int flags)
    int SOL_SOCKET
    int SO_MARK
    int AF_INET
    int AF_INET6

cdef extern from "<netinet/in.h>" nogil:
    struct sockaddr_storage:
        pass
    struct in_addr:
        unsigned int s_addr
    struct sockaddr_in:
        unsigned short sin_family
        unsigned short sin_port
        in_addr sin_addr
    struct in6_addr:
        unsigned char s6_addr[16]
    struct sockaddr_in6:
        unsigned short sin6_family
        unsigned short sin6_port
        unsigned int sin6_flowinfo
        in6_addr sin6_addr
        unsigned int sin6_scope_id

cdef enum:
    TCP = 6
    FIN = 0x01
    PSH = 0x08
    CWR = 0x80
    MAX_BATCH = 1024  # UIO_MAXIOV: the most messages one sendmmsg takes
    HEAD_ROOM = 120  # a segment's headers: at most 60 (IPv4 with options) + 60 (TCP with options)


cdef struct Cut:
    Py_ssize_t ip_len  # the IP header's length (IPv4 with options; IPv6: 40, no extension headers)
    Py_ssize_t head_len  # IP and TCP headers
    Py_ssize_t mss  # payload bytes per segment
    Py_ssize_t count  # segments


cdef int _plan(const unsigned char* p, Py_ssize_t n, Py_ssize_t mtu, Cut* cut) except -1:
    """How the TCP packet ``p`` is cut into packets of at most ``mtu`` bytes (raises PacketFormatError)."""
    cdef int version = p[0] >> 4
    cdef int proto
    if version == 4 and n >= 20:
        cut.ip_len = (p[0] & 0x0F) * 4
        proto = p[9]
    elif version == 6 and n >= 40:
        cut.ip_len = 40
        proto = p[6]
    else:
        raise PacketFormatError(f"a {n}-byte packet of IP version {version} cannot be cut into segments")
    if proto != TCP:
        raise PacketFormatError(f"only TCP packets are cut into segments here (protocol {proto})")
    if n < cut.ip_len + 20:
        raise PacketFormatError(f"a {n}-byte packet is too short for its TCP header")
    cut.head_len = cut.ip_len + (p[cut.ip_len + 12] >> 4) * 4
    if cut.head_len < cut.ip_len + 20 or cut.head_len > n:
        raise PacketFormatError(f"the TCP header's length does not fit the {n}-byte packet")
    cut.mss = mtu - cut.head_len
    if cut.mss <= 0:
        raise PacketFormatError(f"an MTU of {mtu} bytes leaves no room after {cut.head_len} bytes of headers")
    cut.count = 1 if n <= mtu else (n - cut.head_len + cut.mss - 1) // cut.mss
    return 0


cdef void _segment_head(const unsigned char* p, Py_ssize_t n, Cut* cut, Py_ssize_t i, unsigned char* h) noexcept nogil:
    """Segment ``i``'s headers into ``h``: sequence number, flags, IP id and length, both checksums."""
    cdef Py_ssize_t ip_len = cut.ip_len
    cdef Py_ssize_t start = cut.head_len + i * cut.mss
    cdef Py_ssize_t size = cut.mss if n - start > cut.mss else n - start
    cdef unsigned int seq = ((<unsigned int>p[ip_len + 4] << 24) | (p[ip_len + 5] << 16) | (p[ip_len + 6] << 8)
                             | p[ip_len + 7]) + <unsigned int>(i * cut.mss)
    cdef unsigned int flags = p[ip_len + 13]
    cdef unsigned int tcp_len = <unsigned int>(cut.head_len - ip_len + size)
    cdef unsigned long long s
    memcpy(h, p, cut.head_len)
    h[ip_len + 4] = (seq >> 24) & 0xFF
    h[ip_len + 5] = (seq >> 16) & 0xFF
    h[ip_len + 6] = (seq >> 8) & 0xFF
    h[ip_len + 7] = seq & 0xFF
    if i:
        flags &= ~CWR
    if i < cut.count - 1:
        flags &= ~(FIN | PSH)
    h[ip_len + 13] = flags
    if p[0] >> 4 == 4:
        put16(h + 2, <unsigned int>(cut.head_len + size))
        put16(h + 4, ((p[4] << 8) + p[5] + <unsigned int>i) & 0xFFFF)
        put16(h + 10, 0)
        put16(h + 10, csum_fold(csum_add(h, ip_len, 0)))
        s = csum_add(h + 12, 8, 0)
    else:
        put16(h + 4, tcp_len)
        s = csum_add(h + 8, 32, 0)
    s += TCP + (tcp_len >> 16) + (tcp_len & 0xFFFF)
    put16(h + ip_len + 16, 0)
    s = csum_add(h + ip_len, cut.head_len - ip_len, s)
    s = csum_add(p + start, size, s)
    put16(h + ip_len + 16, csum_fold(s))


def tcp_segments(bytes data, Py_ssize_t mtu):
    """``data`` (an IPv4 or IPv6 TCP packet) as packets of at most ``mtu`` bytes, checksums computed.

    What :class:`Resender` sends for a rewritten GSO packet; a packet that fits is returned whole.
    """
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Cut cut
    cdef Py_ssize_t i, start, size
    cdef bytes seg
    cdef unsigned char* h
    _plan(p, n, mtu, &cut)
    if n <= mtu:
        return [data]
    out = []
    for i in range(cut.count):
        start = cut.head_len + i * cut.mss
        size = cut.mss if n - start > cut.mss else n - start
        seg = PyBytes_FromStringAndSize(NULL, cut.head_len + size)
        h = <unsigned char*>PyBytes_AS_STRING(seg)
        _segment_head(p, n, &cut, i, h)
        memcpy(h + cut.head_len, p + start, size)
        out.append(seg)
    return out


cdef class Resender:
    """Sends IP packets (checked and checksummed by the caller) from one namespace's raw sockets.

    ``resender(data, mark)`` sends a rewritten packet, a GSO TCP packet cut into segments;
    ``send(data, mark, cut)``: ``cut=False`` refuses what does not fit the route (a reply).
    ``sent_mark``: the mark bit added to a given mark (the socket's own mark carries it otherwise).
    ``raw`` is the namespace's :class:`~pktlab.kernel.sender.RawSender`: ``fileno(version)`` opens
    its socket, ``path_mtu(data)`` finds the route's MTU, ``failure(errno, data)`` words an error.
    """

    cdef object raw
    cdef unsigned int sent_mark  # the mark bit of everything pktlab sends, added to a verdict's mark
    cdef int fd4
    cdef int fd6
    cdef unsigned char last_dst[16]  # the destination whose route's MTU is remembered
    cdef int last_version
    cdef Py_ssize_t last_mtu
    cdef unsigned char* heads  # the segments' headers of one GSO packet (grown as needed)
    cdef mmsghdr* msgs
    cdef iovec* iovs
    cdef Py_ssize_t room  # segments the three buffers hold
    # held while the buffers above are filled and sent: the reader re-sends rewrites and pkt.reply, while
    # a notebook thread may s.send(); the sendmmsg runs without the GIL, so the GIL alone does not guard them
    cdef PyThread_type_lock lock

    def __cinit__(self, raw, unsigned int sent_mark):
        self.lock = PyThread_allocate_lock()
        if self.lock == NULL:
            raise MemoryError()
        self.raw = raw
        self.sent_mark = sent_mark
        self.fd4 = -1
        self.fd6 = -1
        self.last_version = 0

    def __dealloc__(self):
        if self.lock != NULL:
            PyThread_free_lock(self.lock)
        free(self.heads)
        free(self.msgs)
        free(self.iovs)

    def forget(self) -> None:
        """Forget the sockets (their RawSender closed them): the next send opens them again."""
        self.fd4 = -1
        self.fd6 = -1
        self.last_version = 0

    def __call__(self, bytes data, mark) -> None:
        self.send(data, mark, True)

    cpdef send(self, bytes data, object mark, bint cut):
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef int version = p[0] >> 4 if n else 0
        cdef Py_ssize_t mtu
        cdef Cut plan
        cdef sockaddr_in6 addr  # large enough for either family
        cdef socklen_t addr_len
        cdef char control[64]  # CMSG_SPACE(4) for SO_MARK
        cdef size_t control_len = 0
        cdef cmsghdr* cm
        cdef msghdr probe
        cdef unsigned int mark_value
        cdef int fd
        if not ((version == 4 and n >= 20) or (version == 6 and n >= 40)):
            raise SendError(f"a {n}-byte packet of IP version {version} cannot be sent; send an IPv4 or IPv6 packet")
        fd = self._fd(version)
        memset(&addr, 0, sizeof(addr))
        if version == 4:
            (<sockaddr_in*>&addr).sin_family = AF_INET
            memcpy(&(<sockaddr_in*>&addr).sin_addr, p + 16, 4)
            addr_len = sizeof(sockaddr_in)
        else:
            addr.sin6_family = AF_INET6
            memcpy(&addr.sin6_addr, p + 24, 16)
            addr_len = sizeof(sockaddr_in6)
        if mark is not None:
            mark_value = (<unsigned int>(mark & 0xFFFFFFFF)) | self.sent_mark
            memset(control, 0, sizeof(control))
            memset(&probe, 0, sizeof(probe))
            probe.msg_control = control
            probe.msg_controllen = CMSG_SPACE(4)
            cm = CMSG_FIRSTHDR(&probe)
            cm.cmsg_level = SOL_SOCKET
            cm.cmsg_type = SO_MARK
            cm.cmsg_len = CMSG_LEN(4)
            memcpy(CMSG_DATA(cm), &mark_value, 4)
            control_len = CMSG_SPACE(4)
        plan.count = 1
        plan.head_len = 0
        if cut:
            mtu = self._mtu(version, p, data)
            if n > mtu:
                if (p[9] if version == 4 else p[6]) != TCP:
                    raise SendError(
                        f"the rewritten {n:,}-byte GSO packet is longer than its route's MTU ({mtu}) and only TCP "
                        "can be cut into segments here; attach with gso=False (--no-gso) to rewrite it"
                    )
                _plan(p, n, mtu, &plan)
        if not PyThread_acquire_lock(self.lock, NOWAIT_LOCK):
            with nogil:  # the holder needs the GIL back to finish
                PyThread_acquire_lock(self.lock, WAIT_LOCK)
        try:
            self._room(plan.count)
            self._fill(p, n, &plan, &addr, addr_len, control if control_len else NULL, control_len)
            self._send_all(fd, plan.count, data)
        finally:
            PyThread_release_lock(self.lock)

    cdef int _fd(self, int version) except -1:
        if version == 4 and self.fd4 >= 0:
            return self.fd4
        if version == 6 and self.fd6 >= 0:
            return self.fd6
        fd = self.raw.fileno(version)
        if version == 4:
            self.fd4 = fd
        else:
            self.fd6 = fd
        return fd

    cdef Py_ssize_t _mtu(self, int version, const unsigned char* p, bytes data) except -1:
        cdef const unsigned char* dst = p + (16 if version == 4 else 24)
        cdef int size = 4 if version == 4 else 16
        if version == self.last_version and memcmp(self.last_dst, dst, size) == 0:
            return self.last_mtu
        self.last_mtu = self.raw.path_mtu(data)
        memcpy(self.last_dst, dst, size)
        self.last_version = version
        return self.last_mtu

    cdef int _room(self, Py_ssize_t count) except -1:
        cdef void* grown
        if count <= self.room:
            return 0
        grown = realloc(self.heads, count * HEAD_ROOM)
        if grown == NULL:
            raise MemoryError()
        self.heads = <unsigned char*>grown
        grown = realloc(self.msgs, count * sizeof(mmsghdr))
        if grown == NULL:
            raise MemoryError()
        self.msgs = <mmsghdr*>grown
        grown = realloc(self.iovs, count * 2 * sizeof(iovec))
        if grown == NULL:
            raise MemoryError()
        self.iovs = <iovec*>grown
        self.room = count
        return 0

    cdef void _fill(self, const unsigned char* p, Py_ssize_t n, Cut* plan, sockaddr_in6* addr,
                    socklen_t addr_len, char* control, size_t control_len) noexcept:
        """One message per packet to send: the packet itself, or each segment's headers and payload."""
        cdef Py_ssize_t i, start
        cdef msghdr* m
        cdef unsigned char* h
        memset(self.msgs, 0, plan.count * sizeof(mmsghdr))
        for i in range(plan.count):
            m = &self.msgs[i].msg_hdr
            m.msg_name = addr
            m.msg_namelen = addr_len
            m.msg_control = control
            m.msg_controllen = control_len
            m.msg_iov = &self.iovs[2 * i]
            if plan.head_len == 0:  # whole
                self.iovs[2 * i].iov_base = <void*>p
                self.iovs[2 * i].iov_len = n
                m.msg_iovlen = 1
                continue
            h = self.heads + i * HEAD_ROOM
            _segment_head(p, n, plan, i, h)
            start = plan.head_len + i * plan.mss
            self.iovs[2 * i].iov_base = h
            self.iovs[2 * i].iov_len = plan.head_len
            self.iovs[2 * i + 1].iov_base = <void*>(p + start)
            self.iovs[2 * i + 1].iov_len = plan.mss if n - start > plan.mss else n - start
            m.msg_iovlen = 2

    cdef int _send_all(self, int fd, Py_ssize_t count, bytes data) except -1:
        cdef Py_ssize_t done = 0
        cdef int sent
        cdef int err = 0
        cdef unsigned int batch
        while done < count:
            batch = <unsigned int>(count - done if count - done < MAX_BATCH else MAX_BATCH)
            with nogil:
                sent = sendmmsg(fd, self.msgs + done, batch, 0)
                if sent < 0:
                    err = errno
            if sent < 0:
                if err == EINTR:
                    continue
                exc = self.raw.failure(err, data)
                if done:
                    exc.args = (f"{exc.args[0]} ({done} of its {count} segments had left)",)
                raise exc
            done += sent
        return 0

