"""Per-packet cost of each forwarding method in the datapath core: C, and Python for contrast.

Each benchmark sends the same packet of an established UDP connection through ``Core.process``
over and over: a connection-table hit plus that method's rewrite (NAT: address, port and
incremental checksums; DR: MAC only; TUN: an outer IPv4 header). NAT is measured both ways,
client to real server and the real server's reply. The packet that comes out is checked after
the run, so a benchmark of a core that silently stopped forwarding fails instead of looking fast.

Run: python3 -m pytest bench/test_bench_rewrite.py --benchmark-only
"""
import ipaddress
import json
import os
import struct

import pytest

from bench import coresetup as cs
from lvsuser.pyfastpath import TX

SUMMARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "rewrite.json")
_medians: dict = {}  # "nat-c" -> median ns per packet, for the bench report


@pytest.fixture(scope="module", autouse=True)
def write_summary():
    yield
    if _medians:
        os.makedirs(os.path.dirname(SUMMARY), exist_ok=True)
        with open(SUMMARY, "w") as f:
            json.dump(_medians, f, indent=1)


def _keep(benchmark, key):
    if benchmark.stats is not None:  # None under --benchmark-disable
        _medians[key] = round(benchmark.stats.stats.median * 1e9, 1)


def _impl(core_cls) -> str:
    return "Python" if core_cls.__module__ == "lvsuser.pyfastpath" else "C"


def _established(core_cls, mode):
    core = core_cls(max_conns=1024)
    core.publish(cs.config(mode))
    frame = bytes(cs.udp_frame(*cs.flow_address(0)))
    verdict, out, ifindex = core.process(frame, cs.CLIENT_IF, cs.NOW)
    assert verdict == TX and ifindex == cs.SERVER_IF, (verdict, ifindex)
    return core, frame, out


def _check_forwarded(mode, result):
    verdict, out, ifindex = result
    assert verdict == TX and ifindex == cs.SERVER_IF
    assert out[0:6] in cs.RS_MACS  # every mode hands the frame to a real server's MAC
    if mode == "nat":
        assert str(ipaddress.ip_address(out[30:34])) in cs.REAL_SERVERS
    elif mode == "dr":
        assert str(ipaddress.ip_address(out[30:34])) == cs.VIP
    else:
        assert out[23] == 4  # IP-in-IP outer header
        assert str(ipaddress.ip_address(out[30:34])) in cs.REAL_SERVERS


@pytest.mark.parametrize("core_cls", cs.implementations())
@pytest.mark.parametrize("mode", ["nat", "dr", "tun"])
def test_forward_established(benchmark, core_cls, mode):
    core, frame, _ = _established(core_cls, mode)
    benchmark.extra_info["frame_bytes"] = len(frame) + 4
    result = benchmark(core.process, frame, cs.CLIENT_IF, cs.NOW)
    _check_forwarded(mode, result)
    _keep(benchmark, f"{mode} in, {_impl(core_cls)} core")


@pytest.mark.parametrize("core_cls", cs.implementations())
def test_nat_reply(benchmark, core_cls):
    core, _, first_out = _established(core_cls, "nat")
    real_server = str(ipaddress.ip_address(first_out[30:34]))
    client, cport = cs.flow_address(0)
    reply = cs.udp_frame(real_server, cs.VPORT, daddr=client, dport=cport,
                         src_mac=cs.RS_MACS[cs.REAL_SERVERS.index(real_server)],
                         dst_mac=cs.SERVER_SIDE_MAC)
    verdict, out, ifindex = benchmark(core.process, bytes(reply), cs.SERVER_IF, cs.NOW)
    _keep(benchmark, f"nat reply, {_impl(core_cls)} core")
    assert verdict == TX and ifindex == cs.CLIENT_IF
    assert str(ipaddress.ip_address(out[26:30])) == cs.VIP  # the client only sees the VIP
    assert struct.unpack("!H", out[34:36])[0] == cs.VPORT
