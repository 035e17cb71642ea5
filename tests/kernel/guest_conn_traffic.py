"""Runs INSIDE the kernel-IPVS guest: the same small traffic scenario through kernel IPVS and then
through `lvsuser run`, with connection snapshots of both, printed as one JSON document.

Topology (the guide's NAT, as namespaces built with lvsuser.lab.netns):

    client 198.18.0.2 --eth0-- director 198.18.0.1 + VIP 198.18.0.10 --eth1-- switch (bridge)
                                        198.18.1.1                          |-- rs1 198.18.1.11
                                                                            '-- rs2 198.18.1.12

Both directors get the same lines: TCP VIP:80 and UDP VIP:5353, `-s rr`, rs1 then rs2, `-m`.
Kernel IPVS is configured with the real ipvsadm in the director namespace; it is flushed (-C)
before `lvsuser run` starts there, so only one of them acts on any packet.  The kernel's own
connection entries outlive the flush, so each run uses its own client ports (41001.. for the
kernel, 42001.. for lvsuser): a left-over kernel entry never matches lvsuser's traffic.

Scenario, per run (bounded: 7 connections, every socket operation with a timeout):
  3 TCP connections held ESTABLISHED, 2 TCP connections closed by the client with the FIN exchange
  completed both ways, 2 UDP request/responses from two client ports;
  snapshot "open" (-Ln and -Lnc); the held connections are closed the same way;
  snapshot "closed".
Each connection records which real server answered (the servers reply with their own address)
and the monotonic time of its last packet, so the host can judge expiry timers by the timeout
they imply (expire + age) rather than by when the snapshot happened to be taken.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from lvsuser.lab.netns import Topology  # noqa: E402
from tests.kernel.guest_differential import ours, start_director, stop_director  # noqa: E402
from tests.kernel.test_sched_differential import _serve  # noqa: E402

VIP = "198.18.0.10"
CLIENT = "198.18.0.2"
REAL_SERVERS = ["198.18.1.11", "198.18.1.12"]
TCP_PORT = 80
UDP_PORT = 5353
HELD, CLOSED, UDP_EXCHANGES = 3, 2, 2
CLIENT_PORT_BASE = {"kernel": 41000, "lvsuser": 42000}
SOCKET_TIMEOUT = 10  # seconds; TCG is slow, the userspace director slower still
SETTLE = 1.0         # seconds for the last ACK of a FIN exchange to pass the director


def service_lines() -> list[list[str]]:
    """The ipvsadm lines both directors get, in order (rs2 is added last: rr starts with it)."""
    lines = []
    for flag, port in (("-t", TCP_PORT), ("-u", UDP_PORT)):
        lines.append(["-A", flag, f"{VIP}:{port}", "-s", "rr"])
        lines += [["-a", flag, f"{VIP}:{port}", "-r", f"{rip}:{port}", "-m"]
                  for rip in REAL_SERVERS]
    return lines


def build(topo: Topology) -> dict:
    cl, dr, sw = topo.add_ns("cl"), topo.add_ns("dr"), topo.add_ns("sw")
    rs = [topo.add_ns("rs1"), topo.add_ns("rs2")]
    topo.veth(cl, "eth0", dr, "eth0")
    topo.veth(dr, "eth1", sw, "p0")
    for n, ns in enumerate(rs, 1):
        topo.veth(ns, "eth0", sw, f"p{n}")
    topo.bridge(sw, "br0", ["p0", "p1", "p2"])
    topo.addr(cl, "eth0", f"{CLIENT}/24")
    topo.addr(dr, "eth0", "198.18.0.1/24")
    topo.addr(dr, "eth0", f"{VIP}/32")
    topo.addr(dr, "eth1", "198.18.1.1/24")
    topo.route(cl, "default", "198.18.0.1")
    topo.sysctl(dr, "net.ipv4.ip_forward", 1)
    for ns, rip in zip(rs, REAL_SERVERS):
        topo.addr(ns, "eth0", f"{rip}/24")
        topo.route(ns, "default", "198.18.1.1")
    return {"client": cl, "director": dr, "real_servers": rs}


def serve_udp(sock: socket.socket) -> None:
    """Answer each datagram with the address it reached (daemon thread, dies with the guest run)."""
    while True:
        data, peer = sock.recvfrom(512)
        sock.sendto(sock.getsockname()[0].encode(), peer)


def start_servers(topo: Topology, real_servers: list[str]) -> None:
    for ns, rip in zip(real_servers, REAL_SERVERS):
        listener = topo.call_in(ns, socket.socket, socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((rip, TCP_PORT))
        listener.listen(16)
        # _serve answers each connection with the address it reached and closes when the client does
        threading.Thread(target=_serve, args=(listener,), daemon=True).start()
        udp = topo.call_in(ns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((rip, UDP_PORT))
        threading.Thread(target=serve_udp, args=(udp,), daemon=True).start()


def close_fully(sock: socket.socket) -> None:
    """Client FIN, then wait for the server's FIN (EOF): the exchange is done both ways."""
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(512):
        pass
    sock.close()


