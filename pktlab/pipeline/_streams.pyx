# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""How far each TCP stream has gone through accepted packets: a bounded table in C.

The dispatcher notes every accepted TCP segment (its stream's key and the sequence number after it), also from
the queue reader's path that runs without the GIL; sequence adjustment asks it, holding the GIL, whether bytes
behind a connection's first rewrite already went.  A mutex covers each note and each look-up (C code only).
Bounded like the dict it replaces: when ``limit`` streams are known it forgets them all, which makes a first
rewrite no riskier than before any was noted.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy, memset

from pktlab._common cimport mutex_destroy, mutex_init, mutex_lock, mutex_unlock


cdef inline size_t _hash(const unsigned char* key, Py_ssize_t klen) noexcept nogil:
    cdef size_t h = 14695981039346656037ULL  # FNV-1a
    cdef Py_ssize_t i
    for i in range(klen):
        h = (h ^ key[i]) * 1099511628211ULL
    return h


cdef class StreamEnds:
    """Stream key (bytes, as ``tcp_stream_key`` makes it) -> the sequence number after the highest byte accepted."""

    def __cinit__(self, Py_ssize_t limit=65536):
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.slots = 1
        while self.slots < 2 * limit:
            self.slots *= 2
        self.table = <StreamEnd*>calloc(self.slots, sizeof(StreamEnd))
        if self.table == NULL:
            raise MemoryError()
        mutex_init(&self.lock, NULL)

    def __dealloc__(self):
        mutex_destroy(&self.lock)
        free(self.table)

    cdef StreamEnd* _find(self, const unsigned char* key, Py_ssize_t klen) noexcept nogil:
        """The key's slot, or the empty slot where it would go (the table is never full: at most half)."""
        cdef size_t i = _hash(key, klen) & (self.slots - 1)
        cdef StreamEnd* e
        while True:
            e = &self.table[i]
            if e.klen == 0 or (e.klen == klen and memcmp(e.key, key, klen) == 0):
                return e
            i = (i + 1) & (self.slots - 1)

    cdef void note(self, const unsigned char* key, Py_ssize_t klen, unsigned int end) noexcept nogil:
        """The stream went up to ``end`` (kept if beyond what it had, in sequence space)."""
        cdef StreamEnd* e
        if klen <= 0 or klen > 36:
            return
        mutex_lock(&self.lock)
        e = self._find(key, klen)
        if e.klen == 0:
            if self.count >= self.limit:
                memset(self.table, 0, self.slots * sizeof(StreamEnd))
                self.count = 0
                e = self._find(key, klen)
            memcpy(e.key, key, klen)
            e.klen = <unsigned char>klen
            e.end = end
            self.count += 1
        elif <int>(end - e.end) > 0:
            e.end = end
        mutex_unlock(&self.lock)

    def get(self, bytes key, default=None):
        """The sequence number after the highest byte accepted of stream ``key``, or ``default``."""
        cdef Py_ssize_t klen = PyBytes_GET_SIZE(key)
        cdef StreamEnd* e
        cdef unsigned int end = 0
        cdef bint found = False
        if klen <= 0 or klen > 36:
            return default
        mutex_lock(&self.lock)
        e = self._find(<const unsigned char*>PyBytes_AS_STRING(key), klen)
        if e.klen:
            found = True
            end = e.end
        mutex_unlock(&self.lock)
        return end if found else default

    def note_end(self, bytes key, unsigned int end):
        """:meth:`note` from Python (tests)."""
        self.note(<const unsigned char*>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), end)

    def clear(self):
        mutex_lock(&self.lock)
        memset(self.table, 0, self.slots * sizeof(StreamEnd))
        self.count = 0
        mutex_unlock(&self.lock)

    def __len__(self):
        return self.count
