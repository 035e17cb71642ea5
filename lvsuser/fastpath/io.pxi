# I/O drivers: what moves frames between the kernel and the core.  Included by _fastpath.pyx;
# includes the drivers themselves (io_afpacket.pxi, io_tun.pxi) at the end.
#
# Theory of operation
# -------------------
# A driver owns a batch of frame slots ("the arena"): each slot has headroom in front of the frame
# (encapsulation prepends an outer header in place) and room behind it.  One turn of a driver loop:
#
#   1. wait (poll) without the GIL on the driver's fds and its stop eventfd;
#   2. copy every waiting frame into a slot, giving the ring slot back to the kernel at once;
#      on the way, frames the kernel handed over with a partial checksum (veth, TP_STATUS_CSUMNOTREADY)
#      get their L4 checksum completed, and TCP super-frames (GSO/TSO from a local sender on veth,
#      larger than the link MTU) are cut into MTU-sized segments, as the NIC would have done;
#   3. hand the whole batch to the core (the C batch entry without the GIL, or, for the pure
#      Python core, `process()` per frame with the GIL);
#   4. transmit each frame the core returned with an egress interface, then kick the TX rings
#      once per batch.
#
# The core therefore always receives complete, MTU-sized frames with correct checksums, which is
# what the golden tables specify; csum_partial is never needed on this path.
# Counters are plain C integers bumped by the loop and read by `stats()`; nothing logs per packet.
#
# The drivers and the core share one vocabulary: frames are the core's `lvs_frame` (core.pxi),
# verdicts its LVS_* and protocol numbers parse.pxi's, and checksums and byte access are
# csum.pxi's helpers.  Only what the core has no use for lives here (the arena, the segmentation
# of super-frames, the counters).

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.string cimport memcpy, memset
from libc.stdlib cimport malloc, free, calloc
from libc.errno cimport errno, EAGAIN, EINTR, ENOBUFS, ENOMEM
import logging
import os
import threading


cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum:
        POLLIN
        POLLERR
        POLLHUP


cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC


cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t count)
    ssize_t write(int fd, const void *buf, size_t count)
    int close(int fd)


cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec *tp)
    enum:
        CLOCK_MONOTONIC


cdef extern from "<arpa/inet.h>" nogil:
    uint16_t htons(uint16_t)        # for socket(2)'s protocol argument


cdef enum:
    IO_BATCH = 256              # frames per core call
    IO_HEADROOM = 128           # free bytes before each frame (IPIP/IPv6 encapsulation, VLAN)
    IO_MAX_IFS = 64             # interfaces one AF_PACKET driver serves
    ETH_HLEN_ = 14

# A frame between a driver and the core is the core's lvs_frame (core.pxi): `data` points into
# the driver's slot (with `headroom` bytes free before it and `tailroom` after it), `ifindex` is
# the arrival interface (L2 mode) or the TUN device's; the core rewrites it in place, may move
# `data` back into the headroom (encapsulation) and change `len`, and sets out_ifindex (0:
# nothing to send) and verdict.


# Per-driver counters, exported by stats().
cdef struct lvs_io_counters:
    uint64_t rx_frames
    uint64_t rx_bytes
    uint64_t tx_frames
    uint64_t tx_bytes
    uint64_t batches
    uint64_t wakeups             # poll() returns: about 10/s when idle, more under traffic
    uint64_t csum_completed      # partial checksums completed before the core saw the frame
    uint64_t gso_split           # super-frames cut into segments
    uint64_t gso_segments
    uint64_t drop_truncated      # the ring had less than the whole frame
    uint64_t drop_gso_unsupported
    uint64_t drop_tx_full        # no free TX slot even after a kick
    uint64_t drop_tx_too_big     # frame larger than a TX slot
    uint64_t drop_tx_no_ring     # core chose an interface this driver does not serve
    uint64_t tx_errors           # send()/write() failures
    uint64_t rx_ring_drops       # frames the kernel dropped because the RX ring was full
    uint64_t core_errors         # a Python core raised: that batch was not sent
    uint64_t socket_errors       # errors pending on a ring's socket (interface went down)


def io_counter_names():
    """The names of the I/O drivers' counters, in order: the keys of every driver's stats()."""
    cdef lvs_io_counters zero
    memset(&zero, 0, sizeof(zero))
    cdef dict as_dict = zero
    return tuple(as_dict)


cdef inline double io_now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


# ---------------------------------------------------------------------------------- checksums
# The driver's own checksum needs (completing partial checksums, re-checksumming segments) are
# built from csum.pxi's RFC 1071 helpers, the ones the core uses.

