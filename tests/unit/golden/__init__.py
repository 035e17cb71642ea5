"""Shared set-up for the datapath core tests: addresses, a deterministic scheduler, configs.

Every test here runs against both cores (pure Python and compiled) through the ``core_cls``
parameter; frames are built with scapy, expected frames are built independently with scapy
(its own checksum code), never by the cores.
"""
from __future__ import annotations

import ipaddress

from lvsuser import _fastpath, model, pyfastpath
from lvsuser.fastpath.config import MODE_L2, CoreConfig, DestRoute

CORES = [pyfastpath.Core, _fastpath.Core]
CORE_IDS = ["py", "c"]

IF_CLIENT = 2  # director interface towards clients
IF_SERVERS = 3  # director interface towards real servers

CLIENT_MAC = "02:00:00:00:00:01"
DIR_CLIENT_MAC = "02:00:00:00:00:02"
DIR_SERVER_MAC = "02:00:00:00:00:03"
RS_MACS = ["02:00:00:00:01:01", "02:00:00:00:01:02"]


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


ADDRS = {
    model.AF_INET: dict(client="198.18.0.1", vip="198.18.0.100", dip="198.18.1.1",
                        rs=["198.18.1.11", "198.18.1.12"]),
    model.AF_INET6: dict(client="2001:db8::1", vip="2001:db8::100", dip="2001:db8:1::1",
                         rs=["2001:db8:1::11", "2001:db8:1::12"]),
}


class FirstAvailable:
    """A deterministic test scheduler: the first dest with weight > 0 that is not overloaded."""

    def __init__(self, service):
        self.service = service

    def update(self):
        pass

    def schedule(self, pkt, now):
        for dest in self.service.dests:
            if dest.weight > 0 and not dest.flags & model.DEST_F_OVERLOAD:
                return dest
        return None


def first_factory(name, service):
    if name != "first":
        raise KeyError(name)
    return FirstAvailable(service)


def make_service(af=model.AF_INET, protocol=model.IPPROTO_TCP, fwd=model.Forward.MASQ, port=80,
                 rs_port=None, ndests=1, weights=None, scheduler="first", **kw) -> model.Service:
    a = ADDRS[af]
    dests = []
    for i in range(ndests):
        dests.append(model.Dest(addr=ipaddress.ip_address(a["rs"][i]),
                                port=port if rs_port is None else rs_port, fwd=fwd,
                                weight=1 if weights is None else weights[i], af=af))
    return model.Service(af=af, protocol=protocol, addr=ipaddress.ip_address(a["vip"]), port=port,
                         scheduler=scheduler, dests=dests, **kw)


def make_config(services, mtu=1500, mode=MODE_L2, proxy=(), timeouts=None, mark_rules=()):
    routes = {}
    for af, a in ADDRS.items():
        for i, rs in enumerate(a["rs"]):
            routes[ipaddress.ip_address(rs)] = DestRoute(
                ifindex=IF_SERVERS, src_mac=mac_bytes(DIR_SERVER_MAC), dst_mac=mac_bytes(RS_MACS[i]),
                mtu=mtu, src_addr=ipaddress.ip_address(a["dip"]))
    return CoreConfig(
        services=list(services), routes=routes,
        local_macs={IF_CLIENT: mac_bytes(DIR_CLIENT_MAC), IF_SERVERS: mac_bytes(DIR_SERVER_MAC)},
        proxy_vips={IF_CLIENT: [ipaddress.ip_address(x) for x in proxy]},
        timeouts=timeouts or model.Timeouts(), mark_rules=list(mark_rules), mode=mode)


def new_core(core_cls, config, **kw):
    core = core_cls(scheduler_factory=first_factory, **kw)
    core.publish(config)
    return core
