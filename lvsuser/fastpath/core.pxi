# The datapath core in C: tables, the per-frame path and the batch entry for the drivers.
#
# Theory of operation
# -------------------
# This is pyfastpath.py (the readable reference; read its docstring first) in C, same decisions
# in the same order, so both cores pass the same golden tables.  What differs is memory:
#
#   lvs_tables   one published configuration: services (types.pxd lvs_service, with dests in
#                kernel order and the forwarding facts control resolved), a small open-addressing
#                service index, proxied VIPs, interface MACs, mark rules, timeouts.  Built by
#                Core.publish() with the GIL, swapped in under `lock`, the old one freed after.
#   lvs_conntab  the connection table (conntab.pxi), which outlives publishes.
#   peers        reverse L2 paths (arrival ifindex, client-side MAC, our MAC): NAT replies go
#                back the way the connection came in.  Deduplicated, so one router's MAC is one
#                entry however many clients sit behind it; a connection keeps a 16-bit index.
#
# `lock` (a pthread mutex) is held for a whole batch and for the swap in publish, so a
# configuration is adopted between batches.  Below `lvs_core_batch` everything is noexcept
# nogil and reports through counters; only a Python scheduler plugin takes the GIL, for new
# connections only.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t, int64_t
from libc.string cimport memcmp, memcpy, memmove, memset
from libc.stdlib cimport calloc, malloc, free
from cpython.ref cimport PyObject
from lvsuser.fastpath.includes.libc_extra cimport (pthread_mutex_t, pthread_mutex_init,
    pthread_mutex_destroy, pthread_mutex_lock, pthread_mutex_unlock)

cdef enum:
    LVS_MAX_PEERS = 65535
    LVS_PEER_SLOTS = 131072
    LVS_SCRATCH = 1600              # room for any reply the core builds itself
    ICMP4_QUOTE_MAX = 548           # icmp_send: 576 - IP header - ICMP header
    ICMP6_QUOTE_MAX = 1232          # icmp6_send: 1280 - IPv6 header - ICMPv6 header
    ICMP_TTL = 64
    SWEEP_PER_FRAME = 4             # table slots the sweeper visits per frame
    SWEEP_WHEN_FULL = 4096          # ... and once more when the table is full
    SWEEP_NO_LIMIT = 0xffffffff     # free whatever the visited slots hold that is due
    ICMP_PER_SEC = 1000             # net.ipv4.icmp_msgs_per_sec
    ICMP_BURST = 50                 # net.ipv4.icmp_msgs_burst
    ICMP_REFILL_MS = 20             # the kernel refills at most every HZ/50


# One frame between a driver and the core; the I/O drivers (io.pxi) use this very struct for
# the slots of their batches.  The core may move `data` back into the headroom
# (encapsulation, replies) and change `len`; it sets `verdict` (LVS_PASS/DROP/TX/REPLY) and
# `out_ifindex` (0: nothing to send).
cdef struct lvs_frame:
    uint8_t *data
    uint32_t len
    uint32_t headroom
    uint32_t tailroom
    int32_t ifindex
    int32_t out_ifindex
    int32_t verdict


# ip_vs_est: scaled EWMA state (kernel units: rates << 10 for conns/packets, << 5 for bytes).
cdef struct lvs_est:
    uint64_t last[5]
    int64_t rate[5]


cdef struct lvs_dest_ext:
    uint8_t has_route
    uint8_t src_addr[16]        # tunnel outer source (the kernel's route source)
    lvs_est est


cdef struct lvs_svc_ext:
    lvs_dest_ext *dests
    int32_t py_sched            # index into Core._py_scheds, -1 = no scheduler at all
    lvs_est est


cdef struct lvs_proxy_vip:
    int32_t ifindex
    uint8_t af
    uint8_t addr[16]


cdef struct lvs_ifmac:
    int32_t ifindex
    uint8_t mac[6]


cdef struct lvs_mark_rule:
    uint32_t mark
    uint8_t af
    uint8_t protocol
    uint16_t dport_lo
    uint16_t dport_hi
    uint8_t dst[16]
    uint8_t dst_mask[16]
    uint8_t has_src
    uint8_t src[16]
    uint8_t src_mask[16]


