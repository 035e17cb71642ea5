"""Shared set-up for the datapath microbenchmarks: both cores, a configuration, fast frames.

The microbenchmarks drive the sans-IO core API that both cores share (HACKING.md):
``Core(max_conns)``, ``publish(CoreConfig)``, ``process(frame, ifindex, now) -> (verdict, frame,
ifindex)``, ``expire(now)``, ``conn_count()``. Frames are built with struct, not scapy: building
ten million scapy packets would measure scapy. UDP checksums are 0 (legal for IPv4: "none"), so
changing the source port needs no checksum work; the IPv4 header checksum is recomputed only
when the source address changes, once per 64,512 flows.
"""
from __future__ import annotations

import ipaddress
import struct

import pytest

from lvsuser import model
from lvsuser.fastpath.config import CoreConfig, DestRoute
from lvsuser.pyfastpath import TX  # verdict codes are shared by both cores

VIP = "198.18.100.1"
VPORT = 9000
REAL_SERVERS = ("198.18.1.2", "198.18.2.2")
CLIENT_IF, SERVER_IF = 2, 3
DIRECTOR_MAC = bytes.fromhex("020000000001")
CLIENT_MAC = bytes.fromhex("020000000002")
SERVER_SIDE_MAC = bytes.fromhex("020000000003")
RS_MACS = (bytes.fromhex("0200000000a1"), bytes.fromhex("0200000000a2"))
FIRST_PORT = 1024
PORTS_PER_ADDR = 65536 - FIRST_PORT
CLIENT_NET = ipaddress.ip_network("198.18.128.0/17")
NOW = 1000.0

FORWARD = {"nat": model.Forward.MASQ, "dr": model.Forward.ROUTE, "tun": model.Forward.TUNNEL}


def implementations() -> list:
    """pytest params for the cores: the C core (skipped until built) and the Python reference."""
    params = []
    try:
        from lvsuser._fastpath import Core as CCore
        params.append(pytest.param(CCore, id="c"))
    except ImportError as exc:
        params.append(pytest.param(None, id="c", marks=pytest.mark.skip(
            reason=f"lvsuser._fastpath.Core not available yet ({exc})")))
    from lvsuser.pyfastpath import Core as PyCore
    params.append(pytest.param(PyCore, id="py"))
    return params


def config(mode: str, protocol: int = model.IPPROTO_UDP) -> CoreConfig:
    """One service VIP:9000 with both real servers in MODE, routes on SERVER_IF."""
    dests = [model.Dest(addr=ipaddress.ip_address(addr), port=VPORT, fwd=FORWARD[mode])
             for addr in REAL_SERVERS]
    service = model.Service(af=model.AF_INET, protocol=protocol,
                            addr=ipaddress.ip_address(VIP), port=VPORT, scheduler="rr",
                            dests=list(reversed(dests)))
    routes = {ipaddress.ip_address(addr): DestRoute(ifindex=SERVER_IF, src_mac=SERVER_SIDE_MAC,
                                                     dst_mac=mac, mtu=1500,
                                                     src_addr=ipaddress.ip_address("198.18.1.1"))
              for addr, mac in zip(REAL_SERVERS, RS_MACS)}
    return CoreConfig(services=[service], routes=routes,
                      local_macs={CLIENT_IF: DIRECTOR_MAC, SERVER_IF: SERVER_SIDE_MAC})


def ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(saddr: str, sport: int, daddr: str = VIP, dport: int = VPORT,
              src_mac: bytes = CLIENT_MAC, dst_mac: bytes = DIRECTOR_MAC) -> bytearray:
    """A 60-byte Ethernet/IPv4/UDP frame (64 with FCS), 18 bytes of payload, UDP checksum 0."""
    payload = bytes(18)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), 0, 0x4000, 64,
                               model.IPPROTO_UDP, 0, ipaddress.ip_address(saddr).packed,
                               ipaddress.ip_address(daddr).packed))
    struct.pack_into("!H", ip, 10, ip_checksum(bytes(ip)))
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    return bytearray(dst_mac + src_mac + b"\x08\x00" + bytes(ip) + udp + payload)


def flow_address(index: int) -> tuple[str, int]:
    """The client (address, port) of flow number INDEX: ports first, then the next address."""
    block, offset = divmod(index, PORTS_PER_ADDR)
    return str(CLIENT_NET[1 + block]), FIRST_PORT + offset


def open_flows(core, count: int, now: float = NOW) -> int:
    """Send the first packet of flows 0..COUNT-1 into CORE; returns how many were forwarded."""
    forwarded = 0
    frame = udp_frame(*flow_address(0))
    process = core.process
    for index in range(count):
        block, offset = divmod(index, PORTS_PER_ADDR)
        if offset == 0 and index:
            frame = udp_frame(*flow_address(index))
        struct.pack_into("!H", frame, 34, FIRST_PORT + offset)
        verdict = process(bytes(frame), CLIENT_IF, now)[0]
        forwarded += verdict == TX
    return forwarded


def rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")
