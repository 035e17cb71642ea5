# The datapath core in C: tables, the per-frame path and the batch entry for the drivers.
#
# Theory of operation
# -------------------
# This is pyfastpath.py (the readable reference; read its docstring first) in C, same decisions
# in the same order, so both cores pass the same golden tables.  What differs is memory:
#
#   slots        real servers live in a pool of lvs_dest slots, services in a pool of service
#                slots (lvs_svc_rec: identity and counters; lvs_service: the schedulers' view,
#                with the ordered list of dest slot pointers they iterate).  A slot never moves:
#                connections hold a dest's 32-bit slot number.  Each slot counts what is bound
#                to it (refcnt: connections and templates for a dest, dest slots for a service).
#                Deleting a real server marks its slot GONE and takes it out of the service's
#                list; the slot is freed when its refcnt drops to 0, as the kernel's dest trash.
#                So a rule change touches the changed service and its dests only, never the
#                connection table: an entry whose dest is GONE counts as not there -- a lookup
#                or the sweep that meets it frees it, listings skip it.  (`dead_conns` counts
#                such entries, so conn_count() stays exact without a walk.)
#   lvs_tables   the small whole-config facts (proxied VIPs, interface MACs, mark rules,
#                timeouts, L2/L3): rebuilt per publish, swapped under `lock`, old one freed.
#   lvs_conntab  the connection table (conntab.pxi), which outlives publishes.
#   peers        reverse L2 paths (arrival ifindex, client-side MAC, our MAC): NAT replies go
#                back the way the connection came in.  Deduplicated, so one router's MAC is one
#                entry however many clients sit behind it; a connection keeps a 16-bit index.
#
# state        the connection table, its hash heads, the IPv6 side array, the peers, the dest
#              slots, the service records and the counters all live in one region that starts
#              with lvs_state_hdr and holds only indices and offsets.  It is anonymous memory, or
#              a MAP_SHARED file (Core(state_path=...)) that a new process adopts after the old
#              one died: connections, counters and slots are back, and the first publish
#              matches the slots by identity.  The region is sparse: pages are touched as the
#              table fills.
#
# `lock` (a pthread mutex) is held for a whole batch and while publish applies a change, so a
# change is adopted between batches (core.generation says which one runs).  Below
# `lvs_core_batch` everything is noexcept nogil and reports through counters; only a Python
# scheduler plugin takes the GIL, for new connections only.

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
    # the small, whole-config facts: rebuilt by each publish and swapped under the lock
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


cdef enum:
    LVS_STATE_VERSION = 1           # bump on any change of the layout below or of a slot struct
    LVS_STATE_MAX_COUNTERS = 64
    LVS_REGION_ALIGN = 64


# The header of the core's memory region (anonymous, or the state file; core_api.pxi).  The
# struct sizes and capacities say how to read the rest; the rest is found by offsets, and every
# link inside is an index: nothing here is a pointer, so another process can adopt it.
cdef struct lvs_state_hdr:
    uint8_t magic[8]                # b"LVSUSTAT"
    uint32_t version                # LVS_STATE_VERSION
    uint32_t hdr_size
    uint32_t conn_size
    uint32_t dest_size
    uint32_t svc_size
    uint32_t peer_size
    uint32_t capacity               # connection entries
    uint32_t max_dests
    uint32_t max_services
    uint32_t num_counters
    uint64_t total_size
    double epoch                    # time.monotonic() origin of every entry's `expires`
    lvs_conntab_vars tab
    uint32_t num_peers
    uint32_t dest_free              # free stacks (through next_free) and high-water marks
    uint32_t dest_high
    uint32_t dest_in_use
    uint32_t svc_free
    uint32_t svc_high
    uint32_t svc_in_use
    uint32_t dead_conns             # entries whose dest is gone, not yet freed
    uint64_t off_entries
    uint64_t off_in_heads
    uint64_t off_out_heads
    uint64_t off_v6
    uint64_t off_peers
    uint64_t off_peer_slots
    uint64_t off_dests
    uint64_t off_svcs
    uint64_t counters[LVS_STATE_MAX_COUNTERS]


