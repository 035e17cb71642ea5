"""The director's table outlives its process: a SIGTERM or SIGKILL restart loses nothing.

Ten long-lived TCP connections go through a NAT VIP to line-echo servers.  The director is
stopped (SIGTERM, then in a second round SIGKILL) and started again with the same control
socket; without any rule being re-added, every connection carries on to the same real server,
byte for byte, and the rules, their `--set` timeouts and the connection table are back.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import start_realserver, wait_for
from .test_forward import VIP_NAT, Director, build_nat

CONNECTIONS = 10
ECHO_PORT = 9000

# Holds CONNECTIONS connections to VIP:port; each "round TAG" line on stdin sends one line per
# connection and answers with one JSON line: [reply, ...] in connection order, or an error.
CLIENT_PROGRAM = r"""
import json, socket, sys
vip, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conns = []
for i in range(count):
    s = socket.create_connection((vip, port), timeout=20)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conns.append((s, s.makefile("rb")))
print(json.dumps({"ports": [s.getsockname()[1] for s, _ in conns]}), flush=True)
for command in sys.stdin:
    tag = command.split()[1]
    replies = []
    try:
        for i, (s, f) in enumerate(conns):
            s.sendall(f"conn{i} {tag} {'x' * (37 * i)}\n".encode())
        for s, f in conns:
            replies.append(f.readline().decode())
        print(json.dumps({"replies": replies}), flush=True)
    except OSError as exc:
        print(json.dumps({"error": repr(exc), "replies": replies}), flush=True)
"""


class EchoClient:
    def __init__(self, topo, ns):
        self.proc = topo.popen(ns, [sys.executable, "-c", CLIENT_PROGRAM, VIP_NAT, str(ECHO_PORT),
                                    str(CONNECTIONS)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        hello = self.proc.stdout.readline()
        if not hello:
            raise AssertionError(f"echo client did not connect: {self.proc.stderr.read()}")
        self.ports = json.loads(hello)["ports"]

    def round(self, tag: str) -> list[str]:
        """One line each way on every connection; the replies, checked byte for byte."""
        self.proc.stdin.write(f"round {tag}\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline() or '{"error": "client exited"}')
        assert "error" not in answer, answer
        names = []
        for i, reply in enumerate(answer["replies"]):
            name, _, rest = reply.partition(" ")
            assert rest == f"conn{i} {tag} {'x' * (37 * i)}\n", (i, reply)
            names.append(name)
        return names

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)


def _listed_connections(director) -> dict[int, str]:
    """client port -> real server, from `ipvsadm -Lnc` (ESTABLISHED echo connections)."""
    rows = {}
    for line in director.ipvsadm("-Lnc").stdout.splitlines():
        words = line.split()
        if len(words) == 6 and words[2] == "ESTABLISHED" and words[4] == f"{VIP_NAT}:{ECHO_PORT}":
            rows[int(words[3].rsplit(":", 1)[1])] = words[5].rsplit(":", 1)[0]
    return rows


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_connections_and_rules_survive_a_restart(topo, tmp_path, lvsuser_ready, stop):
    cl, dr, rs = build_nat(topo, local_vip=False)
    for n, ns in enumerate(rs):
        start_realserver(topo, ns, f"rs{n + 1}", "0.0.0.0", echo_port=ECHO_PORT)
    sock = str(tmp_path / "control.sock")
    state = tmp_path / "state"
    args = ("--state-dir", str(state))
    director = Director(topo, dr, sock, extra_args=args)
    director.start()
    client = None
    try:
        director.ipvsadm("-A", "-t", f"{VIP_NAT}:{ECHO_PORT}", "-s", "rr")
        for rip in ("198.18.1.11", "198.18.1.12"):
            director.ipvsadm("-a", "-t", f"{VIP_NAT}:{ECHO_PORT}", "-r", f"{rip}:{ECHO_PORT}", "-m")
        director.ipvsadm("--set", "1234", "56", "78")
        rules_before = director.ipvsadm("-Sn").stdout
        client = EchoClient(topo, cl)
        names = client.round("before")
        assert sorted(names) == ["rs1"] * 5 + ["rs2"] * 5, names
        listed = _listed_connections(director)
        assert sorted(listed) == sorted(client.ports), (listed, client.ports)

        if stop == "sigterm":
            assert director.stop() == 0, director.log()
        else:
            director.proc.kill()
            director.proc.wait(timeout=10)
        assert not os.path.exists(sock) or stop == "sigkill"

        again = Director(topo, dr, sock, extra_args=args)
        again.start()
        director = again
        # the rules and timeouts are back without anyone re-adding them
        assert director.ipvsadm("-Sn").stdout == rules_before
        assert director.ipvsadm("-L", "--timeout").stdout.strip() == \
            "Timeout (tcp tcpfin udp): 1234 56 78"
        # the same connections, to the same real servers, listed and forwarding
        assert _listed_connections(director) == listed
        for tag in ("after1", "after2"):
            assert client.round(tag) == names
        # and new connections are still scheduled
        fresh = EchoClient(topo, cl)
        try:
            assert sorted(fresh.round("fresh")) == ["rs1"] * 5 + ["rs2"] * 5
        finally:
            fresh.close()
    finally:
        if client is not None:
            client.close()
        director.ipvsadm("-C", check=False)
        assert director.stop() == 0, director.log()


def test_clean_start_discards_the_saved_table(topo, tmp_path, lvsuser_ready):
    cl, dr, rs = build_nat(topo, local_vip=False)
    sock = str(tmp_path / "control.sock")
    state = tmp_path / "state"
    director = Director(topo, dr, sock, extra_args=("--state-dir", str(state)))
    director.start()
    try:
        director.ipvsadm("-A", "-t", f"{VIP_NAT}:80", "-s", "wlc")
        director.ipvsadm("-a", "-t", f"{VIP_NAT}:80", "-r", "198.18.1.11:80", "-m")
    finally:
        assert director.stop() == 0, director.log()
    kept = Director(topo, dr, sock, extra_args=("--state-dir", str(state)))
    kept.start()
    try:
        assert f"-A -t {VIP_NAT}:80 -s wlc" in kept.ipvsadm("-Sn").stdout
    finally:
        assert kept.stop() == 0, kept.log()
    clean = Director(topo, dr, sock, extra_args=("--state-dir", str(state), "--clean"))
    clean.start()
    try:
        assert clean.ipvsadm("-Sn").stdout == ""
        assert wait_for(lambda: "lvsuser" not in topo.run(dr, ["nft", "list", "ruleset"]).stdout
                        or VIP_NAT not in topo.run(dr, ["nft", "list", "ruleset"]).stdout)
    finally:
        assert clean.stop() == 0, clean.log()
    # an empty table leaves nothing behind: no state, no guard
    assert not any(state.iterdir()) if state.exists() else True
    assert "lvsuser" not in topo.run(dr, ["nft", "list", "tables"]).stdout
