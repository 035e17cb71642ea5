"""ovf: overflow connection (ip_vs_ovf.c).

The highest-weight dest takes connections while its active connections do not exceed its weight;
beyond that they overflow to the next highest.  Precisely: among dests with weight > 0, not
overloaded and activeconns <= weight, the highest weight wins, ties to the first in list order.
"""
from __future__ import annotations

from typing import Optional

from lvsuser import model
from lvsuser.schedulers import register
from lvsuser.schedulers.base import PacketInfo, Scheduler, overloaded


@register
class Overflow(Scheduler):
    name = "ovf"

    def schedule(self, pkt: PacketInfo, now: float) -> Optional[model.Dest]:
        best = None
        best_weight = 0
        for dest in self.service.dests:
            weight = dest.weight
            if overloaded(dest) or dest.activeconns > weight or weight == 0:
                continue
            if best is None or weight > best_weight:
                best = dest
                best_weight = weight
        return best
