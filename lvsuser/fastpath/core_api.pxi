# The core's entry points: lvs_process_frame (one frame), lvs_core_batch (the drivers' entry,
# no GIL), and the Python class Core (publish, process, listings, counters).

from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t, int64_t
from libc.string cimport memcmp, memcpy, memset
from libc.stdlib cimport calloc, malloc, free
from cpython.ref cimport PyObject

import copy as _copy
import ipaddress as _ipaddress
from lvsuser import model as _model
from lvsuser import pyfastpath as _pyfastpath
from lvsuser.fastpath import config as _config_mod
from lvsuser.schedulers.base import report_schedule_error as _report_schedule_error

PASS = LVS_PASS
DROP = LVS_DROP
TX = LVS_TX
REPLY = LVS_REPLY
COUNTER_NAMES = _pyfastpath.COUNTER_NAMES


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


cdef int32_t lvs_pick(lvs_core *core, uint32_t svc_idx, lvs_pkt *p, double now,
                      int *why) noexcept nogil:
    cdef lvs_service *svc = &core.tables.services[svc_idx]
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
    elif core.tables.ext[svc_idx].py_sched >= 0:
        d = lvs_py_schedule(core, svc_idx, p, now)
    else:
        why[0] = C_NO_SCHEDULER
        return -1
    if d < 0 or <uint32_t>d >= svc.num_dests:
        why[0] = C_NO_DEST
        return -1
    return d


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
    cdef lvs_service *svc = &t.services[svc_idx]
    cdef uint32_t now_ms = lvs_ms(core, now)
    cdef uint32_t tidx = 0, idx
    cdef int32_t d
    cdef int why = 0
    cdef uint8_t snet[16]
    cdef uint8_t tvaddr[16]
    cdef uint8_t tproto
    cdef uint16_t tvport, tport, dport
    cdef uint32_t i
    cdef uint16_t peer = 0
    cdef const uint8_t *mac
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
        if tidx and lvs_time_after_eq(now_ms, core.conns.entries[tidx].expires) \
                and core.conns.entries[tidx].control == 0:
            lvs_conn_expire(core, tidx, now_ms)
            tidx = 0
        if tidx:
            d = core.conns.entries[tidx].dest
        else:
            d = lvs_pick(core, svc_idx, p, now, &why)
            if d < 0:
                return lvs_leave(core, f, p, why, now)
            if not t.ext[svc_idx].dests[d].has_route:
                return lvs_drop(core, f, C_NO_ROUTE)
            tport = lvs_ntohs(svc.dests[d].port) \
                if (p.dport == lvs_ntohs(svc.port) and p.dport != 21) else 0
            tidx = lvs_conn_new(core, svc_idx, <uint32_t>d, tproto, p.alen, snet, 0, tvaddr, tvport,
                                tport, LVS_CONN_TEMPLATE, peer, now_ms)
            if tidx == 0:
                return lvs_drop(core, f, C_TABLE_FULL)
            core.conns.entries[tidx].expires = now_ms + svc.timeout * 1000
        dport = lvs_ntohs(svc.dests[d].port) \
            if (p.dport == lvs_ntohs(svc.port) and svc.dests[d].port) else p.dport
    else:
        d = lvs_pick(core, svc_idx, p, now, &why)
        if d < 0:
            return lvs_leave(core, f, p, why, now)
        dport = lvs_ntohs(svc.dests[d].port) if svc.dests[d].port else p.dport
    if not t.ext[svc_idx].dests[d].has_route:
        return lvs_drop(core, f, C_NO_ROUTE)
    idx = lvs_conn_new(core, svc_idx, <uint32_t>d, p.proto, p.alen, p.d + p.saddr_off, p.sport,
                       p.d + p.daddr_off, p.dport, dport, 0, peer, now_ms)
    if idx == 0:
        return lvs_drop(core, f, C_TABLE_FULL)
    if tidx:
        core.conns.entries[idx].control = tidx
        core.conns.entries[tidx].control += 1
        core.conns.entries[tidx].expires = now_ms + svc.timeout * 1000
    svc.conns += 1
    svc.dests[d].conns += 1
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
                break
            idx = c.next_out
        if idx and not lvs_time_after_eq(now_ms, ct.entries[idx].expires):
            return lvs_reply_out(core, f, &p, idx, now, csum_partial)
    svc_idx = lvs_find_service(t, &p, lvs_mark_of(t, &p) if t.num_marks else 0)
    if svc_idx < 0 and p.fragment and lvs_is_vip(t, &p):
        return lvs_drop(core, f, C_FRAGMENT)   # a fragment carries no ports: any service on the VIP
    if svc_idx < 0 and not p.has_ports and (p.proto == PROTO_TCP_ or p.proto == PROTO_UDP_) \
            and lvs_is_vip(t, &p):
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
    if t.services[svc_idx].flags & LVS_SVC_F_ONEPACKET and p.proto == PROTO_UDP_:
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
    cdef uint32_t i
    if t == NULL:
        return
    for i in range(t.num_services):
        if t.services[i].sched != NULL and t.services[i].sched.done_service != NULL \
                and t.services[i].sched_data != NULL:
            t.services[i].sched.done_service(&t.services[i])
        free(t.services[i].dests)
        free(t.ext[i].dests)
    free(t.services)
    free(t.ext)
    free(t.svc_index)
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