# Where the L3 header and the L4 protocol of an Ethernet frame are; 0 if not IPv4/IPv6 with a
# plain TCP/UDP header (IPv6 extension headers are left to the core).  Deliberately shallower
# than parse.pxi's lvs_parse_ip, which judges a packet for the core: here the frame may be a
# super-frame not yet cut, and only the offsets the segmentation rewrites are wanted.
cdef int io_locate_l4(const uint8_t *frame, uint32_t len, uint32_t *l3_off, uint32_t *l4_off,
                      uint8_t *proto, uint8_t *is_v6) noexcept nogil:
    cdef uint16_t ethertype
    cdef uint32_t ihl
    if len < ETH_HLEN_ + 20:
        return 0
    ethertype = lvs_get16(frame + 12)
    if ethertype == ETHP_IP:
        if (frame[14] >> 4) != 4:
            return 0
        ihl = (frame[14] & 0x0F) * 4
        if ihl < 20 or len < ETH_HLEN_ + ihl:
            return 0
        # fragments carry no L4 header (after the first); leave them alone
        if (lvs_get16(frame + 14 + 6) & 0x3FFF) != 0:
            return 0
        l3_off[0] = ETH_HLEN_
        l4_off[0] = ETH_HLEN_ + ihl
        proto[0] = frame[14 + 9]
        is_v6[0] = 0
        return 1
    if ethertype == ETHP_IPV6:
        if len < ETH_HLEN_ + 40:
            return 0
        l3_off[0] = ETH_HLEN_
        l4_off[0] = ETH_HLEN_ + 40
        proto[0] = frame[14 + 6]
        is_v6[0] = 1
        return 1
    return 0


# Complete a CHECKSUM_PARTIAL frame: the L4 checksum field holds the pseudo-header sum; the
# sender's NIC would sum the L4 segment over it and store the complement.  Returns 1 if done.
cdef int io_complete_csum(uint8_t *frame, uint32_t len) noexcept nogil:
    cdef uint32_t l3_off, l4_off, field
    cdef uint8_t proto, is_v6
    cdef uint32_t result
    if not io_locate_l4(frame, len, &l3_off, &l4_off, &proto, &is_v6):
        return 0
    if proto == PROTO_TCP_:
        field = l4_off + 16
    elif proto == PROTO_UDP_:
        field = l4_off + 6
    else:
        return 0
    if field + 2 > len:
        return 0
    result = (~lvs_csum_add(0, frame + l4_off, len - l4_off)) & 0xFFFF
    if proto == PROTO_UDP_ and result == 0:
        result = 0xFFFF
    lvs_put16(frame + field, result)
    return 1


# Full TCP checksum of a segment whose header and payload are in place.
cdef void io_tcp_checksum(uint8_t *frame, uint32_t len, uint32_t l3_off, uint32_t l4_off,
                          uint8_t is_v6) noexcept nogil:
    cdef uint32_t l4_len = len - l4_off
    cdef uint32_t total
    lvs_put16(frame + l4_off + 16, 0)
    if is_v6:
        total = lvs_pseudo_sum(1, frame + l3_off + 8, frame + l3_off + 24, PROTO_TCP_, l4_len)
    else:
        total = lvs_pseudo_sum(0, frame + l3_off + 12, frame + l3_off + 16, PROTO_TCP_, l4_len)
    total = lvs_csum_add(total, frame + l4_off, l4_len)
    lvs_put16(frame + l4_off + 16, (~total) & 0xFFFF)


# ------------------------------------------------------------------------------------- arena

cdef class _FrameArena:
    """IO_BATCH slots of equal size; a batch fills them from slot 0 up."""
    cdef uint8_t *mem
    cdef uint32_t slot_size
    cdef lvs_frame frames[IO_BATCH]
    cdef int count

    def __cinit__(self, uint32_t max_frame):
        # headroom + the largest frame + room for a core-built reply (ICMP quotes up to 576 bytes)
        self.slot_size = (IO_HEADROOM + max_frame + 256 + 63) & ~(<uint32_t>63)
        self.mem = <uint8_t *>malloc(<size_t>self.slot_size * IO_BATCH)
        if self.mem == NULL:
            raise MemoryError()
        self.count = 0

    def __dealloc__(self):
        free(self.mem)

    cdef inline lvs_frame *take(self, int32_t ifindex) noexcept nogil:
        """The next free slot, empty, or NULL when the batch is full."""
        cdef lvs_frame *f
        if self.count >= IO_BATCH:
            return NULL
        f = &self.frames[self.count]
        f.data = self.mem + <size_t>self.count * self.slot_size + IO_HEADROOM
        f.len = 0
        f.headroom = IO_HEADROOM
        f.tailroom = self.slot_size - IO_HEADROOM
        f.ifindex = ifindex
        f.out_ifindex = 0
        f.verdict = 0
        self.count += 1
        return f

    cdef inline void commit_len(self, lvs_frame *f, uint32_t n) noexcept nogil:
        f.len = n
        f.tailroom = self.slot_size - IO_HEADROOM - n