cdef struct lvs_tables:
    uint32_t num_services
    lvs_service *services
    lvs_svc_ext *ext
    uint32_t *svc_index         # open addressing, service index + 1
    uint32_t svc_index_mask
    uint32_t num_proxy
    lvs_proxy_vip *proxy
    uint32_t num_macs
    lvs_ifmac *macs
    uint32_t num_marks
    lvs_mark_rule *marks
    uint32_t tcp_timeout_ms[11]
    uint32_t udp_timeout_ms
    uint8_t l2


cdef struct lvs_peer:
    int32_t ifindex
    uint8_t client_mac[6]
    uint8_t local_mac[6]


cdef struct lvs_core:
    pthread_mutex_t lock
    lvs_tables *tables
    lvs_conntab conns
    lvs_peer *peers
    uint16_t *peer_slots
    uint32_t num_peers
    double epoch
    int32_t icmp_credit         # icmp_global_allow's token bucket
    uint32_t icmp_stamp
    uint64_t counters[C_NUM_COUNTERS]
    PyObject *owner             # the Core object (borrowed), for Python scheduler plugins


cdef inline uint32_t lvs_ms(const lvs_core *core, double now) noexcept nogil:
    return <uint32_t>(<int64_t>((now - core.epoch) * 1000.0))


# ------------------------------------------------------------------------ lookups in the tables
cdef inline uint32_t lvs_svc_hash(uint8_t af, uint8_t proto, const uint8_t *addr, uint16_t port,
                                  uint32_t fwmark) noexcept nogil:
    cdef uint32_t h = lvs_mix(<uint32_t>af << 8 | proto, (<uint32_t>port << 16) ^ fwmark)
    cdef int i
    for i in range(0, 16, 4):
        h = lvs_mix(h, lvs_get32(addr + i))
    return h


cdef int32_t lvs_find_service_key(const lvs_tables *t, uint8_t af, uint8_t proto,
                                  const uint8_t *addr16, uint16_t port_host,
                                  uint32_t fwmark) noexcept nogil:
    """Service index for (af, proto, addr, port) or (af, fwmark), or -1."""
    cdef uint32_t slot, idx
    cdef const lvs_service *s
    cdef uint16_t port_net = lvs_htons(port_host)
    if t.svc_index == NULL:
        return -1
    slot = lvs_svc_hash(af, proto, addr16, port_host, fwmark) & t.svc_index_mask
    while True:
        idx = t.svc_index[slot]
        if idx == 0:
            return -1
        s = &t.services[idx - 1]
        if fwmark:
            if s.fwmark == fwmark and s.af == af:
                return <int32_t>(idx - 1)
        elif (s.fwmark == 0 and s.af == af and s.protocol == proto and s.port == port_net
              and memcmp(s.addr, addr16, 16) == 0):
            return <int32_t>(idx - 1)
        slot = (slot + 1) & t.svc_index_mask


cdef inline bint lvs_masked_eq(const uint8_t *a, const uint8_t *net, const uint8_t *mask,
                               uint8_t alen) noexcept nogil:
    cdef uint8_t i
    for i in range(alen):
        if (a[i] & mask[i]) != net[i]:
            return False
    return True


cdef uint32_t lvs_mark_of(const lvs_tables *t, const lvs_pkt *p) noexcept nogil:
    cdef uint32_t i
    cdef const lvs_mark_rule *r
    for i in range(t.num_marks):
        r = &t.marks[i]
        if r.af != p.af or not lvs_masked_eq(p.d + p.daddr_off, r.dst, r.dst_mask, p.alen):
            continue
        if r.protocol and r.protocol != p.proto:
            continue
        if r.dport_lo != 0 or r.dport_hi != 65535:
            if not p.has_ports or p.dport < r.dport_lo or p.dport > r.dport_hi:
                continue
        if r.has_src and not lvs_masked_eq(p.d + p.saddr_off, r.src, r.src_mask, p.alen):
            continue
        return r.mark
    return 0


