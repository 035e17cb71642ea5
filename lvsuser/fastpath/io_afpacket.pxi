# AF_PACKET driver: TPACKET_V2 mmap RX and TX rings per interface.
#
# Theory of operation
# -------------------
# Per served interface there are two sockets:
#   * RX: ETH_P_ALL, bound to the interface, TPACKET_V2 ring of MTU-sized slots, each with its
#     own status word: the kernel wakes poll() as soon as one frame is ready, and a wake-up walks
#     every ready slot into one batch, so a lone packet is handled at once and a burst still costs
#     one wake-up per batch.  (TPACKET_V3 hands over whole blocks only when they fill or when the
#     retire timer fires, at least 1 ms later: a lone packet waited for it, +1 ms per request.)
#     PACKET_IGNORE_OUTGOING so we never see our own transmissions nor the director's own traffic.
#     A super-frame from a TSO sender on veth is up to 64 KiB, larger than a slot: with
#     PACKET_COPY_THRESH set, the kernel then also queues the whole frame on the socket and marks
#     the (truncated) slot TP_STATUS_COPY; we recv() that copy, in order, in its place.
#   * TX: protocol 0 (it receives nothing), TPACKET_V2 ring, PACKET_QDISC_BYPASS (no qdisc: the
#     frame goes straight to the driver's xmit).  We fill slots and kick with one send() per batch.
#     PACKET_VNET_HDR with hdr_len = the whole frame: the kernel copies each frame into a linear
#     skb instead of attaching the ring page, which veth would have to copy again (see
#     afp_open_port).
#     (tx="mmsg" instead hands the batch's frames to one sendmmsg() without a ring: measured here
#     it is slower on veth, so the ring is the default; the option stays for other NICs.)
# Frames we send this way bypass the qdisc layer and so never appear in a capture on the director
# (tcpdump -Q out there shows only what the director's own kernel sends; the tests rely on it).
#
# Waiting: poll() on the RX sockets.  With busy_poll_us > 0, after a wake-up that found frames the
# loop first watches the rings' next slots that long (no syscall, no lock) and takes the next
# frame without poll() if one comes; a poll(0) still runs every POLL_CHECK_MS for stop() and
# socket errors, and when the spin finds nothing the loop sleeps in poll() as before, so an idle
# director costs nothing more.
#
# The nftables guard (lvsuser/director/guard.py) drops VIP traffic in netdev ingress; the RX tap
# runs before that hook, so the ring still sees what the kernel no longer does.

from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len


cdef extern from "<sys/socket.h>" nogil:
    struct sockaddr:
        unsigned short sa_family
    struct msghdr:
        void *msg_name
        unsigned int msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int sendmmsg(int sockfd, mmsghdr *msgvec, unsigned int vlen, int flags)
    int socket(int domain, int type, int protocol)
    int setsockopt(int sockfd, int level, int optname, const void *optval, unsigned int optlen)
    int getsockopt(int sockfd, int level, int optname, void *optval, unsigned int *optlen)
    int bind(int sockfd, const sockaddr *addr, unsigned int addrlen)
    ssize_t send(int sockfd, const void *buf, size_t len, int flags)
    enum:
        AF_PACKET
        SOCK_RAW
        SOL_PACKET
        SOCK_CLOEXEC
        MSG_DONTWAIT
        SOL_SOCKET
        SO_ERROR


cdef extern from "<linux/if_ether.h>" nogil:
    enum:
        ETH_P_ALL


