# mh: Maglev hashing (net/netfilter/ipvs/ip_vs_mh.c).
#
# A 4093-entry lookup table (CONFIG_IP_VS_MH_TAB_INDEX = 12, the kernel's default) of dest
# indices, rebuilt on each dest change: every dest has a permutation (offset = h1 % size,
# skip = h2 % (size - 1) + 1, h1/h2 = hsiphash with the kernel's fixed keys of
# ntohs(port) + ntohl(addr_fold)), and the dests, in list order, take `turns` claims of their next
# free preferred entry per round until the table is full; turns = (last_weight / gcd) >> rshift,
# or 1 for a non-zero weight that shifts to 0.  last_weight is the last non-zero weight a dest
# was given (kept here by identity, as struct ip_vs_dest keeps it), so quiescing a dest keeps its
# entries.  Per packet: one hsiphash and one index (plus the mh-fallback search when needed).

cdef enum:
    LVS_MH_TAB_SIZE = 4093        # primes[CONFIG_IP_VS_MH_TAB_INDEX - 8]
    LVS_MH_TAB_BITS = 6           # CONFIG_IP_VS_MH_TAB_INDEX / 2

# generate_hash_secret(): both words of each hsiphash key are the same constant.
cdef uint64_t LVS_MH_HASH1_KEY = 2654435761
cdef uint64_t LVS_MH_HASH2_KEY = 2654446892

cdef struct lvs_mh_state:
    int32_t lookup[LVS_MH_TAB_SIZE]   # dest index or -1
    lvs_dest_key *keys                # identities at the last update ...
    int32_t *last_weight              # ... and their last non-zero weights
    uint32_t num_keys


cdef inline uint64_t lvs_rotl64(uint64_t v, int s) noexcept nogil:
    return (v << s) | (v >> (64 - s))


cdef inline uint32_t lvs_hsiphash_u32(uint32_t value, uint64_t key0, uint64_t key1) noexcept nogil:
    # lib/siphash.c on 64-bit: SipHash-1-3 of the 4 bytes of `value` (little-endian), low 32 bits.
    cdef uint64_t v0 = <uint64_t>0x736F6D6570736575 ^ key0
    cdef uint64_t v1 = <uint64_t>0x646F72616E646F6D ^ key1
    cdef uint64_t v2 = <uint64_t>0x6C7967656E657261 ^ key0
    cdef uint64_t v3 = <uint64_t>0x7465646279746573 ^ key1
    cdef uint64_t b = (<uint64_t>4 << 56) | value
    cdef int r
    v3 ^= b
    for r in range(4):
        if r == 1:
            v0 ^= b
            v2 ^= 0xFF
        v0 += v1
        v1 = lvs_rotl64(v1, 13) ^ v0
        v0 = lvs_rotl64(v0, 32)
        v2 += v3
        v3 = lvs_rotl64(v3, 16) ^ v2
        v0 += v3
        v3 = lvs_rotl64(v3, 21) ^ v0
        v2 += v1
        v1 = lvs_rotl64(v1, 17) ^ v2
        v2 = lvs_rotl64(v2, 32)
    return <uint32_t>(v0 ^ v1 ^ v2 ^ v3)


cdef inline uint32_t lvs_mh_hashkey(uint8_t af, const uint8_t *addr, uint32_t port, uint64_t key,
                                    uint32_t offset) noexcept nogil:
    return lvs_hsiphash_u32(offset + port + lvs_addr_fold(af, addr), key, key)


cdef void lvs_mh_populate(lvs_mh_state *st, const lvs_service *svc, const int32_t *weights,
                          uint32_t *perm, uint32_t *skip, int32_t *turns,
                          uint8_t *taken) noexcept nogil:
    """ip_vs_mh_permutate + ip_vs_mh_populate with the dests' last weights."""
    cdef uint32_t n = svc.num_dests
    cdef uint32_t i, c, filled
    cdef int32_t g = 0, max_weight = 0, rshift = 0, mw, claims
    for i in range(n):
        if weights[i] > 0:
            g = lvs_gcd(weights[i], g) if g > 0 else weights[i]
            if weights[i] > max_weight:
                max_weight = weights[i]
    if g < 1:
        for i in range(LVS_MH_TAB_SIZE):
            st.lookup[i] = -1
        return
    mw = max_weight / g
    while mw:
        rshift += 1           # ends as fls(max_weight / gcd)
        mw >>= 1
    rshift -= LVS_MH_TAB_BITS
    if rshift < 0:
        rshift = 0
    for i in range(n):
        perm[i] = lvs_mh_hashkey(svc.dests[i].af, svc.dests[i].addr, lvs_ntohs(svc.dests[i].port),
                                 LVS_MH_HASH1_KEY, 0) % LVS_MH_TAB_SIZE
        skip[i] = lvs_mh_hashkey(svc.dests[i].af, svc.dests[i].addr, lvs_ntohs(svc.dests[i].port),
                                 LVS_MH_HASH2_KEY, 0) % (LVS_MH_TAB_SIZE - 1) + 1
        turns[i] = (weights[i] / g) >> rshift
        if turns[i] == 0 and weights[i] != 0:
            turns[i] = 1
    filled = 0
    while filled < LVS_MH_TAB_SIZE:
        i = 0
        claims = 0
        while i < n:
            if turns[i] < 1:
                i += 1
                continue
            c = perm[i]
            while taken[c]:
                c += skip[i]
                if c >= LVS_MH_TAB_SIZE:
                    c -= LVS_MH_TAB_SIZE
            perm[i] = c
            taken[c] = 1
            st.lookup[c] = <int32_t>i
            filled += 1
            if filled == LVS_MH_TAB_SIZE:
                return
            claims += 1
            if claims >= turns[i]:
                claims = 0
                i += 1