# Copy one received Ethernet frame into the arena: completes partial checksums and cuts TCP
# super-frames at `mtu`.  Returns the number of slots used (0 if the frame was dropped, -1 if the
# batch has no room: flush and call again).
cdef int io_ingest_ethernet(_FrameArena arena, const uint8_t *src, uint32_t len, int32_t ifindex,
                            uint32_t mtu, int csum_partial, lvs_io_counters *ctr) noexcept nogil:
    cdef lvs_frame *f
    cdef uint32_t l3_off, l4_off, tcp_hlen, hdr_len, payload, mss, off, chunk, seq
    cdef uint32_t nseg, i
    cdef uint16_t ip_id
    cdef uint8_t proto, is_v6, flags
    cdef uint8_t *d
    if len <= mtu + ETH_HLEN_:
        if len > arena.slot_size - IO_HEADROOM:
            ctr.drop_truncated += 1
            return 0
        f = arena.take(ifindex)
        if f == NULL:
            return -1
        memcpy(f.data, src, len)
        arena.commit_len(f, len)
        if csum_partial and io_complete_csum(f.data, len):
            ctr.csum_completed += 1
        return 1
    # A super-frame: only TCP can be cut here (UDP GSO would need the sender's segment size).
    if not io_locate_l4(src, len, &l3_off, &l4_off, &proto, &is_v6) or proto != PROTO_TCP_ \
            or l4_off + 20 > len:
        ctr.drop_gso_unsupported += 1
        return 0
    tcp_hlen = (src[l4_off + 12] >> 4) * 4
    hdr_len = l4_off + tcp_hlen
    if tcp_hlen < 20 or hdr_len >= len or hdr_len - ETH_HLEN_ >= mtu:
        ctr.drop_gso_unsupported += 1
        return 0
    mss = mtu - (hdr_len - ETH_HLEN_)
    payload = len - hdr_len
    nseg = (payload + mss - 1) / mss
    if nseg > IO_BATCH:
        ctr.drop_gso_unsupported += 1
        return 0
    if <int>nseg > IO_BATCH - arena.count:
        return -1
    seq = lvs_get32(src + l4_off + 4)
    ip_id = 0 if is_v6 else lvs_get16(src + l3_off + 4)
    flags = src[l4_off + 13]
    off = 0
    for i in range(nseg):
        chunk = payload - off
        if chunk > mss:
            chunk = mss
        f = arena.take(ifindex)
        d = f.data
        memcpy(d, src, hdr_len)
        memcpy(d + hdr_len, src + hdr_len + off, chunk)
        arena.commit_len(f, hdr_len + chunk)
        if is_v6:
            lvs_put16(d + l3_off + 4, <uint16_t>(hdr_len - l4_off + chunk))
        else:
            lvs_put16(d + l3_off + 2, <uint16_t>(hdr_len - l3_off + chunk))
            lvs_put16(d + l3_off + 4, <uint16_t>(ip_id + i))
            lvs_ip4_set_checksum(d + l3_off)
        lvs_put32(d + l4_off + 4, seq + off)
        # FIN and PSH belong to the last segment, CWR to the first (as tcp_gso_segment does)
        d[l4_off + 13] = flags
        if i + 1 < nseg:
            d[l4_off + 13] &= ~(<uint8_t>0x09)
        if i > 0:
            d[l4_off + 13] &= ~(<uint8_t>0x80)
        io_tcp_checksum(d, hdr_len + chunk, l3_off, l4_off, is_v6)
        off += chunk
    ctr.gso_split += 1
    ctr.gso_segments += nseg
    return <int>nseg


# -------------------------------------------------------------------------------- the core call
# Drivers call io_core_batch once per batch.  A C core (this module's Core) is run without the
# GIL; any other object with process(frame, ifindex, now) (the pure-Python reference core) is
# called per frame with the GIL.

ctypedef int (*lvs_io_batch_fn)(void *state, lvs_frame *frames, int n, double now) noexcept nogil

