"""The director's view of its namespace: route/neighbour resolution, the nft guard, the netlink
monitor, and the AF_PACKET driver on its own (with a minimal routing core), in namespaces."""
from __future__ import annotations

import ipaddress
import subprocess
import sys
import threading
import time

import pytest

from lvsuser import model
from lvsuser.director import guard as guard_mod
from lvsuser.director.forwarding import Resolver
from lvsuser.director.monitor import Monitor

from .conftest import start_realserver, wait_for


def _in(topo, ns, func, *args):
    """Run FUNC in a thread inside NS: pyroute2 and probe sockets belong to the calling thread's
    namespace, so every resolver call happens in there."""
    return topo.call_in(ns, func, *args)


def test_resolver_on_link_gateway_local_and_unreachable(topo):
    dr, rs, gw = topo.add_ns("dr"), topo.add_ns("rs"), topo.add_ns("gw")
    topo.veth(dr, "eth0", rs, "eth0")
    topo.veth(dr, "eth1", gw, "eth0")
    topo.addr(dr, "eth0", "198.18.4.1/24")
    topo.addr(rs, "eth0", "198.18.4.11/24")
    topo.addr(dr, "eth1", "198.18.5.1/24")
    topo.addr(gw, "eth0", "198.18.5.254/24")
    topo.route(dr, "198.18.6.0/24", "198.18.5.254")
    resolver = Resolver()

    def resolve(addr):
        return _in(topo, dr, resolver.resolve, addr)

    try:
        # on-link: the first look probes the neighbour, a later look has its MAC
        first = resolve("198.18.4.11")
        assert first.ifname == "eth0" and first.nexthop == ipaddress.ip_address("198.18.4.11")
        assert first.src_addr == ipaddress.ip_address("198.18.4.1")
        assert wait_for(lambda: resolve("198.18.4.11").ready, timeout=5), "neighbour never resolved"
        egress = resolve("198.18.4.11")
        assert egress.dst_mac == topo.mac(rs, "eth0")
        assert egress.src_mac == topo.mac(dr, "eth0")
        assert egress.mtu == 1500
        # behind a gateway: the next hop is the gateway, its MAC is the one to use
        assert wait_for(lambda: resolve("198.18.6.7").ready, timeout=5)
        via = resolve("198.18.6.7")
        assert via.nexthop == ipaddress.ip_address("198.18.5.254")
        assert via.dst_mac == topo.mac(gw, "eth0") and via.ifname == "eth1"
        # the director's own address is no real server
        own = resolve("198.18.4.1")
        assert own.local and not own.ready
        # no route at all: a reason, not an exception
        lost = resolve("198.19.200.1")
        assert not lost.ready and "route" in lost.reason
    finally:
        resolver.close()


def test_guard_rules_for_services():
    vip = ipaddress.ip_address("198.18.0.10")
    svc = model.Service(af=model.AF_INET, protocol=model.IPPROTO_TCP, addr=vip, port=80,
                        dests=[model.Dest(addr=ipaddress.ip_address("198.18.1.11"), port=8080,
                                          fwd=model.Forward.MASQ),
                               model.Dest(addr=ipaddress.ip_address("198.18.1.12"), port=80,
                                          fwd=model.Forward.ROUTE)])
    fw = model.Service(af=model.AF_INET, fwmark=7)
    mark = model.MarkRule(mark=7, dst_net=ipaddress.ip_network("198.18.9.0/24"),
                          protocol=model.IPPROTO_UDP, dport_lo=1000, dport_hi=2000)
    rules = guard_mod.service_rules([svc, fw], [mark])
    assert "ip daddr 198.18.0.10 tcp dport 80 drop" in rules
    # NAT replies, but not the answers to the director's own connections
    assert "ip saddr 198.18.1.11 tcp sport 8080 fib daddr type != local drop" in rules
    assert not any("198.18.1.12" in r for r in rules)  # DR real servers answer clients directly
    assert "ip daddr 198.18.9.0/24 udp dport 1000-2000 drop" in rules
    assert any(r.startswith("ip daddr 198.18.0.10 icmp type") for r in rules)


