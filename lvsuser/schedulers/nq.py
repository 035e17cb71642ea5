"""nq: never queue (ip_vs_nq.c).

An idle dest (no active connections) is taken at once, the first in list order; otherwise as sed:
lowest (activeconns + 1) / weight.  Weight 0 and overloaded dests are skipped.
"""
from __future__ import annotations

from typing import Optional

from lvsuser import model
from lvsuser.schedulers import register
from lvsuser.schedulers.base import PacketInfo, Scheduler, overloaded


@register
class NeverQueue(Scheduler):
    name = "nq"

    def schedule(self, pkt: PacketInfo, now: float) -> Optional[model.Dest]:
        least = None
        least_overhead = 0
        for dest in self.service.dests:
            if overloaded(dest) or not dest.weight:
                continue
            overhead = dest.activeconns + 1
            if dest.activeconns == 0:
                return dest
            if least is None or least_overhead * dest.weight > overhead * least.weight:
                least = dest
                least_overhead = overhead
        return least
