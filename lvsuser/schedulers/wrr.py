"""wrr: weighted round robin (ip_vs_wrr.c).

State: the current dest ``cl`` (or the list head), the current weight ``cw``, the maximum weight
``mw`` and the decrement ``di`` = gcd of the positive weights.  Each pass over the list hands a
connection to every dest whose weight >= cw, then cw drops by di; when cw would reach 0 it
restarts at mw.  Starting at cw = mw, weights 4:3:2 give a a b a b c a b c (a, b, c in list
order).  Every change of
dests resets ``cl`` to the head, recomputes di and mw = max - (di - 1) and keeps cw on the same
step of the cycle (rounded onto the new di).  Overloaded dests are passed over; the search gives up
after checking every dest at weight >= 1 once.

The kernel resets the position only when a dest is added, edited or deleted; ``update()`` calls
that change nothing (the datapath republishes all services when any one changes) are ignored.
"""
from __future__ import annotations

import math
from typing import Optional

from lvsuser import model
from lvsuser.schedulers import register
from lvsuser.schedulers.base import PacketInfo, Scheduler, overloaded


@register
class WeightedRoundRobin(Scheduler):
    name = "wrr"

    def __init__(self, service: model.Service):
        super().__init__(service)
        self.cl = -1  # index of the current dest; -1 = list head
        self.di = self._gcd_weight()
        self.mw = self._max_weight() - (self.di - 1)
        self.cw = self.mw
        self._signature = self._current_signature()

    def _current_signature(self) -> list:
        return [(d.addr, d.port, d.weight, d.u_threshold, d.l_threshold, int(d.fwd))
                for d in self.service.dests]

    def _gcd_weight(self) -> int:
        g = 0
        for dest in self.service.dests:
            if dest.weight > 0:
                g = math.gcd(dest.weight, g) if g > 0 else dest.weight
        return g or 1

    def _max_weight(self) -> int:
        return max([0] + [d.weight for d in self.service.dests])

    def update(self) -> None:
        signature = self._current_signature()
        if signature == self._signature:
            return
        self._signature = signature
        self.cl = -1
        self.di = self._gcd_weight()
        self.mw = self._max_weight() - (self.di - 1)
        if self.cw > self.mw or not self.cw:
            self.cw = self.mw
        elif self.di > 1:
            self.cw = (self.cw // self.di) * self.di + 1

    def schedule(self, pkt: PacketInfo, now: float) -> Optional[model.Dest]:
        dests = self.service.dests
        if self.mw == 0:
            return None
        last = self.cl
        stop = None  # index at which to give up during the final pass
        last_pass = restarted = False
        position = self.cl
        while True:
            for i in range(position + 1, len(dests)):
                dest = dests[i]
                if not overloaded(dest) and dest.weight >= self.cw:
                    self.cl = i
                    return dest
                if i == stop:
                    self.cl = i
                    return None
            position = -1
            self.cw -= self.di
            if self.cw <= 0:
                self.cw = self.mw
                if last_pass or last == -1:
                    self.cl = -1
                    return None
                restarted = True
            last_pass = self.cw <= self.di
            if last_pass and restarted and last != -1:
                stop = last
