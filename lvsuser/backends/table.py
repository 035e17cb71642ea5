"""The whole IPVS table in memory, with the kernel's semantics.

Theory of operation
-------------------
Kernel IPVS keeps its virtual services in two hash tables (by protocol/address/port and by
firewall mark) and each service's destinations in a list where new ones are put at the head.
``net/netfilter/ipvs/ip_vs_ctl.c`` decides, operation by operation, which errno a refused request
gets; ``ipvsadm`` turns that errno into its message.  This module reproduces those decisions:

* NEW_SERVICE: EEXIST if the service exists (checked *before* the scheduler), ENOENT for an
  unknown scheduler or persistence engine, EINVAL for an IPv6 netmask outside 1..128.
* SET_SERVICE / DEL_SERVICE / ZERO / *_DEST on a missing service: ESRCH.
* SET_SERVICE replaces scheduler, flags (libipvs sends mask ~0), timeout, netmask and persistence
  engine, and keeps destinations and counters.
* NEW_DEST / SET_DEST: ERANGE for a negative weight or l_threshold > u_threshold (even when
  u_threshold is 0), EINVAL for a GUE tunnel without port, for a destination of another address
  family that is not tunnelled, or for an address that is not unicast; EEXIST / ENOENT for a
  present / missing destination.  DEL_DEST: ENOENT.
* SET_CONFIG (timeouts): zero leaves a value unchanged; negative or too large is EINVAL.

Every public operation takes one lock and either completes or raises ``IPVSError`` having
changed nothing: each runs in a ``transaction()``, which snapshots the table, and restores it if
anything fails -- the operation itself or ``_changed()`` publishing its result.  A batch
(``ipvsadm -R``, ``--rules``) is one transaction around many operations and publishes once.

Copy on write: a stored ``Service`` (with its ``Dest`` objects) is never changed in place once
a transaction has ended.  The first change a transaction makes to a service replaces it with a
copy (``_writable``), which the rest of the transaction may edit.  So a snapshot is a shallow
copy of the dict (its objects stay as they were), a change costs a copy of the one service it
touches whatever the size of the table, and a subclass may publish the stored objects
themselves without copying them (the user-space backend does).

Listing order: ``get_services()`` returns services in the order the kernel's netlink dump walks
them -- bucket by bucket through the service hash table, then the fwmark table, newest first in
each bucket.  The kernel mixes the address of the network namespace into the hash; we take it as
zero, so the order is that of a kernel whose mix happens to be zero (ipvsadm sorts the listing
anyway unless ``--nosort`` is given).

Hooks for subclasses (the user-space backend drives the datapath from them):

* ``_changed()`` runs after every successful change, under the lock (once per transaction);
* ``_fill_live_state(services)`` may fill counters and connection counts into the copies that
  ``get_services()`` returns;
* ``_zero_live_counters(key)`` is called by ``zero()`` (key None: all services);
* ``get_connections()`` returns the connection table (empty here).
"""
from __future__ import annotations

import contextlib
import copy
import errno
import ipaddress
import logging
import threading
from typing import Iterator, Optional

from lvsuser import model
from lvsuser.backends.base import Backend, BatchFailed
from lvsuser.model import (
    AF_INET,
    AF_INET6,
    Dest,
    Forward,
    IPVSError,
    MarkRule,
    Service,
    ServiceKey,
    Stats,
    SyncDaemon,
    Timeouts,
    TunType,
)

log = logging.getLogger("lvsuser.table")

# The schedulers and persistence engines a kernel with all IPVS modules offers.
KERNEL_SCHEDULERS = frozenset(
    {"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos"}
)
KERNEL_PERSISTENCE_ENGINES = frozenset({"sip"})

SVC_TAB_BITS = 8  # IP_VS_SVC_TAB_BITS
SVC_TAB_MASK = (1 << SVC_TAB_BITS) - 1
HZ_TIMEOUT_LIMIT = 2**31 // 1000  # INT_MAX / HZ with HZ=1000: the largest timeout accepted

SCHEDNAME_MAXLEN = 16  # IP_VS_SCHEDNAME_MAXLEN, including the NUL


def _service_hash(svc: Service) -> int:
    """ip_vs_svc_hashkey / ip_vs_svc_fwm_hashkey with the namespace mix taken as 0."""
    if svc.fwmark:
        return svc.fwmark & SVC_TAB_MASK
    packed = svc.addr.packed
    if len(packed) == 16:
        words = [int.from_bytes(packed[i:i + 4], "big") for i in range(0, 16, 4)]
        fold = words[0] ^ words[1] ^ words[2] ^ words[3]
    else:
        fold = int.from_bytes(packed, "big")
    port = svc.port
    return (svc.protocol ^ fold ^ (port >> SVC_TAB_BITS) ^ port) & SVC_TAB_MASK