cdef extern from "<linux/if_packet.h>" nogil:
    struct sockaddr_ll:
        unsigned short sll_family
        unsigned short sll_protocol
        int sll_ifindex
        unsigned short sll_hatype
        unsigned char sll_pkttype
        unsigned char sll_halen
        unsigned char sll_addr[8]
    struct tpacket_stats:
        unsigned int tp_packets
        unsigned int tp_drops
    struct tpacket_req:
        unsigned int tp_block_size
        unsigned int tp_block_nr
        unsigned int tp_frame_size
        unsigned int tp_frame_nr
    struct tpacket2_hdr:
        uint32_t tp_status
        uint32_t tp_len
        uint32_t tp_snaplen
        uint16_t tp_mac
        uint16_t tp_net
    enum:
        PACKET_RX_RING
        PACKET_TX_RING
        PACKET_STATISTICS
        PACKET_VERSION
        PACKET_QDISC_BYPASS
        PACKET_IGNORE_OUTGOING
        PACKET_COPY_THRESH
        PACKET_VNET_HDR
        TPACKET_V2
        TP_STATUS_KERNEL
        TP_STATUS_USER
        TP_STATUS_LOSING
        TP_STATUS_COPY
        TP_STATUS_CSUMNOTREADY
        TP_STATUS_VLAN_VALID
        TP_STATUS_AVAILABLE
        TP_STATUS_SEND_REQUEST
        TP_STATUS_SENDING
        TP_STATUS_WRONG_FORMAT
    int TPACKET_ALIGN(int)


cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int sockfd, void *buf, size_t len, int flags)
    enum:
        MSG_TRUNC
        SO_RCVBUFFORCE


cdef extern from * nogil:
    # the ring's status words are shared with the kernel: order our reads and writes around them
    void __atomic_thread_fence(int order)
    enum:
        __ATOMIC_ACQUIRE
        __ATOMIC_RELEASE
        __ATOMIC_RELAXED


cdef extern from * nogil:
    """
    static inline uint32_t lvs_load_status(const volatile uint32_t *word) {
        return __atomic_load_n(word, __ATOMIC_RELAXED);
    }
    static inline void lvs_cpu_relax(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #elif defined(__aarch64__)
        __asm__ __volatile__("yield");
    #endif
    }
    """
    uint32_t lvs_load_status(const uint32_t *word)
    void lvs_cpu_relax()


cdef enum:
    RX_BLOCK_SIZE = 1 << 18     # 256 KiB blocks (the kernel allocates the ring per block)
    RX_BLOCK_NR = 32            # 8 MiB of RX ring per interface: 4096 slots at MTU 1500
    RX_COPY_MAX = 1 << 17       # largest super-frame taken whole (veth's GSO limit is 64 KiB)
    RX_RCVBUF = 1 << 22         # socket buffer for those whole copies
    TX_FRAME_NR = 512
    TX_VNET_HDR_LEN = 10        # struct virtio_net_hdr (without num_buffers)
    POLL_CHECK_MS = 1           # while spinning finds frames, still poll(0) this often


# One interface: its two sockets and their rings.
cdef struct afp_port:
    int32_t ifindex
    uint32_t mtu
    int rx_fd
    int tx_fd
    uint8_t *rx_ring
    size_t rx_ring_size
    uint32_t rx_frame_size
    uint32_t rx_frame_nr
    uint32_t rx_next            # next slot to look at
    uint8_t *rx_copy            # RX_COPY_MAX bytes: the whole copy of an oversized frame
    uint32_t rx_copy_len        # bytes of it not yet ingested (0: none pending)
    uint8_t *tx_ring
    size_t tx_ring_size
    uint32_t tx_frame_size
    uint32_t tx_next
    uint32_t tx_pending         # frames queued since the last kick
    uint32_t tx_vnet            # bytes of virtio_net_hdr before each TX frame (0 or 10)
    # tx_use_ring == 0: frames go out with one sendmmsg() per batch, straight from the arena
    int tx_use_ring
    mmsghdr *mmsg
    iovec *iov
    uint32_t mmsg_count


