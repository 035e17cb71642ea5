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


# Open-addressing hash of an array of dest keys -> position; built per update, never per packet.
cdef struct lvs_key_index:
    int32_t *slots            # -1 = empty, else a position in `keys`
    uint32_t mask
    const lvs_dest_key *keys


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


cdef inline bint lvs_key_equal(const lvs_dest_key *a, const lvs_dest_key *b) noexcept nogil:
    return a.port == b.port and a.af == b.af and memcmp(a.addr, b.addr, 16) == 0


cdef inline uint32_t lvs_key_hash(const lvs_dest_key *key) noexcept nogil:
    cdef uint32_t h = lvs_addr_fold(10, key.addr) ^ (<uint32_t>key.port * <uint32_t>0x9E3779B1)
    return (h * <uint32_t>0x61C88647) ^ (h >> 15)


cdef int lvs_keys_of(const lvs_service *svc, lvs_dest_key **out) noexcept nogil:
    """Snapshot the identities of svc.dests into a new array (*out = NULL when empty); -1 = OOM."""
    cdef uint32_t i
    cdef lvs_dest_key *keys = NULL
    if svc.num_dests:
        keys = <lvs_dest_key *>malloc(svc.num_dests * sizeof(lvs_dest_key))
        if keys == NULL:
            return -1
        for i in range(svc.num_dests):
            lvs_dest_key_of(&keys[i], svc.dests[i])
    out[0] = keys
    return 0


cdef int lvs_key_index_build(lvs_key_index *ix, const lvs_dest_key *keys, uint32_t count) noexcept nogil:
    """Index `count` keys by identity; -1 when out of memory."""
    cdef uint32_t size = 16
    cdef uint32_t i, slot
    while size < count * 2:
        size <<= 1
    ix.keys = keys
    ix.slots = <int32_t *>malloc(size * sizeof(int32_t))
    if ix.slots == NULL:
        ix.mask = 0
        return -1
    ix.mask = size - 1
    memset(ix.slots, 0xFF, size * sizeof(int32_t))
    for i in range(count):
        slot = lvs_key_hash(&keys[i]) & ix.mask
        while ix.slots[slot] >= 0:
            slot = (slot + 1) & ix.mask
        ix.slots[slot] = <int32_t>i
    return 0


cdef int32_t lvs_key_index_find(const lvs_key_index *ix, const lvs_dest_key *key) noexcept nogil:
    """Position of the key with this identity, or -1."""
    cdef uint32_t slot
    cdef int32_t i
    if ix.slots == NULL:
        return -1
    slot = lvs_key_hash(key) & ix.mask
    while True:
        i = ix.slots[slot]
        if i < 0:
            return -1
        if lvs_key_equal(&ix.keys[i], key):
            return i
        slot = (slot + 1) & ix.mask


cdef void lvs_key_index_free(lvs_key_index *ix) noexcept nogil:
    free(ix.slots)
    ix.slots = NULL


# Hooks of schedulers that keep no state (lc, wlc, sed, nq, fo, ovf).
cdef int lvs_stateless_init(lvs_service *svc) noexcept nogil:
    svc.sched_data = NULL
    return 0


cdef int lvs_stateless_update(lvs_service *svc) noexcept nogil:
    return 0


cdef void lvs_stateless_done(lvs_service *svc) noexcept nogil:
    svc.sched_data = NULL


cdef int lvs_stateless_dest(lvs_service *svc, lvs_dest *dest) noexcept nogil:
    # add_dest/del_dest/upd_dest of a scheduler whose state does not depend on the change (rr
    # keys its cursor by identity, so an edit in place concerns it no more than lc)
    return 0


# The wlc-family search (ip_vs_wlc.c): the first usable dest, then any with a strictly lower
# overhead/weight, compared as h1*w2 > h2*w1.  use_sed_overhead picks sed's activeconns + 1.
cdef inline int64_t lvs_family_overhead(const lvs_dest *d, bint use_sed_overhead) noexcept nogil:
    if use_sed_overhead:
        return <int64_t>d.activeconns + 1
    return lvs_conn_overhead(d)


cdef int lvs_weighted_least(const lvs_service *svc, bint use_sed_overhead) noexcept nogil:
    cdef int64_t n = svc.num_dests
    cdef int64_t i, least = -1
    cdef int64_t loh = 0, doh
    cdef const lvs_dest *d
    for i in range(n):
        d = svc.dests[i]
        if not lvs_dest_overloaded(d) and d.weight > 0:
            least = i
            loh = lvs_family_overhead(d, use_sed_overhead)
            break
    if least < 0:
        return -1
    for i in range(least + 1, n):
        d = svc.dests[i]
        if lvs_dest_overloaded(d):
            continue
        doh = lvs_family_overhead(d, use_sed_overhead)
        if loh * d.weight > doh * svc.dests[least].weight:
            least = i
            loh = doh
    return <int>least