def _ipv4_unicast(addr: ipaddress.IPv4Address) -> bool:
    """inet_addr_type() is RTN_UNICAST or RTN_LOCAL: not 0/8, not broadcast, not multicast."""
    value = int(addr)
    if value >> 24 == 0 or value == 0xFFFFFFFF:
        return False
    return not addr.is_multicast


def _ipv6_unicast(addr: ipaddress.IPv6Address) -> bool:
    """ipv6_addr_type() says unicast and not link-local (the kernel allows local link-local ones,
    which a user-space director has none of)."""
    if addr.is_unspecified or addr.is_multicast or addr.is_link_local:
        return False
    return True


class TableBackend(Backend):
    """The IPVS table in memory; no packets.  Base class of the user-space backend."""

    name = "table"

    def __init__(self, initial: Optional[list[tuple[str, dict]]] = None) -> None:
        """``initial``: a batch (see ``apply_batch``) that fills the table before anything is
        published -- a director restarting with its saved rules, or a rules file."""
        self._lock = threading.RLock()
        self._services: dict[ServiceKey, Service] = {}
        self._service_age: dict[ServiceKey, int] = {}  # insertion counter: newest first per bucket
        self._next_age = 0
        self._timeouts = Timeouts()
        self._mark_rules: list[MarkRule] = []
        self._transaction_depth = 0
        self._changed_in_transaction = False
        self._fresh: set[ServiceKey] = set()  # services copied (or added) in this transaction
        # Called with the backend, under its lock, after every change that was published (the
        # daemon saves the table from here).  A failure is logged: the change stands.
        self.after_change = None
        if initial:
            self.apply_batch(initial)

    # --- hooks -------------------------------------------------------------------------------
    def _changed(self) -> None:
        """Called under the lock after every successful change (once per transaction)."""

    def _fill_live_state(self, services: list[Service]) -> None:
        """Fill live counters into copies about to be returned; the table has none."""

    def _zero_live_counters(self, key: Optional[ServiceKey]) -> None:
        """Reset live counters of one service (or all when key is None)."""

    def scheduler_known(self, name: str) -> bool:
        if name in KERNEL_SCHEDULERS:
            return True
        try:
            from lvsuser import schedulers
        except Exception:  # the registry is optional here; the kernel list stands alone
            return False
        try:
            return name in set(schedulers.names())
        except Exception:
            return False

    def persistence_engine_known(self, name: str) -> bool:
        return name in KERNEL_PERSISTENCE_ENGINES

    # --- atomicity -----------------------------------------------------------------------------
    def _commit(self) -> None:
        """Mark the table changed; ``_changed()`` runs when the outermost transaction ends."""
        self._changed_in_transaction = True

    def _state(self) -> dict:
        # Shallow: stored services are copied on write (see the module docstring).
        return {
            "services": dict(self._services),
            "ages": dict(self._service_age),
            "next_age": self._next_age,
            "timeouts": copy.copy(self._timeouts),
            "mark_rules": list(self._mark_rules),
        }

    def _set_state(self, snap: dict) -> None:
        self._services = dict(snap["services"])
        self._service_age = dict(snap["ages"])
        self._next_age = snap["next_age"]
        self._timeouts = copy.copy(snap["timeouts"])
        self._mark_rules = list(snap["mark_rules"])
        self._fresh = set()  # the restored objects belong to the snapshot: copy before writing

    def _writable(self, key: ServiceKey) -> Service:
        """The stored service ``key``, safe to change: a copy made at its first change in this
        transaction (ESRCH if there is none)."""
        svc = self._lookup(key)
        if key not in self._fresh:
            svc = copy.copy(svc)
            svc.dests = [copy.copy(dest) for dest in svc.dests]
            self._services[key] = svc
            self._fresh.add(key)
        return svc

    def saved_table(self) -> tuple[list[Service], Timeouts, list[MarkRule]]:
        """What a restart must bring back: the services in the order they were added (each
        with its dests, newest first as listed), the timeouts and the mark rules.  The objects
        are the stored ones: read them, do not change them."""
        with self._lock:
            # _services is in the order services were added (a change rewrites a value in
            # place, which keeps its position), i.e. by age: no sort needed
            return list(self._services.values()), copy.copy(self._timeouts), list(self._mark_rules)

    def is_empty(self) -> bool:
        """No service, no mark rule and the default timeouts: nothing worth keeping."""
        with self._lock:
            return not self._services and not self._mark_rules and self._timeouts == Timeouts()

    def snapshot(self) -> dict:
        """The whole table, to hand back to ``restore_snapshot()`` later."""
        with self._lock:
            return self._state()

    def restore_snapshot(self, snap: dict) -> None:
        with self.transaction():
            self._set_state(snap)
            self._commit()

    @contextlib.contextmanager
    def transaction(self) -> Iterator["TableBackend"]:
        """All-or-nothing: an exception inside -- or from ``_changed()`` publishing the result --
        puts the table back as it was at the start.  Nested transactions join the outer one."""
        with self._lock:
            outer = self._transaction_depth == 0
            snap = self._state() if outer else None
            if outer:
                self._fresh = set()
            self._transaction_depth += 1
            publishing = False
            try:
                yield self
                if outer and self._changed_in_transaction:
                    self._changed_in_transaction = False
                    publishing = True
                    self._changed()
                    if self.after_change is not None:
                        try:
                            self.after_change(self)
                        except Exception:
                            log.exception("saving the changed table failed")
            except BaseException:
                if outer:
                    self._set_state(snap)
                    self._changed_in_transaction = False
                    if publishing:  # the subclass may hold half of the new table: give it the old
                        try:
                            self._changed()
                        except Exception:
                            log.exception("republishing the restored table failed")
                raise
            finally:
                self._transaction_depth -= 1
                if outer:
                    self._fresh = set()

    BATCH_OPERATIONS = frozenset({
        "add_service", "edit_service", "del_service", "flush", "zero", "add_dest", "edit_dest",
        "del_dest", "set_timeouts", "add_mark_rule", "del_mark_rule",
    })

    def apply_batch(self, operations: list[tuple[str, dict]]) -> None:
        """Apply (method name, keyword args) pairs all-or-nothing, publishing once.

        On failure raises ``BatchFailed`` carrying the index of the refused operation; the
        table is then exactly as before the call."""
        with self.transaction():
            for index, (op, kwargs) in enumerate(operations):
                if op not in self.BATCH_OPERATIONS:
                    raise BatchFailed(index, errno.EINVAL, f"operation {op!r} not allowed in a batch")
                try:
                    getattr(self, op)(**kwargs)
                except IPVSError as exc:
                    raise BatchFailed(index, exc.errno, exc.message) from exc

    # --- info --------------------------------------------------------------------------------
    def get_info(self) -> dict:
        return {"version": model.IPVS_VERSION, "conn_tab_size": model.IPVS_CONN_TAB_SIZE}

    # --- services ----------------------------------------------------------------------------
    @staticmethod
    def _check_family(af: int) -> None:
        if af not in (AF_INET, AF_INET6):
            raise IPVSError(errno.EAFNOSUPPORT, "address family not supported")

    def _check_service_key(self, key: ServiceKey) -> None:
        self._check_family(key.af)
        if not key.fwmark:
            if key.addr is None or model.af_of(key.addr) != key.af:
                raise IPVSError(errno.EINVAL, "service address missing or of another family")
            if key.protocol not in model.PROTOCOL_NAMES:
                raise IPVSError(errno.EINVAL, "protocol must be TCP, UDP or SCTP")
            if not 0 <= key.port <= 0xFFFF:
                raise IPVSError(errno.EINVAL, "port out of range")

    def _check_service_settings(self, svc: Service) -> None:
        if not self.scheduler_known(svc.scheduler) or len(svc.scheduler) >= SCHEDNAME_MAXLEN:
            raise IPVSError(errno.ENOENT, f"scheduler {svc.scheduler!r} not found")
        if svc.pe_name and not self.persistence_engine_known(svc.pe_name):
            raise IPVSError(errno.ENOENT, f"persistence engine {svc.pe_name!r} not found")
        if svc.af == AF_INET6 and not 1 <= svc.netmask <= 128:
            raise IPVSError(errno.EINVAL, "IPv6 netmask must be 1..128")
        if svc.af == AF_INET and not 0 <= svc.netmask <= 0xFFFFFFFF:
            raise IPVSError(errno.EINVAL, "IPv4 netmask out of range")
        if not 0 <= svc.timeout <= 0xFFFFFFFF:
            raise IPVSError(errno.EINVAL, "timeout out of range")

    def _lookup(self, key: ServiceKey) -> Service:
        svc = self._services.get(key)
        if svc is None:
            raise IPVSError(errno.ESRCH, "no such service")
        return svc

    def add_service(self, svc: Service) -> None:
        with self.transaction():
            key = svc.key
            self._check_service_key(key)
            if key in self._services:
                raise IPVSError(errno.EEXIST, "service already exists")
            self._check_service_settings(svc)
            stored = Service(
                af=svc.af,
                protocol=model.IPPROTO_TCP if svc.fwmark else svc.protocol,
                addr=None if svc.fwmark else svc.addr,
                port=0 if svc.fwmark else svc.port,
                fwmark=svc.fwmark,
                scheduler=svc.scheduler,
                flags=svc.flags | model.SVC_F_HASHED,
                timeout=svc.timeout,
                netmask=svc.netmask,
                pe_name=svc.pe_name,
            )
            self._services[key] = stored
            self._fresh.add(key)
            self._service_age[key] = self._next_age
            self._next_age += 1
            self._commit()

    def edit_service(self, svc: Service) -> None:
        with self.transaction():
            key = svc.key
            self._check_service_key(key)
            self._lookup(key)
            self._check_service_settings(svc)
            stored = self._writable(key)
            stored.scheduler = svc.scheduler
            stored.flags = svc.flags | model.SVC_F_HASHED
            stored.timeout = svc.timeout
            stored.netmask = svc.netmask
            stored.pe_name = svc.pe_name
            self._commit()

    def del_service(self, key: ServiceKey) -> None:
        with self.transaction():
            self._check_service_key(key)
            self._lookup(key)
            del self._services[key]
            del self._service_age[key]
            self._commit()

    def _dump_order(self) -> list[Service]:
        def position(svc: Service) -> tuple:
            return (1 if svc.fwmark else 0, _service_hash(svc), -self._service_age[svc.key])

        return sorted(self._services.values(), key=position)

    def get_services(self) -> list[Service]:
        with self._lock:
            services = copy.deepcopy(self._dump_order())
            self._fill_live_state(services)
            return services

    def get_service(self, key: ServiceKey) -> Optional[Service]:
        with self._lock:
            svc = self._services.get(key)
            if svc is None:
                return None
            copied = copy.deepcopy(svc)
            self._fill_live_state([copied])
            return copied

    def flush(self) -> None:
        with self.transaction():
            self._services.clear()
            self._service_age.clear()
            self._commit()

    def zero(self, key: Optional[ServiceKey] = None) -> None:
        with self.transaction():
            if key is None:
                keys = list(self._services)
            else:
                self._check_service_key(key)
                self._lookup(key)
                keys = [key]
            for svc in map(self._writable, keys):
                svc.stats = Stats()
                for dest in svc.dests:
                    dest.stats = Stats()
            self._zero_live_counters(key)
            self._commit()

    # --- dests -------------------------------------------------------------------------------
    def _check_dest(self, svc: Service, dest: Dest, full: bool) -> None:
        self._check_family(dest.af)
        if dest.addr is None or model.af_of(dest.addr) != dest.af:
            raise IPVSError(errno.EINVAL, "destination address missing or of another family")
        if not 0 <= dest.port <= 0xFFFF:
            raise IPVSError(errno.EINVAL, "port out of range")
        if not full:
            return
        if dest.af != svc.af and Forward(dest.fwd) != Forward.TUNNEL:
            raise IPVSError(errno.EINVAL, "only tunnelled destinations may be of another family")
        if dest.weight < 0 or dest.weight > 0x7FFFFFFF:
            raise IPVSError(errno.ERANGE, "weight out of range")
        if dest.u_threshold < 0 or dest.l_threshold < 0:
            raise IPVSError(errno.ERANGE, "threshold out of range")
        if dest.l_threshold > dest.u_threshold:
            raise IPVSError(errno.ERANGE, "lower threshold is higher than upper threshold")
        if dest.tun_type == TunType.GUE and dest.tun_port == 0:
            raise IPVSError(errno.EINVAL, "GUE tunnel needs a port")

    @staticmethod
    def _find_dest(svc: Service, dest: Dest) -> Optional[Dest]:
        for existing in svc.dests:
            if existing.af == dest.af and existing.addr == dest.addr and existing.port == dest.port:
                return existing
        return None

    @staticmethod
    def _apply_dest_settings(stored: Dest, dest: Dest) -> None:
        """__ip_vs_update_dest: a lower or removed upper threshold clears the overload flag."""
        stored.fwd = Forward(dest.fwd)
        stored.weight = dest.weight
        if dest.u_threshold == 0 or dest.u_threshold > stored.u_threshold:
            stored.flags &= ~model.DEST_F_OVERLOAD
        stored.u_threshold = dest.u_threshold
        stored.l_threshold = dest.l_threshold
        stored.tun_type = TunType(dest.tun_type)
        stored.tun_port = dest.tun_port
        stored.tun_flags = dest.tun_flags
        stored.flags |= model.DEST_F_AVAILABLE

    def add_dest(self, key: ServiceKey, dest: Dest) -> None:
        with self.transaction():
            self._check_service_key(key)
            svc = self._lookup(key)
            self._check_dest(svc, dest, full=True)
            if self._find_dest(svc, dest) is not None:
                raise IPVSError(errno.EEXIST, "destination already exists")
            unicast = _ipv6_unicast(dest.addr) if dest.af == AF_INET6 else _ipv4_unicast(dest.addr)
            if not unicast:
                raise IPVSError(errno.EINVAL, "destination address is not unicast")
            stored = Dest(addr=dest.addr, port=dest.port, af=dest.af)
            self._apply_dest_settings(stored, dest)
            self._writable(key).dests.insert(0, stored)  # list_add: newest first
            self._commit()

    def edit_dest(self, key: ServiceKey, dest: Dest) -> None:
        with self.transaction():
            self._check_service_key(key)
            svc = self._lookup(key)
            self._check_dest(svc, dest, full=True)
            if self._find_dest(svc, dest) is None:
                raise IPVSError(errno.ENOENT, "no such destination")
            self._apply_dest_settings(self._find_dest(self._writable(key), dest), dest)
            self._commit()

    def del_dest(self, key: ServiceKey, dest: Dest) -> None:
        with self.transaction():
            self._check_service_key(key)
            svc = self._lookup(key)
            self._check_dest(svc, dest, full=False)
            if self._find_dest(svc, dest) is None:
                raise IPVSError(errno.ENOENT, "no such destination")
            svc = self._writable(key)
            svc.dests.remove(self._find_dest(svc, dest))
            self._commit()

    # --- config ------------------------------------------------------------------------------
    def get_timeouts(self) -> Timeouts:
        with self._lock:
            return copy.copy(self._timeouts)

    def set_timeouts(self, timeouts: Timeouts) -> None:
        with self.transaction():
            values = (timeouts.tcp, timeouts.tcp_fin, timeouts.udp)
            if any(v < 0 or v > HZ_TIMEOUT_LIMIT for v in values):
                raise IPVSError(errno.EINVAL, "timeout out of range")
            self._timeouts = copy.copy(self._timeouts)  # the snapshot holds the old object
            if timeouts.tcp:
                self._timeouts.tcp = timeouts.tcp
            if timeouts.tcp_fin:
                self._timeouts.tcp_fin = timeouts.tcp_fin
            if timeouts.udp:
                self._timeouts.udp = timeouts.udp
            self._commit()

    # --- connections -------------------------------------------------------------------------
    def get_connections(self) -> list[dict]:
        return []

    # --- firewall-mark rules -----------------------------------------------------------------
    def add_mark_rule(self, rule: MarkRule) -> None:
        with self.transaction():
            if not 0 < rule.mark <= 0xFFFFFFFF:
                raise IPVSError(errno.EINVAL, "mark must be 1..4294967295")
            if not 0 <= rule.dport_lo <= rule.dport_hi <= 0xFFFF:
                raise IPVSError(errno.EINVAL, "bad port range")
            if rule.src_net is not None and rule.src_net.version != rule.dst_net.version:
                raise IPVSError(errno.EINVAL, "source and destination of different families")
            if rule in self._mark_rules:
                raise IPVSError(errno.EEXIST, "mark rule already exists")
            self._mark_rules.append(rule)
            self._commit()

    def del_mark_rule(self, rule: MarkRule) -> None:
        with self.transaction():
            if rule not in self._mark_rules:
                raise IPVSError(errno.ENOENT, "no such mark rule")
            self._mark_rules.remove(rule)
            self._commit()

    def get_mark_rules(self) -> list[MarkRule]:
        with self._lock:
            return list(self._mark_rules)

    # --- sync daemon -------------------------------------------------------------------------
    def start_daemon(self, daemon: SyncDaemon) -> None:
        raise IPVSError(errno.ENOSYS, "the connection sync daemon is not supported yet")

    def stop_daemon(self, state: str) -> None:
        raise IPVSError(errno.ENOSYS, "the connection sync daemon is not supported yet")

    def get_daemons(self) -> list[SyncDaemon]:
        return []