cdef struct lvs_core:
    pthread_mutex_t lock
    lvs_tables *tables
    lvs_conntab conns
    lvs_state_hdr *st               # the region's header: scalars and counters that outlive us
    uint64_t *counters              # st.counters
    lvs_peer *peers
    uint16_t *peer_slots
    lvs_dest *dests                 # dest pool, slot 0 unused (region)
    lvs_svc_rec *svc_recs           # service records, slot 0 unused (region)
    lvs_service *svcs               # the schedulers' view of each service slot (process memory)
    uint8_t *svc_py                 # per service slot: a Python scheduler plugin decides
    uint32_t *svc_heads             # service lookup: chains through lvs_service.hnext
    uint32_t svc_mask
    uint32_t *svc_list              # slots of the running services, in config order
    uint32_t num_svc_list
    double epoch
    int32_t icmp_credit         # icmp_global_allow's token bucket
    uint32_t icmp_stamp
    uint64_t generation         # the configuration generation the datapath runs
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


cdef int32_t lvs_find_service_key(const lvs_core *core, uint8_t af, uint8_t proto,
                                  const uint8_t *addr16, uint16_t port_host,
                                  uint32_t fwmark) noexcept nogil:
    """Service slot for (af, proto, addr, port) or (af, fwmark), or -1."""
    cdef uint32_t slot
    cdef const lvs_service *s
    cdef uint16_t port_net = lvs_htons(port_host)
    slot = core.svc_heads[lvs_svc_hash(af, proto, addr16, port_host, fwmark) & core.svc_mask]
    while slot:
        s = &core.svcs[slot]
        if fwmark:
            if s.fwmark == fwmark and s.af == af:
                return <int32_t>slot
        elif (s.fwmark == 0 and s.af == af and s.protocol == proto and s.port == port_net
              and memcmp(s.addr, addr16, 16) == 0):
            return <int32_t>slot
        slot = s.hnext
    return -1


cdef void lvs_svc_hash_link(lvs_core *core, uint32_t slot) noexcept nogil:
    cdef lvs_service *s = &core.svcs[slot]
    cdef uint32_t h = lvs_svc_hash(s.af, s.protocol, s.addr, lvs_ntohs(s.port), s.fwmark) & core.svc_mask
    s.hnext = core.svc_heads[h]
    core.svc_heads[h] = slot


cdef void lvs_svc_hash_unlink(lvs_core *core, uint32_t slot) noexcept nogil:
    cdef lvs_service *s = &core.svcs[slot]
    cdef uint32_t *link = &core.svc_heads[
        lvs_svc_hash(s.af, s.protocol, s.addr, lvs_ntohs(s.port), s.fwmark) & core.svc_mask]
    while link[0] and link[0] != slot:
        link = &core.svcs[link[0]].hnext
    if link[0] == slot:
        link[0] = s.hnext
    s.hnext = 0


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


cdef int32_t lvs_find_service(const lvs_core *core, const lvs_pkt *p, uint32_t mark) noexcept nogil:
    """ip_vs_service_find: fwmark first, then (proto, addr, port), then the port-zero service."""
    cdef uint8_t addr[16]
    cdef int32_t s
    memset(addr, 0, 16)
    if mark:
        s = lvs_find_service_key(core, p.af, 0, addr, 0, mark)    # fwmark services have no address
        if s >= 0:
            return s
    memcpy(addr, p.d + p.daddr_off, p.alen)
    s = lvs_find_service_key(core, p.af, p.proto, addr, p.dport if p.has_ports else 0, 0)
    if s < 0:
        s = lvs_find_service_key(core, p.af, p.proto, addr, 0, 0)
    return s


cdef bint lvs_is_vip(const lvs_core *core, const lvs_pkt *p) noexcept nogil:
    """Is the destination the address of some (af, proto) service, whatever its port?  (Only
    asked for fragments, which are rare: a linear scan.)"""
    cdef uint32_t i
    cdef const lvs_service *s
    for i in range(core.num_svc_list):
        s = &core.svcs[core.svc_list[i]]
        if (s.fwmark == 0 and s.af == p.af and s.protocol == p.proto
                and memcmp(s.addr, p.d + p.daddr_off, p.alen) == 0):
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
    if core.st.num_peers >= LVS_MAX_PEERS:
        return 0
    core.st.num_peers += 1
    idx = <uint16_t>core.st.num_peers
    peer = &core.peers[idx]
    peer.ifindex = ifindex
    memcpy(peer.client_mac, client_mac, 6)
    memcpy(peer.local_mac, local_mac, 6)
    core.peer_slots[slot] = idx
    return idx


# ------------------------------------------------------------------------ connection life
cdef inline lvs_dest *lvs_conn_dest(lvs_core *core, const lvs_conn *c) noexcept nogil:
    return &core.dests[c.dest]


