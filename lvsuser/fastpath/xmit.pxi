# The per-frame path: classify, look up or schedule, and one xmit function per forwarding method
# (NAT, TUN, DR), plus the packets the core answers itself (ICMP errors, ARP, ND).
# Mirrors pyfastpath.Core._process step by step; see its docstring for the kernel behaviours.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t
from libc.string cimport memcmp, memcpy, memmove, memset


cdef inline int lvs_drop(lvs_core *core, lvs_frame *f, int counter) noexcept nogil:
    core.counters[counter] += 1
    f.verdict = LVS_DROP
    f.out_ifindex = 0
    return LVS_DROP


cdef inline int lvs_pass(lvs_core *core, lvs_frame *f, int counter) noexcept nogil:
    core.counters[counter] += 1
    f.verdict = LVS_PASS
    f.out_ifindex = 0
    return LVS_PASS


cdef int lvs_emit(lvs_core *core, lvs_frame *f, const uint8_t *out, uint32_t n, int verdict,
                  int32_t ifindex) noexcept nogil:
    """Replace the frame by `out` (built in scratch memory), rebased at the slot's start."""
    cdef uint32_t room = f.headroom + f.len + f.tailroom
    if n > room:
        return lvs_drop(core, f, C_NO_ROOM)
    f.data = f.data - f.headroom
    f.tailroom = room - n
    f.headroom = 0
    memmove(f.data, out, n)
    f.len = n
    f.verdict = verdict
    f.out_ifindex = ifindex
    return verdict


cdef void lvs_dec_ttl(lvs_pkt *p) noexcept nogil:
    cdef uint8_t old[2]
    cdef uint8_t *d = p.d
    cdef uint32_t check
    if p.af == AF_INET_:
        old[0] = d[p.hl_off]
        old[1] = d[p.hl_off + 1]
        d[p.hl_off] -= 1
        check = lvs_get16(d + p.l3 + 10)
        lvs_put16(d + p.l3 + 10, lvs_csum_replace(check, old, d + p.hl_off, 2))
    else:
        d[p.hl_off] -= 1


cdef void lvs_nat_rewrite(lvs_pkt *p, const uint8_t *new_addr, uint16_t new_port, bint dst,
                          bint csum_partial) noexcept nogil:
    """Rewrite daddr:dport (dst) or saddr:sport; RFC 1624 updates of the IP and L4 checksums."""
    cdef uint8_t *d = p.d
    cdef uint8_t old[20]
    cdef uint8_t new[20]
    cdef uint32_t a_off = p.daddr_off if dst else p.saddr_off
    cdef uint32_t p_off = p.l4 + (2 if dst else 0)
    cdef uint32_t c_off, check
    cdef uint8_t alen = p.alen
    memcpy(old, d + a_off, alen)
    old[alen] = d[p_off]
    old[alen + 1] = d[p_off + 1]
    memcpy(new, new_addr, alen)
    lvs_put16(new + alen, new_port)
    memcpy(d + a_off, new, alen)
    d[p_off] = new[alen]
    d[p_off + 1] = new[alen + 1]
    if p.af == AF_INET_:
        check = lvs_get16(d + p.l3 + 10)
        lvs_put16(d + p.l3 + 10, lvs_csum_replace(check, old, new, 4))
    if p.proto == PROTO_TCP_:
        c_off = p.l4 + 16
        if p.l4 + 18 > p.ip_end:
            return
    else:
        c_off = p.l4 + 6
        if p.l4 + 8 > p.ip_end:
            return
    check = lvs_get16(d + c_off)
    if p.proto == PROTO_UDP_ and check == 0 and p.af == AF_INET_:
        return      # no UDP checksum: leave it absent (udp_dnat_handler)
    if csum_partial:
        check = lvs_csum_replace_partial(check, old, new, alen)
    else:
        check = lvs_csum_replace(check, old, new, alen + 2)
        if p.proto == PROTO_UDP_ and check == 0:
            check = 0xFFFF
    lvs_put16(d + c_off, check)