cdef class Core:
    """The compiled datapath core; the same API as lvsuser.pyfastpath.Core."""

    cdef lvs_core *c
    cdef list _models           # published model.Service copies, in table order
    cdef list _py_scheds        # per service: (plugin, model.Service) or None
    cdef object _scheduler_factory
    cdef double _next_est
    cdef readonly unsigned int max_conns
    cdef public int generation

    def __cinit__(self, unsigned int max_conns=1 << 20, scheduler_factory=None):
        if max_conns == 0 or max_conns > (1 << 30):
            raise ValueError("max_conns must be between 1 and 2**30")
        self.c = <lvs_core *>calloc(1, sizeof(lvs_core))
        if self.c == NULL:
            raise MemoryError()
        pthread_mutex_init(&self.c.lock, NULL)
        self.c.owner = <PyObject *>self
        self.c.icmp_credit = ICMP_BURST
        self.c.peers = <lvs_peer *>calloc(LVS_MAX_PEERS + 1, sizeof(lvs_peer))
        self.c.peer_slots = <uint16_t *>calloc(LVS_PEER_SLOTS, sizeof(uint16_t))
        if (self.c.peers == NULL or self.c.peer_slots == NULL
                or lvs_conntab_init(&self.c.conns, max_conns) < 0):
            raise MemoryError("cannot allocate the connection table")
        self.max_conns = max_conns
        self._models = []
        self._py_scheds = []
        self._scheduler_factory = scheduler_factory
        self._next_est = -1.0
        self.generation = 0
        self.c.tables = self._build(_config_mod.CoreConfig())

    def __dealloc__(self):
        if self.c != NULL:
            lvs_tables_free(self.c.tables)
            lvs_conntab_free(&self.c.conns)
            free(self.c.peers)
            free(self.c.peer_slots)
            pthread_mutex_destroy(&self.c.lock)
            free(self.c)
            self.c = NULL

    # ---------------------------------------------------------------- configuration
    cdef lvs_tables *_build(self, config) except NULL:
        """C tables for `config` (no scheduler state yet; publish() links it)."""
        cdef lvs_tables *t = <lvs_tables *>calloc(1, sizeof(lvs_tables))
        cdef lvs_service *s
        cdef lvs_dest *d
        cdef lvs_dest_ext *x
        cdef uint32_t i, j, size, slot, n
        cdef bytes name
        if t == NULL:
            raise MemoryError()
        try:
            services = config.services
            n = len(services)
            t.num_services = n
            t.services = <lvs_service *>calloc(n + 1, sizeof(lvs_service))
            t.ext = <lvs_svc_ext *>calloc(n + 1, sizeof(lvs_svc_ext))
            size = 8
            while size < 2 * n + 2:
                size <<= 1
            t.svc_index = <uint32_t *>calloc(size, sizeof(uint32_t))
            t.svc_index_mask = size - 1
            if t.services == NULL or t.ext == NULL or t.svc_index == NULL:
                raise MemoryError()
            routes = {_ipaddress.ip_address(a).packed: r for a, r in config.routes.items()}
            for i in range(n):
                svc = services[i]
                s = &t.services[i]
                s.af = svc.af
                s.protocol = 0 if svc.fwmark else svc.protocol
                s.port = lvs_htons(0 if svc.fwmark else svc.port)
                if svc.addr is not None and not svc.fwmark:
                    lvs_put_addr(s.addr, svc.addr)
                s.fwmark = svc.fwmark
                s.flags = svc.flags
                s.timeout = svc.timeout
                if svc.af == _model.AF_INET:
                    lvs_put32(s.netmask, svc.netmask & 0xFFFFFFFF)
                else:
                    plen = svc.netmask if svc.netmask <= 128 else 128
                    lvs_fill_mask(s.netmask, _ipaddress.IPv6Network(f"::/{plen}"))
                s.num_dests = len(svc.dests)
                s.dests = <lvs_dest *>calloc(s.num_dests + 1, sizeof(lvs_dest))
                t.ext[i].dests = <lvs_dest_ext *>calloc(s.num_dests + 1, sizeof(lvs_dest_ext))
                t.ext[i].py_sched = -1
                if s.dests == NULL or t.ext[i].dests == NULL:
                    raise MemoryError()
                for j in range(s.num_dests):
                    dest = svc.dests[j]
                    d = &s.dests[j]
                    x = &t.ext[i].dests[j]
                    lvs_put_addr(d.addr, dest.addr)
                    d.port = lvs_htons(dest.port)
                    d.af = _model.af_of(dest.addr)
                    d.fwd = int(dest.fwd)
                    d.weight = dest.weight
                    d.u_threshold = dest.u_threshold
                    d.l_threshold = dest.l_threshold
                    d.flags = LVS_DEST_F_AVAILABLE
                    d.index = j
                    d.tun_type = int(dest.tun_type)
                    d.tun_flags = dest.tun_flags
                    d.tun_port = lvs_htons(dest.tun_port)
                    route = routes.get(dest.addr.packed)
                    if int(dest.fwd) == LVS_FWD_LOCALNODE:
                        x.has_route = 1         # the director's own stack: no route needed
                    if route is not None:
                        x.has_route = 1
                        d.ifindex = route.ifindex
                        lvs_put_mac(d.src_mac, bytes(route.src_mac))
                        lvs_put_mac(d.dst_mac, bytes(route.dst_mac))
                        d.mtu = route.mtu
                        if route.src_addr is not None:
                            lvs_put_addr(x.src_addr, route.src_addr)
                slot = lvs_svc_hash(s.af, s.protocol, s.addr, lvs_ntohs(s.port), s.fwmark) & t.svc_index_mask
                while t.svc_index[slot]:
                    slot = (slot + 1) & t.svc_index_mask
                t.svc_index[slot] = i + 1
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
            for i, secs in enumerate(_pyfastpath.tcp_timeouts(config.timeouts)):
                t.tcp_timeout_ms[i] = secs * 1000
            t.udp_timeout_ms = config.timeouts.udp * 1000
            t.l2 = config.mode == _config_mod.MODE_L2
        except BaseException:
            lvs_tables_free(t)
            raise
        return t

    def publish(self, config):
        """Adopt a whole new configuration (see lvsuser.fastpath.config); connections survive
        when their real server does, the others are expired.  Raises ValueError on bad input,
        leaving the running configuration untouched."""
        cdef lvs_tables *new
        cdef lvs_tables *old
        cdef lvs_service *s
        cdef lvs_service *os
        cdef uint32_t i, j, k, n_old
        cdef int32_t *remap = NULL
        cdef uint32_t *remap_base = NULL
        cdef uint32_t total_old_dests = 0
        config.validate()
        models = [_copy.deepcopy(svc) for svc in config.services]
        new = self._build(config)
        old = self.c.tables
        # identity of the old dests: (service key, addr, port) -> flat index
        old_index = {}
        n_old = old.num_services
        remap_base = <uint32_t *>calloc(n_old + 1, sizeof(uint32_t))
        for i in range(n_old):
            remap_base[i] = total_old_dests
            total_old_dests += old.services[i].num_dests
        remap = <int32_t *>malloc((total_old_dests + 1) * sizeof(int32_t))
        if remap == NULL or remap_base == NULL:
            free(remap)
            free(remap_base)
            lvs_tables_free(new)
            raise MemoryError()
        for k in range(total_old_dests):
            remap[k] = -1
        old_svc_index = {svc.key: i for i, svc in enumerate(self._models)}
        py_scheds = []
        try:
            for i, svc in enumerate(models):
                s = &new.services[i]
                oi = old_svc_index.get(svc.key, -1)
                os = &old.services[oi] if oi >= 0 else NULL
                if os != NULL:
                    s.conns, s.inpkts, s.outpkts = os.conns, os.inpkts, os.outpkts
                    s.inbytes, s.outbytes = os.inbytes, os.outbytes
                    new.ext[i].est = old.ext[oi].est
                    old_dests = {(d.addr, d.port): j for j, d in enumerate(self._models[oi].dests)}
                else:
                    old_dests = {}
                for j, dest in enumerate(svc.dests):
                    oj = old_dests.get((dest.addr, dest.port), -1)
                    if oj >= 0:
                        s.dests[j].conns = os.dests[oj].conns
                        s.dests[j].inpkts = os.dests[oj].inpkts
                        s.dests[j].outpkts = os.dests[oj].outpkts
                        s.dests[j].inbytes = os.dests[oj].inbytes
                        s.dests[j].outbytes = os.dests[oj].outbytes
                        s.dests[j].flags |= os.dests[oj].flags & LVS_DEST_F_OVERLOAD
                        new.ext[i].dests[j].est = old.ext[oi].dests[oj].est
                        remap[remap_base[oi] + oj] = <int32_t>((i << 16) | j)
                # scheduler: C first, else a Python plugin, else none (no new connections)
                name = svc.scheduler.encode()
                s.sched = lvs_find_scheduler(name)
                if s.sched != NULL:
                    if os != NULL and os.sched == s.sched and os.sched_data != NULL:
                        s.sched_data = os.sched_data
                        os.sched_data = NULL
                        if s.sched.update_service != NULL:
                            s.sched.update_service(s)
                    elif s.sched.init_service != NULL:
                        s.sched.init_service(s)
                    py_scheds.append(None)
                else:
                    plugin = None
                    if oi >= 0 and self._py_scheds[oi] is not None \
                            and self._models[oi].scheduler == svc.scheduler:
                        plugin = self._py_scheds[oi][0]
                        try:
                            plugin.service = svc     # keep its state, as update_service does
                            plugin.update()
                        except Exception:
                            plugin = None
                    if plugin is None:
                        try:
                            factory = self._scheduler_factory or _pyfastpath._default_scheduler_factory
                            plugin = factory(svc.scheduler, svc)
                        except Exception:
                            plugin = None
                    if plugin is not None:
                        new.ext[i].py_sched = i
                        py_scheds.append((plugin, svc))
                    else:
                        py_scheds.append(None)
        except BaseException:
            free(remap)
            free(remap_base)
            lvs_tables_free(new)
            raise
        with nogil:
            pthread_mutex_lock(&self.c.lock)
            lvs_remap_conns(self.c, new, remap, remap_base)
            self.c.tables = new
            pthread_mutex_unlock(&self.c.lock)
        free(remap)
        free(remap_base)
        self._models = models
        self._py_scheds = py_scheds
        lvs_tables_free(old)
        self.generation += 1

    def _report_schedule_error(self, uint32_t svc_idx, exc):
        entry = self._py_scheds[svc_idx]
        if entry is not None:
            _report_schedule_error(entry[0], entry[1], exc)

    def _py_schedule(self, uint32_t svc_idx, int af, int proto, bytes saddr, int sport,
                     bytes daddr, int dport, double now):
        """Called from the C path with the GIL: a Python plugin picks a dest index or -1."""
        cdef lvs_service *s = &self.c.tables.services[svc_idx]
        cdef uint32_t j
        entry = self._py_scheds[svc_idx]
        if entry is None:
            return -1
        plugin, svc = entry
        for j in range(s.num_dests):
            dest = svc.dests[j]
            dest.activeconns = s.dests[j].activeconns
            dest.inactconns = s.dests[j].inactconns
            dest.persistconns = s.dests[j].persistconns
            dest.flags = s.dests[j].flags
        info = _pyfastpath.PacketInfo(af, proto, _pyfastpath._addr(af, saddr), sport,
                                      _pyfastpath._addr(af, daddr), dport)
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

        By default (budget=None) the sweep visits at most pyfastpath.EXPIRE_SLOTS table slots
        from where the last one stopped and frees at most pyfastpath.EXPIRE_MAX_FREED entries:
        well under a millisecond with the core lock held even when everything is due; the
        drivers call it every IO_EXPIRE_INTERVAL_MS (io.pxi).  budget=N
        visits N slots with no cap on frees; budget=0 visits every slot.  Lookups expire stale
        entries on their own, so a partial sweep never serves a dead connection."""
        cdef uint64_t before
        cdef uint32_t slots, max_freed = SWEEP_NO_LIMIT
        if budget is None:
            slots = _pyfastpath.EXPIRE_SLOTS
            max_freed = _pyfastpath.EXPIRE_MAX_FREED
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
        cdef lvs_tables *t = self.c.tables
        cdef uint32_t i, j, ticks = 0
        cdef lvs_service *s
        if self._next_est < 0:
            self._next_est = now + _pyfastpath.EST_INTERVAL
            return
        while now >= self._next_est and ticks < 32:
            self._next_est += _pyfastpath.EST_INTERVAL
            ticks += 1
            for i in range(t.num_services):
                s = &t.services[i]
                lvs_est_tick(&t.ext[i].est, s.conns, s.inpkts, s.outpkts, s.inbytes, s.outbytes)
                for j in range(s.num_dests):
                    lvs_est_tick(&t.ext[i].dests[j].est, s.dests[j].conns, s.dests[j].inpkts,
                                 s.dests[j].outpkts, s.dests[j].inbytes, s.dests[j].outbytes)
        if now >= self._next_est:
            self._next_est = now + _pyfastpath.EST_INTERVAL

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
        cdef lvs_tables *t = self.c.tables
        cdef uint32_t i, j
        cdef lvs_service *s
        out = []
        for i in range(t.num_services):
            s = &t.services[i]
            svc = _copy.deepcopy(self._models[i])
            _fill_stats(svc.stats, s.conns, s.inpkts, s.outpkts, s.inbytes, s.outbytes, &t.ext[i].est)
            for j in range(s.num_dests):
                dest = svc.dests[j]
                dest.activeconns = s.dests[j].activeconns
                dest.inactconns = s.dests[j].inactconns
                dest.persistconns = s.dests[j].persistconns
                dest.flags = s.dests[j].flags
                _fill_stats(dest.stats, s.dests[j].conns, s.dests[j].inpkts, s.dests[j].outpkts,
                            s.dests[j].inbytes, s.dests[j].outbytes, &t.ext[i].dests[j].est)
            out.append(svc)
        return out

    def zero(self, key=None):
        """ipvsadm -Z: counters and rate estimators back to zero."""
        cdef lvs_tables *t = self.c.tables
        cdef uint32_t i, j
        cdef lvs_service *s
        with nogil:
            pthread_mutex_lock(&self.c.lock)
        try:
            for i in range(t.num_services):
                if key is not None and self._models[i].key != key:
                    continue
                s = &t.services[i]
                s.conns = s.inpkts = s.outpkts = s.inbytes = s.outbytes = 0
                memset(&t.ext[i].est, 0, sizeof(lvs_est))
                for j in range(s.num_dests):
                    s.dests[j].conns = s.dests[j].inpkts = s.dests[j].outpkts = 0
                    s.dests[j].inbytes = s.dests[j].outbytes = 0
                    memset(&t.ext[i].dests[j].est, 0, sizeof(lvs_est))
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
        """Raw table entries (index, flags, control, expires ms, state, cport, vport) for tests."""
        cdef lvs_conntab *ct = &self.c.conns
        cdef uint32_t i
        return [(i, ct.entries[i].flags, ct.entries[i].control, ct.entries[i].expires,
                 ct.entries[i].state, ct.entries[i].cport, ct.entries[i].vport)
                for i in range(1, ct.high_water + 1) if ct.entries[i].flags & LVS_CONN_USED]

    @staticmethod
    def conn_entry_size():
        """Bytes per connection-table entry (the layout is in conntab.pxi)."""
        return sizeof(lvs_conn)

    def conn_count(self):
        return self.c.conns.count

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


cdef void lvs_remap_conns(lvs_core *core, lvs_tables *new, const int32_t *remap,
                          const uint32_t *remap_base) noexcept nogil:
    """Under the lock: move every entry to its dest in `new`; expire those whose dest is gone;
    recount active/inactive/persistent per dest as ip_vs_bind_dest would have."""
    cdef lvs_conntab *t = &core.conns
    cdef lvs_conn *c
    cdef uint32_t i, k
    cdef int32_t m
    cdef lvs_dest *d
    cdef uint32_t total
    cdef uint16_t GONE = 0x8000
    # 1. decide, and unhash the gone ones while the old tables still give their daddr
    for i in range(1, t.high_water + 1):
        c = &t.entries[i]
        if not (c.flags & LVS_CONN_USED):
            continue
        m = remap[remap_base[c.svc] + c.dest]
        if m < 0:
            core.counters[C_CONN_DEST_GONE] += 1
            lvs_conn_unlink_in(t, i)
            if not (c.flags & LVS_CONN_TEMPLATE) and ((c.flags >> LVS_CONN_FWD_SHIFT) & 7) == LVS_FWD_MASQ:
                lvs_conn_unlink_out(t, i, lvs_conn_dest(core, c).addr)
            c.flags |= GONE
        else:
            c.svc = <uint16_t>(m >> 16)
            c.dest = <uint16_t>(m & 0xFFFF)
    # 2. templates and their connections let go of each other
    for i in range(1, t.high_water + 1):
        c = &t.entries[i]
        if not (c.flags & LVS_CONN_USED) or c.flags & LVS_CONN_TEMPLATE or c.control == 0:
            continue
        if t.entries[c.control].flags & GONE:
            c.control = 0
        elif c.flags & GONE and t.entries[c.control].control > 0:
            t.entries[c.control].control -= 1
    # 3. free the gone entries, count the others on their new dests
    for i in range(1, t.high_water + 1):
        c = &t.entries[i]
        if not (c.flags & LVS_CONN_USED):
            continue
        if c.flags & GONE:
            lvs_conn_release(t, i)
            continue
        d = &new.services[c.svc].dests[c.dest]
        if c.flags & LVS_CONN_TEMPLATE:
            d.persistconns += 1
        elif c.flags & LVS_CONN_INACTIVE:
            d.inactconns += 1
        else:
            d.activeconns += 1
    # 4. overload by the thresholds, as bind (set) and unbind (clear) would leave it
    for i in range(new.num_services):
        for k in range(new.services[i].num_dests):
            d = &new.services[i].dests[k]
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
    while i <= ct.high_water:
        if count[0] == cap or scanned == LVS_LIST_SCAN_MAX:
            return i
        c = &ct.entries[i]
        scanned += 1
        if c.flags & LVS_CONN_USED and (c.flags & LVS_CONN_TEMPLATE) == want:
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
        state = "UDP" if row.protocol == PROTO_UDP_ else _pyfastpath.TCP_STATE_NAMES[row.state]
    return dict(protocol=protocol,
                caddr=_pyfastpath._addr(af, (<char *>row.caddr)[:alen]), cport=row.cport,
                vaddr=_pyfastpath._addr(af, (<char *>row.vaddr)[:alen]), vport=row.vport,
                daddr=_pyfastpath._addr(af, (<char *>row.daddr)[:alen]), dport=row.dport,
                state=state, expires=max(0, row.left_ms) // 1000, pe_name="", pe_data="")
