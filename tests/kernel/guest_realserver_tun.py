"""Runs INSIDE the kernel-IPVS guest (whose kernel has ipip): `lvsuser realserver tun` taking the
kernel path (VIP on tunl0), real HTTP traffic through kernel IPVS TUN and through `lvsuser run`
to those real servers, then `--undo`.  Prints one JSON document; the host-side test
(test_realserver_kernel_tun.py) judges it.

Topology (the guide's TUN lab on one segment, a bridge in its own namespace):

    client 198.18.2.2 --.
    director 198.18.2.1 + VIP 198.18.2.100/32 on eth0 (the guide's eth0:0) --+-- sw (br0)
    rs1 198.18.2.11 --'                                                       |
    rs2 198.18.2.12 ----------------------------------------------------------'

The real servers start with strict reverse-path filtering (all and default rp_filter=1, what
many distributions ship), so decapsulated packets reach the servers only if `lvsuser realserver`
turned it off for tunl0.  The ipip module is not loaded when rs1 is configured: its run loads it
(through the probe), rs2 then finds tunl0 already there.

Evidence collected per director (kernel IPVS, then `lvsuser run --io afpacket`):
  * which real server answered each request (the body names it) and how many bytes came back;
  * a capture in the client namespace (AF_PACKET): for every frame between the client and the
    VIP, its direction and Ethernet source and destination, so the host can see the replies
    come from the real servers' MACs, not the director's;
  * the director's eth0 rx byte counter (replies never pass it) and each real server's tunl0 rx
    packet counter (the kernel decapsulated the requests).
Every socket operation has a timeout; the traffic is REQUESTS requests of BODY bytes each.
"""
from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from pyroute2 import IPRoute  # noqa: E402

from lvsuser.lab.netns import Topology  # noqa: E402
from tests.kernel.guest_differential import stop_director  # noqa: E402

VIP = "198.18.2.100"
CLIENT = "198.18.2.2"
DIRECTOR = "198.18.2.1"
REAL_SERVERS = {"rs1": "198.18.2.11", "rs2": "198.18.2.12"}
REQUESTS = 6
BODY = 60000           # bytes per answer: the replies dwarf what the director receives
SOCKET_TIMEOUT = 15    # seconds; TCG is slow, the userspace director slower still
START_TIMEOUT = 90     # seconds for `lvsuser run` to answer on its control socket
CONF_KEYS = ("arp_ignore", "arp_announce", "rp_filter")
CONF_IFACES = ("all", "default", "lo", "eth0", "tunl0")
ENV = dict(os.environ, PYTHONPATH=REPO)
LVSUSER = [sys.executable, "-m", "lvsuser"]
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


# ------------------------------------------------------------------------------ topology

def build(topo: Topology) -> dict:
    names = {"client": topo.add_ns("cl"), "director": topo.add_ns("dr"),
             "switch": topo.add_ns("sw")}
    for role in REAL_SERVERS:
        names[role] = topo.add_ns(role)
    hosts = [("client", CLIENT), ("director", DIRECTOR)] + list(REAL_SERVERS.items())
    for n, (role, address) in enumerate(hosts):
        topo.veth(names[role], "eth0", names["switch"], f"p{n}")
        topo.addr(names[role], "eth0", f"{address}/24")
    topo.bridge(names["switch"], "br0", [f"p{n}" for n in range(len(hosts))])
    topo.addr(names["director"], "eth0", f"{VIP}/32")
    for role in REAL_SERVERS:
        for iface in ("all", "default"):
            topo.sysctl(names[role], f"net.ipv4.conf.{iface}.rp_filter", 1)
    return names


def conf_values(topo: Topology, ns: str) -> dict:
    """{"tunl0/rp_filter": "1", ...} for the interfaces that exist in NS."""
    def read():
        values = {}
        for iface in CONF_IFACES:
            for key in CONF_KEYS:
                try:
                    with open(f"/proc/sys/net/ipv4/conf/{iface}/{key}") as f:
                        values[f"{iface}/{key}"] = f.read().strip()
                except FileNotFoundError:
                    pass
        return values
    return topo.call_in(ns, read)