cdef bint lvs_icmp_allowed(lvs_core *core, const lvs_pkt *p, uint8_t icmp_type, uint8_t code,
                           double now) noexcept nogil:
    """icmp_global_allow: 1000 errors/s, burst 50, shared by IPv4 and IPv6; fragmentation
    needed and packet too big are never limited (PMTU discovery must work)."""
    cdef uint32_t now_ms, delta
    cdef int64_t credit
    if (p.af == AF_INET_ and icmp_type == 3 and code == 4) or (p.af == AF_INET6_ and icmp_type == 2):
        return True
    now_ms = lvs_ms(core, now)
    delta = now_ms - core.icmp_stamp
    if delta >= ICMP_REFILL_MS:
        credit = core.icmp_credit + <int64_t>delta * ICMP_PER_SEC // 1000
        core.icmp_credit = <int32_t>(ICMP_BURST if credit > ICMP_BURST else credit)
        core.icmp_stamp = now_ms
    if core.icmp_credit <= 0:
        core.counters[C_ICMP_RATELIMITED] += 1
        return False
    core.icmp_credit -= 1
    return True


cdef int lvs_icmp_error(lvs_core *core, lvs_frame *f, lvs_pkt *p, uint8_t icmp_type, uint8_t code,
                        uint32_t info, double now, const lvs_conn *via=NULL) noexcept nogil:
    """icmp_send / icmp6_send from the VIP back to the client, quoting the packet: REPLY on the
    arrival interface, or (via a connection) TX back the way that connection came in."""
    cdef uint8_t out[LVS_SCRATCH]
    cdef uint8_t *d = p.d
    cdef uint32_t n = 0, quote, ip_off, body_off, body_len
    cdef const uint8_t *mac
    cdef const lvs_peer *peer = NULL
    cdef uint8_t is_v6 = p.af == AF_INET6_
    if via != NULL:
        if via.peer == 0:
            return lvs_drop(core, f, C_NO_ROUTE)
        peer = &core.peers[via.peer]
    if not lvs_icmp_allowed(core, p, icmp_type, code, now):
        f.verdict = LVS_DROP
        f.out_ifindex = 0
        return LVS_DROP
    if core.tables.l2 and peer != NULL:
        memcpy(out, peer.client_mac, 6)
        mac = lvs_local_mac(core.tables, peer.ifindex)
        memcpy(out + 6, mac if mac != NULL else peer.local_mac, 6)
        lvs_put16(out + 12, ETHP_IPV6 if is_v6 else ETHP_IP)
        n = 14
    elif core.tables.l2:
        memcpy(out, d + 6, 6)
        mac = lvs_local_mac(core.tables, f.ifindex)
        memcpy(out + 6, mac if mac != NULL else d, 6)
        memcpy(out + 12, d + 12, p.l3 - 12)
        n = p.l3
    ip_off = n
    quote = p.ip_end - p.l3
    if is_v6:
        if quote > ICMP6_QUOTE_MAX:
            quote = ICMP6_QUOTE_MAX
        body_off = ip_off + 40
    else:
        if quote > ICMP4_QUOTE_MAX:
            quote = ICMP4_QUOTE_MAX
        body_off = ip_off + 20
    body_len = 8 + quote
    out[body_off] = icmp_type
    out[body_off + 1] = code
    out[body_off + 2] = 0
    out[body_off + 3] = 0
    lvs_put32(out + body_off + 4, info)
    memcpy(out + body_off + 8, d + p.l3, quote)
    if is_v6:
        lvs_put32(out + ip_off, 6 << 28)
        lvs_put16(out + ip_off + 4, body_len)
        out[ip_off + 6] = PROTO_ICMPV6
        out[ip_off + 7] = ICMP_TTL
        memcpy(out + ip_off + 8, d + p.daddr_off, 16)
        memcpy(out + ip_off + 24, d + p.saddr_off, 16)
        lvs_put16(out + body_off + 2, (~lvs_csum_add(
            lvs_pseudo_sum(1, d + p.daddr_off, d + p.saddr_off, PROTO_ICMPV6, body_len),
            out + body_off, body_len)) & 0xFFFF)
    else:
        out[ip_off] = 0x45
        out[ip_off + 1] = (d[p.l3 + 1] & 0x1E) | 0xC0
        lvs_put16(out + ip_off + 2, 20 + body_len)
        lvs_put32(out + ip_off + 4, 0)
        out[ip_off + 8] = ICMP_TTL
        out[ip_off + 9] = PROTO_ICMP
        memcpy(out + ip_off + 12, d + p.daddr_off, 4)
        memcpy(out + ip_off + 16, d + p.saddr_off, 4)
        lvs_ip4_set_checksum(out + ip_off)
        lvs_put16(out + body_off + 2, (~lvs_csum_add(0, out + body_off, body_len)) & 0xFFFF)
    if peer != NULL:
        return lvs_emit(core, f, out, body_off + body_len, LVS_TX, peer.ifindex)
    return lvs_emit(core, f, out, body_off + body_len, LVS_REPLY, f.ifindex)


