# The capture source's compiled parts, shared with the dispatcher (pktlab/_hot.pyx).
from netfilterqueue._impl cimport Packet as NfPacket


cdef class Spool:
    cdef void* f
    cdef public long long count
    cdef int put(self, double t, const unsigned char* p, Py_ssize_t n) except -1


cdef class CapturedPacket(NfPacket):
    cdef public object sink
    cdef public bytes data
    cdef public double time
    cdef public Py_ssize_t l3
    cdef public bint eth
    cdef public Py_ssize_t wire  # the frame's length on the wire when the capture kept less of it (0: all kept)