cdef int afp_open_port(afp_port *p) noexcept nogil:
    """Open and map both rings of one interface; returns 0 or an errno."""
    cdef int version, one = 1
    cdef int rcvbuf = RX_RCVBUF
    cdef tpacket_req req
    cdef sockaddr_ll sll
    cdef void *ring
    p.rx_fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL))
    if p.rx_fd < 0:
        return errno
    version = TPACKET_V2
    if setsockopt(p.rx_fd, SOL_PACKET, PACKET_VERSION, &version, sizeof(version)) < 0:
        return errno
    if setsockopt(p.rx_fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one)) < 0:
        return errno
    # any non-zero threshold turns the whole-copy of oversized frames on
    if setsockopt(p.rx_fd, SOL_PACKET, PACKET_COPY_THRESH, &one, sizeof(one)) < 0:
        return errno
    # room for a few whole super-frames (best effort: without it a copy may be refused, counted
    # as drop_truncated)
    setsockopt(p.rx_fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf))
    p.rx_copy = <uint8_t *>malloc(RX_COPY_MAX)
    if p.rx_copy == NULL:
        return ENOMEM
    p.rx_copy_len = 0
    # a slot holds the TPACKET2 header and sockaddr_ll (the frame starts at tp_mac, about 66
    # bytes in), then an MTU frame with a possible 802.1Q tag
    p.rx_frame_size = 2048
    while p.rx_frame_size < <uint32_t>128 + p.mtu + ETH_HLEN_ + 4:
        p.rx_frame_size <<= 1
    memset(&req, 0, sizeof(req))
    req.tp_block_size = RX_BLOCK_SIZE if p.rx_frame_size <= RX_BLOCK_SIZE else p.rx_frame_size
    req.tp_block_nr = RX_BLOCK_NR
    req.tp_frame_size = p.rx_frame_size
    req.tp_frame_nr = (req.tp_block_size / p.rx_frame_size) * req.tp_block_nr
    if setsockopt(p.rx_fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)) < 0:
        return errno
    p.rx_frame_nr = req.tp_frame_nr
    p.rx_ring_size = <size_t>req.tp_block_size * req.tp_block_nr
    ring = mmap(NULL, p.rx_ring_size, PROT_READ | PROT_WRITE, MAP_SHARED, p.rx_fd, 0)
    if ring == MAP_FAILED:
        return errno
    p.rx_ring = <uint8_t *>ring
    p.rx_next = 0
    memset(&sll, 0, sizeof(sll))
    sll.sll_family = AF_PACKET
    sll.sll_protocol = htons(ETH_P_ALL)
    sll.sll_ifindex = p.ifindex
    if bind(p.rx_fd, <sockaddr *>&sll, sizeof(sll)) < 0:
        return errno

    p.tx_fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0)
    if p.tx_fd < 0:
        return errno
    if setsockopt(p.tx_fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one)) < 0:
        return errno
    if not p.tx_use_ring:
        p.mmsg = <mmsghdr *>calloc(IO_BATCH, sizeof(mmsghdr))
        p.iov = <iovec *>calloc(IO_BATCH, sizeof(iovec))
        if p.mmsg == NULL or p.iov == NULL:
            return ENOMEM
        p.mmsg_count = 0
    else:
        version = TPACKET_V2
        if setsockopt(p.tx_fd, SOL_PACKET, PACKET_VERSION, &version, sizeof(version)) < 0:
            return errno
        # A virtio_net_hdr whose hdr_len is the whole frame makes tpacket_snd copy the frame
        # into the skb's linear part.  Without it only the Ethernet header is copied and the
        # rest is attached as a zero-copy fragment of the ring page, and veth (any forward into
        # another namespace) must then orphan it: skb_copy_ubufs allocates a page, copies and
        # frees it per frame -- 8% of the director's CPU in the DR benchmark's profile.
        # Best effort (must precede PACKET_TX_RING): without it frames go out as before.
        p.tx_vnet = 0
        if setsockopt(p.tx_fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof(one)) == 0:
            p.tx_vnet = TX_VNET_HDR_LEN
        # a slot holds the TPACKET2 header, then an MTU frame plus an encapsulation header
        p.tx_frame_size = 2048
        while p.tx_frame_size < <uint32_t>TPACKET_ALIGN(sizeof(tpacket2_hdr)) + TX_VNET_HDR_LEN + p.mtu + ETH_HLEN_ + 64:
            p.tx_frame_size <<= 1
        memset(&req, 0, sizeof(req))
        req.tp_frame_size = p.tx_frame_size
        req.tp_block_size = p.tx_frame_size * 16 if p.tx_frame_size * 16 >= 65536 else 65536
        req.tp_frame_nr = TX_FRAME_NR
        req.tp_block_nr = TX_FRAME_NR / (req.tp_block_size / p.tx_frame_size)
        if req.tp_block_nr == 0:
            req.tp_block_nr = 1
        req.tp_frame_nr = req.tp_block_nr * (req.tp_block_size / p.tx_frame_size)
        if setsockopt(p.tx_fd, SOL_PACKET, PACKET_TX_RING, &req, sizeof(req)) < 0:
            return errno
        p.tx_ring_size = <size_t>req.tp_block_size * req.tp_block_nr
        ring = mmap(NULL, p.tx_ring_size, PROT_READ | PROT_WRITE, MAP_SHARED, p.tx_fd, 0)
        if ring == MAP_FAILED:
            return errno
        p.tx_ring = <uint8_t *>ring
        p.tx_next = 0
        p.tx_pending = 0
    memset(&sll, 0, sizeof(sll))
    sll.sll_family = AF_PACKET
    sll.sll_protocol = 0
    sll.sll_ifindex = p.ifindex
    if bind(p.tx_fd, <sockaddr *>&sll, sizeof(sll)) < 0:
        return errno
    return 0


