# The core's entry points: lvs_process_frame (one frame), lvs_core_batch (the drivers' entry,
# no GIL), and the Python class Core (publish, process, listings, counters).

from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t, int64_t
from libc.string cimport memcmp, memcpy, memset
from libc.stdlib cimport calloc, malloc, free
from cpython.ref cimport PyObject

from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE, MAP_FAILED

import copy as _copy
import fcntl as _fcntl
import ipaddress as _ipaddress
import os as _os
from lvsuser import model as _model
from lvsuser.fastpath import config as _config_mod
from lvsuser.fastpath import constants as _constants
from lvsuser.schedulers.base import PacketInfo as _PacketInfo
from lvsuser.schedulers.base import report_schedule_error as _report_schedule_error

PASS = LVS_PASS
DROP = LVS_DROP
TX = LVS_TX
REPLY = LVS_REPLY
COUNTER_NAMES = _constants.COUNTER_NAMES


cdef int32_t lvs_py_schedule(lvs_core *core, uint32_t svc_idx, const lvs_pkt *p,
                             double now) noexcept nogil:
    """A Python scheduler plugin decides, with the GIL (new connections only)."""
    cdef int32_t result = -1
    with gil:
        try:
            result = (<Core>core.owner)._py_schedule(
                svc_idx, p.af, p.proto, (<char *>(p.d + p.saddr_off))[:p.alen], p.sport,
                (<char *>(p.d + p.daddr_off))[:p.alen], p.dport, now)
        except BaseException as exc:   # logged and counted; the packet gets no real server
            result = -1
            core.counters[C_SCHEDULER_ERROR] += 1
            (<Core>core.owner)._report_schedule_error(svc_idx, exc)
    return result


cdef lvs_dest *lvs_pick(lvs_core *core, uint32_t svc_idx, lvs_pkt *p, double now,
                       int *why) noexcept nogil:
    """The service's scheduler picks an index in svc.dests; the core maps it to the slot."""
    cdef lvs_service *svc = &core.svcs[svc_idx]
    cdef lvs_pkt_info info
    cdef int32_t d
    if svc.sched != NULL:
        info.af = p.af
        info.protocol = p.proto
        info.sport = lvs_htons(p.sport)
        info.dport = lvs_htons(p.dport)
        memset(info.saddr, 0, 16)
        memset(info.daddr, 0, 16)
        memcpy(info.saddr, p.d + p.saddr_off, p.alen)
        memcpy(info.daddr, p.d + p.daddr_off, p.alen)
        d = svc.sched.schedule(svc, &info, now)
    elif core.svc_py[svc_idx]:
        d = lvs_py_schedule(core, svc_idx, p, now)
    else:
        why[0] = C_NO_SCHEDULER
        return NULL
    if d < 0 or <uint32_t>d >= svc.num_dests:
        why[0] = C_NO_DEST
        return NULL
    return svc.dests[d]


cdef int lvs_leave(lvs_core *core, lvs_frame *f, lvs_pkt *p, int why, double now) noexcept nogil:
    """ip_vs_leave: no real server -> ICMP port unreachable to the client, drop."""
    core.counters[why] += 1
    if why == C_NO_SCHEDULER:
        f.verdict = LVS_DROP
        f.out_ifindex = 0
        return LVS_DROP
    if p.af == AF_INET_:
        return lvs_icmp_error(core, f, p, 3, 3, 0, now)
    return lvs_icmp_error(core, f, p, 1, 4, 0, now)


cdef int lvs_schedule(lvs_core *core, lvs_frame *f, lvs_pkt *p, uint32_t svc_idx, double now,
                      uint32_t *out_idx) noexcept nogil:
    """ip_vs_schedule / ip_vs_sched_persist. 0 with *out_idx set, or a verdict already given."""
    cdef lvs_tables *t = core.tables
    cdef lvs_service *svc = &core.svcs[svc_idx]
    cdef uint32_t now_ms = lvs_ms(core, now)
    cdef uint32_t tidx = 0, idx
    cdef lvs_dest *dest
    cdef int why = 0
    cdef uint8_t snet[16]
    cdef uint8_t tvaddr[16]
    cdef uint8_t tproto
    cdef uint16_t tvport, tport, dport
    cdef uint32_t i
    cdef uint16_t peer = 0
    cdef uint8_t no_mac[6]
    if t.l2:
        peer = lvs_peer_get(core, f.ifindex, f.data + 6, f.data)
    else:
        memset(no_mac, 0, 6)     # L3 (TUN device): the reverse path is the interface alone
        peer = lvs_peer_get(core, f.ifindex, no_mac, no_mac)
    if svc.flags & LVS_SVC_F_PERSISTENT:
        memset(snet, 0, 16)
        memset(tvaddr, 0, 16)
        for i in range(p.alen):
            snet[i] = p.d[p.saddr_off + i] & svc.netmask[i]
        if svc.fwmark:
            tproto = 0
            lvs_put32(tvaddr, svc.fwmark)
            tvport = 0
        else:
            tproto = p.proto
            memcpy(tvaddr, p.d + p.daddr_off, p.alen)
            # FTP (port 21): one template for control and data connections, keyed without port
            tvport = p.dport if (p.dport == lvs_ntohs(svc.port) and p.dport != 21) else 0
        tidx = lvs_conn_in_find(&core.conns, tproto, LVS_CONN_TEMPLATE, snet, 0, tvaddr, tvport, p.alen)
        if tidx and lvs_conn_reap(core, tidx, now_ms):
            tidx = 0     # its real server was deleted
        if tidx and lvs_time_after_eq(now_ms, core.conns.entries[tidx].expires) \
                and core.conns.entries[tidx].control == 0:
            lvs_conn_expire(core, tidx, now_ms)
            tidx = 0
        if tidx:
            dest = &core.dests[core.conns.entries[tidx].dest]
        else:
            dest = lvs_pick(core, svc_idx, p, now, &why)
            if dest == NULL:
                return lvs_leave(core, f, p, why, now)
            if not dest.has_route:
                return lvs_drop(core, f, C_NO_ROUTE)
            tport = lvs_ntohs(dest.port) \
                if (p.dport == lvs_ntohs(svc.port) and p.dport != 21) else 0
            tidx = lvs_conn_new(core, dest, tproto, p.alen, snet, 0, tvaddr, tvport,
                                tport, LVS_CONN_TEMPLATE, peer, now_ms)
            if tidx == 0:
                return lvs_drop(core, f, C_TABLE_FULL)
            core.conns.entries[tidx].expires = now_ms + svc.timeout * 1000
        dport = lvs_ntohs(dest.port) \
            if (p.dport == lvs_ntohs(svc.port) and dest.port) else p.dport
    else:
        dest = lvs_pick(core, svc_idx, p, now, &why)
        if dest == NULL:
            return lvs_leave(core, f, p, why, now)
        dport = lvs_ntohs(dest.port) if dest.port else p.dport
    if not dest.has_route:
        return lvs_drop(core, f, C_NO_ROUTE)
    idx = lvs_conn_new(core, dest, p.proto, p.alen, p.d + p.saddr_off, p.sport,
                       p.d + p.daddr_off, p.dport, dport, 0, peer, now_ms)
    if idx == 0:
        return lvs_drop(core, f, C_TABLE_FULL)
    if tidx:
        core.conns.entries[idx].control = tidx
        core.conns.entries[tidx].control += 1
        core.conns.entries[tidx].expires = now_ms + svc.timeout * 1000
    core.svc_recs[svc_idx].conns += 1
    dest.conns += 1
    core.counters[C_CONN_NEW] += 1
    out_idx[0] = idx
    return 0


