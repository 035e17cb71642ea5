"""rr: round robin (ip_vs_rr.c).

A cursor remembers the last chosen dest (initially the list head).  A pick scans from the dest
after the cursor to the end of the list, then -- unless the cursor is the head -- from the start
up to and including the cursor; the first dest with weight > 0 that is not overloaded wins and
becomes the cursor.  New dests enter at the list head and leave the cursor alone; deleting the
cursor's dest steps the cursor back to the dest before it, so the one after it comes next.
"""
from __future__ import annotations

import itertools
from typing import Optional

from lvsuser import model
from lvsuser.schedulers import register
from lvsuser.schedulers.base import PacketInfo, Scheduler, dest_key, overloaded


@register
class RoundRobin(Scheduler):
    name = "rr"

    def __init__(self, service: model.Service):
        super().__init__(service)
        self._cursor: Optional[tuple] = None  # key of the last chosen dest; None = list head
        self._snapshot: list[tuple] = []
        self._position: dict[tuple, int] = {}
        self.update()

    def update(self) -> None:
        keys = [dest_key(d) for d in self.service.dests]
        present = set(keys)
        if self._cursor is not None and self._cursor not in present:
            # ip_vs_rr_del_dest: the cursor falls back to the nearest earlier survivor.
            old = self._snapshot.index(self._cursor)
            self._cursor = next((k for k in reversed(self._snapshot[:old]) if k in present), None)
        self._snapshot = keys
        self._position = {k: i for i, k in enumerate(keys)}

    def schedule(self, pkt: PacketInfo, now: float) -> Optional[model.Dest]:
        dests = self.service.dests
        start = -1 if self._cursor is None else self._position[self._cursor]
        # After the cursor to the end, then (unless at the head) from the start to the cursor.
        order = itertools.chain(range(start + 1, len(dests)), range(0, start + 1))
        for i in order:
            dest = dests[i]
            if dest.weight > 0 and not overloaded(dest):
                self._cursor = dest_key(dest)
                return dest
        return None