cdef void afp_close_port(afp_port *p) noexcept nogil:
    if p.rx_ring != NULL:
        munmap(p.rx_ring, p.rx_ring_size)
        p.rx_ring = NULL
    if p.tx_ring != NULL:
        munmap(p.tx_ring, p.tx_ring_size)
        p.tx_ring = NULL
    if p.rx_fd >= 0:
        close(p.rx_fd)
        p.rx_fd = -1
    if p.tx_fd >= 0:
        close(p.tx_fd)
        p.tx_fd = -1
    free(p.mmsg)
    p.mmsg = NULL
    free(p.rx_copy)
    p.rx_copy = NULL
    free(p.iov)
    p.iov = NULL


cdef void afp_count_ring_drops(afp_port *p, lvs_io_counters *ctr) noexcept nogil:
    cdef tpacket_stats st
    cdef unsigned int stlen = sizeof(st)
    memset(&st, 0, sizeof(st))
    if getsockopt(p.rx_fd, SOL_PACKET, PACKET_STATISTICS, &st, &stlen) == 0:
        ctr.rx_ring_drops += st.tp_drops


cdef void afp_clear_error(afp_port *p, lvs_io_counters *ctr) noexcept nogil:
    cdef int err = 0
    cdef unsigned int errlen = sizeof(err)
    getsockopt(p.rx_fd, SOL_SOCKET, SO_ERROR, &err, &errlen)
    errlen = sizeof(err)
    getsockopt(p.tx_fd, SOL_SOCKET, SO_ERROR, &err, &errlen)
    ctr.socket_errors += 1


cdef inline uint32_t afp_tx_slots(afp_port *p) noexcept nogil:
    return <uint32_t>(p.tx_ring_size / p.tx_frame_size)


cdef void afp_mmsg_flush(afp_port *p, lvs_io_counters *ctr) noexcept nogil:
    """Send what afp_mmsg_queue collected: one sendmmsg() (more only if the kernel stops early)."""
    cdef uint32_t done = 0
    cdef int sent
    while done < p.mmsg_count:
        sent = sendmmsg(p.tx_fd, p.mmsg + done, p.mmsg_count - done, MSG_DONTWAIT)
        if sent <= 0:
            if sent < 0 and errno != EAGAIN and errno != ENOBUFS:
                ctr.tx_errors += 1
            ctr.drop_tx_full += p.mmsg_count - done
            break
        done += <uint32_t>sent
    ctr.tx_frames += done
    p.mmsg_count = 0