cdef int lvs_process_frame(lvs_core *core, lvs_frame *f, double now, bint csum_partial) noexcept nogil:
    """One frame: sets f.verdict / f.out_ifindex (and rewrites f in place); returns the verdict."""
    cdef lvs_tables *t = core.tables
    cdef uint8_t *d = f.data
    cdef uint32_t l3 = 0, idx = 0
    cdef uint16_t ethertype
    cdef uint8_t af = 0
    cdef lvs_pkt p
    cdef int rc
    cdef int32_t svc_idx
    cdef uint32_t now_ms = lvs_ms(core, now)
    cdef lvs_conntab *ct = &core.conns
    cdef lvs_conn *c
    core.counters[C_RX] += 1
    f.out_ifindex = 0
    if t.l2:
        if f.len < 14:
            return lvs_drop(core, f, C_ETH_TRUNCATED)
        ethertype = lvs_get16(d + 12)
        l3 = 14
        if ethertype == ETHP_8021Q:
            if f.len < 18:
                return lvs_drop(core, f, C_ETH_TRUNCATED)
            ethertype = lvs_get16(d + 16)
            l3 = 18
        if ethertype == ETHP_ARP:
            return lvs_arp(core, f, l3)
        if ethertype == ETHP_IP:
            af = AF_INET_
        elif ethertype == ETHP_IPV6:
            af = AF_INET6_
        else:
            return lvs_pass(core, f, C_PASS_NOT_IP)
    else:
        if f.len < 1:
            return lvs_drop(core, f, C_IP_TRUNCATED)
        if d[0] >> 4 == 4:
            af = AF_INET_
        elif d[0] >> 4 == 6:
            af = AF_INET6_
        else:
            return lvs_drop(core, f, C_IP_BAD_VERSION)
    rc = lvs_parse_ip(&p, d, l3, f.len, af, True)
    if rc < 0:
        return lvs_drop(core, f, -rc - 1)
    f.tailroom += f.len - p.ip_end          # Ethernet padding is not part of the packet
    f.len = p.ip_end
    if (p.proto == PROTO_ICMP or p.proto == PROTO_ICMPV6) and not p.fragment:
        if p.af == AF_INET6_ and p.proto == PROTO_ICMPV6 and t.l2:
            rc = lvs_nd(core, f, &p)
            if rc >= 0:
                return rc
        return lvs_icmp(core, f, &p, now)
    if (p.proto == PROTO_TCP_ or p.proto == PROTO_UDP_) and not p.fragment and p.has_ports:
        idx = ct.out_heads[lvs_hash_key(p.proto, d + p.saddr_off, p.sport, d + p.daddr_off,
                                        p.dport, p.alen) & ct.mask]
        while idx:
            c = &ct.entries[idx]
            if (c.protocol == p.proto and c.dport == p.sport and c.cport == p.dport
                    and ((c.flags & LVS_CONN_V6) != 0) == (p.alen == 16)
                    and memcmp(lvs_caddr(ct, idx), d + p.daddr_off, p.alen) == 0
                    and memcmp(lvs_conn_dest(core, c).addr, d + p.saddr_off, p.alen) == 0):
                if not lvs_conn_reap(core, idx, now_ms):
                    break
                # its real server was deleted: freed now; look again from the chain's head
                idx = ct.out_heads[lvs_hash_key(p.proto, d + p.saddr_off, p.sport,
                                                d + p.daddr_off, p.dport, p.alen) & ct.mask]
                continue
            idx = c.next_out
        if idx and not lvs_time_after_eq(now_ms, ct.entries[idx].expires):
            return lvs_reply_out(core, f, &p, idx, now, csum_partial)
    svc_idx = lvs_find_service(core, &p, lvs_mark_of(t, &p) if t.num_marks else 0)
    if svc_idx < 0 and p.fragment and lvs_is_vip(core, &p):
        return lvs_drop(core, f, C_FRAGMENT)   # a fragment carries no ports: any service on the VIP
    if svc_idx < 0 and not p.has_ports and (p.proto == PROTO_TCP_ or p.proto == PROTO_UDP_) \
            and lvs_is_vip(core, &p):
        return lvs_drop(core, f, C_L4_TRUNCATED)   # no ports to find its service by; the kernel drops it too
    if svc_idx < 0:
        return lvs_pass(core, f, C_PASS_NOT_SERVICE)
    if p.fragment:
        return lvs_drop(core, f, C_FRAGMENT)
    if p.proto != PROTO_TCP_ and p.proto != PROTO_UDP_:
        return lvs_drop(core, f, C_L4_UNSUPPORTED)
    if not p.has_ports:
        return lvs_drop(core, f, C_L4_TRUNCATED)
    idx = lvs_conn_in_find(ct, p.proto, 0, d + p.saddr_off, p.sport, d + p.daddr_off, p.dport, p.alen)
    if idx and lvs_conn_reap(core, idx, now_ms):
        idx = 0      # its real server was deleted: the connection is not there any more
    if idx and lvs_time_after_eq(now_ms, ct.entries[idx].expires):
        core.counters[C_CONN_EXPIRED] += 1
        lvs_conn_expire(core, idx, now_ms)
        idx = 0
    if (idx and p.proto == PROTO_TCP_ and p.tcp_flags & 0x02 and ct.entries[idx].control == 0
            and (ct.entries[idx].state == TS_TIME_WAIT or ct.entries[idx].state == TS_CLOSE)):
        # conn_reuse_mode: a new SYN on a finished connection is a new connection, at once.
        core.counters[C_CONN_REUSED] += 1
        lvs_conn_expire(core, idx, now_ms)
        idx = 0
    if idx == 0:
        if p.proto == PROTO_TCP_ and not ((p.tcp_flags & 0x02) and not (p.tcp_flags & 0x04)):
            return lvs_pass(core, f, C_TCP_NOT_SYN)
        rc = lvs_schedule(core, f, &p, <uint32_t>svc_idx, now, &idx)
        if idx == 0:
            return rc
    rc = lvs_forward_in(core, f, &p, idx, now, csum_partial)
    if core.svcs[svc_idx].flags & LVS_SVC_F_ONEPACKET and p.proto == PROTO_UDP_:
        # -o: the connection serves this one datagram (IP_VS_CONN_F_ONE_PACKET)
        core.counters[C_ONE_PACKET] += 1
        lvs_conn_expire(core, idx, now_ms)
    return rc


cdef int lvs_core_batch(lvs_core *core, lvs_frame *frames, int count, double now) noexcept nogil:
    """The drivers' entry: process `count` frames in place, without the GIL (the caller has
    released it once around its loop).  Takes the core lock for the whole batch, so a publish
    lands between batches.  Returns how many frames have something to send (TX or REPLY)."""
    cdef int i, sending = 0
    pthread_mutex_lock(&core.lock)
    for i in range(count):
        if lvs_process_frame(core, &frames[i], now, False) >= LVS_TX:
            sending += 1
    lvs_sweep(core, lvs_ms(core, now), <uint32_t>count * SWEEP_PER_FRAME, SWEEP_NO_LIMIT)
    pthread_mutex_unlock(&core.lock)
    return sending


# ------------------------------------------------------------------------ building tables
cdef void lvs_tables_free(lvs_tables *t) noexcept nogil:
    if t == NULL:
        return
    free(t.proxy)
    free(t.macs)
    free(t.marks)
    free(t)


cdef void lvs_est_tick(lvs_est *e, uint64_t conns, uint64_t inpkts, uint64_t outpkts,
                       uint64_t inbytes, uint64_t outbytes) noexcept nogil:
    """ip_vs_est's 2-second step: rate << 9 (per 2 s = << 10 per s), EWMA weight 1/4."""
    cdef uint64_t now[5]
    cdef int i
    cdef int64_t rate
    now[0] = conns
    now[1] = inpkts
    now[2] = outpkts
    now[3] = inbytes
    now[4] = outbytes
    for i in range(5):
        rate = <int64_t>(now[i] - e.last[i]) << (9 if i < 3 else 4)
        e.last[i] = now[i]
        e.rate[i] += (rate - e.rate[i]) >> 2


cdef void lvs_put_addr(uint8_t *dst, object addr):
    cdef bytes packed = addr.packed
    memset(dst, 0, 16)
    memcpy(dst, <const char *>packed, len(packed))


cdef void lvs_put_mac(uint8_t *dst, bytes mac):
    memcpy(dst, <const char *>mac, 6)


cdef void lvs_fill_mask(uint8_t *mask, object net):
    cdef bytes packed = net.netmask.packed
    memset(mask, 0, 16)
    memcpy(mask, <const char *>packed, len(packed))


cdef inline uint64_t lvs_align(uint64_t n) noexcept nogil:
    return (n + LVS_REGION_ALIGN - 1) & ~(<uint64_t>LVS_REGION_ALIGN - 1)


