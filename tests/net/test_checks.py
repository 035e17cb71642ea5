"""Health checks in a real NAT director (`lvsuser run --keepalived-conf`): two real HTTP
servers, a bounded curl loop from the client, checks leaving from the director.

* a real server whose HTTP server dies is out within delay_loop x retry + connect_timeout + 1 s
  and no request fails after that; started again it is back once its check passes; notify
  scripts ran with the arguments keepalived gives them (the configured ones);
* inhibit_on_failure: weight 0, and an established connection carries on;
* quorum lost: the sorry server serves, quorum_down ran; regained: the pool is back.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time

from .conftest import start_realserver, wait_for
from .test_forward import LONG_CLIENT, VIP_NAT, Director, build_nat, curl_names

RIPS = ("198.18.1.11", "198.18.1.12")

# A bounded load: GET / every 50 ms for SECONDS (1 s timeout each); one line per request:
# "<monotonic start> ok <name>" or "<monotonic start> fail <error>".
LOADER = r"""
import sys, time, urllib.request
url, seconds = sys.argv[1], float(sys.argv[2])
end = time.monotonic() + seconds
while time.monotonic() < end:
    start = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            print(f"{start:.3f} ok {answer.read().decode().strip()}", flush=True)
    except Exception as exc:
        print(f"{start:.3f} fail {type(exc).__name__}", flush=True)
    time.sleep(max(0.0, 0.05 - (time.monotonic() - start)))
"""
DELAY_LOOP, RETRY, CONNECT_TIMEOUT = 1, 1, 1


def notify_script(tmp_path) -> str:
    """A script appending its arguments to a file, for notify_* and quorum_*."""
    script = tmp_path / "notify.sh"
    script.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/notified\n')
    script.chmod(0o755)
    return str(script)


def notified(tmp_path) -> list[str]:
    try:
        return (tmp_path / "notified").read_text().splitlines()
    except OSError:
        return []


def dests(director, port=80) -> dict:
    """RIP -> weight for VIP:port, from `ipvsadm -Sn`."""
    out = director.ipvsadm("-Sn").stdout
    found = {}
    for line in out.splitlines():
        match = re.match(rf"-a -t {re.escape(VIP_NAT)}:{port} -r ([\d.]+):\d+ -m -w (\d+)", line)
        if match:
            found[match.group(1)] = int(match.group(2))
    return found


def start(topo, tmp_path, dr, conf_text):
    conf = tmp_path / "keepalived.conf"
    conf.write_text(conf_text)
    director = Director(topo, dr, str(tmp_path / "control.sock"),
                        extra_args=("--keepalived-conf", str(conf)))
    director.start()
    return director


def test_http_checks_take_a_dead_server_out_and_back(topo, tmp_path, lvsuser_ready):
    cl, dr, rs = build_nat(topo)
    procs = [start_realserver(topo, ns, f"rs{n + 1}", "0.0.0.0") for n, ns in enumerate(rs)]
    script = notify_script(tmp_path)
    servers = "".join(f"""
    real_server {rip} 80 {{
        weight 1
        notify_up "{script} up rs{n + 1}"
        notify_down "{script} down rs{n + 1}"
        HTTP_GET {{
            url {{
                path /
                status_code 200
            }}
            connect_timeout {CONNECT_TIMEOUT}
            retry {RETRY}
            delay_before_retry 0.3
        }}
    }}""" for n, rip in enumerate(RIPS))
    director = start(topo, tmp_path, dr, f"""
