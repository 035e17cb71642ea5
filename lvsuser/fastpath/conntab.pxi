# The connection table: flat C memory, O(1) lookups both ways, bounded, expiry without stalls.
#
# Theory of operation
# -------------------
# Entries live in one array of 40-byte `lvs_conn` (the kernel's ip_vs_conn is ~300 bytes with
# its timer and locks).  An entry holds IPv4 addresses itself; an IPv6 entry's two addresses live
# at the same index in a side array of 32-byte slots (`v6addrs`), which is only virtual memory
# until IPv6 connections touch it: an all-IPv4 table pays 8 bytes of addresses per entry, not 32.  Index 0 is never used, so 0 means "none" in every link.  Two hash
# tables of uint32 heads chain entries through `next_in` / `next_out`:
#
#   in-hash   (protocol, caddr, cport, vaddr, vport)  -- every connection and every template
#             (templates are keyed <proto, caddr & netmask, 0, vaddr-or-fwmark, vport-or-0>
#             and carry LVS_CONN_TEMPLATE, which lookups compare too);
#   out-hash  (protocol, daddr, dport, caddr, cport)  -- NAT connections only, for replies.
#
# Both tables have as many heads as entries (rounded up to a power of two), so chains stay ~1 long
# at any fill: lookups are flat from 10^3 to 10^7 entries.  Released entries form a stack through
# `next_in`; never-used ones are taken from a high-water mark, so start-up touches no memory.  When the stack is empty the table is full: the packet is dropped and counted
# (C_TABLE_FULL), after one bounded extra sweep has tried to reclaim expired entries.
#
# Expiry: each entry holds `expires` in milliseconds since the core's epoch (uint32: 49 days,
# compared with wrap-safe signed differences).  A lookup that finds an expired entry expires it
# on the spot; a sweep cursor visits a bounded number of slots per batch, and `expire()` a bounded
# number of slots and of freed entries per call (all of them with budget=0), so no call ever
# stalls on a large table.
#
# The real server is not stored: `dest` is its slot in the core's dest pool (core.pxi), which
# stays put while the entry points at it (a reference count); daddr and the service are read
# from the slot.  A rule change never visits entries: an entry whose dest slot is marked gone
# is freed by the next lookup or sweep that meets it.
#
# Layout of lvs_conn (40 bytes; with both hash tables 48..56 bytes an entry in all):
#    0 caddr[4]    4 vaddr[4]   (IPv4; IPv6: v6addrs[idx] = caddr[16] vaddr[16], see lvs_caddr)
#    8 cport      10 vport      12 dport   (host order)    14 protocol   15 state
#   16 flags      18 peer (reverse L2 path, see core.pxi)  20 dest (slot number)
#   24 expires (ms)   28 next_in   32 next_out
#   36 control: real connection -> its template's index; template -> number of controlled conns

from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

cdef enum:
    LVS_CONN_V6 = 0x0001
    LVS_CONN_TEMPLATE = 0x0002
    LVS_CONN_INACTIVE = 0x0004
    LVS_CONN_NOOUTPUT = 0x0008
    LVS_CONN_USED = 0x0010
    LVS_CONN_FWD_SHIFT = 8      # forwarding method in bits 8..10

cdef enum:
    LVS_V6_SLOT = 32            # bytes per index in v6addrs

cdef enum:
    TS_NONE = 0
    TS_ESTABLISHED = 1
    TS_SYN_SENT = 2
    TS_SYN_RECV = 3
    TS_FIN_WAIT = 4
    TS_TIME_WAIT = 5
    TS_CLOSE = 6
    TS_CLOSE_WAIT = 7
    TS_LAST_ACK = 8
    TS_LISTEN = 9
    TS_SYNACK = 10

cdef struct lvs_conn:
    uint8_t caddr[4]
    uint8_t vaddr[4]
    uint16_t cport
    uint16_t vport
    uint16_t dport
    uint8_t protocol
    uint8_t state
    uint16_t flags
    uint16_t peer
    uint32_t dest               # dest pool slot (core.pxi)
    uint32_t expires
    uint32_t next_in
    uint32_t next_out
    uint32_t control

# The table's changing scalars: they live with the entries (in the state mapping when the core
# has one, core.pxi), so a table adopted after a restart is whole.
cdef struct lvs_conntab_vars:
    uint32_t free_head          # stack of released entries, through next_in
    uint32_t high_water         # entries above this were never used (no start-up walk)
    uint32_t count
    uint32_t sweep_cursor


