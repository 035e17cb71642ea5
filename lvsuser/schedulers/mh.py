"""mh: Maglev hashing (ip_vs_mh.c; Eisenbud et al., NSDI 2016, section 3.4).

A prime-sized lookup table (4093 entries with the kernel's default CONFIG_IP_VS_MH_TAB_INDEX=12)
maps hsiphash(ntohl(saddr_fold) [+ sport]) % size to a dest.  Each dest has a permutation of the
table positions: offset = h1(dest) % size, skip = h2(dest) % (size - 1) + 1, with h1/h2 the
kernel's fixed hsiphash keys over ntohs(port) + ntohl(addr_fold).  The table is filled by
letting the dests, in list order, take turns claiming their next free preferred position;
a dest gets ``turns`` = (last_weight / gcd) >> rshift claims per round (rshift keeps the largest
below 2^6).  ``last_weight`` is the last non-zero weight a dest was given, so a dest set to
weight 0 keeps its positions (and yields no dest there, or the mh-fallback search) while a dest
added with weight 0 takes none.  mh-fallback: search positions hash(addr + offset) for the next
available dest; mh-port: the source port joins the hash.
"""
from __future__ import annotations

import math
from typing import Optional

from lvsuser import model
from lvsuser.schedulers import register
from lvsuser.schedulers.base import (IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, PacketInfo,
                                     Scheduler, addr_fold, dest_key, overloaded)
from lvsuser.schedulers.siphash import hsiphash_u32

PRIMES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
DEFAULT_TAB_INDEX = 12  # CONFIG_IP_VS_MH_TAB_INDEX's default (Debian keeps it)
HASH1_KEY = (2654435761, 2654435761)
HASH2_KEY = (2654446892, 2654446892)
PORT_PROTOCOLS = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP)


def mh_hashkey(addr: model.IPAddress, port: int, key: tuple, offset: int) -> int:
    return hsiphash_u32((offset + port + addr_fold(addr)) & 0xFFFFFFFF, *key)


def unavailable(dest: model.Dest) -> bool:
    return dest.weight <= 0 or overloaded(dest)


@register
class MaglevHashing(Scheduler):
    name = "mh"
    flags_supported = model.SVC_F_SCHED_MH_FALLBACK | model.SVC_F_SCHED_MH_PORT

    def __init__(self, service: model.Service, tab_index: int = DEFAULT_TAB_INDEX):
        super().__init__(service)
        if not 8 <= tab_index <= 17:
            raise ValueError("mh table index must be 8..17 (CONFIG_IP_VS_MH_TAB_INDEX)")
        self.size = PRIMES[tab_index - 8]
        self.tab_bits = tab_index // 2
        self.last_weight: dict[tuple, int] = {}
        self.lookup: list[Optional[model.Dest]] = [None] * self.size
        self.update()

    def _track_last_weights(self) -> list[int]:
        known = self.last_weight
        current = {}
        for dest in self.service.dests:
            key = dest_key(dest)
            # __ip_vs_update_dest: set on add, and on edits to a non-zero weight.
            if key not in known or dest.weight != 0:
                current[key] = dest.weight
            else:
                current[key] = known[key]
        self.last_weight = current
        return [current[dest_key(d)] for d in self.service.dests]

    def update(self) -> None:
        dests = list(self.service.dests)
        if len(dests) > self.size:
            raise ValueError(f"mh: {len(dests)} dests do not fit a {self.size}-entry table")
        weights = self._track_last_weights()
        g = 0
        for w in weights:
            if w > 0:
                g = math.gcd(w, g) if g > 0 else w
        if g < 1:
            self.lookup = [None] * self.size
            return
        shift = max(0, (max(weights) // g).bit_length() - self.tab_bits)
        size = self.size
        setups = []
        for dest, lw in zip(dests, weights):
            offset = mh_hashkey(dest.addr, dest.port, HASH1_KEY, 0) % size
            skip = mh_hashkey(dest.addr, dest.port, HASH2_KEY, 0) % (size - 1) + 1
            turns = ((lw // g) >> shift) or (1 if lw != 0 else 0)
            setups.append([offset, skip, turns])  # [perm, skip, turns]
        taken = bytearray(size)
        lookup = list(self.lookup)
        filled = 0
        while filled < size:
            i = 0
            claims = 0
            while i < len(dests):
                setup = setups[i]
                if setup[2] < 1:
                    i += 1
                    continue
                c = setup[0]
                while taken[c]:
                    c += setup[1]
                    if c >= size:
                        c -= size
                    setup[0] = c
                taken[c] = 1
                lookup[c] = dests[i]
                filled += 1
                if filled == size:
                    break
                claims += 1
                if claims >= setup[2]:
                    claims = 0
                    i += 1
        self.lookup = lookup

    def schedule(self, pkt: PacketInfo, now: float) -> Optional[model.Dest]:
        port = 0
        if self.service.flags & model.SVC_F_SCHED_MH_PORT and pkt.protocol in PORT_PROTOCOLS:
            port = pkt.sport
        ihash = mh_hashkey(pkt.saddr, port, HASH1_KEY, 0) % self.size
        dest = self.lookup[ihash]
        if dest is None:
            return None
        if not unavailable(dest):
            return dest
        if not self.service.flags & model.SVC_F_SCHED_MH_FALLBACK:
            return None
        for offset in range(self.size):
            roffset = (offset + ihash) % self.size
            dest = self.lookup[mh_hashkey(pkt.saddr, port, HASH1_KEY, roffset) % self.size]
            if dest is None:
                return None
            if not unavailable(dest):
                return dest
        return None