virtual_server {VIP_NAT} 80 {{
    delay_loop {DELAY_LOOP}
    warmup 0
    lvs_sched rr
    lvs_method NAT
    protocol TCP
{servers}
}}
""")
    try:
        assert dests(director) == {RIPS[0]: 1, RIPS[1]: 1}
        assert set(curl_names(topo, cl, f"http://{VIP_NAT}/", 4)) == {"rs1", "rs2"}
        # a bounded load from the client while rs2's HTTP server is killed
        loader = topo.popen(cl, [sys.executable, "-c", LOADER, f"http://{VIP_NAT}/", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1)
        procs[1].kill()
        procs[1].wait(timeout=5)
        killed = time.monotonic()
        bound = DELAY_LOOP * RETRY + CONNECT_TIMEOUT + 1
        assert wait_for(lambda: RIPS[1] not in dests(director), timeout=bound + 2, step=0.1), \
            director.log()
        seen_out = time.monotonic()
        assert seen_out - killed <= bound + 0.3, (seen_out - killed, director.log())
        out, err = loader.communicate(timeout=20)
        requests = [line.split(" ", 2) for line in out.splitlines()]
        assert len(requests) > 25, (out, err)
        # before the kill both served; from the moment rs2 was seen out, every request succeeded
        before = {name for start, result, name in requests if float(start) < killed - 0.1}
        assert before == {"rs1", "rs2"}, requests
        after = [(result, name) for start, result, name in requests if float(start) > seen_out]
        assert after and all(r == ("ok", "rs1") for r in after), after
        names = curl_names(topo, cl, f"http://{VIP_NAT}/", 10)
        assert names == ["rs1"] * 10, names
        assert wait_for(lambda: "down rs2" in notified(tmp_path), timeout=3), notified(tmp_path)
        # bring it back: in again after its check passes
        procs[1] = start_realserver(topo, rs[1], "rs2", "0.0.0.0")
        assert wait_for(lambda: dests(director) == {RIPS[0]: 1, RIPS[1]: 1},
                        timeout=DELAY_LOOP + CONNECT_TIMEOUT + 2, step=0.1), director.log()
        assert set(curl_names(topo, cl, f"http://{VIP_NAT}/", 4)) == {"rs1", "rs2"}
        assert wait_for(lambda: "up rs2" in notified(tmp_path), timeout=3), notified(tmp_path)
        assert notified(tmp_path) == ["down rs2", "up rs2"]  # rs1 never changed state
        log = director.log()
        assert f"Removing service {RIPS[1]}:80 from VS" in log
        assert f"Adding service {RIPS[1]}:80 to VS" in log
    finally:
        assert director.stop() == 0, director.log()


def flag_check(tmp_path, name) -> str:
    """A MISC_CHECK that fails while the file tmp/NAME.down exists: the test fails a server's
    check without touching its connections."""
    return f"""MISC_CHECK {{
            misc_path "test ! -e {tmp_path}/{name}.down"
            misc_timeout 2
        }}"""


def test_inhibit_on_failure_keeps_established_connections(topo, tmp_path, lvsuser_ready):
    cl, dr, rs = build_nat(topo)
    for n, ns in enumerate(rs):
        start_realserver(topo, ns, f"rs{n + 1}", "0.0.0.0")
    servers = "".join(f"""
    real_server {rip} 9000 {{
        weight 2
        inhibit_on_failure
        {flag_check(tmp_path, f"rs{n + 1}")}
    }}""" for n, rip in enumerate(RIPS))
    director = start(topo, tmp_path, dr, f"""
