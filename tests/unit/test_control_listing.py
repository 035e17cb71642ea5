"""Listing connections in bounded pieces, from the core to ipvsadm -Lnc.

Core.connections_chunk (both cores) copies a bounded number of entries under the lock and
returns them with a cursor; connections() is the concatenation, templates first.  The control
protocol carries the listing page by page, so no reply grows with the table: a listing many
times larger than the longest line allowed still works, and -Lnc prints what it always printed.
"""
import errno
import io
import ipaddress

import pytest
from scapy.all import IP, TCP, Ether, raw

from lvsuser import model
from lvsuser.backends.table import TableBackend
from lvsuser.control import ipvsadm, protocol
from lvsuser.control.client import RemoteBackend
from lvsuser.control.ipvsadm.output import Printer, connection_title, format_connection
from lvsuser.control.ipvsadm.resolver import NumericResolver
from lvsuser.control.server import ControlServer
from lvsuser.pyfastpath import TX
from tests.unit.golden import (ADDRS, CLIENT_MAC, CORE_IDS, CORES, DIR_CLIENT_MAC, IF_CLIENT,
                               make_config, make_service, new_core)


def syn(client, sport):
    return raw(Ether(src=CLIENT_MAC, dst=DIR_CLIENT_MAC)
               / IP(src=client, dst=ADDRS[model.AF_INET]["vip"]) / TCP(sport=sport, dport=80, flags="S"))


def core_with_templates_between_connections(core_cls):
    """Five clients in five /24s (a template each, made just before its connection, so the two
    kinds alternate in the table), then two more connections of the first /24."""
    svc = make_service(fwd=model.Forward.ROUTE, flags=model.SVC_F_HASHED | model.SVC_F_PERSISTENT,
                       timeout=360, netmask=0xFFFFFF00)
    core = new_core(core_cls, make_config([svc]))
    made = []
    for n in range(5):
        client = f"198.19.{n}.5"
        assert core.process(syn(client, 1000 + n), IF_CLIENT, 1.0)[0] == TX
        made.append((client, 1000 + n))
    for sport in (2000, 2001):
        assert core.process(syn("198.19.0.9", sport), IF_CLIENT, 1.0)[0] == TX
        made.append(("198.19.0.9", sport))
    return core, made


@pytest.mark.parametrize("core_cls", CORES, ids=CORE_IDS)
def test_chunks_add_up_to_the_listing_templates_first(core_cls):
    core, made = core_with_templates_between_connections(core_cls)
    whole = core.connections(2.0)
    kinds = ["template" if row["cport"] == 0 else "conn" for row in whole]
    assert kinds == ["template"] * 5 + ["conn"] * 7
    assert [(str(r["caddr"]), r["cport"]) for r in whole[5:]] == made
    assert [str(r["caddr"]) for r in whole[:5]] == [f"198.19.{n}.0" for n in range(5)]
    assert all(r["expires"] == 359 for r in whole[:5])

    pieces, cursor, calls = [], 0, 0
    while True:
        rows, cursor = core.connections_chunk(cursor, 3, 2.0)
        assert len(rows) <= 3
        pieces.extend(rows)
        calls += 1
        if cursor == 0:
            break
        assert calls < 50
    assert pieces == whole
    assert calls >= 4
    assert core.connections_chunk(0, 100, 2.0) != (whole, 0) or len(whole) <= 100
    with pytest.raises(ValueError):
        core.connections_chunk(0, 0, 2.0)


@pytest.mark.parametrize("core_cls", CORES, ids=CORE_IDS)
def test_an_empty_table_lists_nothing(core_cls):
    core = new_core(core_cls, make_config([make_service()]))
    assert core.connections(1.0) == []
    rows, cursor = core.connections_chunk(0, 10, 1.0)
    while cursor:
        assert rows == []
        rows, cursor = core.connections_chunk(cursor, 10, 1.0)
    assert rows == []


class ManyConnections(TableBackend):
    """A table whose listing is many times longer than the longest line in the test."""

    def __init__(self, count):
        super().__init__()
        self.rows = [dict(protocol="TCP", caddr=ipaddress.ip_address(f"198.18.{n // 250}.{n % 250 + 1}"),
                          cport=1024 + n, vaddr=ipaddress.ip_address("198.18.100.1"), vport=80,
                          daddr=ipaddress.ip_address("198.18.200.2"), dport=8080,
                          state="ESTABLISHED", expires=n % 900, pe_name="", pe_data="")
                     for n in range(count)]

    def get_connections(self):
        return list(self.rows)


def test_a_listing_longer_than_a_line_is_paged_and_printed_unchanged(tmp_path, monkeypatch):
    backend = ManyConnections(3000)
    monkeypatch.setattr(protocol, "MAX_LINE", 64 * 1024)  # one page of 3000 rows would not fit
    path = str(tmp_path / "c.sock")
    server = ControlServer(path, backend).start()
    try:
        remote = RemoteBackend(path)
        try:
            assert len(protocol.dump_line({"result": protocol.encode(backend.rows)})) > protocol.MAX_LINE
            # a client asking for everything at once gets a page that fits
            rows, cursor = remote.get_connections_page(0, 3000)
            assert 0 < len(rows) == protocol.page_rows() < 3000 and cursor == len(rows)
            assert remote.get_connections() == backend.rows  # page by page
            # any other reply too long for a line is refused, never cut
            for port in range(1, 500):
                backend.add_service(model.Service(af=model.AF_INET, protocol=model.IPPROTO_TCP,
                                                  addr=ipaddress.ip_address("198.18.0.1"),
                                                  port=port, scheduler="rr"))
            assert len(protocol.ok_reply(backend.get_services())) > protocol.MAX_LINE
            with pytest.raises(model.IPVSError) as info:
                remote.get_services()
            assert info.value.errno == errno.EMSGSIZE
            assert remote.ping()  # and the connection is still good
        finally:
            remote.close()
        out, err = io.StringIO(), io.StringIO()
        assert ipvsadm.main(["-Lnc", "--control", path], stdout=out, stderr=err) == 0, err.getvalue()
    finally:
        server.stop()
    printer = Printer(io.StringIO(), NumericResolver())
    expected = connection_title(1) + "".join(format_connection(printer, row, 1) for row in backend.rows)
    assert out.getvalue() == expected
    assert len(out.getvalue().splitlines()) == 3002
