"""The user-space backend's publishing path, with a core stand-in (no root, no netlink).

A client's change publishes the table to the core without asking netlink again about real
servers it already knows, and a publish the core refuses is reported to the client -- in
ipvsadm's words, with the errno -- while the table stays exactly as it was.
"""
import errno
import io
import ipaddress
import threading

import pytest

from lvsuser import model
from lvsuser.backends.table import TableBackend
from lvsuser.backends.userspace import UserspaceBackend
from lvsuser.control import ipvsadm
from lvsuser.control.ipvsadm.errors import strerror_for_operation
from lvsuser.control.server import ControlServer
from lvsuser.director.forwarding import Egress

VIP = ipaddress.ip_address("198.18.0.10")
RIPS = [ipaddress.ip_address(f"198.18.1.{n}") for n in range(1, 5)]


class CoreStandIn:
    """Records each published configuration; refuses those with a real server of weight 13."""

    def __init__(self):
        self.published = []

    def publish(self, config):
        weights = [d.weight for svc in config.services for d in svc.dests]
        if 13 in weights:
            raise RuntimeError("no room for weight 13")
        self.published.append([(svc.key, [(d.addr, d.weight) for d in svc.dests])
                               for svc in config.services])

    def services(self):
        return []


class ResolverStandIn:
    """Answers for any real server; counts what it was asked."""

    def __init__(self):
        self.resolved = []

    def resolve_all(self, addrs, probe=True):
        self.resolved.append(sorted(addrs))
        return {a: Egress(a, ifindex=2, ifname="eth0", src_mac="02:00:00:00:00:01",
                          dst_mac="02:00:00:00:00:02", mtu=1500) for a in addrs}


def standin_backend(core):
    """A UserspaceBackend without drivers, guard or netlink: its table and publishing only."""
    backend = object.__new__(UserspaceBackend)
    TableBackend.__init__(backend)
    backend.io = "afpacket"
    backend.core = core
    backend._core_lock = threading.Lock()
    backend._closed = False
    backend._published_key = None
    backend._guard = backend._tunroutes = backend._tun = None
    backend.interfaces = {2: {"name": "eth0", "mac": "02:00:00:00:00:01", "mtu": 1500}}
    backend.resolver = ResolverStandIn()
    backend._kernel_view = {ipaddress.ip_address("198.18.0.1")}  # as the last refresh saw it
    backend._egress = {}
    backend._netlink = None  # a publish that asked netlink would fail loudly
    return backend


@pytest.fixture
def served(tmp_path):
    core = CoreStandIn()
    backend = standin_backend(core)
    path = str(tmp_path / "c.sock")
    server = ControlServer(path, backend).start()

    def run(*words, stdin=""):
        out, err = io.StringIO(), io.StringIO()
        code = ipvsadm.main([*words, "--control", path], stdin=io.StringIO(stdin), stdout=out,
                            stderr=err)
        return code, out.getvalue(), err.getvalue()

    try:
        yield backend, core, run
    finally:
        server.stop()


def test_a_change_resolves_only_real_servers_it_has_not_seen(served, monkeypatch):
    backend, core, run = served
    monkeypatch.setattr(UserspaceBackend, "_needs_netlink", lambda self, refresh: False)
    assert run("-A", "-t", f"{VIP}:80", "-s", "rr")[0] == 0
    for rip in RIPS[:2]:
        assert run("-a", "-t", f"{VIP}:80", "-r", str(rip), "-m")[0] == 0
    assert run("-e", "-t", f"{VIP}:80", "-r", str(RIPS[0]), "-m", "-w", "4")[0] == 0
    assert backend.resolver.resolved == [[RIPS[0]], [RIPS[1]]]  # the edit asked nothing
    assert core.published[-1] == [(model.ServiceKey(af=model.AF_INET, protocol=model.IPPROTO_TCP,
                                                    addr=VIP, port=80),
                                   [(RIPS[1], 1), (RIPS[0], 4)])]


def test_a_refused_publish_is_reported_and_the_table_is_left_as_it_was(served, monkeypatch):
    backend, core, run = served
    monkeypatch.setattr(UserspaceBackend, "_needs_netlink", lambda self, refresh: False)
    assert run("-A", "-t", f"{VIP}:80", "-s", "rr")[0] == 0
    assert run("-a", "-t", f"{VIP}:80", "-r", str(RIPS[0]), "-m", "-w", "2")[0] == 0
    listing_before = run("-Ln")[1]
    published_before = list(core.published)

    code, out, err = run("-e", "-t", f"{VIP}:80", "-r", str(RIPS[0]), "-m", "-w", "13")
    assert code == 255
    assert err == strerror_for_operation("edit_dest", errno.EIO) + "\n"
    assert run("-Ln")[1] == listing_before
    # the core was given the old table again (it might have kept part of the refused one)
    assert core.published[-1] == published_before[-1]

    # a batch (-R) that the core refuses changes nothing either
    rules = (f"-a -t {VIP}:80 -r {RIPS[1]} -m\n"
             f"-e -t {VIP}:80 -r {RIPS[0]} -m -w 13\n")
    code, out, err = run("-R", stdin=rules)
    assert code == 255 and "no rule was applied" in err
    assert run("-Ln")[1] == listing_before
    assert core.published[-1] == published_before[-1]

    # the next change that the core accepts goes through
    assert run("-e", "-t", f"{VIP}:80", "-r", str(RIPS[0]), "-m", "-w", "5")[0] == 0
    assert core.published[-1][0][1] == [(RIPS[0], 5)]