virtual_server {VIP_NAT} 9000 {{
    delay_loop 0.5
    warmup 0
    lvs_sched rr
    lvs_method NAT
{servers}
}}
""")
    client = None
    try:
        assert dests(director, 9000) == {RIPS[0]: 2, RIPS[1]: 2}
        # one long connection (15 lines, 0.2 s apart), then fail its server's check
        client = topo.popen(cl, [sys.executable, "-c", LONG_CLIENT, VIP_NAT, "9000", "15"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = client.stdout.readline().split()
        assert first and first[0] in ("rs1", "rs2"), first
        victim = first[0]
        (tmp_path / f"{victim}.down").touch()
        rip = RIPS[int(victim[-1]) - 1]
        other = RIPS[1 - (int(victim[-1]) - 1)]
        assert wait_for(lambda: dests(director, 9000) == {rip: 0, other: 2}, timeout=5), \
            director.log()
        out, err = client.communicate(timeout=20)
        lines = [first[0] + " " + first[1]] + out.splitlines()
        # every one of the 15 lines came back, from the same (inhibited) server
        assert len(lines) == 15 and all(line.split()[0] == victim for line in lines), (lines, err)
        # new connections go to the other server only
        news = topo.run(cl, [sys.executable, "-c", LONG_CLIENT, VIP_NAT, "9000", "1"],
                        timeout=15).stdout.split()
        assert news[0] == f"rs{1 + RIPS.index(other)}", news
        os.unlink(tmp_path / f"{victim}.down")
        assert wait_for(lambda: dests(director, 9000) == {rip: 2, other: 2}, timeout=5)
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.communicate()
        assert director.stop() == 0, director.log()


def test_quorum_lost_the_sorry_server_serves(topo, tmp_path, lvsuser_ready):
    cl, dr, rs = build_nat(topo)
    for n, ns in enumerate(rs):
        start_realserver(topo, ns, f"rs{n + 1}", "0.0.0.0")
    # the sorry server: another HTTP server on rs1's host, port 8080
    start_realserver(topo, rs[0], "sorry", "0.0.0.0", http_port=8080, echo_port=9001,
                     udp_port=5354)
    script = notify_script(tmp_path)
    servers = "".join(f"""
    real_server {rip} 80 {{
        weight 1
        {flag_check(tmp_path, f"rs{n + 1}")}
    }}""" for n, rip in enumerate(RIPS))
    director = start(topo, tmp_path, dr, f"""
virtual_server {VIP_NAT} 80 {{
    delay_loop 0.5
    warmup 0
    lvs_sched rr
    lvs_method NAT
    quorum 2
    quorum_up "{script} quorum up"
    quorum_down "{script} quorum down"
    sorry_server {RIPS[0]} 8080
{servers}
}}
""")
    try:
        assert dests(director) == {RIPS[0]: 1, RIPS[1]: 1}
        (tmp_path / "rs2.down").touch()  # 1 < quorum 2: lost
        assert wait_for(lambda: "quorum down" in notified(tmp_path), timeout=5), director.log()
        # the remaining server leaves, the sorry server (rs1's host, 8080) serves
        assert curl_names(topo, cl, f"http://{VIP_NAT}/", 4) == ["sorry"] * 4
        listing = director.ipvsadm("-Sn").stdout
        assert f"-r {RIPS[0]}:8080" in listing and f"-r {RIPS[0]}:80 " not in listing, listing
        os.unlink(tmp_path / "rs2.down")
        assert wait_for(lambda: notified(tmp_path)[-1:] == ["quorum up"], timeout=5)
        assert wait_for(lambda: dests(director) == {RIPS[0]: 1, RIPS[1]: 1}, timeout=3)
        assert ":8080" not in director.ipvsadm("-Sn").stdout
        assert set(curl_names(topo, cl, f"http://{VIP_NAT}/", 4)) == {"rs1", "rs2"}
    finally:
        assert director.stop() == 0, director.log()


# A DNS server for one zone: answers every query with one SOA record, NOERROR.
DNS_SERVER = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    query, peer = s.recvfrom(512)
    qid = query[:2]
    end = query.index(b"\0", 12) + 5
    soa = b"\x02ns\0\x05admin\0" + struct.pack("!IIIII", 1, 60, 60, 60, 60)
    record = b"\xc0\x0c" + struct.pack("!HHIH", 6, 1, 60, len(soa)) + soa
    s.sendto(qid + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0) + query[12:end] + record, peer)
"""