cdef int32_t lvs_find_service(const lvs_tables *t, const lvs_pkt *p, uint32_t mark) noexcept nogil:
    """ip_vs_service_find: fwmark first, then (proto, addr, port), then the port-zero service."""
    cdef uint8_t addr[16]
    cdef int32_t s
    memset(addr, 0, 16)
    if mark:
        s = lvs_find_service_key(t, p.af, 0, addr, 0, mark)    # fwmark services have no address
        if s >= 0:
            return s
    memcpy(addr, p.d + p.daddr_off, p.alen)
    s = lvs_find_service_key(t, p.af, p.proto, addr, p.dport if p.has_ports else 0, 0)
    if s < 0:
        s = lvs_find_service_key(t, p.af, p.proto, addr, 0, 0)
    return s


cdef bint lvs_is_vip(const lvs_tables *t, const lvs_pkt *p) noexcept nogil:
    """Is the destination the address of some (af, proto) service, whatever its port?  (Only
    asked for fragments, which are rare: a linear scan.)"""
    cdef uint32_t i
    for i in range(t.num_services):
        if (t.services[i].fwmark == 0 and t.services[i].af == p.af
                and t.services[i].protocol == p.proto
                and memcmp(t.services[i].addr, p.d + p.daddr_off, p.alen) == 0):
            return True
    return False


cdef const uint8_t *lvs_local_mac(const lvs_tables *t, int32_t ifindex) noexcept nogil:
    cdef uint32_t i
    for i in range(t.num_macs):
        if t.macs[i].ifindex == ifindex:
            return t.macs[i].mac
    return NULL


cdef bint lvs_is_proxy_vip(const lvs_tables *t, int32_t ifindex, uint8_t af,
                           const uint8_t *addr, uint8_t alen) noexcept nogil:
    cdef uint32_t i
    for i in range(t.num_proxy):
        if (t.proxy[i].ifindex == ifindex and t.proxy[i].af == af
                and memcmp(t.proxy[i].addr, addr, alen) == 0):
            return True
    return False


cdef uint16_t lvs_peer_get(lvs_core *core, int32_t ifindex, const uint8_t *client_mac,
                           const uint8_t *local_mac) noexcept nogil:
    """Index (1..) of the reverse path (ifindex, client MAC, our MAC), added if new; 0 if full."""
    cdef uint32_t h = lvs_mix(lvs_mix(<uint32_t>ifindex, lvs_get32(client_mac)),
                              (<uint32_t>lvs_get16(client_mac + 4) << 16) ^ lvs_get32(local_mac))
    cdef uint32_t slot = h & (LVS_PEER_SLOTS - 1)
    cdef uint16_t idx
    cdef lvs_peer *peer
    while True:
        idx = core.peer_slots[slot]
        if idx == 0:
            break
        peer = &core.peers[idx]
        if (peer.ifindex == ifindex and memcmp(peer.client_mac, client_mac, 6) == 0
                and memcmp(peer.local_mac, local_mac, 6) == 0):
            return idx
        slot = (slot + 1) & (LVS_PEER_SLOTS - 1)
    if core.num_peers >= LVS_MAX_PEERS:
        return 0
    core.num_peers += 1
    idx = <uint16_t>core.num_peers
    peer = &core.peers[idx]
    peer.ifindex = ifindex
    memcpy(peer.client_mac, client_mac, 6)
    memcpy(peer.local_mac, local_mac, 6)
    core.peer_slots[slot] = idx
    return idx


# ------------------------------------------------------------------------ connection life
cdef inline lvs_dest *lvs_conn_dest(lvs_core *core, const lvs_conn *c) noexcept nogil:
    return &core.tables.services[c.svc].dests[c.dest]


cdef inline uint32_t lvs_conn_timeout_ms(const lvs_core *core, const lvs_conn *c) noexcept nogil:
    if c.flags & LVS_CONN_TEMPLATE:
        return core.tables.services[c.svc].timeout * 1000
    if c.protocol == PROTO_UDP_:
        return core.tables.udp_timeout_ms
    return core.tables.tcp_timeout_ms[c.state]


