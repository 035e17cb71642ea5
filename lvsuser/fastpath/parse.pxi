# Parsing: Ethernet (+ one 802.1Q tag), IPv4 (options, fragments), IPv6 (extension headers),
# TCP/UDP ports and flags.  Every read is bounds-checked against the packet's own length; a
# malformed frame yields a counter index (C_*), never an out-of-bounds read.
#
# The counters are an array indexed by this enum; the names, in the same order, are
# pyfastpath.COUNTER_NAMES (a unit test checks that both lists agree).

from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t

cdef enum:
    C_RX = 0
    C_PASS_NOT_IP
    C_PASS_NOT_SERVICE
    C_ETH_TRUNCATED
    C_IP_TRUNCATED
    C_IP_BAD_VERSION
    C_IP_BAD_HEADER
    C_IP_BAD_CHECKSUM
    C_IP6_BAD_EXT
    C_FRAGMENT
    C_L4_TRUNCATED
    C_L4_UNSUPPORTED
    C_TCP_NOT_SYN
    C_NO_SCHEDULER
    C_NO_DEST
    C_NO_ROUTE
    C_TABLE_FULL
    C_TTL_EXCEEDED
    C_FRAG_NEEDED
    C_NEEDS_FRAGMENTATION
    C_ICMP_ERROR_IN
    C_ICMP_ERROR_OUT
    C_ICMP_BAD
    C_ICMP_NOT_CONN
    C_ARP_REPLY
    C_ND_ADVERT
    C_CONN_NEW
    C_CONN_REUSED
    C_CONN_EXPIRED
    C_CONN_DEST_GONE
    C_FWD_IN
    C_FWD_OUT
    C_NO_ROOM               # C core only: the frame slot has no room for the result
    C_ICMP_RATELIMITED
    C_ONE_PACKET
    C_LOCAL_NODE
    C_ICMP_TUNNEL
    C_SCHEDULER_ERROR
    C_NUM_COUNTERS

cdef enum:
    LVS_PASS = 0
    LVS_DROP = 1
    LVS_TX = 2
    LVS_REPLY = 3

cdef enum:
    ETHP_IP = 0x0800
    ETHP_IPV6 = 0x86DD
    ETHP_ARP = 0x0806
    ETHP_8021Q = 0x8100
    PROTO_ICMP = 1
    PROTO_IPIP = 4
    PROTO_TCP_ = 6
    PROTO_UDP_ = 17
    PROTO_IPV6 = 41
    PROTO_ICMPV6 = 58
    AF_INET_ = 2
    AF_INET6_ = 10


# One parsed IP packet.  Offsets index `d`; addresses are read at saddr_off/daddr_off.
cdef struct lvs_pkt:
    uint8_t *d
    uint32_t l3              # IP header offset
    uint32_t l4              # transport header offset
    uint32_t ip_end          # end of the IP packet (Ethernet padding excluded)
    uint32_t hl_off          # TTL / hop limit byte
    uint32_t saddr_off
    uint32_t daddr_off
    uint8_t af
    uint8_t alen             # 4 or 16
    uint8_t proto
    uint8_t fragment
    uint8_t tcp_flags
    uint8_t has_ports        # TCP/UDP header present and sane
    uint16_t sport           # host order
    uint16_t dport


cdef int lvs_parse_ip(lvs_pkt *p, uint8_t *d, uint32_t l3, uint32_t avail_end, uint8_t af_hint,
                      bint check_csum, bint quoted=False) noexcept nogil:
    """Parse the IP header at d+l3 (bytes up to avail_end are readable). 0, or -(C_* + 1).
    `quoted`: a packet quoted in an ICMP error, usually cut short -- its length is clipped."""
    cdef uint32_t avail, ihl, total, payload, off, i, need
    cdef uint8_t version, nexthdr
    p.d = d
    p.l3 = l3
    p.fragment = 0
    p.tcp_flags = 0
    p.has_ports = 0
    p.sport = 0
    p.dport = 0
    if avail_end <= l3:
        return -(C_IP_TRUNCATED + 1)
    avail = avail_end - l3
    version = d[l3] >> 4
    if af_hint == AF_INET_ or (af_hint == 0 and version == 4):
        if avail < 20:
            return -(C_IP_TRUNCATED + 1)
        if version != 4:
            return -(C_IP_BAD_VERSION + 1)
        ihl = (d[l3] & 0x0F) * 4
        total = lvs_get16(d + l3 + 2)
        if ihl < 20 or total < ihl:
            return -(C_IP_BAD_HEADER + 1)
        if total > avail:
            if not quoted:
                return -(C_IP_TRUNCATED + 1)
            total = avail
        if check_csum and lvs_csum_add(0, d + l3, ihl) != 0xFFFF:
            return -(C_IP_BAD_CHECKSUM + 1)
        p.af = AF_INET_
        p.alen = 4
        p.ip_end = l3 + total
        p.proto = d[l3 + 9]
        p.saddr_off = l3 + 12
        p.daddr_off = l3 + 16
        p.fragment = (lvs_get16(d + l3 + 6) & 0x3FFF) != 0
        p.l4 = l3 + ihl
        p.hl_off = l3 + 8
    elif af_hint == AF_INET6_ or (af_hint == 0 and version == 6):
        if avail < 40:
            return -(C_IP_TRUNCATED + 1)
        if version != 6:
            return -(C_IP_BAD_VERSION + 1)
        payload = lvs_get16(d + l3 + 4)
        if 40 + payload > avail:
            if not quoted:
                return -(C_IP_TRUNCATED + 1)
            payload = avail - 40
        p.af = AF_INET6_
        p.alen = 16
        p.ip_end = l3 + 40 + payload
        p.saddr_off = l3 + 8
        p.daddr_off = l3 + 24
        p.hl_off = l3 + 7
        nexthdr = d[l3 + 6]
        off = l3 + 40
        i = 0
        while True:
            if i == 8:                      # bounded walk of the extension header chain
                return -(C_IP6_BAD_EXT + 1)
            i += 1
            if nexthdr == 0 or nexthdr == 43 or nexthdr == 60:
                if off + 8 > p.ip_end:
                    return -(C_IP6_BAD_EXT + 1)
                nexthdr = d[off]
                off = off + (<uint32_t>d[off + 1] + 1) * 8
            elif nexthdr == 44:
                if off + 8 > p.ip_end:
                    return -(C_IP6_BAD_EXT + 1)
                if lvs_get16(d + off + 2) & 0xFFF9:
                    p.fragment = 1
                nexthdr = d[off]
                off = off + 8
            else:
                break
        if off > p.ip_end:
            return -(C_IP6_BAD_EXT + 1)
        p.proto = nexthdr
        p.l4 = off
    else:
        return -(C_IP_BAD_VERSION + 1)
    if not p.fragment and (p.proto == PROTO_TCP_ or p.proto == PROTO_UDP_):
        need = 20 if p.proto == PROTO_TCP_ else 8
        if p.l4 + need <= p.ip_end:
            p.sport = lvs_get16(d + p.l4)
            p.dport = lvs_get16(d + p.l4 + 2)
            p.has_ports = 1
            if p.proto == PROTO_TCP_:
                if (d[p.l4 + 12] >> 4) * 4 < 20:
                    p.has_ports = 0
                p.tcp_flags = d[p.l4 + 13]
    return 0
