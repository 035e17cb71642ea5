"""`lvsuser realserver {nat,tun,dr}`: apply, read back, undo exactly, and --check each fault.

Each test builds its own namespaces (a real server and a director-side peer on a veth) and runs
the command inside the real server's namespace, as a user would with `ip netns exec`.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from lvsuser.hosts import decap
from lvsuser.lab import netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "PYTHONPATH": REPO}
VIP = "198.18.1.100"
RIP = "198.18.2.11"
DIP = "198.18.2.1"
OTHER_GW = "198.18.2.254"


@pytest.fixture
def host():
    """A real server namespace 'rs' (eth0 198.18.2.11/24, default via .254) and a peer 'dir'."""
    with netns.Topology("trs") as topo:
        rs, peer = topo.add_ns("rs"), topo.add_ns("dir")
        # no IPv6 link-local autoconfiguration: its addresses appear whenever DAD finishes and
        # would make before/after dumps differ for reasons that are not ours
        topo.sysctl(rs, "net.ipv6.conf.default.addr_gen_mode", 1)
        topo.veth(rs, "eth0", peer, "eth0")
        topo.addr(rs, "eth0", f"{RIP}/24")
        topo.addr(peer, "eth0", f"{DIP}/24")
        topo.route(rs, "default", OTHER_GW)
        topo.rs, topo.peer = rs, peer
        try:
            yield topo
        finally:
            # undo whatever a test left configured (the wrong modes refuse harmlessly): stops
            # a decapsulator and leaves no state file behind
            for mode in ("nat", "tun", "dr"):
                topo.run(rs, [sys.executable, "-m", "lvsuser.hosts", mode, "--undo"], env=ENV)


def realserver(topo, *args) -> subprocess.CompletedProcess:
    return topo.run(topo.rs, [sys.executable, "-m", "lvsuser.hosts", *args], env=ENV, timeout=30)


def _read_conf_tree():
    tree = {}
    for family in ("ipv4", "ipv6"):
        base = f"/proc/sys/net/{family}/conf"
        for ifname in sorted(os.listdir(base)):
            for key in sorted(os.listdir(os.path.join(base, ifname))):
                try:
                    with open(os.path.join(base, ifname, key)) as f:
                        tree[f"{family}/{ifname}/{key}"] = f.read().strip()
                except OSError:
                    pass  # write-only or unreadable entries
    return tree


def dump(topo) -> dict:
    """Everything realserver may touch: links, addresses, routes (all tables), conf sysctls."""
    def ip_json(*args):
        out = topo.run(topo.rs, ["ip", "-j", *args], check=True).stdout
        return json.loads(out or "[]")

    links = [{k: link.get(k) for k in ("ifname", "flags", "mtu", "address")}
             for link in ip_json("link", "show")]
    addrs = [{"ifname": a["ifname"],
              "addrs": sorted((i["local"], i["prefixlen"], i.get("label")) for i in a["addr_info"])}
             for a in ip_json("addr", "show")]
    routes = ip_json("route", "show", "table", "all") + ip_json("-6", "route", "show", "table", "all")
    return {"links": links, "addrs": addrs, "routes": routes,
            "sysctl": netns.call_in(topo.rs, _read_conf_tree)}


def sysctl(topo, key):
    return netns.sysctl(topo.rs, key)


def addr_of(topo, ifname):
    out = topo.run(topo.rs, ["ip", "-j", "addr", "show", "dev", ifname], check=True).stdout
    info = json.loads(out)[0]["addr_info"]
    return {(i["local"], i["prefixlen"], i.get("label")) for i in info if i["family"] == "inet"}


def default_gateway(topo):
    out = topo.run(topo.rs, ["ip", "-j", "route", "show", "default"], check=True).stdout
    return [r.get("gateway") for r in json.loads(out)]


# --------------------------------------------------------------------------- apply, read back

def test_dr_puts_vip_on_lo_and_silences_arp(host):
    result = realserver(host, "dr", "--vip", VIP)
    assert result.returncode == 0, result.stderr
    assert (VIP, 32, "lo:0") in addr_of(host, "lo")
    assert VIP not in {a[0] for a in addr_of(host, "eth0")}
    for ifname in ("lo", "all"):
        assert sysctl(host, f"net.ipv4.conf.{ifname}.arp_ignore") == "1"
        assert sysctl(host, f"net.ipv4.conf.{ifname}.arp_announce") == "2"
    check = realserver(host, "dr", "--check")
    assert check.returncode == 0, check.stdout
    assert "OK" in check.stdout


def test_nat_makes_the_director_the_default_gateway(host):
    result = realserver(host, "nat", "--director", DIP)
    assert result.returncode == 0, result.stderr
    assert default_gateway(host) == [DIP]
    assert realserver(host, "nat", "--check").returncode == 0


def test_tun_without_ipip_starts_the_decapsulator_and_delivers(host):
    result = realserver(host, "tun", "--vip", VIP)
    assert result.returncode == 0, result.stderr
    assert "decapsulator" in result.stdout
    assert (VIP, 32, "lvtun0") in addr_of(host, "lvtun0")
    for key in ("all.rp_filter", "lvtun0.rp_filter"):
        assert sysctl(host, f"net.ipv4.conf.{key}") == "0"
    for key in ("all.arp_ignore", "lvtun0.arp_ignore"):
        assert sysctl(host, f"net.ipv4.conf.{key}") == "1"

    # a UDP datagram for VIP:9999, wrapped in IPIP by the peer, must reach a socket on the VIP
    listener = host.popen(host.rs, [sys.executable, "-c",
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('%s',9999)); s.settimeout(8)\n"
        "print('listening', flush=True)\n"
        "data,src=s.recvfrom(100); print(data.decode(), src[0], flush=True)\n" % VIP],
        stdout=subprocess.PIPE, text=True)
    assert listener.stdout.readline().strip() == "listening"
    # the sender also listens for ICMP: the real server's kernel has no ipip, and must still
    # not answer the tunnelled packet with "protocol unreachable" (type 3 code 2)
    sender = host.run(host.peer, [sys.executable, "-c",
        "import socket, time\n"
        "from scapy.all import IP, UDP, Raw, send\n"
        "icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n"
        f"send(IP(src='{DIP}', dst='{RIP}')/IP(src='198.18.0.7', dst='{VIP}')/UDP(sport=5555, "
        "dport=9999)/Raw(b'through-the-tunnel'), verbose=0)\n"
        "icmp.settimeout(1.0)\n"
        "try:\n"
        "    while True:\n"
        "        data = icmp.recv(2000)\n"
        "        print('icmp', data[20], data[21])\n"
        "except socket.timeout:\n"
        "    print('quiet')\n"], env=ENV)
    assert sender.returncode == 0, sender.stderr
    assert sender.stdout.strip() == "quiet", sender.stdout
    out, _ = listener.communicate(timeout=10)
    assert out.strip() == "through-the-tunnel 198.18.0.7"

    assert realserver(host, "tun", "--check").returncode == 0


# --------------------------------------------------------------------------- undo is exact

@pytest.mark.parametrize("mode,args", [("dr", ["--vip", VIP]), ("tun", ["--vip", VIP]),
                                       ("nat", ["--director", DIP])])
def test_undo_restores_exactly(host, mode, args):
    # unusual starting values must come back as they were, not as "defaults"
    netns.sysctl(host.rs, "net.ipv4.conf.all.arp_announce", 1)
    netns.sysctl(host.rs, "net.ipv4.conf.all.rp_filter", 2)
    netns.sysctl(host.rs, "net.ipv4.conf.lo.arp_ignore", 3)
    before = dump(host)
    applied = realserver(host, mode, *args)
    assert applied.returncode == 0, applied.stderr
    assert dump(host) != before
    undone = realserver(host, mode, "--undo")
    assert undone.returncode == 0, undone.stderr
    assert dump(host) == before
    assert realserver(host, mode, "--undo").stdout.startswith("nothing to undo")


def test_nat_undo_restores_several_default_routes_with_metrics(host):
    from pyroute2 import IPRoute
    with IPRoute(netns=host.rs) as ipr:
        ipr.route("add", dst="0.0.0.0/0", gateway="198.18.2.253", priority=50)
    before = dump(host)
    assert realserver(host, "nat", "--director", DIP).returncode == 0
    assert default_gateway(host) == [DIP]
    assert realserver(host, "nat", "--undo").returncode == 0
    assert dump(host) == before


# --------------------------------------------------------------------------- --check finds faults

def check_output(topo, *args):
    result = realserver(topo, *args, "--check")
    assert result.returncode == 1, result.stdout + result.stderr
    return " ".join(result.stdout.split())  # problems are wrapped for reading; unwrap them


def test_check_dr_vip_missing(host):
    assert realserver(host, "dr", "--vip", VIP).returncode == 0
    host.run(host.rs, ["ip", "addr", "del", f"{VIP}/32", "dev", "lo"], check=True)
    out = check_output(host, "dr")
    assert f"VIP {VIP} missing on lo" in out
    assert f"fix: lvsuser realserver dr --vip {VIP}" in out


def test_check_dr_arp_ignore_leaks_vip(host):
    assert realserver(host, "dr", "--vip", VIP).returncode == 0
    netns.sysctl(host.rs, "net.ipv4.conf.all.arp_ignore", 0)
    out = check_output(host, "dr")
    assert "ARP would leak the VIP" in out and "eth0 (arp_ignore 0)" in out


def test_check_dr_arp_announce_leaks_vip(host):
    assert realserver(host, "dr", "--vip", VIP).returncode == 0
    netns.sysctl(host.rs, "net.ipv4.conf.all.arp_announce", 0)
    out = check_output(host, "dr")
    assert "ARP would leak the VIP" in out and "eth0 (arp_announce 0)" in out
    assert "arp_ignore 0" not in out


def test_check_dr_on_unconfigured_host_lists_vip_and_arp(host):
    out = check_output(host, "dr", "--vip", VIP)
    assert f"VIP {VIP} missing on lo" in out and "ARP would leak the VIP" in out


def test_check_tun_rp_filter(host):
    assert realserver(host, "tun", "--vip", VIP).returncode == 0
    netns.sysctl(host.rs, "net.ipv4.conf.all.rp_filter", 1)
    out = check_output(host, "tun")
    assert "rp_filter would drop decapsulated packets" in out


def test_check_tun_decapsulator_not_running(host):
    assert realserver(host, "tun", "--vip", VIP).returncode == 0
    from lvsuser.hosts import realserver as rs_module
    pidfile = netns.call_in(host.rs, rs_module.decap_pidfile)
    with open(pidfile) as f:
        os.kill(int(f.read()), 9)
    time.sleep(0.3)
    out = check_output(host, "tun")
    assert "decapsulator not running" in out
    assert f"VIP {VIP} missing on lvtun0" in out  # the device went with the process


def test_check_tun_device_down(host):
    assert realserver(host, "tun", "--vip", VIP).returncode == 0
    host.run(host.rs, ["ip", "link", "set", "lvtun0", "down"], check=True)
    out = check_output(host, "tun")
    assert "lvtun0 is down" in out


def test_check_nat_gateway_not_director(host):
    out = check_output(host, "nat", "--director", DIP)
    assert "NAT gateway is not the director" in out and OTHER_GW in out


# --------------------------------------------------------------------------- bad input

def test_bad_input_is_refused_and_changes_nothing(host):
    before = dump(host)
    bad = realserver(host, "dr", "--vip", "198.18.1.300")
    assert bad.returncode != 0 and "is not an IP address" in bad.stderr
    no_director = realserver(host, "nat")
    assert no_director.returncode != 0 and "--director" in no_director.stderr
    unreachable = realserver(host, "nat", "--director", "198.19.9.9")
    assert unreachable.returncode != 0 and "not on a directly connected network" in unreachable.stderr
    v6_tun = realserver(host, "tun", "--vip", "2001:db8::1")
    assert v6_tun.returncode != 0 and "IPv4 VIPs only" in v6_tun.stderr
    assert dump(host) == before


def test_state_of_a_vanished_namespace_is_swept(host):
    with netns.Topology("tsw") as other:
        gone = other.add_ns("gone")
        other.veth(gone, "eth0", host.peer, "eth9")
        result = other.run(gone, [sys.executable, "-m", "lvsuser.hosts", "dr", "--vip", VIP],
                           env=ENV)
        assert result.returncode == 0, result.stderr
        from lvsuser.hosts import realserver as rs_module
        stale_dir = netns.call_in(gone, rs_module.state_dir)
        assert os.path.exists(stale_dir)
    # the namespace is gone without --undo; the next apply anywhere forgets its state
    assert realserver(host, "dr", "--vip", VIP).returncode == 0
    assert not os.path.exists(stale_dir)


def test_second_apply_of_another_mode_is_refused(host):
    assert realserver(host, "dr", "--vip", VIP).returncode == 0
    again = realserver(host, "dr", "--vip", VIP)
    assert again.returncode == 0 and "already configured" in again.stdout
    netns.sysctl(host.rs, "net.ipv4.conf.all.arp_ignore", 0)  # broken by hand: redo repairs
    repaired = realserver(host, "dr", "--vip", VIP)
    assert repaired.returncode == 0 and "redoing" in repaired.stdout
    assert sysctl(host, "net.ipv4.conf.all.arp_ignore") == "1"
    assert realserver(host, "dr", "--check").returncode == 0
    other = realserver(host, "nat", "--director", DIP)
    assert other.returncode == 1 and "--undo" in other.stderr
    assert realserver(host, "dr", "--undo").returncode == 0


# --------------------------------------------------------------------------- the decapsulator core

def _ipv4(src, dst, proto, payload):
    from scapy.all import IP
    return bytes(IP(src=src, dst=dst, proto=proto) / payload)


def test_decapsulate_accepts_only_ipip_for_a_vip():
    from scapy.all import IP, UDP, Raw
    vips = frozenset({socket.inet_aton(VIP)})
    counters = decap.Counters()
    inner = bytes(IP(src="198.18.0.7", dst=VIP) / UDP(dport=80) / Raw(b"x"))
    good = bytes(IP(src=DIP, dst=RIP) / IP(inner))
    assert decap.decapsulate(good, vips, counters) == inner
    wrong_vip = bytes(IP(src=DIP, dst=RIP) / IP(src="198.18.0.7", dst="198.18.9.9") / UDP())
    assert decap.decapsulate(wrong_vip, vips, counters) is None
    for junk in (b"", b"\x45" * 19, good[:25], good[:20] + b"\x60" + good[21:],
                 bytes(IP(src=DIP, dst=RIP, proto=17) / Raw(b"y" * 30))):
        assert decap.decapsulate(junk, vips, counters) is None
    assert counters.as_dict() == {"received": 7, "delivered": 0, "malformed": 5,
                                  "not_for_vip": 1, "write_errors": 0}


def test_dr_with_an_ipv6_vip_and_exact_undo(host):
    vip6 = "2001:db8:1::100"
    before = dump(host)
    result = realserver(host, "dr", "--vip", VIP, vip6)
    assert result.returncode == 0, result.stderr
    out = host.run(host.rs, ["ip", "-j", "-6", "addr", "show", "dev", "lo"], check=True).stdout
    assert (vip6, 128) in {(i["local"], i["prefixlen"]) for i in json.loads(out)[0]["addr_info"]}
    assert (VIP, 32, "lo:0") in addr_of(host, "lo")
    assert realserver(host, "dr", "--check").returncode == 0
    assert realserver(host, "dr", "--undo").returncode == 0
    assert dump(host) == before
