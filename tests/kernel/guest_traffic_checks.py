"""Runs INSIDE the kernel-IPVS guest, in a network namespace of its own (the caller makes it and
puts 198.18.0.1/32 on its lo): real UDP and TCP traffic through kernel IPVS, then the counters,
connection counts and connection entries as IPVSBackend reads them, printed by lvsuser's ipvsadm,
beside what the real ipvsadm prints.  Prints a JSON report.

The VIP is local and so is the real server, which the kernel treats as "Local" forwarding: packets
the guest sends to the VIP pass IPVS's LOCAL_OUT hook, get scheduled and create connection entries,
and are delivered to a listener on the same address.  Traffic is bounded: a few datagrams and
connections, each with a timeout.
"""
from __future__ import annotations

import io
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from lvsuser import model  # noqa: E402
from lvsuser.backends.ipvs import IPVSBackend  # noqa: E402
from lvsuser.control import ipvsadm as lvs_ipvsadm  # noqa: E402

VIP = "198.18.0.1"
UDP_PORT = 5000
TCP_PORT = 5001
LISTINGS = [["-Ln"], ["-Ln", "--stats", "--exact"], ["-Ln", "--persistent-conn"]]


def real(args):
    proc = subprocess.run(["ipvsadm", *args], capture_output=True, text=True, timeout=30)
    return [proc.stdout, proc.stderr, proc.returncode]


def ours(args, backend):
    out, err = io.StringIO(), io.StringIO()
    rc = lvs_ipvsadm.main(list(args), backend, stdout=out, stderr=err)
    return [out.getvalue(), err.getvalue(), rc]


def without_expiry(listing: str) -> list[list[str]]:
    """Connection lines with the expire column removed (it ticks between the two readings)."""
    rows = []
    for line in listing.splitlines():
        fields = line.split()
        if fields and fields[0] in ("TCP", "UDP", "SCTP"):
            rows.append(fields[:1] + fields[2:])
        else:
            rows.append(fields)
    return sorted(rows)


def make_traffic() -> dict:
    udp_server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_server.bind((VIP, UDP_PORT))
    udp_server.settimeout(5)
    tcp_server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp_server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp_server.bind((VIP, TCP_PORT))
    tcp_server.listen(8)
    tcp_server.settimeout(5)
    received = 0
    held = []
    try:
        for client_port in (40001, 40002):
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            client.bind((VIP, client_port))
            for _ in range(3):
                client.sendto(b"ping", (VIP, UDP_PORT))
                udp_server.recvfrom(64)
                received += 1
            client.close()
        # one TCP connection held open (ESTABLISHED), one closed (FIN states)
        for keep in (True, False):
            client = socket.create_connection((VIP, TCP_PORT), timeout=5)
            conn, _ = tcp_server.accept()
            client.sendall(b"hello")
            conn.recv(16)
            if keep:
                held += [client, conn]
            else:
                client.close()
                conn.close()
        return {"udp_received": received, "held": held}
    finally:
        udp_server.close()
        tcp_server.close()


def main() -> int:
    for args in (["-C"], ["--set", "900", "120", "300"],
                 ["-A", "-u", f"{VIP}:{UDP_PORT}", "-s", "rr"],
                 ["-a", "-u", f"{VIP}:{UDP_PORT}", "-r", f"{VIP}:{UDP_PORT}", "-m"],
                 ["-A", "-t", f"{VIP}:{TCP_PORT}", "-s", "wlc"],
                 ["-a", "-t", f"{VIP}:{TCP_PORT}", "-r", f"{VIP}:{TCP_PORT}", "-m"]):
        done = real(args)
        if done[2] != 0:
            raise SystemExit(f"ipvsadm {args} failed: {done[1]}")
    traffic = make_traffic()
    backend = IPVSBackend()
    try:
        # The kernel sums its per-CPU counters into what it reports from the rate estimator's
        # timer (every 2 s): wait, bounded, until the counters have caught up with the traffic.
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            if all(s.stats.conns >= 2 for s in backend.get_services()):
                break
            time.sleep(0.5)
        rows = backend.get_connections()
        listings = [{"args": args, "real": real(args), "ours": ours(args, backend)}
                    for args in LISTINGS]
        conns_real = real(["-Lnc"])
        conns_ours = ours(["-Lnc"], backend)
        services = backend.get_services()
        report = {
            "udp_received": traffic["udp_received"],
            "rows": [{k: str(v) for k, v in row.items()} for row in rows],
            "listings": listings,
            "conns_real": conns_real, "conns_ours": conns_ours,
            "conns_real_rows": without_expiry(conns_real[0]),
            "conns_ours_rows": without_expiry(conns_ours[0]),
            "service_conns": {f"{model.PROTOCOL_NAMES[s.protocol]}": s.stats.conns
                              for s in services},
            "dest_active": {f"{model.PROTOCOL_NAMES[s.protocol]}": [d.activeconns for d in s.dests]
                            for s in services},
            "vip_is": str(ipaddress.ip_address(VIP)),
        }
    finally:
        for sock in traffic["held"]:
            sock.close()
        backend.close()
        real(["-C"])
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