cdef int lvs_icmp_tunnel(lvs_core *core, lvs_frame *f, lvs_pkt *p, lvs_pkt *tunnel,
                         double now) noexcept nogil:
    """An ICMP error about one of our IP-in-IP packets (from the path to a real server): tell the
    client, as ip_vs_in_icmp does -- with the tunnel's overhead taken off a reported MTU."""
    cdef uint8_t *d = p.d
    cdef lvs_pkt orig
    cdef uint32_t idx, info, mtu
    cdef uint16_t sport, dport
    cdef lvs_conn *c
    cdef lvs_conntab *t = &core.conns
    cdef uint8_t icmp_type = d[p.l4], code = d[p.l4 + 1]
    cdef const lvs_dest *dest
    if (lvs_parse_ip(&orig, d, tunnel.l4, p.ip_end, AF_INET_, False, True) < 0 or orig.fragment
            or (orig.proto != PROTO_TCP_ and orig.proto != PROTO_UDP_) or orig.l4 + 8 > p.ip_end):
        return lvs_pass(core, f, C_ICMP_BAD)
    sport = lvs_get16(d + orig.l4)
    dport = lvs_get16(d + orig.l4 + 2)
    # "For IPIP this is error for request, not for reply": the quote is client -> VIP.
    idx = lvs_conn_in_find(t, orig.proto, 0, d + orig.saddr_off, sport, d + orig.daddr_off, dport, 4)
    if (idx == 0 or lvs_time_after_eq(lvs_ms(core, now), t.entries[idx].expires)
            or lvs_conn_gone(core, &t.entries[idx])
            or ((t.entries[idx].flags >> LVS_CONN_FWD_SHIFT) & 7) != LVS_FWD_TUNNEL
            or memcmp(d + p.daddr_off, d + tunnel.saddr_off, 4) != 0):
        return lvs_pass(core, f, C_ICMP_NOT_CONN)
    c = &t.entries[idx]
    info = lvs_get32(d + p.l4 + 4)
    if icmp_type == 3 and code == 4:
        if not (d[orig.l3 + 6] & 0x40):
            return lvs_drop(core, f, C_ICMP_BAD)     # the client does not do PMTU discovery
        mtu = info & 0xFFFF
        dest = lvs_conn_dest(core, c)
        if dest.has_route and (mtu < 68 or dest.mtu < mtu):
            mtu = dest.mtu                           # the route's (lowered) PMTU is preferred
        if mtu > 68 + 20:
            mtu -= 20
        info = mtu
    core.counters[C_ICMP_TUNNEL] += 1
    return lvs_icmp_error(core, f, &orig, icmp_type, code, info, now, c)


cdef int lvs_l2_to_dest(lvs_core *core, lvs_frame *f, const lvs_dest *dest) noexcept nogil:
    if core.tables.l2:
        memcpy(f.data, dest.dst_mac, 6)
        memcpy(f.data + 6, dest.src_mac, 6)
    f.verdict = LVS_TX
    f.out_ifindex = dest.ifindex
    return LVS_TX


