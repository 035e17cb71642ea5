"""A director that keeps working around itself: its own connections to real servers, a flushed
guard, a second director in the namespace, a namespace with loopback alone at start.

The topologies and the `lvsuser run` wrapper are test_forward's (the guide's hosts as namespaces).
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from .conftest import start_realserver, wait_for
from .test_forward import (VIP6, VIP6_SEG, VIP_NAT, VIP_SEG, Capture, Director, build_nat,
                           build_nat6, build_segment, build_segment6, check_director_kernel_silent,
                           curl_names, scapy_all)

LVSUSER = [sys.executable, "-m", "lvsuser"]

# A UDP request from wherever it runs; prints the answer (or nothing after three tries).
UDP_ASK = r"""
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.settimeout(1)
for attempt in range(3):
    s.sendto(b"hello", (sys.argv[1], int(sys.argv[2])))
    try:
        print(s.recvfrom(2048)[0].decode())
        break
    except socket.timeout:
        continue
"""

# A UDP datagram to a port nobody listens on: the ICMP port-unreachable error (addressed to the
# sender) makes the next recv fail with ECONNREFUSED; prints "refused" or "silent".
UDP_REFUSED = r"""
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.settimeout(1)
s.connect((sys.argv[1], int(sys.argv[2])))
result = "silent"
for attempt in range(3):
    try:
        s.send(b"anyone?")
        s.recv(2048)
    except ConnectionRefusedError:
        result = "refused"
        break
    except socket.timeout:
        continue
