"""lvsuser/lab/netns.py: the namespace helper every network test stands on."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from pyroute2 import IPRoute

from lvsuser.lab import netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_names_are_unique_and_ip_netns_compatible():
    with netns.Topology("tnn") as topo:
        first, second = topo.add_ns("a"), topo.add_ns("a")
        assert first != second and str(os.getpid()) in first
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert first in listed and second in listed
        with pytest.raises(netns.NetnsError):
            netns.create(first)
    assert not netns.exists(first) and not netns.exists(second)


def test_wiring_reads_back():
    with netns.Topology("tnw") as topo:
        a, b, sw = topo.add_ns("a"), topo.add_ns("b"), topo.add_ns("sw")
        topo.veth(a, "eth0", sw, "pa")
        topo.veth(b, "eth0", sw, "pb")
        topo.bridge(sw, "br0", ["pa", "pb"])
        topo.addr(a, "eth0", "198.18.5.1/24")
        topo.addr(a, "eth0", "198.18.5.9/32", label="eth0:0")
        topo.addr(b, "eth0", "198.18.5.2/24")
        topo.set_mac(a, "eth0", "02:00:00:00:aa:01")
        topo.route(b, "default", "198.18.5.1")
        topo.route(b, "198.19.7.0/24", dev="eth0")
        assert topo.sysctl(a, "net.ipv4.ip_forward", 1) == "1"
        assert netns.sysctl(b, "net.ipv4.ip_forward") == "0"  # per namespace
        assert topo.mac(a, "eth0") == "02:00:00:00:aa:01"
        with IPRoute(netns=a) as ipr:
            addrs = {(m.get("IFA_LABEL"), m.get("IFA_ADDRESS")) for m in ipr.get_addr(family=2)}
        assert ("eth0", "198.18.5.1") in addrs and ("eth0:0", "198.18.5.9") in addrs
        with IPRoute(netns=b) as ipr:
            routes = {(r["dst_len"], r.get("RTA_DST"), r.get("RTA_GATEWAY"))
                      for r in ipr.get_routes(family=2, table=254)}
        assert (0, None, "198.18.5.1") in routes and (24, "198.19.7.0", None) in routes
        with IPRoute(netns=sw) as ipr:
            bridge = ipr.link_lookup(ifname="br0")[0]
            ports = [l.get("IFLA_IFNAME") for l in ipr.get_links() if l.get("IFLA_MASTER") == bridge]
        assert sorted(ports) == ["pa", "pb"]
        # and traffic crosses the bridge (one bounded UDP exchange)
        server = topo.popen(a, [sys.executable, "-c", textwrap.dedent("""
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("198.18.5.1", 7000))
            s.settimeout(5); print("ready", flush=True)
            data, peer = s.recvfrom(100); s.sendto(data.upper(), peer)""")],
            stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        reply = topo.run(b, [sys.executable, "-c", textwrap.dedent("""
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
            s.sendto(b"ping", ("198.18.5.1", 7000)); print(s.recv(100).decode())""")])
        assert reply.stdout.strip() == "PING", reply.stderr


def test_errors_name_the_problem():
    with netns.Topology("tne") as topo:
        a = topo.add_ns("a")
        with pytest.raises(netns.NetnsError, match="no interface 'eth7'"):
            topo.addr(a, "eth7", "198.18.5.1/24")
    with pytest.raises(netns.NetnsError, match="does not exist"):
        netns.run("lvs-no-such-namespace", ["true"])


def test_exception_removes_namespaces_and_processes():
    with pytest.raises(RuntimeError):
        with netns.Topology("tnx") as topo:
            a = topo.add_ns("a")
            sleeper = topo.popen(a, ["sleep", "60"])
            stray = netns.popen(a, ["sleep", "61"])  # not registered: found by namespace
            raise RuntimeError("boom")
    assert not netns.exists(a)
    assert sleeper.poll() is not None
    stray.wait(timeout=5)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_removes_everything(sig):
    script = textwrap.dedent("""
        import sys, time
        from lvsuser.lab import netns
        with netns.Topology("tns") as topo:
            a = topo.add_ns("a"); topo.popen(a, ["sleep", "60"])
            print(a, flush=True)
            time.sleep(30)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": REPO})
    try:
        name = proc.stdout.readline().strip()
        assert netns.exists(name) and netns.pids_in(name)
        proc.send_signal(sig)
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not netns.exists(name)


def test_forked_child_does_not_tear_down_the_parent():
    """pyroute2 forks helpers and stops them with SIGTERM; they inherit our handler and must
    not unwind the parent's stack into Topology.close() (seen with a second topology)."""
    script = textwrap.dedent("""
        from lvsuser.lab import netns
        for round in range(2):
            with netns.Topology("tnf") as topo:
                a, b = topo.add_ns("a"), topo.add_ns("b")
                topo.veth(a, "eth0", b, "eth0")
                topo.sysctl(a, "net.ipv4.ip_forward")
                assert netns.exists(a) and netns.exists(b), round
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": REPO})
    assert result.stdout.strip() == "ok", result.stderr[-2000:]