cdef int lvs_encapsulate(lvs_core *core, lvs_frame *f, lvs_pkt *p, const lvs_dest *dest) noexcept nogil:
    """ip_vs_tunnel_xmit: insert an outer IPv4 (proto 4) / IPv6 (next header 41) header."""
    cdef uint32_t hdr = 40 if p.af == AF_INET6_ else 20
    cdef uint32_t inner_len = p.ip_end - p.l3
    cdef uint8_t *o
    cdef uint8_t *inner
    cdef uint8_t df
    if f.headroom < hdr:
        return lvs_drop(core, f, C_NO_ROOM)
    f.data -= hdr
    f.headroom -= hdr
    f.len += hdr
    memmove(f.data, f.data + hdr, p.l3)     # the L2 header moves to the front
    o = f.data + p.l3
    inner = o + hdr
    if p.af == AF_INET_:
        df = inner[6] & 0x40
        o[0] = 0x45
        o[1] = inner[1]
        lvs_put16(o + 2, 20 + inner_len)
        if df:
            lvs_put16(o + 4, 0)
        else:
            o[4] = inner[4]
            o[5] = inner[5]
        lvs_put16(o + 6, 0x4000 if df else 0)
        o[8] = inner[8]
        o[9] = PROTO_IPIP
        memcpy(o + 12, dest.src_addr, 4)
        memcpy(o + 16, dest.addr, 4)
        lvs_ip4_set_checksum(o)
    else:
        lvs_put32(o, (<uint32_t>6 << 28) | (<uint32_t>(((inner[0] & 0x0F) << 4) | (inner[1] >> 4)) << 20))
        lvs_put16(o + 4, inner_len)
        o[6] = PROTO_IPV6
        o[7] = inner[7]
        memcpy(o + 8, dest.src_addr, 16)
        memcpy(o + 24, dest.addr, 16)
    return lvs_l2_to_dest(core, f, dest)


cdef int lvs_forward_in(lvs_core *core, lvs_frame *f, lvs_pkt *p, uint32_t idx, double now,
                        bint csum_partial) noexcept nogil:
    """ip_vs_in after the lookup: stats, state, then the connection's xmit function."""
    cdef lvs_conn *c = &core.conns.entries[idx]
    cdef lvs_dest *dest = lvs_conn_dest(core, c)
    cdef lvs_svc_rec *svc = &core.svc_recs[dest.svc]
    cdef uint32_t ip_len = p.ip_end - p.l3
    cdef int32_t mtu
    cdef uint8_t fwd = (c.flags >> LVS_CONN_FWD_SHIFT) & 7
    cdef uint32_t now_ms = lvs_ms(core, now)
    if not dest.has_route:
        return lvs_drop(core, f, C_NO_ROUTE)
    svc.inpkts += 1
    svc.inbytes += ip_len
    dest.inpkts += 1
    dest.inbytes += ip_len
    lvs_set_state(core, c, p.tcp_flags, 0)
    c.expires = now_ms + lvs_conn_timeout_ms(core, c)
    if fwd == LVS_FWD_LOCALNODE:
        return lvs_pass(core, f, C_LOCAL_NODE)     # ip_vs_null_xmit: the local stack takes it
    if p.d[p.hl_off] <= 1:
        core.counters[C_TTL_EXCEEDED] += 1
        if p.af == AF_INET_:
            return lvs_icmp_error(core, f, p, 11, 0, 0, now)
        return lvs_icmp_error(core, f, p, 3, 0, 0, now)
    lvs_dec_ttl(p)
    mtu = dest.mtu
    if fwd == LVS_FWD_TUNNEL:
        mtu -= 40 if p.af == AF_INET6_ else 20
    if <int32_t>ip_len > mtu:
        if p.af == AF_INET_ and not (p.d[p.l3 + 6] & 0x40):
            return lvs_drop(core, f, C_NEEDS_FRAGMENTATION)
        core.counters[C_FRAG_NEEDED] += 1
        if p.af == AF_INET_:
            return lvs_icmp_error(core, f, p, 3, 4, <uint32_t>mtu, now)
        return lvs_icmp_error(core, f, p, 2, 0, <uint32_t>(mtu if mtu > 1280 else 1280), now)
    core.counters[C_FWD_IN] += 1
    if fwd == LVS_FWD_MASQ:
        lvs_nat_rewrite(p, dest.addr, c.dport, True, csum_partial)
    elif fwd == LVS_FWD_TUNNEL:
        return lvs_encapsulate(core, f, p, dest)
    return lvs_l2_to_dest(core, f, dest)


