# twos: power of two choices (net/netfilter/ipvs/ip_vs_twos.c).
#
# Two weighted random draws r in [0, total weight] walk the list subtracting weights; the first
# dest where r <= 0 is the draw.  The one with the lower overhead/weight wins (the first draw on
# ties).  The PRNG is a per-service xorshift64* (the kernel uses its own): same distribution,
# not the same decisions.

cdef struct lvs_twos_state:
    uint64_t rng


cdef uint64_t lvs_twos_seed_counter = 0x9E3779B97F4A7C15


cdef inline uint64_t lvs_splitmix64(uint64_t x) noexcept nogil:
    x += <uint64_t>0x9E3779B97F4A7C15
    x = (x ^ (x >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * <uint64_t>0x94D049BB133111EB
    return x ^ (x >> 31)


cdef inline uint32_t lvs_twos_next(lvs_twos_state *st) noexcept nogil:
    cdef uint64_t x = st.rng
    x ^= x >> 12
    x ^= x << 25
    x ^= x >> 27
    st.rng = x
    return <uint32_t>((x * <uint64_t>0x2545F4914F6CDD1D) >> 32)


cdef int lvs_twos_init(lvs_service *svc) noexcept nogil:
    global lvs_twos_seed_counter
    cdef lvs_twos_state *st = <lvs_twos_state *>calloc(1, sizeof(lvs_twos_state))
    if st == NULL:
        return -1
    lvs_twos_seed_counter = lvs_splitmix64(lvs_twos_seed_counter ^ <uint64_t><size_t>st)
    st.rng = lvs_twos_seed_counter | 1  # xorshift must not start at 0
    svc.sched_data = st
    return 0


cdef void lvs_twos_done(lvs_service *svc) noexcept nogil:
    free(svc.sched_data)
    svc.sched_data = NULL


cdef int lvs_twos_schedule(lvs_service *svc, const lvs_pkt_info *pkt, double now) noexcept nogil:
    cdef lvs_twos_state *st = <lvs_twos_state *>svc.sched_data
    cdef int64_t i, choice1 = -1, choice2 = -1
    cdef int64_t total = 0, rweight1, rweight2, w
    cdef const lvs_dest *d
    if svc.sched_data == NULL:   # init_service failed: no state, no dest
        return -1
    for i in range(svc.num_dests):
        d = svc.dests[i]
        if not lvs_dest_overloaded(d) and d.weight > 0:
            total += d.weight
    if total == 0:
        return -1
    total += 1  # draws are inclusive of the total
    rweight1 = lvs_twos_next(st) % total
    rweight2 = lvs_twos_next(st) % total
    for i in range(svc.num_dests):
        d = svc.dests[i]
        w = d.weight
        if lvs_dest_overloaded(d) or w <= 0:
            continue
        rweight1 -= w
        rweight2 -= w
        if rweight1 <= 0 and choice1 < 0:
            choice1 = i
        if rweight2 <= 0 and choice2 < 0:
            choice2 = i
        if choice1 >= 0 and choice2 >= 0:
            break
    if (<int64_t>svc.dests[choice2].weight * lvs_conn_overhead(svc.dests[choice1])
            > <int64_t>svc.dests[choice1].weight * lvs_conn_overhead(svc.dests[choice2])):
        return <int>choice2
    return <int>choice1


cdef lvs_scheduler lvs_sched_twos = lvs_scheduler(
    name=b"twos", init_service=lvs_twos_init, update_service=lvs_stateless_update,
    done_service=lvs_twos_done, schedule=lvs_twos_schedule,
    add_dest=lvs_stateless_dest, del_dest=lvs_stateless_dest, upd_dest=lvs_stateless_dest)