print(result)
"""


@pytest.fixture(scope="module")
def tools_ready():
    for argv in (["nft", "--version"], ["tcpdump", "--version"], ["curl", "--version"]):
        try:
            subprocess.run(argv, capture_output=True, timeout=20, check=True)
        except (OSError, subprocess.SubprocessError):
            pytest.skip(f"{argv[0]} is needed (tools/setup.sh installs it)")


def _curl(topo, ns, url, seconds=3, source=None):
    pin = ["--interface", source] if source else []
    result = topo.run(ns, ["curl", "-s", "-g", "-m", str(seconds), *pin, url], timeout=seconds + 5)
    return result.stdout.strip() or f"<curl exit {result.returncode}>"


def _udp(topo, ns, addr, port):
    return topo.run(ns, [sys.executable, "-c", UDP_ASK, addr, str(port)], timeout=15).stdout.strip()


def _served_by(topo, ns, url, name, timeout=10.0):
    """The first request after a configuration may wait for the real server's neighbour entry
    (the director resolves it when asked): retry, bounded, until NAME answers."""
    return wait_for(lambda: _curl(topo, ns, url, seconds=2) == name, timeout=timeout, step=0.2)


def _whole_log(director):
    with open(director.log_path) as f:  # Director.log() keeps only the tail
        return f.read()


def _udp_refused(topo, ns, addr, port):
    return topo.run(ns, [sys.executable, "-c", UDP_REFUSED, addr, str(port)], timeout=15).stdout.strip()


# --------------------------------------------------------------------------- the director's own traffic

@pytest.mark.parametrize("io", ["afpacket", "tun"])
def test_director_reaches_nat_real_servers_while_serving_clients(topo, tmp_path, tools_ready, io):
    """NAT (-m), VIP on the director: the director's own curl and UDP to RIP:port get their
    answers, while the clients' replies through the VIP are still rewritten and the director's
    kernel still sends nothing for the VIP (no RST for the local VIP, no raw NAT reply).
    With --io tun the same holds for the policy routes that steer NAT replies into the device."""
    cl, dr, rs = build_nat(topo)
    rips = ["198.18.1.11", "198.18.1.12"]
    for n, ns in enumerate(rs):
        start_realserver(topo, ns, f"rs{n + 1}", "0.0.0.0")
    director = Director(topo, dr, str(tmp_path / "control.sock"), io=io)
    director.start()
    try:
        director.ipvsadm("-A", "-t", f"{VIP_NAT}:80", "-s", "rr")
        director.ipvsadm("-A", "-u", f"{VIP_NAT}:5353", "-s", "rr")
        for rip in rips:
            director.ipvsadm("-a", "-t", f"{VIP_NAT}:80", "-r", f"{rip}:80", "-m")
            director.ipvsadm("-a", "-u", f"{VIP_NAT}:5353", "-r", f"{rip}:5353", "-m")
        kernel_cap = Capture(topo, dr, "eth0", str(tmp_path / "dir-eth0.pcap"), direction="out")
        client_cap = Capture(topo, cl, "eth0", str(tmp_path / "client.pcap"))
        for round_ in range(2):  # interleaved: the guard must tell the two apart packet by packet
            assert [_curl(topo, dr, f"http://{rip}/") for rip in rips] == ["rs1", "rs2"]
            assert _udp(topo, dr, rips[0], 5353) == "rs1 hello"
            assert sorted(curl_names(topo, cl, f"http://{VIP_NAT}/", 2)) == ["rs1", "rs2"]
        # an ICMP error from a NAT real server about the director's own datagram reaches it
        assert _udp_refused(topo, dr, rips[1], 5399) == "refused"
        assert _udp(topo, cl, VIP_NAT, 5353) in ("rs1 hello", "rs2 hello")
        check_director_kernel_silent(kernel_cap.packets(), VIP_NAT, set(rips),
                                     routes_our_output=(io == "tun"))
        to_client = [p for p in client_cap.packets() if p.haslayer(scapy_all.IP)
                     and p[scapy_all.IP].dst == "198.18.0.2" and p.haslayer(scapy_all.TCP)]
        assert to_client and all(p[scapy_all.IP].src == VIP_NAT for p in to_client), \
            [p.summary() for p in to_client[:5]]
        if io == "afpacket":  # the guard rules the director's traffic slips past are still there
            ruleset = topo.run(dr, ["nft", "list", "ruleset"]).stdout
            assert "ip saddr 198.18.1.11 tcp sport 80" in ruleset, ruleset
            # our own rule changes are not mistaken for tampering
            assert "restored" not in director.log(), director.log()
    finally:
        assert director.stop() == 0, director.log()


def test_director_reaches_nat_real_servers_ipv6(topo, tmp_path, tools_ready):
    cl, dr, rs = build_nat6(topo)
    rips = ["2001:db8:0:2::11", "2001:db8:0:2::12"]
    for n, ns in enumerate(rs):
        start_realserver(topo, ns, f"rs{n + 1}", "::")
    director = Director(topo, dr, str(tmp_path / "control.sock"))
    director.start()
    try:
        director.ipvsadm("-A", "-t", f"[{VIP6}]:80", "-s", "rr")
        director.ipvsadm("-A", "-u", f"[{VIP6}]:5353", "-s", "rr")
        for rip in rips:
            director.ipvsadm("-a", "-t", f"[{VIP6}]:80", "-r", f"[{rip}]:80", "-m")
            director.ipvsadm("-a", "-u", f"[{VIP6}]:5353", "-r", f"[{rip}]:5353", "-m")
        kernel_cap = Capture(topo, dr, "eth0", str(tmp_path / "dir6.pcap"), direction="out", bpf="ip6")
        for round_ in range(2):
            assert [_curl(topo, dr, f"http://[{rip}]/") for rip in rips] == ["rs1", "rs2"]
            assert _udp(topo, dr, rips[1], 5353) == "rs2 hello"
            assert sorted(curl_names(topo, cl, f"http://[{VIP6}]/", 2)) == ["rs1", "rs2"]
        assert _udp_refused(topo, dr, rips[0], 5399) == "refused"
        ip6 = scapy_all.IPv6
        # neighbour discovery for the local VIP is the kernel's job, like ARP; nothing else is
        leaked = [p for p in kernel_cap.packets() if p.haslayer(ip6)
                  and not p.haslayer(scapy_all.ICMPv6ND_NA) and not p.haslayer(scapy_all.ICMPv6ND_NS)
                  and (p[ip6].src == VIP6 or p[ip6].src in rips
                       or (p.haslayer(scapy_all.TCP) and p[scapy_all.TCP].flags & 0x04))]
        assert not leaked, [p.summary() for p in leaked[:5]]
    finally:
        assert director.stop() == 0, director.log()


@pytest.mark.parametrize("mode,method", [("dr", "-g"), ("tun", "-i")])
def test_director_reaches_segment_real_servers(topo, tmp_path, tools_ready, mode, method):
    """DR and TUN: the director's own connections to a real server's service port work while
    clients are served through the VIP."""
    cl, dr, rs = build_segment(topo, mode)
    rips = ["198.18.2.11", "198.18.2.12"]
    for n, ns in enumerate(rs):
        start_realserver(topo, ns, f"rs{n + 1}", "0.0.0.0", udp_addr="0.0.0.0")
    director = Director(topo, dr, str(tmp_path / "control.sock"))
    director.start()
    try:
        director.ipvsadm("-A", "-t", f"{VIP_SEG}:80", "-s", "rr")
        for rip in rips:
            director.ipvsadm("-a", "-t", f"{VIP_SEG}:80", "-r", rip, method)
        kernel_cap = Capture(topo, dr, "eth0", str(tmp_path / "dir.pcap"), direction="out")
        for round_ in range(2):
            assert [_curl(topo, dr, f"http://{rip}/") for rip in rips] == ["rs1", "rs2"]
            assert _udp(topo, dr, rips[0], 5353) == "rs1 hello"
            assert sorted(curl_names(topo, cl, f"http://{VIP_SEG}/", 2)) == ["rs1", "rs2"]
        # the director's own SYNs come from its address, not the VIP: nothing it sent was for the VIP
        check_director_kernel_silent(kernel_cap.packets(), VIP_SEG, set())
    finally:
        assert director.stop() == 0, director.log()


def test_director_reaches_dr_real_servers_ipv6(topo, tmp_path, tools_ready):
    cl, dr, rs = build_segment6(topo, local_vip=True)
    rips = ["2001:db8:0:3::11", "2001:db8:0:3::12"]
    for n, ns in enumerate(rs):
        start_realserver(topo, ns, f"rs{n + 1}", "::")
    director = Director(topo, dr, str(tmp_path / "control.sock"))
    director.start()
    try:
        director.ipvsadm("-A", "-t", f"[{VIP6_SEG}]:80", "-s", "rr")
        for rip in rips:
            director.ipvsadm("-a", "-t", f"[{VIP6_SEG}]:80", "-r", f"[{rip}]:80", "-g")
        for round_ in range(2):
            # IPv6 source selection may pick the VIP on the director, which the DR real servers
            # hold themselves (so the answer would stay there, with or without lvsuser): a
            # checker on a DR director sends from the director's own address
            assert [_curl(topo, dr, f"http://[{rip}]/", source="2001:db8:0:3::1")
                    for rip in rips] == ["rs1", "rs2"]
            assert sorted(curl_names(topo, cl, f"http://[{VIP6_SEG}]/", 2)) == ["rs1", "rs2"]
    finally:
        assert director.stop() == 0, director.log()


# --------------------------------------------------------------------------- the guard heals

def _guard_tables(topo, ns):
    listed = topo.run(ns, ["nft", "list", "tables", "netdev"]).stdout.split()
    return [word for word in listed if word.startswith("lvsuser_")]


def _seconds_until_guard_back(topo, ns, table, limit=3.0):
    """Poll `nft list table` (bounded) until TABLE lists as before; seconds it took, or None."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if table in _guard_tables(topo, ns):
            return time.monotonic() - started
        time.sleep(0.02)
    return None