cdef int lvs_l2_to_client(lvs_core *core, lvs_frame *f, const lvs_conn *c) noexcept nogil:
    cdef const lvs_peer *peer
    cdef const uint8_t *mac
    if c.peer == 0:
        return lvs_drop(core, f, C_NO_ROUTE)
    peer = &core.peers[c.peer]
    if core.tables.l2:
        memcpy(f.data, peer.client_mac, 6)
        mac = lvs_local_mac(core.tables, peer.ifindex)
        memcpy(f.data + 6, mac if mac != NULL else peer.local_mac, 6)
    f.verdict = LVS_TX
    f.out_ifindex = peer.ifindex
    return LVS_TX


cdef int lvs_reply_out(lvs_core *core, lvs_frame *f, lvs_pkt *p, uint32_t idx, double now,
                       bint csum_partial) noexcept nogil:
    """ip_vs_out / handle_response: a NAT reply gets the VIP back as its source."""
    cdef lvs_conn *c = &core.conns.entries[idx]
    cdef lvs_dest *dest = lvs_conn_dest(core, c)
    cdef lvs_svc_rec *svc = &core.svc_recs[dest.svc]
    cdef uint32_t ip_len = p.ip_end - p.l3
    if p.d[p.hl_off] <= 1:
        return lvs_drop(core, f, C_TTL_EXCEEDED)
    lvs_set_state(core, c, p.tcp_flags, 4)
    c.expires = lvs_ms(core, now) + lvs_conn_timeout_ms(core, c)
    lvs_dec_ttl(p)
    svc.outpkts += 1
    svc.outbytes += ip_len
    dest.outpkts += 1
    dest.outbytes += ip_len
    lvs_nat_rewrite(p, lvs_vaddr(&core.conns, idx), c.vport, False, csum_partial)
    core.counters[C_FWD_OUT] += 1
    return lvs_l2_to_client(core, f, c)


# ------------------------------------------------------------------------ ICMP errors in transit
cdef void lvs_icmp_fix_checksum(lvs_pkt *p) noexcept nogil:
    cdef uint8_t *d = p.d
    cdef uint32_t n = p.ip_end - p.l4
    d[p.l4 + 2] = 0
    d[p.l4 + 3] = 0
    if p.af == AF_INET_:
        lvs_put16(d + p.l4 + 2, (~lvs_csum_add(0, d + p.l4, n)) & 0xFFFF)
    else:
        lvs_put16(d + p.l4 + 2, (~lvs_csum_add(
            lvs_pseudo_sum(1, d + p.saddr_off, d + p.daddr_off, PROTO_ICMPV6, n), d + p.l4, n)) & 0xFFFF)


cdef void lvs_set_addr(lvs_pkt *p, bint src, const uint8_t *addr) noexcept nogil:
    memcpy(p.d + (p.saddr_off if src else p.daddr_off), addr, p.alen)
    if p.af == AF_INET_:
        lvs_ip4_set_checksum(p.d + p.l3)


