# The packet core's declarations, for the dispatcher (pktlab/pipeline/_dispatch.pyx).

cdef class ViewCore


cdef class PacketCore:
    cdef public object _meta
    cdef public object _buf
    cdef public bint _dirty
    cdef public bint _modified
    cdef public object _mark
    cdef int _l4proto  # transport protocol (-1 none), its offset and whether the packet is a fragment:
    cdef Py_ssize_t _l4off  # found once per layout (see _relayout), kept in C: no tuple per packet
    cdef int _l4frag  # 0 not a fragment, 1 the first fragment, 2 a later one (no transport header)
    cdef bint _l4known
    cdef public object _ipv  # the IPv4/IPv6 view, made once (reset by _relayout when the layout may change)
    cdef public object _l4v  # the transport view, likewise
    cdef ViewCore _ipv_spare  # views of an earlier packet this (reused) packet object may take again
    cdef ViewCore _l4v_spare
    cdef public double time
    cdef public Py_ssize_t _l3  # where the IP header starts: 0 from a queue, 14/18 after Ethernet, -1 none
    cdef public bint _eth
    cdef object __weakref__

    cpdef object _writable(self)
    cpdef void _relayout(self)
    cdef int _find_l4(self) except -1
    cpdef tuple _upper(self)
    cdef object _layer(self, int proto, object cls)
    cdef object _whole(self, int version, object cls)


cdef class ViewCore:
    cdef public PacketCore _pkt
    cdef public Py_ssize_t _off


cdef PacketCore Packet_from(object cls, object meta, object data, double now)
cdef void packet_done(PacketCore pkt)
cdef bint packet_recycle(PacketCore pkt, Py_ssize_t refs)
cpdef fix_packet(PacketCore pkt)