cdef void lvs_region_layout(lvs_state_hdr *h, uint32_t capacity, uint32_t max_dests,
                            uint32_t max_services) noexcept nogil:
    """Fill the header's identity, sizes and offsets for a new region."""
    cdef uint64_t off
    cdef uint32_t heads = lvs_conntab_hash_size(capacity)
    memcpy(h.magic, b"LVSUSTAT", 8)
    h.version = LVS_STATE_VERSION
    h.hdr_size = sizeof(lvs_state_hdr)
    h.conn_size = sizeof(lvs_conn)
    h.dest_size = sizeof(lvs_dest)
    h.svc_size = sizeof(lvs_svc_rec)
    h.peer_size = sizeof(lvs_peer)
    h.capacity = capacity
    h.max_dests = max_dests
    h.max_services = max_services
    h.num_counters = C_NUM_COUNTERS
    off = lvs_align(sizeof(lvs_state_hdr))
    h.off_entries = off
    off = lvs_align(off + (<uint64_t>capacity + 1) * sizeof(lvs_conn))
    h.off_in_heads = off
    off = lvs_align(off + <uint64_t>heads * 4)
    h.off_out_heads = off
    off = lvs_align(off + <uint64_t>heads * 4)
    h.off_v6 = off
    off = lvs_align(off + (<uint64_t>capacity + 1) * LVS_V6_SLOT)
    h.off_peers = off
    off = lvs_align(off + (<uint64_t>LVS_MAX_PEERS + 1) * sizeof(lvs_peer))
    h.off_peer_slots = off
    off = lvs_align(off + <uint64_t>LVS_PEER_SLOTS * 2)
    h.off_dests = off
    off = lvs_align(off + (<uint64_t>max_dests + 1) * sizeof(lvs_dest))
    h.off_svcs = off
    off = lvs_align(off + (<uint64_t>max_services + 1) * sizeof(lvs_svc_rec))
    h.total_size = off


