# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The record's ring, compiled: one fixed slot and the first bytes of every packet, in preallocated memory.

The queue reader writes entries without the GIL (packets no handler sees), while notebook threads read them and
other threads write their own (a held packet's verdict, a packet pktlab sent).  Writers take the ring's mutex;
readers take nothing: each slot carries a sequence count (odd while it is written, a seqlock) and its entry
number, and a reader copies a slot again when it changed under it and leaves out a slot already reused by a
newer entry.  The Python objects of an entry (its handler's name, its error) live in two lists that only
writers holding the GIL touch, tagged with the entry they belong to.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

cdef extern from "<sched.h>" nogil:
    int sched_yield()

from pktlab._common cimport (fence_acquire, fence_release, load_ll, load_u32, mono_ns, mutex_destroy, mutex_init,
                             mutex_lock, mutex_unlock, prefetch_w, store_ll, store_u32)

cdef enum:
    AHEAD = 2  # entries ahead whose memory a put fetches for writing (Ring.put)
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
        cdef Py_ssize_t i
        if capacity < 1:
            raise ValueError("record capacity must be at least 1")
        if snaplen < 0 or snaplen > 65535:
            raise ValueError("snaplen must be 0..65535")
        self.capacity = capacity
        self.snaplen = snaplen
        self.slots = <Slot*>calloc(capacity, sizeof(Slot))
        self.heads = <unsigned char*>malloc(capacity * snaplen if snaplen else 1)
        self.obj_entry = <long long*>malloc(capacity * sizeof(long long))
        if self.slots == NULL or self.heads == NULL or self.obj_entry == NULL:
            raise MemoryError(f"cannot allocate a record of {capacity} packets x {snaplen} bytes")
        # touch every page now, so the reader does not take a page fault every 16 packets later
        memset(self.heads, 0, capacity * snaplen if snaplen else 1)
        for i in range(capacity):
            self.obj_entry[i] = -1
            self.slots[i].entry = -1
        self.by = [None] * capacity
        self.err = [None] * capacity
        mutex_init(&self.lock, NULL)

    def __dealloc__(self):
        mutex_destroy(&self.lock)
        free(self.slots)
        free(self.heads)
        free(self.obj_entry)

    def clear(self):
        """Forget every entry and counter (a capture read again starts a fresh record)."""
        cdef Py_ssize_t i
        mutex_lock(&self.lock)
        self.n = self.accepted = self.dropped = self.repeated = self.sent = self.errors = 0
        for i in range(self.capacity):
            store_u32(&self.slots[i].seq, self.slots[i].seq + 2)  # a reader copying it copies again
            self.slots[i].entry = -1
            self.obj_entry[i] = -1
        mutex_unlock(&self.lock)
        for i in range(self.capacity):
            self.by[i] = None
            self.err[i] = None

    cdef long long put(self, double t, unsigned int pid, unsigned char hook, Py_ssize_t size,
                       const unsigned char* head, Py_ssize_t avail, int code, long long ns, long long mono,
                       bint modified, bint error) noexcept nogil:
        """Write one entry (any thread, with or without the GIL); its entry number."""
        cdef long long e
        cdef Slot* s
        cdef Py_ssize_t i
        cdef Py_ssize_t keep = avail if avail < self.snaplen else self.snaplen
        if keep < 0:
            keep = 0
        mutex_lock(&self.lock)
        e = self.n
        i = e % self.capacity
        s = &self.slots[i]
        store_u32(&s.seq, s.seq + 1)  # odd: being written
        fence_release()
        s.entry = e
        s.time = t
        s.ns = ns
        s.mono = mono
        s.id = pid
        s.size = <unsigned int>size
        s.keep = <unsigned short>keep
        s.hook = hook
        s.code = <unsigned char>code
        s.flags = (1 if modified else 0) | (2 if error else 0)
        if keep:
            memcpy(self.heads + i * self.snaplen, head, keep)
        store_u32(&s.seq, s.seq + 1)  # even again: written
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
        store_ll(&self.n, e + 1)
        mutex_unlock(&self.lock)
        # the entry after next is cold memory (the ring is tens of MB): fetch its lines for writing now, so that
        # its stores do not stall that put's unlock (a full barrier) on cache misses (~7 % of the reader's time)
        i += AHEAD
        if i >= self.capacity:
            i %= self.capacity
        prefetch_w(&self.slots[i])
        prefetch_w(<unsigned char*>&self.slots[i] + sizeof(Slot) - 1)  # (a slot may straddle two lines)
        if self.snaplen:
            prefetch_w(self.heads + i * self.snaplen)
            if self.snaplen > 64:
                prefetch_w(self.heads + i * self.snaplen + 64)
        return e

    cdef void push(self, double t, unsigned int pid, unsigned char hook, Py_ssize_t size,
                   const unsigned char* head, Py_ssize_t avail, int code, long long ns, long long mono,
                   object by, object err, bint modified):
        """Write one entry with its handler's name and error (holding the GIL)."""
        cdef long long e = self.put(t, pid, hook, size, head, avail, code, ns, mono, modified, err is not None)
        cdef Py_ssize_t i
        if by is None and err is None:
            return
        i = e % self.capacity
        old_by, old_err = self.by[i], self.err[i]  # released after the lists are consistent again
        if load_ll(&self.slots[i].entry) == e:  # not taken by a newer entry meanwhile
            self.by[i] = by
            self.err[i] = err
            self.obj_entry[i] = e
        del old_by, old_err

    def append(self, double time, unsigned int pid, unsigned char hook, Py_ssize_t size, bytes head, int code,
               handler, long long ns, error, bint modified):
        """Add one entry from Python (tests and tools; the dispatcher writes slots directly)."""
        self.push(time, pid, hook, size, <const unsigned char*>PyBytes_AS_STRING(head), len(head), code, ns,
                  mono_ns(), handler, error, modified)

    def count_since(self, double t):
        """How many of the packets held arrived at or after time ``t`` (newest first, stops early)."""
        cdef long long n = load_ll(&self.n)
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

        ``verdicts`` maps a verdict code to its name, ``hooks`` a hook number to its name.  An entry
        overwritten by a newer one while this runs is left out (it is no longer held).
        """
        cdef long long n = load_ll(&self.n)
        cdef Py_ssize_t cap = self.capacity
        cdef long long count = n if n < cap else cap
        cdef long long j
        cdef Py_ssize_t i
        cdef Slot s
        cdef unsigned int s1
        cdef int attempt
        cdef bint whole
        cdef unsigned char* head = <unsigned char*>malloc(self.snaplen if self.snaplen else 1)
        if head == NULL:
            raise MemoryError()
        if 0 <= last < count:
            count = last
        out = []
        try:
            for j in range(n - count, n):
                i = j % cap
                whole = False
                for attempt in range(100000):
                    s1 = load_u32(&self.slots[i].seq)
                    if s1 & 1:  # being written: the writer holds it for a few stores (or was descheduled)
                        if attempt % 64 == 63:
                            sched_yield()
                        continue
                    s = self.slots[i]
                    if s.keep > self.snaplen:
                        s.keep = 0  # read mid-write: the copy is taken again below
                    memcpy(head, self.heads + i * self.snaplen, s.keep)
                    by, err, tagged = self.by[i], self.err[i], self.obj_entry[i]
                    fence_acquire()
                    if load_u32(&self.slots[i].seq) == s1:
                        whole = True
                        break
                if not whole or s.entry != j:
                    continue  # taken by a newer entry: no longer held
                if tagged != j:
                    by = err = None
                elif err is not None and type(err) is not str:
                    err = str(err)  # a handler's failure (HandlerFailure): its text is made when first read
                out.append(entry(
                    s.time, s.id, hooks[s.hook] if s.hook < len(hooks) else str(s.hook), s.size,
                    PyBytes_FromStringAndSize(<const char*>head, s.keep),
                    verdicts[s.code], by, s.ns / 1000.0, err, bool(s.flags & 1), s.mono,
                ))
        finally:
            free(head)
        return out