cdef inline bint lvs_conn_gone(const lvs_core *core, const lvs_conn *c) noexcept nogil:
    """Its real server was deleted: the entry is not there any more, only not yet freed."""
    return core.dests[c.dest].state != LVS_SLOT_USED


cdef inline uint32_t lvs_conn_timeout_ms(const lvs_core *core, const lvs_conn *c) noexcept nogil:
    if c.flags & LVS_CONN_TEMPLATE:
        return core.svcs[core.dests[c.dest].svc].timeout * 1000
    if c.protocol == PROTO_UDP_:
        return core.tables.udp_timeout_ms
    return core.tables.tcp_timeout_ms[c.state]


# ------------------------------------------------------------------------ slots
cdef void lvs_svc_slot_put(lvs_core *core, uint32_t slot) noexcept nogil:
    """One dest slot less belongs to this service; a gone service's slot is freed at zero."""
    cdef lvs_svc_rec *rec = &core.svc_recs[slot]
    rec.refcnt -= 1
    if rec.refcnt == 0 and rec.state == LVS_SLOT_GONE:
        rec.state = LVS_SLOT_FREE
        rec.next_free = core.st.svc_free
        core.st.svc_free = slot
        core.st.svc_in_use -= 1


cdef void lvs_dest_slot_put(lvs_core *core, uint32_t slot) noexcept nogil:
    """One reference less; a gone dest's slot is freed at zero (ip_vs_dest_put_and_free)."""
    cdef lvs_dest *d = &core.dests[slot]
    d.refcnt -= 1
    if d.refcnt == 0 and d.state == LVS_SLOT_GONE:
        lvs_dest_slot_free(core, slot)


cdef void lvs_dest_slot_free(lvs_core *core, uint32_t slot) noexcept nogil:
    cdef lvs_dest *d = &core.dests[slot]
    cdef uint32_t svc = d.svc
    d.state = LVS_SLOT_FREE
    d.next_free = core.st.dest_free
    core.st.dest_free = slot
    core.st.dest_in_use -= 1
    lvs_svc_slot_put(core, svc)


cdef uint32_t lvs_dest_slot_alloc(lvs_core *core, uint32_t svc) noexcept nogil:
    """A zeroed dest slot owned by service slot `svc`, or 0 when the pool is full."""
    cdef uint32_t slot = core.st.dest_free
    cdef lvs_dest *d
    if slot:
        core.st.dest_free = core.dests[slot].next_free
    elif core.st.dest_high < core.st.max_dests:
        core.st.dest_high += 1
        slot = core.st.dest_high
    else:
        return 0
    d = &core.dests[slot]
    memset(d, 0, sizeof(lvs_dest))
    d.slot = slot
    d.svc = svc
    d.state = LVS_SLOT_USED
    d.flags = LVS_DEST_F_AVAILABLE
    core.svc_recs[svc].refcnt += 1
    core.st.dest_in_use += 1
    return slot


cdef uint32_t lvs_svc_slot_alloc(lvs_core *core) noexcept nogil:
    """A zeroed service slot (record and scheduler view), or 0 when the pool is full."""
    cdef uint32_t slot = core.st.svc_free
    if slot:
        core.st.svc_free = core.svc_recs[slot].next_free
    elif core.st.svc_high < core.st.max_services:
        core.st.svc_high += 1
        slot = core.st.svc_high
    else:
        return 0
    memset(&core.svc_recs[slot], 0, sizeof(lvs_svc_rec))
    memset(&core.svcs[slot], 0, sizeof(lvs_service))
    core.svc_recs[slot].state = LVS_SLOT_USED
    core.svcs[slot].slot = slot
    core.svc_py[slot] = 0
    core.st.svc_in_use += 1
    return slot


cdef void lvs_dest_slot_retire(lvs_core *core, uint32_t slot) noexcept nogil:
    """The real server was deleted (ip_vs_del_dest): its connections are not there any more
    from now on, without visiting them; its slot goes when the last of them is freed."""
    cdef lvs_dest *d = &core.dests[slot]
    d.state = LVS_SLOT_GONE
    d.flags &= ~LVS_DEST_F_AVAILABLE
    core.counters[C_CONN_DEST_GONE] += d.refcnt
    core.st.dead_conns += d.refcnt
    if d.refcnt == 0:
        lvs_dest_slot_free(core, slot)


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


