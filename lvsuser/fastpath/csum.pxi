# Internet checksums for the core: RFC 1071 sums and RFC 1624 incremental updates.
#
# All sums here are over 16-bit big-endian words read byte by byte, so the code is independent of
# the host's byte order.  `lvs_csum_replace` is RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), the same
# arithmetic as pyfastpath.csum_replace, so both cores produce identical bytes.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef inline uint32_t lvs_csum_fold(uint64_t total) noexcept nogil:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return <uint32_t>total


cdef inline uint32_t lvs_csum_add(uint32_t initial, const uint8_t *p, uint32_t n) noexcept nogil:
    """One's complement sum (uncomplemented, folded) of n bytes, an odd tail padded with zero."""
    cdef uint64_t total = initial
    cdef uint32_t i = 0
    while i + 1 < n:
        total += (<uint32_t>p[i] << 8) | p[i + 1]
        i += 2
    if i < n:
        total += <uint32_t>p[i] << 8
    return lvs_csum_fold(total)


cdef inline uint16_t lvs_get16(const uint8_t *p) noexcept nogil:
    return <uint16_t>((<uint16_t>p[0] << 8) | p[1])


cdef inline void lvs_put16(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>((v >> 8) & 0xFF)
    p[1] = <uint8_t>(v & 0xFF)


cdef inline uint32_t lvs_get32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void lvs_put32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>((v >> 16) & 0xFF)
    p[2] = <uint8_t>((v >> 8) & 0xFF)
    p[3] = <uint8_t>(v & 0xFF)


cdef inline uint32_t lvs_csum_replace(uint32_t check, const uint8_t *old, const uint8_t *new,
                                      uint32_t n) noexcept nogil:
    """RFC 1624: the checksum `check` after the n (even) bytes `old` became `new`."""
    cdef uint64_t total = (~check) & 0xFFFF
    cdef uint32_t i = 0
    while i < n:
        total += (~((<uint32_t>old[i] << 8) | old[i + 1])) & 0xFFFF
        total += (<uint32_t>new[i] << 8) | new[i + 1]
        i += 2
    return (~lvs_csum_fold(total)) & 0xFFFF


cdef inline uint32_t lvs_csum_replace_partial(uint32_t field, const uint8_t *old, const uint8_t *new,
                                              uint32_t n) noexcept nogil:
    """CHECKSUM_PARTIAL: the field holds the uncomplemented pseudo-header sum; add the change."""
    return (~lvs_csum_replace((~field) & 0xFFFF, old, new, n)) & 0xFFFF


cdef inline uint32_t lvs_pseudo_sum(uint8_t is_v6, const uint8_t *saddr, const uint8_t *daddr,
                                    uint8_t proto, uint32_t length) noexcept nogil:
    cdef uint8_t tail[8]
    cdef uint32_t alen = 16 if is_v6 else 4
    cdef uint32_t total = lvs_csum_add(0, saddr, alen)
    total = lvs_csum_add(total, daddr, alen)
    if is_v6:
        lvs_put32(tail, length)
        tail[4] = 0
        tail[5] = 0
        tail[6] = 0
        tail[7] = proto
        return lvs_csum_add(total, tail, 8)
    tail[0] = 0
    tail[1] = proto
    lvs_put16(tail + 2, length)
    return lvs_csum_add(total, tail, 4)


cdef inline void lvs_ip4_set_checksum(uint8_t *iph) noexcept nogil:
    """ip_send_check: recompute the IPv4 header checksum from scratch."""
    cdef uint32_t ihl = (iph[0] & 0x0F) * 4
    iph[10] = 0
    iph[11] = 0
    lvs_put16(iph + 10, (~lvs_csum_add(0, iph, ihl)) & 0xFFFF)
