# The record ring's declarations, for the dispatcher (pktlab/pipeline/_dispatch.pyx).
cimport cython


cdef struct Slot:
    double time
    long long ns
    long long mono  # CLOCK_MONOTONIC when the verdict was decided (the kernel's clock, ns)
    unsigned int id
    unsigned int size
    unsigned short keep
    unsigned char hook
    unsigned char code
    unsigned char flags  # 1 modified, 2 error, 4 has a handler name or error text in the lists


@cython.final
cdef class Ring:
    cdef public Py_ssize_t capacity
    cdef public Py_ssize_t snaplen
    cdef public long long n
    cdef public long long accepted
    cdef public long long dropped
    cdef public long long repeated
    cdef public long long sent  # packets pktlab sent itself (pkt.reply, Session.send): code SENT
    cdef public long long errors
    cdef Slot* slots
    cdef unsigned char* heads
    cdef list by
    cdef list err

    cdef Slot* _next(self)
    cdef void _count(self, int code, bint error)
    cdef void push(self, double t, unsigned int pid, unsigned char hook, Py_ssize_t size,
                   const unsigned char* head, Py_ssize_t avail, int code, long long ns, long long mono,
                   object by, object err, bint modified)