# What a driver needs of a C core: its batch function and the state pointer to pass it.
cdef struct lvs_io_core:
    lvs_io_batch_fn batch
    void *state


cdef int io_c_core_batch(void *state, lvs_frame *frames, int n, double now) noexcept nogil:
    return lvs_core_batch(<lvs_core *>state, frames, n, now)


cdef bint io_bind_core(object core, lvs_io_core *out):
    """Fill `out` if `core` is this module's C core; False means: call core.process() instead."""
    if isinstance(core, Core):
        out.batch = io_c_core_batch
        out.state = <void *>(<Core>core).c
        return True
    out.batch = NULL
    out.state = NULL
    return False


# The core's verdicts are parse.pxi's LVS_PASS/DROP/TX/REPLY (pyfastpath.PASS/... have the same
# numbers, so a Python core's verdicts read the same).
cdef enum:
    IO_EXPIRE_INTERVAL_MS = 10      # the C core: small bounded expire() calls, often
    IO_EXPIRE_INTERVAL_PY_MS = 250  # the Python core: each of its calls walks its whole table

# Expiry cadence.  The drivers call core.expire(now) every IO_EXPIRE_INTERVAL_MS.  A default call
# of the C core visits at most pyfastpath.EXPIRE_SLOTS (32,768) slots and frees at most
# EXPIRE_MAX_FREED (1,024) entries, about 0.2 ms with the core lock held, so the datapath never
# stalls; every 10 ms that is up to 102,400 expiries/s and 3.3 M slots/s (a 10^7-entry table
# is swept every 3 s), on top of the per-batch sweep (4 slots per frame) and lookups expiring
# stale entries on the spot.  While calls hit the bound (a backlog of due entries), the poll
# timeout shrinks to the interval so the backlog drains also when no packet arrives.


cdef bint io_core_tick(object core, double now) except -1:
    """Let the core expire connections (and run its rate estimator) while the rings are idle;
    true if the call hit its per-call bound (more are due)."""
    expire = getattr(core, "expire", None)
    if expire is None:
        return False
    return (expire(now) or 0) >= _constants.EXPIRE_MAX_FREED


cdef int io_python_batch(object core, _FrameArena arena, double now) except -1:
    cdef int i
    cdef lvs_frame *f
    cdef bytes out
    cdef uint32_t n
    for i in range(arena.count):
        f = &arena.frames[i]
        result = core.process((<char *>f.data)[:f.len], f.ifindex, now)
        verdict, out_frame, out_ifindex = result
        f.verdict = int(verdict)
        f.out_ifindex = 0
        if out_frame is None or f.verdict not in (LVS_TX, LVS_REPLY):
            continue
        if f.verdict == LVS_REPLY and not out_ifindex:
            out_ifindex = f.ifindex
        out = bytes(out_frame)
        n = <uint32_t>len(out)
        # rebase the frame at the start of the slot's headroom so replies and encapsulations fit
        f.data = f.data - f.headroom
        f.tailroom = f.tailroom + f.headroom + f.len
        f.headroom = 0
        if n > f.tailroom:
            f.len = 0
            continue
        memcpy(f.data, <const uint8_t *>out, n)
        f.len = n
        f.tailroom -= n
        f.out_ifindex = <int32_t>out_ifindex
    return 0


_io_log = logging.getLogger("lvsuser.io")


# Called with the GIL from inside the nogil loop: any exception of a Python core is counted and
# logged (sparingly), never propagated into the loop.
cdef void io_python_batch_safe(object core, object lock, _FrameArena arena,
                               lvs_io_counters *ctr) noexcept:
    cdef int i
    try:
        with lock:
            io_python_batch(core, arena, io_now())
    except BaseException:
        for i in range(arena.count):
            arena.frames[i].out_ifindex = 0
        ctr.core_errors += 1
        if ctr.core_errors & (ctr.core_errors - 1) == 0:   # 1st, 2nd, 4th, 8th...
            _io_log.exception("the core failed on a batch (%d so far)", ctr.core_errors)


cdef bint io_core_tick_safe(object core, object lock, double now, lvs_io_counters *ctr) noexcept:
    try:
        with lock:
            return io_core_tick(core, now)
    except BaseException:
        ctr.core_errors += 1
        if ctr.core_errors & (ctr.core_errors - 1) == 0:
            _io_log.exception("the core failed to expire connections (%d so far)", ctr.core_errors)
        return False


include "io_afpacket.pxi"
include "io_tun.pxi"