cdef int lvs_icmp(lvs_core *core, lvs_frame *f, lvs_pkt *p, double now) noexcept nogil:
    """ICMP errors quoting a connection (ip_vs_in_icmp / ip_vs_out_icmp)."""
    cdef uint8_t *d = p.d
    cdef uint8_t icmp_type
    cdef bint is_error
    cdef lvs_pkt inner
    cdef uint32_t idx, h, now_ms = lvs_ms(core, now)
    cdef lvs_conn *c
    cdef lvs_dest *dest
    cdef lvs_conntab *t = &core.conns
    cdef uint8_t caddr[16]
    cdef uint8_t fwd
    if p.l4 + 8 > p.ip_end:
        return lvs_pass(core, f, C_PASS_NOT_SERVICE)
    icmp_type = d[p.l4]
    if p.af == AF_INET_:
        is_error = icmp_type == 3 or icmp_type == 11 or icmp_type == 12
    else:
        is_error = icmp_type >= 1 and icmp_type <= 4
    if not is_error:
        return lvs_pass(core, f, C_PASS_NOT_SERVICE)
    if (p.af == AF_INET_ and lvs_parse_ip(&inner, d, p.l4 + 8, p.ip_end, p.af, False, True) == 0
            and inner.proto == PROTO_IPIP and not inner.fragment):
        return lvs_icmp_tunnel(core, f, p, &inner, now)
    if (lvs_parse_ip(&inner, d, p.l4 + 8, p.ip_end, p.af, False, True) < 0 or inner.fragment
            or (inner.proto != PROTO_TCP_ and inner.proto != PROTO_UDP_)
            or inner.l4 + 8 > p.ip_end):
        return lvs_pass(core, f, C_ICMP_BAD)
    inner.sport = lvs_get16(d + inner.l4)
    inner.dport = lvs_get16(d + inner.l4 + 2)
    # in: the quote is our reply VIP -> client; the connection is the quote reversed.
    idx = lvs_conn_in_find(t, inner.proto, 0, d + inner.daddr_off, inner.dport,
                           d + inner.saddr_off, inner.sport, inner.alen)
    if idx and not lvs_time_after_eq(now_ms, t.entries[idx].expires) \
            and memcmp(d + p.daddr_off, lvs_vaddr(t, idx), p.alen) == 0 \
            and not lvs_conn_gone(core, &t.entries[idx]):
        c = &t.entries[idx]
        dest = lvs_conn_dest(core, c)
        if ((c.flags >> LVS_CONN_FWD_SHIFT) & 7) == LVS_FWD_LOCALNODE:
            return lvs_pass(core, f, C_LOCAL_NODE)
        if not dest.has_route:
            return lvs_drop(core, f, C_NO_ROUTE)
        if d[p.hl_off] <= 1:
            return lvs_drop(core, f, C_TTL_EXCEEDED)
        core.counters[C_ICMP_ERROR_IN] += 1
        fwd = (c.flags >> LVS_CONN_FWD_SHIFT) & 7
        if fwd == LVS_FWD_MASQ:
            lvs_set_addr(p, False, dest.addr)
            lvs_set_addr(&inner, True, dest.addr)
            lvs_put16(d + inner.l4, c.dport)
            lvs_dec_ttl(p)
            lvs_icmp_fix_checksum(p)
            return lvs_l2_to_dest(core, f, dest)
        lvs_dec_ttl(p)
        if fwd == LVS_FWD_TUNNEL:
            return lvs_encapsulate(core, f, p, dest)
        return lvs_l2_to_dest(core, f, dest)
    # out: the quote is client -> real server, from the real server's side (NAT only).
    h = lvs_hash_key(inner.proto, d + inner.daddr_off, inner.dport, d + inner.saddr_off,
                     inner.sport, inner.alen) & t.mask
    idx = t.out_heads[h]
    while idx:
        c = &t.entries[idx]
        dest = lvs_conn_dest(core, c)
        if (c.protocol == inner.proto and c.dport == inner.dport and c.cport == inner.sport
                and ((c.flags & LVS_CONN_V6) != 0) == (inner.alen == 16)
                and memcmp(dest.addr, d + inner.daddr_off, inner.alen) == 0
                and memcmp(lvs_caddr(t, idx), d + inner.saddr_off, inner.alen) == 0
                and not lvs_conn_gone(core, c)):
            break
        idx = c.next_out
    if idx and not lvs_time_after_eq(now_ms, t.entries[idx].expires):
        c = &t.entries[idx]
        if d[p.hl_off] <= 1:
            return lvs_drop(core, f, C_TTL_EXCEEDED)
        core.counters[C_ICMP_ERROR_OUT] += 1
        lvs_set_addr(p, True, lvs_vaddr(t, idx))
        lvs_set_addr(&inner, False, lvs_vaddr(t, idx))
        lvs_put16(d + inner.l4 + 2, c.vport)
        lvs_dec_ttl(p)
        lvs_icmp_fix_checksum(p)
        return lvs_l2_to_client(core, f, c)
    return lvs_pass(core, f, C_ICMP_NOT_CONN)