def links(ns: str) -> dict:
    """{ifname: {"up": bool, "addresses": [...], "rx_packets": n, "rx_bytes": n, "mac": ...}}."""
    with IPRoute(netns=ns) as ipr:
        result = {}
        for link in ipr.get_links():
            stats = link.get("IFLA_STATS64") or link.get("IFLA_STATS") or {}
            result[link.get("IFLA_IFNAME")] = {
                "index": link["index"], "up": bool(link["flags"] & 1),
                "mac": link.get("IFLA_ADDRESS"), "addresses": [],
                "rx_packets": stats.get("rx_packets", 0), "rx_bytes": stats.get("rx_bytes", 0)}
        by_index = {v["index"]: v for v in result.values()}
        for msg in ipr.get_addr(family=socket.AF_INET):
            by_index[msg["index"]]["addresses"].append(
                f"{msg.get('IFA_LOCAL') or msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")
    return result


def decap_processes() -> list[str]:
    """Command lines of every user-space decapsulator running anywhere in the guest."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if b"lvsuser.hosts.decap" in cmdline:
                found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def ipip_loaded() -> bool:
    with open("/proc/modules") as f:
        return any(line.split()[0] == "ipip" for line in f)


def realserver(topo: Topology, ns: str, *args: str) -> dict:
    done = topo.run(ns, LVSUSER + ["realserver", "tun", *args], env=ENV, cwd=REPO, timeout=60)
    return {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def host_state(topo: Topology, ns: str) -> dict:
    return {"conf": conf_values(topo, ns), "links": links(ns), "decap": decap_processes()}


# ------------------------------------------------------------------------------ servers

def serve(listener: socket.socket, name: str, stop: threading.Event) -> None:
    """HTTP/1.0: GET /N answers N bytes whose first line is the server's name; one at a time."""
    listener.settimeout(0.5)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        with conn:
            conn.settimeout(SOCKET_TIMEOUT)
            try:
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 4096:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                path = request.split(b" ")[1].decode() if request.count(b" ") >= 2 else "/"
                size = min(int(path.strip("/") or 0), 1 << 20)
                body = (name + "\n").encode()
                body += b"x" * max(0, size - len(body))
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            except (OSError, ValueError):
                pass


def start_servers(topo: Topology, names: dict, stop: threading.Event) -> list:
    listeners = []
    for role in REAL_SERVERS:
        listener = topo.call_in(names[role], socket.socket, socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", 80))
        listener.listen(16)
        threading.Thread(target=serve, args=(listener, role, stop), daemon=True).start()
        listeners.append(listener)
    return listeners


# ------------------------------------------------------------------------------ client side

class Capture:
    """Ethernet and IPv4 addresses of every frame on the client's eth0 between it and the VIP."""

    def __init__(self, topo: Topology, ns: str):
        self.sock = topo.call_in(ns, socket.socket, socket.AF_PACKET, socket.SOCK_RAW,
                                 socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("eth0", ETH_P_ALL))
        self.frames: list[dict] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        vip = socket.inet_aton(VIP)
        while not self.stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.2)
            if not ready:
                continue
            data, address = self.sock.recvfrom(128)
            if len(data) < 34 or data[12:14] != b"\x08\x00":
                continue
            src, dst = data[26:30], data[30:34]
            if vip not in (src, dst):
                continue
            self.frames.append({
                "outgoing": address[2] == PACKET_OUTGOING,
                "eth_src": data[6:12].hex(":"), "eth_dst": data[0:6].hex(":"),
                "ip_src": socket.inet_ntoa(src), "ip_dst": socket.inet_ntoa(dst),
                "proto": data[23]})

    def finish(self) -> list[dict]:
        time.sleep(0.3)
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()
        return self.frames


