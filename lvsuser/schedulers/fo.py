"""fo: weighted failover (ip_vs_fo.c).

The dest with the highest weight that is not overloaded gets every new connection; ties go to
the first in list order, weight 0 never.
"""
from __future__ import annotations

from typing import Optional

from lvsuser import model
from lvsuser.schedulers import register
from lvsuser.schedulers.base import PacketInfo, Scheduler, overloaded


@register
class WeightedFailover(Scheduler):
    name = "fo"

    def schedule(self, pkt: PacketInfo, now: float) -> Optional[model.Dest]:
        best = None
        best_weight = 0
        for dest in self.service.dests:
            if not overloaded(dest) and dest.weight > best_weight:
                best = dest
                best_weight = dest.weight
        return best