cdef void lvs_dest_uncount(lvs_dest *dest, uint16_t flags) noexcept nogil:
    """ip_vs_unbind_dest: uncount, then clear overload by the thresholds' rule."""
    cdef uint32_t total
    if flags & LVS_CONN_TEMPLATE:
        dest.persistconns -= 1
    elif flags & LVS_CONN_INACTIVE:
        dest.inactconns -= 1
    else:
        dest.activeconns -= 1
    total = dest.activeconns + dest.inactconns
    if dest.l_threshold:
        if total < dest.l_threshold:
            dest.flags &= ~LVS_DEST_F_OVERLOAD
    elif dest.u_threshold:
        if <uint64_t>total * 4 < <uint64_t>dest.u_threshold * 3:
            dest.flags &= ~LVS_DEST_F_OVERLOAD
    else:
        dest.flags &= ~LVS_DEST_F_OVERLOAD


cdef void lvs_conn_expire(lvs_core *core, uint32_t idx, uint32_t now_ms) noexcept nogil:
    """ip_vs_conn_expire: unhash, uncount, release the template, free the entry.  A template
    whose last connection goes and whose own time is already up goes too (its timer would
    have fired and found no connection left)."""
    cdef lvs_conntab *t = &core.conns
    cdef lvs_conn *c = &t.entries[idx]
    cdef lvs_dest *dest = lvs_conn_dest(core, c)
    cdef uint32_t template = 0, step
    cdef uint32_t conn_end = c.expires
    cdef lvs_conn *tc
    lvs_conn_unlink_in(t, idx)
    if not (c.flags & LVS_CONN_TEMPLATE):
        if ((c.flags >> LVS_CONN_FWD_SHIFT) & 7) == LVS_FWD_MASQ:
            lvs_conn_unlink_out(t, idx, dest.addr)
        if c.control and t.entries[c.control].control > 0:
            template = c.control
            tc = &t.entries[template]
            tc.control -= 1
            # a template is never in the out-hash: its next_out keeps the latest end of the
            # connections it controlled
            if tc.next_out == 0 or lvs_time_after_eq(conn_end, tc.next_out):
                tc.next_out = conn_end
    lvs_dest_uncount(dest, c.flags)
    lvs_conn_release(t, idx)
    if template and t.entries[template].control == 0:
        # While any of its connections lived, every firing of the template's timer re-armed it:
        # it goes at the first firing after the last of them ended.
        tc = &t.entries[template]
        step = lvs_conn_timeout_ms(core, tc)
        while step and not lvs_time_after_eq(tc.expires, tc.next_out):
            tc.expires += step
        if lvs_time_after_eq(now_ms, tc.expires):
            lvs_conn_expire(core, template, now_ms)
            core.counters[C_CONN_EXPIRED] += 1


cdef void lvs_sweep(lvs_core *core, uint32_t now_ms, uint32_t budget,
                    uint32_t max_freed) noexcept nogil:
    """Visit `budget` slots from the cursor on; expire what is due (templates only when free).
    Stops early once `max_freed` entries went (freeing is the costly part: unhashing touches
    cold memory), so one call's work is bounded even when everything is due; the cursor stays
    where it stopped and the next call carries on."""
    cdef lvs_conntab *t = &core.conns
    cdef lvs_conn *c
    cdef uint32_t i, step
    cdef uint64_t stop_at = core.counters[C_CONN_EXPIRED] + max_freed
    if t.high_water == 0:
        return
    if budget > t.high_water:
        budget = t.high_water
    for i in range(budget):
        c = &t.entries[t.sweep_cursor]
        if c.flags & LVS_CONN_USED and lvs_time_after_eq(now_ms, c.expires):
            if c.flags & LVS_CONN_TEMPLATE and c.control:
                # expire_later: while it controls connections the kernel's timer keeps re-arming
                # it; the last connection to go settles its real expiry (lvs_conn_expire), which
                # keeps the result independent of the order the sweep visits entries in.
                pass
            else:
                lvs_conn_expire(core, t.sweep_cursor, now_ms)
                core.counters[C_CONN_EXPIRED] += 1
        t.sweep_cursor += 1
        if t.sweep_cursor > t.high_water:
            t.sweep_cursor = 1
        if core.counters[C_CONN_EXPIRED] >= stop_at:
            return