cdef class Core:
    """The compiled datapath core; the same API as lvsuser.pyfastpath.Core.

    Core(max_conns=1 << 20, scheduler_factory=None, state_path=None, fresh=False,
         max_dests=1 << 16, max_services=1 << 14)

    state_path: keep the connection table, the real-server and service slots and the counters
    in this file (MAP_SHARED, sparse; see core.pxi "state") so that a later Core on the same
    path adopts them; the first publish() then matches the slots by identity.  fresh=True
    discards an existing file.  A file of another layout raises config.StateError.
    max_dests / max_services size the slot pools (real servers and services alive or still
    referenced by connections); a publish that would need more raises MemoryError.
    """

    cdef lvs_core *c
    cdef void *_region
    cdef size_t _region_size
    cdef object _state_fd       # the open state file (its lock says "in use"), or None
    cdef readonly object state_path
    cdef readonly bint adopted  # True when an existing state file was adopted
    cdef dict _svc_slot         # ServiceKey -> service slot
    cdef dict _svc_model        # service slot -> model.Service (private copy, list order)
    cdef dict _svc_sig          # service slot -> what the last publish said of it
    cdef dict _dest_slots       # service slot -> {(addr, port): dest slot}
    cdef dict _py_scheds        # service slot -> (plugin, model.Service, reused)
    cdef dict _pending          # service slot -> [(hook name, model.Dest)] for its plugin
    cdef list _order            # service slots in config order
    cdef object _small_sig      # the last published whole-config facts
    cdef object _scheduler_factory
    cdef double _next_est
    cdef readonly unsigned int max_conns
    cdef public int generation

    def __cinit__(self, unsigned int max_conns=1 << 20, scheduler_factory=None, state_path=None,
                  bint fresh=False, unsigned int max_dests=1 << 16,
                  unsigned int max_services=1 << 14):
        cdef lvs_state_hdr want
        cdef uint32_t size
        if max_conns == 0 or max_conns > (1 << 30):
            raise ValueError("max_conns must be between 1 and 2**30")
        if max_dests == 0 or max_dests > (1 << 24) or max_services == 0 or max_services > (1 << 22):
            raise ValueError("max_dests must be in 1..2**24 and max_services in 1..2**22")
        self._state_fd = None
        self.state_path = state_path
        self.c = <lvs_core *>calloc(1, sizeof(lvs_core))
        if self.c == NULL:
            raise MemoryError()
        pthread_mutex_init(&self.c.lock, NULL)
        self.c.owner = <PyObject *>self
        self.c.icmp_credit = ICMP_BURST
        memset(&want, 0, sizeof(want))
        lvs_region_layout(&want, max_conns, max_dests, max_services)
        if state_path is None:
            self._map_anonymous(&want)
        else:
            self._map_file(str(state_path), &want, fresh)
        self._attach()
        size = 16
        while size < max_services:
            size <<= 1
        self.c.svcs = <lvs_service *>calloc(<size_t>max_services + 1, sizeof(lvs_service))
        self.c.svc_py = <uint8_t *>calloc(<size_t>max_services + 1, 1)
        self.c.svc_heads = <uint32_t *>calloc(size, sizeof(uint32_t))
        self.c.svc_mask = size - 1
        if self.c.svcs == NULL or self.c.svc_py == NULL or self.c.svc_heads == NULL:
            raise MemoryError("cannot allocate the service tables")
        self.max_conns = max_conns
        self._svc_slot = {}
        self._svc_model = {}
        self._svc_sig = {}
        self._dest_slots = {}
        self._py_scheds = {}
        self._pending = {}
        self._order = []
        self._small_sig = None
        self._scheduler_factory = scheduler_factory
        self._next_est = -1.0
        self.generation = 0
        self.c.tables = self._build_small(_config_mod.CoreConfig())
        if self.adopted:
            self._adopt_slots()

    cdef _map_anonymous(self, lvs_state_hdr *want):
        cdef void *base = mmap(NULL, want.total_size, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        if base == MAP_FAILED:
            raise MemoryError("cannot map the connection table")
        self._region = base
        self._region_size = want.total_size
        memcpy(base, want, sizeof(lvs_state_hdr))
        (<lvs_state_hdr *>base).epoch = 0.0
        self.adopted = False

    cdef _map_file(self, str path, lvs_state_hdr *want, bint fresh):
        cdef lvs_state_hdr have
        cdef void *base
        cdef bytes raw
        fd = _os.open(path, _os.O_RDWR | _os.O_CREAT | _os.O_CLOEXEC, 0o600)
        try:
            try:
                _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
            except BlockingIOError:
                raise _config_mod.StateError(
                    f"{path} is in use by another running datapath core") from None
            size = _os.fstat(fd).st_size
            if fresh or size == 0:
                _os.ftruncate(fd, 0)
                _os.ftruncate(fd, want.total_size)       # sparse: no page is written yet
                self.adopted = False
            else:
                raw = _os.pread(fd, sizeof(lvs_state_hdr), 0)
                if len(raw) < 16 or raw[:8] != b"LVSUSTAT":
                    raise _config_mod.StateError(
                        f"{path} is not a datapath state file (bad magic); start with fresh=True "
                        "to discard it")
                memset(&have, 0, sizeof(have))
                memcpy(&have, <const char *>raw, min(len(raw), sizeof(lvs_state_hdr)))
                if (have.version != LVS_STATE_VERSION or len(raw) < sizeof(lvs_state_hdr)
                        or have.hdr_size != sizeof(lvs_state_hdr)
                        or have.conn_size != sizeof(lvs_conn) or have.dest_size != sizeof(lvs_dest)
                        or have.svc_size != sizeof(lvs_svc_rec) or have.peer_size != sizeof(lvs_peer)
                        or have.num_counters != C_NUM_COUNTERS):
                    raise _config_mod.StateError(
                        f"{path} has datapath state layout version {have.version} (struct sizes "
                        f"hdr/conn/dest/svc {have.hdr_size}/{have.conn_size}/{have.dest_size}/"
                        f"{have.svc_size}) but this lvsuser reads version {LVS_STATE_VERSION} "
                        f"({sizeof(lvs_state_hdr)}/{sizeof(lvs_conn)}/{sizeof(lvs_dest)}/"
                        f"{sizeof(lvs_svc_rec)}): refusing to read it; start with fresh=True to "
                        "discard it")
                if (have.capacity != want.capacity or have.max_dests != want.max_dests
                        or have.max_services != want.max_services
                        or have.total_size != want.total_size or size < have.total_size):
                    raise _config_mod.StateError(
                        f"{path} was made for max_conns={have.capacity}, max_dests="
                        f"{have.max_dests}, max_services={have.max_services} (size {size}), not "
                        f"{want.capacity}/{want.max_dests}/{want.max_services}: open it with the "
                        "same sizes, or with fresh=True to discard it")
                self.adopted = True
            base = mmap(NULL, want.total_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
            if base == MAP_FAILED:
                raise MemoryError(f"cannot map {path}")
        except BaseException:
            _os.close(fd)
            raise
        self._region = base
        self._region_size = want.total_size
        self._state_fd = fd
        if not self.adopted:
            memcpy(base, want, sizeof(lvs_state_hdr))
            (<lvs_state_hdr *>base).epoch = 0.0

    cdef _attach(self):
        """Point the core at its region (new or adopted) through the header's offsets."""
        cdef uint8_t *base = <uint8_t *>self._region
        cdef lvs_state_hdr *h = <lvs_state_hdr *>base
        self.c.st = h
        self.c.counters = h.counters
        self.c.epoch = h.epoch
        self.c.peers = <lvs_peer *>(base + h.off_peers)
        self.c.peer_slots = <uint16_t *>(base + h.off_peer_slots)
        self.c.dests = <lvs_dest *>(base + h.off_dests)
        self.c.svc_recs = <lvs_svc_rec *>(base + h.off_svcs)
        lvs_conntab_attach(&self.c.conns, h.capacity, <lvs_conn *>(base + h.off_entries),
                           <uint32_t *>(base + h.off_in_heads), <uint32_t *>(base + h.off_out_heads),
                           base + h.off_v6, &h.tab)

    cdef _adopt_slots(self):
        """An adopted file: every service record still in use becomes a known slot with its
        dest slots, not yet serving (no scheduler, not in the lookup) until the first publish
        names it; publish retires the ones it does not name."""
        cdef uint32_t slot, d
        cdef lvs_svc_rec *rec
        cdef lvs_dest *dest
        cdef uint8_t alen
        for slot in range(1, self.c.st.svc_high + 1):
            rec = &self.c.svc_recs[slot]
            if rec.state != LVS_SLOT_USED:
                continue
            if rec.fwmark:
                key = _model.ServiceKey(af=rec.af, fwmark=rec.fwmark)
            else:
                alen = 16 if rec.af == _model.AF_INET6 else 4
                key = _model.ServiceKey(af=rec.af, protocol=rec.protocol,
                                        addr=_constants.addr_from_bytes(rec.af, (<char *>rec.addr)[:alen]),
                                        port=lvs_ntohs(rec.port))
            self._svc_slot[key] = slot
            self._svc_sig[slot] = None
            self._dest_slots[slot] = {}
            self.c.svcs[slot].slot = slot
        for d in range(1, self.c.st.dest_high + 1):
            dest = &self.c.dests[d]
            if dest.state != LVS_SLOT_USED or dest.svc not in self._dest_slots:
                continue
            alen = 16 if dest.af == _model.AF_INET6 else 4
            ident = (_constants.addr_from_bytes(dest.af, (<char *>dest.addr)[:alen]), lvs_ntohs(dest.port))
            self._dest_slots[dest.svc][ident] = d

    def __dealloc__(self):
        cdef uint32_t slot
        if self.c != NULL:
            if self.c.svcs != NULL:
                for slot in range(1, self.c.st.svc_high + 1 if self.c.st != NULL else 1):
                    self._sched_done(slot)
                    free(self.c.svcs[slot].dests)
            lvs_tables_free(self.c.tables)
            free(self.c.svcs)
            free(self.c.svc_py)
            free(self.c.svc_heads)
            free(self.c.svc_list)
            pthread_mutex_destroy(&self.c.lock)
            free(self.c)
            self.c = NULL
        if self._region != NULL:
            munmap(self._region, self._region_size)
            self._region = NULL
        if self._state_fd is not None:
            _os.close(self._state_fd)
            self._state_fd = None

    cdef void _sched_done(self, uint32_t slot) noexcept:
        cdef lvs_service *s = &self.c.svcs[slot]
        if s.sched != NULL and s.sched.done_service != NULL and s.sched_data != NULL:
            s.sched.done_service(s)
        s.sched = NULL
        s.sched_data = NULL

    # ---------------------------------------------------------------- configuration
    cdef lvs_tables *_build_small(self, config) except NULL:
        """The whole-config facts of `config`: proxied VIPs, MACs, mark rules, timeouts, mode."""
        cdef lvs_tables *t = <lvs_tables *>calloc(1, sizeof(lvs_tables))
        cdef uint32_t i
        if t == NULL:
            raise MemoryError()
        try:
            proxies = [(ifx, _ipaddress.ip_address(a)) for ifx, addrs in config.proxy_vips.items()
                       for a in addrs]
            t.proxy = <lvs_proxy_vip *>calloc(len(proxies) + 1, sizeof(lvs_proxy_vip))
            t.macs = <lvs_ifmac *>calloc(len(config.local_macs) + 1, sizeof(lvs_ifmac))
            t.marks = <lvs_mark_rule *>calloc(len(config.mark_rules) + 1, sizeof(lvs_mark_rule))
            if t.proxy == NULL or t.macs == NULL or t.marks == NULL:
                raise MemoryError()
            for i, (ifx, addr) in enumerate(proxies):
                t.proxy[i].ifindex = ifx
                t.proxy[i].af = _model.af_of(addr)
                lvs_put_addr(t.proxy[i].addr, addr)
            t.num_proxy = len(proxies)
            for i, (ifx, mac) in enumerate(config.local_macs.items()):
                t.macs[i].ifindex = ifx
                lvs_put_mac(t.macs[i].mac, bytes(mac))
            t.num_macs = len(config.local_macs)
            for i, rule in enumerate(config.mark_rules):
                t.marks[i].mark = rule.mark
                t.marks[i].af = _model.AF_INET if rule.dst_net.version == 4 else _model.AF_INET6
                t.marks[i].protocol = rule.protocol
                t.marks[i].dport_lo = rule.dport_lo
                t.marks[i].dport_hi = rule.dport_hi
                lvs_put_addr(t.marks[i].dst, rule.dst_net.network_address)
                lvs_fill_mask(t.marks[i].dst_mask, rule.dst_net)
                if rule.src_net is not None:
                    if rule.src_net.version != rule.dst_net.version:
                        # a source of the other family never matches: make the rule inert
                        t.marks[i].af = 0
                    t.marks[i].has_src = 1
                    lvs_put_addr(t.marks[i].src, rule.src_net.network_address)
                    lvs_fill_mask(t.marks[i].src_mask, rule.src_net)
            t.num_marks = len(config.mark_rules)
            for i, secs in enumerate(_constants.tcp_timeouts(config.timeouts)):
                t.tcp_timeout_ms[i] = secs * 1000
            t.udp_timeout_ms = config.timeouts.udp * 1000
            t.l2 = config.mode == _config_mod.MODE_L2
        except BaseException:
            lvs_tables_free(t)
            raise
        return t

    def publish(self, config):
        """Make `config` the running configuration by applying only what differs from it.

        Services are the same service when their key is; a dest is the same dest when its
        (address, port) is, within its service.  Unchanged services are not touched (not even
        copied); a changed one is edited in place under the core lock in O(its dests): new
        dests get slots, edited ones change in place (counters and connections stay), deleted
        ones are retired -- their connections are freed later by the lookups and the sweep
        that meet them, never by a walk here.  Each scheduler hears of its own service's
        changes only (add_dest / del_dest / upd_dest).  Returns the new generation, which the
        datapath runs once this returns (running_generation()).

        Raises ValueError on bad input and MemoryError when the slot pools are full, leaving
        the running configuration exactly as it was."""
        cdef lvs_tables *small = NULL
        cdef lvs_tables *old_small = NULL
        cdef uint32_t *svc_list = NULL
        cdef uint32_t *old_list
        cdef uint32_t need_dests = 0, need_svcs = 0, i
        config.validate()
        routes = _config_mod.packed_routes(config.routes)
        # 1. the plan, in Python, touching nothing that runs
        changed = []                # (model copy, slot or 0, signature)
        seen = set()
        for svc in config.services:
            seen.add(svc.key)
            sig = _config_mod.service_signature(svc, routes)
            slot = self._svc_slot.get(svc.key, 0)
            if slot and self._svc_sig.get(slot) == sig:
                continue
            changed.append((svc, slot, sig))
            if not slot:
                need_svcs += 1
            known = self._dest_slots.get(slot, {}) if slot else {}
            for dest in svc.dests:
                if (dest.addr, dest.port) not in known:
                    need_dests += 1
        removed = [slot for key, slot in self._svc_slot.items() if key not in seen]
        if need_svcs > self.c.st.max_services - self.c.st.svc_in_use:
            raise MemoryError(f"publish needs {need_svcs} more service slots than the "
                              f"{self.c.st.max_services} this core has (max_services)")
        if need_dests > self.c.st.max_dests - self.c.st.dest_in_use:
            raise MemoryError(f"publish needs {need_dests} more real-server slots than the "
                              f"{self.c.st.max_dests} this core has (max_dests); "
                              f"{self.c.st.dest_in_use} are in use or still referenced")
        models = [(_config_mod.private_copy(svc), slot, sig) for svc, slot, sig in changed]
        small_sig = _small_signature(config)
        if small_sig != self._small_sig:
            small = self._build_small(config)
        svc_list = <uint32_t *>malloc((len(config.services) + 1) * sizeof(uint32_t))
        if svc_list == NULL:
            lvs_tables_free(small)
            raise MemoryError()
        old_list = NULL
        # 2. apply, under the lock (the datapath adopts it between batches)
        with nogil:
            pthread_mutex_lock(&self.c.lock)
        try:
            for slot in removed:
                self._retire_service(slot)
            done = [self._apply_service(model, slot, routes) for model, slot, _ in models]
            for (model, _, sig), slot in zip(models, done):
                self._svc_sig[slot] = sig
                # a Python plugin hears of its changes here too: the datapath calls it with
                # this lock held, so it never schedules half-told
                self._update_plugin(slot, model)
            order = [self._svc_slot[svc.key] for svc in config.services]
            self._order = order
            for i in range(len(order)):
                svc_list[i] = order[i]
            old_list = self.c.svc_list
            self.c.svc_list = svc_list
            self.c.num_svc_list = len(order)
            if small != NULL:
                old_small = self.c.tables
                self.c.tables = small
            self.generation += 1
            self.c.generation = self.generation
        except BaseException:
            # not reached with checked input and pools; an allocation failing half-way
            # leaves the services applied so far, and the tables not swapped are freed
            if self.c.svc_list != svc_list:
                free(svc_list)
            if small != NULL and self.c.tables != small:
                lvs_tables_free(small)
            raise
        finally:
            pthread_mutex_unlock(&self.c.lock)
        # 3. after: free what the datapath no longer sees
        free(old_list)
        if small != NULL:
            lvs_tables_free(old_small)
            self._small_sig = small_sig
        return self.generation

    cdef _retire_service(self, uint32_t slot):
        """ip_vs_del_service: out of the lookup, its dests retired, the slot kept while
        dests of it are still referenced."""
        cdef lvs_service *s = &self.c.svcs[slot]
        cdef lvs_svc_rec *rec = &self.c.svc_recs[slot]
        if self._svc_sig.get(slot) is not None:      # published, so in the lookup
            lvs_svc_hash_unlink(self.c, slot)
        self._sched_done(slot)
        free(s.dests)
        s.dests = NULL
        s.num_dests = 0
        self.c.svc_py[slot] = 0
        rec.state = LVS_SLOT_GONE
        rec.refcnt += 1          # hold it while its dests go
        for dslot in self._dest_slots.pop(slot, {}).values():
            lvs_dest_slot_retire(self.c, dslot)
        lvs_svc_slot_put(self.c, slot)
        model = self._svc_model.pop(slot, None)
        self._svc_sig.pop(slot, None)
        self._py_scheds.pop(slot, None)
        key = model.key if model is not None else None
        if key is None:
            for k, v in self._svc_slot.items():
                if v == slot:
                    key = k
                    break
        self._svc_slot.pop(key, None)

    cdef uint32_t _apply_service(self, svc, uint32_t slot, dict routes) except 0:
        """Add service `svc` (slot 0) or bring slot `slot` to it, in place; under the lock."""
        cdef lvs_service *s
        cdef lvs_svc_rec *rec
        cdef lvs_dest *d
        cdef lvs_dest **arr
        cdef uint32_t dslot, j
        cdef bint is_new = slot == 0
        cdef bint linked
        cdef bytes name
        if is_new:
            slot = lvs_svc_slot_alloc(self.c)
            if slot == 0:
                raise MemoryError("service slots exhausted")   # checked in publish: not reached
            rec = &self.c.svc_recs[slot]
            rec.af = svc.af
            rec.protocol = 0 if svc.fwmark else svc.protocol
            rec.port = lvs_htons(0 if svc.fwmark else svc.port)
            if svc.addr is not None and not svc.fwmark:
                lvs_put_addr(rec.addr, svc.addr)
            rec.fwmark = svc.fwmark
            self._svc_slot[svc.key] = slot
            self._dest_slots[slot] = {}
            linked = False
        else:
            linked = self._svc_sig.get(slot) is not None     # adopted slots are not linked yet
        s = &self.c.svcs[slot]
        rec = &self.c.svc_recs[slot]
        s.slot = slot
        s.af = rec.af
        s.protocol = rec.protocol
        s.port = rec.port
        memcpy(s.addr, rec.addr, 16)
        s.fwmark = rec.fwmark
        s.flags = svc.flags
        s.timeout = svc.timeout
        memset(s.netmask, 0, 16)
        if svc.af == _model.AF_INET:
            lvs_put32(s.netmask, svc.netmask & 0xFFFFFFFF)
        else:
            plen = svc.netmask if svc.netmask <= 128 else 128
            lvs_fill_mask(s.netmask, _ipaddress.IPv6Network(f"::/{plen}"))
        if not linked:
            lvs_svc_hash_link(self.c, slot)
        # the scheduler: the same C scheduler keeps its state; another one starts afresh
        name = svc.scheduler.encode()
        sched = lvs_find_scheduler(name)
        fresh_sched = sched != s.sched or s.sched_data == NULL and sched != NULL
        if sched != s.sched:
            self._sched_done(slot)
        old = self._dest_slots[slot]
        new_ids = [(dest.addr, dest.port) for dest in svc.dests]
        keep = set(new_ids)
        # deleted dests: out of the list first, then retired, then the scheduler is told
        gone = [(ident, dslot) for ident, dslot in old.items() if ident not in keep]
        for ident, dslot in gone:
            del old[ident]
            lvs_list_remove(s, &self.c.dests[dslot])
            if not fresh_sched:
                lvs_sched_hook(s, s.sched.del_dest if s.sched != NULL else NULL, &self.c.dests[dslot])
            lvs_dest_slot_retire(self.c, dslot)
        kept_order = [s.dests[j].slot for j in range(s.num_dests)]
        # edited and new dests
        added = []
        edited = []
        for dest in svc.dests:
            ident = (dest.addr, dest.port)
            dslot = old.get(ident, 0)
            if dslot == 0:
                dslot = lvs_dest_slot_alloc(self.c, slot)
                if dslot == 0:
                    raise MemoryError("dest slots exhausted")  # checked in publish: not reached
                old[ident] = dslot
                d = &self.c.dests[dslot]
                lvs_put_addr(d.addr, dest.addr)
                d.port = lvs_htons(dest.port)
                d.af = _model.af_of(dest.addr)
                added.append(dslot)
            if _fill_dest(&self.c.dests[dslot], dest, routes):
                edited.append(dslot)
        # The kernel never reorders a list (new dests go to the head), but a published config
        # may: then the scheduler also re-reads the whole list (update), after the hooks.
        added_set = set(added)
        reordered = [old[i] for i in new_ids if old[i] not in added_set] != kept_order
        if sched == NULL:
            # what a Python plugin will hear
            old_model = self._svc_model.get(slot)
            by_ident = {(dm.addr, dm.port): dm for dm in svc.dests}
            old_by_ident = {(dm.addr, dm.port): dm for dm in old_model.dests} if old_model else {}
            slot_ident = {v: k for k, v in old.items()}
            self._pending[slot] = (
                [("del_dest", old_by_ident.get(ident)) for ident, _ in gone]
                + [("upd_dest", by_ident[slot_ident[x]]) for x in edited if x not in added_set]
                + [("add_dest", by_ident[slot_ident[x]]) for x in added]
                + ([("update", None)] if reordered else []))
        # the list in config order (newest first), then the hooks, one per change
        arr = <lvs_dest **>malloc((len(svc.dests) + 1) * sizeof(lvs_dest *))
        if arr == NULL:
            raise MemoryError()
        for j, ident in enumerate(new_ids):
            arr[j] = &self.c.dests[old[ident]]
            arr[j].index = j
        free(s.dests)
        s.dests = arr
        s.num_dests = len(new_ids)
        if fresh_sched:
            s.sched = sched
            if sched != NULL and sched.init_service != NULL:
                sched.init_service(s)
        else:
            for dslot in edited:
                if dslot not in added_set:
                    lvs_sched_hook(s, s.sched.upd_dest if s.sched != NULL else NULL, &self.c.dests[dslot])
            for dslot in added:
                lvs_sched_hook(s, s.sched.add_dest if s.sched != NULL else NULL, &self.c.dests[dslot])
            if reordered and s.sched != NULL and s.sched.update_service != NULL:
                s.sched.update_service(s)
        self.c.svc_py[slot] = 0
        self._svc_model[slot] = svc
        if sched == NULL:
            self._bind_plugin(slot, svc)
        else:
            self._py_scheds.pop(slot, None)
        return slot

    cdef _bind_plugin(self, uint32_t slot, svc):
        """A scheduler the C core lacks: a Python plugin (kept across edits, as update_service)."""
        entry = self._py_scheds.get(slot)
        plugin = None
        if entry is not None and entry[1].scheduler == svc.scheduler:
            plugin = entry[0]
        else:
            try:
                factory = self._scheduler_factory or _constants.default_scheduler_factory
                plugin = factory(svc.scheduler, svc)
            except Exception:
                plugin = None
            if plugin is not None:
                entry = None     # a fresh plugin needs no update()
        if plugin is not None:
            self._py_scheds[slot] = (plugin, svc, entry is not None)
            self.c.svc_py[slot] = 1
        else:
            self._py_scheds.pop(slot, None)

    cdef _update_plugin(self, uint32_t slot, svc):
        """A kept plugin follows its service's new model and hears of each change (its
        add_dest/del_dest/upd_dest, else update()), as pyfastpath tells its schedulers."""
        entry = self._py_scheds.get(slot)
        changes = self._pending.pop(slot, [])
        if entry is None or not entry[2]:
            return
        plugin = entry[0]
        try:
            plugin.service = svc     # keep its state, as update_service does
            for hook, dest in changes:
                method = getattr(plugin, hook, None) if dest is not None else None
                if method is not None:
                    method(dest)
                else:
                    plugin.update()
        except Exception:
            try:
                factory = self._scheduler_factory or _constants.default_scheduler_factory
                plugin = factory(svc.scheduler, svc)
            except Exception:
                plugin = None
        if plugin is None:
            self._py_scheds.pop(slot, None)
            self.c.svc_py[slot] = 0
        else:
            self._py_scheds[slot] = (plugin, svc, True)

    def running_generation(self):
        """The configuration generation the datapath runs (publish's return value once it has
        been adopted; batches hold the lock, so a change lands between two of them)."""
        return self.c.generation

    def _report_schedule_error(self, uint32_t svc_idx, exc):
        entry = self._py_scheds.get(svc_idx)
        if entry is not None:
            _report_schedule_error(entry[0], entry[1], exc)

    def _py_schedule(self, uint32_t svc_idx, int af, int proto, bytes saddr, int sport,
                     bytes daddr, int dport, double now):
        """Called from the C path with the GIL: a Python plugin picks a dest index or -1."""
        cdef lvs_service *s = &self.c.svcs[svc_idx]
        cdef uint32_t j
        entry = self._py_scheds.get(svc_idx)
        if entry is None:
            return -1
        plugin, svc = entry[0], entry[1]
        for j in range(s.num_dests):
            dest = svc.dests[j]
            dest.activeconns = s.dests[j].activeconns
            dest.inactconns = s.dests[j].inactconns
            dest.persistconns = s.dests[j].persistconns
            dest.flags = s.dests[j].flags
        info = _PacketInfo(af, proto, _constants.addr_from_bytes(af, saddr), sport,
                           _constants.addr_from_bytes(af, daddr), dport)
        chosen = plugin.schedule(info, now)
        if chosen is None:
            return -1
        for j, dest in enumerate(svc.dests):
            if dest is chosen:
                return j
        return -1

    # ---------------------------------------------------------------- the packet path
    def process(self, frame, int ifindex, double now, bint csum_partial=False):
        """One frame -> (verdict, out_frame or None, out_ifindex); see pyfastpath.Core.process."""
        cdef bytes data = bytes(frame)
        cdef uint32_t n = len(data)
        cdef uint32_t headroom = 128
        cdef uint32_t room = headroom + n + LVS_SCRATCH
        cdef uint8_t *buf = <uint8_t *>malloc(room)
        cdef lvs_frame f
        cdef int verdict
        if buf == NULL:
            raise MemoryError()
        try:
            memcpy(buf + headroom, <const char *>data, n)
            f.data = buf + headroom
            f.len = n
            f.headroom = headroom
            f.tailroom = LVS_SCRATCH
            f.ifindex = ifindex
            f.out_ifindex = 0
            f.verdict = LVS_DROP
            with nogil:
                pthread_mutex_lock(&self.c.lock)
                verdict = lvs_process_frame(self.c, &f, now, csum_partial)
                pthread_mutex_unlock(&self.c.lock)
            if verdict == LVS_TX or verdict == LVS_REPLY:
                return (verdict, (<char *>f.data)[:f.len], f.out_ifindex)
            return (verdict, None, 0)
        finally:
            free(buf)

    def expire(self, double now, budget=None):
        """Expire what is due and run the rate estimator; returns how many connections went.

        By default (budget=None) the sweep visits at most constants.EXPIRE_SLOTS table slots
        from where the last one stopped and frees at most constants.EXPIRE_MAX_FREED entries:
        well under a millisecond with the core lock held even when everything is due; the
        drivers call it every IO_EXPIRE_INTERVAL_MS (io.pxi).  budget=N
        visits N slots with no cap on frees; budget=0 visits every slot.  Lookups expire stale
        entries on their own, so a partial sweep never serves a dead connection."""
        cdef uint64_t before
        cdef uint32_t slots, max_freed = SWEEP_NO_LIMIT
        if budget is None:
            slots = _constants.EXPIRE_SLOTS
            max_freed = _constants.EXPIRE_MAX_FREED
        elif budget == 0:
            slots = self.c.conns.capacity
        else:
            slots = budget
        with nogil:
            pthread_mutex_lock(&self.c.lock)
            before = self.c.counters[C_CONN_EXPIRED]
            lvs_sweep(self.c, lvs_ms(self.c, now), slots, max_freed)
            before = self.c.counters[C_CONN_EXPIRED] - before
            pthread_mutex_unlock(&self.c.lock)
        self._estimate(now)
        return before

    def _estimate(self, double now):
        if self._next_est < 0:
            self._next_est = now + _constants.EST_INTERVAL
            return
        if now < self._next_est:
            return
        with nogil:   # a publish may be changing the dest lists
            pthread_mutex_lock(&self.c.lock)
        try:
            self._estimate_locked(now)
        finally:
            pthread_mutex_unlock(&self.c.lock)

    cdef _estimate_locked(self, double now):
        cdef uint32_t slot, j, ticks = 0
        cdef lvs_svc_rec *r
        cdef lvs_service *s
        cdef lvs_dest *d
        while now >= self._next_est and ticks < 32:
            self._next_est += _constants.EST_INTERVAL
            ticks += 1
            for slot in self._order:
                r = &self.c.svc_recs[slot]
                s = &self.c.svcs[slot]
                lvs_est_tick(&r.est, r.conns, r.inpkts, r.outpkts, r.inbytes, r.outbytes)
                for j in range(s.num_dests):
                    d = s.dests[j]
                    lvs_est_tick(&d.est, d.conns, d.inpkts, d.outpkts, d.inbytes, d.outbytes)
        if now >= self._next_est:
            self._next_est = now + _constants.EST_INTERVAL

    # ---------------------------------------------------------------- listings
    # Connections are listed in chunks (see lvs_copy_conns): the core lock is held only while
    # raw entries are copied into a C buffer, never while Python objects are built.
    def connections(self, now=None):
        """Rows as /proc/net/ip_vs_conn has them (Backend.get_connections): templates, then
        connections, each in table order."""
        out = []
        cursor = 0
        while True:
            rows, cursor = self.connections_chunk(cursor, LVS_LIST_CHUNK, now)
            out.extend(rows)
            if cursor == 0:
                return out

    def connections_chunk(self, cursor=0, limit=LVS_LIST_CHUNK, now=None):
        """At most ``limit`` rows of ``connections()`` from ``cursor`` on: (rows, next cursor).

        ``cursor`` is opaque: 0 starts a listing, a returned 0 ends it.  A chunk may hold fewer
        rows than ``limit`` (even none) before the end: each call also bounds how much of the
        table it walks under the lock.  Entries that come or go between chunks may be missed
        or listed once more, as with reading /proc/net/ip_vs_conn."""
        cdef uint64_t cur = cursor
        cdef uint32_t pass_ = <uint32_t>(cur >> 32)
        cdef uint32_t start = <uint32_t>(cur & 0xFFFFFFFF)
        cdef uint32_t count = 0, nxt = 0, cap
        cdef uint32_t now_ms = 0
        cdef bint have_now = now is not None
        cdef lvs_conn_row *buf
        if cursor < 0 or pass_ > 1:
            raise ValueError(f"bad connection cursor {cursor!r}")
        if limit <= 0:
            raise ValueError("limit must be positive")
        cap = <uint32_t>min(limit, LVS_LIST_CHUNK_MAX)
        if have_now:
            now_ms = lvs_ms(self.c, now)
        buf = <lvs_conn_row *>malloc(cap * sizeof(lvs_conn_row))
        if buf == NULL:
            raise MemoryError()
        try:
            with nogil:   # a publish must not re-map entries under our feet
                pthread_mutex_lock(&self.c.lock)
                nxt = lvs_copy_conns(self.c, pass_, start, cap, have_now, now_ms, buf, &count)
                pthread_mutex_unlock(&self.c.lock)
            rows = [_conn_row_dict(&buf[i]) for i in range(count)]
        finally:
            free(buf)
        if nxt:
            return rows, (<uint64_t>pass_ << 32) | nxt
        return rows, (0 if pass_ == 1 else (<uint64_t>1 << 32) | 1)

    def services(self):
        """Copies of the published services with live counts, counters and rates."""
        with nogil:
            pthread_mutex_lock(&self.c.lock)
        try:
            return self._collect_services()
        finally:
            pthread_mutex_unlock(&self.c.lock)

    cdef list _collect_services(self):
        cdef uint32_t j
        cdef lvs_service *s
        cdef lvs_svc_rec *r
        cdef lvs_dest *d
        out = []
        for slot in self._order:
            s = &self.c.svcs[<uint32_t>slot]
            r = &self.c.svc_recs[<uint32_t>slot]
            svc = _copy.deepcopy(self._svc_model[slot])
            _fill_stats(svc.stats, r.conns, r.inpkts, r.outpkts, r.inbytes, r.outbytes, &r.est)
            for j in range(s.num_dests):
                d = s.dests[j]
                dest = svc.dests[j]
                dest.activeconns = d.activeconns
                dest.inactconns = d.inactconns
                dest.persistconns = d.persistconns
                dest.flags = d.flags
                _fill_stats(dest.stats, d.conns, d.inpkts, d.outpkts, d.inbytes, d.outbytes, &d.est)
            out.append(svc)
        return out

    def zero(self, key=None):
        """ipvsadm -Z: counters and rate estimators back to zero."""
        cdef uint32_t j
        cdef lvs_service *s
        cdef lvs_svc_rec *r
        cdef lvs_dest *d
        with nogil:
            pthread_mutex_lock(&self.c.lock)
        try:
            for slot in self._order:
                if key is not None and self._svc_model[slot].key != key:
                    continue
                s = &self.c.svcs[<uint32_t>slot]
                r = &self.c.svc_recs[<uint32_t>slot]
                r.conns = r.inpkts = r.outpkts = r.inbytes = r.outbytes = 0
                memset(&r.est, 0, sizeof(lvs_est))
                for j in range(s.num_dests):
                    d = s.dests[j]
                    d.conns = d.inpkts = d.outpkts = d.inbytes = d.outbytes = 0
                    memset(&d.est, 0, sizeof(lvs_est))
        finally:
            pthread_mutex_unlock(&self.c.lock)

    def counters(self):
        return {name: self.c.counters[i] for i, name in enumerate(COUNTER_NAMES)}

    def process_batch(self, frames, double now):
        """[(frame, ifindex), ...] -> [(verdict, out_frame or None, out_ifindex), ...] through
        lvs_core_batch, the drivers' nogil entry (for tests and benchmarks)."""
        cdef int n = len(frames), i
        cdef uint32_t headroom = 128, slot = 0, size
        cdef lvs_frame *batch
        cdef uint8_t *arena
        cdef bytes data
        for frame, _ in frames:
            size = headroom + len(frame) + LVS_SCRATCH
            if size > slot:
                slot = size
        batch = <lvs_frame *>calloc(n + 1, sizeof(lvs_frame))
        arena = <uint8_t *>malloc(<size_t>slot * (n + 1))
        if batch == NULL or arena == NULL:
            free(batch)
            free(arena)
            raise MemoryError()
        try:
            for i in range(n):
                data = bytes(frames[i][0])
                memcpy(arena + <size_t>i * slot + headroom, <const char *>data, len(data))
                batch[i].data = arena + <size_t>i * slot + headroom
                batch[i].len = len(data)
                batch[i].headroom = headroom
                batch[i].tailroom = slot - headroom - len(data)
                batch[i].ifindex = frames[i][1]
            with nogil:
                lvs_core_batch(self.c, batch, n, now)
            out = []
            for i in range(n):
                if batch[i].verdict == LVS_TX or batch[i].verdict == LVS_REPLY:
                    out.append((batch[i].verdict, (<char *>batch[i].data)[:batch[i].len],
                                batch[i].out_ifindex))
                else:
                    out.append((batch[i].verdict, None, 0))
            return out
        finally:
            free(batch)
            free(arena)

    def _entries(self):
        """Raw table entries (index, flags, control, expires ms, state, cport, vport) for tests,
        including those a deleted real server left and no lookup or sweep has freed yet."""
        cdef lvs_conntab *ct = &self.c.conns
        cdef uint32_t i
        return [(i, ct.entries[i].flags, ct.entries[i].control, ct.entries[i].expires,
                 ct.entries[i].state, ct.entries[i].cport, ct.entries[i].vport)
                for i in range(1, ct.v.high_water + 1) if ct.entries[i].flags & LVS_CONN_USED]

    def _slots(self):
        """The slot pools for tests: {"dests": {slot: (state, refcnt, service slot)},
        "services": {slot: (state, refcnt)}} for every slot not free."""
        cdef uint32_t i
        dests = {i: (self.c.dests[i].state, self.c.dests[i].refcnt, self.c.dests[i].svc)
                 for i in range(1, self.c.st.dest_high + 1) if self.c.dests[i].state}
        svcs = {i: (self.c.svc_recs[i].state, self.c.svc_recs[i].refcnt)
                for i in range(1, self.c.st.svc_high + 1) if self.c.svc_recs[i].state}
        return {"dests": dests, "services": svcs}

    @staticmethod
    def conn_entry_size():
        """Bytes per connection-table entry (the layout is in conntab.pxi)."""
        return sizeof(lvs_conn)

    def conn_count(self):
        """Connections and templates in the table (not counting those a deleted real server
        left, which are no longer there even before a lookup or the sweep frees them)."""
        return self.c.conns.v.count - self.c.st.dead_conns

    @staticmethod
    def tcp_state_table():
        """The compiled TCP transition table (for the test comparing it with pyfastpath's)."""
        return tuple(tuple(lvs_tcp_states[r * 11 + s] for s in range(11)) for r in range(12))


cdef _fill_stats(stats, uint64_t conns, uint64_t inpkts, uint64_t outpkts, uint64_t inbytes,
                 uint64_t outbytes, const lvs_est *e):
    stats.conns, stats.inpkts, stats.outpkts = conns, inpkts, outpkts
    stats.inbytes, stats.outbytes = inbytes, outbytes
    stats.cps = (e.rate[0] + 0x1FF) >> 10
    stats.inpps = (e.rate[1] + 0x1FF) >> 10
    stats.outpps = (e.rate[2] + 0x1FF) >> 10
    stats.inbps = (e.rate[3] + 0xF) >> 5
    stats.outbps = (e.rate[4] + 0xF) >> 5


cdef void lvs_list_remove(lvs_service *s, lvs_dest *d) noexcept nogil:
    """Take d out of s's dest list in place, keeping the others' order and indices right."""
    cdef uint32_t j, k = 0
    for j in range(s.num_dests):
        if s.dests[j] != d:
            s.dests[k] = s.dests[j]
            s.dests[k].index = k
            k += 1
    s.num_dests = k


cdef int lvs_sched_hook(lvs_service *s, lvs_sched_dest_fn hook, lvs_dest *dest) noexcept nogil:
    """Tell the service's C scheduler of one dest change: its own hook, else update_service."""
    if s.sched == NULL:
        return 0
    if hook != NULL:
        return hook(s, dest)
    if s.sched.update_service != NULL:
        return s.sched.update_service(s)
    return 0


cdef bint _fill_dest(lvs_dest *d, dest, dict routes) except -1:
    """Bring slot d to `dest` and its route (ip_vs_edit_dest: counters and connections stay);
    true if anything changed.  Overload follows the thresholds as bind/unbind leave it."""
    cdef lvs_dest before = d[0]
    cdef uint32_t total
    d.fwd = int(dest.fwd)
    d.weight = dest.weight
    d.u_threshold = dest.u_threshold
    d.l_threshold = dest.l_threshold
    d.tun_type = int(dest.tun_type)
    d.tun_flags = dest.tun_flags
    d.tun_port = lvs_htons(dest.tun_port)
    route = routes.get(dest.addr.packed)
    d.has_route = 1 if int(dest.fwd) == LVS_FWD_LOCALNODE else 0   # local node: no route needed
    d.ifindex = 0
    memset(d.src_mac, 0, 6)
    memset(d.dst_mac, 0, 6)
    memset(d.src_addr, 0, 16)
    d.mtu = 0
    if route is not None:
        d.has_route = 1
        d.ifindex = route.ifindex
        lvs_put_mac(d.src_mac, bytes(route.src_mac))
        lvs_put_mac(d.dst_mac, bytes(route.dst_mac))
        d.mtu = route.mtu
        if route.src_addr is not None:
            lvs_put_addr(d.src_addr, route.src_addr)
    total = d.activeconns + d.inactconns
    if d.u_threshold and total >= d.u_threshold:
        d.flags |= LVS_DEST_F_OVERLOAD
    elif d.l_threshold:
        if total < d.l_threshold:
            d.flags &= ~LVS_DEST_F_OVERLOAD
    elif d.u_threshold:
        if <uint64_t>total * 4 < <uint64_t>d.u_threshold * 3:
            d.flags &= ~LVS_DEST_F_OVERLOAD
    else:
        d.flags &= ~LVS_DEST_F_OVERLOAD
    return memcmp(&before, d, sizeof(lvs_dest)) != 0


def _small_signature(config):
    return (tuple((k, tuple(v)) for k, v in config.proxy_vips.items()),
            tuple(config.local_macs.items()), tuple(config.mark_rules),
            (config.timeouts.tcp, config.timeouts.tcp_fin, config.timeouts.udp), config.mode)


# ------------------------------------------------------------- connection listings (control)
# A listing of millions of connections must neither hold the datapath's lock while Python
# objects are built nor be built whole.  Core.connections_chunk copies fixed-size rows under
# the lock (lvs_copy_conns, no GIL) and converts them after releasing it.  The cursor walks
# the table twice, templates first and then connections -- the order connections() has always
# had, which is the order `ipvsadm -Lnc` prints: cursor = pass << 32 | next index.
cdef enum:
    LVS_LIST_CHUNK = 4096       # rows a chunk holds by default
    LVS_LIST_CHUNK_MAX = 65536  # and at most
    LVS_LIST_SCAN_MAX = 262144  # table slots one chunk looks at under the lock, at most

ctypedef struct lvs_conn_row:
    uint8_t caddr[16]
    uint8_t vaddr[16]
    uint8_t daddr[16]
    uint16_t cport
    uint16_t vport
    uint16_t dport
    uint16_t flags
    uint8_t protocol
    uint8_t state
    int64_t left_ms             # ms before it expires (a time given), else its timeout


cdef uint32_t lvs_copy_conns(lvs_core *core, uint32_t pass_, uint32_t start, uint32_t cap,
                             bint have_now, uint32_t now_ms, lvs_conn_row *out,
                             uint32_t *count) noexcept nogil:
    """Copy the used entries of this pass (0: templates, 1: connections) from index ``start``
    on into ``out``; returns the index to go on from, or 0 when the pass is done."""
    cdef lvs_conntab *ct = &core.conns
    cdef lvs_conn *c
    cdef lvs_conn_row *row
    cdef uint32_t i = start if start else 1
    cdef uint32_t scanned = 0
    cdef uint16_t want = LVS_CONN_TEMPLATE if pass_ == 0 else 0
    cdef uint8_t alen
    cdef int64_t left_ms, step_ms
    count[0] = 0
    while i <= ct.v.high_water:
        if count[0] == cap or scanned == LVS_LIST_SCAN_MAX:
            return i
        c = &ct.entries[i]
        scanned += 1
        if (c.flags & LVS_CONN_USED and (c.flags & LVS_CONN_TEMPLATE) == want
                and not lvs_conn_gone(core, c)):   # a deleted real server's: not listed
            row = &out[count[0]]
            count[0] += 1
            alen = 16 if c.flags & LVS_CONN_V6 else 4
            memcpy(row.caddr, lvs_caddr(ct, i), alen)
            memcpy(row.vaddr, lvs_vaddr(ct, i), alen)
            memcpy(row.daddr, lvs_conn_dest(core, c).addr, alen)
            row.cport = c.cport
            row.vport = c.vport
            row.dport = c.dport
            row.flags = c.flags
            row.protocol = c.protocol
            row.state = c.state
            if have_now:
                left_ms = <int32_t>(c.expires - now_ms)
                if left_ms <= 0 and c.flags & LVS_CONN_TEMPLATE and c.control:
                    # its timer would have re-armed it every timeout while it controlled conns
                    step_ms = lvs_conn_timeout_ms(core, c)
                    if step_ms:
                        left_ms = step_ms - (-left_ms) % step_ms
                row.left_ms = left_ms
            else:
                row.left_ms = lvs_conn_timeout_ms(core, c)
        i += 1
    return 0


cdef dict _conn_row_dict(const lvs_conn_row *row):
    """One copied entry as the row dict of Core.connections()."""
    cdef int alen = 16 if row.flags & LVS_CONN_V6 else 4
    af = _model.AF_INET6 if alen == 16 else _model.AF_INET
    if row.flags & LVS_CONN_TEMPLATE:
        protocol = _model.PROTOCOL_NAMES.get(row.protocol, "IP")
        state = "NONE"
    else:
        protocol = _model.PROTOCOL_NAMES[row.protocol]
        state = "UDP" if row.protocol == PROTO_UDP_ else _constants.TCP_STATE_NAMES[row.state]
    return dict(protocol=protocol,
                caddr=_constants.addr_from_bytes(af, (<char *>row.caddr)[:alen]), cport=row.cport,
                vaddr=_constants.addr_from_bytes(af, (<char *>row.vaddr)[:alen]), vport=row.vport,
                daddr=_constants.addr_from_bytes(af, (<char *>row.daddr)[:alen]), dport=row.dport,
                state=state, expires=max(0, row.left_ms) // 1000, pe_name="", pe_data="")
