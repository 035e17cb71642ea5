"""Fixtures for the namespace tests: real-server programs, the director process, captures.

Every test builds its own namespaces through lvsuser.lab.netns.Topology (unique names, removed on
exit, also on failure).  Addresses come from 198.18.0.0/15 only.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from lvsuser.lab.netns import Topology

LVSUSER = [sys.executable, "-m", "lvsuser"]

_HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config, items):
    """Without root there are no namespaces: skip every test of this directory, with the reason.
    (A module-level skip in a conftest would abort the whole collection instead.)"""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="network namespace tests need root")
    for item in items:
        if str(item.fspath).startswith(_HERE + os.sep):
            item.add_marker(skip)

# A real server in one program: HTTP on TCP (GET / answers the server's name, GET /bytes/N
# answers N bytes), a line echo on TCP for long-lived connections, and a UDP echo.  Each reply
# carries NAME so the tests see who answered.  No name lookups (http.server's getfqdn() would
# stall in a namespace without DNS).
REALSERVER_PROGRAM = r"""
import socket, socketserver, sys, threading
name, addr, http_port, echo_port, udp_port, udp_addr = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
family = socket.AF_INET6 if ":" in addr else socket.AF_INET

class HTTP(socketserver.StreamRequestHandler):
    def handle(self):
        while True:
            line = self.rfile.readline(4096)
            if not line:
                return
            path = line.split()[1].decode() if len(line.split()) > 1 else "/"
            while True:
                h = self.rfile.readline(4096)
                if h in (b"\r\n", b"\n", b""):
                    break
            if path.startswith("/bytes/"):
                body = (name.encode() + b"\n") + b"x" * max(0, int(path[7:]) - len(name) - 1)
            else:
                body = name.encode() + b"\n"
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n" % len(body) + body)
            self.wfile.flush()

class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(name.encode() + b" " + line)
            self.wfile.flush()

class UDP(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(name.encode() + b" " + data, self.client_address)

class TCPServer(socketserver.ThreadingTCPServer):
    address_family = family
    allow_reuse_address = True
    daemon_threads = True

class UDPServer(socketserver.UDPServer):
    address_family = family

servers = [TCPServer((addr, http_port), HTTP), TCPServer((addr, echo_port), Echo), UDPServer((udp_addr, udp_port), UDP)]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
servers[0].serve_forever()
"""


def start_realserver(topo: Topology, ns: str, name: str, addr: str, http_port: int = 80,
                     echo_port: int = 9000, udp_port: int = 5353, udp_addr: str | None = None):
    """Start the real-server program in NS bound to ADDR; returns once it listens.

    UDP answers leave from the socket's own address, not from the one the request was sent to,
    so DR and TUN real servers must bind UDP to the VIP (UDP_ADDR), as such servers do."""
    proc = topo.popen(ns, [sys.executable, "-c", REALSERVER_PROGRAM, name, addr, str(http_port),
                           str(echo_port), str(udp_port), udp_addr or addr],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"real server {name} did not start: {proc.stderr.read()}")
    return proc


def wait_for(predicate, timeout: float = 5.0, step: float = 0.05):
    """Poll PREDICATE until true or TIMEOUT; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def _tool_available(argv) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def lvsuser_ready():
    """What the machine must have beside lvsuser (a broken lvsuser fails its tests, not skips)."""
    if not _tool_available(["nft", "--version"]) or not _tool_available(["tcpdump", "--version"]):
        pytest.skip("nft and tcpdump are needed (tools/setup.sh installs them)")


class ForwardingTopology(Topology):
    """A Topology that also undoes `lvsuser realserver` on the hosts it set up, before the
    namespaces go: the real-server state under /run/lvsuser would otherwise outlive them."""

    def __init__(self, prefix: str):
        super().__init__(prefix)
        self._realservers: list[tuple[str, str]] = []

    def realserver(self, ns: str, mode: str, *args: str) -> None:
        result = self.run(ns, LVSUSER + ["realserver", mode, *args], timeout=30)
        if result.returncode != 0:
            raise AssertionError(f"lvsuser realserver {mode} failed: {result.stdout}{result.stderr}")
        self._realservers.append((ns, mode))

    def close(self) -> None:
        try:
            while self._realservers:
                ns, mode = self._realservers.pop()
                self.run(ns, LVSUSER + ["realserver", mode, "--undo"], timeout=30)
        finally:  # the namespaces go whatever happened above
            super().close()


@pytest.fixture
def topo():
    with ForwardingTopology("t") as topology:
        yield topology
