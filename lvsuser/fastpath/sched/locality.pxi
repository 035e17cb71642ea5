# lblc and lblcr: locality-based least connection (net/netfilter/ipvs/ip_vs_lblc.c), with
# replication (ip_vs_lblcr.c).
#
# A 1024-bucket chained table maps a destination address to its dest (lblc) or its set of dests
# (lblcr, newest first), bucket = hash_32(ntohl(daddr_fold), 10), new entries at the bucket head:
# the kernel's layout, so that garbage collection walks entries in the kernel's order.
#
# lblc: the cached dest serves while it is in the service, has weight > 0 and is not
#   "overloaded" (activeconns > weight while some dest has activeconns * 2 < weight); otherwise a
#   weighted-least-connection pick replaces the entry.
# lblcr: the set's weighted least-loaded member (that is still in the service) serves unless
#   overloaded; else a fresh pick joins the set.  A set with more than one member unchanged for
#   `expiration` loses its most loaded member.
# Aging: the kernel's 60 s timer is run lazily -- the firings due up to `now` run, at their own
#   times, before each lookup: every 30th firing drops entries idle for `expiration` (24 h); the
#   others drop entries idle for 6 min, from the rover on, only while the table holds > 16384.
# Dests are remembered by identity and re-found on update_service; an entry whose dest left the
# service keeps it as unusable (the kernel's trash), so re-adding the dest revives it.  A removed
# lblcr member keeps the weight and overhead it had at the last update before its removal (the
# kernel reads a trashed dest's live counts; we no longer have them), as the Python twin does.

cdef enum:
    LVS_LOC_TAB_BITS = 10
    LVS_LOC_TAB_SIZE = 1024
    LVS_LOC_TAB_MASK = 1023
    LVS_LOC_MAX_SIZE = 16384
    LVS_LOC_FULL_EVERY = 30

cdef double LVS_LOC_CHECK_INTERVAL = 60.0
cdef double LVS_LOC_ENTRY_TIMEOUT = 360.0
cdef double LVS_LOC_EXPIRATION = 86400.0


cdef struct lvs_loc_member:
    lvs_loc_member *next
    lvs_dest_key key
    int32_t idx                 # index in svc.dests, -1 once the dest left the service
    int32_t ghost_weight        # what a departed member weighs for set_max
    int64_t ghost_overhead


cdef struct lvs_loc_entry:
    lvs_loc_entry *next
    uint8_t addr[16]
    double lastuse
    double lastmod              # lblcr: when the set last changed
    lvs_dest_key dest_key       # lblc: the cached dest
    int32_t dest_idx            # lblc: its index, -1 when not in the service
    lvs_loc_member *members     # lblcr: the set, newest first
    uint32_t num_members


cdef struct lvs_loc_table:
    lvs_loc_entry *bucket[LVS_LOC_TAB_SIZE]
    uint32_t entries
    uint32_t rover
    uint32_t counter
    bint armed                  # the first lookup starts the timer
    double next_check
    lvs_dest_key *keys          # the dests at the last update, for departed members
    int32_t *weights
    int64_t *overheads
    uint32_t num_keys


cdef inline uint32_t lvs_loc_bucket(uint8_t af, const uint8_t *addr) noexcept nogil:
    return lvs_hash_32(lvs_addr_fold(af, addr), LVS_LOC_TAB_BITS)


cdef void lvs_loc_free_entry(lvs_loc_entry *en) noexcept nogil:
    cdef lvs_loc_member *m = en.members
    cdef lvs_loc_member *nxt
    while m != NULL:
        nxt = m.next
        free(m)
        m = nxt
    free(en)


cdef void lvs_loc_sweep(lvs_loc_table *t, double now, double max_idle, int64_t goal,
                        bint bounded) noexcept nogil:
    cdef uint32_t i, j = t.rover
    cdef lvs_loc_entry **link
    cdef lvs_loc_entry *en
    for i in range(LVS_LOC_TAB_SIZE):
        j = (j + 1) & LVS_LOC_TAB_MASK
        link = &t.bucket[j]
        while link[0] != NULL:
            en = link[0]
            if now < en.lastuse + max_idle:
                link = &en.next
                continue
            link[0] = en.next
            lvs_loc_free_entry(en)
            t.entries -= 1
            goal -= 1
        if bounded and goal <= 0:
            break
    t.rover = j


