"""Fuzzing both cores: random and mutated frames never raise, always get a valid verdict, and the
two cores agree byte for byte.  The same corpus runs in a subprocess against the compiled core
built with AddressSanitizer (test_fuzz_asan.py)."""
from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import (ARP, ICMP, IP, TCP, UDP, Dot1Q, Ether, ICMPv6DestUnreach, ICMPv6ND_NS,
                       IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, raw)

from lvsuser import model, pyfastpath
from lvsuser.fastpath.config import MODE_L3
from tests.unit.golden import (ADDRS, CLIENT_MAC, CORES, DIR_CLIENT_MAC, DIR_SERVER_MAC, IF_CLIENT,
                               IF_SERVERS, RS_MACS, make_config, make_service, new_core)

V4, V6 = model.AF_INET, model.AF_INET6
VERDICTS = {pyfastpath.PASS, pyfastpath.DROP, pyfastpath.TX, pyfastpath.REPLY}


def fuzz_config(mode="l2"):
    services = []
    for af in (V4, V6):
        services.append(make_service(af=af, protocol=model.IPPROTO_TCP, fwd=model.Forward.MASQ,
                                     port=80, rs_port=8080, ndests=2))
        services.append(make_service(af=af, protocol=model.IPPROTO_UDP, fwd=model.Forward.TUNNEL,
                                     port=53, ndests=2))
        services.append(make_service(af=af, protocol=model.IPPROTO_TCP, fwd=model.Forward.ROUTE,
                                     port=443, ndests=2,
                                     flags=model.SVC_F_HASHED | model.SVC_F_PERSISTENT, timeout=60))
    cfg = make_config(services, mtu=1400, proxy=[ADDRS[V4]["vip"], ADDRS[V6]["vip"]])
    if mode == "l3":
        cfg.mode = MODE_L3
    return cfg


def seed_frames() -> list[bytes]:
    """Valid frames of every kind the cores handle: the starting points for mutations."""
    frames = []
    for af in (V4, V6):
        a = ADDRS[af]
        ipc = IP if af == V4 else IPv6
        eth_in = Ether(src=CLIENT_MAC, dst=DIR_CLIENT_MAC)
        eth_rs = Ether(src=RS_MACS[0], dst=DIR_SERVER_MAC)
        for dport, l4 in ((80, TCP(sport=1234, dport=80, flags="S")),
                          (80, TCP(sport=1234, dport=80, flags="A")),
                          (53, UDP(sport=1234, dport=53)),
                          (443, TCP(sport=1234, dport=443, flags="S"))):
            frames.append(raw(eth_in / ipc(src=a["client"], dst=a["vip"]) / l4 / b"payload"))
        frames.append(raw(eth_rs / ipc(src=a["rs"][0], dst=a["client"])
                          / TCP(sport=8080, dport=1234, flags="SA")))
        quote = raw(ipc(src=a["vip"], dst=a["client"]) / TCP(sport=80, dport=1234))
        if af == V4:
            frames.append(raw(eth_in / IP(src=a["client"], dst=a["vip"]) / ICMP(type=3, code=3) / quote))
            frames.append(raw(eth_in / IP(src=a["client"], dst=a["vip"], flags="MF") / UDP(dport=53)))
            frames.append(raw(Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff")
                              / ARP(op=1, hwsrc=CLIENT_MAC, psrc=a["client"], pdst=a["vip"])))
            frames.append(raw(eth_in / Dot1Q(vlan=3) / IP(src=a["client"], dst=a["vip"], ttl=1)
                              / TCP(dport=80, flags="S")))
            tunneled = raw(IP(src=a["dip"], dst=a["rs"][0], proto=4)
                           / IP(src=a["client"], dst=a["vip"], flags="DF") / UDP(sport=1234, dport=53))
            frames.append(raw(eth_rs / IP(src="198.18.1.254", dst=a["dip"])
                              / ICMP(type=3, code=4, nexthopmtu=1300) / tunneled))
        else:
            frames.append(raw(eth_in / IPv6(src=a["client"], dst=a["vip"]) / ICMPv6DestUnreach() / quote))
            frames.append(raw(eth_in / IPv6(src=a["client"], dst=a["vip"]) / IPv6ExtHdrHopByHop()
                              / IPv6ExtHdrDestOpt() / TCP(dport=80, flags="S")))
            frames.append(raw(eth_in / IPv6(src=a["client"], dst=a["vip"]) / IPv6ExtHdrFragment(m=1)
                              / UDP(dport=53)))
            frames.append(raw(eth_in / IPv6(src=a["client"], dst="ff02::1:ff00:100", hlim=255)
                              / ICMPv6ND_NS(tgt=a["vip"])))
            frames.append(raw(eth_in / IPv6(src=a["client"], dst=a["vip"], hlim=1)
                              / UDP(dport=53) / (b"x" * 1400)))
    return frames


