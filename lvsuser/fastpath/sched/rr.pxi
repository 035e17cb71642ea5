# rr: round robin (net/netfilter/ipvs/ip_vs_rr.c).
#
# The kernel keeps a cursor on the last chosen dest (initially the list head).  A pick scans
# forward from the cursor to the end of the list, then -- unless the cursor is the head --
# from the start up to and including the cursor; the first dest that has weight > 0 and is not
# overloaded wins and becomes the cursor.  New dests go to the list head, so they do not move
# the cursor.  When the cursor's dest is deleted the cursor steps back to the entry before it
# (ip_vs_rr_del_dest), so the dest that followed it is next.  We keep a snapshot of the list
# taken at each update to find that predecessor when several dests go at once.

cdef struct lvs_rr_state:
    int64_t cursor            # index of the last chosen dest in svc.dests, -1 = list head
    lvs_dest_key *keys        # svc.dests' identities at the last init/update
    uint32_t num_keys


cdef int lvs_rr_init(lvs_service *svc) noexcept nogil:
    cdef lvs_rr_state *st = <lvs_rr_state *>calloc(1, sizeof(lvs_rr_state))
    if st == NULL:
        return -1
    st.cursor = -1
    if lvs_keys_of(svc, &st.keys) < 0:
        free(st)
        return -1
    st.num_keys = svc.num_dests
    svc.sched_data = st
    return 0


cdef int lvs_rr_update(lvs_service *svc) noexcept nogil:
    cdef lvs_rr_state *st = <lvs_rr_state *>svc.sched_data
    cdef lvs_dest_key *keys
    cdef lvs_key_index ix
    cdef int64_t i, found = -1
    if svc.sched_data == NULL:   # an earlier init failed: start afresh
        return lvs_rr_init(svc)
    if lvs_keys_of(svc, &keys) < 0:
        return -1
    if lvs_key_index_build(&ix, keys, svc.num_dests) < 0:
        free(keys)
        return -1
    # The cursor's dest, or the nearest surviving dest before it in the old list.
    i = st.cursor
    while i >= 0 and i < st.num_keys:
        found = lvs_key_index_find(&ix, &st.keys[i])
        if found >= 0:
            break
        i -= 1
    lvs_key_index_free(&ix)
    free(st.keys)
    st.keys = keys
    st.num_keys = svc.num_dests
    st.cursor = found
    return 0


cdef void lvs_rr_done(lvs_service *svc) noexcept nogil:
    cdef lvs_rr_state *st = <lvs_rr_state *>svc.sched_data
    if st != NULL:
        free(st.keys)
        free(st)
    svc.sched_data = NULL


cdef inline bint lvs_rr_usable(const lvs_dest *d) noexcept nogil:
    return not lvs_dest_overloaded(d) and d.weight > 0


cdef int lvs_rr_schedule(lvs_service *svc, const lvs_pkt_info *pkt, double now) noexcept nogil:
    cdef lvs_rr_state *st = <lvs_rr_state *>svc.sched_data
    cdef int64_t n = svc.num_dests
    cdef int64_t cursor, i
    if svc.sched_data == NULL:   # init_service failed: no state, no dest
        return -1
    cursor = st.cursor
    if cursor >= n:
        cursor = -1
    for i in range(cursor + 1, n):
        if lvs_rr_usable(svc.dests[i]):
            st.cursor = i
            return <int>i
    if cursor >= 0:
        for i in range(0, cursor + 1):
            if lvs_rr_usable(svc.dests[i]):
                st.cursor = i
                return <int>i
    return -1


cdef lvs_scheduler lvs_sched_rr = lvs_scheduler(
    name=b"rr", init_service=lvs_rr_init, update_service=lvs_rr_update,
    done_service=lvs_rr_done, schedule=lvs_rr_schedule,
    add_dest=NULL, del_dest=NULL, upd_dest=lvs_stateless_dest)