cdef void lvs_loc_age(lvs_loc_table *t, double now) noexcept nogil:
    cdef int64_t due, steps, goal
    if not t.armed:
        t.armed = True
        t.next_check = now + LVS_LOC_CHECK_INTERVAL
        return
    while now >= t.next_check:
        if t.counter % LVS_LOC_FULL_EVERY == 0:
            lvs_loc_sweep(t, t.next_check, LVS_LOC_EXPIRATION, 0, False)
            t.counter = 1
        elif t.entries <= LVS_LOC_MAX_SIZE:
            # Quiet firings only count: jump to the next one that does work.
            due = <int64_t>((now - t.next_check) / LVS_LOC_CHECK_INTERVAL) + 1
            steps = LVS_LOC_FULL_EVERY - t.counter % LVS_LOC_FULL_EVERY
            if due < steps:
                steps = due
            t.counter += <uint32_t>steps
            t.next_check += LVS_LOC_CHECK_INTERVAL * steps
            continue
        else:
            goal = (<int64_t>t.entries - LVS_LOC_MAX_SIZE) * 4 / 3
            if goal > LVS_LOC_MAX_SIZE / 2:
                goal = LVS_LOC_MAX_SIZE / 2
            lvs_loc_sweep(t, t.next_check, LVS_LOC_ENTRY_TIMEOUT, goal, True)
        t.next_check += LVS_LOC_CHECK_INTERVAL


cdef lvs_loc_entry *lvs_loc_get(lvs_loc_table *t, uint8_t af, const uint8_t *addr) noexcept nogil:
    cdef lvs_loc_entry *en = t.bucket[lvs_loc_bucket(af, addr)]
    while en != NULL:
        if memcmp(en.addr, addr, 16) == 0:
            return en
        en = en.next
    return NULL


cdef void lvs_loc_unlink(lvs_loc_table *t, uint8_t af, lvs_loc_entry *target) noexcept nogil:
    cdef lvs_loc_entry **link = &t.bucket[lvs_loc_bucket(af, target.addr)]
    while link[0] != NULL:
        if link[0] == target:
            link[0] = target.next
            t.entries -= 1
            return
        link = &link[0].next


cdef lvs_loc_entry *lvs_loc_new(lvs_loc_table *t, uint8_t af, const uint8_t *addr,
                                double now) noexcept nogil:
    cdef lvs_loc_entry *en = <lvs_loc_entry *>calloc(1, sizeof(lvs_loc_entry))
    cdef uint32_t b
    if en == NULL:
        return NULL   # as the kernel: no cache entry, the pick still stands
    memcpy(en.addr, addr, 16)
    en.lastuse = now
    en.lastmod = now
    en.dest_idx = -1
    b = lvs_loc_bucket(af, addr)
    en.next = t.bucket[b]
    t.bucket[b] = en
    t.entries += 1
    return en


cdef int lvs_loc_snapshot(lvs_loc_table *t, const lvs_service *svc) noexcept nogil:
    cdef lvs_dest_key *keys
    cdef size_t count = svc.num_dests if svc.num_dests else 1
    cdef int32_t *weights = <int32_t *>malloc(count * sizeof(int32_t))
    cdef int64_t *overheads = <int64_t *>malloc(count * sizeof(int64_t))
    cdef uint32_t i
    if weights == NULL or overheads == NULL or lvs_keys_of(svc, &keys) < 0:
        free(weights)
        free(overheads)
        return -1
    for i in range(svc.num_dests):
        weights[i] = svc.dests[i].weight
        overheads[i] = lvs_conn_overhead(svc.dests[i])
    free(t.keys)
    free(t.weights)
    free(t.overheads)
    t.keys = keys
    t.weights = weights
    t.overheads = overheads
    t.num_keys = svc.num_dests
    return 0


cdef int lvs_loc_init(lvs_service *svc) noexcept nogil:
    cdef lvs_loc_table *t = <lvs_loc_table *>calloc(1, sizeof(lvs_loc_table))
    if t == NULL:
        return -1
    t.counter = 1
    if lvs_loc_snapshot(t, svc) < 0:
        free(t)
        return -1
    svc.sched_data = t
    return 0


