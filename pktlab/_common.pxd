# Small inline helpers shared by the compiled modules (a .pxd, so they are inlined where used).
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcpy
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec


# What the queue reader's thread shares with Python threads while it runs without the GIL: a mutex (held only
# over C code, never while taking the GIL or calling Python, so no thread can wait on both) and ordered loads
# and stores of single fields (GCC's __atomic builtins)
cdef extern from "<pthread.h>" nogil:
    ctypedef struct mutex_t "pthread_mutex_t":
        pass
    int mutex_init "pthread_mutex_init"(mutex_t* m, void* attr)
    int mutex_lock "pthread_mutex_lock"(mutex_t* m)
    int mutex_unlock "pthread_mutex_unlock"(mutex_t* m)
    int mutex_destroy "pthread_mutex_destroy"(mutex_t* m)

cdef extern from *:
    """
    /* A mutex whose waiter spins a little before it sleeps (glibc's adaptive kind): for a lock held for a few
       instructions by a thread running on another CPU, no futex wait and no wake-up system call. */
    static inline int pktlab_mutex_init_adaptive(pthread_mutex_t* m) {
    #if defined(__GLIBC__) && defined(PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP)
        pthread_mutexattr_t a;
        int r;
        pthread_mutexattr_init(&a);
        pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ADAPTIVE_NP);
        r = pthread_mutex_init(m, &a);
        pthread_mutexattr_destroy(&a);
        return r;
    #else
        return pthread_mutex_init(m, NULL);
    #endif
    }
    """
    int mutex_init_adaptive "pktlab_mutex_init_adaptive"(mutex_t* m) nogil

# A condition a thread sleeps on for at most a time, woken at once by another (the watchdog's sleep, which
# detach() ends without waiting out the period): CLOCK_MONOTONIC, so that a change of the wall clock does not
# move its end
cdef extern from *:
    """
    #include <pthread.h>
    #include <time.h>
    static inline int pktlab_cond_init(pthread_cond_t* c) {
        pthread_condattr_t a;
        int r;
        pthread_condattr_init(&a);
        pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
        r = pthread_cond_init(c, &a);
        pthread_condattr_destroy(&a);
        return r;
    }
    static inline int pktlab_cond_wait_ns(pthread_cond_t* c, pthread_mutex_t* m, long long ns) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ns += ts.tv_nsec;
        ts.tv_sec += ns / 1000000000LL;
        ts.tv_nsec = ns % 1000000000LL;
        return pthread_cond_timedwait(c, m, &ts);
    }
    """
    ctypedef struct cond_t "pthread_cond_t":
        pass
    int cond_init "pktlab_cond_init"(cond_t* c) nogil
    int cond_wait_ns "pktlab_cond_wait_ns"(cond_t* c, mutex_t* m, long long ns) nogil
    int cond_broadcast "pthread_cond_broadcast"(cond_t* c) nogil
    int cond_destroy "pthread_cond_destroy"(cond_t* c) nogil

cdef extern from *:
    """
    #define pktlab_load_int(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
    #define pktlab_store_int(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
    #define pktlab_load_u32(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
    #define pktlab_store_u32(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
    #define pktlab_load_ll(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
    #define pktlab_store_ll(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
    #define pktlab_fence_acquire() __atomic_thread_fence(__ATOMIC_ACQUIRE)
    #define pktlab_fence_release() __atomic_thread_fence(__ATOMIC_RELEASE)
    """
    int load_int "pktlab_load_int"(int* p) noexcept nogil
    void store_int "pktlab_store_int"(int* p, int v) noexcept nogil
    unsigned int load_u32 "pktlab_load_u32"(unsigned int* p) noexcept nogil
    void store_u32 "pktlab_store_u32"(unsigned int* p, unsigned int v) noexcept nogil
    long long load_ll "pktlab_load_ll"(long long* p) noexcept nogil
    void store_ll "pktlab_store_ll"(long long* p, long long v) noexcept nogil
    void fence_acquire "pktlab_fence_acquire"() noexcept nogil
    void fence_release "pktlab_fence_release"() noexcept nogil

# Ask the CPU for a cache line it will write soon (no fault, no effect on what the program computes): a ring's
# next slot is cold memory, and the lock's release after the slot's stores waited for them to reach the cache.
cdef extern from *:
    """
    #define pktlab_prefetch_w(p) __builtin_prefetch((p), 1, 3)
    """
    void prefetch_w "pktlab_prefetch_w"(const void* p) noexcept nogil


cdef inline double wall_time() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline long long mono_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000000000LL + ts.tv_nsec


# CLOCK_REALTIME's offset from CLOCK_MONOTONIC (ns) and when it was taken (monotonic ns), per module: a packet's
# time is its monotonic instant plus the offset, so that the packet path reads one clock, not two (a read is
# ~20 ns here, 2 % of a packet's path without a handler).  Read again at most every 10 ms: a change of the wall
# clock shows within that.  Shared by threads without a lock: each field is one aligned 8-byte store, and an
# offset a refresh later than its instant is off by at most what the clock was slewed in 10 ms.
cdef extern from *:
    """
    static long long pktlab_wall_off = 0;
    static long long pktlab_wall_off_at = -(1LL << 62);
    """
    long long wall_off "pktlab_wall_off"
    long long wall_off_at "pktlab_wall_off_at"


