"""lblcr: locality-based least connection with replication (ip_vs_lblcr.c).

Like lblc, but each destination address maps to a set of dests (newest first).  The set's
least-loaded member (weighted least connection among members still in the service) serves unless
it is "overloaded"; then a fresh pick over all dests is added to the set.  When a set with more
than one member has not changed for ``expiration`` (24 h), its most loaded member is dropped.
A member deleted from the service stays in the set, unusable, as in the kernel's trash.  The
kernel still reads such a dest's weight and (shrinking) connection counts when it picks the most
loaded member to drop; we have no counts for a dest that left the model, so it keeps the weight
and overhead it had at the last update() before it left (the C twin does the same).
"""
from __future__ import annotations

from typing import Optional

from lvsuser import model
from lvsuser.schedulers import register
from lvsuser.schedulers.base import (PacketInfo, Scheduler, conn_overhead, dest_key)
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
        self._last_seen: dict[tuple, tuple[int, int]] = {}  # key -> (weight, overhead)
        self.update()

    def update(self) -> None:
        self._by_key = {dest_key(d): d for d in self.service.dests}
        self._last_seen.update({k: (d.weight, conn_overhead(d)) for k, d in self._by_key.items()})
        self._forget_unreferenced()

    def _set_min(self, entry: LblcrEntry) -> Optional[model.Dest]:
        """ip_vs_dest_set_min: the weighted least-loaded member still in the service."""
        present = (self._by_key.get(key) for key in entry.members)
        # a departed member is never available
        return least_loaded(dest for dest in present if dest is not None)

    def _weight_and_overhead(self, key: tuple) -> tuple[int, int]:
        dest = self._by_key.get(key)
        if dest is not None:
            return dest.weight, conn_overhead(dest)
        return self._last_seen[key]

    def _set_max(self, entry: LblcrEntry) -> Optional[tuple]:
        """ip_vs_dest_set_max: the weighted most-loaded member with weight > 0 (departed too)."""
        most_key = None
        most_weight = most_overhead = 0
        for key in entry.members:
            weight, overhead = self._weight_and_overhead(key)
            if most_key is None:
                if weight > 0:
                    most_key, most_weight, most_overhead = key, weight, overhead
                continue
            if most_overhead * weight < overhead * most_weight and weight > 0:
                most_key, most_weight, most_overhead = key, weight, overhead
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
