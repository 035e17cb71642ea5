"""lblc: locality-based least connection (ip_vs_lblc.c).

Each destination address (think: a cache server per web site) sticks to the dest it was given:
a table maps daddr -> dest.  The cached dest is used while it is still in the service, has weight
> 0 and is not "overloaded" (more active connections than its weight while some dest is less than
half busy); otherwise a fresh weighted-least-connection pick replaces the entry.  Entries age out
as described in locality.py.  Cached dests are remembered by (address, port): a dest deleted and
added again is found again, as the kernel finds it again in its trash.
"""
from __future__ import annotations

from typing import Optional

from lvsuser import model
from lvsuser.schedulers import register
from lvsuser.schedulers.base import PacketInfo, Scheduler, dest_key
from lvsuser.schedulers.locality import LocalityTable, is_overloaded, least_loaded


class LblcEntry:
    __slots__ = ("addr", "dest_key", "lastuse")

    def __init__(self, addr, key, lastuse):
        self.addr = addr
        self.dest_key = key
        self.lastuse = lastuse


@register
class LocalityLeastConnection(Scheduler):
    name = "lblc"

    def __init__(self, service: model.Service):
        super().__init__(service)
        self.table = LocalityTable()
        self.update()

    def update(self) -> None:
        self._by_key = {dest_key(d): d for d in self.service.dests}

    def schedule(self, pkt: PacketInfo, now: float) -> Optional[model.Dest]:
        dests = self.service.dests
        self.table.age(now)
        entry = self.table.get(pkt.daddr)
        if entry is not None:
            entry.lastuse = now
            dest = self._by_key.get(entry.dest_key)
            if dest is not None and dest.weight > 0 and not is_overloaded(dest, dests):
                return dest
        dest = least_loaded(dests)
        if dest is None:
            return None
        key = dest_key(dest)
        if entry is not None:
            if entry.dest_key == key:
                return dest
            self.table.remove(entry)  # ip_vs_lblc_new replaces the entry with a fresh one
        self.table.add(LblcEntry(pkt.daddr, key, now))
        return dest
