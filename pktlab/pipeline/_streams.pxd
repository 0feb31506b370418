# How far each TCP stream went, in C (pipeline/_streams.pyx): the dispatcher notes it, sequence adjustment asks.
cimport cython

from pktlab._common cimport mutex_t


cdef struct StreamEnd:
    unsigned char key[36]
    unsigned char klen  # 0: an empty slot
    unsigned int end


@cython.final
cdef class StreamEnds:
    cdef StreamEnd* table
    cdef Py_ssize_t slots
    cdef readonly Py_ssize_t limit  # fixed: the table is sized for it (at most half full)
    cdef Py_ssize_t count
    cdef mutex_t lock

    cdef StreamEnd* _find(self, const unsigned char* key, Py_ssize_t klen) noexcept nogil
    cdef void note(self, const unsigned char* key, Py_ssize_t klen, unsigned int end) noexcept nogil