cdef inline void afp_mmsg_queue(afp_port *p, uint8_t *data, uint32_t len,
                                lvs_io_counters *ctr) noexcept nogil:
    """Point the next message at the frame in the arena: no copy until the kernel's own."""
    cdef uint32_t k = p.mmsg_count
    if k >= IO_BATCH:
        afp_mmsg_flush(p, ctr)
        k = 0
    p.iov[k].iov_base = data
    p.iov[k].iov_len = len
    memset(&p.mmsg[k], 0, sizeof(mmsghdr))
    p.mmsg[k].msg_hdr.msg_iov = &p.iov[k]
    p.mmsg[k].msg_hdr.msg_iovlen = 1
    p.mmsg_count = k + 1
    ctr.tx_bytes += len


cdef void afp_kick(afp_port *p, lvs_io_counters *ctr) noexcept nogil:
    if not p.tx_use_ring:
        afp_mmsg_flush(p, ctr)
        return
    if p.tx_pending == 0:
        return
    if send(p.tx_fd, NULL, 0, MSG_DONTWAIT) < 0 and errno != EAGAIN and errno != ENOBUFS:
        ctr.tx_errors += 1
    p.tx_pending = 0


# Queue one frame on a port's TX ring; kicks once and retries when the ring is full.
cdef void afp_queue(afp_port *p, const uint8_t *data, uint32_t len, lvs_io_counters *ctr) noexcept nogil:
    cdef tpacket2_hdr *hdr
    cdef uint8_t *vnet
    cdef uint32_t data_off = TPACKET_ALIGN(sizeof(tpacket2_hdr))
    if len + data_off + p.tx_vnet > p.tx_frame_size:
        ctr.drop_tx_too_big += 1
        return
    hdr = <tpacket2_hdr *>(p.tx_ring + <size_t>p.tx_next * p.tx_frame_size)
    if hdr.tp_status != TP_STATUS_AVAILABLE:
        if hdr.tp_status == TP_STATUS_WRONG_FORMAT:
            ctr.tx_errors += 1
        else:
            p.tx_pending += 1   # force a kick: the slot may be waiting for one
            afp_kick(p, ctr)
            if hdr.tp_status != TP_STATUS_AVAILABLE:
                ctr.drop_tx_full += 1
                return
    # the kernel reads the frame at tp_hdrlen - sizeof(sockaddr_ll) (no PACKET_TX_HAS_OFF),
    # after the virtio_net_hdr when there is one
    if p.tx_vnet:
        # flags 0, GSO_NONE: only hdr_len (little-endian) = the whole frame, copied linear
        vnet = <uint8_t *>hdr + data_off
        memset(vnet, 0, TX_VNET_HDR_LEN)
        vnet[2] = <uint8_t>(len & 0xff)
        vnet[3] = <uint8_t>(len >> 8)
    memcpy(<uint8_t *>hdr + data_off + p.tx_vnet, data, len)
    hdr.tp_len = len + p.tx_vnet
    hdr.tp_status = TP_STATUS_SEND_REQUEST
    p.tx_next = (p.tx_next + 1) % afp_tx_slots(p)
    p.tx_pending += 1
    ctr.tx_frames += 1
    ctr.tx_bytes += len


