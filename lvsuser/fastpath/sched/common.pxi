# Helpers shared by the C schedulers: dest eligibility tests as the kernel words them, the
# kernel's hash functions, and a by-identity index of a service's dests.
#
# Why an identity index: control hands a scheduler a fresh dests array on every change
# (update_service), while some schedulers remember dests across changes (rr's cursor,
# lblc/lblcr's caches).  The kernel remembers struct pointers; we remember (af, addr, port),
# which is what makes a kernel dest the same dest (ip_vs_lookup_dest), and re-find it with
# this index in O(1) when the array changes.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memcmp, memset


# What makes two dests the same dest.
cdef struct lvs_dest_key:
    uint8_t addr[16]
    uint16_t port             # network order
    uint8_t af


# Open-addressing hash of dest keys -> index in svc.dests; built per update, never per packet.
cdef struct lvs_dest_index:
    int32_t *slots            # -1 = empty, else index into the dests array it was built from
    uint32_t mask
    const lvs_dest *dests


cdef inline uint32_t lvs_ntohl_bytes(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3]


cdef inline uint16_t lvs_ntohs(uint16_t net) noexcept nogil:
    # Ports are stored in network order; byte-swap without depending on the host's order.
    cdef const uint8_t *b = <const uint8_t *>&net
    return <uint16_t>((<uint16_t>b[0] << 8) | b[1])


cdef inline uint16_t lvs_htons(uint16_t host) noexcept nogil:
    cdef uint16_t net = 0
    cdef uint8_t *b = <uint8_t *>&net
    b[0] = <uint8_t>(host >> 8)
    b[1] = <uint8_t>(host & 0xFF)
    return net


cdef inline uint32_t lvs_addr_fold(uint8_t af, const uint8_t *addr) noexcept nogil:
    # The kernel's addr_fold in host order: ntohl(ip) for IPv4, ntohl(ip6[0]^ip6[1]^ip6[2]^ip6[3])
    # for IPv6 (xor of the four network-order words, then one byte swap: the same thing).
    if af == 10:
        return (lvs_ntohl_bytes(addr) ^ lvs_ntohl_bytes(addr + 4)
                ^ lvs_ntohl_bytes(addr + 8) ^ lvs_ntohl_bytes(addr + 12))
    return lvs_ntohl_bytes(addr)


cdef inline uint32_t lvs_hash_32(uint32_t val, int bits) noexcept nogil:
    # include/linux/hash.h: multiply by GOLDEN_RATIO_32, keep the top bits.
    return <uint32_t>(val * <uint32_t>0x61C88647) >> (32 - bits)


cdef inline bint lvs_dest_overloaded(const lvs_dest *d) noexcept nogil:
    return (d.flags & LVS_DEST_F_OVERLOAD) != 0


cdef inline int64_t lvs_conn_overhead(const lvs_dest *d) noexcept nogil:
    # ip_vs_dest_conn_overhead: an active connection weighs 256 inactive ones.
    return (<int64_t>d.activeconns << 8) + <int64_t>d.inactconns


cdef inline int lvs_gcd(int a, int b) noexcept nogil:
    cdef int t
    while b:
        t = a % b
        a = b
        b = t
    return a


cdef inline void lvs_dest_key_of(lvs_dest_key *key, const lvs_dest *d) noexcept nogil:
    memcpy(key.addr, d.addr, 16)
    key.port = d.port
    key.af = d.af


cdef inline bint lvs_dest_matches(const lvs_dest *d, const lvs_dest_key *key) noexcept nogil:
    return d.port == key.port and d.af == key.af and memcmp(d.addr, key.addr, 16) == 0


cdef inline uint32_t lvs_dest_key_hash(const uint8_t *addr, uint16_t port) noexcept nogil:
    cdef uint32_t h = lvs_addr_fold(10, addr) ^ (<uint32_t>port * <uint32_t>0x9E3779B1)
    return h * <uint32_t>0x61C88647 ^ (h >> 15)


cdef int lvs_dest_index_build(lvs_dest_index *ix, const lvs_service *svc) noexcept nogil:
    """Index svc.dests by identity; 0 or -1 when out of memory (ix left empty)."""
    cdef uint32_t size = 16
    cdef uint32_t i, slot
    while size < svc.num_dests * 2:
        size <<= 1
    ix.slots = <int32_t *>malloc(size * sizeof(int32_t))
    ix.dests = svc.dests
    if ix.slots == NULL:
        ix.mask = 0
        return -1
    ix.mask = size - 1
    memset(ix.slots, 0xFF, size * sizeof(int32_t))
    for i in range(svc.num_dests):
        slot = lvs_dest_key_hash(svc.dests[i].addr, svc.dests[i].port) & ix.mask
        while ix.slots[slot] >= 0:
            slot = (slot + 1) & ix.mask
        ix.slots[slot] = <int32_t>i
    return 0


cdef int32_t lvs_dest_index_find(const lvs_dest_index *ix, const lvs_dest_key *key) noexcept nogil:
    """Index of the dest with this identity, or -1."""
    cdef uint32_t slot
    cdef int32_t i
    if ix.slots == NULL:
        return -1
    slot = lvs_dest_key_hash(key.addr, key.port) & ix.mask
    while True:
        i = ix.slots[slot]
        if i < 0:
            return -1
        if lvs_dest_matches(&ix.dests[i], key):
            return i
        slot = (slot + 1) & ix.mask


cdef void lvs_dest_index_free(lvs_dest_index *ix) noexcept nogil:
    free(ix.slots)
    ix.slots = NULL
