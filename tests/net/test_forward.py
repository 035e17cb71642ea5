"""End to end in namespaces: the guide's three LVS modes through `lvsuser run`.

Each test builds the guide's hosts as namespaces (client, director, rs1, rs2, and a switch
namespace holding the bridge of a shared segment), starts real servers that answer with their own
name, runs `python3 -m lvsuser run --control SOCK` in the director, configures it with the guide's
`ipvsadm` lines through `python3 -m lvsuser ipvsadm`, and then checks, with real clients:

  * HTTP with curl succeeds and round robin alternates between the real servers, newest first;
  * a long-lived TCP connection stays on one real server while others come and go;
  * a UDP request gets its answer;
  * the client only ever sees the VIP (a capture in the client namespace, decoded with scapy);
  * the director's own kernel sends nothing for the VIP: no RST, no ICMP, no un-rewritten NAT
    reply (a capture of what the director's kernel transmits: our AF_PACKET TX ring bypasses the
    qdisc layer and so never shows up in it; with --io tun the device is left out of it).

Addresses: client net 198.18.0.0/24, real-server net 198.18.1.0/24 (NAT); one segment
198.18.2.0/24 for DR and TUN, as in the guide.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from lvsuser import statedir
from lvsuser.lab import netns

from .conftest import start_realserver, wait_for

scapy_all = pytest.importorskip("scapy.all")

LVSUSER = [sys.executable, "-m", "lvsuser"]


class Director:
    """`lvsuser run` in the director namespace, and `lvsuser ipvsadm` talking to it."""

    def __init__(self, topo: netns.Topology, ns: str, sock_path: str, io: str = "afpacket",
                 extra_args: tuple[str, ...] = ()):
        self.topo, self.ns, self.sock, self.io = topo, ns, sock_path, io
        self.extra_args = list(extra_args)
        self.proc = None
        self.log_path = sock_path + ".log"

    def start(self) -> None:
        log = open(self.log_path, "w")
        started = time.monotonic()
        self.proc = self.topo.popen(self.ns, LVSUSER + ["run", "--control", self.sock, "--io", self.io,
                                                      "--state-dir", self.sock + ".state",
                                                      *self.extra_args],
                                    stdout=log, stderr=subprocess.STDOUT)
        ok = wait_for(lambda: self.proc.poll() is not None or (
            os.path.exists(self.sock) and self.ipvsadm("-Ln", check=False).returncode == 0),
            timeout=10)
        if not ok or self.proc.poll() is not None:
            raise AssertionError(f"lvsuser run did not come up:\n{self.log()}")
        self.startup_seconds = time.monotonic() - started

    def ipvsadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ, LVSUSER_CONTROL=self.sock)
        result = self.topo.run(self.ns, LVSUSER + ["ipvsadm", *args], env=env, timeout=20)
        if check and result.returncode != 0:
            raise AssertionError(f"ipvsadm {' '.join(args)} failed: {result.stderr}{self.log()}")
        return result

    def counters(self) -> dict:
        """`lvsuser counters --json`: what the datapath counted, by reason."""
        result = self.topo.run(self.ns, LVSUSER + ["counters", "--control", self.sock, "--json"],
                               timeout=20)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def log(self) -> str:
        try:
            with open(self.log_path) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=5)


class Capture:
    """tcpdump writing a pcap in one namespace; read back with scapy."""

    def __init__(self, topo, ns, ifname, path, direction=None, bpf="ip"):
        argv = ["tcpdump", "--immediate-mode", "-U", "-n", "-s", "256", "-i", ifname, "-w", path]
        if direction:
            argv += ["-Q", direction]
        self.path = path
        self.proc = topo.popen(ns, argv + [bpf], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # tcpdump says "listening on" once its socket is open
        line = self.proc.stderr.readline().decode(errors="replace")
        if "listening" not in line:
            raise AssertionError(f"tcpdump did not start: {line}")

    def packets(self):
        time.sleep(0.3)  # let -U flush the last packets
        self.proc.terminate()
        self.proc.wait(timeout=5)
        if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            return []
        return list(scapy_all.rdpcap(self.path))


# --------------------------------------------------------------------------- topologies

VIP_NAT = "198.18.0.10"
VIP_SEG = "198.18.2.100"


def build_nat(topo, local_vip=True):
    """Guide's NAT: client -- director (VIP, DIP) -- switch -- rs1, rs2 (gateway: DIP)."""
    cl, dr, sw = topo.add_ns("cl"), topo.add_ns("dr"), topo.add_ns("sw")
    rs = [topo.add_ns("rsa"), topo.add_ns("rsb")]
    topo.veth(cl, "eth0", dr, "eth0")
    topo.veth(dr, "eth1", sw, "p0")
    topo.veth(rs[0], "eth0", sw, "p1")
    topo.veth(rs[1], "eth0", sw, "p2")
    topo.bridge(sw, "br0", ["p0", "p1", "p2"])
    topo.addr(cl, "eth0", "198.18.0.2/24")
    topo.addr(dr, "eth0", "198.18.0.1/24")
    if local_vip:
        topo.addr(dr, "eth0", f"{VIP_NAT}/32")
    topo.addr(dr, "eth1", "198.18.1.1/24")
    topo.route(cl, "default", "198.18.0.1")
    topo.sysctl(dr, "net.ipv4.ip_forward", 1)
    for n, ns in enumerate(rs):
        topo.addr(ns, "eth0", f"198.18.1.{11 + n}/24")
        topo.realserver(ns, "nat", "--director", "198.18.1.1")
    return cl, dr, rs


