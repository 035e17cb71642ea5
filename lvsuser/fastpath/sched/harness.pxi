# SchedHarness: drives one C scheduler from Python model objects, so that the unit tests run
# the very same cases on the C schedulers and on their Python twins (lvsuser/schedulers/).
#
# It owns an lvs_service and its dests array, built from a model.Service exactly as control
# builds them for the datapath (addresses and ports in network order, dests in list order).

from cpython.bytes cimport PyBytes_AS_STRING
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset


cdef class SchedHarness:
    """One service scheduled by the C scheduler `name`.

    >>> h = SchedHarness("rr", service)   # init_service with service.dests
    >>> h.update(service)                 # after adding/editing/deleting dests: update_service
    >>> h.refresh(service)                # after counters/flags changed (no scheduler hook)
    >>> h.schedule(af, protocol, saddr, sport, daddr, dport, now)  # dest index or -1
    """

    cdef lvs_service svc
    cdef lvs_dest *storage      # the dests themselves; svc.dests points into it
    cdef bint initialized

    def __cinit__(self, str name, service):
        cdef bytes bname = name.encode()
        memset(&self.svc, 0, sizeof(lvs_service))
        self.svc.sched = lvs_find_scheduler(bname)
        if self.svc.sched == NULL:
            raise ValueError(f"no C scheduler called {name!r}")
        self._load(service)
        if self.svc.sched.init_service(&self.svc) != 0:
            raise ValueError(f"scheduler {name!r} could not set up: out of memory, or more "
                             "dests than its table holds (mh: 4093)")
        self.initialized = True

    def __dealloc__(self):
        if self.initialized and self.svc.sched != NULL:
            self.svc.sched.done_service(&self.svc)
        free(self.svc.dests)
        free(self.storage)
        self.svc.dests = NULL
        self.storage = NULL

    @property
    def name(self):
        return self.svc.sched.name.decode()

    cdef _load(self, service):
        """Rebuild the service fields and the dests array from `service`."""
        cdef list dests = list(service.dests)
        cdef lvs_dest *arr = NULL
        cdef lvs_dest **ptrs = NULL
        cdef Py_ssize_t i
        if dests:
            arr = <lvs_dest *>calloc(len(dests), sizeof(lvs_dest))
            ptrs = <lvs_dest **>calloc(len(dests), sizeof(lvs_dest *))
            if arr == NULL or ptrs == NULL:
                free(arr)
                free(ptrs)
                raise MemoryError()
        for i, dest in enumerate(dests):
            _sched_fill_addr(arr[i].addr, dest.addr)
            arr[i].port = lvs_htons(dest.port)
            arr[i].af = 10 if dest.addr.version == 6 else 2
            arr[i].fwd = int(dest.fwd)
            arr[i].weight = dest.weight
            arr[i].u_threshold = dest.u_threshold
            arr[i].l_threshold = dest.l_threshold
            arr[i].activeconns = dest.activeconns
            arr[i].inactconns = dest.inactconns
            arr[i].persistconns = dest.persistconns
            arr[i].flags = dest.flags
            arr[i].index = <uint32_t>i
            arr[i].slot = <uint32_t>i + 1
            arr[i].state = LVS_SLOT_USED
            ptrs[i] = &arr[i]
        self.svc.af = service.af
        self.svc.protocol = service.protocol
        self.svc.port = lvs_htons(service.port)
        if service.addr is not None:
            _sched_fill_addr(self.svc.addr, service.addr)
        self.svc.fwmark = service.fwmark
        self.svc.flags = service.flags
        self.svc.timeout = service.timeout
        free(self.svc.dests)
        free(self.storage)
        self.svc.dests = ptrs
        self.storage = arr
        self.svc.num_dests = <uint32_t>len(dests)

    def update(self, service):
        """Dests were added, edited or deleted: swap the array and run update_service."""
        self._load(service)
        if self.svc.sched.update_service(&self.svc) != 0:
            raise ValueError("scheduler update failed: out of memory, or more dests than its "
                             "table holds (mh: 4093)")

    def refresh(self, service):
        """Copy run-time state (connection counts, flags) of the same dests, in the same order."""
        cdef Py_ssize_t i
        if len(service.dests) != self.svc.num_dests:
            raise ValueError("refresh() needs the same dests; use update() after changes")
        for i, dest in enumerate(service.dests):
            self.svc.dests[i].activeconns = dest.activeconns
            self.svc.dests[i].inactconns = dest.inactconns
            self.svc.dests[i].persistconns = dest.persistconns
            self.svc.dests[i].flags = dest.flags

    def schedule(self, int af, int protocol, saddr, int sport, daddr, int dport, double now=0.0):
        """Schedule one new connection; returns the chosen dest's index or -1."""
        cdef lvs_pkt_info pkt
        memset(&pkt, 0, sizeof(pkt))
        pkt.af = af
        pkt.protocol = protocol
        pkt.sport = lvs_htons(sport)
        pkt.dport = lvs_htons(dport)
        _sched_fill_addr(pkt.saddr, saddr)
        _sched_fill_addr(pkt.daddr, daddr)
        with nogil:
            result = self.svc.sched.schedule(&self.svc, &pkt, now)
        return result

    def schedule_many(self, int af, int protocol, saddr, int sport, daddr, int dport,
                      long count, double now=0.0):
        """Schedule `count` connections of the same packet facts (for benchmarks); last index."""
        cdef lvs_pkt_info pkt
        cdef long k
        cdef int result = -1
        memset(&pkt, 0, sizeof(pkt))
        pkt.af = af
        pkt.protocol = protocol
        pkt.sport = lvs_htons(sport)
        pkt.dport = lvs_htons(dport)
        _sched_fill_addr(pkt.saddr, saddr)
        _sched_fill_addr(pkt.daddr, daddr)
        with nogil:
            for k in range(count):
                result = self.svc.sched.schedule(&self.svc, &pkt, now)
        return result


cdef _sched_fill_addr(uint8_t *out, addr):
    """Copy an ipaddress object (or its packed bytes) into a 16-byte network-order field."""
    cdef bytes packed = addr if isinstance(addr, bytes) else addr.packed
    if len(packed) not in (4, 16):
        raise ValueError(f"bad address {addr!r}")
    memset(out, 0, 16)
    memcpy(out, PyBytes_AS_STRING(packed), len(packed))
