# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Reading an NFQUEUE socket, compiled: whole packets, many messages per system call, ENOBUFS counted.

NetfilterQueue binds the queue; :class:`QueueReader` reads its socket with
``recvmmsg`` and parses each message once (:func:`parse_message`).  A packet
that no handler will see is verdicted and recorded by the dispatcher's C path
straight from that parse (``QueueReader.set_fast``), without the GIL: the
wait, the read, those packets' verdicts and record entries run in C until a
packet needs Python, the wake pipe is written or the wait's time is up
(:meth:`QueueReader.poll_read`), so a notebook cell that holds the GIL holds
none of them up.  Any other packet gets NetfilterQueue's packet object, filled
from the same parse, and goes to the dispatcher (``pktlab.pipeline._dispatch``)
by a C call, holding the GIL.  Without a dispatcher
path (a bare reader) messages go to libnetfilter_queue and NetfilterQueue's
callback, as NetfilterQueue's own loop sends them.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport errno
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
from posix.time cimport timespec

from cpython.pycapsule cimport PyCapsule_GetPointer
from cpython.ref cimport Py_REFCNT

from pktlab._common cimport QueueMessage, QueuePath, iovec, mmsghdr, mono_ns, msghdr

from netfilterqueue._impl cimport NetfilterQueue as NfQueue
from netfilterqueue._impl cimport Packet as NfPacket
from netfilterqueue._impl cimport nfq_handle_packet, nfq_q_handle, nfq_set_mode

cdef extern from "<sys/socket.h>":
    int recvmmsg(int fd, mmsghdr* msgs, unsigned int vlen, int flags, timespec* timeout) nogil
    ssize_t send(int fd, const void* buf, size_t n, int flags) nogil
    int MSG_DONTWAIT
    int MSG_TRUNC

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd* fds, unsigned long nfds, int timeout)
    short POLLIN

cdef extern from "<errno.h>":
    int EAGAIN
    int EINTR
    int ENOBUFS
    int EMSGSIZE

cdef extern from "libnetfilter_queue/libnetfilter_queue.h":
    int nfq_set_queue_flags(nfq_q_handle* qh, unsigned int mask, unsigned int flags)

cdef extern from "libnetfilter_queue/linux_nfnetlink_queue.h":
    int NFQA_CFG_F_FAIL_OPEN
    int NFQA_CFG_F_UID_GID
    int NFQA_CFG_F_GSO
    int NFQNL_COPY_PACKET
    int NFQA_UID
    int NFQA_GID
    int NFQA_SKB_INFO
    int NFQA_CAP_LEN
    int NFQNL_MSG_CONFIG
    int NFQA_CFG_PARAMS
    int NFQA_PACKET_HDR
    int NFQA_PAYLOAD
    int NFQA_MARK
    int NFQA_TIMESTAMP
    int NFQA_IFINDEX_INDEV
    int NFQA_IFINDEX_OUTDEV
    int NFQA_IFINDEX_PHYSINDEV
    int NFQA_IFINDEX_PHYSOUTDEV
    int NFQA_HWADDR
    int NFQNL_MSG_PACKET

cdef extern from "libnfnetlink/linux_nfnetlink.h":
    int NFNL_SUBSYS_QUEUE

DEF READ_SLOTS = 16  # messages taken per recvmmsg call
DEF READ_SLOT_BYTES = 73728  # one netlink message: a 64 KiB packet and its attributes (< 1 KiB) fit



