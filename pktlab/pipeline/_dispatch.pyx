# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The dispatcher, compiled: the handler chain on each packet, exactly one verdict, one record entry.

One runner for every source: NetfilterQueue's packets from the kernel queue
(verdicts batched to the queue's socket) and :class:`CapturedPacket`s from a
capture (verdicts to the capture source's spools).  Consecutive packets with
the same plain verdict (accept or drop, no mark, no new payload) are verdicted
with one NFQNL_MSG_VERDICT_BATCH message, which applies to every queued packet
with an id up to the one named; verdicts with a new payload or a mark are
NFQNL_MSG_VERDICT messages.  All of them wait in one buffer and are written to
the queue's netlink socket with one system call whenever the socket has been
read empty (or 64 messages wait).  NetfilterQueue has no call for either, so
the messages are built here.

A packet no handler sees is verdicted and recorded by the queue reader without the GIL
(:meth:`Dispatcher._fast_message`): a notebook cell that computes holds no packet up.  That path reads
only C fields: ``gate`` says whether any handler, hold predicate or flow tracking could want the packet
(kept by Python whenever one of them changes, :meth:`Dispatcher.regate`); the verdict buffer is shared
with threads holding the GIL under a mutex held over C code only (``vlock``); the record ring and the
stream table (:class:`pktlab.pipeline._streams.StreamEnds`) have mutexes of their own.
"""

from cpython.bytearray cimport PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING
from cpython.ref cimport Py_REFCNT
from libc.errno cimport errno
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset
from posix.unistd cimport write

from netfilterqueue._impl cimport Packet as NfPacket
from netfilterqueue._impl cimport nfq_set_verdict

from cpython.pycapsule cimport PyCapsule_New

from pktlab._common cimport (QueueMessage, QueuePath, buf_ptr, cond_broadcast, cond_destroy, cond_init, cond_t,
                             cond_wait_ns, iovec, load_int, mono_ns, mutex_destroy, mutex_init, mutex_lock, mutex_t,
                             mutex_unlock, store_int, tcp_stream_key, wall_of, wall_time)
from pktlab.packet._core cimport (Packet_from, PacketCore, fix_packet, packet_done, packet_over, packet_recycle,
                                  payload_as_arrived, pkt_ptr, pkt_size)
from pktlab.packet._core import too_big
from pktlab.pipeline._capture cimport CapturedPacket
from pktlab.pipeline._ring cimport Ring
from pktlab.pipeline._streams cimport StreamEnds
from pktlab.pipeline._writer cimport VerdictWriter
from pktlab.pipeline.seqadj import SeqAdjError, SeqAdjWait
from pktlab.packet.verdicts import ACCEPT, DROP
from pktlab.errors import HandlerError, SendError

cdef extern from "<sys/uio.h>" nogil:
    ssize_t writev(int fd, const iovec* iov, int iovcnt)

cdef extern from "<arpa/inet.h>" nogil:
    unsigned int htonl(unsigned int)

REPEAT_LIMIT = 1000  # a packet repeated this many times in a row by a handler is in a loop (_repeats_forever)

cdef enum:
    NF_DROP = 0
    NF_ACCEPT = 1
    NF_REPEAT = 4
    NFNL_SUBSYS_QUEUE = 3
    NFQNL_MSG_VERDICT = 1
    NFQA_MARK = 3
    NFQA_PAYLOAD = 10
    OUT_CAP = 196608  # waiting verdict messages; below the socket's default send buffer (212,992)
    BIG_PAYLOAD = 4096  # a new payload at least this long is written from where it is, not copied into the buffer



cdef int fast_message(void* target, const QueueMessage* m) noexcept nogil:
    """The reader's way into :meth:`Dispatcher._fast_message` (a C function it holds in a capsule)."""
    return (<Dispatcher>target)._fast_message(m)


cdef int flush_verdicts(void* target) noexcept nogil:
    """The reader's way to write the waiting verdicts as soon as its socket is empty (0, or the errno)."""
    return (<Dispatcher>target)._flush_c()


cdef int on_packet(object target, object nf) except -1:
    """The reader's way into :meth:`Dispatcher._on_packet` with a packet object it made."""
    (<Dispatcher>target)._on_packet(<NfPacket>nf)
    return 0


cdef int quiet(void* target) noexcept nogil:
    """Nothing to do between reads: no packet kept back or held, no TCP adjustment state to expire."""
    return not (<Dispatcher>target).seqadj_on and (<Dispatcher>target).held_count == 0


cdef QueuePath PATH
PATH.message = fast_message
PATH.flush = flush_verdicts
PATH.packet = on_packet
PATH.quiet = quiet


cdef inline Py_ssize_t record_offset(NfPacket nf):
    """Where the record's copy of a packet starts: its IP header (a capture's link header is left out)."""
    cdef CapturedPacket cp
    if nf._queue is not None:
        return 0
    cp = <CapturedPacket>nf
    return cp.l3 if cp.l3 > 0 else 0


cdef inline bint tcp_stream_end(const unsigned char* p, Py_ssize_t n, unsigned char* key, Py_ssize_t* klen,
                                unsigned int* end, unsigned int* start=NULL, Py_ssize_t wire=0) noexcept nogil:
    """The stream key (addresses, then ports, as in the packet) of an IPv4/IPv6 TCP segment, and the
    sequence number after it (SYN and FIN count one each; ``start``: its own); False for anything else
    (fragments, IPv6 with extension headers, malformed).  ``n`` bytes are at ``p``; ``wire``: the
    packet's whole length when only those were copied (its headers must be among them)."""
    cdef Py_ssize_t ihl, t, doff, total
    cdef Py_ssize_t whole = wire if wire > n else n
    cdef unsigned int seq
    cdef unsigned char flags
    if n < 20:
        return False
    if p[0] >> 4 == 4:
        ihl = (p[0] & 15) * 4
        total = (p[2] << 8) | p[3]
        if p[9] != 6 or ihl < 20 or total > whole or total < ihl + 20 or ihl + 20 > n \
                or ((p[6] & 0x3f) << 8 | p[7]) != 0:
            return False
        t = ihl
    elif p[0] >> 4 == 6:
        if n < 60 or p[6] != 6:
            return False
        total = 40 + ((p[4] << 8) | p[5])
        if total > whole or total < 60:
            return False
        t = 40
    else:
        return False
    doff = (p[t + 12] >> 4) * 4
    if doff < 20 or t + doff > total:
        return False
    klen[0] = tcp_stream_key(p, t, key)
    seq = (<unsigned int>p[t + 4] << 24) | (<unsigned int>p[t + 5] << 16) | (<unsigned int>p[t + 6] << 8) | p[t + 7]
    flags = p[t + 13]
    if start != NULL:
        start[0] = seq
    end[0] = seq + <unsigned int>(total - t - doff) + (1 if flags & 0x02 else 0) + (1 if flags & 0x01 else 0)
    return True


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
    cdef public bint threaded_writes  # large verdicts written by a thread of their own (VerdictWriter)
    cdef public long long writes_threaded  # of ``writes``, those handed to that thread
    cdef long long _internal_errors
    cdef VerdictWriter writer  # writes large verdicts from a thread of its own (None until the first)
    cdef long long writer_failures  # of writers closed before
    cdef object _last_internal_error
    cdef int write_errno  # a verdict write that failed on the reader's path without the GIL (0: none)
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
    cdef bint watch_stop  # the watchdog is to end (watch()): under wlock, told through wcond
    cdef mutex_t wlock
    cdef cond_t wcond
    # holding: packets a predicate picks wait for a verdict given later (Session.hold)
    cdef object _hold_fn
    cdef public object on_hold
    cdef public long long hold_failures  # calls of the hold predicate that raised (the user's code, not pktlab's)
    cdef public object last_hold_failure  # the newest one, as text
    cdef public object on_hold_failure  # told of the first failure of each predicate set: on_hold_failure(text)
    cdef bint hold_failed  # the predicate set now has failed
    cdef public long long held_count
    # rewritten packets whose headers could not be read to fix their lengths and checksums (fix_packet said why):
    # sent as written
    cdef public long long unfixed
    cdef public object last_unfixed  # the newest one's reason, with the packet
    cdef public object on_unfixed  # told of the first: on_unfixed(text)
    # TCP sequence adjustment (pipeline/seqadj.py, TcpAdjust): looked at for accepted TCP packets whose payload a
    # handler changed, and for every accepted TCP packet while any connection has state (seqadj_on)
    cdef public object seqadj
    cdef public bint seqadj_on
    cdef public object owner  # (uid, gid) of the packet being dispatched, set by the queue reader (None: none)
    cdef public int skbinfo  # NFQA_SKB_INFO of the packet being dispatched, set by the queue reader
    cdef public long long cap_len  # NFQA_CAP_LEN of that packet: its whole length if only a part was copied, else 0
    # a packet a handler needed more of than was copied: regrow(copied) is True when a repeat copies more
    # (a live queue with copy="auto"; None: the handler gets the CopyRangeError)
    cdef public object regrow
    cdef public object rewrites  # told the bytes a rewritten packet went on with: rewrites(id, time, bytes)
    cdef public long long recopied  # packets sent through the queue again for a larger copy
    cdef dict repeats  # a packet a handler repeated, (hash of its bytes, its mark) -> (times in a row, when last)
    cdef public long long repeat_loops  # packets found coming back to the queue REPEAT_LIMIT times (error verdict)
    cdef Py_ssize_t busy_wire
    cdef public object on_seqadj  # called with True when the first connection gets state, False when none has
    cdef public int seqadj_headroom  # bytes taken off the MSS of SYNs, so that grown segments fit the MTU
    cdef public StreamEnds tcp_high  # stream key -> sequence number after the highest byte accepted (bounded)
    cdef int gate  # 1: no handler, hold predicate or flow tracking can want a packet (regate())
    cdef tuple active  # the chain's active handlers as (handler, its function) pairs, as last published (regate())
    cdef bint flows_on  # flow tracking has started (regate(): the table says so when it changes)
    cdef mutex_t vlock  # the verdict buffer's: held over C code only
    cdef public object sender  # the session's Sender: what pkt.reply sends through
    # set where the kernel refuses a queue's new payloads (a lab of user-namespace mode: nfqnl_mangle answers
    # EPERM outside the initial user namespace and the packet is dropped): reinject(data, mark) sends the
    # rewritten packet from the host itself, and the original is dropped
    cdef public object reinject
    cdef object _flows  # the session's FlowTable: every packet is counted in it once tracking started
    cdef list reorder  # packets kept back after a gap in their stream: [nf, pkt, data, verdict, by, err, t0, h]
    cdef public double reorder_window  # how long one waits for its gap (s)
    cdef public long long reordered
    cdef object adj_err  # what _adjust_give said besides its verdict: the error's text (None: none)
    cdef bint adj_modified  # and whether the packet went on rewritten

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
        self.threaded_writes = True
        self.b_code = -1
        self.stolen = set()
        self.reorder = []
        self.repeats = {}
        self.tcp_high = StreamEnds(65536)
        mutex_init(&self.vlock, NULL)
        mutex_init(&self.wlock, NULL)
        cond_init(&self.wcond)
        chain.on_publish = self.regate
        self.regate()
        self.reorder_window = 0.05
        self.out = <unsigned char*>malloc(OUT_CAP)
        if self.out == NULL:
            raise MemoryError()

    def __dealloc__(self):
        mutex_destroy(&self.vlock)
        cond_destroy(&self.wcond)
        mutex_destroy(&self.wlock)
        free(self.out)

    # -- what the reader's path without the GIL may decide alone ------------------------------------
    def regate(self):
        """Say again whether a packet could be wanted by Python (a handler, the hold predicate, flow tracking).

        Called whenever one of them changes (the chain publishes its active handlers, the predicate
        or the flow table is set, tracking starts); the reader's path reads the result per packet.
        """
        flows = self._flows
        # one object, each handler with its function: a call does not look the function up on the handler, and no
        # reader can see the handlers of one publication with the functions of another
        self.active = tuple([(h, h.fn) for h in self.chain.active])
        self.flows_on = flows is not None and flows.enabled
        open_ = self._hold_fn is None and not self.active and not self.flows_on
        store_int(&self.gate, 1 if open_ else 0)

    @property
    def hold_fn(self):
        """The hold predicate (Session.hold): packets it picks wait for a verdict given later; None: none."""
        return self._hold_fn

    @hold_fn.setter
    def hold_fn(self, fn):
        self._hold_fn = fn
        self.hold_failed = False
        self.regate()

    @property
    def flows(self):
        """The session's FlowTable (None: none)."""
        return self._flows

    @flows.setter
    def flows(self, table):
        self._flows = table
        if table is not None:
            table.on_change = self.regate
        self.regate()

    @property
    def last_internal_error(self):
        """The last of pktlab's own failures on a packet, as text (None: none)."""
        cdef int e = self.write_errno
        if self.writer is not None:
            e = self.writer.take_errno() or e
        if e:
            self.write_errno = 0
            self._last_internal_error = f"OSError: [Errno {e}] verdict write failed"
        return self._last_internal_error

    @last_internal_error.setter
    def last_internal_error(self, text):
        self._last_internal_error = text

    @property
    def internal_errors(self):
        """pktlab's own failures on packets (verdict writes that failed on the writer's thread included)."""
        return self._internal_errors + self.writer_failures + (self.writer.failures if self.writer is not None else 0)

    @internal_errors.setter
    def internal_errors(self, long long n):
        self._internal_errors = n - self.writer_failures - (self.writer.failures if self.writer is not None else 0)

    @property
    def verdict_writer(self):
        """The thread writing large verdicts (:class:`~pktlab.pipeline._writer.VerdictWriter`), None before the
        first."""
        return self.writer

    def release_socket(self):
        """Before the queue's socket is unbound: write every verdict waiting (in the buffer and for the writer's
        thread), end that thread, and write nothing more to the socket (``fd`` -1: a packet's verdict from now on
        goes through NetfilterQueue's own call, which knows whether the queue is still bound)."""
        cdef VerdictWriter w
        cdef int e
        mutex_lock(&self.vlock)
        e = self._close_run()
        e = self._write() or e
        w = self.writer
        self.writer = None
        self.fd = -1
        mutex_unlock(&self.vlock)
        if w is not None:
            w.finish()
            self.writer_failures += w.failures
            e = w.take_errno() or e
        if e:
            self._internal_errors += 1
            self.write_errno = e

    def set_verdicts(self, default, on_error):
        self._default = default
        self._on_error = on_error
        self.default_code = default.code
        self.error_code = on_error.code

    # -- verdicts --------------------------------------------------------------
    cdef int _batch_add(self, unsigned int pid, int code) except -1:
        cdef int e
        mutex_lock(&self.vlock)
        e = self._batch_add_c(pid, code)
        mutex_unlock(&self.vlock)
        if e:
            raise OSError(e, "verdict write failed")
        return 0

    cdef int _batch_add_c(self, unsigned int pid, int code) noexcept nogil:
        """Add a plain verdict to the batch (vlock held); 0, or the errno of a write that failed."""
        cdef int e = 0
        if self.b_count and code != self.b_code:
            e = self._close_run()  # a run of the other verdict follows in the same write
        self.b_code = code
        self.b_last = pid
        self.b_count += 1
        if self.b_count >= self.batch_limit:
            e = self._close_run() or e
            e = self._write() or e
        return e

    cdef int _close_run(self) noexcept nogil:
        """Append the pending batch verdict (if any) to the outgoing messages (vlock held); 0 or an errno."""
        cdef unsigned int v
        cdef int e = 0
        if not self.b_count:
            return 0
        if self.out_len + 32 > OUT_CAP:
            e = self._write()
        v = htonl(self.b_code)
        memcpy(self.msg + 24, &v, 4)
        v = htonl(self.b_last)
        memcpy(self.msg + 28, &v, 4)
        memcpy(self.out + self.out_len, self.msg, 32)
        self.out_len += 32
        self.out_count += 1
        self.b_count = 0
        self.batch_messages += 1
        return e

    cdef int _write(self) noexcept nogil:
        """Write every waiting verdict message with one system call (vlock held); 0 or the errno.

        The kernel's netlink receive loop handles each message of the buffer in
        order, exactly as if they had been sent one by one.
        """
        cdef Py_ssize_t n = self.out_len
        if not n:
            return 0
        self.out_len = 0
        self.out_count = 0
        self.writes += 1
        if self.writer is not None and self.writer.waiting():
            if self.writer.submit(self.out, n, NULL, 0, NULL, 0, NULL) == 0:
                self.writes_threaded += 1
                return 0  # behind the writes waiting there (order is kept)
            self.writer.drain()  # refused (no memory for it): what waits goes first, then this, in order
        if write(self.fd, self.out, n) != n:
            return errno or 5
        return 0

    cdef int _flush_c(self) noexcept nogil:
        """Close the batch and write everything waiting, from any thread; 0 or the errno."""
        cdef int e
        mutex_lock(&self.vlock)
        e = self._close_run()
        e = self._write() or e
        mutex_unlock(&self.vlock)
        return e

    cdef int _flush(self) except -1:
        cdef int e = self._flush_c()
        if e:
            raise OSError(e, "verdict write failed")
        return 0

    cdef int _queue_verdict(self, unsigned int pid, int code, object mark, object buf) except -1:
        """Queue one NFQNL_MSG_VERDICT (with a mark and/or a new payload) behind the waiting messages."""
        cdef const unsigned char* p = NULL
        cdef Py_ssize_t n = 0
        cdef Py_ssize_t size
        cdef unsigned char* m
        cdef bint has_mark = mark is not None
        cdef bint has_buf = buf is not None
        cdef unsigned int mk = <unsigned int>(mark & 0xFFFFFFFF) if has_mark else 0
        cdef int e
        cdef VerdictWriter fresh = None
        if has_buf:
            p = buf_ptr(buf, &n)
            if n > 0xFFFF - 4:
                raise ValueError(f"a packet of {n} bytes cannot be given back to the kernel (at most 65531)")
            if n >= BIG_PAYLOAD and self.writer is None and self.threaded_writes:
                fresh = VerdictWriter(self.fd)  # made here (it is an object), taken under the lock
        size = 32 + (8 if has_mark else 0) + ((4 + ((n + 3) & ~3)) if has_buf else 0)
        mutex_lock(&self.vlock)
        if fresh is not None and self.writer is None and self.fd >= 0 and fresh.fd == self.fd:
            self.writer = fresh
        e = self._close_run()
        if self.out_len + size > OUT_CAP or self.out_count >= self.batch_limit or n >= BIG_PAYLOAD:
            e = self._write() or e
        if n >= BIG_PAYLOAD:  # (a rewritten GSO packet: 64 KiB) written by the writer's thread, or from its bytearray
            if self.writer is not None and type(buf) is bytearray and self._write_view(pid, code, has_mark, mk, buf, n,
                                                                                        size) == 0:
                mutex_unlock(&self.vlock)
                if e:
                    raise OSError(e, "verdict write failed")
                return 0
            e = self._write_big(pid, code, has_mark, mk, p, n, size) or e
            mutex_unlock(&self.vlock)
            if e:
                raise OSError(e, "verdict write failed")
            return 0
        m = self.out + self.out_len
        m += self._verdict_head(m, pid, code, has_mark, mk, has_buf, n, size)
        if has_buf:
            memcpy(m, p, n)
            memset(m + n, 0, ((n + 3) & ~3) - n)
        self.out_len += size
        self.out_count += 1
        mutex_unlock(&self.vlock)
        if e:
            raise OSError(e, "verdict write failed")
        return 0

    cdef Py_ssize_t _verdict_head(self, unsigned char* m, unsigned int pid, int code, bint has_mark, unsigned int mk,
                                  bint has_buf, Py_ssize_t n, Py_ssize_t size) noexcept nogil:
        """An NFQNL_MSG_VERDICT's header at ``m``: the message header, the verdict, the mark and the payload
        attribute's header (its ``n`` bytes follow, padded to 4); how many bytes it wrote."""
        cdef unsigned int v
        cdef unsigned short a
        cdef Py_ssize_t h = 32
        memcpy(m, self.msg, 24)
        v = <unsigned int>size
        memcpy(m, &v, 4)  # nlmsg_len (host order)
        a = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT
        memcpy(m + 4, &a, 2)  # nlmsg_type (host order)
        v = htonl(code)
        memcpy(m + 24, &v, 4)
        v = htonl(pid)
        memcpy(m + 28, &v, 4)
        if has_mark:
            a = 8
            memcpy(m + h, &a, 2)
            a = NFQA_MARK
            memcpy(m + h + 2, &a, 2)
            v = htonl(mk)
            memcpy(m + h + 4, &v, 4)
            h += 8
        if has_buf:
            a = <unsigned short>(4 + n)
            memcpy(m + h, &a, 2)
            a = NFQA_PAYLOAD
            memcpy(m + h + 2, &a, 2)
            h += 4
        return h

    cdef int _write_view(self, unsigned int pid, int code, bint has_mark, unsigned int mk, object buf, Py_ssize_t n,
                         Py_ssize_t size) noexcept:
        """A large payload verdict handed to the writer's thread with its payload where it lies, in the packet's
        bytearray (vlock and the GIL held, nothing waiting before it): no copy; the packet copies its bytes before
        any later write of its own (``_shared``).  0, or an errno (nothing was queued)."""
        cdef unsigned char head[48]
        cdef unsigned char fallback[32]
        cdef Py_ssize_t h = self._verdict_head(head, pid, code, has_mark, mk, True, n, size)
        self._verdict_head(fallback, pid, NF_DROP if self.error_code == NF_DROP else NF_ACCEPT, False, 0, False, 0, 32)
        try:
            e = self.writer.submit_view(head, h, buf, ((n + 3) & ~3) - n, fallback)
        except BaseException:  # (a bytearray always exports its buffer) written from here instead
            return 5
        if e == 0:
            self.writes += 1
            self.writes_threaded += 1
        return e

    cdef int _write_big(self, unsigned int pid, int code, bint has_mark, unsigned int mk, const unsigned char* p,
                        Py_ssize_t n, Py_ssize_t size) noexcept nogil:
        """One NFQNL_MSG_VERDICT with a large payload, written at once with the payload where it is (vlock held,
        nothing waiting before it); 0 or the errno.  Copying 64 KiB into the buffer first cost a pass over it."""
        cdef unsigned char head[48]
        cdef unsigned char pad[4]
        cdef unsigned char fallback[32]
        cdef iovec iov[3]
        memset(pad, 0, 4)
        iov[0].iov_base = head
        iov[0].iov_len = self._verdict_head(head, pid, code, has_mark, mk, True, n, size)
        iov[1].iov_base = <void*>p
        iov[1].iov_len = n
        iov[2].iov_base = pad
        iov[2].iov_len = ((n + 3) & ~3) - n
        self.writes += 1
        if self.writer is not None:
            # if the write fails, the packet still gets one verdict: the error verdict's, as _internal gives it
            self._verdict_head(fallback, pid, NF_DROP if self.error_code == NF_DROP else NF_ACCEPT, False, 0, False,
                               0, 32)
            if self.writer.submit(head, iov[0].iov_len, p, n, pad, iov[2].iov_len, fallback) == 0:
                self.writes_threaded += 1
                return 0
            self.writer.drain()  # refused: what waits goes first, then this, in order
        if writev(self.fd, iov, 3 if iov[2].iov_len else 2) != size:
            return errno or 5
        return 0

    def flush(self):
        """Send the pending batch verdict (the reader calls this whenever its socket is empty)."""
        self._flush()

    cdef inline bint _batchable(self, int code) noexcept nogil:
        """A plain verdict ``code`` can join the batch (never while a packet is held: the batch would cover it)."""
        return code != NF_REPEAT and self.batch_limit > 1 and self.fd >= 0 and self.held_count == 0

    cdef int _give(self, NfPacket nf, int code, bint plain) except -1:
        if plain and self._batchable(code):
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
        if buf is not None and self.reinject is not None and code == NF_ACCEPT:
            self.reinject(bytes(buf), mark)  # raises with the reason: the packet then gets the error verdict
            self._give(nf, NF_DROP, True)
            return 0
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
        self._internal_errors += 1
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

    def watch(self, bint on):
        """Start (True) or end (False) the watchdog's waits: an ended wait_overdue returns 0 at once."""
        with nogil:
            mutex_lock(&self.wlock)
            self.watch_stop = not on
            cond_broadcast(&self.wcond)
            mutex_unlock(&self.wlock)

    def wait_overdue(self, long long deadline_ns, long long period_ns, long long max_wait_ns):
        """Sleep until a handler call is past the deadline (1), ``max_wait_ns`` passed (2) or watch(False) (0).

        Looks every ``period_ns``, without the GIL: the watchdog does not take the interpreter from the reader
        thread every period, only when there is something to do; watch(False) wakes it at once (a detach does
        not wait out the period).
        """
        cdef long long start = mono_ns()
        cdef long long t0, now
        cdef int result = 0
        with nogil:
            mutex_lock(&self.wlock)
            while True:
                if not self.watch_stop:
                    cond_wait_ns(&self.wcond, &self.wlock, period_ns)
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
            mutex_unlock(&self.wlock)
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
        if data is None:  # a packet over its queue message: the stuck reader reads no further into that buffer
            data = nf.get_payload()
        self.stolen.add(self.busy_seq)
        self.busy_t0 = 0
        self.busy_nf = None
        self.busy_data = None
        err = f"handler {h.name!r} did not return within {deadline_ns / 1e6:.0f} ms; the packet got the error verdict"
        code = self.error_code
        try:
            self._give_original(nf, NF_DROP if code == NF_DROP else NF_ACCEPT, data)
        except BaseException as exc:
            code = self._internal(nf, exc).code
        self.rescued += 1
        self._push(nf, data, self.busy_time, code, t0, now, h.name, err, False, self.busy_wire)
        return h

    # -- per packet -------------------------------------------------------------
    def __call__(self, NfPacket nf):
        self._on_packet(nf)

    cdef void _on_packet(self, NfPacket nf):
        cdef PacketCore pkt = None
        cdef bytes data = None
        if self._hold_fn is not None:
            if nf._queue is None:  # a captured packet: its bytes are an object already
                data = nf.get_payload()
            # a queue's: over its message (a held one copies it, HeldPacket)
            pkt = self._packet(nf, data, self.spare, mono_ns())
            self.spare = None
            self._track(pkt)
            if self._hold(nf, pkt, data):
                return
        chain = self.active
        if not chain and not self.seqadj_on and not self.flows_on:
            if pkt is not None and packet_recycle(pkt, 1):  # (one the predicate kept gets bytes of its own)
                self.spare = pkt
            pkt = None
            self._fast(nf)
        else:
            self._run(nf, chain, pkt, data, pkt is not None)  # the packet the predicate saw goes on, if any
            if pkt is not None and packet_recycle(pkt, 1):  # (here: this frame's is its one reference if nobody kept it)
                self.spare = pkt

    # -- holding ---------------------------------------------------------------------
    cdef bint _hold(self, NfPacket nf, PacketCore pkt, bytes data):
        """Keep the packet without a verdict if the hold predicate picks it; True when held.

        ``on_hold(nf, pkt, original)`` is given the packet as it arrived (what the record keeps), even when the
        predicate wrote it (the written packet is the one held, and goes on as the notebook leaves it).
        """
        try:
            if not self._hold_fn(pkt):
                return False
        except BaseException as exc:  # the user's predicate failed: it holds nothing, the packet goes on
            self._hold_failure(exc)
            return False
        try:
            if data is not None:  # a captured packet's bytes
                original = data
            elif pkt._mptr != NULL:  # not written: still over its queue message, whose bytes it now takes
                original = pkt._own()
            else:  # written by the predicate: the message still holds the packet as it arrived
                original = nf.get_payload()
            self._flush()  # verdicts for the packets before it go first
            self.on_hold(nf, pkt, original)
            self.held_count += 1  # from now on no batch verdict (it would cover the held id too)
            return True
        except BaseException as exc:  # pktlab's own failure (holding it): the packet goes on
            self._internal_errors += 1
            self.last_internal_error = f"holding a packet: {type(exc).__name__}: {exc}"
            return False

    cdef void _hold_failure(self, exc):
        """Count a failure of the hold predicate; tell ``on_hold_failure`` of the predicate's first."""
        self.hold_failures += 1
        self.last_hold_failure = f"{type(exc).__name__}: {exc}"
        if not self.hold_failed:
            self.hold_failed = True
            if self.on_hold_failure is not None:
                try:
                    self.on_hold_failure(self.last_hold_failure)
                except Exception as exc2:  # (pktlab's own: saying it)
                    self._internal_errors += 1
                    self.last_internal_error = f"saying a hold predicate's failure: {type(exc2).__name__}: {exc2}"

    def give_held(self, NfPacket nf, PacketCore pkt, verdict, str by, bytes original):
        """The verdict of a held packet, given now (from any thread); recorded like any other.

        ``original`` is the packet as it arrived (the record keeps packets as they came).
        """
        cdef int code = verdict.code
        cdef Py_ssize_t off
        cdef bint modified = pkt._modified
        if nf._verdict_is_set:
            raise RuntimeError("this packet already has its verdict")
        if self._needs_seqadj(pkt, code):
            self._seqadj(nf, pkt, original, pkt._modified)  # a rewrite that cannot be made consistent raises: still held
        try:
            self._flush()
            self._give_packet(nf, pkt, code, False)
            self._flush()  # the reader may be idle: send it now
        finally:
            self.held_count -= 1
        if modified and self.rewrites is not None:
            self._note_rewrite(nf, pkt, pkt.time)
        packet_done(pkt)  # as after any verdict: no packet <-> view cycle keeping the queue alive
        off = record_offset(nf)
        if code == NF_ACCEPT and self.seqadj is not None:
            self._note_passed(<const unsigned char*>PyBytes_AS_STRING(original) + off, len(original) - off,
                              pkt._wire - off if pkt._wire else 0)
        self.ring.push(pkt.time, nf.id, nf.hook, (pkt._wire if pkt._wire > len(original) else len(original)) - off,
                       <const unsigned char*>PyBytes_AS_STRING(original) + off, len(original) - off, code, 0,
                       mono_ns(), by, None, modified)

    cdef int _give_packet(self, NfPacket nf, PacketCore pkt, int code, bint plain) except -1:
        """The verdict of one packet with what the handlers did to it: a mark, a rewrite (fixed up here).

        A packet of a flow the kernel is to decide goes on with the flow's mark bit, accepted: pktlab's
        chain behind the queue marks the connection and, for a drop, drops the packet.  Every packet of
        the flow that still reaches the queue carries it: one that came before the kernel tracked the
        connection (conntrack started with the flow rules) leaves the marking to the next.
        """
        if self.flows_on and self._flows.decided and code != NF_REPEAT:
            bit = getattr(pkt._flow, "kernel_bit", 0)
            if bit:
                pkt._mark = (pkt.mark | bit) & 0xFFFFFFFF
                code = NF_ACCEPT
        if pkt._mark is None and not pkt._modified:
            self._give(nf, code, plain)
            return 0
        why = fix_packet(pkt) if pkt._modified and pkt._dirty else None
        if code == NF_REPEAT:
            if pkt._modified and self.reinject is not None:
                raise HandlerError(
                    "a rewritten packet cannot be repeated here: the kernel refuses a queue's new payloads in a lab "
                    "of user-namespace mode; accept it (pktlab then sends it from the host), or repeat it unchanged"
                )
            if pkt._mark is not None:
                nf.set_mark(pkt._mark)
            if pkt._modified:
                nf.set_payload(bytes(pkt._writable()))
            self._give(nf, code, False)
        else:
            buf = pkt._writable() if pkt._modified else None
            self._give_payload(nf, code, buf, pkt._mark)
            if buf is not None and self.writer is not None and PyByteArray_GET_SIZE(buf) >= BIG_PAYLOAD:
                pkt._shared = True  # the writer's thread may still be reading the bytearray: a later write copies it
        if why is not None:  # (once it went: a packet the host's kernel refused to send went nowhere)
            self._unfixed(pkt, why)
        return 0

    cdef void _unfixed(self, PacketCore pkt, str why):
        """A rewritten packet whose headers the fix-up could not read: it goes on as written (a malformed packet
        may be the point), counted; ``on_unfixed`` is told of the session's first."""
        self.unfixed += 1
        self.last_unfixed = f"{why} ({pkt!r})"
        if self.unfixed == 1 and self.on_unfixed is not None:
            try:
                self.on_unfixed(self.last_unfixed)
            except Exception as exc:  # (pktlab's own: saying it)
                self._internal_errors += 1
                self.last_internal_error = f"saying an unfixed rewrite: {type(exc).__name__}: {exc}"

    cdef void _note_passed(self, const unsigned char* p, Py_ssize_t n, Py_ssize_t wire=0) noexcept nogil:
        """Remember how far each TCP stream has gone through accepted packets.

        A handler's first rewrite of a connection may come on a segment behind bytes that already went
        (a retransmission, a held or reordered segment): sequence adjustment must know, or it would let
        the rewrite change what the receiver already has.  Cheap: a byte test for anything not TCP.
        """
        cdef unsigned char key[36]
        cdef Py_ssize_t klen = 0
        cdef unsigned int end = 0
        if tcp_stream_end(p, n, key, &klen, &end, NULL, wire):
            self.tcp_high.note(key, klen, end)

    cdef void _track(self, PacketCore pkt):
        """The packet's flow: counted now if tracking has started, else found when a handler asks (pkt.flow)."""
        flows = self._flows
        if flows is None:
            return
        if self.flows_on:
            try:
                pkt._flow = flows.observe(pkt)
            except BaseException as exc:  # pktlab's own failure: the packet goes on without a flow
                self._internal_errors += 1
                self.last_internal_error = f"flows: {type(exc).__name__}: {exc}"
        else:
            pkt._flow = flows

    # -- TCP sequence adjustment ---------------------------------------------------------
    cdef bint _needs_seqadj(self, PacketCore pkt, int code):
        """An accepted TCP packet of a connection with state, one whose payload a handler changed (not one whose
        headers alone it wrote in place: a TTL, an address, a port), or a SYN (its MSS) while handlers run."""
        cdef const unsigned char* p
        cdef Py_ssize_t n
        if self.seqadj is None or code != NF_ACCEPT:
            return False
        try:
            pkt._find_l4()  # (found again: a write may have moved the TCP header)
        except Exception:  # a malformed packet: nothing to adjust in it
            return False
        if pkt._l4proto != 6 or pkt._l4frag == 2:
            return False
        if self.seqadj_on:
            return True
        p = pkt_ptr(pkt, &n)
        if pkt._modified and not payload_as_arrived(pkt, pkt._payload_at(), n):
            return True
        # a SYN's MSS makes room for segments a handler may grow: only while the session has handlers that can (a
        # delay line, a session that only looks, or kernel handlers, which change no length, leave TCP as it is)
        return (pkt._l4off + 13 < n and p[pkt._l4off + 13] & 0x02 and self.seqadj_headroom > 0
                and self.chain.may_resize)

    cdef int _seqadj(self, NfPacket nf, PacketCore pkt, bytes original, bint rewrite, bint wait=False) except -1:
        """Adjust an accepted TCP packet in place (raises SeqAdjError, nothing changed, for an impossible rewrite).

        ``original``: the packet's bytes as it arrived; None for a packet of the queue, whose message (unchanged:
        a write copies the packet out of it) is read in place, through a packet over it made here.
        """
        cdef PacketCore orig = None
        self.seqadj.clamp = self.chain.may_resize  # kernel handlers alone change no length: SYNs keep their MSS
        if original is None:
            orig = Packet_from(self.packet_cls, nf, None, pkt.time)
            packet_over(orig, nf.payload, nf.payload_len)  # as pkt.like(original) would make it
        try:
            self.seqadj.apply(pkt, orig if orig is not None else original, rewrite, wait, self.tcp_high)
        finally:
            self._seqadj_state(self.seqadj.active)
            if orig is not None:
                orig._ipv = None
                orig._l4v = None
                if Py_REFCNT(orig) == 1:
                    packet_over(orig, NULL, 0)  # nothing kept it: no copy
                else:
                    orig._own()
        return 0

    cdef void _seqadj_state(self, bint on):
        """Note whether any connection has adjustment state; tell ``on_seqadj`` when that changes.

        Called before the verdict of the packet that created the first state,
        so that a live queue can stop passing packets unseen (fail-open) before
        any later packet of that connection could pass unadjusted.
        """
        if on == self.seqadj_on:
            return
        self.seqadj_on = on
        if self.on_seqadj is not None:
            try:
                self.on_seqadj(on)
            except Exception as exc:
                self._internal_errors += 1
                self.last_internal_error = f"seqadj: {type(exc).__name__}: {exc}"

    cdef object _adjust_give(self, NfPacket nf, PacketCore pkt, bytes data, object verdict, object h, bint wait):
        """Sequence adjustment where the packet needs it, then its verdict: the verdict given, with ``adj_err``
        (the error's text, or None) and ``adj_modified`` (whether it went on rewritten) set; no tuple per packet.

        Raises SeqAdjWait, nothing given, when ``wait`` and the packet comes after a gap in its stream.
        """
        cdef int code = self.default_code if verdict is self._default else verdict.code
        cdef bint modified = pkt._modified
        err = None
        if self._needs_seqadj(pkt, code):
            try:
                self._seqadj(nf, pkt, data, pkt._modified, wait)
            except SeqAdjError as exc:  # the rewrite cannot be made consistent: the error verdict
                err = self.chain.failed(h, pkt, exc) if h is not None else f"SeqAdjError: {exc}"
                verdict = self._on_error
                code = verdict.code
                modified = False
                pkt._modified = False
                pkt._mark = None
                if self._needs_seqadj(pkt, code):
                    self._seqadj(nf, pkt, data, False, False)  # as it arrived, where the connection needs it
        self._give_packet(nf, pkt, code, True)
        self.adj_err = err
        self.adj_modified = modified
        return verdict

    cdef object _not_sent(self, NfPacket nf, PacketCore pkt, bytes data, object h, exc):
        """The verdict of a rewritten packet that could not go on as written, nothing given yet: where a lab of
        user-namespace mode re-sends rewritten packets from the host, its kernel refused the packet (SendError:
        a header it will not send), or the handler repeated a rewritten packet (HandlerError).  The handler's
        failure (``adj_err``), not pktlab's: the error verdict, for the packet as it arrived."""
        self.adj_err = self.chain.failed(h, pkt, exc) if h is not None else f"{type(exc).__name__}: {exc}"
        pkt._modified = False
        pkt._mark = None
        self._give_original(nf, NF_DROP if self.error_code == NF_DROP else NF_ACCEPT, data)
        return self._on_error

    cdef void _keep_back(self, NfPacket nf, PacketCore pkt, bytes data, verdict, by, err, long long t0, h):
        if data is None:  # it outlives its queue message: the packet and its original get bytes of their own
            data = nf.get_payload()
            pkt._own()
        self._flush()  # the verdicts before it go first; no batch verdict while it waits (it would cover it)
        self.held_count += 1
        self.reordered += 1
        self.reorder.append([nf, pkt, data, verdict, by, err, t0, h])

    cdef int _release(self, double now, bint everything) except -1:
        """Pass the kept-back packets whose gap has filled; the oldest anyway once it waited reorder_window."""
        cdef bint progress = True
        cdef bint force
        cdef PacketCore pkt
        while self.reorder and progress:
            progress = False
            for entry in list(self.reorder):
                force = everything or now - (<PacketCore>entry[1]).time >= self.reorder_window
                if force:  # its gap is given up: its stream's waiting segments go from the earliest on
                    entry = self._earliest_of_stream(entry)
                nf, pkt, data, verdict, by, err, t0, h = entry
                try:
                    verdict = self._adjust_give(nf, pkt, data, verdict, h, not force)
                    err2, modified = self.adj_err, self.adj_modified
                except SeqAdjWait:
                    continue
                except (SendError, HandlerError) as exc:
                    verdict = self._not_sent(nf, pkt, data, h, exc)
                    err2, modified = self.adj_err, False
                except BaseException as exc:
                    verdict, err2, modified = self._internal(nf, exc), None, False
                self.reorder.remove(entry)
                self.held_count -= 1
                if err2 is not None:
                    err = err2
                    by = h.name if h is not None else None
                if modified and self.rewrites is not None:
                    self._note_rewrite(nf, pkt, pkt.time)
                packet_done(pkt)
                self._push(nf, data, pkt.time, verdict.code, t0, mono_ns(), by, err, modified, pkt._wire)
                progress = True
                if force:
                    break  # one at a time: the others may be in order now
        return 0

    cdef list _earliest_of_stream(self, list entry):
        """The kept-back entry of ``entry``'s TCP stream that starts first in the stream (``entry`` if none).

        Kept back in arrival order, a stream's segments may wait out of stream order: passing
        a later one first would fix where the earlier ones' bytes go (no growth possible then).
        """
        cdef unsigned char key[36]
        cdef unsigned char other_key[36]
        cdef Py_ssize_t klen = 0, olen = 0, off
        cdef unsigned int end = 0, start = 0, s = 0
        cdef bytes data = entry[2]
        off = record_offset(entry[0])
        if off > len(data) or not tcp_stream_end(<const unsigned char*>PyBytes_AS_STRING(data) + off,
                                                 len(data) - off, key, &klen, &end, &start):
            return entry
        best = entry
        for other in self.reorder:
            if other is entry:
                continue
            data = other[2]
            off = record_offset(other[0])
            if off > len(data) or not tcp_stream_end(<const unsigned char*>PyBytes_AS_STRING(data) + off,
                                                     len(data) - off, other_key, &olen, &end, &s):
                continue
            if olen == klen and memcmp(other_key, key, klen) == 0 and <int>(s - start) < 0:
                best, start = other, s
        return best

    def expire_connections(self):
        """Let TCP adjustment state that expired go (live: while no TCP packet comes to do it)."""
        if self.seqadj_on and self.seqadj is not None:
            self.seqadj.expire(wall_time())
            self._seqadj_state(self.seqadj.active)

    def tick(self, bint final=False):
        """From the reading thread between reads: pass kept-back packets that waited long enough (all if final).

        Returns how many seconds until a kept-back packet's wait ends (None: none waits), so that a
        reader with nothing to read wakes up for it rather than at its next poll timeout.
        """
        cdef double now
        cdef PacketCore pkt
        if not self.reorder:
            return None
        now = wall_time()
        self._release(now, final)
        self._flush()
        if not self.reorder:
            return None
        pkt = self.reorder[0][1]
        return max(0.001, self.reorder_window - (now - pkt.time))

    cdef int _give_original(self, NfPacket nf, int code, bytes data) except -1:
        """The verdict for a packet as it arrived, adjusted if its connection needs it."""
        cdef PacketCore pkt
        if self.seqadj_on and code == NF_ACCEPT:
            pkt = self._packet(nf, data, None, mono_ns())
            if self._needs_seqadj(pkt, code):
                self._seqadj(nf, pkt, data, False)
            self._give_packet(nf, pkt, code, False)
            packet_done(pkt)
            return 0
        self._give(nf, code, False)
        return 0

    def fast_path(self):
        """A capsule of the C functions the queue reader calls: each parsed message first (see _fast_message),
        and the verdict write once it has read its socket empty."""
        return PyCapsule_New(<void*>&PATH, "pktlab.QueuePath", NULL)

    cdef int _fast_message(self, const QueueMessage* m) noexcept nogil:
        """A packet no handler sees, verdicted and recorded from the reader's parse, without the GIL: 1, or 0 to
        decline.

        What :meth:`_fast` does, without NetfilterQueue's packet object or Python: the verdict joins the
        batch, the record gets the packet, an accepted TCP segment is noted.  Declines whenever the packet
        needs an object (``gate`` closed: a handler, a hold predicate, flow tracking; TCP connections with
        adjustment state) or a verdict of its own (no batching, packets held, a repeat), so that the path
        holding the GIL decides exactly as before.  A verdict write that fails is pktlab's own failure,
        counted as in :meth:`_fast` (``last_internal_error`` says it).
        """
        cdef int code = self.default_code
        cdef Py_ssize_t n = m.payload_len
        cdef Py_ssize_t wire = m.cap_len if m.cap_len > m.payload_len else 0
        cdef int e
        cdef long long mono
        if not load_int(&self.gate) or self.seqadj_on or not self._batchable(code):
            return 0
        mutex_lock(&self.vlock)
        e = self._batch_add_c(m.id, code)
        mutex_unlock(&self.vlock)
        if e:
            self._internal_errors += 1
            self.write_errno = e
        if code == NF_ACCEPT:
            self._note_passed(m.payload, n, wire)
        mono = mono_ns()
        self.ring.put(wall_of(mono), m.id, m.hook, wire if wire else n, m.payload, n, code, 0, mono, False, False)
        return 1

    cdef inline void _record_plain(self, double now, unsigned int pid, unsigned char hook, const unsigned char* p,
                                   Py_ssize_t n, Py_ssize_t wire, int code, long long decided):
        """The record entry of a packet no handler saw (``wire``: its whole length if only ``n`` bytes were
        copied, else 0; ``decided``: CLOCK_MONOTONIC when its verdict was decided); an accepted TCP segment
        noted."""
        if code == NF_ACCEPT and self.seqadj is not None:
            self._note_passed(p, n, wire)
        self.ring.put(now, pid, hook, wire if wire else n, p, n, code, 0, decided, False, False)

    cdef void _fast(self, NfPacket nf):
        cdef int code = self.default_code
        cdef Py_ssize_t n = nf.payload_len if nf.payload != NULL else 0
        cdef Py_ssize_t off = 0
        cdef double now
        cdef CapturedPacket cp
        cdef Py_ssize_t wire = self.cap_len
        cdef long long decided = mono_ns()
        if nf._queue is None:
            cp = <CapturedPacket>nf
            now = cp.time
            wire = cp.wire
            off = record_offset(nf)
            if off > n:
                off = n
        else:
            now = wall_of(decided)
        try:
            self._give(nf, code, True)
        except BaseException as exc:
            code = self._internal(nf, exc).code
        self._record_plain(now, nf.id, nf.hook, nf.payload + off, n - off, wire - off if wire > n else 0, code,
                           decided)

    cdef PacketCore _packet(self, NfPacket nf, bytes data, PacketCore spare, long long mono):
        """The packet handlers see: ``spare`` (an emptied earlier one) reused, or a new one.

        ``data`` None: over the queue message's buffer (no copy; see PacketCore._own for when it gets one).
        ``mono``: CLOCK_MONOTONIC now (a live packet's time is its wall-clock time).
        """
        cdef PacketCore pkt
        cdef CapturedPacket cp
        cdef double now
        cdef bint captured = nf._queue is None
        if captured:
            cp = <CapturedPacket>nf
            now = cp.time
        else:
            now = wall_of(mono)
        if spare is not None:
            pkt = spare
            pkt._meta = nf
            pkt.time = now
            self.reused += 1
        else:
            pkt = Packet_from(self.packet_cls, nf, None, now)
        if data is None:
            packet_over(pkt, nf.payload, nf.payload_len)
        else:
            pkt._data = data
            pkt._mptr = NULL
            pkt._data_arrived = True  # a captured packet's bytes, or the original of one given back as it arrived
        pkt._send = self.sender
        if captured:
            pkt._l3 = cp.l3
            pkt._eth = cp.eth
            pkt._skbinfo = 0
            pkt._wire = cp.wire if cp.wire > pkt_size(pkt) else 0
        else:
            pkt._owner = self.owner
            pkt._skbinfo = self.skbinfo
            pkt._wire = self.cap_len if self.cap_len > pkt_size(pkt) else 0
            if pkt._eth:  # a spare that last held a captured frame
                pkt._l3 = 0
                pkt._eth = False
        return pkt

    cdef void _run(self, NfPacket nf, tuple chain, PacketCore pkt=None, bytes data=None, bint made=False):
        """The chain (``active``'s (handler, function) pairs) on one packet (``pkt`` and its ``data`` already made
        when a hold predicate saw it: ``made``, the caller then reuses or finishes it).

        A packet of the queue is made over its message's buffer (``data`` stays None: the message is the packet
        as it arrived); it gets bytes of its own only if a handler writes it or reads all of it from Python, or
        once something keeps it past its verdict (packet_done; kept back, :meth:`_keep_back`).
        """
        cdef long long t0 = mono_ns()
        cdef double now = 0.0
        cdef int code
        cdef Py_ssize_t off
        cdef bint given = False
        cdef bint own = pkt is None  # made here: reused for the next packet if nothing kept it
        cdef bint modified = False
        cdef bint recopy = False
        cdef Py_ssize_t wire = 0
        cdef unsigned long long my_seq
        verdict = None
        by = None
        err = None
        caught = None
        try:
            if own:
                if nf._queue is None:  # a captured packet: its bytes are an object already
                    data = nf.get_payload()
                pkt = self._packet(nf, data, self.spare, t0)
                self.spare = None
                self._track(pkt)
            now = pkt.time
            self.seq += 1
            my_seq = self.seq
            self.busy_nf = nf
            self.busy_time = now
            self.busy_data = data
            self.busy_seq = my_seq
            self.busy_t0 = t0  # the deadline runs from the packet's start in the chain
            self.busy_wire = wire = pkt._wire
            h = None
            flows = self._flows if self.flows_on else None  # (a table not tracking has no flow on its packets)
            if flows is not None and flows.decided:  # a flow verdict decides its connection's packets
                fv = getattr(pkt._flow, "verdict", None)
                if fv is not None:
                    verdict = ACCEPT if fv == "accept" else DROP
                    by = f"flow ({pkt._flow.decided_by})"
                    chain = ()
            for h, fn in chain:
                self.busy_handler = h
                try:
                    v = fn(pkt)
                except BaseException as exc:
                    self.busy_t0 = 0
                    if self.stolen and my_seq in self.stolen:
                        self._returned(my_seq, h, pkt)
                        return
                    if pkt._short and pkt._wire and self.regrow is not None:
                        caught = exc  # copied again whole, if the queue can (below), else this handler's error
                        break
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
            if pkt._short and pkt._wire and self.regrow is not None:
                # a handler read past the copied part (and raised, or caught the error): nothing it decided
                # counts; a repeat sends the packet through the queue again, copied whole this time
                if self.regrow(len(data) if data is not None else nf.payload_len):
                    pkt._modified = False
                    pkt._mark = None
                    self._give(nf, NF_REPEAT, False)
                    self.recopied += 1
                    recopy = given = True
                elif caught is not None:
                    err = self.chain.failed(h, pkt, caught)
                    verdict = self._on_error
                    by = h.name
                    pkt._modified = False
                    pkt._mark = None
            if not recopy:
                if self.flows_on and self._flows.decided and h is not None:  # the handler that gave a flow verdict
                    # (tracking may have started in it: flow verdicts start it)
                    f = pkt._flow
                    if getattr(f, "verdict", None) is not None and f.decided_by is None:
                        f.decided_by = by
                if verdict is None:
                    verdict = self._default
                elif by is not None and verdict.code == NF_REPEAT and self._repeats_forever(nf, data):
                    err = self.chain.failed(h, pkt, HandlerError(
                        f"handler {h.name!r} repeated the same packet {REPEAT_LIMIT:,} times in a row: a repeated "
                        "packet comes back to this queue unless its rule skips it; mark it (pkt.repeat(mark=1)) and "
                        "skip the mark in the rule (rule='... -m mark ! --mark 1'), or change the packet so that the "
                        "rule no longer matches it; it got the error verdict"))
                    verdict = self._on_error
                    pkt._modified = False
                    pkt._mark = None
                if pkt._modified and h is not None and pkt_size(pkt) - record_offset(nf) > 65535:
                    err = self.chain.failed(h, pkt, too_big(pkt_size(pkt) - record_offset(nf), pkt._skbinfo & 2))
                    verdict = self._on_error
                    by = h.name
                    pkt._modified = False
                    pkt._mark = None
                try:
                    verdict = self._adjust_give(nf, pkt, data, verdict, h, True)
                    err2, modified = self.adj_err, self.adj_modified
                except SeqAdjWait:  # after a gap in its TCP stream: kept back until the gap fills or a moment passes
                    self._keep_back(nf, pkt, data, verdict, by, err, t0, h)
                    return
                except (SendError, HandlerError) as exc:
                    verdict = self._not_sent(nf, pkt, data, h, exc)
                    err2, modified = self.adj_err, False
                if err2 is not None:
                    err = err2
                    by = h.name if h is not None else None
                given = True
        except BaseException as exc:
            if not given:
                verdict = self._internal(nf, exc)
        if pkt is not None:
            if not given:
                modified = pkt._modified
            if modified and self.rewrites is not None and not recopy:  # before the packet is reused
                self._note_rewrite(nf, pkt, now)
            # only this frame references a packet the dispatcher made and no handler kept: reuse it
            if own and packet_recycle(pkt, 1):
                self.spare = pkt
            elif not made:
                packet_done(pkt)
            # (``made``: the packet the hold predicate saw; the caller reuses it or finishes it, packet_recycle)
        if recopy:
            return  # not recorded: the packet comes back, copied whole, and is recorded then
        if now == 0.0:  # the packet could not be made (pktlab's own failure)
            now = wall_time()
        self._push(nf, data, now, self.default_code if verdict is self._default else verdict.code, t0, mono_ns(), by,
                   err, modified, wire)
        if self.reorder and given:
            self._release(now, False)

    cdef bint _repeats_forever(self, NfPacket nf, bytes data) except -1:
        """Whether a packet a handler gives REPEAT has come back with the same bytes and mark REPEAT_LIMIT times,
        each within a second of the last: a loop that would hold it (and the reader) forever.

        Only repeated packets are counted (a hash of their bytes as they arrived); the table forgets what has
        not come back for a second, and is bounded.
        """
        cdef double now = mono_ns() * 1e-9
        key = (hash(data if data is not None else nf.get_payload()), nf.mark)
        seen = self.repeats.get(key)
        n = seen[0] + 1 if seen is not None and now - seen[1] < 1.0 else 1
        if n >= REPEAT_LIMIT:
            del self.repeats[key]
            self.repeat_loops += 1
            return True
        if len(self.repeats) >= 4096:
            self.repeats = {k: v for k, v in self.repeats.items() if now - v[1] < 1.0}
            if len(self.repeats) >= 4096:
                self.repeats.clear()
        self.repeats[key] = (n, now)
        return False

    cdef void _note_rewrite(self, NfPacket nf, PacketCore pkt, double now):
        """Hand the bytes a rewritten packet went on with to ``rewrites`` (the record keeps them beside its entry).

        After the verdict: a failure here is pktlab's own, counted, and costs the packet nothing.
        """
        cdef Py_ssize_t off = record_offset(nf)
        try:  # the first snaplen bytes, as the entry keeps of the packet as it came
            self.rewrites(nf.id, now, pkt._bytes(off, off + self.ring.snaplen))
        except Exception as exc:
            self._internal_errors += 1
            self.last_internal_error = f"recording a rewrite: {type(exc).__name__}: {exc}"

    cdef void _push(self, NfPacket nf, bytes data, double now, int code, long long t0, long long decided, by, err,
                    bint modified, Py_ssize_t wire):
        """The packet's record entry (the record keeps packets as they arrived); an accepted TCP segment noted.

        ``wire``: the packet's whole length when only a part of it was copied (0: ``data`` is all of it).
        ``data`` None: the packet's queue message, still in the reader's buffer.
        """
        cdef Py_ssize_t off = record_offset(nf)
        cdef const unsigned char* p = <const unsigned char*>""
        cdef Py_ssize_t n = 0
        if data is not None:
            p = <const unsigned char*>PyBytes_AS_STRING(data)
            n = len(data)
        elif nf.payload != NULL:
            p = nf.payload
            n = nf.payload_len
        if off > n:
            off = n
        if code == NF_ACCEPT and self.seqadj is not None:
            self._note_passed(p + off, n - off, wire - off if wire > n else 0)
        self.ring.push(now, nf.id, nf.hook, (wire if wire > n else n) - off, p + off, n - off, code, decided - t0,
                       decided, by, err, modified)
