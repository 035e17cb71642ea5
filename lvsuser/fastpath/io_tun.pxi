# TUN driver (`lvsuser run --io tun`): the routing-based alternative to the AF_PACKET rings.
#
# Theory of operation
# -------------------
# A TUN device (IFF_TUN | IFF_NO_PI) carries bare IP packets.  The backend installs policy routes
# that send VIP traffic (and, for NAT, the real servers' replies, selected by source address) into
# the device; we read them, the core works in L3 mode (no MACs), and whatever it returns is written
# back into the device, where the kernel routes it on like any received packet.  The kernel thus
# does neighbour resolution, MTU and GSO itself, and there is nothing to guard with nftables: the
# routes already keep the kernel's local stack out of VIP traffic.
#
# A TUN device without IFF_VNET_HDR offers no offloads, so the kernel segments and checksums
# everything before it reaches us: frames are always complete and at most the device MTU.

cdef extern from "<sys/ioctl.h>" nogil:
    int ioctl(int fd, unsigned long request, ...)


cdef extern from "<fcntl.h>" nogil:
    int open(const char *path, int flags)
    enum:
        O_RDWR
        O_NONBLOCK
        O_CLOEXEC


cdef extern from "<net/if.h>" nogil:
    struct ifreq:
        char ifr_name[16]
        short ifr_flags
    unsigned int if_nametoindex(const char *name)


cdef extern from "<linux/if_tun.h>" nogil:
    enum:
        IFF_TUN
        IFF_NO_PI
        TUNSETIFF


cdef class TunDriver:
    """One TUN device in L3 mode, feeding `core` in batches; run() blocks until stop()."""
    cdef int fd
    cdef int stop_fd
    cdef public int ifindex
    cdef public str name
    cdef object core
    cdef object core_lock           # serializes a Python core with its publisher
    cdef lvs_io_core ccore
    cdef bint has_c
    cdef _FrameArena arena
    cdef lvs_io_counters ctr
    cdef public bint running

    def __cinit__(self):
        self.fd = -1
        self.stop_fd = -1
        memset(&self.ctr, 0, sizeof(self.ctr))

    def __init__(self, core, str name, int mtu=1500, core_lock=None):
        cdef ifreq req
        cdef bytes raw = name.encode()
        if not raw or len(raw) > 15:
            raise ValueError(f"bad TUN device name {name!r}")
        self.core = core
        self.has_c = io_bind_core(core, &self.ccore)
        self.core_lock = core_lock if core_lock is not None else threading.Lock()
        self.fd = open(b"/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC)
        if self.fd < 0:
            raise OSError(errno, f"/dev/net/tun: {os.strerror(errno)}")
        memset(&req, 0, sizeof(req))
        memcpy(req.ifr_name, <const char *>raw, len(raw))
        req.ifr_flags = IFF_TUN | IFF_NO_PI
        if ioctl(self.fd, TUNSETIFF, &req) < 0:
            err = errno
            self.close()
            raise OSError(err, f"TUNSETIFF {name}: {os.strerror(err)}")
        self.name = name
        self.ifindex = if_nametoindex(<const char *>raw)
        self.stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.stop_fd < 0:
            self.close()
            raise OSError(errno, "eventfd failed")
        self.arena = _FrameArena(max(mtu, 1500))
        self.running = False

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)
        if self.stop_fd >= 0:
            close(self.stop_fd)

    def close(self):
        if self.running:
            raise RuntimeError("stop() the driver and wait for run() to return first")
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1
        if self.stop_fd >= 0:
            close(self.stop_fd)
            self.stop_fd = -1

    def stop(self):
        cdef uint64_t one = 1
        if self.stop_fd >= 0:
            write(self.stop_fd, &one, sizeof(one))

    def stats(self):
        cdef dict counters = self.ctr
        return counters

    # Read up to one batch of packets; returns 1 if the device may hold more.
    cdef int _gather(self) noexcept nogil:
        cdef lvs_frame *f
        cdef ssize_t got
        while True:
            f = self.arena.take(self.ifindex)
            if f == NULL:
                return 1
            got = read(self.fd, f.data, f.tailroom)
            if got <= 0:
                self.arena.count -= 1     # give the slot back
                return 0
            self.arena.commit_len(f, <uint32_t>got)
            self.ctr.rx_frames += 1
            self.ctr.rx_bytes += <uint64_t>got

    cdef void _transmit(self) noexcept nogil:
        cdef int i
        cdef lvs_frame *f
        for i in range(self.arena.count):
            f = &self.arena.frames[i]
            if f.out_ifindex <= 0 or f.len == 0:
                continue
            # In L3 mode every packet goes back into the device, whatever interface the core
            # named: the kernel's routing decides the real egress.
            if write(self.fd, f.data, f.len) < 0:
                self.ctr.tx_errors += 1
            else:
                self.ctr.tx_frames += 1
                self.ctr.tx_bytes += f.len
        self.arena.count = 0

    cdef void _flush(self) noexcept nogil:
        if self.arena.count == 0:
            return
        self.ctr.batches += 1
        if self.has_c:
            self.ccore.batch(self.ccore.state, self.arena.frames, self.arena.count, io_now())
        else:
            with gil:
                io_python_batch_safe(self.core, self.core_lock, self.arena, &self.ctr)
        self._transmit()

    cdef int _loop(self, pollfd *fds, int idle_timeout_ms) noexcept nogil:
        cdef int rc, more
        cdef uint64_t junk
        cdef double now, next_expire = 0.0
        cdef int timeout_ms = idle_timeout_ms
        cdef int expire_ms = IO_EXPIRE_INTERVAL_MS if self.has_c else IO_EXPIRE_INTERVAL_PY_MS
        cdef bint backlog
        while True:
            rc = poll(fds, 2, timeout_ms)
            if rc < 0:
                if errno == EINTR:
                    continue
                return errno
            self.ctr.wakeups += 1
            if fds[1].revents & POLLIN:
                read(self.stop_fd, &junk, sizeof(junk))
                return 0
            more = 1
            while more:
                more = self._gather()
                self._flush()
            now = io_now()
            if now >= next_expire:
                with gil:
                    backlog = io_core_tick_safe(self.core, self.core_lock, now, &self.ctr)
                next_expire = now + expire_ms / 1000.0
                timeout_ms = expire_ms if backlog and expire_ms < idle_timeout_ms else idle_timeout_ms

    def run(self, int idle_timeout_ms=100):
        """Forward until stop().  The GIL is released once, around the whole loop."""
        cdef pollfd fds[2]
        cdef int err
        if self.fd < 0:
            raise RuntimeError("the driver is closed")
        fds[0].fd = self.fd
        fds[0].events = POLLIN
        fds[1].fd = self.stop_fd
        fds[1].events = POLLIN
        self.running = True
        try:
            with nogil:
                err = self._loop(fds, idle_timeout_ms)
        finally:
            self.running = False
        if err:
            raise OSError(err, f"TUN driver: poll failed: {os.strerror(err)}")