def configure_queue(NfQueue q, unsigned int copy_range, bint fail_open, bint gso=False):
    """Set what NetfilterQueue's ``bind`` cannot: the full copy range and the fail-open flag.

    NetfilterQueue caps the copy range at 4016 bytes (its receive buffer is
    4 KiB) and never sets queue flags; pktlab reads with its own buffer
    (:class:`QueueReader`), so it can ask for whole packets, and it sets
    NFQA_CFG_F_FAIL_OPEN (an NFQNL_MSG_CONFIG message on the queue's own
    socket, through libnetfilter_queue) so that a full queue passes packets
    instead of dropping them.  With ``gso`` it sets NFQA_CFG_F_GSO: the kernel
    queues GSO packets whole (up to 64 KiB: one message for what would be ~45
    segments) and no longer completes offloaded checksums before copying
    (each packet's NFQA_SKB_INFO says which).  Call right after ``bind`` in the
    reading thread.
    """
    if q.qh == NULL:
        raise RuntimeError("the queue is not bound")
    if nfq_set_mode(q.qh, NFQNL_COPY_PACKET, copy_range) < 0:
        raise OSError(errno, f"cannot set the copy range to {copy_range}")
    if nfq_set_queue_flags(q.qh, NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_FAIL_OPEN if fail_open else 0) < 0:
        raise OSError(errno, "cannot set the queue's fail-open flag (kernel older than 3.6?)")
    # the owner of a local packet's socket with each packet (pkt.uid, pkt.gid); a kernel without it
    # (older than 3.15) refuses the flag and gives none: pkt.uid stays None
    nfq_set_queue_flags(q.qh, NFQA_CFG_F_UID_GID, NFQA_CFG_F_UID_GID)
    if nfq_set_queue_flags(q.qh, NFQA_CFG_F_GSO, NFQA_CFG_F_GSO if gso else 0) < 0 and gso:
        raise OSError(errno, "cannot set the queue's GSO flag (kernel older than 3.10?)")


