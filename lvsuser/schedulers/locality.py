"""What lblc and lblcr share: the weighted least-connection pick, the "overloaded" test, and the
per-destination-address table with the kernel's garbage collection.

The kernel keeps a 1024-bucket hash table (bucket = hash_32(ntohl(daddr_fold), 10), newest entry
first in its bucket) and a timer that fires every 60 s from service creation.  Every 30th firing
does a full check: entries unused for ``expiration`` (sysctl lblc[r]_expiration, 24 h) go.  The
others do nothing unless the table holds more than 16384 entries; then, starting after the
bucket where the last check stopped (the rover), entries unused for 6 minutes are dropped
until 4/3 of the excess (at most 8192) are gone.  We have no timer: the scheduler runs the
elapsed firings, at their own times, before each lookup.  ``now`` is seconds on any clock
that does not go backwards.
"""
from __future__ import annotations

from typing import Optional

from lvsuser import model
from lvsuser.schedulers.base import addr_fold, conn_overhead, hash_32, weighted_least

TAB_BITS = 10
TAB_SIZE = 1 << TAB_BITS
TAB_MASK = TAB_SIZE - 1
MAX_SIZE = TAB_SIZE * 16
CHECK_EXPIRE_INTERVAL = 60.0
ENTRY_TIMEOUT = 6 * 60.0
DEFAULT_EXPIRATION = 24 * 60 * 60.0
COUNT_FOR_FULL_EXPIRATION = 30


def least_loaded(dests) -> Optional[model.Dest]:
    """__ip_vs_lblc_schedule / __ip_vs_lblcr_schedule: weighted least connection."""
    return weighted_least(dests, conn_overhead)


def is_overloaded(dest: model.Dest, dests) -> bool:
    """More active connections than weight, while some dest is less than half busy."""
    if dest.activeconns > dest.weight:
        return any(d.activeconns * 2 < d.weight for d in dests)
    return False


def bucket_of(addr: model.IPAddress) -> int:
    return hash_32(addr_fold(addr), TAB_BITS)


class LocalityTable:
    """daddr -> entry, bucketed and aged as the kernel does; entries are objects with
    ``addr`` and ``lastuse`` attributes."""

    def __init__(self, expiration: float = DEFAULT_EXPIRATION):
        self.buckets: list[list] = [[] for _ in range(TAB_SIZE)]
        self.entries = 0
        self.rover = 0
        self.counter = 1
        self.expiration = expiration
        self.next_check: Optional[float] = None

    def get(self, addr: model.IPAddress):
        for entry in self.buckets[bucket_of(addr)]:
            if entry.addr == addr:
                return entry
        return None

    def add(self, entry) -> None:
        self.buckets[bucket_of(entry.addr)].insert(0, entry)
        self.entries += 1

    def remove(self, entry) -> None:
        self.buckets[bucket_of(entry.addr)].remove(entry)
        self.entries -= 1

    def age(self, now: float) -> None:
        """Run the periodic checks that fell due up to `now`."""
        if self.next_check is None:
            self.next_check = now + CHECK_EXPIRE_INTERVAL
            return
        while now >= self.next_check:
            if self.counter % COUNT_FOR_FULL_EXPIRATION == 0:
                self._sweep(self.next_check, self.expiration, goal=None)
                self.counter = 1
            elif self.entries <= MAX_SIZE:
                # Quiet firings only count; skip straight to the next one that does work.
                due = int((now - self.next_check) // CHECK_EXPIRE_INTERVAL) + 1
                steps = min(due, COUNT_FOR_FULL_EXPIRATION - self.counter % COUNT_FOR_FULL_EXPIRATION)
                self.counter += steps
                self.next_check += CHECK_EXPIRE_INTERVAL * steps
                continue
            else:
                goal = min((self.entries - MAX_SIZE) * 4 // 3, MAX_SIZE // 2)
                self._sweep(self.next_check, ENTRY_TIMEOUT, goal)
            self.next_check += CHECK_EXPIRE_INTERVAL

    def _sweep(self, now: float, max_idle: float, goal: Optional[int]) -> None:
        j = self.rover
        for _ in range(TAB_SIZE):
            j = (j + 1) & TAB_MASK
            bucket = self.buckets[j]
            for entry in list(bucket):
                if now < entry.lastuse + max_idle:
                    continue
                bucket.remove(entry)
                self.entries -= 1
                if goal is not None:
                    goal -= 1
            if goal is not None and goal <= 0:
                break
        self.rover = j