def test_guard_installs_drops_and_removes(topo):
    cl, dr = topo.add_ns("cl"), topo.add_ns("dr")
    topo.veth(cl, "eth0", dr, "eth0")
    topo.addr(cl, "eth0", "198.18.7.2/24")
    topo.addr(dr, "eth0", "198.18.7.1/24")
    vip = ipaddress.ip_address("198.18.7.1")  # local: without the guard the kernel answers
    svc = model.Service(af=model.AF_INET, protocol=model.IPPROTO_TCP, addr=vip, port=80)
    start_realserver(topo, dr, "director-itself", "198.18.7.1")
    ok = topo.run(cl, ["curl", "-s", "-m", "3", "http://198.18.7.1/"])
    assert ok.stdout.strip() == "director-itself"
    guard = guard_mod.Guard(table=f"lvsuser_test{threading.get_native_id()}")
    topo.call_in(dr, guard.apply, ["eth0"], guard_mod.service_rules([svc], []))
    try:
        listed = topo.run(dr, ["nft", "list", "table", "netdev", guard.table]).stdout
        assert 'device "eth0"' in listed and "tcp dport 80 drop" in listed
        blocked = topo.run(cl, ["curl", "-s", "-m", "2", "http://198.18.7.1/"])
        assert blocked.returncode == 28, blocked  # timed out: the kernel never saw the SYN
        other = topo.run(cl, ["curl", "-s", "-m", "3", "http://198.18.7.1:9000/"])
        assert other.returncode != 28  # other ports still reach the kernel (RST -> refused fast)
    finally:
        topo.call_in(dr, guard.remove)
    assert guard.table not in topo.run(dr, ["nft", "list", "tables"]).stdout
    again = topo.run(cl, ["curl", "-s", "-m", "3", "http://198.18.7.1/"])
    assert again.stdout.strip() == "director-itself"


def test_sweep_removes_tables_of_dead_directors(topo):
    dr = topo.add_ns("dr")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = f"{guard_mod.TABLE_PREFIX}{dead.pid}"
    topo.run(dr, ["nft", "add", "table", "netdev", stale], check=True)
    removed = topo.call_in(dr, guard_mod.sweep_stale)
    assert stale in removed
    assert stale not in topo.run(dr, ["nft", "list", "tables"]).stdout


def test_monitor_reports_link_and_neighbour_changes(topo):
    dr, peer = topo.add_ns("dr"), topo.add_ns("pe")
    calls = []
    monitor = topo.call_in(dr, Monitor, lambda: calls.append(time.monotonic()), 0.05, 3600)
    monitor.start()
    try:
        time.sleep(0.2)
        before = len(calls)
        topo.veth(dr, "eth0", peer, "eth0")
        assert wait_for(lambda: len(calls) > before, timeout=3), "no callback after a new link"
    finally:
        monitor.stop()


def _set_link(topo, ns, ifname, state):
    from pyroute2 import IPRoute

    with IPRoute(netns=ns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state=state)


class _MiniRouter:
    """The smallest core a driver can feed: forwards IPv4 by destination, rewriting MACs only."""

    def __init__(self, table):
        self.table = table
        self.seen = 0

    def process(self, frame, ifindex, now):
        self.seen += 1
        if frame[12:14] != b"\x08\x00":
            return (0, None, 0)
        hop = self.table.get(bytes(frame[30:34]))
        if hop is None:
            return (0, None, 0)
        oif, src_mac, dst_mac = hop
        return (2, dst_mac + src_mac + frame[12:], oif)


def _two_legged_router(topo):
    """a -- d -- b on veths, ip_forward 0 in d: only a driver in d can carry traffic across.
    Returns the namespaces and a _MiniRouter core for d's two interfaces."""
    a, d, b = topo.add_ns("a"), topo.add_ns("d"), topo.add_ns("b")
    topo.veth(a, "eth0", d, "ea")
    topo.veth(b, "eth0", d, "eb")
    topo.addr(a, "eth0", "198.18.8.2/24")
    topo.addr(d, "ea", "198.18.8.1/24")
    topo.addr(b, "eth0", "198.18.9.2/24")
    topo.addr(d, "eb", "198.18.9.1/24")
    topo.route(a, "default", "198.18.8.1")
    topo.route(b, "default", "198.18.9.1")

    def mac(ns, ifname):
        return bytes.fromhex(topo.mac(ns, ifname).replace(":", ""))

    from pyroute2 import IPRoute

    with IPRoute(netns=d) as ipr:
        ia = ipr.link_lookup(ifname="ea")[0]
        ib = ipr.link_lookup(ifname="eb")[0]
    core = _MiniRouter({bytes([198, 18, 9, 2]): (ib, mac(d, "eb"), mac(b, "eth0")),
                        bytes([198, 18, 8, 2]): (ia, mac(d, "ea"), mac(a, "eth0"))})
    return a, d, b, [(ia, 1500), (ib, 1500)], core