def test_guard_restored_after_flush_delete_and_edit(topo, tmp_path, tools_ready):
    """`nft flush ruleset`, `nft delete table`, a rule slipped into the guard's chain: each is
    undone within a second with one WARNING line naming the table, and the VIP configured on
    the director works again (without the guard its kernel would answer the SYN with a RST)."""
    cl, dr, rs = build_nat(topo)
    for n, ns in enumerate(rs):
        start_realserver(topo, ns, f"rs{n + 1}", "0.0.0.0")
    director = Director(topo, dr, str(tmp_path / "control.sock"))
    director.start()
    try:
        director.ipvsadm("-A", "-t", f"{VIP_NAT}:80", "-s", "rr")
        for rip in ("198.18.1.11", "198.18.1.12"):
            director.ipvsadm("-a", "-t", f"{VIP_NAT}:80", "-r", f"{rip}:80", "-m")
        assert sorted(curl_names(topo, cl, f"http://{VIP_NAT}/", 2)) == ["rs1", "rs2"]
        tables = _guard_tables(topo, dr)
        assert len(tables) == 1, tables
        table = tables[0]
        installed = topo.run(dr, ["nft", "list", "table", "netdev", table]).stdout
        assert "tcp dport 80 drop" in installed

        tamperings = [["nft", "flush", "ruleset"],
                      ["nft", "delete", "table", "netdev", table],
                      ["nft", "insert", "rule", "netdev", table, "in0", "tcp", "dport", "80", "accept"]]
        for n, argv in enumerate(tamperings):
            topo.run(dr, argv, check=True)
            if argv[1] == "insert":  # the table is still there: wait for it to list as installed
                started = time.monotonic()
                back = wait_for(lambda: topo.run(dr, ["nft", "list", "table", "netdev", table]).stdout
                                == installed, timeout=3, step=0.02)
                took = time.monotonic() - started if back else None
            else:
                took = _seconds_until_guard_back(topo, dr, table)
            assert took is not None and took < 1.0, (argv, took, director.log())
            assert topo.run(dr, ["nft", "list", "table", "netdev", table]).stdout == installed
            # the line is written just after the table is back: wait for it (bounded)
            warnings = wait_for(lambda: (lambda lines: lines if len(lines) > n else None)(
                [line for line in _whole_log(director).splitlines()
                 if "WARNING" in line and table in line and "restored" in line]), timeout=2)
            assert warnings and len(warnings) == n + 1, director.log()
            assert ("removed" if argv[1] != "insert" else "altered") in warnings[-1]
            assert sorted(curl_names(topo, cl, f"http://{VIP_NAT}/", 2)) == ["rs1", "rs2"], director.log()
    finally:
        director.ipvsadm("-C", check=False)
        assert director.stop() == 0, director.log()
    # a stop with an empty table removes it, and the watch does not resurrect it
    assert not _guard_tables(topo, dr)


