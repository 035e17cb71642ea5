# sh: source hashing (net/netfilter/ipvs/ip_vs_sh.c); dh: destination hashing (ip_vs_dh.c).
#
# A 256-bucket table of dest indices, rebuilt on every dest change; per packet one hash_32 and
# one index.  sh deals each dest max(weight, 1) consecutive buckets in list order, round and
# round; dh deals one bucket each.  sh hashes ntohs(sport) + ntohl(saddr_fold) (port only with
# sh-port, for TCP/UDP/SCTP); an overloaded or weight-0 dest means no dest, unless sh-fallback
# searches buckets (offset + 2 * hash) & 255 onwards as the kernel's loop does.  dh hashes
# ntohl(daddr_fold) and has no fallback.

cdef enum:
    LVS_SH_TAB_BITS = 8
    LVS_SH_TAB_SIZE = 256
    LVS_SH_TAB_MASK = 255

cdef struct lvs_hash_table_state:
    int32_t bucket[LVS_SH_TAB_SIZE]   # dest index, -1 when the service has no dests


cdef inline bint lvs_sh_unavailable(const lvs_dest *d) noexcept nogil:
    return d.weight <= 0 or lvs_dest_overloaded(d)


cdef void lvs_sh_fill(lvs_hash_table_state *st, const lvs_service *svc, bint weighted) noexcept nogil:
    cdef uint32_t i, position = 0
    cdef int32_t filled = 0
    for i in range(LVS_SH_TAB_SIZE):
        if svc.num_dests == 0:
            st.bucket[i] = -1
            continue
        st.bucket[i] = <int32_t>position
        filled += 1
        if not weighted or filled >= svc.dests[position].weight:
            position += 1
            if position >= svc.num_dests:
                position = 0
            filled = 0


cdef int lvs_sh_init(lvs_service *svc) noexcept nogil:
    cdef lvs_hash_table_state *st = <lvs_hash_table_state *>malloc(sizeof(lvs_hash_table_state))
    if st == NULL:
        return -1
    lvs_sh_fill(st, svc, True)
    svc.sched_data = st
    return 0


cdef int lvs_sh_update(lvs_service *svc) noexcept nogil:
    if svc.sched_data == NULL:   # an earlier init failed: start afresh
        return lvs_sh_init(svc)
    lvs_sh_fill(<lvs_hash_table_state *>svc.sched_data, svc, True)
    return 0


cdef int lvs_dh_init(lvs_service *svc) noexcept nogil:
    cdef lvs_hash_table_state *st = <lvs_hash_table_state *>malloc(sizeof(lvs_hash_table_state))
    if st == NULL:
        return -1
    lvs_sh_fill(st, svc, False)
    svc.sched_data = st
    return 0


cdef int lvs_dh_update(lvs_service *svc) noexcept nogil:
    if svc.sched_data == NULL:   # an earlier init failed: start afresh
        return lvs_dh_init(svc)
    lvs_sh_fill(<lvs_hash_table_state *>svc.sched_data, svc, False)
    return 0


cdef void lvs_hash_table_done(lvs_service *svc) noexcept nogil:
    free(svc.sched_data)
    svc.sched_data = NULL


cdef inline bint lvs_proto_has_ports(uint8_t protocol) noexcept nogil:
    return protocol == 6 or protocol == 17 or protocol == 132


cdef inline uint32_t lvs_sh_hashkey(uint8_t af, const uint8_t *addr, uint32_t port,
                                    uint32_t offset) noexcept nogil:
    return (offset + lvs_hash_32(port + lvs_addr_fold(af, addr), LVS_SH_TAB_BITS)) & LVS_SH_TAB_MASK


cdef int lvs_sh_schedule(lvs_service *svc, const lvs_pkt_info *pkt, double now) noexcept nogil:
    cdef lvs_hash_table_state *st = <lvs_hash_table_state *>svc.sched_data
    cdef uint32_t port = 0, ihash, offset, roffset
    cdef int32_t idx
    if svc.sched_data == NULL:   # init_service failed: no state, no dest
        return -1
    if (svc.flags & LVS_SVC_F_SCHED2) and lvs_proto_has_ports(pkt.protocol):
        port = lvs_ntohs(pkt.sport)
    ihash = lvs_sh_hashkey(pkt.af, pkt.saddr, port, 0)
    idx = st.bucket[ihash]
    if idx < 0 or idx >= <int32_t>svc.num_dests:
        return -1
    if not lvs_sh_unavailable(svc.dests[idx]):
        return idx
    if not (svc.flags & LVS_SVC_F_SCHED1):
        return -1
    for offset in range(LVS_SH_TAB_SIZE):
        roffset = (offset + ihash) % LVS_SH_TAB_SIZE
        idx = st.bucket[lvs_sh_hashkey(pkt.af, pkt.saddr, port, roffset)]
        if not lvs_sh_unavailable(svc.dests[idx]):
            return idx
    return -1


cdef int lvs_dh_schedule(lvs_service *svc, const lvs_pkt_info *pkt, double now) noexcept nogil:
    cdef lvs_hash_table_state *st = <lvs_hash_table_state *>svc.sched_data
    cdef int32_t idx
    cdef const lvs_dest *d
    if svc.sched_data == NULL:   # init_service failed: no state, no dest
        return -1
    idx = st.bucket[lvs_hash_32(lvs_addr_fold(pkt.af, pkt.daddr), LVS_SH_TAB_BITS)]
    if idx < 0 or idx >= <int32_t>svc.num_dests:
        return -1
    d = svc.dests[idx]
    if not (d.flags & LVS_DEST_F_AVAILABLE) or d.weight <= 0 or lvs_dest_overloaded(d):
        return -1
    return idx


cdef lvs_scheduler lvs_sched_sh = lvs_scheduler(
    name=b"sh", init_service=lvs_sh_init, update_service=lvs_sh_update,
    done_service=lvs_hash_table_done, schedule=lvs_sh_schedule,
    add_dest=NULL, del_dest=NULL, upd_dest=NULL)
cdef lvs_scheduler lvs_sched_dh = lvs_scheduler(
    name=b"dh", init_service=lvs_dh_init, update_service=lvs_dh_update,
    done_service=lvs_hash_table_done, schedule=lvs_dh_schedule,
    add_dest=NULL, del_dest=NULL, upd_dest=NULL)
