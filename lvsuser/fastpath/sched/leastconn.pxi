# The stateless least-connection family and friends, one schedule function each:
#   lc   (ip_vs_lc.c)   lowest activeconns*256 + inactconns; ties to the first in list order
#   wlc  (ip_vs_wlc.c)  lowest overhead/weight, compared as h1*w2 > h2*w1
#   sed  (ip_vs_sed.c)  as wlc with overhead = activeconns + 1
#   nq   (ip_vs_nq.c)   the first idle dest, else as sed
#   fo   (ip_vs_fo.c)   highest weight; ties to the first
#   ovf  (ip_vs_ovf.c)  highest weight among dests with activeconns <= weight
# All skip overloaded dests and weight 0.  Per packet they walk the list once, as the kernel.

cdef int lvs_lc_schedule(lvs_service *svc, const lvs_pkt_info *pkt, double now) noexcept nogil:
    cdef int64_t i, least = -1
    cdef int64_t loh = 0, doh
    cdef const lvs_dest *d
    for i in range(svc.num_dests):
        d = svc.dests[i]
        if lvs_dest_overloaded(d) or d.weight == 0:
            continue
        doh = lvs_conn_overhead(d)
        if least < 0 or doh < loh:
            least = i
            loh = doh
    return <int>least


cdef int lvs_wlc_schedule(lvs_service *svc, const lvs_pkt_info *pkt, double now) noexcept nogil:
    return lvs_weighted_least(svc, False)


cdef int lvs_sed_schedule(lvs_service *svc, const lvs_pkt_info *pkt, double now) noexcept nogil:
    return lvs_weighted_least(svc, True)


cdef int lvs_nq_schedule(lvs_service *svc, const lvs_pkt_info *pkt, double now) noexcept nogil:
    cdef int64_t i, least = -1
    cdef int64_t loh = 0, doh
    cdef const lvs_dest *d
    for i in range(svc.num_dests):
        d = svc.dests[i]
        if lvs_dest_overloaded(d) or d.weight == 0:
            continue
        if d.activeconns == 0:
            return <int>i
        doh = <int64_t>d.activeconns + 1
        if least < 0 or loh * d.weight > doh * svc.dests[least].weight:
            least = i
            loh = doh
    return <int>least


cdef int lvs_fo_schedule(lvs_service *svc, const lvs_pkt_info *pkt, double now) noexcept nogil:
    cdef int64_t i, best = -1
    cdef int32_t best_weight = 0
    cdef const lvs_dest *d
    for i in range(svc.num_dests):
        d = svc.dests[i]
        if not lvs_dest_overloaded(d) and d.weight > best_weight:
            best = i
            best_weight = d.weight
    return <int>best


cdef int lvs_ovf_schedule(lvs_service *svc, const lvs_pkt_info *pkt, double now) noexcept nogil:
    cdef int64_t i, best = -1
    cdef int32_t best_weight = 0, w
    cdef const lvs_dest *d
    for i in range(svc.num_dests):
        d = svc.dests[i]
        w = d.weight
        if lvs_dest_overloaded(d) or <int64_t>d.activeconns > w or w == 0:
            continue
        if best < 0 or w > best_weight:
            best = i
            best_weight = w
    return <int>best


cdef lvs_scheduler lvs_sched_lc = lvs_scheduler(
    name=b"lc", init_service=lvs_stateless_init, update_service=lvs_stateless_update,
    done_service=lvs_stateless_done, schedule=lvs_lc_schedule,
    add_dest=lvs_stateless_dest, del_dest=lvs_stateless_dest, upd_dest=lvs_stateless_dest)
cdef lvs_scheduler lvs_sched_wlc = lvs_scheduler(
    name=b"wlc", init_service=lvs_stateless_init, update_service=lvs_stateless_update,
    done_service=lvs_stateless_done, schedule=lvs_wlc_schedule,
    add_dest=lvs_stateless_dest, del_dest=lvs_stateless_dest, upd_dest=lvs_stateless_dest)
cdef lvs_scheduler lvs_sched_sed = lvs_scheduler(
    name=b"sed", init_service=lvs_stateless_init, update_service=lvs_stateless_update,
    done_service=lvs_stateless_done, schedule=lvs_sed_schedule,
    add_dest=lvs_stateless_dest, del_dest=lvs_stateless_dest, upd_dest=lvs_stateless_dest)
cdef lvs_scheduler lvs_sched_nq = lvs_scheduler(
    name=b"nq", init_service=lvs_stateless_init, update_service=lvs_stateless_update,
    done_service=lvs_stateless_done, schedule=lvs_nq_schedule,
    add_dest=lvs_stateless_dest, del_dest=lvs_stateless_dest, upd_dest=lvs_stateless_dest)
cdef lvs_scheduler lvs_sched_fo = lvs_scheduler(
    name=b"fo", init_service=lvs_stateless_init, update_service=lvs_stateless_update,
    done_service=lvs_stateless_done, schedule=lvs_fo_schedule,
    add_dest=lvs_stateless_dest, del_dest=lvs_stateless_dest, upd_dest=lvs_stateless_dest)
cdef lvs_scheduler lvs_sched_ovf = lvs_scheduler(
    name=b"ovf", init_service=lvs_stateless_init, update_service=lvs_stateless_update,
    done_service=lvs_stateless_done, schedule=lvs_ovf_schedule,
    add_dest=lvs_stateless_dest, del_dest=lvs_stateless_dest, upd_dest=lvs_stateless_dest)