# --------------------------------------------------------------------------- one per namespace

def test_second_director_in_a_namespace_is_refused(topo, tmp_path, tools_ready):
    """A second `lvsuser run` in a served namespace exits 1 with one line naming the first's
    control socket and pid, and leaves the first serving; the claim dies with its holder
    (SIGKILL too), so the next director starts; a clean stop leaves no lock file behind."""
    import os

    from lvsuser.director import instance

    cl, dr, rs = build_nat(topo)
    for n, ns in enumerate(rs):
        start_realserver(topo, ns, f"rs{n + 1}", "0.0.0.0")
    first = Director(topo, dr, str(tmp_path / "first.sock"))
    first.start()
    lock_file = instance.lock_path(topo.call_in(dr, instance.namespace_id))
    try:
        first.ipvsadm("-A", "-t", f"{VIP_NAT}:80", "-s", "rr")
        first.ipvsadm("-a", "-t", f"{VIP_NAT}:80", "-r", "198.18.1.11:80", "-m")
        second_sock = str(tmp_path / "second.sock")
        second = topo.run(dr, LVSUSER + ["run", "--control", second_sock], timeout=30)
        assert second.returncode == 1, second
        assert second.stderr.splitlines() == [
            f"lvsuser: another lvsuser director serves this network namespace (control socket "
            f"{first.sock}, pid {first.proc.pid})"], second.stderr
        assert not os.path.exists(second_sock)
        assert _served_by(topo, cl, f"http://{VIP_NAT}/", "rs1")  # the first one was not disturbed
        # a director in another namespace is no competitor
        other_ns = topo.add_ns("dr2")
        elsewhere = Director(topo, other_ns, str(tmp_path / "elsewhere.sock"))
        elsewhere.start()
        assert elsewhere.stop() == 0, elsewhere.log()
    finally:
        assert first.stop() == 0, first.log()
    assert not os.path.exists(lock_file)

    # the namespace is free again: a new director starts; killed, it leaves the claim behind
    # as a file only, and the one after it starts too
    third = Director(topo, dr, str(tmp_path / "third.sock"))
    third.start()
    third.proc.kill()
    third.proc.wait(timeout=5)
    fourth = Director(topo, dr, str(tmp_path / "fourth.sock"))
    fourth.start()
    try:
        fourth.ipvsadm("-A", "-t", f"{VIP_NAT}:80", "-s", "rr")
        fourth.ipvsadm("-a", "-t", f"{VIP_NAT}:80", "-r", "198.18.1.12:80", "-m")
        assert _served_by(topo, cl, f"http://{VIP_NAT}/", "rs2")
        with open(lock_file) as f:
            assert instance.parse_holder(f.read()) == (fourth.sock, fourth.proc.pid)
    finally:
        assert fourth.stop() == 0, fourth.log()
    assert not os.path.exists(lock_file)


