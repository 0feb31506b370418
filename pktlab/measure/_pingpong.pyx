# cython: language_level=3, boundscheck=False, wraparound=False
"""NetPIPE's ping-pong, compiled: the timed loops run in C without the GIL.

A round trip is: the client writes ``size`` bytes, the server reads them all and
writes ``size`` bytes back, the client reads them all.  Python would add several
microseconds per message to both ends, which is the same order as the latency
being measured; NPtcp (C) is the reference, so the loop is C too.
"""

from libc.errno cimport errno, EINTR
from libc.stdlib cimport free
from posix.stdlib cimport posix_memalign
from libc.string cimport memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec


cdef extern from "<sys/socket.h>" nogil:
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    int MSG_NOSIGNAL


cdef int _send_all(int fd, const char* buf, long n) noexcept nogil:
    cdef long done = 0
    cdef ssize_t r
    while done < n:
        r = send(fd, buf + done, n - done, MSG_NOSIGNAL)
        if r < 0:
            if errno == EINTR:
                continue
            return -1
        done += r
    return 0


cdef int _recv_all(int fd, char* buf, long n) noexcept nogil:
    cdef long done = 0
    cdef ssize_t r
    while done < n:
        r = recv(fd, buf + done, n - done, 0)
        if r < 0:
            if errno == EINTR:
                continue
            return -1
        if r == 0:
            return -2  # the peer closed
        done += r
    return 0


# one buffer per process, grown as needed: a fresh allocation per call would page-fault
# through every large block once per trial (glibc maps big blocks anew each time).
# Page-aligned, as NPtcp's: glibc puts a big block 16 bytes into its own mapping, and on
# this AMD EPYC (FSRM) the kernel's copies between the socket's pages and a buffer at that
# offset ran at ~12 Gbit/s against ~30-55 for NPtcp, at exactly the sizes glibc mapped
# (loop run m22-1: "collapsed" at 5 of 24 sizes in all 7 runs; the heap-served sizes were fast)
cdef char* _buf = NULL
cdef long _cap = 0


cdef char* _buffer(long size) except NULL:
    global _buf, _cap
    cdef char* p
    if size > _cap:
        if posix_memalign(<void**>&p, 4096, size) != 0:
            raise MemoryError()
        memset(p, 0x5A, size)
        free(_buf)
        _buf = p
        _cap = size
    return _buf


cdef double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


def round_trips(int fd, long size, long count):
    """Time ``count`` round trips of ``size`` bytes on a connected socket; return the seconds taken."""
    cdef char* buf = _buffer(size if size > 0 else 1)
    cdef double t0, t1
    cdef long i
    cdef int err = 0
    with nogil:
        t0 = _now()
        for i in range(count):
            if _send_all(fd, buf, size) != 0:
                err = 1
                break
            err = _recv_all(fd, buf, size)
            if err != 0:
                break
        t1 = _now()
    if err == -2:
        raise ConnectionError("the ping-pong server closed the connection")
    if err != 0:
        raise OSError(errno, "ping-pong send/recv failed")
    return t1 - t0


def echo(int fd, long size, long count):
    """The server's half: ``count`` times, read ``size`` bytes and send them back."""
    cdef char* buf = _buffer(size if size > 0 else 1)
    cdef long i
    cdef int err = 0
    with nogil:
        for i in range(count):
            err = _recv_all(fd, buf, size)
            if err != 0:
                break
            if _send_all(fd, buf, size) != 0:
                err = 1
                break
    if err == -2:
        raise ConnectionError("the ping-pong client closed the connection")
    if err != 0:
        raise OSError(errno, "ping-pong echo failed")


# -- UDP: one datagram each way per round trip (connected sockets; a lost datagram times out) --
def round_trips_dgram(int fd, long size, long count):
    """Time ``count`` round trips of one ``size``-byte datagram on a connected UDP socket."""
    cdef char* buf = _buffer(size if size > 0 else 1)
    cdef double t0, t1
    cdef long i
    cdef ssize_t r = 0
    cdef int err = 0
    with nogil:
        t0 = _now()
        for i in range(count):
            if send(fd, buf, size, MSG_NOSIGNAL) != size:
                err = 1
                break
            r = recv(fd, buf, size, 0)
            if r != size:
                err = 2
                break
        t1 = _now()
    if err == 2 and r < 0:
        raise TimeoutError(f"a {size}-byte datagram or its echo was lost (no answer within the socket timeout)")
    if err != 0:
        raise OSError(errno, f"UDP ping-pong failed at {size} bytes")
    return t1 - t0


def echo_dgram(int fd, long size, long count):
    """The UDP server's half: ``count`` times, receive a datagram and send it back."""
    cdef char* buf = _buffer(size if size > 0 else 1)
    cdef long i
    cdef ssize_t r = 0
    cdef int err = 0
    with nogil:
        for i in range(count):
            r = recv(fd, buf, size, 0)
            if r < 0:
                err = 1
                break
            if send(fd, buf, r, MSG_NOSIGNAL) != r:
                err = 1
                break
    if err != 0:
        raise OSError(errno, "UDP echo failed (the client's datagram did not come)")
