# The datapath's shared C structures: the contract between the core (_fastpath.pyx),
# the C schedulers (fastpath/sched/*.pxi) and the control side that fills them.
#
# Addresses are kept in network byte order in a 16-byte array (IPv4 uses the
# first 4 bytes, the rest zero) so that one code path serves both families.
# Ports are network byte order too: the per-packet path compares and copies them
# without swapping. Counts and weights are host order.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t

cdef enum:
    LVS_DEST_F_AVAILABLE = 0x0001
    LVS_DEST_F_OVERLOAD = 0x0002

    LVS_FWD_MASQ = 0
    LVS_FWD_LOCALNODE = 1
    LVS_FWD_TUNNEL = 2
    LVS_FWD_ROUTE = 3
    LVS_FWD_BYPASS = 4

    LVS_SVC_F_PERSISTENT = 0x0001
    LVS_SVC_F_HASHED = 0x0002
    LVS_SVC_F_ONEPACKET = 0x0004
    LVS_SVC_F_SCHED1 = 0x0008
    LVS_SVC_F_SCHED2 = 0x0010
    LVS_SVC_F_SCHED3 = 0x0020

    LVS_MAX_DESTS = 65536     # per service (mh's table and the harness assume it)

    # lvs_dest.state / lvs_svc_rec.state: a slot's life (see core.pxi, "slots")
    LVS_SLOT_FREE = 0
    LVS_SLOT_USED = 1         # named by the running configuration
    LVS_SLOT_GONE = 2         # deleted, kept while connections (refcnt) still point at it


# ip_vs_est: scaled EWMA state (kernel units: rates << 10 for conns/packets, << 5 for bytes).
cdef struct lvs_est:
    uint64_t last[5]
    int64_t rate[5]


# One real server of one service, as the scheduler sees it.  It lives in a slot of the core's
# dest pool that never moves while connections point at it (they hold its slot number), so
# it holds no pointers: the pool may be a shared file mapping (core.pxi, "state").
cdef struct lvs_dest:
    uint8_t addr[16]          # real server address, network order
    uint16_t port             # network order
    uint8_t af                # AF_INET / AF_INET6
    uint8_t fwd               # LVS_FWD_*
    int32_t weight            # 0 = quiesced: no new connections
    uint32_t u_threshold      # 0 = no upper limit
    uint32_t l_threshold
    uint32_t activeconns      # kept by the connection table, as the kernel counts them
    uint32_t inactconns
    uint32_t persistconns     # templates pointing at this dest
    uint32_t flags            # LVS_DEST_F_*
    uint32_t index            # position in lvs_service.dests (kernel list order: newest first)
    # Forwarding data, filled by control from the kernel's routes and neighbours.
    int32_t ifindex           # egress interface towards the real server
    uint8_t src_mac[6]
    uint8_t dst_mac[6]        # next hop (DR: the real server itself)
    uint16_t mtu
    uint8_t tun_type
    uint8_t tun_flags
    uint16_t tun_port
    # Per-dest counters (ipvsadm --stats / --rate).
    uint64_t conns
    uint64_t inpkts
    uint64_t outpkts
    uint64_t inbytes
    uint64_t outbytes
    # The slot itself (core.pxi): identity in the pool, owner, life.
    uint32_t slot             # this slot's number in the dest pool
    uint32_t svc              # the service slot it belongs to
    uint32_t refcnt           # connections and templates bound to it
    uint32_t state            # LVS_SLOT_*
    uint32_t next_free        # free-slot stack link
    uint8_t has_route         # control found a route (or local node): new connections allowed
    uint8_t src_addr[16]      # tunnel outer source (the kernel's route source)
    lvs_est est


# The packet facts a scheduler may use; the core fills it once per new connection.
cdef struct lvs_pkt_info:
    uint8_t af
    uint8_t protocol
    uint16_t sport            # network order
    uint16_t dport            # network order
    uint8_t saddr[16]
    uint8_t daddr[16]


cdef struct lvs_service


# A scheduler, as the kernel's struct ip_vs_scheduler: hooks filled by each sched/*.pxi.
# init/update and the dest hooks run under the core lock when dests change; schedule runs
# per new connection, without the GIL, and returns a dest index (in svc.dests) or -1.
# add_dest / del_dest / upd_dest (the kernel's hooks of the same names) are told of one dest
# added, deleted (its slot is still readable) or edited in place, after svc.dests already
# shows the change; NULL means "call update_service" (the scheduler has nothing smarter).
ctypedef int (*lvs_sched_init_fn)(lvs_service *svc) noexcept nogil
ctypedef int (*lvs_sched_update_fn)(lvs_service *svc) noexcept nogil
ctypedef void (*lvs_sched_done_fn)(lvs_service *svc) noexcept nogil
ctypedef int (*lvs_sched_schedule_fn)(lvs_service *svc, const lvs_pkt_info *pkt, double now) noexcept nogil
ctypedef int (*lvs_sched_dest_fn)(lvs_service *svc, lvs_dest *dest) noexcept nogil

cdef struct lvs_scheduler:
    const char *name
    lvs_sched_init_fn init_service
    lvs_sched_update_fn update_service
    lvs_sched_done_fn done_service
    lvs_sched_schedule_fn schedule
    lvs_sched_dest_fn add_dest
    lvs_sched_dest_fn del_dest
    lvs_sched_dest_fn upd_dest


cdef struct lvs_service:
    uint8_t af
    uint8_t protocol          # 0 for fwmark services
    uint16_t port             # network order
    uint8_t addr[16]
    uint32_t fwmark
    uint32_t flags            # LVS_SVC_F_*
    uint32_t timeout          # persistence timeout, seconds
    uint8_t netmask[16]       # persistence mask, network order (v4 in the first 4 bytes)
    uint32_t num_dests
    lvs_dest **dests          # slots in the dest pool, kernel list order (newest first)
    const lvs_scheduler *sched
    void *sched_data          # the scheduler's private state (rr's cursor, sh's table, ...)
    uint32_t slot             # this service's slot (its lvs_svc_rec has the same number)
    uint32_t hnext            # service lookup chain (slot number, 0 = end)


# What outlives a process of a service (core.pxi, "state"): identity, life and counters,
# pointer-free, at the same slot number as the process-local lvs_service.
cdef struct lvs_svc_rec:
    uint8_t af
    uint8_t protocol          # 0 for fwmark services
    uint16_t port             # network order
    uint8_t addr[16]
    uint32_t fwmark
    uint32_t state            # LVS_SLOT_*
    uint32_t refcnt           # dest slots (used or gone) that belong to it
    uint32_t next_free
    uint64_t conns
    uint64_t inpkts
    uint64_t outpkts
    uint64_t inbytes
    uint64_t outbytes
    lvs_est est