def test_udp_and_dns_checks(topo, tmp_path, lvsuser_ready):
    cl, dr, rs = build_nat(topo)
    procs = [start_realserver(topo, ns, f"rs{n + 1}", "0.0.0.0") for n, ns in enumerate(rs)]
    dns_proc = topo.popen(rs[1], [sys.executable, "-c", DNS_SERVER, "0.0.0.0", "53"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert dns_proc.stdout.readline().strip() == "ready", dns_proc.stderr.read()
    director = start(topo, tmp_path, dr, f"""
virtual_server {VIP_NAT} 5353 {{
    delay_loop 0.5
    warmup 0
    protocol UDP
    lvs_sched rr
    lvs_method NAT
    real_server {RIPS[0]} 5353 {{
        UDP_CHECK {{
            connect_timeout 1
            payload 70696e67
            require_reply
        }}
    }}
    real_server {RIPS[1]} 5353 {{
        DNS_CHECK {{
            connect_port 53
            connect_timeout 1
            retry 0
            type SOA
            name example.test
        }}
    }}
}}
""")

    def udp_dests():
        out = director.ipvsadm("-Sn").stdout
        return set(re.findall(rf"-a -u {re.escape(VIP_NAT)}:5353 -r ([\d.]+):5353", out))

    try:
        assert wait_for(lambda: udp_dests() == set(RIPS), timeout=3), director.log()
        dns_proc.kill()  # rs2's DNS stops answering: DNS_CHECK fails
        assert wait_for(lambda: udp_dests() == {RIPS[0]}, timeout=4), director.log()
        procs[0].kill()  # rs1's UDP port now answers with port unreachable
        assert wait_for(lambda: udp_dests() == set(), timeout=5), director.log()
        assert "UDP_CHECK on 198.18.1.11:5353 failed" in director.log()
        assert "DNS_CHECK on 198.18.1.12:5353 failed" in director.log()
    finally:
        assert director.stop() == 0, director.log()


# An HTTPS server (self-signed certificate) answering its name on every GET.
HTTPS_SERVER = r"""
import http.server, ssl, sys
name, cert, key = sys.argv[1], sys.argv[2], sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = name.encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
server = http.server.ThreadingHTTPServer(("0.0.0.0", 443), H)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"""


def test_ssl_get_on_https_servers(topo, tmp_path, lvsuser_ready):
    cl, dr, rs = build_nat(topo)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=rs.test"],
                   check=True, capture_output=True, timeout=60)
    procs = []
    for n, ns in enumerate(rs):
        proc = topo.popen(ns, [sys.executable, "-c", HTTPS_SERVER, f"rs{n + 1}", str(cert),
                               str(key)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        procs.append(proc)
    digest = hashlib.md5(b"rs2\n").hexdigest()  # rs1's body differs: its check fails
    servers = "".join(f"""
    real_server {rip} 443 {{
        SSL_GET {{
            url {{
                path /
                digest {digest}
            }}
            connect_timeout 1
            retry 0
        }}
    }}""" for rip in RIPS)
    director = start(topo, tmp_path, dr, f"""
virtual_server {VIP_NAT} 443 {{
    delay_loop 0.5
    warmup 0
    lvs_sched rr
    lvs_method NAT
{servers}
}}
""")

    def https_dests():
        out = director.ipvsadm("-Sn").stdout
        return set(re.findall(rf"-a -t {re.escape(VIP_NAT)}:443 -r ([\d.]+):443", out))

    try:
        # rs1 answers a body whose MD5 is not the digest: out; rs2 stays
        assert wait_for(lambda: https_dests() == {RIPS[1]}, timeout=4), director.log()
        assert "MD5 digest mismatch" in director.log()
        answer = topo.run(cl, ["curl", "-sk", "-m", "5", f"https://{VIP_NAT}/"], timeout=10)
        assert answer.stdout.strip() == "rs2", answer
        procs[1].kill()
        assert wait_for(lambda: https_dests() == set(), timeout=4), director.log()
    finally:
        assert director.stop() == 0, director.log()
