"""Each checker against real servers on the loopback (no namespace needed): what makes it
pass, and each way it must fail."""
from __future__ import annotations

import asyncio
import hashlib
import http.server
import os
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest

from lvsuser.check import dns, misc, ping, tcp, udp
from lvsuser.check import http as http_check
from lvsuser.check.base import Target
from lvsuser.check.config import CheckerConfig

LOOP = "127.0.0.1"


def run(coroutine):
    return asyncio.run(coroutine)


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((LOOP, 0))
        return sock.getsockname()[1]


@pytest.fixture
def listener():
    sock = socket.socket()
    sock.bind((LOOP, 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


def test_tcp_check_connects_or_fails(listener):
    result = run(tcp.check(CheckerConfig("TCP_CHECK"), Target(LOOP, listener), 2.0))
    assert result.ok
    closed = free_port()
    result = run(tcp.check(CheckerConfig("TCP_CHECK"), Target(LOOP, closed), 2.0))
    assert not result.ok and "refused" in result.reason.lower()


BODY = b"hello from the real server\n"


class Handler(http.server.BaseHTTPRequestHandler):
    seen_hosts: list = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        Handler.seen_hosts.append(self.headers.get("Host"))
        if self.path == "/slow":
            time.sleep(1.5)
        code = 404 if self.path == "/missing" else (302 if self.path == "/moved" else 200)
        self.send_response(code)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


@pytest.fixture
def web_server():
    server = http.server.ThreadingHTTPServer((LOOP, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Handler.seen_hosts = []
    yield server
    server.shutdown()
    server.server_close()


def http_checker(*urls, kind="HTTP_GET", **options) -> CheckerConfig:
    return CheckerConfig(kind, options={"urls": list(urls), **options})


def test_http_get_status_digest_and_virtualhost(web_server):
    port = web_server.server_address[1]
    target = Target(LOOP, port)
    good = hashlib.md5(BODY).hexdigest()
    assert run(http_check.check(http_checker({"path": "/", "digest": good}), target, 2.0)).ok
    bad = run(http_check.check(http_checker({"path": "/", "digest": "0" * 32}), target, 2.0))
    assert not bad.ok and "digest" in bad.reason
    missing = run(http_check.check(http_checker({"path": "/missing"}), target, 2.0))
    assert not missing.ok and "404" in missing.reason
    # default accepts 2xx only; a status_code list replaces it
    assert not run(http_check.check(http_checker({"path": "/moved"}), target, 2.0)).ok
    assert run(http_check.check(http_checker({"path": "/moved", "status_code": {302}}), target,
                          2.0)).ok
    # every url must pass
    assert not run(http_check.check(http_checker({"path": "/"}, {"path": "/missing"}), target,
                              2.0)).ok
    run(http_check.check(http_checker({"path": "/"}, virtualhost="www.example.test"), target, 2.0))
    assert Handler.seen_hosts[-1] == "www.example.test"
    run(http_check.check(http_checker({"path": "/"}), target, 2.0))
    assert Handler.seen_hosts[-1] == f"{LOOP}:{port}"


def test_http_get_is_bounded_by_connect_timeout(web_server):
    target = Target(LOOP, web_server.server_address[1])
    started = time.monotonic()
    result = run(http_check.check(http_checker({"path": "/slow"}), target, 0.3))
    assert not result.ok and "timeout" in result.reason
    assert time.monotonic() - started < 1.4  # it did not wait for the 1.5 s answer


def test_http_get_on_a_closed_port_fails():
    result = run(http_check.check(http_checker({"path": "/"}), Target(LOOP, free_port()), 1.0))
    assert not result.ok


@pytest.fixture
def tls_server(tmp_path, web_server):
    """The same handler over TLS with a self-signed certificate."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=rs.test"],
                   check=True, capture_output=True, timeout=60)
    server = http.server.ThreadingHTTPServer((LOOP, 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_ssl_get_over_tls_and_not_over_plain_http(tls_server, web_server):
    good = hashlib.md5(BODY).hexdigest()
    checker = http_checker({"path": "/", "digest": good}, kind="SSL_GET")
    assert run(http_check.check(checker, Target(LOOP, tls_server.server_address[1]), 3.0)).ok
    # a plain HTTP server does not pass an SSL_GET
    assert not run(http_check.check(checker, Target(LOOP, web_server.server_address[1]), 3.0)).ok


@pytest.mark.parametrize("command,dynamic,ok,weight", [
    ("exit 0", False, True, None),
    ("exit 1", False, False, None),
    ("exit 7", False, False, None),
    ("exit 7", True, True, 5),  # keepalived: weight = exit code - 2
    ("exit 2", True, True, 0),
    ("exit 1", True, False, None),
])
def test_misc_check_exit_codes(command, dynamic, ok, weight):
    checker = CheckerConfig("MISC_CHECK", options={"misc_path": f"/bin/sh -c '{command}'",
                                                   "misc_dynamic": dynamic})
    result = run(misc.check(checker, Target(LOOP, 80), 5.0))
    assert (result.ok, result.weight) == (ok, weight)


def test_misc_check_timeout_kills_the_script(tmp_path):
    marker = tmp_path / "survived"
    checker = CheckerConfig("MISC_CHECK",
                            options={"misc_path": f"/bin/sh -c 'sleep 1.2; touch {marker}'"})
    result = run(misc.check(checker, Target(LOOP, 80), 0.3))
    assert not result.ok and result.reason == "timed out"
    time.sleep(1.5)
    assert not marker.exists()


def test_misc_check_gets_its_arguments(tmp_path):
    out = tmp_path / "args"
    script = tmp_path / "probe.sh"
    script.write_text(f'#!/bin/sh\necho "$@" > {out}\n')
    script.chmod(0o755)
    checker = CheckerConfig("MISC_CHECK",
                            options={"misc_path": f'{script} one "two words" a\\ b'})
    assert run(misc.check(checker, Target(LOOP, 80), 5.0)).ok
    assert out.read_text() == "one two words a b\n"
    # no shell in between: a shell word is not a program
    assert not run(misc.check(CheckerConfig("MISC_CHECK", options={"misc_path": "exit 0"}),
                              Target(LOOP, 80), 5.0)).ok


def udp_server(reply: bool = True, data_for=lambda d: d):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOP, 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            if reply:
                answer = data_for(data)
                if answer is not None:
                    sock.sendto(answer, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def close():
        stop.set()
        thread.join(2)
        sock.close()

    return sock.getsockname()[1], close


def test_udp_check_icmp_error_fails_silence_passes_unless_a_reply_is_required():
    port, close = udp_server(reply=False)
    try:
        plain = CheckerConfig("UDP_CHECK", options={"payload": b"ping"})
        assert run(udp.check(plain, Target(LOOP, port), 0.3)).ok
        strict = CheckerConfig("UDP_CHECK", options={"payload": b"ping", "require_reply": True})
        assert not run(udp.check(strict, Target(LOOP, port), 0.3)).ok
    finally:
        close()
    refused = run(udp.check(CheckerConfig("UDP_CHECK"), Target(LOOP, free_port(
        socket.SOCK_DGRAM)), 0.5))
    assert not refused.ok and "refused" in refused.reason.lower()
    port, close = udp_server(reply=True)
    try:
        strict = CheckerConfig("UDP_CHECK", options={"payload": b"ping", "require_reply": True,
                                                     "reply_data": b"ping"})
        assert run(udp.check(strict, Target(LOOP, port), 1.0)).ok
        wrong = CheckerConfig("UDP_CHECK", options={"payload": b"ping", "require_reply": True,
                                                    "reply_data": b"pong"})
        assert not run(udp.check(wrong, Target(LOOP, port), 1.0)).ok
    finally:
        close()


def dns_answer(query: bytes, rcode: int = 0, answers: int = 1, id_delta: int = 0) -> bytes:
    query_id = struct.unpack("!H", query[:2])[0]
    question = query[12:]
    header = struct.pack("!HHHHHH", (query_id + id_delta) & 0xFFFF, 0x8180 | rcode, 1,
                         answers, 0, 0)
    record = b"\xc0\x0c" + struct.pack("!HHIH", 6, 1, 60, 4) + b"\0\0\0\0" if answers else b""
    return header + question + record


@pytest.mark.parametrize("answer,ok", [
    (lambda q: dns_answer(q), True),
    (lambda q: dns_answer(q, rcode=3), False),  # NXDOMAIN
    (lambda q: dns_answer(q, answers=0), False),
    (lambda q: dns_answer(q, id_delta=1), False),  # an answer to another query
])
def test_dns_check(answer, ok):
    seen = []

    def respond(query):
        seen.append(query)
        return answer(query)

    port, close = udp_server(data_for=respond)
    try:
        checker = CheckerConfig("DNS_CHECK", options={"type": "SOA", "name": "example.test"})
        assert run(dns.check(checker, Target(LOOP, port), 0.5)).ok == ok
    finally:
        close()
    # the question asked: example.test, type SOA, class IN
    assert seen and seen[0][12:] == b"\x07example\x04test\x00" + struct.pack("!HH", 6, 1)


@pytest.mark.skipif(os.geteuid() != 0, reason="ICMP sockets need root here")
def test_ping_check_on_loopback():
    assert run(ping.check(CheckerConfig("PING_CHECK"), Target(LOOP, 0), 1.0)).ok
