# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""A capture file as a packet source, compiled: libpcap reads, the dispatcher decides, spools keep the results.

A packet read from a capture becomes a :class:`CapturedPacket`, a subclass of
NetfilterQueue's packet, so the one dispatcher (``pktlab._hot.Dispatcher``)
runs the handler chain on it exactly as on a packet from the kernel; only its
verdict goes elsewhere: into the :class:`Verdicts` of the capture source,
which append what was accepted (as rewritten) to one spool file and what was
dropped (as captured) to another.  Spools live on disk, so replaying a capture
takes memory bounded by the record, whatever the capture's size.

libpcap reads pcap and pcapng files; a ``filter`` is compiled by libpcap for the
capture's own link type and run on each packet before it is made into an
object (packets outside the filter go straight to the output, as the kernel
passes packets that do not match a queue rule).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdio cimport FILE, fclose, fflush, fwrite, tmpfile
from posix.stdio cimport fileno
from posix.types cimport off_t
from posix.unistd cimport pread
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, nanosleep, timespec

from netfilterqueue._impl cimport u_int8_t

from pktlab.packet._core cimport ethernet_l3

cdef extern from "<pcap/pcap.h>":
    ctypedef struct pcap_t:
        pass
    cdef struct timeval_:
        long tv_sec
        long tv_usec
    cdef struct pcap_pkthdr:
        timeval_ ts
        unsigned int caplen
        unsigned int len
    cdef struct bpf_program:
        unsigned int bf_len
        void* bf_insns
    pcap_t* pcap_open_offline_with_tstamp_precision(const char* fname, unsigned int precision, char* errbuf)
    int pcap_next_ex(pcap_t* p, pcap_pkthdr** h, const unsigned char** data) nogil
    int pcap_datalink(pcap_t* p)
    int pcap_compile(pcap_t* p, bpf_program* fp, const char* s, int optimize, unsigned int netmask)
    int pcap_offline_filter(const bpf_program* fp, const pcap_pkthdr* h, const unsigned char* pkt)
    void pcap_freecode(bpf_program* fp)
    char* pcap_geterr(pcap_t* p)
    void pcap_close(pcap_t* p)
    enum:
        PCAP_ERRBUF_SIZE
        PCAP_TSTAMP_PRECISION_NANO
        PCAP_NETMASK_UNKNOWN

cdef enum:
    NF_DROP = 0

# the link types pktlab replays (libpcap's DLT values): bytes before the IP header, or -1 for Ethernet
LINKS = {12: 0, 14: 0, 101: 0, 228: 0, 229: 0, 1: -1, 113: 16, 276: 20}

# what read() returns
END = 0  # the capture has no more packets
INTERRUPTED = 1  # stopped, paused or retired between two packets
LIMIT = 2  # read as many as asked


cdef inline double mono() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class Spool:
    """Packets (time and bytes) appended to an anonymous temporary file, read back in order."""

    def __cinit__(self):
        self.f = <void*>tmpfile()
        if self.f == NULL:
            raise OSError("cannot create a temporary file for the replay's output")

    def __dealloc__(self):
        if self.f != NULL:
            fclose(<FILE*>self.f)

    cdef int put(self, double t, const unsigned char* p, Py_ssize_t n) except -1:
        cdef unsigned int size = <unsigned int>n
        if fwrite(&t, sizeof(double), 1, <FILE*>self.f) != 1 or fwrite(&size, 4, 1, <FILE*>self.f) != 1 or (
            n and fwrite(p, 1, n, <FILE*>self.f) != <size_t>n
        ):
            raise OSError("the replay's output spool could not be written (disk full?)")
        self.count += 1
        return 0

    def append(self, double t, bytes data):
        self.put(t, <const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))

    def __len__(self):
        return self.count

    def __iter__(self):
        """(time, bytes) of every packet appended so far, in order.

        Read with ``pread`` at offsets of its own: the file position stays the
        writer's, so a replay still running appends where it should.
        """
        cdef double t
        cdef unsigned int size
        cdef long long i
        cdef bytes data
        cdef long long n = self.count
        cdef FILE* f = <FILE*>self.f
        cdef int fd = fileno(f)
        cdef off_t off = 0
        if fflush(f) != 0:
            raise OSError("cannot read the replay's output spool")
        for i in range(n):
            if pread(fd, &t, sizeof(double), off) != sizeof(double) or pread(fd, &size, 4, off + sizeof(double)) != 4:
                raise OSError("the replay's output spool is truncated")
            off += sizeof(double) + 4
            data = PyBytes_FromStringAndSize(NULL, size)
            if size and pread(fd, PyBytes_AS_STRING(data), size, off) != <ssize_t>size:
                raise OSError("the replay's output spool is truncated")
            off += size
            yield t, data