class Run:
    """One pass of the scenario through whichever director is currently configured."""

    def __init__(self, topo: Topology, client_ns: str, port_base: int):
        self.topo, self.client_ns, self.port_base = topo, client_ns, port_base
        # proto, client port, reached, error, last_packet {snapshot name: monotonic time}
        self.connections: list[dict] = []
        self.held: list[tuple[dict, socket.socket]] = []

    def _socket(self, kind: int, index: int) -> tuple[socket.socket, int]:
        sock = self.topo.call_in(self.client_ns, socket.socket, socket.AF_INET, kind)
        sock.settimeout(SOCKET_TIMEOUT)
        port = self.port_base + index
        sock.bind((CLIENT, port))
        return sock, port

    def tcp(self, index: int, hold: bool) -> None:
        sock, port = self._socket(socket.SOCK_STREAM, index)
        record = {"proto": "TCP", "cport": port, "reached": None, "error": None}
        self.connections.append(record)
        try:
            sock.connect((VIP, TCP_PORT))
            record["reached"] = sock.makefile().readline().strip() or None
            if hold:
                self.held.append((record, sock))
            else:
                close_fully(sock)
                time.sleep(SETTLE)
        except OSError as exc:
            record["error"] = repr(exc)
            sock.close()
        record["last_packet"] = {"open": time.monotonic()}

    def udp(self, index: int) -> None:
        sock, port = self._socket(socket.SOCK_DGRAM, index)
        record = {"proto": "UDP", "cport": port, "reached": None, "error": None}
        self.connections.append(record)
        try:
            sock.sendto(b"ping", (VIP, UDP_PORT))
            record["reached"] = sock.recvfrom(512)[0].decode()
        except OSError as exc:
            record["error"] = repr(exc)
        finally:
            sock.close()
        record["last_packet"] = {"open": time.monotonic()}

    def open_phase(self) -> None:
        index = 1
        for hold in [True] * HELD + [False] * CLOSED:
            self.tcp(index, hold)
            index += 1
        for _ in range(UDP_EXCHANGES):
            self.udp(index)
            index += 1

    def close_held(self) -> None:
        for record, sock in self.held:
            try:
                close_fully(sock)
            except OSError as exc:
                record["error"] = repr(exc)
                sock.close()
        time.sleep(SETTLE)
        now = time.monotonic()
        for record in self.connections:
            held = any(record is held_record for held_record, _ in self.held)
            record["last_packet"]["closed"] = now if held else record["last_packet"]["open"]
        self.held = []

    def abandon(self) -> None:
        for _, sock in self.held:
            sock.close()


def snapshot(list_command) -> dict:
    """-Ln and -Lnc with the moment they were taken (between the two, they take milliseconds)."""
    taken = time.monotonic()
    return {"taken": taken, "ln": list_command(["-Ln"]), "lnc": list_command(["-Lnc"])}


def scenario(topo: Topology, client_ns: str, side: str, list_command) -> dict:
    run = Run(topo, client_ns, CLIENT_PORT_BASE[side])
    try:
        run.open_phase()
        opened = snapshot(list_command)
        run.close_held()
        closed = snapshot(list_command)
    finally:
        run.abandon()
    return {"connections": run.connections, "snapshots": {"open": opened, "closed": closed}}


def main() -> int:
    report: dict = {}
    with Topology("cd") as topo:
        names = build(topo)
        director_ns = names["director"]
        start_servers(topo, names["real_servers"])

        def kernel_ipvsadm(args):
            done = topo.run(director_ns, ["ipvsadm", *args], timeout=30)
            return [done.stdout, done.stderr, done.returncode]

        for line in [["-C"], *service_lines()]:
            stdout, stderr, rc = kernel_ipvsadm(line)
            if rc != 0:
                raise SystemExit(f"ipvsadm {' '.join(line)} failed: {stderr}")
        report["kernel"] = scenario(topo, names["client"], "kernel", kernel_ipvsadm)
        report["kernel_flush"] = kernel_ipvsadm(["-C"])
        report["kernel_after_flush"] = kernel_ipvsadm(["-Ln"])

        control_dir = "/run/lvsuser-conn-diff"
        os.makedirs(control_dir, exist_ok=True)
        control = os.path.join(control_dir, "control.sock")
        os.environ["LVSUSER_CONTROL"] = control
        director, log = start_director("userspace", control, director_ns)
        try:
            env = dict(os.environ, PYTHONPATH=REPO, LVSUSER_CONTROL=control)
            for line in service_lines():
                done = subprocess.run([sys.executable, "-m", "lvsuser", "ipvsadm", *line], cwd=REPO,
                                      env=env, capture_output=True, text=True, timeout=60)
                if done.returncode != 0:
                    raise SystemExit(f"lvsuser ipvsadm {' '.join(line)} failed: {done.stderr}")
            # The snapshots use lvsuser's ipvsadm in-process (the same code as the console
            # script) so that they take as little time as the real ipvsadm's.
            report["lvsuser"] = scenario(topo, names["client"], "lvsuser", ours)
        finally:
            report.update(stop_director(director, log, control))
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
