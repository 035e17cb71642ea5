# The C schedulers of the datapath, one .pxi per kernel scheduler, and their registry.
#
# Included by lvsuser/_fastpath.pyx.  Each scheduler file defines one `lvs_scheduler`
# (fastpath/types.pxd) whose hooks follow net/netfilter/ipvs/ip_vs_<name>.c.
#
# Life of a service's scheduler state (svc.sched_data):
#   init_service(svc)    once, with the service's first dests array (may be empty)
#   update_service(svc)  after control replaced svc.dests/num_dests (any add/edit/del of a
#                        dest); sched_data must be kept across the swap -- schedulers that
#                        remember dests re-find them by (af, addr, port)
#   add_dest(svc, d) / del_dest(svc, d) / upd_dest(svc, d)
#                        the kernel's per-change hooks, one call per changed dest of this
#                        service only, svc.dests already showing the change (a deleted d is
#                        still readable); NULL = update_service.  Schedulers whose state a
#                        change cannot concern say so (lvs_stateless_dest: lc, wlc, ..., and
#                        rr's upd_dest, since an edit keeps identities and order)
#   svc.dests            pointers to the core's dest slots (types.pxd), which never move
#   schedule(svc, pkt)   per new connection, no GIL: dest index or -1
#   done_service(svc)    frees sched_data and sets it to NULL
# init/update return 0, or -1 when out of memory (the old state then stays usable) or, for mh,
# when there are more dests than its 4093-entry table.  update_service and schedule must not
# run at the same time on one service (control updates between the core's batches); schedule
# only reads the pkt fields it needs: sh/mh saddr (+ sport), dh/lblc/lblcr daddr.

from lvsuser.fastpath.types cimport *

include "common.pxi"
include "rr.pxi"
include "wrr.pxi"
include "leastconn.pxi"
include "locality.pxi"
include "sh.pxi"
include "mh.pxi"
include "twos.pxi"

# Built-in schedulers, in the order `lvs_sched_names` reports them (the kernel's module list).
cdef enum:
    LVS_NUM_BUILTIN_SCHEDULERS = 14
cdef const lvs_scheduler *lvs_builtin_schedulers[LVS_NUM_BUILTIN_SCHEDULERS]
lvs_builtin_schedulers[:] = [&lvs_sched_rr, &lvs_sched_wrr, &lvs_sched_lc, &lvs_sched_wlc,
                             &lvs_sched_lblc, &lvs_sched_lblcr, &lvs_sched_dh, &lvs_sched_sh,
                             &lvs_sched_sed, &lvs_sched_nq, &lvs_sched_fo, &lvs_sched_ovf,
                             &lvs_sched_mh, &lvs_sched_twos]
cdef int lvs_num_builtin_schedulers = LVS_NUM_BUILTIN_SCHEDULERS


cdef const lvs_scheduler *lvs_find_scheduler(const char *name) noexcept nogil:
    """The built-in scheduler called `name`, or NULL."""
    cdef int i
    cdef const char *candidate
    cdef size_t k
    for i in range(lvs_num_builtin_schedulers):
        candidate = lvs_builtin_schedulers[i].name
        k = 0
        while candidate[k] != 0 and candidate[k] == name[k]:
            k += 1
        if candidate[k] == 0 and name[k] == 0:
            return lvs_builtin_schedulers[i]
    return NULL


cdef int lvs_sched_names(const char **out, int capacity) noexcept nogil:
    """Fill `out` with up to `capacity` scheduler names; returns how many schedulers exist."""
    cdef int i
    for i in range(lvs_num_builtin_schedulers):
        if i < capacity:
            out[i] = lvs_builtin_schedulers[i].name
    return lvs_num_builtin_schedulers


def c_scheduler_names():
    """Names of the schedulers the compiled datapath implements."""
    return [lvs_builtin_schedulers[i].name.decode() for i in range(lvs_num_builtin_schedulers)]
