"""dh: destination hashing (ip_vs_dh.c).

A 256-bucket table maps hash_32(ntohl(daddr_fold), 8) to a dest; it is rebuilt on every dest
change by dealing the buckets to the dests in list order, one each, round and round (weights do
not matter).  A dest that is overloaded or has weight 0 means no dest for that address.
"""
from __future__ import annotations

from typing import Optional

from lvsuser import model
from lvsuser.schedulers import register
from lvsuser.schedulers.base import (PacketInfo, Scheduler, addr_fold, available, hash_32,
                                     overloaded)

TAB_BITS = 8
TAB_SIZE = 1 << TAB_BITS


def dh_hashkey(addr: model.IPAddress) -> int:
    return hash_32(addr_fold(addr), TAB_BITS)


@register
class DestinationHashing(Scheduler):
    name = "dh"

    def __init__(self, service: model.Service):
        super().__init__(service)
        self.update()

    def update(self) -> None:
        dests = list(self.service.dests)
        self.table = [dests[i % len(dests)] if dests else None for i in range(TAB_SIZE)]

    def schedule(self, pkt: PacketInfo, now: float) -> Optional[model.Dest]:
        dest = self.table[dh_hashkey(pkt.daddr)]
        if dest is None or not available(dest) or dest.weight <= 0 or overloaded(dest):
            return None
        return dest
