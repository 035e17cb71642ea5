"""lblcr: locality-based least connection with replication (ip_vs_lblcr.c).

Like lblc, but each destination address maps to a set of dests (newest first).  The set's
least-loaded member (weighted least connection among members still in the service) serves unless
it is "overloaded"; then a fresh pick over all dests is added to the set.  When a set with more
than one member has not changed for ``expiration`` (24 h), its most loaded member is dropped.
A member deleted from the service stays in the set, unusable, as in the kernel's trash, and keeps
the weight and counters it had (its Dest object).
"""
from __future__ import annotations

from typing import Optional

from lvsuser import model
from lvsuser.schedulers import register
from lvsuser.schedulers.base import (PacketInfo, Scheduler, conn_overhead, dest_key, overloaded)
from lvsuser.schedulers.locality import LocalityTable, is_overloaded, least_loaded


class LblcrEntry:
    __slots__ = ("addr", "members", "lastuse", "lastmod")

    def __init__(self, addr, lastuse):
        self.addr = addr
        self.members: list[tuple] = []  # dest keys, newest first
        self.lastuse = lastuse
        self.lastmod = lastuse

    def insert(self, key: tuple, now: float) -> None:
        if key in self.members:
            return
        self.members.insert(0, key)
        self.lastmod = now

    def erase(self, key: tuple, now: float) -> None:
        if key in self.members:
            self.members.remove(key)
            self.lastmod = now


@register
class LocalityLeastConnectionReplicated(Scheduler):
    name = "lblcr"

    def __init__(self, service: model.Service):
        super().__init__(service)
        self.table = LocalityTable()
        self._last_seen: dict[tuple, model.Dest] = {}
        self.update()

    def update(self) -> None:
        self._by_key = {dest_key(d): d for d in self.service.dests}
        self._last_seen.update(self._by_key)
        self._forget_unreferenced()

    def _member(self, key: tuple) -> tuple[model.Dest, bool]:
        """The member's Dest and whether it is still in the service (IP_VS_DEST_F_AVAILABLE)."""
        dest = self._by_key.get(key)
        if dest is not None:
            return dest, True
        return self._last_seen[key], False

    def _set_min(self, entry: LblcrEntry) -> Optional[model.Dest]:
        least = None
        least_overhead = 0
        for key in entry.members:
            dest, is_available = self._member(key)
            if overloaded(dest):
                continue
            if least is None:
                if dest.weight > 0 and is_available:
                    least = dest
                    least_overhead = conn_overhead(dest)
                continue
            dest_overhead = conn_overhead(dest)
            if least_overhead * dest.weight > dest_overhead * least.weight and is_available:
                least = dest
                least_overhead = dest_overhead
        return least

    def _set_max(self, entry: LblcrEntry) -> Optional[tuple]:
        most = None
        most_key = None
        most_overhead = 0
        for key in entry.members:
            dest, _ = self._member(key)
            if most is None:
                if dest.weight > 0:
                    most, most_key, most_overhead = dest, key, conn_overhead(dest)
                continue
            dest_overhead = conn_overhead(dest)
            if most_overhead * dest.weight < dest_overhead * most.weight and dest.weight > 0:
                most, most_key, most_overhead = dest, key, dest_overhead
        return most_key

    def schedule(self, pkt: PacketInfo, now: float) -> Optional[model.Dest]:
        dests = self.service.dests
        self.table.age(now)
        entry = self.table.get(pkt.daddr)
        if entry is not None:
            entry.lastuse = now
            dest = self._set_min(entry)
            if len(entry.members) > 1 and now > entry.lastmod + self.table.expiration:
                most = self._set_max(entry)
                if most is not None:
                    entry.erase(most, now)
            if dest is not None and not is_overloaded(dest, dests):
                return dest
            dest = least_loaded(dests)
            if dest is None:
                return None
            entry.insert(dest_key(dest), now)
            return dest
        dest = least_loaded(dests)
        if dest is None:
            return None
        entry = LblcrEntry(pkt.daddr, now)
        entry.insert(dest_key(dest), now)
        self.table.add(entry)
        return dest

    def _forget_unreferenced(self) -> None:
        # Deleted dests are kept while some set still names them (the kernel's trash).
        if len(self._last_seen) == len(self._by_key):
            return
        referenced = {k for bucket in self.table.buckets for e in bucket for k in e.members}
        for key in [k for k in self._last_seen if k not in self._by_key and k not in referenced]:
            del self._last_seen[key]
