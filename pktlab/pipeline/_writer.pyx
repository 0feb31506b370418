# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The verdict writer: a thread of its own that writes large verdicts to the queue's socket, in order.

A verdict with a new payload runs the kernel's whole path for that packet inside the ``write`` that
carries it: the payload is copied into the packet (a grown GSO packet is copied whole first), the packet
is reinjected, forwarded and, on a lab, received by the peer's TCP — about half the queue reader's time
when a handler rewrites every GSO packet of a stream.  Written from this thread, that work runs on another
CPU while the reader reads and dispatches the next packets.

Order is kept: the dispatcher submits writes here under its verdict lock and, while any write waits here,
submits every later write too (a batch verdict names "every packet up to id N": it must not reach the
kernel before a verdict of its own for a packet below N).  The thread takes neither the GIL nor the
dispatcher's lock; submitting waits only when ``WRITER_SLOTS`` writes wait already.  A payload verdict whose
write fails is followed by a plain verdict for its packet (every packet gets one verdict); the failure is
counted and its errno kept for the dispatcher to report.

Small writes (a buffer of verdicts) are copied in.  A large payload is written where it lies, in the packet's
bytearray (:meth:`VerdictWriter.submit_view`): a buffer export holds it (it cannot be resized) until a thread
holding the GIL releases it after the write (the next large submit, or ``finish``); the packet copies its
bytes before any later write of its own (``PacketCore._shared``).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.errno cimport EBADF, EINTR, ENOMEM, EIO, errno
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memset
from posix.signal cimport sigfillset
from posix.types cimport sigset_t
from posix.unistd cimport getpid, write

from pktlab._common cimport mutex_destroy, mutex_init_adaptive, mutex_lock, mutex_unlock

cdef extern from "<pthread.h>" nogil:
    int cond_init "pthread_cond_init"(cond_t* c, void* attr)
    int cond_wait "pthread_cond_wait"(cond_t* c, mutex_t* m)
    int cond_signal "pthread_cond_signal"(cond_t* c)
    int cond_broadcast "pthread_cond_broadcast"(cond_t* c)
    int cond_destroy "pthread_cond_destroy"(cond_t* c)
    int pthread_create(pthread_t* t, void* attr, void* (*fn)(void*) noexcept nogil, void* arg)
    int pthread_join(pthread_t t, void** result)
    int pthread_sigmask(int how, const sigset_t* new, sigset_t* old)
    int pthread_setname_np(pthread_t t, const char* name)

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len
    ssize_t writev(int fd, const iovec* iov, int iovcnt)

cdef extern from "<signal.h>" nogil:
    enum:
        SIG_BLOCK


cdef void* writer_main(void* arg) noexcept nogil:
    (<VerdictWriter>arg).run()
    return NULL


