# The verdict writer's declarations, for the dispatcher (pktlab/pipeline/_dispatch.pyx).
cimport cython
from cpython.buffer cimport Py_buffer

from pktlab._common cimport mutex_t


cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct cond_t "pthread_cond_t":
        pass


cdef enum:
    WRITER_SLOTS = 16  # writes waiting at most; the one who submits waits for room beyond that
    WRITER_STALE = 2 * WRITER_SLOTS  # written payloads' exports waiting for a thread holding the GIL to release


cdef struct WriteJob:
    unsigned char* buf  # the bytes of one write: verdict messages, in the order the kernel is to read them
    Py_ssize_t cap
    Py_ssize_t n
    # or, for a payload written where it lies (submit_view): ``buf`` holds the message's header, then the
    # payload is read from ``view`` (a buffer export of the packet's bytearray, so it cannot be resized), then
    # ``pad`` zero bytes
    Py_buffer view
    bint has_view
    Py_ssize_t pad
    unsigned char fallback[32]  # a plain verdict for a payload verdict's packet, written if that write fails
    bint has_fallback


@cython.final
cdef class VerdictWriter:
    cdef readonly int fd
    cdef mutex_t lock
    cdef cond_t more  # a write was submitted, or stop
    cdef cond_t room  # a slot was freed
    cdef cond_t done  # nothing waits (drain)
    cdef WriteJob jobs[WRITER_SLOTS]
    cdef int head  # the oldest write: in progress while ``count`` > 0 and ``busy``
    cdef int count  # writes submitted and not finished (the one in progress included)
    cdef bint stop
    cdef bint started
    cdef pthread_t thread
    cdef int pid  # the process that started it
    cdef public long long writes  # finished (failed ones included)
    cdef public long long failures
    cdef int last_errno
    cdef Py_buffer stale[WRITER_STALE]  # exports of written payloads whose slot was taken again without the GIL
    cdef int n_stale

    cdef bint waiting(self) noexcept nogil
    cdef WriteJob* _slot(self, Py_ssize_t need, int* err) noexcept nogil
    cdef void _queue(self, WriteJob* j, Py_ssize_t n, const unsigned char* fallback) noexcept nogil
    cdef int submit(self, const unsigned char* a, Py_ssize_t na, const unsigned char* b, Py_ssize_t nb,
                    const unsigned char* c, Py_ssize_t nc, const unsigned char* fallback) noexcept nogil
    cdef int submit_view(self, const unsigned char* head, Py_ssize_t nh, object payload, Py_ssize_t pad,
                         const unsigned char* fallback) except -1
    cdef int release_written(self) except -1
    cdef int take_errno(self) noexcept nogil
    cdef void drain(self) noexcept nogil
    cdef void close(self) noexcept nogil
    cdef void run(self) noexcept nogil
