"""lc: least connection (ip_vs_lc.c).

The dest with the lowest overhead (activeconns * 256 + inactconns) wins; ties go to the first in
list order.  Weights only matter as 0 = quiesced; overloaded dests are skipped.
"""
from __future__ import annotations

from typing import Optional

from lvsuser import model
from lvsuser.schedulers import register
from lvsuser.schedulers.base import PacketInfo, Scheduler, conn_overhead, overloaded


@register
class LeastConnection(Scheduler):
    name = "lc"

    def schedule(self, pkt: PacketInfo, now: float) -> Optional[model.Dest]:
        least = None
        least_overhead = 0
        for dest in self.service.dests:
            if overloaded(dest) or dest.weight == 0:
                continue
            overhead = conn_overhead(dest)
            if least is None or overhead < least_overhead:
                least = dest
                least_overhead = overhead
        return least
