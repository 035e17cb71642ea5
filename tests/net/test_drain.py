"""`lvsuser drain` on a real NAT director: weight 0 at once (new connections go elsewhere),
the active connections counted down as they end, then the real server removed; with a
connection that stays, it stops at the timeout and says what is left."""
from __future__ import annotations

import os
import subprocess
import sys

from .conftest import LVSUSER, start_realserver
from .test_forward import VIP_NAT, Director, build_nat

# Holds N echo connections to VIP:9000; closes one every 0.4 s after reading "go" on stdin.
HOLDER = r"""
import socket, sys, time
vip, n = sys.argv[1], int(sys.argv[2])
conns = []
for i in range(n):
    s = socket.create_connection((vip, 9000), timeout=5)
    s.sendall(b"hello\n")
    conns.append((s, s.makefile("rb").readline().split()[0].decode()))
print(" ".join(name for _, name in conns), flush=True)
sys.stdin.readline()
for s, _ in conns:
    time.sleep(0.4)
    s.close()
time.sleep(30)
"""


def drain(topo, dr, director, *args):
    env = dict(os.environ, LVSUSER_CONTROL=director.sock)
    return topo.run(dr, LVSUSER + ["drain", "-t", f"{VIP_NAT}:9000", *args], env=env,
                    timeout=30)


def setup(topo, tmp_path):
    cl, dr, rs = build_nat(topo)
    for n, ns in enumerate(rs):
        start_realserver(topo, ns, f"rs{n + 1}", "0.0.0.0")
    director = Director(topo, dr, str(tmp_path / "control.sock"))
    director.start()
    director.ipvsadm("-A", "-t", f"{VIP_NAT}:9000", "-s", "rr")
    for rip in ("198.18.1.11", "198.18.1.12"):
        director.ipvsadm("-a", "-t", f"{VIP_NAT}:9000", "-r", f"{rip}:9000", "-m")
    return cl, dr, director


def test_drain_counts_down_and_removes(topo, tmp_path, lvsuser_ready):
    cl, dr, director = setup(topo, tmp_path)
    holder = topo.popen(cl, [sys.executable, "-c", HOLDER, VIP_NAT, "6"],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True)
    try:
        names = holder.stdout.readline().split()
        assert sorted(names) == ["rs1"] * 3 + ["rs2"] * 3, names
        holder.stdin.write("go\n")
        holder.stdin.flush()
        result = drain(topo, dr, director, "-r", "198.18.1.12:9000", "--remove",
                       "--timeout", "15", "--interval", "0.2")
        assert result.returncode == 0, result.stdout + result.stderr + director.log()
        lines = result.stdout.splitlines()
        assert lines[0] == "198.18.1.12:9000: weight 1 -> 0"
        counts = [int(line.split(": ")[1].split()[0]) for line in lines
                  if line.startswith("draining 198.18.1.12:9000: ")]
        # a plain line per interval (not a terminal), counting down to zero
        assert counts[0] >= 1 and counts[-1] == 0, lines
        assert counts == sorted(counts, reverse=True), counts
        assert lines[-1] == "198.18.1.12:9000: no active connection left; removed"
        assert "198.18.1.12" not in director.ipvsadm("-Sn").stdout
    finally:
        holder.kill()
        holder.communicate()
        assert director.stop() == 0, director.log()


def test_drain_stops_at_the_timeout_and_says_what_is_left(topo, tmp_path, lvsuser_ready):
    cl, dr, director = setup(topo, tmp_path)
    holder = topo.popen(cl, [sys.executable, "-c", HOLDER, VIP_NAT, "2"],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True)
    try:
        assert sorted(holder.stdout.readline().split()) == ["rs1", "rs2"]
        result = drain(topo, dr, director, "-r", "198.18.1.11", "--remove", "--timeout", "1",
                       "--interval", "0.3")
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stdout.splitlines()[-1].startswith(
            "timeout after 1s: 1 active and 0 inactive connections left on 198.18.1.11:9000")
        # kept, at weight 0: a new connection goes to rs2
        assert "-r 198.18.1.11:9000 -m -w 0" in director.ipvsadm("-Sn").stdout
    finally:
        holder.kill()
        holder.communicate()
        assert director.stop() == 0, director.log()