# --------------------------------------------------------------------------- loopback alone at start

@pytest.mark.parametrize("io", ["afpacket", "tun"])
def test_director_started_with_loopback_alone_serves_interfaces_as_they_appear(topo, tmp_path,
                                                                               tools_ready, io):
    """As at boot: the namespace has only lo when the director starts.  It starts, says it
    serves no interface yet, takes a NAT service, and once the links to the client and the
    real servers appear (created and brought up after the start) it serves them: traffic flows.
    With --io tun the VIP, not local when configured, first goes on the TUN device and moves off
    it when the interface brings it: the policy table's default route must survive that."""
    dr = topo.add_ns("dr")
    director = Director(topo, dr, str(tmp_path / "control.sock"), io=io)
    director.start()
    try:
        if io == "afpacket":
            assert "serving no interface yet" in director.log(), director.log()
        director.ipvsadm("-A", "-t", f"{VIP_NAT}:80", "-s", "rr")
        director.ipvsadm("-a", "-t", f"{VIP_NAT}:80", "-r", "198.18.1.11:80", "-m")
        # the network comes up
        cl, rs1 = topo.add_ns("cl"), topo.add_ns("rsa")
        topo.veth(cl, "eth0", dr, "eth0")
        topo.veth(dr, "eth1", rs1, "eth0")
        topo.addr(cl, "eth0", "198.18.0.2/24")
        topo.addr(dr, "eth0", "198.18.0.1/24")
        topo.addr(dr, "eth0", f"{VIP_NAT}/32")
        topo.addr(dr, "eth1", "198.18.1.1/24")
        topo.addr(rs1, "eth0", "198.18.1.11/24")
        topo.route(cl, "default", "198.18.0.1")
        topo.sysctl(dr, "net.ipv4.ip_forward", 1)
        topo.realserver(rs1, "nat", "--director", "198.18.1.1")
        start_realserver(topo, rs1, "rs1", "0.0.0.0")

        assert wait_for(lambda: _curl(topo, cl, f"http://{VIP_NAT}/", 2) == "rs1", timeout=15,
                        step=0.3), director.log()
        if io == "tun":  # the kernel routes into the TUN device: no rings, no guard
            return
        served = [line for line in director.log().splitlines() if "serving interfaces" in line]
        assert served and "eth0" in served[-1] and "eth1" in served[-1], director.log()
        ruleset = topo.run(dr, ["nft", "list", "ruleset"]).stdout
        assert 'device "eth0"' in ruleset and 'device "eth1"' in ruleset, ruleset
    finally:
        assert director.stop() == 0, director.log()


# --------------------------------------------------------------------------- across a restart gap