# ------------------------------------------------------------------------ ARP and ND
cdef int lvs_arp(lvs_core *core, lvs_frame *f, uint32_t l3) noexcept nogil:
    cdef uint8_t out[64]
    cdef uint8_t *d = f.data
    cdef const uint8_t *mac
    if f.len < l3 + 28:
        return lvs_drop(core, f, C_L4_TRUNCATED)
    if (lvs_get16(d + l3) != 1 or lvs_get16(d + l3 + 2) != ETHP_IP or d[l3 + 4] != 6
            or d[l3 + 5] != 4 or lvs_get16(d + l3 + 6) != 1):
        return lvs_pass(core, f, C_PASS_NOT_IP)
    mac = lvs_local_mac(core.tables, f.ifindex)
    if mac == NULL or not lvs_is_proxy_vip(core.tables, f.ifindex, AF_INET_, d + l3 + 24, 4):
        return lvs_pass(core, f, C_PASS_NOT_IP)
    core.counters[C_ARP_REPLY] += 1
    memcpy(out, d + 6, 6)
    memcpy(out + 6, mac, 6)
    memcpy(out + 12, d + 12, l3 - 12)
    lvs_put16(out + l3, 1)
    lvs_put16(out + l3 + 2, ETHP_IP)
    out[l3 + 4] = 6
    out[l3 + 5] = 4
    lvs_put16(out + l3 + 6, 2)
    memcpy(out + l3 + 8, mac, 6)
    memcpy(out + l3 + 14, d + l3 + 24, 4)        # our VIP
    memcpy(out + l3 + 18, d + l3 + 8, 10)        # the asker's MAC and address
    return lvs_emit(core, f, out, l3 + 28, LVS_REPLY, f.ifindex)


cdef int lvs_nd(lvs_core *core, lvs_frame *f, lvs_pkt *p) noexcept nogil:
    """A neighbour solicitation for a proxied VIP: answer with an advertisement. -1: not ours."""
    cdef uint8_t out[160]
    cdef uint8_t *d = p.d
    cdef const uint8_t *mac
    cdef uint8_t dst[16]
    cdef bint solicited
    cdef uint32_t ip_off, body
    if p.l4 + 24 > p.ip_end or d[p.l4] != 135 or d[p.l4 + 1] != 0:
        return -1
    mac = lvs_local_mac(core.tables, f.ifindex)
    if mac == NULL or not lvs_is_proxy_vip(core.tables, f.ifindex, AF_INET6_, d + p.l4 + 8, 16):
        return -1
    core.counters[C_ND_ADVERT] += 1
    memset(dst, 0, 16)
    solicited = memcmp(d + p.saddr_off, dst, 16) != 0
    if solicited:
        memcpy(dst, d + p.saddr_off, 16)
        memcpy(out, d + 6, 6)
    else:
        dst[0] = 0xFF
        dst[1] = 0x02
        dst[15] = 0x01
        out[0] = 0x33
        out[1] = 0x33
        out[2] = 0
        out[3] = 0
        out[4] = 0
        out[5] = 1
    memcpy(out + 6, mac, 6)
    memcpy(out + 12, d + 12, p.l3 - 12)
    ip_off = p.l3
    body = ip_off + 40
    out[body] = 136
    out[body + 1] = 0
    out[body + 2] = 0
    out[body + 3] = 0
    lvs_put32(out + body + 4, 0x60000000 if solicited else 0x20000000)
    memcpy(out + body + 8, d + p.l4 + 8, 16)
    out[body + 24] = 2
    out[body + 25] = 1
    memcpy(out + body + 26, mac, 6)
    lvs_put32(out + ip_off, 6 << 28)
    lvs_put16(out + ip_off + 4, 32)
    out[ip_off + 6] = PROTO_ICMPV6
    out[ip_off + 7] = 255
    memcpy(out + ip_off + 8, d + p.l4 + 8, 16)
    memcpy(out + ip_off + 24, dst, 16)
    lvs_put16(out + body + 2, (~lvs_csum_add(
        lvs_pseudo_sum(1, out + ip_off + 8, dst, PROTO_ICMPV6, 32), out + body, 32)) & 0xFFFF)
    return lvs_emit(core, f, out, body + 32, LVS_REPLY, f.ifindex)
