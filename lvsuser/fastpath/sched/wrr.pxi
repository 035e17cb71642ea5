# wrr: weighted round robin (net/netfilter/ipvs/ip_vs_wrr.c).
#
# State: current dest cl (-1 = list head), current weight cw, max weight mw, decrement di (gcd of
# positive weights).  Each pass over the list serves every dest with weight >= cw, then cw -= di,
# restarting at mw; so 4:3:2 gives a a b a b c a b c.  Dest changes reset cl to the head and
# re-derive di and mw = max - (di - 1), keeping cw on the same step.  The search stops after every
# dest has been tried at weight >= 1 once (all overloaded).  The kernel runs its hook only when a
# dest is added, edited or deleted, so an update_service that changes nothing (the core republishes
# every service when one changes) is recognised by a signature of the dests and ignored.

cdef struct lvs_wrr_state:
    int64_t cl
    int cw
    int mw
    int di
    uint64_t signature          # of the dests' identities, weights, thresholds and methods


cdef inline uint64_t lvs_fnv1a(uint64_t h, const void *data, size_t size) noexcept nogil:
    cdef const uint8_t *p = <const uint8_t *>data
    cdef size_t i
    for i in range(size):
        h = (h ^ p[i]) * <uint64_t>0x100000001B3
    return h


cdef uint64_t lvs_wrr_signature(const lvs_service *svc) noexcept nogil:
    cdef uint64_t h = <uint64_t>0xCBF29CE484222325 ^ svc.num_dests
    cdef uint32_t i
    cdef const lvs_dest *d
    for i in range(svc.num_dests):
        d = svc.dests[i]
        h = lvs_fnv1a(h, d.addr, 16)
        h = lvs_fnv1a(h, &d.port, sizeof(d.port))
        h = lvs_fnv1a(h, &d.weight, sizeof(d.weight))
        h = lvs_fnv1a(h, &d.u_threshold, sizeof(d.u_threshold))
        h = lvs_fnv1a(h, &d.l_threshold, sizeof(d.l_threshold))
        h = lvs_fnv1a(h, &d.fwd, sizeof(d.fwd))
    return h


cdef int lvs_wrr_gcd_weight(const lvs_service *svc) noexcept nogil:
    cdef int g = 0
    cdef uint32_t i
    cdef int w
    for i in range(svc.num_dests):
        w = svc.dests[i].weight
        if w > 0:
            g = lvs_gcd(w, g) if g > 0 else w
    return g if g else 1


cdef int lvs_wrr_max_weight(const lvs_service *svc) noexcept nogil:
    cdef int m = 0
    cdef uint32_t i
    for i in range(svc.num_dests):
        if svc.dests[i].weight > m:
            m = svc.dests[i].weight
    return m


cdef int lvs_wrr_init(lvs_service *svc) noexcept nogil:
    cdef lvs_wrr_state *st = <lvs_wrr_state *>calloc(1, sizeof(lvs_wrr_state))
    if st == NULL:
        return -1
    st.cl = -1
    st.di = lvs_wrr_gcd_weight(svc)
    st.mw = lvs_wrr_max_weight(svc) - (st.di - 1)
    st.cw = st.mw
    st.signature = lvs_wrr_signature(svc)
    svc.sched_data = st
    return 0


cdef int lvs_wrr_update(lvs_service *svc) noexcept nogil:
    cdef lvs_wrr_state *st = <lvs_wrr_state *>svc.sched_data
    cdef uint64_t signature = lvs_wrr_signature(svc)
    if svc.sched_data == NULL:   # an earlier init failed: start afresh
        return lvs_wrr_init(svc)
    if signature == st.signature:
        return 0
    st.signature = signature
    st.cl = -1
    st.di = lvs_wrr_gcd_weight(svc)
    st.mw = lvs_wrr_max_weight(svc) - (st.di - 1)
    if st.cw > st.mw or st.cw == 0:
        st.cw = st.mw
    elif st.di > 1:
        st.cw = (st.cw / st.di) * st.di + 1
    return 0


cdef void lvs_wrr_done(lvs_service *svc) noexcept nogil:
    free(svc.sched_data)
    svc.sched_data = NULL


cdef int lvs_wrr_schedule(lvs_service *svc, const lvs_pkt_info *pkt, double now) noexcept nogil:
    cdef lvs_wrr_state *st = <lvs_wrr_state *>svc.sched_data
    cdef int64_t n = svc.num_dests
    cdef int64_t last, stop = -2, position, i
    cdef bint last_pass = False, restarted = False
    cdef const lvs_dest *d
    if svc.sched_data == NULL:   # init_service failed: no state, no dest
        return -1
    if st.mw == 0:
        return -1
    if st.cl >= n:
        st.cl = -1
    last = st.cl
    position = st.cl
    while True:
        for i in range(position + 1, n):
            d = svc.dests[i]
            if not lvs_dest_overloaded(d) and d.weight >= st.cw:
                st.cl = i
                return <int>i
            if i == stop:
                st.cl = i
                return -1
        position = -1
        st.cw -= st.di
        if st.cw <= 0:
            st.cw = st.mw
            if last_pass or last == -1:
                st.cl = -1
                return -1
            restarted = True
        last_pass = st.cw <= st.di
        if last_pass and restarted and last != -1:
            stop = last


cdef lvs_scheduler lvs_sched_wrr = lvs_scheduler(
    name=b"wrr", init_service=lvs_wrr_init, update_service=lvs_wrr_update,
    done_service=lvs_wrr_done, schedule=lvs_wrr_schedule,
    add_dest=NULL, del_dest=NULL, upd_dest=NULL)
