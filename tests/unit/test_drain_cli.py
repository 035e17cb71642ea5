"""`lvsuser drain` against the in-memory table (no connections: the draining part with live
connections is tests/net/test_drain.py): weight 0 first, removal only when asked, the real
server's other services untouched, clear refusals."""
from __future__ import annotations

import io
import ipaddress

import pytest

from lvsuser import model
from lvsuser.backends.table import TableBackend
from lvsuser.drain import Progress, build_parser, drain, parse_endpoint, service_key

VIP = ipaddress.ip_address("198.18.0.1")


def table():
    backend = TableBackend()
    for port in (80, 443):
        svc = model.Service(af=model.AF_INET, protocol=model.IPPROTO_TCP, addr=VIP, port=port)
        backend.add_service(svc)
        for n in (1, 2):
            backend.add_dest(svc.key, model.Dest(addr=ipaddress.ip_address(f"198.18.1.{n}"),
                                                 port=port, weight=3, fwd=model.Forward.MASQ))
    return backend


def key(port):
    return model.ServiceKey(af=model.AF_INET, protocol=model.IPPROTO_TCP, addr=VIP, port=port)


def weights(backend, port):
    return {str(d.addr): d.weight for d in backend.get_service(key(port)).dests}


def test_drain_without_remove_leaves_weight_zero():
    backend = table()
    out = io.StringIO()
    assert drain(backend, key(80), ipaddress.ip_address("198.18.1.1"), 80, 5, False,
                 out=out, sleep=lambda s: None) == 0
    assert weights(backend, 80) == {"198.18.1.1": 0, "198.18.1.2": 3}
    assert weights(backend, 443) == {"198.18.1.1": 3, "198.18.1.2": 3}
    text = out.getvalue()
    assert "198.18.1.1:80: weight 3 -> 0" in text
    assert "draining 198.18.1.1:80: 0 active, 0 inactive connections after 0s" in text


def test_drain_with_remove_deletes_only_that_dest():
    backend = table()
    assert drain(backend, key(443), ipaddress.ip_address("198.18.1.2"), None, 5, True,
                 out=io.StringIO(), sleep=lambda s: None) == 0
    assert weights(backend, 443) == {"198.18.1.1": 3}
    assert weights(backend, 80) == {"198.18.1.1": 3, "198.18.1.2": 3}


def test_unknown_service_or_server_is_refused(capsys):
    backend = table()
    assert drain(backend, key(8080), ipaddress.ip_address("198.18.1.1"), 80, 5, True,
                 out=io.StringIO()) == 1
    assert drain(backend, key(80), ipaddress.ip_address("198.18.1.9"), 80, 5, True,
                 out=io.StringIO()) == 1
    err = capsys.readouterr().err
    assert "no such service" in err and "no such real server" in err
    assert weights(backend, 80) == {"198.18.1.1": 3, "198.18.1.2": 3}


def test_arguments():
    args = build_parser().parse_args(["-t", "[2001:db8::1]:443", "-r", "[2001:db8::2]:8443",
                                      "--timeout", "7", "--remove"])
    assert service_key(args) == model.ServiceKey(af=model.AF_INET6, protocol=model.IPPROTO_TCP,
                                                 addr=ipaddress.ip_address("2001:db8::1"),
                                                 port=443)
    assert parse_endpoint(args.real_server) == (ipaddress.ip_address("2001:db8::2"), 8443)
    assert (args.timeout, args.remove) == (7.0, True)
    assert parse_endpoint("198.18.1.1", need_port=False) == (ipaddress.ip_address("198.18.1.1"),
                                                             0)
    with pytest.raises(ValueError):
        parse_endpoint("198.18.1.1")
    fw = build_parser().parse_args(["-f", "5", "-r", "198.18.1.1"])
    assert service_key(fw) == model.ServiceKey(af=model.AF_INET, fwmark=5)


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal_and_lines_otherwise():
    tty = Terminal()
    bar = Progress(tty, "198.18.1.1:80", start=10)
    bar.show(10, 2, 0)
    bar.show(5, 2, 1)
    bar.show(0, 2, 2)
    bar.end()
    frames = tty.getvalue().split("\r")[1:]
    assert [f.count("#") for f in frames] == [0, 15, 30]
    assert frames[1].startswith("draining 198.18.1.1:80 [###############...............] 5 "
                                "active, 2 inactive, 1s")
    assert tty.getvalue().endswith("\n")
    plain = io.StringIO()
    lines = Progress(plain, "x", start=3)
    lines.show(3, 0, 0)
    lines.show(1, 0, 1)
    assert plain.getvalue() == ("draining x: 3 active, 0 inactive connections after 0s\n"
                                "draining x: 1 active, 0 inactive connections after 1s\n")