def build_segment(topo, mode, local_vip=True):
    """Guide's DR and TUN: client, director, rs1, rs2 on one segment (a bridge in `sw`)."""
    cl, dr, sw = topo.add_ns("cl"), topo.add_ns("dr"), topo.add_ns("sw")
    rs = [topo.add_ns("rsa"), topo.add_ns("rsb")]
    hosts = [(cl, "198.18.2.2"), (dr, "198.18.2.1"), (rs[0], "198.18.2.11"), (rs[1], "198.18.2.12")]
    for n, (ns, address) in enumerate(hosts):
        topo.veth(ns, "eth0", sw, f"p{n}")
        topo.addr(ns, "eth0", f"{address}/24")
    topo.bridge(sw, "br0", [f"p{n}" for n in range(len(hosts))])
    if local_vip:
        topo.addr(dr, "eth0", f"{VIP_SEG}/32")  # the guide's eth0:0
    for ns in rs:
        topo.realserver(ns, mode, "--vip", VIP_SEG)
    return cl, dr, rs




# --------------------------------------------------------------------------- client actions

def curl_names(topo, cl, url, count):
    names = []
    for _ in range(count):
        result = topo.run(cl, ["curl", "-s", "-m", "5", url], timeout=10)
        names.append(result.stdout.strip() or f"<curl exit {result.returncode}>")
    return names


UDP_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
for attempt in range(3):
    s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
    try:
        data, peer = s.recvfrom(2048)
        print(data.decode(), peer[0])
        break
    except socket.timeout:
        continue
"""

LONG_CLIENT = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
f = s.makefile("rwb")
for n in range(int(sys.argv[3])):
    f.write(b"line%d\n" % n); f.flush()
    print(f.readline().decode().strip(), flush=True)
    time.sleep(0.2)
"""


def check_client_sees_only_vip(packets, client_ip, vip):
    """Every IPv4 packet reaching the client from outside comes from the VIP."""
    foreign = [p for p in packets if p.haslayer(scapy_all.IP) and p[scapy_all.IP].dst == client_ip
               and p[scapy_all.IP].src != vip]
    assert not foreign, f"client saw packets not from the VIP: {[p.summary() for p in foreign[:5]]}"
    from_vip = [p for p in packets if p.haslayer(scapy_all.IP) and p[scapy_all.IP].src == vip]
    assert from_vip, "the capture saw no answer from the VIP at all"


def check_director_kernel_silent(packets, vip, rips, routes_our_output=False):
    """What the director's kernel sent: nothing from the VIP, no RST, no ICMP, no raw NAT reply.

    With --io tun the kernel routes what the core wrote into the TUN device, so packets from the
    VIP are expected there; un-rewritten replies, RSTs and ICMP still are not."""
    bad = []
    for p in packets:
        if not p.haslayer(scapy_all.IP):
            continue
        ip = p[scapy_all.IP]
        if (ip.src == vip and not routes_our_output) or ip.src in rips:
            bad.append(p)
        elif p.haslayer(scapy_all.TCP) and p[scapy_all.TCP].flags & 0x04:
            bad.append(p)
        elif p.haslayer(scapy_all.ICMP):
            bad.append(p)
    assert not bad, f"the director's kernel answered: {[p.summary() for p in bad[:5]]}"


