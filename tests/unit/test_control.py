"""The control socket: protocol round trips, errors, concurrency, socket file handling."""
import errno
import ipaddress
import os
import socket
import stat
import threading

import pytest

from lvsuser import model
from lvsuser.backends.base import BatchFailed
from lvsuser.backends.table import TableBackend
from lvsuser.control import protocol
from lvsuser.control.client import RemoteBackend
from lvsuser.control.link import ControlUnreachable
from lvsuser.control.server import ControlServer, ControlSocketInUse
from lvsuser.model import Dest, Forward, IPVSError, MarkRule, Service

VIP = ipaddress.ip_address("198.18.0.10")


def tcp_service(port=80, **kw):
    return Service(af=model.AF_INET, protocol=model.IPPROTO_TCP, addr=VIP, port=port, **kw)


@pytest.fixture
def served(tmp_path):
    backend = TableBackend()
    path = str(tmp_path / "run" / "control.sock")
    server = ControlServer(path, backend).start()
    clients = []

    def client():
        remote = RemoteBackend(path, timeout=10)
        clients.append(remote)
        return remote

    try:
        yield backend, path, client
    finally:
        for remote in clients:
            remote.close()
        server.stop()


def test_socket_is_private_and_removed_on_stop(tmp_path):
    path = str(tmp_path / "sub" / "dir" / "c.sock")
    server = ControlServer(path, TableBackend()).start()
    try:
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    finally:
        server.stop()
    assert not os.path.exists(path)


def test_round_trip_of_every_model_object(served):
    backend, path, client = served
    remote = client()
    svc = tcp_service(flags=model.SVC_F_PERSISTENT | model.SVC_F_SCHED1, timeout=60,
                      scheduler="sh", netmask=0xFFFFFF00)
    remote.add_service(svc)
    v6 = Dest(addr=ipaddress.ip_address("2001:db8::7"), port=80, af=model.AF_INET6,
              fwd=Forward.TUNNEL, tun_type=model.TunType.GUE, tun_port=6080,
              tun_flags=model.TUN_FLAG_CSUM, weight=3)
    remote.add_dest(svc.key, v6)
    got = remote.get_service(svc.key)
    assert got == backend.get_service(svc.key)
    assert got.dests[0].fwd is Forward.TUNNEL and got.dests[0].tun_type is model.TunType.GUE
    assert remote.get_services() == backend.get_services()
    assert remote.get_info() == {"version": (1, 2, 1), "conn_tab_size": 4096}
    remote.set_timeouts(model.Timeouts(tcp=10, tcp_fin=0, udp=0))
    assert remote.get_timeouts() == model.Timeouts(tcp=10, tcp_fin=120, udp=300)
    rule = MarkRule(mark=4, dst_net=ipaddress.ip_network("2001:db8::/64"), dport_lo=1, dport_hi=9,
                    src_net=ipaddress.ip_network("2001:db8:1::/48"))
    remote.add_mark_rule(rule)
    assert remote.get_mark_rules() == [rule]
    assert remote.get_service(tcp_service(81).key) is None


def test_refused_command_changes_nothing_and_carries_the_errno(served):
    backend, path, client = served
    remote = client()
    remote.add_service(tcp_service())
    before = backend.get_services()
    with pytest.raises(IPVSError) as info:
        remote.add_service(tcp_service(scheduler="rr"))
    assert info.value.errno == errno.EEXIST
    with pytest.raises(IPVSError) as info:
        remote.add_dest(tcp_service().key, Dest(addr=ipaddress.ip_address("198.18.1.1"), port=80,
                                                l_threshold=5))
    assert info.value.errno == errno.ERANGE
    assert backend.get_services() == before
    with pytest.raises(BatchFailed) as info:
        remote.apply_batch([("add_service", {"svc": tcp_service(81)}),
                            ("del_service", {"key": tcp_service(99).key})])
    assert info.value.index == 1 and info.value.errno == errno.ESRCH
    assert backend.get_services() == before


def test_sync_daemon_is_reported_as_not_supported(served):
    _, _, client = served
    with pytest.raises(IPVSError) as info:
        client().start_daemon(model.SyncDaemon(state="master", mcast_ifn="lo"))
    assert info.value.errno == errno.ENOSYS


def _raw_exchange(path, payload: bytes) -> list[dict]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return [protocol.load_line(line) for line in data.splitlines()]


def test_malformed_requests_get_einval_and_the_connection_survives(served):
    backend, path, _ = served
    replies = _raw_exchange(path, b"not json\n[1,2]\n{\"op\": \"rm_rf\"}\n"
                                  b"{\"op\": \"add_service\", \"args\": {\"svc\": {\"__type__\": \"Bogus\"}}}\n"
                                  b"{\"op\": \"add_service\", \"args\": {\"nope\": 1}}\n"
                                  b"{\"op\": \"ping\"}\n")
    assert [r["ok"] for r in replies] == [False] * 5 + [True]
    assert all(r["errno"] == errno.EINVAL for r in replies[:5])
    assert backend.get_services() == []