cdef class Verdicts:
    """Where the verdicts of captured packets go: accepted ones (as rewritten) and dropped ones (as read)."""

    cdef public Spool out
    cdef public Spool dropped

    def __init__(self):
        self.out = Spool()
        self.dropped = Spool()

    def __call__(self, CapturedPacket cp, int code, bytes payload, mark):
        cdef bytes data = payload if payload is not None else cp.data
        if code == NF_DROP:
            self.dropped.put(cp.time, <const unsigned char*>PyBytes_AS_STRING(cp.data), PyBytes_GET_SIZE(cp.data))
        else:
            self.out.put(cp.time, <const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


cdef class CapturedPacket(NfPacket):
    """A packet read from a capture file, standing in for NetfilterQueue's packet.

    The dispatcher treats it exactly as a packet from the kernel; its verdict
    (with the new payload and mark a handler gave) goes to ``sink(packet,
    code, payload, mark)`` instead of the kernel.  ``data`` is the frame as read
    (with its Ethernet header, if any); ``l3`` is where the IP header starts in
    it (-1: not IP); ``wire`` its length on the wire when the capture's snap
    length kept only a part of it (0: all of it is here).
    """

    def __init__(self, unsigned int pid, unsigned int hook, bytes data, double time, bint eth, Py_ssize_t l3,
                 sink, unsigned int mark=0):
        self.id = pid
        self.hook = hook
        self.mark = mark
        self.data = data
        self._owned_payload = data
        self.payload = <unsigned char*>PyBytes_AS_STRING(data)
        self.payload_len = PyBytes_GET_SIZE(data)
        self.time = time
        self.eth = eth
        self.l3 = l3
        self.sink = sink

    cdef int verdict(self, u_int8_t verdict) except -1:
        if self._verdict_is_set:
            raise RuntimeError("Verdict already given for this packet")
        self._verdict_is_set = True
        self.sink(self, verdict, self._given_payload, self._given_mark if self._mark_is_set else None)
        return 0


cdef class Ticket:
    """One reading thread's right to read; retired when a successor takes over (a handler is stuck)."""

    cdef public bint retired


cdef class CaptureFile:
    """An open capture: ``read()`` passes its next packets to a dispatcher, one at a time."""

    cdef pcap_t* p
    cdef bpf_program prog
    cdef bint filtered
    cdef public str path
    cdef public int linktype
    cdef public bint eth
    cdef Py_ssize_t strip
    cdef public long long read_count  # packets taken from the file
    cdef public long long unseen  # outside the filter: straight to the output
    cdef public unsigned int hook
    cdef public bint stop
    cdef public bint paused
    cdef public double pace  # 0: as fast as possible
    cdef public long long max_read  # read no more than this many packets from the file (-1: all)
    cdef double t_first  # the first packet's capture time and when it was dispatched (pace)
    cdef double m_first
    cdef bint started

    def __init__(self, str path, str filter=None, unsigned int hook=1):
        cdef char errbuf[PCAP_ERRBUF_SIZE]
        self.path = path
        self.p = pcap_open_offline_with_tstamp_precision(path.encode(), PCAP_TSTAMP_PRECISION_NANO, errbuf)
        if self.p == NULL:
            raise ValueError(errbuf.decode(errors="replace"))
        self.linktype = pcap_datalink(self.p)
        if self.linktype not in LINKS:
            raise LookupError(self.linktype)
        self.strip = max(0, LINKS[self.linktype])
        self.eth = LINKS[self.linktype] < 0
        self.hook = hook
        self.max_read = -1
        if filter:
            if pcap_compile(self.p, &self.prog, filter.encode(), 1, PCAP_NETMASK_UNKNOWN) != 0:
                raise SyntaxError(pcap_geterr(self.p).decode(errors="replace"))
            self.filtered = True

    def __dealloc__(self):
        self.close()

    def close(self):
        if self.filtered:
            pcap_freecode(&self.prog)
            self.filtered = False
        if self.p != NULL:
            pcap_close(self.p)
            self.p = NULL

    def read(self, dispatch, Verdicts verdicts, Ticket ticket, long long limit=-1, stop_if=None):
        """Dispatch packets until the end, ``limit`` packets, a stop or pause, or ``stop_if()`` turns true.

        Returns END, LIMIT or INTERRUPTED.  Packets outside the filter go to the
        output without a dispatch and do not count towards ``limit``.
        """
        cdef pcap_pkthdr* hdr
        cdef const unsigned char* data
        cdef int r
        cdef double t, wait
        cdef bytes frame
        cdef Py_ssize_t l3
        cdef CapturedPacket cp
        cdef timespec ts
        if self.p == NULL:
            return END
        while limit != 0:
            if self.stop or ticket.retired or (self.paused and limit < 0):
                return INTERRUPTED
            if self.max_read >= 0 and self.read_count >= self.max_read:
                return END
            with nogil:
                r = pcap_next_ex(self.p, &hdr, &data)
            if r == -2:
                return END
            if r != 1:
                raise OSError(f"reading {self.path} failed: {pcap_geterr(self.p).decode(errors='replace')}")
            self.read_count += 1
            t = hdr.ts.tv_sec + hdr.ts.tv_usec * 1e-9  # nanosecond precision asked for
            if self.filtered and not pcap_offline_filter(&self.prog, hdr, data):
                self.unseen += 1
                if hdr.caplen > self.strip:
                    verdicts.out.put(t, data + self.strip, hdr.caplen - self.strip)
                continue
            if hdr.caplen < self.strip:
                frame = b""
            else:
                frame = PyBytes_FromStringAndSize(<const char*>data + self.strip, hdr.caplen - self.strip)
            if self.pace > 0:
                if not self.started:
                    self.started = True
                    self.t_first, self.m_first = t, mono()
                wait = (t - self.t_first) / self.pace - (mono() - self.m_first)
                if wait > 0:
                    ts.tv_sec = <long>wait
                    ts.tv_nsec = <long>((wait - ts.tv_sec) * 1e9)
                    with nogil:
                        nanosleep(&ts, NULL)
            l3 = ethernet_l3(<const unsigned char*>PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame)) if self.eth else 0
            cp = CapturedPacket(<unsigned int>self.read_count, self.hook, frame, t, self.eth, l3, verdicts)
            if hdr.len > hdr.caplen and hdr.caplen >= self.strip:
                cp.wire = hdr.len - self.strip
            dispatch(cp)
            if limit > 0:
                limit -= 1
            if stop_if is not None and stop_if():
                self.stop = True
                return INTERRUPTED
        return LIMIT