cdef int lvs_loc_update(lvs_service *svc) noexcept nogil:
    """Re-find every remembered dest in the new dests array."""
    cdef lvs_loc_table *t = <lvs_loc_table *>svc.sched_data
    cdef lvs_dest_key *keys
    cdef lvs_key_index ix
    cdef uint32_t b
    cdef int32_t idx
    cdef lvs_loc_entry *en
    cdef lvs_loc_member *m
    if svc.sched_data == NULL:   # an earlier init failed: start afresh
        return lvs_loc_init(svc)
    if lvs_keys_of(svc, &keys) < 0:
        return -1
    if lvs_key_index_build(&ix, keys, svc.num_dests) < 0:
        free(keys)
        return -1
    for b in range(LVS_LOC_TAB_SIZE):
        en = t.bucket[b]
        while en != NULL:
            en.dest_idx = lvs_key_index_find(&ix, &en.dest_key)
            m = en.members
            while m != NULL:
                idx = lvs_key_index_find(&ix, &m.key)
                if idx < 0 and m.idx >= 0 and <uint32_t>m.idx < t.num_keys:
                    m.ghost_weight = t.weights[m.idx]
                    m.ghost_overhead = t.overheads[m.idx]
                m.idx = idx
                m = m.next
            en = en.next
    lvs_key_index_free(&ix)
    free(keys)
    return lvs_loc_snapshot(t, svc)


cdef void lvs_loc_done(lvs_service *svc) noexcept nogil:
    cdef lvs_loc_table *t = <lvs_loc_table *>svc.sched_data
    cdef uint32_t b
    cdef lvs_loc_entry *en
    cdef lvs_loc_entry *nxt
    if t != NULL:
        for b in range(LVS_LOC_TAB_SIZE):
            en = t.bucket[b]
            while en != NULL:
                nxt = en.next
                lvs_loc_free_entry(en)
                en = nxt
        free(t.keys)
        free(t.weights)
        free(t.overheads)
        free(t)
    svc.sched_data = NULL


cdef bint lvs_loc_is_overloaded(const lvs_service *svc, int32_t idx) noexcept nogil:
    cdef uint32_t i
    if <int64_t>svc.dests[idx].activeconns > svc.dests[idx].weight:
        for i in range(svc.num_dests):
            if <int64_t>svc.dests[i].activeconns * 2 < svc.dests[i].weight:
                return True
    return False


cdef int lvs_lblc_schedule(lvs_service *svc, const lvs_pkt_info *pkt, double now) noexcept nogil:
    cdef lvs_loc_table *t = <lvs_loc_table *>svc.sched_data
    cdef lvs_loc_entry *en
    cdef int32_t idx
    cdef int pick
    if svc.sched_data == NULL:   # init_service failed: no state, no dest
        return -1
    lvs_loc_age(t, now)
    en = lvs_loc_get(t, pkt.af, pkt.daddr)
    if en != NULL:
        en.lastuse = now
        idx = en.dest_idx
        if (idx >= 0 and <uint32_t>idx < svc.num_dests and svc.dests[idx].weight > 0
                and not lvs_loc_is_overloaded(svc, idx)):
            return idx
    pick = lvs_weighted_least(svc, False)
    if pick < 0:
        return -1
    if en != NULL:
        if en.dest_idx == pick:
            return pick
        lvs_loc_unlink(t, pkt.af, en)   # ip_vs_lblc_new replaces the entry
        lvs_loc_free_entry(en)
    en = lvs_loc_new(t, pkt.af, pkt.daddr, now)
    if en != NULL:
        lvs_dest_key_of(&en.dest_key, svc.dests[pick])
        en.dest_idx = pick
    return pick


cdef inline bint lvs_member_present(const lvs_service *svc, const lvs_loc_member *m) noexcept nogil:
    return m.idx >= 0 and <uint32_t>m.idx < svc.num_dests


cdef inline int32_t lvs_member_weight(const lvs_service *svc, const lvs_loc_member *m) noexcept nogil:
    return svc.dests[m.idx].weight if lvs_member_present(svc, m) else m.ghost_weight


cdef inline int64_t lvs_member_overhead(const lvs_service *svc, const lvs_loc_member *m) noexcept nogil:
    return lvs_conn_overhead(svc.dests[m.idx]) if lvs_member_present(svc, m) else m.ghost_overhead