cdef void lvs_set_state(lvs_core *core, lvs_conn *c, uint8_t tcp_flags, int direction) noexcept nogil:
    """set_tcp_state (UDP: only the timeout), then re-arm is done by the caller."""
    cdef int off = direction
    cdef int event
    cdef uint8_t new_state
    cdef lvs_dest *dest
    if c.protocol != PROTO_TCP_:
        return
    if c.flags & LVS_CONN_NOOUTPUT:
        if off == 4:
            c.flags &= ~LVS_CONN_NOOUTPUT
        else:
            off = 8
    if tcp_flags & 0x04:
        event = 3
    elif tcp_flags & 0x02:
        event = 0
    elif tcp_flags & 0x01:
        event = 1
    elif tcp_flags & 0x10:
        event = 2
    else:
        event = -1
    new_state = TS_CLOSE if event < 0 else lvs_tcp_states[(off + event) * 11 + c.state]
    if new_state != c.state:
        dest = lvs_conn_dest(core, c)
        if not (c.flags & LVS_CONN_INACTIVE) and new_state != TS_ESTABLISHED:
            dest.activeconns -= 1
            dest.inactconns += 1
            c.flags |= LVS_CONN_INACTIVE
        elif c.flags & LVS_CONN_INACTIVE and new_state == TS_ESTABLISHED:
            dest.activeconns += 1
            dest.inactconns -= 1
            c.flags &= ~LVS_CONN_INACTIVE
    c.state = new_state


cdef uint32_t lvs_conn_new(lvs_core *core, uint32_t svc_idx, uint32_t dest_idx, uint8_t protocol,
                           uint8_t alen, const uint8_t *caddr, uint16_t cport,
                           const uint8_t *vaddr, uint16_t vport, uint16_t dport, uint16_t flags,
                           uint16_t peer, uint32_t now_ms) noexcept nogil:
    """ip_vs_conn_new + ip_vs_bind_dest; 0 when the table is full."""
    cdef lvs_conntab *t = &core.conns
    cdef uint32_t idx = lvs_conn_alloc(t)
    cdef lvs_conn *c
    cdef lvs_dest *dest = &core.tables.services[svc_idx].dests[dest_idx]
    if idx == 0:
        lvs_sweep(core, now_ms, SWEEP_WHEN_FULL, SWEEP_NO_LIMIT)
        idx = lvs_conn_alloc(t)
        if idx == 0:
            return 0
    c = &t.entries[idx]
    c.flags = LVS_CONN_V6 if alen == 16 else 0   # says where lvs_caddr/lvs_vaddr write
    memcpy(lvs_caddr(t, idx), caddr, alen)
    memcpy(lvs_vaddr(t, idx), vaddr, alen)
    c.cport = cport
    c.vport = vport
    c.dport = dport
    c.protocol = protocol
    c.state = TS_NONE
    c.flags = LVS_CONN_USED | flags | LVS_CONN_INACTIVE | (<uint16_t>dest.fwd << LVS_CONN_FWD_SHIFT)
    if alen == 16:
        c.flags |= LVS_CONN_V6
    if dest.fwd != LVS_FWD_MASQ:
        c.flags |= LVS_CONN_NOOUTPUT
    c.peer = peer
    c.svc = <uint16_t>svc_idx
    c.dest = <uint16_t>dest_idx
    c.expires = now_ms + 3000
    lvs_conn_link_in(t, idx)
    if flags & LVS_CONN_TEMPLATE:
        dest.persistconns += 1
    else:
        dest.inactconns += 1
        if dest.fwd == LVS_FWD_MASQ:
            lvs_conn_link_out(t, idx, dest.addr)
    if dest.u_threshold and dest.activeconns + dest.inactconns >= dest.u_threshold:
        dest.flags |= LVS_DEST_F_OVERLOAD
    return idx