def send_copy_range(int fd, unsigned int queue, unsigned int copy_range):
    """Set the copy range of a bound queue from the thread that reads it, without waiting for an answer.

    libnetfilter_queue's ``nfq_set_mode`` waits for the kernel's acknowledgement on the
    queue's socket, where packet messages arrive too, and would dispatch them from inside
    the call.  This sends the same NFQNL_MSG_CONFIG message (NFQA_CFG_PARAMS: copy range,
    NFQNL_COPY_PACKET) without asking for one; the kernel applies it to every packet queued
    afterwards.  A refusal would come back as an NLMSG_ERROR message, which the reader
    passes over like any message that is not a packet.
    """
    cdef unsigned char msg[32]
    cdef unsigned int n = 16 + 4 + 12
    cdef unsigned short v16
    cdef unsigned int v32
    memset(msg, 0, sizeof(msg))
    v32 = n
    memcpy(msg, &v32, 4)  # nlmsghdr: length, type, flags (NLM_F_REQUEST), sequence, port (host order)
    v16 = <unsigned short>((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG)
    memcpy(msg + 4, &v16, 2)
    v16 = 1
    memcpy(msg + 6, &v16, 2)
    msg[16] = 0  # nfgenmsg: family AF_UNSPEC, version 0, the queue number big-endian
    msg[18] = (queue >> 8) & 0xFF
    msg[19] = queue & 0xFF
    v16 = 4 + 5  # the attribute: length (without padding), type, then the packed params struct
    memcpy(msg + 20, &v16, 2)
    v16 = <unsigned short>NFQA_CFG_PARAMS
    memcpy(msg + 22, &v16, 2)
    msg[24] = (copy_range >> 24) & 0xFF
    msg[25] = (copy_range >> 16) & 0xFF
    msg[26] = (copy_range >> 8) & 0xFF
    msg[27] = copy_range & 0xFF
    msg[28] = <unsigned char>NFQNL_COPY_PACKET
    if send(fd, msg, n, 0) != n:
        raise OSError(errno, f"cannot set the copy range of queue {queue} to {copy_range}")


cdef inline unsigned long long be64(const unsigned char* p) noexcept nogil:
    cdef unsigned long long v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return v


cdef inline bint parse_message(const unsigned char* m, Py_ssize_t n, QueueMessage* q) noexcept nogil:
    """Read one queue message's attributes, once: True for a packet message (its id, hook and payload found).

    The layout is netlink's: a 16-byte nlmsghdr (length, type, ...), the 4-byte nfgenmsg, then
    attributes (2-byte length, 2-byte type, host order, padded to 4 bytes), the values big-endian.
    Read: NFQA_PACKET_HDR, NFQA_PAYLOAD (a pointer into ``m``), what NetfilterQueue's packet object
    holds (NFQA_MARK, NFQA_TIMESTAMP, NFQA_HWADDR, the NFQA_IFINDEX_* devices), NFQA_UID and NFQA_GID
    (-1 each unless both are there), NFQA_SKB_INFO (0 without: GSO, checksum not ready, checksum not
    verified) and NFQA_CAP_LEN (the packet's whole length when the copy range cut it; 0 when it came whole).
    """
    cdef Py_ssize_t off = 20
    cdef unsigned short head[2]
    cdef unsigned int alen, atype, mlen
    cdef long long v
    cdef bint hdr = False
    q.uid = -1
    q.gid = -1
    q.skbinfo = 0
    q.cap_len = 0
    q.payload = NULL
    q.payload_len = 0
    q.mark = 0
    q.ts_sec = q.ts_usec = 0
    q.indev = q.outdev = q.physindev = q.physoutdev = 0
    q.has_hw = False
    if n < 20:
        return False
    memcpy(&mlen, m, 4)
    memcpy(head, m + 4, 2)
    if head[0] != ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET):
        return False
    if mlen < n:
        n = mlen
    while off + 4 <= n:
        memcpy(head, m + off, 4)
        alen = head[0]
        atype = head[1] & 0x7FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
        if alen < 4 or off + alen > n:
            break
        if atype == NFQA_PAYLOAD:
            q.payload = m + off + 4
            q.payload_len = alen - 4
        elif atype == NFQA_PACKET_HDR and alen >= 11:
            q.id = (<unsigned int>m[off + 4] << 24) | (m[off + 5] << 16) | (m[off + 6] << 8) | m[off + 7]
            q.hw_protocol = (m[off + 8] << 8) | m[off + 9]
            q.hook = m[off + 10]
            hdr = True
        elif atype == NFQA_TIMESTAMP and alen >= 20:
            q.ts_sec = <long long>be64(m + off + 4)
            q.ts_usec = <long long>be64(m + off + 12)
        elif atype == NFQA_HWADDR and alen >= 16:
            memcpy(q.hw_addr, m + off + 8, 8)
            q.has_hw = True
        elif alen >= 8:
            v = (<long long>m[off + 4] << 24) | (m[off + 5] << 16) | (m[off + 6] << 8) | m[off + 7]
            if atype == NFQA_MARK:
                q.mark = <unsigned int>v
            elif atype == NFQA_IFINDEX_INDEV:
                q.indev = <unsigned int>v
            elif atype == NFQA_IFINDEX_OUTDEV:
                q.outdev = <unsigned int>v
            elif atype == NFQA_IFINDEX_PHYSINDEV:
                q.physindev = <unsigned int>v
            elif atype == NFQA_IFINDEX_PHYSOUTDEV:
                q.physoutdev = <unsigned int>v
            elif atype == NFQA_UID:
                q.uid = v
            elif atype == NFQA_GID:
                q.gid = v
            elif atype == NFQA_CAP_LEN:
                q.cap_len = v
            elif atype == NFQA_SKB_INFO:
                q.skbinfo = <int>v
        off += (alen + 3) & ~3
    if q.uid < 0 or q.gid < 0:
        q.uid = q.gid = -1
    return hdr and q.payload != NULL


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
    cdef bint batch_short  # that recvmmsg read the socket empty, so once its messages are handled the verdicts go
    # and the reader waits, without another read first: it took fewer messages than it asked for (in C, _serve:
    # only one; a read that brings several under load is followed by another, so that one write carries them all)
    cdef public long long empty_reads  # recvmmsg calls that found nothing
    cdef list pending  # messages handed over by a retired predecessor, dispatched first
    cdef public QueueReader successor
    cdef public long long enobufs
    cdef public long long messages
    cdef public long long calls  # recvmmsg calls that returned messages
    cdef public bint retired  # a successor reads the queue now; this one stops after its current message
    cdef public object sink  # told the owner of each packet's socket: sink.owner = (uid, gid) or None
    cdef long long owner_uid, owner_gid  # what the sink was last told (-1: None)
    cdef int skbinfo  # what the sink was last told of NFQA_SKB_INFO
    cdef long long cap_len  # what the sink was last told of NFQA_CAP_LEN
    cdef QueuePath* fast  # the dispatcher's path for packets no handler sees and its verdict write (NULL: none)
    cdef object fast_target  # the dispatcher, kept alive here
    cdef void* fast_ptr  # the same, for the path's C functions called without the GIL
    cdef public long long fast_packets  # packets that path verdicted without a packet object
    cdef NfPacket spare  # the last packet object, when nothing kept it past its dispatch: the next one reuses it
    cdef public long long packets_reused  # packet objects the reader made again out of the last one

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
        self.owner_uid = -2  # nothing told yet: the first packet always tells
        self.owner_gid = -2
        self.skbinfo = -1
        self.cap_len = -1

    def set_fast(self, target, capsule) -> None:
        """Give each packet message to ``target``'s C path first (a capsule of a ``QueuePath``).

        The path verdicts and records a packet no handler will see straight from the message,
        parsed once here: no packet object, no call through Python.  It declines (0) whenever a
        packet object is needed; the message then goes to libnetfilter_queue as before.  Once the
        socket is read empty the path's verdict write runs at once, before the reading thread goes
        back to Python (a packet's verdict waits for no bookkeeping).
        """
        self.fast = <QueuePath*>PyCapsule_GetPointer(capsule, "pktlab.QueuePath")
        self.fast_target = target
        self.fast_ptr = <void*>target

    cdef int _dispatch(self, NfQueue q, const unsigned char* m, Py_ssize_t n) except -1:
        """One message: through the dispatcher's C path if it takes it, else as a packet object.

        The packet object is NetfilterQueue's, filled from this parse as its own callback fills it
        from libnetfilter_queue's (which would parse the message again); without a dispatcher path the
        message goes to libnetfilter_queue and NetfilterQueue's callback.
        """
        cdef QueueMessage msg
        cdef bint packet = parse_message(m, n, &msg)
        if packet and self.fast != NULL and self.fast.message(self.fast_ptr, &msg):
            self.fast_packets += 1
            return 0
        return self._slow(q, m, n, &msg, packet)

    cdef int _slow(self, NfQueue q, const unsigned char* m, Py_ssize_t n, QueueMessage* msg, bint packet) except -1:
        """A message the dispatcher's C path declined (or not a packet): a packet object, holding the GIL."""
        cdef NfPacket nf
        if not packet or self.fast == NULL:
            self._note_owner(msg)
            nfq_handle_packet(q.h, <char*>m, <int>n)
            return 0
        if q.user_callback is None:
            return 0  # the queue is being unbound: no verdict can be given (NetfilterQueue ignores it too)
        self._note_owner(msg)
        nf = self.spare
        if nf is None:
            nf = NfPacket.__new__(NfPacket)
        else:  # as NfPacket.__new__ leaves it
            self.spare = None
            self.packets_reused += 1
            nf._verdict_is_set = False
            nf._mark_is_set = False
            nf._hwaddr_is_set = False
            nf._timestamp_is_set = False
            nf._given_mark = 0
            nf._given_payload = None
            nf._owned_payload = None
        nf._queue = q
        nf.id = msg.id
        nf.hw_protocol = msg.hw_protocol
        nf.hook = msg.hook
        nf.mark = msg.mark
        nf.payload = <unsigned char*>msg.payload
        nf.payload_len = msg.payload_len
        nf.timestamp.tv_sec = msg.ts_sec
        nf.timestamp.tv_usec = msg.ts_usec
        if msg.has_hw:
            memcpy(nf.hw_addr, msg.hw_addr, 8)
            nf._hwaddr_is_set = True
        nf.indev = msg.indev
        nf.outdev = msg.outdev
        nf.physindev = msg.physindev
        nf.physoutdev = msg.physoutdev
        try:
            self.fast.packet(self.fast_target, nf)
        finally:
            nf.drop_refs()  # the message's buffer is read again next: the packet keeps no pointer into it
        if Py_REFCNT(nf) == 1:  # only this frame's: no held, kept back or rescued packet, no record refers to it
            nf._queue = None  # (the spare must not keep the queue, and its socket, alive once it is unbound)
            self.spare = nf
        return 0

    cdef int _note_owner(self, const QueueMessage* msg) except -1:
        """Tell the sink whose socket the next packet belongs to, its skb info and whole length (when they change)."""
        if self.sink is None:
            return 0
        if msg.uid != self.owner_uid or msg.gid != self.owner_gid:
            self.sink.owner = (msg.uid, msg.gid) if msg.uid >= 0 else None
            self.owner_uid, self.owner_gid = msg.uid, msg.gid
        if msg.skbinfo != self.skbinfo:
            self.sink.skbinfo = msg.skbinfo
            self.skbinfo = msg.skbinfo
        if msg.cap_len != self.cap_len:
            self.sink.cap_len = msg.cap_len
            self.cap_len = msg.cap_len
        return 0

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

    cdef int _flush_fast(self) except -1:
        cdef int e = self.fast.flush(self.fast_ptr)
        if e:
            raise OSError(e, "verdict write failed")
        return 0

    def poll_read(self, NfQueue q, int fd, int wake_fd, int timeout_ms):
        """Wait for the queue's socket or the wake pipe and read the socket, in C, until Python is needed.

        Returns True as soon as the wake pipe is readable (the caller looks at what changed), False once
        a packet needed Python (it and the rest of what waits were then read as :meth:`read` reads, holding
        the GIL) or ``timeout_ms`` passed while the dispatcher has work between reads (kept-back packets,
        TCP adjustment state to expire).
        With the dispatcher's C path (:meth:`set_fast`) the waits, the reads and the packets that path
        takes run without the GIL, however many there are and however long: a packet's verdict waits for
        no Python thread.  Without it (a bare reader) the wait runs without the GIL and the read with it.
        """
        cdef pollfd fds[2]
        cdef int r, err
        if self.fast == NULL or self.pending:
            fds[0].fd = fd
            fds[0].events = POLLIN
            fds[0].revents = 0
            fds[1].fd = wake_fd
            fds[1].events = POLLIN
            fds[1].revents = 0
            with nogil:
                r = poll(fds, 2, timeout_ms)
                err = errno
            if r < 0 and err != EINTR:
                raise OSError(err, "waiting for the queue's socket failed")
            if r > 0 and fds[1].revents:
                return True
            self.read(q, fd, -1)
            return False
        return self._serve(q, fd, wake_fd, timeout_ms) == 1

    cdef int _serve(self, NfQueue q, int fd, int wake_fd, int timeout_ms) except -1:
        """:meth:`poll_read` with the dispatcher's C path: 1 woken, 0 back to Python for anything else."""
        cdef pollfd fds[2]
        cdef int r, got, i, e
        cdef int err = 0  # a system call's failure: raised once back with the GIL
        cdef int result = 0
        cdef bint back = False  # a packet needs Python: the rest goes through read(), holding the GIL
        cdef long long until = mono_ns() + <long long>timeout_ms * 1000000
        cdef long long left
        cdef QueueMessage msg
        cdef const unsigned char* m
        cdef Py_ssize_t n
        cdef bint packet
        fds[0].fd = fd
        fds[0].events = POLLIN
        fds[1].fd = wake_fd
        fds[1].events = POLLIN
        while True:
            back = False
            with nogil:
                while not err and not self.retired:
                    if self.next_i >= self.batch_n:  # nothing left of the last read: read, or wait for more
                        if self.batch_short:  # that read emptied the socket: the verdicts go now (below), then wait
                            self.batch_short = False
                            got = 0
                        else:
                            got = recvmmsg(fd, self.msgs, READ_SLOTS, MSG_DONTWAIT, NULL)
                        if got > 0:
                            self.calls += 1
                            self.batch_n = got
                            self.next_i = 0
                            self.batch_short = got == 1  # sparse traffic: its verdict goes without another read
                        elif got < 0 and errno == ENOBUFS:
                            self.enobufs += 1
                            continue
                        elif got < 0 and errno == EINTR:
                            continue
                        elif got < 0 and errno != EAGAIN:
                            err = errno
                            continue
                        else:  # read empty (or known empty: batch_short): the waiting verdicts go now, then wait
                            if got < 0:
                                self.empty_reads += 1
                            e = self.fast.flush(self.fast_ptr)
                            if e:
                                err = e
                                continue
                            left = (until - mono_ns()) // 1000000
                            fds[0].revents = 0
                            fds[1].revents = 0
                            r = poll(fds, 2, <int>left if left > 0 else 0)
                            if r < 0:
                                if errno != EINTR:
                                    err = errno
                                continue
                            if fds[1].revents:
                                result = 1
                                break
                            if r == 0:
                                if not self.fast.quiet(self.fast_ptr):
                                    break  # the time is up: the caller's work between reads is due
                                until = mono_ns() + <long long>timeout_ms * 1000000  # none due: wait on
                                self.batch_short = True  # (nothing came: wait again without reading)
                            continue
                    while self.next_i < self.batch_n:
                        i = self.next_i
                        self.next_i = i + 1
                        if self.msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
                            err = EMSGSIZE
                            break
                        self.messages += 1
                        m = <const unsigned char*>self.iov[i].iov_base
                        n = self.msgs[i].msg_len
                        packet = parse_message(m, n, &msg)
                        if packet and self.fast.message(self.fast_ptr, &msg):
                            self.fast_packets += 1
                            continue
                        self.next_i = i  # this one and the rest of the read go the way that holds the GIL
                        self.messages -= 1
                        back = True
                        break
                    if back:
                        break
            if not back:
                break
            self.read(q, fd, -1)  # as a bare reader reads: the rest of this read and what waits, holding the GIL
            # and on in C, unless something of the Python loop's is due (it is told of a pause or a stop
            # through the wake pipe, read above): one turn of that loop per read cost more than a handler
            if err or self.retired or self.pending or not self.fast.quiet(self.fast_ptr):
                break
        if err == EMSGSIZE:
            raise OSError(EMSGSIZE, f"a queue message was longer than {READ_SLOT_BYTES} bytes")
        if err:
            raise OSError(err, "reading the queue's socket failed")
        return result

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
                self._dispatch(q, <const unsigned char*>PyBytes_AS_STRING(msg), PyBytes_GET_SIZE(msg))
            while (limit < 0 or n < limit) and not self.retired:
                if self.next_i >= self.batch_n:  # nothing left of the last read (poll_read leaves the rest)
                    want = READ_SLOTS if limit < 0 or limit - n >= READ_SLOTS else <unsigned int>(limit - n)
                    with nogil:
                        got = recvmmsg(fd, self.msgs, want, MSG_DONTWAIT, NULL)
                        err = errno
                    if got < 0:
                        if err == EAGAIN:
                            self.empty_reads += 1
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
                    self.batch_short = <unsigned int>got < want  # the socket is empty now: no need to ask again
                while self.next_i < self.batch_n and (limit < 0 or n < limit):
                    if self.retired:
                        self._hand_over()
                        return n
                    i = self.next_i
                    self.next_i = i + 1
                    if self.msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
                        raise OSError(EMSGSIZE, f"a queue message was longer than {READ_SLOT_BYTES} bytes")
                    n += 1
                    self._dispatch(q, <const unsigned char*>self.iov[i].iov_base, self.msgs[i].msg_len)
                if self.batch_short and self.next_i >= self.batch_n:  # (also a short read poll_read began; it
                    break  # then waits for the socket without reading it empty first)
            if self.fast != NULL:
                self._flush_fast()
            return n
        finally:
            self.messages += n