cdef int32_t lvs_set_min(const lvs_service *svc, const lvs_loc_entry *en) noexcept nogil:
    """ip_vs_dest_set_min: weighted least-loaded member still in the service, or -1."""
    cdef const lvs_loc_member *m = en.members
    cdef int32_t least = -1
    cdef int64_t loh = 0, doh
    while m != NULL:
        if not lvs_member_present(svc, m) or lvs_dest_overloaded(svc.dests[m.idx]):
            m = m.next    # a departed member is never available
            continue
        if least < 0:
            if svc.dests[m.idx].weight > 0:
                least = m.idx
                loh = lvs_conn_overhead(svc.dests[least])
        else:
            doh = lvs_conn_overhead(svc.dests[m.idx])
            if loh * svc.dests[m.idx].weight > doh * svc.dests[least].weight:
                least = m.idx
                loh = doh
        m = m.next
    return least


cdef lvs_loc_member *lvs_set_max(const lvs_service *svc, lvs_loc_entry *en) noexcept nogil:
    """ip_vs_dest_set_max: the weighted most-loaded member with weight > 0, or NULL."""
    cdef lvs_loc_member *m = en.members
    cdef lvs_loc_member *most = NULL
    cdef int64_t moh = 0, doh
    cdef int32_t w
    while m != NULL:
        w = lvs_member_weight(svc, m)
        if most == NULL:
            if w > 0:
                most = m
                moh = lvs_member_overhead(svc, m)
        else:
            doh = lvs_member_overhead(svc, m)
            if moh * w < doh * lvs_member_weight(svc, most) and w > 0:
                most = m
                moh = doh
        m = m.next
    return most


cdef void lvs_set_insert(const lvs_service *svc, lvs_loc_entry *en, int32_t idx,
                         double now) noexcept nogil:
    cdef lvs_loc_member *m = en.members
    while m != NULL:
        if m.idx == idx:
            return
        m = m.next
    m = <lvs_loc_member *>calloc(1, sizeof(lvs_loc_member))
    if m == NULL:
        return
    lvs_dest_key_of(&m.key, svc.dests[idx])
    m.idx = idx
    m.next = en.members
    en.members = m
    en.num_members += 1
    en.lastmod = now


cdef void lvs_set_erase(lvs_loc_entry *en, lvs_loc_member *target, double now) noexcept nogil:
    cdef lvs_loc_member **link = &en.members
    while link[0] != NULL:
        if link[0] == target:
            link[0] = target.next
            free(target)
            en.num_members -= 1
            en.lastmod = now
            return
        link = &link[0].next


cdef int lvs_lblcr_schedule(lvs_service *svc, const lvs_pkt_info *pkt, double now) noexcept nogil:
    cdef lvs_loc_table *t = <lvs_loc_table *>svc.sched_data
    cdef lvs_loc_entry *en
    cdef lvs_loc_member *most
    cdef int32_t idx
    cdef int pick
    if svc.sched_data == NULL:   # init_service failed: no state, no dest
        return -1
    lvs_loc_age(t, now)
    en = lvs_loc_get(t, pkt.af, pkt.daddr)
    if en != NULL:
        en.lastuse = now
        idx = lvs_set_min(svc, en)
        if en.num_members > 1 and now > en.lastmod + LVS_LOC_EXPIRATION:
            most = lvs_set_max(svc, en)
            if most != NULL:
                lvs_set_erase(en, most, now)
        if idx >= 0 and not lvs_loc_is_overloaded(svc, idx):
            return idx
        pick = lvs_weighted_least(svc, False)
        if pick < 0:
            return -1
        lvs_set_insert(svc, en, pick, now)
        return pick
    pick = lvs_weighted_least(svc, False)
    if pick < 0:
        return -1
    en = lvs_loc_new(t, pkt.af, pkt.daddr, now)
    if en != NULL:
        lvs_set_insert(svc, en, pick, now)
    return pick


cdef lvs_scheduler lvs_sched_lblc = lvs_scheduler(
    name=b"lblc", init_service=lvs_loc_init, update_service=lvs_loc_update,
    done_service=lvs_loc_done, schedule=lvs_lblc_schedule,
    add_dest=NULL, del_dest=NULL, upd_dest=NULL)
cdef lvs_scheduler lvs_sched_lblcr = lvs_scheduler(
    name=b"lblcr", init_service=lvs_loc_init, update_service=lvs_loc_update,
    done_service=lvs_loc_done, schedule=lvs_lblcr_schedule,
    add_dest=NULL, del_dest=NULL, upd_dest=NULL)