cdef class VerdictWriter:
    """Writes to ``fd`` what is submitted, in order, from a thread started by the first submit."""

    def __cinit__(self, int fd):
        self.fd = fd
        mutex_init_adaptive(&self.lock)  # held for a few instructions by each side
        cond_init(&self.more, NULL)
        cond_init(&self.room, NULL)
        cond_init(&self.done, NULL)

    def __dealloc__(self):
        cdef int i
        self.close()
        self.release_written()
        for i in range(WRITER_SLOTS):
            free(self.jobs[i].buf)
        cond_destroy(&self.more)
        cond_destroy(&self.room)
        cond_destroy(&self.done)
        mutex_destroy(&self.lock)

    @property
    def pending(self) -> int:
        """Writes submitted and not finished."""
        return self.count

    def write(self, data: bytes, fallback: bytes | None = None) -> None:
        """Queue ``data`` to be written in one write (``fallback``: 32 bytes written if that write fails)."""
        cdef int e
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef const unsigned char* f = NULL
        if fallback is not None:
            if len(fallback) != 32:
                raise ValueError("a fallback verdict is 32 bytes")
            f = <const unsigned char*>PyBytes_AS_STRING(fallback)
        with nogil:  # it may wait for room, and the thread that empties the other end may need the GIL
            e = self.submit(p, n, NULL, 0, NULL, 0, f)
        if e:
            raise OSError(e, "the verdict writer refused the write")

    def write_view(self, bytes head, payload, fallback: bytes | None = None) -> None:
        """Queue one write of ``head`` and then of ``payload`` (a bytearray) where it lies, padded to 4 bytes:
        the payload is not copied, and cannot be resized until written."""
        cdef Py_ssize_t pad = ((len(payload) + 3) & ~3) - len(payload)
        cdef int e
        if fallback is not None and len(fallback) != 32:
            raise ValueError("a fallback verdict is 32 bytes")
        e = self.submit_view(<const unsigned char*>PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head), payload, pad,
                             NULL if fallback is None else <const unsigned char*>PyBytes_AS_STRING(fallback))
        if e:
            raise OSError(e, "the verdict writer refused the write")

    def finish(self) -> None:
        """Write what waits, then end the thread; later writes are refused."""
        with nogil:
            self.close()
        self.release_written()

    def wait_written(self) -> None:
        """Return once everything submitted has been written."""
        with nogil:
            self.drain()

    cdef bint waiting(self) noexcept nogil:
        """Whether a write waits or is in progress (a later write must then be submitted, not made)."""
        cdef bint w
        mutex_lock(&self.lock)
        w = self.count > 0
        mutex_unlock(&self.lock)
        return w

    cdef WriteJob* _slot(self, Py_ssize_t need, int* err) noexcept nogil:
        """The next free slot, with room for ``need`` bytes (the thread started if need be, waiting for room if
        every slot waits); NULL with ``err`` set when refused (stopped, no thread, no memory).  The slot is the
        submitter's until :meth:`_queue` (one submitter at a time: the dispatcher's lock)."""
        cdef WriteJob* j
        cdef unsigned char* grown
        mutex_lock(&self.lock)
        if self.stop:
            mutex_unlock(&self.lock)
            err[0] = EBADF
            return NULL
        if not self.started:
            if pthread_create(&self.thread, NULL, writer_main, <void*>self) != 0:
                mutex_unlock(&self.lock)
                err[0] = errno or EIO
                return NULL
            self.started = True
            self.pid = getpid()
            pthread_setname_np(self.thread, "pktlab-writer")  # as ps -L and top -H show it
        while self.count == WRITER_SLOTS:
            cond_wait(&self.room, &self.lock)
        j = &self.jobs[(self.head + self.count) % WRITER_SLOTS]
        mutex_unlock(&self.lock)
        if j.has_view:  # a written payload's export, released later by a thread holding the GIL
            # (never full: exports are made only by submit_view, which first releases every written one, so
            # at most WRITER_SLOTS + 1 wait here)
            self.stale[self.n_stale] = j.view
            self.n_stale += 1
            j.has_view = False
        if j.cap < need:
            grown = <unsigned char*>realloc(j.buf, need)
            if grown == NULL:
                err[0] = ENOMEM
                return NULL
            j.buf, j.cap = grown, need
        return j

    cdef void _queue(self, WriteJob* j, Py_ssize_t n, const unsigned char* fallback) noexcept nogil:
        """Hand the filled slot (``n`` bytes of its buffer) to the thread."""
        j.n = n
        j.has_fallback = fallback != NULL
        if fallback != NULL:
            memcpy(j.fallback, fallback, 32)
        mutex_lock(&self.lock)
        self.count += 1
        cond_signal(&self.more)
        mutex_unlock(&self.lock)

    cdef int submit(self, const unsigned char* a, Py_ssize_t na, const unsigned char* b, Py_ssize_t nb,
                    const unsigned char* c, Py_ssize_t nc, const unsigned char* fallback) noexcept nogil:
        """Queue one write of ``a``, ``b`` and ``c`` (copied) behind the waiting ones; ``fallback``: a plain
        verdict (32 bytes) written if it fails, or NULL.  0, or an errno (nothing was queued: the caller
        writes it itself)."""
        cdef int err = 0
        cdef WriteJob* j = self._slot(na + nb + nc, &err)
        if j == NULL:
            return err
        memcpy(j.buf, a, na)
        if nb:
            memcpy(j.buf + na, b, nb)
        if nc:
            memcpy(j.buf + na + nb, c, nc)
        j.pad = 0
        self._queue(j, na + nb + nc, fallback)
        return 0

    cdef int submit_view(self, const unsigned char* head, Py_ssize_t nh, object payload, Py_ssize_t pad,
                         const unsigned char* fallback) except -1:
        """Queue one write of ``head`` (copied) and of ``payload``'s buffer where it lies (not copied: a buffer
        export holds it, released once written), then ``pad`` zero bytes.  Holding the GIL (the export is made and
        released with it); may wait for room, which the thread makes without the GIL.  0, or an errno (nothing
        was queued: the caller writes it itself)."""
        cdef int err = 0
        cdef WriteJob* j
        self.release_written()
        j = self._slot(nh, &err)
        if j == NULL:
            return err
        PyObject_GetBuffer(payload, &j.view, PyBUF_SIMPLE)
        j.has_view = True
        memcpy(j.buf, head, nh)
        j.pad = pad
        self._queue(j, nh, fallback)
        return 0

    cdef int release_written(self) except -1:
        """Release the exports of payloads already written (holding the GIL)."""
        cdef Py_buffer done[WRITER_SLOTS + WRITER_STALE]
        cdef int n = 0, i, k
        mutex_lock(&self.lock)
        for i in range(WRITER_SLOTS):
            k = (i - self.head) % WRITER_SLOTS
            if k < 0:
                k += WRITER_SLOTS
            if k >= self.count and self.jobs[i].has_view:  # not waiting nor being written
                done[n] = self.jobs[i].view
                n += 1
                self.jobs[i].has_view = False
        for i in range(self.n_stale):
            done[n] = self.stale[i]
            n += 1
        self.n_stale = 0
        mutex_unlock(&self.lock)
        for i in range(n):
            PyBuffer_Release(&done[i])
        return 0

    cdef int take_errno(self) noexcept nogil:
        """The errno of the last write that failed since asked last (0: none)."""
        cdef int e
        mutex_lock(&self.lock)
        e = self.last_errno
        self.last_errno = 0
        mutex_unlock(&self.lock)
        return e

    cdef void drain(self) noexcept nogil:
        mutex_lock(&self.lock)
        while self.count > 0 and self.started:
            cond_wait(&self.done, &self.lock)
        mutex_unlock(&self.lock)

    cdef void close(self) noexcept nogil:
        """Write what waits, then end the thread; later submits are refused (EBADF)."""
        cdef bint started
        mutex_lock(&self.lock)
        self.stop = True
        started = self.started
        self.started = False
        cond_broadcast(&self.more)
        mutex_unlock(&self.lock)
        if started and getpid() == self.pid:  # a forked child has no such thread to wait for
            pthread_join(self.thread, NULL)

    cdef void run(self) noexcept nogil:
        cdef sigset_t all_signals
        cdef WriteJob* j
        cdef Py_ssize_t r, size
        cdef int e
        cdef iovec iov[3]
        cdef unsigned char zeros[4]
        memset(zeros, 0, 4)
        sigfillset(&all_signals)
        pthread_sigmask(SIG_BLOCK, &all_signals, NULL)  # signals are the interpreter's main thread's business
        mutex_lock(&self.lock)
        while True:
            while self.count == 0 and not self.stop:
                cond_wait(&self.more, &self.lock)
            if self.count == 0:
                break
            j = &self.jobs[self.head]
            mutex_unlock(&self.lock)
            if j.has_view:
                iov[0].iov_base = j.buf
                iov[0].iov_len = j.n
                iov[1].iov_base = j.view.buf
                iov[1].iov_len = j.view.len
                iov[2].iov_base = zeros
                iov[2].iov_len = j.pad
                size = j.n + j.view.len + j.pad
            else:
                size = j.n
            while True:
                r = writev(self.fd, iov, 3 if j.pad else 2) if j.has_view else write(self.fd, j.buf, j.n)
                if r >= 0 or errno != EINTR:
                    break
            e = 0 if r == size else (errno if r < 0 and errno else EIO)
            if e and j.has_fallback:
                write(self.fd, j.fallback, 32)
            mutex_lock(&self.lock)
            self.writes += 1
            if e:
                self.failures += 1
                self.last_errno = e
            self.head = (self.head + 1) % WRITER_SLOTS
            self.count -= 1
            cond_signal(&self.room)
            if self.count == 0:
                cond_broadcast(&self.done)
        cond_broadcast(&self.done)
        mutex_unlock(&self.lock)
