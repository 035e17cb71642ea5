"""sed: shortest expected delay (ip_vs_sed.c).

Like wlc, but the overhead is activeconns + 1 (the expected delay if this connection joins):
lowest (activeconns + 1) / weight wins, ties to the first in list order.
"""
from __future__ import annotations

from typing import Optional

from lvsuser import model
from lvsuser.schedulers import register
from lvsuser.schedulers.base import PacketInfo, Scheduler, weighted_least


def sed_overhead(dest: model.Dest) -> int:
    return dest.activeconns + 1


@register
class ShortestExpectedDelay(Scheduler):
    name = "sed"

    def schedule(self, pkt: PacketInfo, now: float) -> Optional[model.Dest]:
        return weighted_least(self.service.dests, sed_overhead)