def test_concurrent_clients_do_not_corrupt_the_table(served):
    backend, path, client = served
    svc = tcp_service()
    client().add_service(svc)
    failures = []

    def hammer(n):
        remote = client()
        addr = ipaddress.ip_address(f"198.18.3.{n}")
        try:
            for round_ in range(40):
                remote.add_dest(svc.key, Dest(addr=addr, port=80, weight=round_))
                remote.edit_dest(svc.key, Dest(addr=addr, port=80, weight=round_ + 1))
                remote.del_dest(svc.key, Dest(addr=addr, port=80))
            remote.add_dest(svc.key, Dest(addr=addr, port=80, weight=n))
        except Exception as exc:  # any error is a failure of the test
            failures.append(exc)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures
    dests = backend.get_service(svc.key).dests
    assert sorted((str(d.addr), d.weight) for d in dests) == sorted(
        (f"198.18.3.{n}", n) for n in range(1, 7))


def test_stale_socket_is_replaced_and_a_live_one_is_refused(tmp_path):
    path = str(tmp_path / "c.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: like a daemon killed with -9
    server = ControlServer(path, TableBackend()).start()
    try:
        with pytest.raises(ControlSocketInUse):
            ControlServer(path, TableBackend())
        assert RemoteBackend(path).ping()
    finally:
        server.stop()


def test_unreachable_director_is_reported(tmp_path):
    remote = RemoteBackend(str(tmp_path / "missing.sock"))
    with pytest.raises(ControlUnreachable) as info:
        remote.get_services()
    assert "missing.sock" in str(info.value.strerror)


def test_protocol_rejects_unknown_types_and_fields():
    with pytest.raises(protocol.ProtocolError):
        protocol.decode({"__type__": "Service", "af": 2, "evil": 1})
    with pytest.raises(protocol.ProtocolError):
        protocol.decode({"__ip__": "not-an-ip"})
    svc = tcp_service()
    assert protocol.decode(protocol.encode(svc)) == svc


def test_ipvsadm_over_the_socket_including_an_atomic_restore(served):
    import io

    from lvsuser.control import ipvsadm
    from lvsuser.control.ipvsadm.resolver import NumericResolver

    backend, path, _ = served

    def cli(*args, stdin=""):
        out, err = io.StringIO(), io.StringIO()
        rc = ipvsadm.main(["--control", path, *args], stdin=io.StringIO(stdin), stdout=out,
                          stderr=err, resolver=NumericResolver())
        return rc, out.getvalue(), err.getvalue()

    assert cli("-A", "-t", "198.18.0.10:80", "-s", "rr") == (0, "", "")
    assert cli("-a", "-t", "198.18.0.10:80", "-r", "198.18.1.1", "-m", "-w", "3") == (0, "", "")
    assert cli("-A", "-t", "198.18.0.10:80") == (255, "", "Service already exists\n")
    rc, saved, _ = cli("-Sn")
    assert saved == "-A -t 198.18.0.10:80 -s rr\n-a -t 198.18.0.10:80 -r 198.18.1.1:80 -m -w 3\n"
    assert cli("-C") == (0, "", "")
    assert cli("-R", stdin=saved + "-A -t 198.18.0.11:80 -s nosuch\n")[0] == 255
    assert backend.get_services() == []
    assert cli("-R", stdin=saved) == (0, "", "")
    assert cli("-Sn")[1] == saved
    assert cli("-L", "--timeout") == (0, "Timeout (tcp tcpfin udp): 900 120 300\n", "")


def test_lvsuser_mark_command(served, capsys):
    from lvsuser import cli

    backend, path, _ = served
    assert cli.main(["mark", "--control", path, "add", "1", "-t", "198.18.0.10", "--dport", "80"]) == 0
    assert cli.main(["mark", "--control", path, "add", "1", "-t", "198.18.0.10", "--dport", "80"]) == 1
    assert "mark rule already exists" in capsys.readouterr().err
    assert cli.main(["mark", "--control", path, "list"]) == 0
    assert capsys.readouterr().out == "--mark 1 -t 198.18.0.10/32 --dport 80\n"
    assert cli.main(["mark", "--control", path, "add", "x"]) == 2
    assert cli.main(["mark", "--control", path, "del", "1", "-t", "198.18.0.10", "--dport", "80"]) == 0
    assert backend.get_mark_rules() == []
    assert cli.main(["mark", "--control", path + ".missing", "list"]) == 2


def test_dispatch_survives_arbitrary_requests():
    import json
    import types

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from lvsuser.control.server import ControlServer

    fake_server = types.SimpleNamespace(backend=TableBackend())
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
            st.sampled_from(["op", "args", "svc", "key", "dest", "__type__", "__ip__", "af",
                             "addr", "port", "x"]), inner, max_size=4),
        max_leaves=12)
    ops = st.sampled_from(sorted(protocol.OPERATIONS) + ["bogus"])

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.binary(max_size=40),
                     st.builds(lambda op, args: json.dumps({"op": op, "args": args}).encode(),
                               ops, json_values)))
    def check(line):
        reply = protocol.load_line(ControlServer.dispatch(fake_server, line))
        assert isinstance(reply["ok"], bool)
        if not reply["ok"]:
            assert isinstance(reply["errno"], int) and reply["errno"] != errno.EIO, reply

    check()