cdef class AfPacketDriver:
    """Serves a set of interfaces with AF_PACKET rings, feeding `core` in batches.

    run() blocks (without the GIL for the C core) until stop() is called from another thread.
    """
    cdef afp_port ports[IO_MAX_IFS]
    cdef int nports
    cdef int stop_fd
    cdef object core
    cdef object core_lock           # serializes a Python core with its publisher
    cdef lvs_io_core ccore          # the C core's batch entry, when the core is one
    cdef bint has_c
    cdef _FrameArena arena
    cdef lvs_io_counters ctr
    cdef public bint running
    cdef readonly int busy_poll_us

    def __cinit__(self):
        self.nports = 0
        self.stop_fd = -1
        memset(&self.ctr, 0, sizeof(self.ctr))

    def __init__(self, core, interfaces, core_lock=None, str tx="ring", int busy_poll_us=0):
        """interfaces: [(ifindex, mtu), ...]; core_lock: held around calls into a Python core;
        tx: "ring" (TPACKET_V2 TX ring) or "mmsg" (sendmmsg straight from the batch);
        busy_poll_us: after a wake-up that found frames, watch the RX rings this long for the
        next one before sleeping in poll() (0: always poll)."""
        cdef int i, err
        cdef uint32_t max_mtu = 1500
        if len(interfaces) == 0:
            raise ValueError("no interfaces to serve")
        if tx not in ("ring", "mmsg"):
            raise ValueError(f"tx must be 'ring' or 'mmsg', not {tx!r}")
        if len(interfaces) > IO_MAX_IFS:
            raise ValueError(f"at most {IO_MAX_IFS} interfaces per driver")
        if busy_poll_us < 0 or busy_poll_us > 10000:
            raise ValueError(f"busy_poll_us must be 0..10000, not {busy_poll_us}")
        self.busy_poll_us = busy_poll_us
        self.core = core
        self.has_c = io_bind_core(core, &self.ccore)
        self.core_lock = core_lock if core_lock is not None else threading.Lock()
        self.stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.stop_fd < 0:
            raise OSError(errno, "eventfd failed")
        for ifindex, mtu in interfaces:
            i = self.nports
            memset(&self.ports[i], 0, sizeof(afp_port))
            self.ports[i].rx_fd = -1
            self.ports[i].tx_fd = -1
            self.ports[i].ifindex = int(ifindex)
            self.ports[i].mtu = int(mtu)
            self.ports[i].tx_use_ring = 1 if tx == "ring" else 0
            self.nports += 1
            if <uint32_t>int(mtu) > max_mtu:
                max_mtu = int(mtu)
            err = afp_open_port(&self.ports[i])
            if err:
                self.close()
                raise OSError(err, f"AF_PACKET ring on ifindex {ifindex}: {os.strerror(err)}")
        self.arena = _FrameArena(max_mtu + ETH_HLEN_)
        self.running = False

    def __dealloc__(self):
        self._close_fds()

    cdef void _close_fds(self) noexcept:
        cdef int i
        for i in range(self.nports):
            afp_close_port(&self.ports[i])
        self.nports = 0
        if self.stop_fd >= 0:
            close(self.stop_fd)
            self.stop_fd = -1

    def close(self):
        if self.running:
            raise RuntimeError("stop() the driver and wait for run() to return first")
        self._close_fds()

    def stop(self):
        """Ask run() to return after its current batch; safe from any thread."""
        cdef uint64_t one = 1
        if self.stop_fd >= 0:
            write(self.stop_fd, &one, sizeof(one))

    def stats(self):
        cdef dict counters = self.ctr
        return counters

    cdef afp_port *_port(self, int32_t ifindex) noexcept nogil:
        cdef int i
        for i in range(self.nports):
            if self.ports[i].ifindex == ifindex:
                return &self.ports[i]
        return NULL

    # Move frames from one RX ring into the arena until the arena is full or no slot is ready;
    # each slot goes back to the kernel once its frame is in the arena.
    # Returns 1 if the ring may have more (the caller flushes and calls again).
    cdef int _gather(self, afp_port *p) noexcept nogil:
        cdef tpacket2_hdr *pkt
        cdef ssize_t got
        cdef int used
        while True:
            pkt = <tpacket2_hdr *>(p.rx_ring + <size_t>p.rx_next * p.rx_frame_size)
            if (pkt.tp_status & TP_STATUS_USER) == 0:
                return 0
            __atomic_thread_fence(__ATOMIC_ACQUIRE)     # read the frame only after its status
            if pkt.tp_status & TP_STATUS_LOSING:
                # the ring overflowed: reading the drop counter resets it and clears LOSING
                afp_count_ring_drops(p, &self.ctr)
            if pkt.tp_status & TP_STATUS_COPY:
                # an oversized frame: the slot has its head, the socket queue the whole frame
                if p.rx_copy_len == 0:
                    got = recv(p.rx_fd, p.rx_copy, RX_COPY_MAX, MSG_DONTWAIT | MSG_TRUNC)
                    if got <= 0 or got > RX_COPY_MAX:
                        self.ctr.drop_truncated += 1
                    elif (pkt.tp_status & TP_STATUS_VLAN_VALID) == 0:  # tagged: not ours
                        p.rx_copy_len = <uint32_t>got
                if p.rx_copy_len:
                    used = io_ingest_ethernet(self.arena, p.rx_copy, p.rx_copy_len, p.ifindex,
                                              p.mtu, pkt.tp_status & TP_STATUS_CSUMNOTREADY,
                                              &self.ctr)
                    if used < 0:
                        return 1    # arena full: flush, then resume at this frame (copy kept)
                    p.rx_copy_len = 0
            elif pkt.tp_snaplen < pkt.tp_len:
                self.ctr.drop_truncated += 1
            elif pkt.tp_status & TP_STATUS_VLAN_VALID:
                pass    # a stripped 802.1Q tag: not ours to forward
            else:
                used = io_ingest_ethernet(self.arena, <uint8_t *>pkt + pkt.tp_mac,
                                          pkt.tp_snaplen, p.ifindex, p.mtu,
                                          pkt.tp_status & TP_STATUS_CSUMNOTREADY, &self.ctr)
                if used < 0:
                    return 1    # arena full: flush, then resume at this frame
            self.ctr.rx_frames += 1
            self.ctr.rx_bytes += pkt.tp_len
            __atomic_thread_fence(__ATOMIC_RELEASE)     # done with the frame before handing it back
            pkt.tp_status = TP_STATUS_KERNEL
            p.rx_next = (p.rx_next + 1) % p.rx_frame_nr
            if self.arena.count >= IO_BATCH:
                return 1

    cdef bint _rx_ready(self) noexcept nogil:
        """Does any RX ring have a frame at its next slot?  (No syscall, no lock.)"""
        cdef int i
        cdef afp_port *p
        for i in range(self.nports):
            p = &self.ports[i]
            if lvs_load_status(&(<tpacket2_hdr *>(p.rx_ring + <size_t>p.rx_next * p.rx_frame_size)).tp_status) & TP_STATUS_USER:
                return 1
        return 0

    cdef bint _spin(self) noexcept nogil:
        """Watch the RX rings for up to busy_poll_us; 1 as soon as a frame is ready."""
        cdef double deadline = io_now() + self.busy_poll_us * 1e-6
        cdef int k
        while True:
            for k in range(32):
                if self._rx_ready():
                    return 1
                lvs_cpu_relax()
            if io_now() >= deadline:
                return 0

    cdef void _transmit(self) noexcept nogil:
        cdef int i
        cdef lvs_frame *f
        cdef afp_port *p
        for i in range(self.arena.count):
            f = &self.arena.frames[i]
            if f.out_ifindex <= 0 or f.len == 0:
                continue
            p = self._port(f.out_ifindex)
            if p == NULL:
                self.ctr.drop_tx_no_ring += 1
                continue
            if p.tx_use_ring:
                afp_queue(p, f.data, f.len, &self.ctr)
            else:
                afp_mmsg_queue(p, f.data, f.len, &self.ctr)
        for i in range(self.nports):
            afp_kick(&self.ports[i], &self.ctr)
        self.arena.count = 0

    cdef void _flush(self) noexcept nogil:
        """Run the core over the arena and transmit."""
        if self.arena.count == 0:
            return
        self.ctr.batches += 1
        if self.has_c:
            self.ccore.batch(self.ccore.state, self.arena.frames, self.arena.count, io_now())
        else:
            with gil:
                io_python_batch_safe(self.core, self.core_lock, self.arena, &self.ctr)
        self._transmit()

    cdef int _loop(self, pollfd *fds, int n, int idle_timeout_ms) noexcept nogil:
        """The driver loop, entirely without the GIL for the C core; returns 0 or an errno."""
        cdef int i, rc, more
        cdef uint64_t junk
        cdef double now, next_expire = 0.0
        cdef int timeout_ms = idle_timeout_ms
        cdef int expire_ms = IO_EXPIRE_INTERVAL_MS if self.has_c else IO_EXPIRE_INTERVAL_PY_MS
        cdef bint backlog
        cdef bint skip_poll = 0
        cdef double last_poll = 0.0
        cdef uint64_t rx_before
        while True:
            if skip_poll:
                # the spin saw a frame: go and take it without a syscall (stop and errors are
                # still looked at by a poll(0) every POLL_CHECK_MS)
                for i in range(n + 1):
                    fds[i].revents = 0
            else:
                rc = poll(fds, n + 1, timeout_ms)
                if rc < 0:
                    if errno == EINTR:
                        continue
                    return errno
                self.ctr.wakeups += 1
                last_poll = io_now()
            if fds[n].revents & POLLIN:
                read(self.stop_fd, &junk, sizeof(junk))
                return 0
            # An interface going down leaves ENETDOWN pending on its socket, and poll() reports
            # POLLERR until someone reads it: read it, or the loop would spin.
            for i in range(n):
                if fds[i].revents & POLLERR:
                    afp_clear_error(&self.ports[i], &self.ctr)
            # Drain every ring, one batch at a time, until none has a ready frame.
            rx_before = self.ctr.rx_frames
            more = 1
            while more:
                more = 0
                for i in range(n):
                    if self._gather(&self.ports[i]):
                        more = 1
                        self._flush()
                self._flush()
            # let the core expire connections and run its estimator, also when idle
            now = io_now()
            if now >= next_expire:
                with gil:
                    backlog = io_core_tick_safe(self.core, self.core_lock, now, &self.ctr)
                next_expire = now + expire_ms / 1000.0
                timeout_ms = expire_ms if backlog and expire_ms < idle_timeout_ms else idle_timeout_ms
            # Under load the next frame is usually microseconds away: watching the ring for it
            # costs less than a poll() (and the sender's wake-up of a sleeper).  Only after a
            # wake-up that found frames, and bounded, so an idle director still sleeps.
            skip_poll = 0
            if self.busy_poll_us > 0 and self.ctr.rx_frames != rx_before:
                if self._spin() and now - last_poll < POLL_CHECK_MS / 1000.0:
                    skip_poll = 1

    def run(self, int idle_timeout_ms=100):
        """Forward until stop().  The GIL is released once, around the whole loop."""
        cdef pollfd fds[IO_MAX_IFS + 1]
        cdef int i, err
        cdef int n = self.nports
        if n == 0:
            raise RuntimeError("the driver is closed")
        for i in range(n):
            fds[i].fd = self.ports[i].rx_fd
            fds[i].events = POLLIN
        fds[n].fd = self.stop_fd
        fds[n].events = POLLIN
        self.running = True
        try:
            with nogil:
                err = self._loop(fds, n, idle_timeout_ms)
        finally:
            self.running = False
        if err:
            raise OSError(err, f"AF_PACKET driver: poll failed: {os.strerror(err)}")