def exercise(topo, tmp_path, director, cl, dr, rs, vip, client_ip, director_ifs, rips,
             routes_our_output=False):
    """The checks every mode shares; returns nothing, asserts everything."""
    for n, ns in enumerate(rs):
        # NAT real servers answer from their own address (the director rewrites it); DR and
        # TUN real servers must answer from the VIP themselves.
        start_realserver(topo, ns, f"rs{n + 1}", "0.0.0.0", udp_addr="0.0.0.0" if rips else vip)
    client_cap = Capture(topo, cl, "eth0", str(tmp_path / "client.pcap"))
    kernel_caps = [Capture(topo, dr, ifname, str(tmp_path / f"dir-{ifname}.pcap"), direction="out")
                   for ifname in director_ifs]

    names = curl_names(topo, cl, f"http://{vip}/", 6)
    # rr over [rs2, rs1] (kernel list order: newest first) alternates, starting with rs2
    assert names == ["rs2", "rs1"] * 3, names

    long_proc = topo.popen(cl, [sys.executable, "-c", LONG_CLIENT, vip, "9000", "10"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    more = curl_names(topo, cl, f"http://{vip}/", 4)
    out, err = long_proc.communicate(timeout=20)
    lines = out.split()
    echoed = [w for w in lines if w.startswith("rs")]
    assert len(echoed) == 10 and len(set(echoed)) == 1, (out, err)
    assert set(more) == {"rs1", "rs2"}, more

    udp = topo.run(cl, [sys.executable, "-c", UDP_CLIENT, vip, "5353"], timeout=15)
    words = udp.stdout.split()
    assert len(words) == 3 and words[0] in ("rs1", "rs2") and words[1] == "ping", udp
    assert words[2] == vip, f"UDP answer came from {words[2]}, not the VIP"

    big = topo.run(cl, ["curl", "-s", "-m", "10", "-o", "/dev/null", "-w", "%{size_download}",
                        f"http://{vip}/bytes/2000000"], timeout=15)
    assert big.stdout == "2000000", big

    listing = director.ipvsadm("-Ln").stdout
    assert vip in listing

    check_client_sees_only_vip(client_cap.packets(), client_ip, vip)
    for cap in kernel_caps:
        check_director_kernel_silent(cap.packets(), vip, rips, routes_our_output)


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "control.sock")


def test_nat(topo, tmp_path, sock_path, lvsuser_ready):
    cl, dr, rs = build_nat(topo)
    director = Director(topo, dr, sock_path)
    director.start()
    assert director.startup_seconds < 3, director.startup_seconds
    try:
        director.ipvsadm("-A", "-t", f"{VIP_NAT}:80", "-s", "rr")
        director.ipvsadm("-a", "-t", f"{VIP_NAT}:80", "-r", "198.18.1.11:80", "-m")
        director.ipvsadm("-a", "-t", f"{VIP_NAT}:80", "-r", "198.18.1.12:80", "-m")
        director.ipvsadm("-A", "-t", f"{VIP_NAT}:9000", "-s", "rr")
        director.ipvsadm("-a", "-t", f"{VIP_NAT}:9000", "-r", "198.18.1.11:9000", "-m")
        director.ipvsadm("-a", "-t", f"{VIP_NAT}:9000", "-r", "198.18.1.12:9000", "-m")
        director.ipvsadm("-A", "-u", f"{VIP_NAT}:5353", "-s", "rr")
        director.ipvsadm("-a", "-u", f"{VIP_NAT}:5353", "-r", "198.18.1.11:5353", "-m")
        director.ipvsadm("-a", "-u", f"{VIP_NAT}:5353", "-r", "198.18.1.12:5353", "-m")
        exercise(topo, tmp_path, director, cl, dr, rs, VIP_NAT, "198.18.0.2", ["eth0", "eth1"],
                 {"198.18.1.11", "198.18.1.12"})
        # the connection table as ipvsadm lists it, filled by the datapath
        conns = director.ipvsadm("-Lnc").stdout
        assert any("198.18.0.2:" in line and f"{VIP_NAT}:80" in line and "198.18.1.1" in line
                   for line in conns.splitlines()), conns
        # weight 0 (quiesced): no new connections to rs2, through CLI, table, publish and core
        director.ipvsadm("-e", "-t", f"{VIP_NAT}:80", "-r", "198.18.1.12:80", "-m", "-w", "0")
        assert curl_names(topo, cl, f"http://{VIP_NAT}/", 4) == ["rs1"] * 4
        # a deleted real server gets nothing; the one added back does again
        director.ipvsadm("-d", "-t", f"{VIP_NAT}:80", "-r", "198.18.1.11:80")
        director.ipvsadm("-e", "-t", f"{VIP_NAT}:80", "-r", "198.18.1.12:80", "-m", "-w", "1")
        assert curl_names(topo, cl, f"http://{VIP_NAT}/", 2) == ["rs2"] * 2
        # a stop keeps the table (and the guard keeping the kernel out meanwhile) for the next
        # start; cleared first, the director leaves nothing behind
        director.ipvsadm("-C")
    finally:
        assert director.stop() == 0, director.log()
    tables = topo.run(dr, ["nft", "list", "tables"]).stdout
    assert "lvsuser_" not in tables, tables


def test_connection_table_bound(topo, sock_path, lvsuser_ready):
    """`lvsuser run --max-conns N`: connections past N are refused (dropped, counted), the
    ones in the table keep working, and -Lnc lists exactly N."""
    cl, dr, rs = build_nat(topo)
    for n, ns in enumerate(rs):
        start_realserver(topo, ns, f"rs{n + 1}", "0.0.0.0")
    director = Director(topo, dr, sock_path, extra_args=("--max-conns", "3"))
    director.start()
    try:
        director.ipvsadm("-A", "-u", f"{VIP_NAT}:5353", "-s", "rr")
        director.ipvsadm("-a", "-u", f"{VIP_NAT}:5353", "-r", "198.18.1.11:5353", "-m")
        director.ipvsadm("-a", "-u", f"{VIP_NAT}:5353", "-r", "198.18.1.12:5353", "-m")
        # each client run is a new socket, so a new source port and a new connection
        answers = [topo.run(cl, [sys.executable, "-c", UDP_CLIENT, VIP_NAT, "5353"],
                            timeout=20).stdout.strip() for _ in range(5)]
        assert all(answers[:3]) and not any(answers[3:]), answers
        rows = [line for line in director.ipvsadm("-Lnc").stdout.splitlines()
                if line.startswith("UDP")]
        assert len(rows) == 3, rows
        core = director.counters()["core"]
        # the two refused clients each tried three times
        assert core["conn_new"] == 3 and core["table_full"] == 6, core
    finally:
        assert director.stop() == 0, director.log()


# Sent from the client at layer 2 (a raw IP socket would have the kernel fix the checksum).
BAD_FRAMES = r"""
import sys
from scapy.all import Ether, IP, TCP, UDP, Raw, sendp
dst_mac, vip = sys.argv[1], sys.argv[2]
eth = Ether(dst=dst_mac)
frames = []
frames += [eth / IP(dst=vip, flags="MF", frag=0, id=7) / UDP(dport=5353) / Raw(b"x" * 32)] * 3
frames += [eth / IP(dst=vip, chksum=0x1234) / TCP(dport=80, flags="S")] * 2
raw = bytes(eth / IP(dst=vip) / TCP(dport=80, flags="S"))
frames += [Raw(raw[:14 + 20 + 6])]  # shorter than its IP total length says
frames += [eth / IP(dst=vip, proto=6) / Raw(bytes(TCP(dport=80))[:6])]  # TCP header cut short
sendp(frames, iface="eth0", verbose=False)
"""


def test_malformed_frames_are_counted_by_reason_and_lose_nothing(topo, sock_path, lvsuser_ready):
    """Fragments, a bad IPv4 checksum, a packet cut short and a TCP header cut short, all to
    the VIP: each lands in its own counter (read with `lvsuser counters`), none reaches a real server, and the service
    goes on answering."""
    cl, dr, rs = build_nat(topo)
    for n, ns in enumerate(rs):
        start_realserver(topo, ns, f"rs{n + 1}", "0.0.0.0")
    director = Director(topo, dr, sock_path)
    director.start()
    try:
        director.ipvsadm("-A", "-t", f"{VIP_NAT}:80", "-s", "rr")
        director.ipvsadm("-A", "-u", f"{VIP_NAT}:5353", "-s", "rr")
        for n in (11, 12):
            director.ipvsadm("-a", "-t", f"{VIP_NAT}:80", "-r", f"198.18.1.{n}:80", "-m")
            director.ipvsadm("-a", "-u", f"{VIP_NAT}:5353", "-r", f"198.18.1.{n}:5353", "-m")
        before = director.counters()["core"]
        mac = topo.mac(dr, "eth0")
        sent = topo.run(cl, [sys.executable, "-c", BAD_FRAMES, mac, VIP_NAT], timeout=30)
        assert sent.returncode == 0, sent.stderr
        core = wait_for(lambda: (lambda c: c if c["l4_truncated"] > before["l4_truncated"] else None)(
            director.counters()["core"]), timeout=5)
        assert core, director.counters()
        grown = {k: core[k] - before[k] for k in core if core[k] != before[k]}
        assert grown.get("fragment") == 3 and grown.get("ip_bad_checksum") == 2, grown
        assert grown.get("ip_truncated") == 1 and grown.get("l4_truncated") == 1, grown
        assert "conn_new" not in grown and "fwd_in" not in grown, grown
        text = topo.run(dr, LVSUSER + ["counters", "--control", sock_path]).stdout
        assert "dropped: a fragment to a VIP" in text and "IPv4 header checksum wrong" in text
        assert curl_names(topo, cl, f"http://{VIP_NAT}/", 2) == ["rs2", "rs1"]
    finally:
        assert director.stop() == 0, director.log()
    assert "core counters: " in director.log() and "fragment=3" in director.log()


def _segment_services(director, method):
    for port, proto in ((80, "-t"), (9000, "-t"), (5353, "-u")):
        director.ipvsadm("-A", proto, f"{VIP_SEG}:{port}", "-s", "rr")
        director.ipvsadm("-a", proto, f"{VIP_SEG}:{port}", "-r", "198.18.2.11", method)
        director.ipvsadm("-a", proto, f"{VIP_SEG}:{port}", "-r", "198.18.2.12", method)


@pytest.mark.parametrize("local_vip", [True, False], ids=["vip-on-director", "vip-answered-by-core"])
def test_dr(topo, tmp_path, sock_path, lvsuser_ready, local_vip):
    cl, dr, rs = build_segment(topo, "dr", local_vip=local_vip)
    director = Director(topo, dr, sock_path)
    director.start()
    try:
        _segment_services(director, "-g")
        exercise(topo, tmp_path, director, cl, dr, rs, VIP_SEG, "198.18.2.2", ["eth0"], set())
    finally:
        assert director.stop() == 0, director.log()


def test_tun(topo, tmp_path, sock_path, lvsuser_ready):
    cl, dr, rs = build_segment(topo, "tun")
    director = Director(topo, dr, sock_path)
    director.start()
    try:
        _segment_services(director, "-i")
        exercise(topo, tmp_path, director, cl, dr, rs, VIP_SEG, "198.18.2.2", ["eth0"], set())
    finally:
        assert director.stop() == 0, director.log()


@pytest.mark.parametrize("mode", ["nat", "tun", "tun-vip-not-local"])
def test_io_tun(topo, tmp_path, sock_path, lvsuser_ready, mode):
    """`--io tun`: the kernel routes VIP traffic (and NAT replies) through the director's TUN
    device; a VIP the director does not own is answered for with a proxy neighbour entry."""
    if mode == "nat":
        cl, dr, rs = build_nat(topo)
        vip, client_ip, ifs, rips = VIP_NAT, "198.18.0.2", ["eth0", "eth1"], {"198.18.1.11", "198.18.1.12"}
    else:
        cl, dr, rs = build_segment(topo, "tun", local_vip=(mode == "tun"))
        vip, client_ip, ifs, rips = VIP_SEG, "198.18.2.2", ["eth0"], set()
    director = Director(topo, dr, sock_path, io="tun")
    director.start()
    try:
        if mode == "nat":
            for port, proto in ((80, "-t"), (9000, "-t"), (5353, "-u")):
                director.ipvsadm("-A", proto, f"{vip}:{port}", "-s", "rr")
                for n in (11, 12):
                    director.ipvsadm("-a", proto, f"{vip}:{port}", "-r", f"198.18.1.{n}:{port}", "-m")
        else:
            _segment_services(director, "-i")
        exercise(topo, tmp_path, director, cl, dr, rs, vip, client_ip, ifs, rips,
                 routes_our_output=True)
    finally:
        assert director.stop() == 0, director.log()
    rules = topo.run(dr, ["ip", "rule", "show"]).stdout
    assert "lookup local" in rules.splitlines()[0], rules
    assert "proxy" not in topo.run(dr, ["ip", "neigh", "show", "proxy"]).stdout


# --------------------------------------------------------------------------- IPv6

VIP6 = "2001:db8:0:1::10"

UDP6_CLIENT = UDP_CLIENT.replace("socket.AF_INET,", "socket.AF_INET6,")


def build_nat6(topo):
    """The NAT topology in 2001:db8::/32: client net 2001:db8:0:1::/64, real servers 2001:db8:0:2::/64."""
    names = [topo.add_ns(role) for role in ("cl", "dr", "sw", "rsa", "rsb")]
    for ns in names:  # no duplicate address detection: addresses usable at once
        topo.sysctl(ns, "net.ipv6.conf.default.accept_dad", 0)
        topo.sysctl(ns, "net.ipv6.conf.all.accept_dad", 0)
    cl, dr, sw, rsa, rsb = names
    topo.veth(cl, "eth0", dr, "eth0")
    topo.veth(dr, "eth1", sw, "p0")
    topo.veth(rsa, "eth0", sw, "p1")
    topo.veth(rsb, "eth0", sw, "p2")
    topo.bridge(sw, "br0", ["p0", "p1", "p2"])
    topo.addr(cl, "eth0", "2001:db8:0:1::2/64")
    topo.addr(dr, "eth0", "2001:db8:0:1::1/64")
    topo.addr(dr, "eth0", f"{VIP6}/128")
    topo.addr(dr, "eth1", "2001:db8:0:2::1/64")
    topo.route(cl, "default6", "2001:db8:0:1::1")
    topo.sysctl(dr, "net.ipv6.conf.all.forwarding", 1)
    for n, ns in enumerate((rsa, rsb)):
        topo.addr(ns, "eth0", f"2001:db8:0:2::{11 + n}/64")
        topo.route(ns, "default6", "2001:db8:0:2::1")
    return cl, dr, [rsa, rsb]


def test_nat_ipv6(topo, tmp_path, sock_path, lvsuser_ready):
    cl, dr, rs = build_nat6(topo)
    director = Director(topo, dr, sock_path)
    director.start()
    try:
        for port, proto in ((80, "-t"), (5353, "-u")):
            director.ipvsadm("-A", proto, f"[{VIP6}]:{port}", "-s", "rr")
            for n in (11, 12):
                director.ipvsadm("-a", proto, f"[{VIP6}]:{port}", "-r", f"[2001:db8:0:2::{n}]:{port}", "-m")
        for n, ns in enumerate(rs):
            start_realserver(topo, ns, f"rs{n + 1}", "::")
        client_cap = Capture(topo, cl, "eth0", str(tmp_path / "client6.pcap"), bpf="ip6")
        kernel_cap = Capture(topo, dr, "eth0", str(tmp_path / "dir6.pcap"), direction="out", bpf="ip6")

        names = curl_names(topo, cl, f"http://[{VIP6}]/", 4)
        assert names == ["rs2", "rs1"] * 2, names
        udp = topo.run(cl, [sys.executable, "-c", UDP6_CLIENT, VIP6, "5353"], timeout=15)
        words = udp.stdout.split()
        assert len(words) == 3 and words[0] in ("rs1", "rs2") and words[2] == VIP6, udp

        ip6 = scapy_all.IPv6
        seen = [p for p in client_cap.packets() if p.haslayer(ip6) and p[ip6].dst == "2001:db8:0:1::2"
                and (p.haslayer(scapy_all.TCP) or p.haslayer(scapy_all.UDP))]
        assert seen and all(p[ip6].src == VIP6 for p in seen), [p.summary() for p in seen[:5]]
        # neighbour discovery for a local VIP is the kernel's job, like ARP; nothing else is
        kernel = [p for p in kernel_cap.packets() if p.haslayer(ip6)
                  and not p.haslayer(scapy_all.ICMPv6ND_NA) and not p.haslayer(scapy_all.ICMPv6ND_NS)
                  and (p[ip6].src == VIP6 or p[ip6].src.startswith("2001:db8:0:2::")
                       or (p.haslayer(scapy_all.TCP) and p[scapy_all.TCP].flags & 0x04))]
        assert not kernel, [p.summary() for p in kernel[:5]]
    finally:
        assert director.stop() == 0, director.log()


VIP6_SEG = "2001:db8:0:3::100"


def build_segment6(topo, local_vip):
    """The DR segment in IPv6: client ::2, director ::1, rs1 ::11, rs2 ::12 in 2001:db8:0:3::/64."""
    cl, dr, sw = topo.add_ns("cl"), topo.add_ns("dr"), topo.add_ns("sw")
    rs = [topo.add_ns("rsa"), topo.add_ns("rsb")]
    hosts = [(cl, "::2"), (dr, "::1"), (rs[0], "::11"), (rs[1], "::12")]
    for ns in (cl, dr, sw, *rs):
        topo.sysctl(ns, "net.ipv6.conf.default.accept_dad", 0)
        topo.sysctl(ns, "net.ipv6.conf.all.accept_dad", 0)
    for n, (ns, host) in enumerate(hosts):
        topo.veth(ns, "eth0", sw, f"p{n}")
        topo.addr(ns, "eth0", f"2001:db8:0:3{host}/64")
    topo.bridge(sw, "br0", [f"p{n}" for n in range(len(hosts))])
    if local_vip:
        topo.addr(dr, "eth0", f"{VIP6_SEG}/128")
    for ns in rs:
        topo.realserver(ns, "dr", "--vip", VIP6_SEG)
    return cl, dr, rs


@pytest.mark.parametrize("local_vip", [True, False], ids=["vip-on-director", "vip-answered-by-core"])
def test_dr_ipv6(topo, tmp_path, sock_path, lvsuser_ready, local_vip):
    """DR in IPv6: only the destination MAC changes; the real servers (VIP on lo) answer the
    client straight from the VIP, and only the director answers neighbour discovery for it."""
    cl, dr, rs = build_segment6(topo, local_vip)
    director = Director(topo, dr, sock_path)
    director.start()
    try:
        for port, proto in ((80, "-t"), (5353, "-u")):
            director.ipvsadm("-A", proto, f"[{VIP6_SEG}]:{port}", "-s", "rr")
            for n in (11, 12):
                director.ipvsadm("-a", proto, f"[{VIP6_SEG}]:{port}", "-r", f"[2001:db8:0:3::{n}]:{port}", "-g")
        for n, ns in enumerate(rs):
            start_realserver(topo, ns, f"rs{n + 1}", "::", udp_addr=VIP6_SEG)
        client_cap = Capture(topo, cl, "eth0", str(tmp_path / "client6.pcap"), bpf="ip6")
        kernel_cap = Capture(topo, dr, "eth0", str(tmp_path / "dir6.pcap"), direction="out", bpf="ip6")

        names = curl_names(topo, cl, f"http://[{VIP6_SEG}]/", 4)
        assert names == ["rs2", "rs1"] * 2, names
        udp = topo.run(cl, [sys.executable, "-c", UDP6_CLIENT, VIP6_SEG, "5353"], timeout=15)
        words = udp.stdout.split()
        assert len(words) == 3 and words[0] in ("rs1", "rs2") and words[2] == VIP6_SEG, udp

        # the client reached the VIP at the director's MAC: no real server answered ND for it
        director_mac = topo.mac(dr, "eth0")
        neigh = topo.run(cl, ["ip", "-6", "neigh", "show", VIP6_SEG]).stdout
        assert director_mac in neigh, (neigh, director_mac)

        ip6, eth = scapy_all.IPv6, scapy_all.Ether
        seen = [p for p in client_cap.packets() if p.haslayer(ip6) and p[ip6].dst == "2001:db8:0:3::2"
                and (p.haslayer(scapy_all.TCP) or p.haslayer(scapy_all.UDP))]
        assert seen and all(p[ip6].src == VIP6_SEG for p in seen), [p.summary() for p in seen[:5]]
        # answers come straight from the real servers' MACs, never through the director
        assert all(p[eth].src != director_mac for p in seen), [p.summary() for p in seen[:5]]
        kernel = [p for p in kernel_cap.packets() if p.haslayer(ip6)
                  and not p.haslayer(scapy_all.ICMPv6ND_NA) and not p.haslayer(scapy_all.ICMPv6ND_NS)
                  and (p[ip6].src == VIP6_SEG
                       or (p.haslayer(scapy_all.TCP) and p[scapy_all.TCP].flags & 0x04)
                       or p.haslayer(scapy_all.ICMPv6DestUnreach))]
        assert not kernel, [p.summary() for p in kernel[:5]]
    finally:
        assert director.stop() == 0, director.log()


def test_interface_added_after_start(topo, tmp_path, sock_path, lvsuser_ready):
    """`lvsuser run` with no interface names serves interfaces that appear later (the rings
    follow the kernel's links), and guards them too."""
    cl, dr = topo.add_ns("cl"), topo.add_ns("dr")
    topo.veth(cl, "eth0", dr, "eth0")
    topo.addr(cl, "eth0", "198.18.0.2/24")
    topo.addr(dr, "eth0", "198.18.0.1/24")
    topo.addr(dr, "eth0", f"{VIP_NAT}/32")
    topo.route(cl, "default", "198.18.0.1")
    topo.sysctl(dr, "net.ipv4.ip_forward", 1)
    director = Director(topo, dr, sock_path)
    director.start()
    try:
        # now the real-server side appears: a new interface in the director's namespace
        rs1 = topo.add_ns("rsa")
        topo.veth(dr, "eth1", rs1, "eth0")
        topo.addr(dr, "eth1", "198.18.1.1/24")
        topo.addr(rs1, "eth0", "198.18.1.11/24")
        topo.realserver(rs1, "nat", "--director", "198.18.1.1")
        start_realserver(topo, rs1, "rs1", "0.0.0.0")
        director.ipvsadm("-A", "-t", f"{VIP_NAT}:80", "-s", "rr")
        director.ipvsadm("-a", "-t", f"{VIP_NAT}:80", "-r", "198.18.1.11:80", "-m")

        def served():
            result = topo.run(cl, ["curl", "-s", "-m", "2", f"http://{VIP_NAT}/"], timeout=10)
            return result.stdout.strip() == "rs1"

        assert wait_for(served, timeout=10, step=0.3), director.log()
        guard = topo.run(dr, ["nft", "list", "ruleset"]).stdout
        assert 'device "eth1"' in guard and "saddr 198.18.1.11" in guard, guard
    finally:
        assert director.stop() == 0, director.log()


def test_dr_director_on_a_bridge(topo, tmp_path, sock_path, lvsuser_ready):
    """The director's address lives on a bridge in its own namespace: the bridge is served,
    not its port (which would show every frame a second time)."""
    cl, dr, rs = build_segment(topo, "dr", local_vip=False)
    # move the director's address from eth0 onto a bridge br0 with eth0 as its port
    topo.run(dr, ["ip", "addr", "flush", "dev", "eth0"], check=True)
    topo.bridge(dr, "br0", ["eth0"])
    topo.addr(dr, "br0", "198.18.2.1/24")
    topo.addr(dr, "br0", f"{VIP_SEG}/32")
    director = Director(topo, dr, sock_path)
    director.start()
    try:
        _segment_services(director, "-g")
        exercise(topo, tmp_path, director, cl, dr, rs, VIP_SEG, "198.18.2.2", ["br0"], set())
        guard = topo.run(dr, ["nft", "list", "ruleset"]).stdout
        assert 'device "br0"' in guard and 'device "eth0"' not in guard, guard
    finally:
        assert director.stop() == 0, director.log()


@pytest.mark.parametrize("io", ["afpacket", "tun"])
def test_restart_after_sigkill(topo, tmp_path, lvsuser_ready, io):
    """A director killed with SIGKILL cannot clean up; the next one sweeps what it left (nft
    table, moved local rule) and serves, and a clean stop leaves nothing behind."""
    mode, method = ("dr", "-g") if io == "afpacket" else ("tun", "-i")
    cl, dr, rs = build_segment(topo, mode)
    for n, ns in enumerate(rs):
        start_realserver(topo, ns, f"rs{n + 1}", "0.0.0.0", udp_addr=VIP_SEG)
    first = Director(topo, dr, str(tmp_path / "first.sock"), io=io)
    first.start()
    _segment_services(first, method)
    assert curl_names(topo, cl, f"http://{VIP_SEG}/", 1)[0] in ("rs1", "rs2")
    first.proc.kill()
    first.proc.wait(timeout=5)
    second = Director(topo, dr, str(tmp_path / "second.sock"), io=io)
    second.start()
    try:
        _segment_services(second, method)
        assert curl_names(topo, cl, f"http://{VIP_SEG}/", 2) == ["rs2", "rs1"]
        # the killed director's guard (kept for its own restart) is swept by the one that now
        # serves the namespace
        tables = topo.run(dr, ["nft", "list", "tables"]).stdout
        assert statedir.state_tag(first.sock) not in tables, tables
        second.ipvsadm("-C")
    finally:
        assert second.stop() == 0, second.log()
    assert "lvsuser_" not in topo.run(dr, ["nft", "list", "tables"]).stdout
    rules = topo.run(dr, ["ip", "rule", "show"]).stdout.splitlines()
    assert "lookup local" in rules[0] and not any("2000:" in r for r in rules), rules
