"""wlc: weighted least connection (ip_vs_wlc.c), the default scheduler.

The dest with the lowest overhead/weight wins, overhead = activeconns * 256 + inactconns.  The
kernel compares ``h1*w2 > h2*w1`` instead of dividing; only a strictly better ratio replaces the
current choice, so ties go to the first in list order.  Weight 0 never wins; overloaded dests
are skipped.
"""
from __future__ import annotations

from typing import Optional

from lvsuser import model
from lvsuser.schedulers import register
from lvsuser.schedulers.base import PacketInfo, Scheduler, conn_overhead, weighted_least


@register
class WeightedLeastConnection(Scheduler):
    name = "wlc"

    def schedule(self, pkt: PacketInfo, now: float) -> Optional[model.Dest]:
        return weighted_least(self.service.dests, conn_overhead)