cdef struct lvs_conntab:
    lvs_conn *entries
    uint32_t capacity           # usable entries (index 1..capacity)
    uint32_t *in_heads
    uint32_t *out_heads
    uint8_t *v6addrs            # 32 bytes per index: an IPv6 entry's caddr[16] vaddr[16]
    uint32_t mask
    lvs_conntab_vars *v


# tcp_states[] of ip_vs_proto_tcp.c (see pyfastpath.TCP_STATES), flattened:
# [(direction offset + event) * 11 + current state] -> next state.
cdef uint8_t lvs_tcp_states[132]
lvs_tcp_states[:] = [
    3, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3,     # INPUT syn
    6, 7, 2, 5, 5, 5, 6, 7, 8, 9, 5,     # INPUT fin
    6, 1, 2, 1, 4, 5, 6, 7, 6, 9, 1,     # INPUT ack
    6, 6, 6, 3, 6, 6, 6, 6, 8, 9, 3,     # INPUT rst
    2, 1, 2, 3, 2, 2, 2, 2, 2, 9, 3,     # OUTPUT syn
    5, 4, 2, 5, 4, 5, 6, 5, 8, 9, 5,     # OUTPUT fin
    1, 1, 2, 1, 4, 5, 6, 7, 8, 1, 1,     # OUTPUT ack
    6, 6, 2, 6, 6, 5, 6, 6, 6, 6, 6,     # OUTPUT rst
    3, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3,     # INPUT-ONLY syn
    6, 4, 2, 5, 4, 5, 6, 7, 8, 9, 5,     # INPUT-ONLY fin
    6, 1, 2, 1, 4, 5, 6, 7, 6, 9, 1,     # INPUT-ONLY ack
    6, 6, 6, 3, 6, 6, 6, 6, 8, 9, 6,     # INPUT-ONLY rst
]


cdef inline uint32_t lvs_mix(uint32_t h, uint32_t v) noexcept nogil:
    h ^= v
    h *= <uint32_t>0x9E3779B1
    return h ^ (h >> 15)


cdef inline uint32_t lvs_hash_key(uint8_t protocol, const uint8_t *a1, uint16_t p1,
                                  const uint8_t *a2, uint16_t p2, uint8_t alen) noexcept nogil:
    cdef uint32_t h = lvs_mix(<uint32_t>protocol, (<uint32_t>p1 << 16) | p2)
    cdef uint32_t i = 0
    while i < alen:
        h = lvs_mix(h, lvs_get32(a1 + i))
        h = lvs_mix(h, lvs_get32(a2 + i))
        i += 4
    return h


cdef uint32_t lvs_conntab_hash_size(uint32_t capacity) noexcept nogil:
    """Heads per hash table: the capacity rounded up to a power of two (at least 16)."""
    cdef uint32_t size = 16
    while size < capacity:
        size <<= 1
    return size


cdef void lvs_conntab_attach(lvs_conntab *t, uint32_t capacity, lvs_conn *entries,
                             uint32_t *in_heads, uint32_t *out_heads, uint8_t *v6addrs,
                             lvs_conntab_vars *v) noexcept nogil:
    """Point the table at its memory (zeroed for a new table, or adopted; see core.pxi): the
    memory is only virtual until entries are used, so a large table costs nothing at start."""
    t.entries = entries
    t.in_heads = in_heads
    t.out_heads = out_heads
    t.v6addrs = v6addrs
    t.capacity = capacity
    t.mask = lvs_conntab_hash_size(capacity) - 1
    t.v = v
    if v.sweep_cursor == 0:
        v.sweep_cursor = 1


cdef inline uint8_t *lvs_caddr(lvs_conntab *t, uint32_t idx) noexcept nogil:
    """The client address of entry idx (4 or 16 bytes, by LVS_CONN_V6)."""
    if t.entries[idx].flags & LVS_CONN_V6:
        return t.v6addrs + <size_t>idx * LVS_V6_SLOT
    return t.entries[idx].caddr


cdef inline uint8_t *lvs_vaddr(lvs_conntab *t, uint32_t idx) noexcept nogil:
    """The virtual address of entry idx (4 or 16 bytes, by LVS_CONN_V6)."""
    if t.entries[idx].flags & LVS_CONN_V6:
        return t.v6addrs + <size_t>idx * LVS_V6_SLOT + 16
    return t.entries[idx].vaddr