cdef inline void wall_refresh() noexcept nogil:
    """Take the offset again: CLOCK_REALTIME read between two CLOCK_MONOTONIC reads, against their middle; of up
    to three tries, the one whose reads lay closest together (a thread preempted between two reads would
    otherwise put the offset off by the time it waited)."""
    global wall_off, wall_off_at
    cdef timespec ts
    cdef long long a, b, real
    cdef long long best = 1LL << 62
    cdef long long off = 0
    cdef int i
    for i in range(3):
        a = mono_ns()
        clock_gettime(CLOCK_REALTIME, &ts)
        b = mono_ns()
        real = ts.tv_sec * 1000000000LL + ts.tv_nsec
        if b - a < best:
            best = b - a
            off = real - (a + (b - a) // 2)
        if best < 2000:
            break
    wall_off = off
    wall_off_at = b


cdef inline double wall_of(long long mono) noexcept nogil:
    """The wall-clock time (seconds since the epoch) at the CLOCK_MONOTONIC instant ``mono`` (ns), just read."""
    cdef long long m
    if mono - wall_off_at > 10000000LL:
        wall_refresh()
    m = mono + wall_off
    return m // 1000000000LL + (m % 1000000000LL) * 1e-9


cdef inline Py_ssize_t tcp_stream_key(const unsigned char* ip, Py_ssize_t tcp, unsigned char* key) noexcept nogil:
    """A TCP segment's stream as the dispatcher and sequence adjustment both name it, into ``key`` (36 bytes):
    source and destination address, then the ports, as in the packet; its length.  ``ip``: the IPv4/IPv6
    header; ``tcp``: the TCP header's offset from it."""
    cdef Py_ssize_t a = 8 if ip[0] >> 4 == 4 else 32
    memcpy(key, ip + (12 if a == 8 else 8), a)
    memcpy(key + a, ip + tcp, 4)
    return a + 4


cdef inline const unsigned char* buf_ptr(object buf, Py_ssize_t* n) except NULL:
    if type(buf) is bytes:
        n[0] = PyBytes_GET_SIZE(buf)
        return <const unsigned char*>PyBytes_AS_STRING(buf)
    if type(buf) is bytearray:
        n[0] = PyByteArray_GET_SIZE(buf)
        return <const unsigned char*>PyByteArray_AS_STRING(buf)
    raise TypeError(f"packet buffer must be bytes or bytearray, not {type(buf).__name__}")


# The message headers of recvmmsg/sendmmsg (the reader reads with them, the raw sender sends with them)
cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len


# One queue message, parsed once by the reader (kernel/_reader.pyx) and read by the dispatcher's path for
# packets no handler sees (pipeline/_dispatch.pyx), which the reader reaches through a capsule holding a
# ``QueuePath`` (the kernel stage imports nothing of the pipeline's)
cdef struct QueueMessage:
    unsigned int id  # NFQA_PACKET_HDR: the packet's id, hardware protocol and hook
    unsigned short hw_protocol
    unsigned char hook
    unsigned int mark  # NFQA_MARK (0: none)
    long long ts_sec  # NFQA_TIMESTAMP (0, 0: none)
    long long ts_usec
    unsigned int indev, outdev, physindev, physoutdev  # NFQA_IFINDEX_* (0: none)
    unsigned char hw_addr[8]  # NFQA_HWADDR (has_hw: there)
    bint has_hw
    const unsigned char* payload  # NFQA_PAYLOAD, inside the reader's buffer
    Py_ssize_t payload_len
    long long cap_len  # NFQA_CAP_LEN: the whole length when the copy range cut the packet (0: whole)
    long long uid  # NFQA_UID / NFQA_GID of a local socket's packet (-1: none)
    long long gid
    int skbinfo  # NFQA_SKB_INFO (0: none)

# 1: the dispatcher gave the packet its verdict and record; 0: it needs a packet object (the reader makes one).
# Called without the GIL (``target``: the dispatcher, kept alive by the reader)
ctypedef int (*queue_fast_fn)(void* target, const QueueMessage* m) noexcept nogil
# write the verdicts waiting in the dispatcher (the reader calls it once it has read its socket empty): 0 or the
# errno of a write that failed; without the GIL
ctypedef int (*queue_flush_fn)(void* target) noexcept nogil
# a packet a handler sees: its NetfilterQueue packet object, made by the reader from the same parse
ctypedef int (*queue_packet_fn)(object target, object nf) except -1
# 1: the dispatcher has nothing to do between reads (no kept-back packet, no TCP adjustment state to expire), so
# the reader may go on waiting without going back to Python when its wait's time is up; without the GIL
ctypedef int (*queue_quiet_fn)(void* target) noexcept nogil

cdef struct QueuePath:
    queue_fast_fn message
    queue_flush_fn flush
    queue_packet_fn packet
    queue_quiet_fn quiet