def http_get(topo: Topology, ns: str, size: int) -> dict:
    sock = topo.call_in(ns, socket.socket, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(SOCKET_TIMEOUT)
    record = {"server": None, "body_bytes": 0, "peer": None, "error": None}
    try:
        sock.connect((VIP, 80))
        record["peer"] = sock.getpeername()[0]
        sock.sendall(f"GET /{size} HTTP/1.0\r\nHost: {VIP}\r\n\r\n".encode())
        data = b""
        while len(data) < size + 4096:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        record["status"] = head.split(b"\r\n")[0].decode(errors="replace")
        record["server"] = body.split(b"\n")[0].decode(errors="replace") or None
        record["body_bytes"] = len(body)
    except OSError as exc:
        record["error"] = repr(exc)
    finally:
        sock.close()
    return record


def traffic(topo: Topology, names: dict) -> dict:
    """REQUESTS GETs from the client to VIP:80 with the capture and counters around them."""
    before = {role: links(names[role]) for role in ("director", *REAL_SERVERS)}
    capture = Capture(topo, names["client"])
    try:
        requests = [http_get(topo, names["client"], BODY) for _ in range(REQUESTS)]
    finally:
        frames = capture.finish()
    after = {role: links(names[role]) for role in ("director", *REAL_SERVERS)}
    return {
        "requests": requests,
        "frames": frames,
        "director_eth0_rx_bytes": (after["director"]["eth0"]["rx_bytes"]
                                   - before["director"]["eth0"]["rx_bytes"]),
        "tunl0_rx_packets": {role: (after[role]["tunl0"]["rx_packets"]
                                    - before[role]["tunl0"]["rx_packets"])
                             for role in REAL_SERVERS if "tunl0" in after[role]},
    }


# ------------------------------------------------------------------------------ directors

def kernel_director(topo: Topology, names: dict) -> dict:
    dr = names["director"]
    lines = [["-C"], ["-A", "-t", f"{VIP}:80", "-s", "rr"]]
    lines += [["-a", "-t", f"{VIP}:80", "-r", f"{rip}:80", "-i"] for rip in REAL_SERVERS.values()]
    for line in lines:
        done = topo.run(dr, ["ipvsadm", *line], timeout=30)
        if done.returncode != 0:
            raise SystemExit(f"ipvsadm {' '.join(line)} failed: {done.stderr}")
    try:
        result = traffic(topo, names)
        result["listing"] = topo.run(dr, ["ipvsadm", "-Ln", "--stats"], timeout=30).stdout
    finally:
        topo.run(dr, ["ipvsadm", "-C"], timeout=30)
    return result


def lvsuser_director(topo: Topology, names: dict) -> dict:
    dr = names["director"]
    control_dir = "/run/lvsuser-rs-kernel-tun"
    os.makedirs(control_dir, exist_ok=True)
    control = os.path.join(control_dir, "control.sock")
    env = dict(ENV, LVSUSER_CONTROL=control)
    log_path = control + ".log"
    with open(log_path, "w") as log:
        proc = topo.popen(dr, LVSUSER + ["run", "--control", control, "--io", "afpacket"],
                          env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def ipvsadm(*args):
        return topo.run(dr, LVSUSER + ["ipvsadm", *args], env=env, cwd=REPO, timeout=60)

    result: dict = {}
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (os.path.exists(control) and ipvsadm("-Ln").returncode == 0):
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(log_path) as f:
                    raise SystemExit(f"lvsuser run did not come up:\n{f.read()[-3000:]}")
            time.sleep(0.5)
        lines = [["-A", "-t", f"{VIP}:80", "-s", "rr"]]
        lines += [["-a", "-t", f"{VIP}:80", "-r", f"{rip}:80", "-i"]
                  for rip in REAL_SERVERS.values()]
        for line in lines:
            done = ipvsadm(*line)
            if done.returncode != 0:
                raise SystemExit(f"lvsuser ipvsadm {' '.join(line)} failed: {done.stderr}")
        result = traffic(topo, names)
        result["listing"] = ipvsadm("-Ln", "--stats").stdout
    finally:
        result.update(stop_director(proc, log, control))
    return result


# ------------------------------------------------------------------------------ main

def main() -> int:
    report: dict = {"ipip_loaded_at_start": ipip_loaded()}
    stop = threading.Event()
    with Topology("rk") as topo:
        names = build(topo)
        roles = list(REAL_SERVERS)
        report["macs"] = {role: links(names[role])["eth0"]["mac"]
                          for role in ("client", "director", *roles)}
        report["before"] = {role: host_state(topo, names[role]) for role in roles}
        report["apply"], report["after_apply"], report["check"] = {}, {}, {}
        for role in roles:  # one after the other: rs1's run loads ipip, rs2 finds tunl0
            report["apply"][role] = realserver(topo, names[role], "--vip", VIP)
            report["after_apply"][role] = host_state(topo, names[role])
            report["check"][role] = realserver(topo, names[role], "--vip", VIP, "--check")
        listeners = start_servers(topo, names, stop)
        try:
            report["kernel"] = kernel_director(topo, names)
            report["lvsuser"] = lvsuser_director(topo, names)
        finally:
            stop.set()
            for listener in listeners:
                listener.close()
        report["undo"], report["after_undo"], report["undo_again"] = {}, {}, {}
        for role in roles:
            report["undo"][role] = realserver(topo, names[role], "--undo")
            report["after_undo"][role] = host_state(topo, names[role])
            report["undo_again"][role] = realserver(topo, names[role], "--undo")
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
