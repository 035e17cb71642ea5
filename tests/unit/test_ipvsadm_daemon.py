"""`-L --daemon` prints what the kernel reports, as ipvsadm 1.31 does (checked against its capture)."""
import io
import ipaddress
import json
import os

from lvsuser import model
from lvsuser.backends.table import TableBackend
from lvsuser.control import ipvsadm
from lvsuser.control.ipvsadm.resolver import NumericResolver

REFS = os.path.join(os.path.dirname(__file__), "..", "data", "ipvsadm", "refs", "daemon.json")


class DaemonBackend(TableBackend):
    """A table whose kernel side reports two running sync daemons."""

    def __init__(self, daemons):
        super().__init__()
        self.daemons = daemons
        self.started = []

    def get_daemons(self):
        return list(self.daemons)

    def start_daemon(self, daemon):
        self.started.append(daemon)


def run(argv, backend):
    out, err = io.StringIO(), io.StringIO()
    rc = ipvsadm.main(argv, backend=backend, stdout=out, stderr=err,
                      resolver=NumericResolver())
    return rc, out.getvalue(), err.getvalue()


def captured(args):
    with open(REFS) as f:
        return next(c for c in json.load(f) if c["args"] == args and c["stdout"])


def test_daemon_listing_matches_the_kernel_capture():
    group = ipaddress.ip_address("224.0.0.81")
    backend = DaemonBackend([
        model.SyncDaemon("master", "lo", 0, 1472, group, 8848, 1),
        model.SyncDaemon("backup", "lo", 7, 65507, group, 8848, 1),
    ])
    ref = captured(["-L", "--daemon"])
    assert run(["-L", "--daemon"], backend) == (ref["rc"], ref["stdout"], ref["stderr"])


def test_daemon_listing_without_optional_settings():
    backend = DaemonBackend([model.SyncDaemon("master", "eth0", 3)])
    assert run(["-L", "--daemon"], backend) == (0, "master sync daemon (mcast=eth0, syncid=3)\n", "")


def test_start_daemon_passes_every_setting():
    backend = DaemonBackend([])
    argv = ["--start-daemon", "master", "--mcast-interface", "lo", "--sync-maxlen", "1500",
            "--mcast-group", "239.1.2.3", "--mcast-port", "8848", "--mcast-ttl", "2"]
    assert run(argv, backend) == (0, "", "")
    assert backend.started == [model.SyncDaemon("master", "lo", 0, 1500,
                                                ipaddress.ip_address("239.1.2.3"), 8848, 2)]
