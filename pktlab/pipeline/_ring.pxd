# The record ring's declarations, for the dispatcher (pktlab/pipeline/_dispatch.pyx).
cimport cython

from pktlab._common cimport mutex_t


cdef struct Slot:
    unsigned int seq  # odd while the slot is being written (readers copy it again)
    unsigned char hook
    unsigned char code
    unsigned char flags  # 1 modified, 2 error
    unsigned short keep
    unsigned int id
    unsigned int size
    long long entry  # which entry this is (0, 1, ...: the ring's count when it was written)
    double time
    long long ns
    long long mono  # CLOCK_MONOTONIC when the verdict was decided (the kernel's clock, ns)


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
    cdef long long* obj_entry  # the entry whose handler name and error the lists hold, per slot (-1: none)
    cdef list by
    cdef list err
    cdef mutex_t lock  # writers take it (the queue reader writes without the GIL); never held across Python

    cdef long long put(self, double t, unsigned int pid, unsigned char hook, Py_ssize_t size,
                       const unsigned char* head, Py_ssize_t avail, int code, long long ns, long long mono,
                       bint modified, bint error) noexcept nogil
    cdef void push(self, double t, unsigned int pid, unsigned char hook, Py_ssize_t size,
                   const unsigned char* head, Py_ssize_t avail, int code, long long ns, long long mono,
                   object by, object err, bint modified)