cdef void lvs_conn_free(lvs_core *core, uint32_t idx) noexcept nogil:
    """Release the entry and its reference on the dest slot."""
    cdef uint32_t slot = core.conns.entries[idx].dest
    if core.dests[slot].state != LVS_SLOT_USED:
        core.st.dead_conns -= 1
    lvs_conn_release(&core.conns, idx)
    lvs_dest_slot_put(core, slot)


cdef void lvs_conn_expire(lvs_core *core, uint32_t idx, uint32_t now_ms) noexcept nogil:
    """ip_vs_conn_expire: unhash, uncount, release the template, free the entry.  A template
    whose last connection goes and whose own time is already up goes too (its timer would
    have fired and found no connection left); so does one whose real server is gone."""
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
    lvs_conn_free(core, idx)
    if template and t.entries[template].control == 0:
        tc = &t.entries[template]
        if lvs_conn_gone(core, tc):
            lvs_conn_expire(core, template, now_ms)     # counted when its dest went
            return
        # While any of its connections lived, every firing of the template's timer re-armed it:
        # it goes at the first firing after the last of them ended.
        step = lvs_conn_timeout_ms(core, tc)
        while step and not lvs_time_after_eq(tc.expires, tc.next_out):
            tc.expires += step
        if lvs_time_after_eq(now_ms, tc.expires):
            lvs_conn_expire(core, template, now_ms)
            core.counters[C_CONN_EXPIRED] += 1


cdef inline bint lvs_conn_reap(lvs_core *core, uint32_t idx, uint32_t now_ms) noexcept nogil:
    """Free entry idx if its dest is gone (a template only once it controls nothing: its
    connections, gone with it, free it when the last of them goes).  True if it is gone."""
    cdef lvs_conn *c = &core.conns.entries[idx]
    if not lvs_conn_gone(core, c):
        return False
    if not (c.flags & LVS_CONN_TEMPLATE and c.control):
        lvs_conn_expire(core, idx, now_ms)
    return True


cdef void lvs_sweep(lvs_core *core, uint32_t now_ms, uint32_t budget,
                    uint32_t max_freed) noexcept nogil:
    """Visit `budget` slots from the cursor on; expire what is due (templates only when free)
    and free in passing what a deleted real server left.  Stops early once `max_freed` entries
    went (freeing is the costly part: unhashing touches cold memory), so one call's work is
    bounded even when everything is due; the cursor stays where it stopped and the next call
    carries on."""
    cdef lvs_conntab *t = &core.conns
    cdef lvs_conn *c
    cdef uint32_t i, freed = 0
    if t.v.high_water == 0:
        return
    if budget > t.v.high_water:
        budget = t.v.high_water
    for i in range(budget):
        c = &t.entries[t.v.sweep_cursor]
        if c.flags & LVS_CONN_USED:
            if lvs_conn_gone(core, c):
                if lvs_conn_reap(core, t.v.sweep_cursor, now_ms) and not (c.flags & LVS_CONN_USED):
                    freed += 1
            elif lvs_time_after_eq(now_ms, c.expires):
                if c.flags & LVS_CONN_TEMPLATE and c.control:
                    # expire_later: while it controls connections the kernel's timer keeps
                    # re-arming it; the last connection to go settles its real expiry
                    # (lvs_conn_expire), which keeps the result independent of the order the
                    # sweep visits entries in.
                    pass
                else:
                    lvs_conn_expire(core, t.v.sweep_cursor, now_ms)
                    core.counters[C_CONN_EXPIRED] += 1
                    freed += 1
        t.v.sweep_cursor += 1
        if t.v.sweep_cursor > t.v.high_water:
            t.v.sweep_cursor = 1
        if freed >= max_freed:
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


cdef uint32_t lvs_conn_new(lvs_core *core, lvs_dest *dest, uint8_t protocol,
                           uint8_t alen, const uint8_t *caddr, uint16_t cport,
                           const uint8_t *vaddr, uint16_t vport, uint16_t dport, uint16_t flags,
                           uint16_t peer, uint32_t now_ms) noexcept nogil:
    """ip_vs_conn_new + ip_vs_bind_dest; 0 when the table is full."""
    cdef lvs_conntab *t = &core.conns
    cdef uint32_t idx = lvs_conn_alloc(t)
    cdef lvs_conn *c
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
    c.dest = dest.slot
    dest.refcnt += 1
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