def test_guard_table_outlives_a_killed_director_and_is_adopted(topo, tmp_path, tools_ready):
    """The guard is named after the director's control socket: killed, the director leaves it
    and the kernel stays quiet for the VIP (the client's SYN is not answered with a RST); the
    same director started again adopts it (one table) with its rules, and, holding the
    namespace's claim, sweeps every other director's table (none of them serves here now, even
    one whose state is kept for its own restart).  Cleared and stopped, it leaves no table."""
    import os
    import shutil

    from lvsuser import statedir

    cl, dr, rs = build_nat(topo)
    start_realserver(topo, rs[0], "rs1", "0.0.0.0")
    sock = str(tmp_path / "control.sock")
    table = "lvsuser_" + statedir.state_tag(sock)
    waiting = str(tmp_path / "waiting.sock")  # a director between two runs, state kept
    waiting_table, waiting_state = "lvsuser_" + statedir.state_tag(waiting), statedir.state_dir(waiting)
    os.makedirs(waiting_state)
    try:
        topo.run(dr, ["nft", "add", "table", "netdev", waiting_table], check=True)
        first = Director(topo, dr, sock)
        first.start()
        first.ipvsadm("-A", "-t", f"{VIP_NAT}:80", "-s", "rr")
        first.ipvsadm("-a", "-t", f"{VIP_NAT}:80", "-r", "198.18.1.11:80", "-m")
        assert _served_by(topo, cl, f"http://{VIP_NAT}/", "rs1")
        assert _guard_tables(topo, dr) == [table]
        rules = first.ipvsadm("-Sn").stdout
        first.proc.kill()
        first.proc.wait(timeout=5)

        assert table in _guard_tables(topo, dr)
        gap = topo.run(cl, ["curl", "-s", "-m", "2", f"http://{VIP_NAT}/"], timeout=10)
        assert gap.returncode == 28, gap  # unanswered; without the guard: RST, refused (7)

        topo.run(dr, ["nft", "add", "table", "netdev", waiting_table], check=True)
        second = Director(topo, dr, sock)
        second.start()
        try:
            assert _guard_tables(topo, dr) == [table]
            assert second.ipvsadm("-Sn").stdout == rules   # back without re-adding
            assert _served_by(topo, cl, f"http://{VIP_NAT}/", "rs1")
        finally:
            second.ipvsadm("-C", check=False)
            assert second.stop() == 0, second.log()
        assert _guard_tables(topo, dr) == []
    finally:
        shutil.rmtree(waiting_state, ignore_errors=True)
        topo.run(dr, ["nft", "delete", "table", "netdev", waiting_table])


def test_backend_closed_keeping_state_leaves_the_guard(topo, tmp_path, tools_ready):
    """UserspaceBackend.close(keep_state=True) leaves the guard table for the next director;
    close() removes it."""
    from lvsuser.backends.userspace import UserspaceBackend

    dr, peer = topo.add_ns("dr"), topo.add_ns("pe")
    topo.veth(dr, "eth0", peer, "eth0")
    topo.addr(dr, "eth0", "198.18.3.1/24")
    sock = str(tmp_path / "control.sock")
    backend = topo.call_in(dr, UserspaceBackend, control_path=sock)
    try:
        (table,) = _guard_tables(topo, dr)
        # cheap while nothing happens: no nft run per second (the first check answers the
        # events of our own install; the backstop is 5 s away)
        watch = backend._guard_watch
        checks = watch.checks
        time.sleep(2)
        assert watch.checks - checks <= 1, watch.checks
        # another program's tables cost no check; ours does, and is put back
        checks = watch.checks
        for argv in (["add", "table", "inet", "other"],
                     ["add", "chain", "inet", "other", "c", "{ type filter hook input priority 0; }"],
                     ["delete", "table", "inet", "other"]):
            topo.run(dr, ["nft", *argv], check=True)
        time.sleep(1)
        assert watch.checks == checks, (watch.checks, checks)
        topo.run(dr, ["nft", "delete", "table", "netdev", table], check=True)
        # (restores counts once the restored table is listed: wait for both)
        assert wait_for(lambda: backend._guard.restores == 1 and _guard_tables(topo, dr) == [table],
                        timeout=3), (backend._guard.restores, _guard_tables(topo, dr))
        assert watch.checks > checks
    finally:
        topo.call_in(dr, backend.close, keep_state=True)
    assert _guard_tables(topo, dr) == [table]
    again = topo.call_in(dr, UserspaceBackend, control_path=sock)
    try:
        assert _guard_tables(topo, dr) == [table]
    finally:
        topo.call_in(dr, again.close)
    assert _guard_tables(topo, dr) == []