def _thread_cpu_seconds(thread: threading.Thread) -> float:
    with open(f"/proc/self/task/{thread.native_id}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


# A bounded UDP burst from a to b (b has no listener: its kernel answers port unreachable, which
# the driver carries back): COUNT datagrams, at most SECONDS.
_UDP_BURST = """
import socket, sys, time
count, seconds = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.monotonic() + seconds
for i in range(count):
    try:
        s.sendto(b"x" * 18, ("198.18.9.2", 9))
    except OSError:
        pass
    if i % 256 == 0 and time.monotonic() > end:
        break
"""


def test_afpacket_busy_poll_spins_only_under_traffic(topo):
    """The RX busy-poll replaces most poll() calls while frames flow, and only then: idle, the
    driver sleeps (a spin that did not stop when traffic does would burn a core), and stop()
    is seen promptly even while the spin keeps finding frames."""
    from lvsuser import _fastpath

    a, d, b, ports, core = _two_legged_router(topo)
    with pytest.raises(ValueError):
        _fastpath.AfPacketDriver(core, ports, None, "ring", -1)
    driver = topo.call_in(d, _fastpath.AfPacketDriver, core, ports, None, "ring", 10000)
    assert driver.busy_poll_us == 10000
    runner = threading.Thread(target=driver.run, daemon=True)
    runner.start()
    try:
        burst = topo.run(a, [sys.executable, "-c", _UDP_BURST, "20000", "5"], timeout=30)
        assert burst.returncode == 0, burst.stderr
        time.sleep(0.3)     # the last spin (10 ms) is long over
        stats = driver.stats()
        assert stats["rx_frames"] > 1000, stats
        # under traffic most batches came from the spin, not from a poll() wake-up
        assert stats["wakeups"] < stats["batches"], stats
        before = _thread_cpu_seconds(runner)
        time.sleep(1.0)
        idle = _thread_cpu_seconds(runner) - before
        # A stray frame (neighbour discovery...) may still arrive, and each wake-up that finds
        # one spins its 10 ms: allow those, and 20 ms for the rest.  A spin that never stops
        # would use the whole second.
        spins = driver.stats()["batches"] - stats["batches"]
        allowed = 0.020 + spins * 0.010 * 1.5
        assert idle < allowed, f"the idle driver used {idle:.3f} s of CPU in 1 s ({spins} spins)"

        # stop() while a burst is still running: the spin must not keep the loop from seeing it
        sender = topo.popen(a, [sys.executable, "-c", _UDP_BURST, "2000000", "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            driver.stop()
            runner.join(2)
            assert not runner.is_alive(), "stop() was not seen during traffic"
        finally:
            sender.kill()
            sender.wait(10)
    finally:
        driver.stop()
        runner.join(5)
    driver.close()


@pytest.mark.parametrize("tx,busy_poll_us", [("ring", 0), ("mmsg", 0), ("ring", 200)])
def test_afpacket_driver_forwards_tso_and_partial_checksums(topo, tx, busy_poll_us):
    """veth hands the ring TSO super-frames with partial checksums; the driver must cut them at
    the MTU and complete the checksums, or the receiver drops everything."""
    from lvsuser import _fastpath

    assert hasattr(_fastpath, "AfPacketDriver"), "lvsuser._fastpath lacks the I/O drivers"
    a, d, b, ports, core = _two_legged_router(topo)
    driver = topo.call_in(d, _fastpath.AfPacketDriver, core, ports, None, tx, busy_poll_us)
    runner = threading.Thread(target=driver.run, daemon=True)
    runner.start()
    try:
        start_realserver(topo, b, "far", "198.18.9.2")
        small = topo.run(a, ["curl", "-s", "-m", "5", "http://198.18.9.2/"])
        assert small.stdout.strip() == "far", small
        big = topo.run(a, ["curl", "-s", "-m", "10", "-o", "/dev/null", "-w", "%{size_download}",
                           "http://198.18.9.2/bytes/3000000"])
        assert big.stdout == "3000000", big
        # the upload direction: a's TSO frames through the ring too
        upload = topo.run(a, ["curl", "-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}",
                              "-H", "X-Fill: " + "y" * 60000, "http://198.18.9.2/"])
        assert upload.stdout == "200", upload

        # an interface going down and up again: no spinning on the pending error, and forwarding
        # resumes by itself
        wakeups_before = driver.stats()["wakeups"]
        _set_link(topo, d, "ea", "down")
        time.sleep(1.0)
        wakeups = driver.stats()["wakeups"] - wakeups_before
        _set_link(topo, d, "ea", "up")
        # idle, the loop wakes every 100 ms; a pending socket error would wake it constantly
        assert wakeups < 50, f"the driver woke {wakeups} times in 1 s with a link down"
        again = wait_for(lambda: topo.run(a, ["curl", "-s", "-m", "2", "http://198.18.9.2/"]).stdout.strip() == "far",
                         timeout=10, step=0.2)
        assert again, "no forwarding after the link came back"
    finally:
        driver.stop()
        runner.join(5)
    stats = driver.stats()
    driver.close()
    assert stats["gso_split"] > 0 and stats["gso_segments"] > stats["gso_split"], stats
    assert stats["csum_completed"] > 0, stats
    assert stats["tx_frames"] >= stats["rx_frames"] > 0, stats
    assert stats["socket_errors"] > 0, stats  # the link-down error was seen and cleared
    for reason in ("drop_truncated", "drop_tx_full", "drop_tx_too_big", "drop_tx_no_ring"):
        assert stats[reason] == 0, stats
    assert core.seen > 0


def test_daemon_keeps_no_descriptor_per_change(topo, tmp_path):
    """Each `ipvsadm` change republishes from a short-lived control thread; nothing it opens
    (netlink handles, probe sockets) may stay behind."""
    import os

    dr, peer = topo.add_ns("dr"), topo.add_ns("pe")
    topo.veth(dr, "eth0", peer, "eth0")
    topo.addr(dr, "eth0", "198.18.3.1/24")
    sock = str(tmp_path / "control.sock")
    proc = topo.popen(dr, [sys.executable, "-m", "lvsuser", "run", "--control", sock,
                           "--state-dir", sock + ".state"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: os.path.exists(sock), timeout=10)
    env = dict(os.environ, LVSUSER_CONTROL=sock)

    def ipvsadm(*args):
        result = topo.run(dr, [sys.executable, "-m", "lvsuser", "ipvsadm", *args], env=env)
        assert result.returncode == 0, result.stderr

    def descriptors():
        return len(os.listdir(f"/proc/{proc.pid}/fd"))

    ipvsadm("-A", "-t", "198.18.3.10:80")
    ipvsadm("-a", "-t", "198.18.3.10:80", "-r", "198.18.3.20", "-m")
    time.sleep(1.5)  # let the monitor's first refresh happen
    before = descriptors()
    for n in range(21, 51):
        ipvsadm("-a", "-t", "198.18.3.10:80", "-r", f"198.18.3.{n}", "-m")
    time.sleep(1.5)
    after = descriptors()
    proc.terminate()
    assert proc.wait(timeout=10) == 0
    assert after - before < 10, f"{after - before} descriptors more after 30 changes"


def test_interface_option_narrows_and_unknown_name_is_refused(topo, tmp_path):
    import os

    dr, a, b = topo.add_ns("dr"), topo.add_ns("pa"), topo.add_ns("pb")
    topo.veth(dr, "eth0", a, "eth0")
    topo.veth(dr, "eth1", b, "eth0")
    sock = str(tmp_path / "control.sock")
    bad = topo.run(dr, [sys.executable, "-m", "lvsuser", "run", "--control", sock,
                        "--state-dir", sock + ".state", "--interface", "nosuch0"], timeout=20)
    assert bad.returncode != 0 and "nosuch0" in bad.stderr, bad
    proc = topo.popen(dr, [sys.executable, "-m", "lvsuser", "run", "--control", sock,
                           "--state-dir", sock + ".state", "--interface", "eth1"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: os.path.exists(sock), timeout=10)
        env = dict(os.environ, LVSUSER_CONTROL=sock)
        added = topo.run(dr, [sys.executable, "-m", "lvsuser", "ipvsadm", "-A", "-u",
                              "198.18.3.10:53"], env=env)
        assert added.returncode == 0, added.stderr
        ruleset = wait_for(lambda: (lambda text: text if "198.18.3.10" in text else "")(
            topo.run(dr, ["nft", "list", "ruleset"]).stdout), timeout=5)
        assert 'device "eth1"' in ruleset and 'device "eth0"' not in ruleset, ruleset
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_tun_director_refuses_direct_routing(topo, tmp_path):
    """--io tun carries bare IP packets, so a DR (-g) real server would get nothing: adding or
    editing one is refused with EINVAL (ipvsadm's message, table unchanged), the director says
    why on stderr, and a rules file with one stops the start."""
    import errno
    import os

    from lvsuser.control.ipvsadm.errors import strerror_for_operation

    dr, peer = topo.add_ns("dr"), topo.add_ns("pe")
    topo.veth(dr, "eth0", peer, "eth0")
    topo.addr(dr, "eth0", "198.18.3.1/24")
    sock = str(tmp_path / "control.sock")
    director_log = tmp_path / "director.log"
    with open(director_log, "w") as log_file:
        proc = topo.popen(dr, [sys.executable, "-m", "lvsuser", "run", "--control", sock,
                               "--state-dir", sock + ".state", "--io", "tun"],
                          stdout=subprocess.DEVNULL, stderr=log_file)
    env = dict(os.environ, LVSUSER_CONTROL=sock)

    def ipvsadm(*args):
        return topo.run(dr, [sys.executable, "-m", "lvsuser", "ipvsadm", *args], env=env)

    try:
        assert wait_for(lambda: os.path.exists(sock), timeout=10)
        assert ipvsadm("-A", "-t", "198.18.3.10:80").returncode == 0
        refused = ipvsadm("-a", "-t", "198.18.3.10:80", "-r", "198.18.3.20", "-g")
        assert refused.returncode != 0
        assert strerror_for_operation("add_dest", errno.EINVAL) in refused.stderr
        masq = ipvsadm("-a", "-t", "198.18.3.10:80", "-r", "198.18.3.21", "-m")
        assert masq.returncode == 0, masq.stderr
        edited = ipvsadm("-e", "-t", "198.18.3.10:80", "-r", "198.18.3.21", "-g", "-w", "5")
        assert edited.returncode != 0
        assert strerror_for_operation("edit_dest", errno.EINVAL) in edited.stderr
        listing = ipvsadm("-L", "-n")
        assert listing.returncode == 0, listing.stderr
        rows = [line.split() for line in listing.stdout.splitlines() if "->" in line]
        # the header row, then the one masqueraded real server, weight unchanged
        assert rows[1:] == [["->", "198.18.3.21:80", "Masq", "1", "0", "0"]], listing.stdout
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    said = [line for line in director_log.read_text().splitlines() if "--io afpacket" in line]
    assert len(said) == 2 and "198.18.3.20" in said[0] and "198.18.3.21" in said[1], said

    rules_file = tmp_path / "rules"
    rules_file.write_text("-A -t 198.18.3.10:80 -s rr\n-a -t 198.18.3.10:80 -r 198.18.3.20:80 -g -w 1\n")
    started = topo.run(dr, [sys.executable, "-m", "lvsuser", "run", "--control",
                            str(tmp_path / "other.sock"), "--state-dir", str(tmp_path / "other.state"),
                            "--io", "tun",
                            "--rules", str(rules_file)], timeout=30)
    assert started.returncode == 1, started
    assert "line 2" in started.stderr and "--io afpacket" in started.stderr, started.stderr
