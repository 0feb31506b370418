# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The record's ring, compiled: one fixed slot and the first bytes of every packet, in preallocated memory."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

from pktlab._common cimport mono_ns

cdef enum:
    NF_DROP = 0
    NF_ACCEPT = 1
    SENT = 255  # not a verdict: a packet pktlab sent (see pipeline/sending.py)


cdef class Ring:
    """The last ``capacity`` packets in preallocated memory, and counters over all of them.

    A packet's entry is a fixed-size slot plus its first ``snaplen`` bytes in
    one big buffer: recording allocates nothing and touches two cache lines,
    where a ring of Python tuples allocated four objects per packet and freed
    four cold ones.  Entries become tuples only when read (:meth:`snapshot`).
    """

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
        self.n = self.accepted = self.dropped = self.repeated = self.sent = self.errors = 0
        memset(self.slots, 0, self.capacity * sizeof(Slot))
        for i in range(self.capacity):
            self.by[i] = None
            self.err[i] = None

    cdef Slot* _next(self):
        cdef Py_ssize_t i = self.n % self.capacity
        cdef Slot* s = &self.slots[i]
        if s.flags & 4:  # forget the objects of the entry this slot held
            self.by[i] = None
            self.err[i] = None
        self.n += 1
        return s

    cdef void _count(self, int code, bint error):
        if code == NF_ACCEPT:
            self.accepted += 1
        elif code == NF_DROP:
            self.dropped += 1
        elif code == SENT:
            self.sent += 1
        else:
            self.repeated += 1
        if error:
            self.errors += 1

    cdef void push(self, double t, unsigned int pid, unsigned char hook, Py_ssize_t size,
                   const unsigned char* head, Py_ssize_t avail, int code, long long ns, long long mono,
                   object by, object err, bint modified):
        cdef Py_ssize_t i = self.n % self.capacity
        cdef Slot* s = self._next()
        cdef Py_ssize_t keep = avail if avail < self.snaplen else self.snaplen
        s.time = t
        s.ns = ns
        s.mono = mono
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
                  mono_ns(), handler, error, modified)

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
                verdicts[s.code], self.by[i], s.ns / 1000.0, self.err[i], bool(s.flags & 1), s.mono,
            ))
        return out
