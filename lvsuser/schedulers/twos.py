"""twos: power of two choices (ip_vs_twos.c).

Two dests are drawn at random, each with probability proportional to its weight (a draw r in
[0, total weight] walks the list subtracting weights until r <= 0), and the one with the lower
overhead/weight wins (the first draw on ties).  Overloaded and weight-0 dests never take part.
The draws use Python's Mersenne Twister (the kernel uses its own PRNG): decisions agree with the
kernel in distribution, not one by one.
"""
from __future__ import annotations

import random
from typing import Optional

from lvsuser import model
from lvsuser.schedulers import register
from lvsuser.schedulers.base import PacketInfo, Scheduler, conn_overhead, overloaded


@register
class TwoChoices(Scheduler):
    name = "twos"

    def __init__(self, service: model.Service, rng: Optional[random.Random] = None):
        super().__init__(service)
        self.rng = rng or random.Random()

    def schedule(self, pkt: PacketInfo, now: float) -> Optional[model.Dest]:
        candidates = [d for d in self.service.dests if not overloaded(d) and d.weight > 0]
        if not candidates:
            return None
        total = sum(d.weight for d in candidates) + 1  # draws are inclusive of the total
        rweight1 = self.rng.getrandbits(32) % total
        rweight2 = self.rng.getrandbits(32) % total
        choice1 = choice2 = None
        for dest in candidates:
            rweight1 -= dest.weight
            rweight2 -= dest.weight
            if rweight1 <= 0 and choice1 is None:
                choice1 = dest
            if rweight2 <= 0 and choice2 is None:
                choice2 = dest
            if choice1 is not None and choice2 is not None:
                break
        if choice2.weight * conn_overhead(choice1) > choice1.weight * conn_overhead(choice2):
            return choice2
        return choice1