def mutate(frame: bytes, rng: random.Random) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(5)
        if choice == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice == 1 and data:
            del data[rng.randrange(len(data)):]
        elif choice == 2:
            pos = rng.randrange(len(data) + 1)
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif choice == 3 and len(data) > 20:
            # hit the length and header-length fields of IPv4/IPv6 and the TCP offset
            pos = rng.choice([14, 16, 17, 18, 19, 20, 46, 52]) % len(data)
            data[pos] = rng.randrange(256)
        elif choice == 4 and data:
            pos = rng.randrange(len(data))
            data[pos] ^= 1 << rng.randrange(8)
    return bytes(data)


def l3_packets(frames: list[bytes]) -> list[bytes]:
    """The IP packets inside Ethernet frames (what a TUN device hands over)."""
    out = []
    for frame in frames:
        ethertype = int.from_bytes(frame[12:14], "big")
        if ethertype == 0x8100:
            out.append(frame[18:])
        elif ethertype in (0x0800, 0x86DD):
            out.append(frame[14:])
    return out


def corpus(seed: int = 1, count: int = 3000, mode: str = "l2") -> list[tuple[bytes, int, float, bool]]:
    """A deterministic fuzz corpus: (frame, ifindex, now, csum_partial)."""
    rng = random.Random(seed)
    seeds = seed_frames() if mode == "l2" else l3_packets(seed_frames())
    out = []
    now = 10.0
    for i in range(count):
        if i % 10 == 0:
            frame = bytes(rng.randrange(256) for _ in range(rng.randint(0, 120)))
        elif i % 10 == 1:
            frame = rng.choice(seeds)
        else:
            frame = mutate(rng.choice(seeds), rng)
        out.append((frame, rng.choice([IF_CLIENT, IF_SERVERS, 7]), now, rng.random() < 0.1))
        now += rng.choice([0.0, 0.01, 1.0, 30.0])
    return out


def check(core, frame, ifindex, now, partial):
    verdict, out, out_ifindex = core.process(frame, ifindex, now, partial)
    assert verdict in VERDICTS
    if verdict in (pyfastpath.TX, pyfastpath.REPLY):
        assert isinstance(out, bytes) and out and out_ifindex != 0
    else:
        assert out is None and out_ifindex == 0
    return verdict, out, out_ifindex


def run_corpus(core_cls, items, mode="l2"):
    """Feed a corpus to a fresh core; returns its results (used here and by the ASan runner)."""
    core = new_core(core_cls, fuzz_config(mode), max_conns=64)
    results = []
    for frame, ifindex, now, partial in items:
        results.append(check(core, frame, ifindex, now, partial))
        if len(results) % 500 == 0:
            core.expire(now)
            listing = sorted((r["protocol"], str(r["caddr"]), r["cport"], str(r["vaddr"]), r["vport"],
                              str(r["daddr"]), r["dport"], r["state"], r["expires"])
                             for r in core.connections(now))
            counts = [(d.activeconns, d.inactconns, d.persistconns, d.flags)
                      for svc in core.services() for d in svc.dests]
            results.append((listing, counts))
    return results, core.counters()


@pytest.mark.parametrize("mode", ["l2", "l3"])
def test_corpus_both_cores_agree(mode):
    items = corpus(seed=7 if mode == "l2" else 8, count=2000, mode=mode)
    outcomes = [run_corpus(cls, items, mode) for cls in CORES]
    for other in outcomes[1:]:
        for i, (a, b) in enumerate(zip(outcomes[0][0], other[0])):
            assert a == b, f"frame {i}: {items[i][0].hex()}"
        assert outcomes[0][1] == other[1]


@pytest.mark.parametrize("core_cls", CORES, ids=[c.__module__ for c in CORES])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200), ifindex=st.sampled_from([IF_CLIENT, IF_SERVERS]),
       partial=st.booleans())
def test_random_bytes_never_crash(core_cls, data, ifindex, partial):
    core = new_core(core_cls, fuzz_config(), max_conns=64)
    check(core, data, ifindex, 1.0, partial)


SEEDS = seed_frames()


@settings(max_examples=300, deadline=None)
@given(index=st.integers(0, len(SEEDS) - 1), seed=st.integers(0, 2**32 - 1),
       ifindex=st.sampled_from([IF_CLIENT, IF_SERVERS]))
def test_mutated_frames_same_on_both_cores(index, seed, ifindex):
    frame = mutate(SEEDS[index], random.Random(seed))
    results = []
    for cls in CORES:
        core = new_core(cls, fuzz_config(), max_conns=64)
        core.process(SEEDS[0], IF_CLIENT, 1.0)  # one connection in the table
        results.append((check(core, frame, ifindex, 2.0, False), core.counters()))
    assert all(r == results[0] for r in results)