cdef inline uint32_t lvs_conn_in_find(lvs_conntab *t, uint8_t protocol, uint16_t want_template,
                                      const uint8_t *caddr, uint16_t cport,
                                      const uint8_t *vaddr, uint16_t vport,
                                      uint8_t alen) noexcept nogil:
    """Index of the entry with this in-key (templates only if want_template), or 0."""
    cdef uint32_t i = t.in_heads[lvs_hash_key(protocol, caddr, cport, vaddr, vport, alen) & t.mask]
    cdef lvs_conn *c
    cdef uint16_t af6 = LVS_CONN_V6 if alen == 16 else 0
    while i:
        c = &t.entries[i]
        if (c.protocol == protocol and c.cport == cport and c.vport == vport
                and (c.flags & (LVS_CONN_TEMPLATE | LVS_CONN_V6)) == (want_template | af6)
                and memcmp(lvs_caddr(t, i), caddr, alen) == 0
                and memcmp(lvs_vaddr(t, i), vaddr, alen) == 0):
            return i
        i = c.next_in
    return 0


cdef inline void lvs_conn_unlink_in(lvs_conntab *t, uint32_t idx) noexcept nogil:
    cdef lvs_conn *c = &t.entries[idx]
    cdef uint8_t alen = 16 if c.flags & LVS_CONN_V6 else 4
    cdef uint32_t *link = &t.in_heads[lvs_hash_key(c.protocol, lvs_caddr(t, idx), c.cport,
                                                   lvs_vaddr(t, idx), c.vport, alen) & t.mask]
    while link[0] and link[0] != idx:
        link = &t.entries[link[0]].next_in
    if link[0] == idx:
        link[0] = c.next_in


cdef inline void lvs_conn_link_in(lvs_conntab *t, uint32_t idx) noexcept nogil:
    cdef lvs_conn *c = &t.entries[idx]
    cdef uint8_t alen = 16 if c.flags & LVS_CONN_V6 else 4
    cdef uint32_t h = lvs_hash_key(c.protocol, lvs_caddr(t, idx), c.cport, lvs_vaddr(t, idx),
                                   c.vport, alen) & t.mask
    c.next_in = t.in_heads[h]
    t.in_heads[h] = idx


cdef inline void lvs_conn_link_out(lvs_conntab *t, uint32_t idx, const uint8_t *daddr) noexcept nogil:
    cdef lvs_conn *c = &t.entries[idx]
    cdef uint8_t alen = 16 if c.flags & LVS_CONN_V6 else 4
    cdef uint32_t h = lvs_hash_key(c.protocol, daddr, c.dport, lvs_caddr(t, idx), c.cport,
                                   alen) & t.mask
    c.next_out = t.out_heads[h]
    t.out_heads[h] = idx


cdef inline void lvs_conn_unlink_out(lvs_conntab *t, uint32_t idx, const uint8_t *daddr) noexcept nogil:
    cdef lvs_conn *c = &t.entries[idx]
    cdef uint8_t alen = 16 if c.flags & LVS_CONN_V6 else 4
    cdef uint32_t *link = &t.out_heads[lvs_hash_key(c.protocol, daddr, c.dport, lvs_caddr(t, idx),
                                                    c.cport, alen) & t.mask]
    while link[0] and link[0] != idx:
        link = &t.entries[link[0]].next_out
    if link[0] == idx:
        link[0] = c.next_out


cdef inline uint32_t lvs_conn_alloc(lvs_conntab *t) noexcept nogil:
    cdef uint32_t idx = t.v.free_head
    if idx:
        t.v.free_head = t.entries[idx].next_in
    elif t.v.high_water < t.capacity:
        t.v.high_water += 1
        idx = t.v.high_water
    else:
        return 0
    memset(&t.entries[idx], 0, sizeof(lvs_conn))
    t.entries[idx].flags = LVS_CONN_USED
    t.v.count += 1
    return idx


cdef inline void lvs_conn_release(lvs_conntab *t, uint32_t idx) noexcept nogil:
    t.entries[idx].flags = 0
    t.entries[idx].next_in = t.v.free_head
    t.v.free_head = idx
    t.v.count -= 1


cdef inline bint lvs_time_after_eq(uint32_t a, uint32_t b) noexcept nogil:
    """a >= b on the wrapping millisecond clock."""
    return <int32_t>(a - b) >= 0