cdef int lvs_mh_rebuild(lvs_mh_state *st, const lvs_service *svc) noexcept nogil:
    """Recompute last weights and the lookup table; -1 (state unchanged) when out of memory."""
    cdef uint32_t n = svc.num_dests
    cdef uint32_t i
    cdef int32_t old
    cdef lvs_dest_key *keys = NULL
    cdef lvs_key_index ix
    cdef size_t count = n if n else 1
    if n > LVS_MH_TAB_SIZE:
        return -1
    if lvs_keys_of(svc, &keys) < 0:
        return -1
    cdef int32_t *weights = <int32_t *>malloc(count * sizeof(int32_t))
    cdef uint32_t *perm = <uint32_t *>malloc(count * sizeof(uint32_t))
    cdef uint32_t *skip = <uint32_t *>malloc(count * sizeof(uint32_t))
    cdef int32_t *turns = <int32_t *>malloc(count * sizeof(int32_t))
    cdef uint8_t *taken = <uint8_t *>calloc(LVS_MH_TAB_SIZE, 1)
    if (weights == NULL or perm == NULL or skip == NULL or turns == NULL or taken == NULL
            or lvs_key_index_build(&ix, st.keys, st.num_keys) < 0):
        free(keys)
        free(weights)
        free(perm)
        free(skip)
        free(turns)
        free(taken)
        return -1
    # __ip_vs_update_dest: last_weight follows the weight on add and on non-zero edits.
    for i in range(n):
        old = lvs_key_index_find(&ix, &keys[i])
        if old >= 0 and svc.dests[i].weight == 0:
            weights[i] = st.last_weight[old]
        else:
            weights[i] = svc.dests[i].weight
    lvs_key_index_free(&ix)
    lvs_mh_populate(st, svc, weights, perm, skip, turns, taken)
    free(st.keys)
    free(st.last_weight)
    st.keys = keys
    st.last_weight = weights
    st.num_keys = n
    free(perm)
    free(skip)
    free(turns)
    free(taken)
    return 0


cdef int lvs_mh_init(lvs_service *svc) noexcept nogil:
    cdef lvs_mh_state *st = <lvs_mh_state *>calloc(1, sizeof(lvs_mh_state))
    if st == NULL:
        return -1
    if lvs_mh_rebuild(st, svc) < 0:
        free(st)
        return -1
    svc.sched_data = st
    return 0


cdef int lvs_mh_update(lvs_service *svc) noexcept nogil:
    if svc.sched_data == NULL:   # an earlier init failed: start afresh
        return lvs_mh_init(svc)
    return lvs_mh_rebuild(<lvs_mh_state *>svc.sched_data, svc)


cdef void lvs_mh_done(lvs_service *svc) noexcept nogil:
    cdef lvs_mh_state *st = <lvs_mh_state *>svc.sched_data
    if st != NULL:
        free(st.keys)
        free(st.last_weight)
        free(st)
    svc.sched_data = NULL


cdef int lvs_mh_schedule(lvs_service *svc, const lvs_pkt_info *pkt, double now) noexcept nogil:
    cdef lvs_mh_state *st = <lvs_mh_state *>svc.sched_data
    cdef uint32_t port = 0, ihash, offset, roffset
    cdef int32_t idx
    if svc.sched_data == NULL:   # init_service failed: no state, no dest
        return -1
    if (svc.flags & LVS_SVC_F_SCHED2) and lvs_proto_has_ports(pkt.protocol):
        port = lvs_ntohs(pkt.sport)
    ihash = lvs_mh_hashkey(pkt.af, pkt.saddr, port, LVS_MH_HASH1_KEY, 0) % LVS_MH_TAB_SIZE
    idx = st.lookup[ihash]
    if idx < 0 or idx >= <int32_t>svc.num_dests:
        return -1
    if not lvs_sh_unavailable(svc.dests[idx]):
        return idx
    if not (svc.flags & LVS_SVC_F_SCHED1):
        return -1
    for offset in range(LVS_MH_TAB_SIZE):
        roffset = (offset + ihash) % LVS_MH_TAB_SIZE
        idx = st.lookup[lvs_mh_hashkey(pkt.af, pkt.saddr, port, LVS_MH_HASH1_KEY, roffset)
                        % LVS_MH_TAB_SIZE]
        if idx < 0:
            return -1
        if not lvs_sh_unavailable(svc.dests[idx]):
            return idx
    return -1


cdef lvs_scheduler lvs_sched_mh = lvs_scheduler(
    name=b"mh", init_service=lvs_mh_init, update_service=lvs_mh_update,
    done_service=lvs_mh_done, schedule=lvs_mh_schedule,
    add_dest=NULL, del_dest=NULL, upd_dest=NULL)
