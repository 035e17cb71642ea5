"""`lvsuser counters`: every datapath counter explained, printed over the control socket."""
import json

import pytest

from lvsuser import _fastpath, counters, pyfastpath
from lvsuser.backends.table import TableBackend
from lvsuser.cli import main as lvsuser_main
from lvsuser.control.server import ControlServer


def test_every_counter_of_both_cores_and_the_drivers_is_explained():
    assert tuple(_fastpath.COUNTER_NAMES) == tuple(pyfastpath.COUNTER_NAMES)
    assert set(counters.CORE_HELP) == set(pyfastpath.COUNTER_NAMES)
    io_names = _fastpath.io_counter_names()
    assert "rx_frames" in io_names and "rx_ring_drops" in io_names
    assert set(counters.IO_HELP) == set(io_names)
    assert all(text and not text.endswith(".") for text in
               list(counters.CORE_HELP.values()) + list(counters.IO_HELP.values()))


def test_format_leaves_out_zeros_unless_asked():
    values = {"core": {"rx": 1234567, "fragment": 3, "no_dest": 0},
              "io": {"rx_frames": 0, "tx_frames": 0}}
    text = counters.format_counters(values)
    assert text == ("datapath core:\n"
                    "  rx        1,234,567  frames the core looked at\n"
                    "  fragment          3  dropped: a fragment to a VIP (no reassembly in user space)\n"
                    "I/O drivers: all zero\n")
    full = counters.format_counters(values, show_all=True)
    assert "  no_dest " in full and "  tx_frames " in full and "all zero" not in full


class DatapathTable(TableBackend):
    """A table backend that also answers get_counters, as the userspace backend does."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def get_counters(self):
        return self.values


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(backend):
        path = str(tmp_path / f"c{len(servers)}.sock")
        servers.append(ControlServer(path, backend).start())
        return path

    yield start
    for server in servers:
        server.stop()


def test_command_prints_what_the_director_counted(serve, capsys):
    values = {"core": {"rx": 10, "ip_bad_checksum": 2}, "io": {"rx_frames": 10, "batches": 4}}
    path = serve(DatapathTable(values))
    assert lvsuser_main(["counters", "--control", path]) == 0
    out = capsys.readouterr().out
    assert out == counters.format_counters(values)
    assert "ip_bad_checksum" in out and "IPv4 header checksum wrong" in out

    assert lvsuser_main(["counters", f"--control={path}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == values


def test_command_without_a_datapath_or_a_director_says_so(serve, tmp_path, capsys):
    path = serve(TableBackend())
    assert lvsuser_main(["counters", "--control", path]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lvsuser counters: this director's backend has no datapath of its own")

    assert lvsuser_main(["counters", "--control", str(tmp_path / "none.sock")]) == 2
    assert "is `lvsuser run` running?" in capsys.readouterr().err

    assert lvsuser_main(["counters", "--bogus"]) == 2
    assert "unexpected argument '--bogus'" in capsys.readouterr().err
