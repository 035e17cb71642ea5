"""Rules that outlive the director: <state dir>/rules.json, written after every change, read
at start before anything is published, refused when of another version, removed when the
director stops with an empty table."""
import io
import ipaddress
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from lvsuser import model
from lvsuser.backends.table import TableBackend
from lvsuser.control import daemon, ipvsadm
from lvsuser.control.ipvsadm.resolver import NumericResolver
from lvsuser.control.state import RULES_VERSION, RulesState, StateError

REPO = pathlib.Path(__file__).resolve().parents[2]

SETUP = [
    ["-A", "-t", "198.18.0.1:80", "-s", "rr"],
    ["-A", "-u", "198.18.0.1:53", "-s", "sh", "-b", "sh-port", "-p", "120", "-M", "255.255.255.0"],
    ["-A", "-f", "7", "-6", "-s", "wlc"],
    ["-A", "-t", "[2001:db8::1]:443", "-s", "wrr"],
    ["-a", "-t", "198.18.0.1:80", "-r", "198.18.1.1:8080", "-m", "-w", "3"],
    ["-a", "-t", "198.18.0.1:80", "-r", "198.18.1.2:8080", "-m", "-x", "10", "-y", "2"],
    ["-a", "-t", "198.18.0.1:80", "-r", "198.18.1.3:8080", "-m", "-w", "0"],
    ["-a", "-f", "7", "-6", "-r", "2001:db8::5", "-g"],
    ["-a", "-u", "198.18.0.1:53", "-r", "198.18.1.9", "-i", "--tun-type", "gue", "--tun-port",
     "6080", "--tun-csum"],
    ["-a", "-t", "[2001:db8::1]:443", "-r", "[2001:db8::7]:443", "-m"],
    ["--set", "100", "20", "30"],
]
LISTINGS = [["-Ln"], ["-Sn"], ["-L", "--timeout"], ["-Ln", "--tun-info"], ["-Ln", "--thresholds"]]


def run(backend_or_path, *words, stdin=""):
    out, err = io.StringIO(), io.StringIO()
    if isinstance(backend_or_path, str):
        words, backend = [*words, "--control", backend_or_path], None
    else:
        backend = backend_or_path
    code = ipvsadm.main(list(words), backend, stdin=io.StringIO(stdin), stdout=out, stderr=err,
                        resolver=NumericResolver())
    return code, out.getvalue(), err.getvalue()


def listings(target):
    return [run(target, *words)[1] for words in LISTINGS]


def filled_table():
    table = TableBackend()
    for words in SETUP:
        assert run(table, *words)[0] == 0, words
    table.add_mark_rule(model.MarkRule(mark=7, dst_net=ipaddress.ip_network("2001:db8::/64"),
                                       protocol=model.IPPROTO_TCP, dport_lo=80, dport_hi=81))
    return table


def test_saved_table_comes_back_listed_the_same(tmp_path):
    table = filled_table()
    state = RulesState(str(tmp_path / "state"))
    state.save(table)
    assert sorted(os.listdir(tmp_path / "state")) == ["rules.json"]  # no temporary file left
    assert json.loads((tmp_path / "state" / "rules.json").read_text())["lvsuser_rules"] == RULES_VERSION
    again = TableBackend(state.load())
    assert listings(again) == listings(table)
    assert again.get_mark_rules() == table.get_mark_rules()
    assert "-a -t 198.18.0.1:80 -r 198.18.1.3:8080 -m -w 0" in listings(again)[1]


def test_every_change_is_saved_as_it_is_made(tmp_path):
    state = RulesState(str(tmp_path / "state"))
    table = TableBackend()
    director = daemon.Director(table, str(tmp_path / "c.sock"), None, state)
    assert table.after_change == state.save and director.state is state
    assert state.load() is None
    run(table, "-A", "-t", "198.18.0.1:80", "-s", "rr")
    assert [op for op, _ in state.load()] == ["add_service", "set_timeouts"]
    run(table, "-a", "-t", "198.18.0.1:80", "-r", "198.18.1.1", "-m")
    assert [op for op, _ in state.load()] == ["add_service", "add_dest", "set_timeouts"]
    # a refused change leaves the file as it was
    before = (tmp_path / "state" / "rules.json").read_bytes()
    assert run(table, "-a", "-t", "198.18.0.1:80", "-r", "198.18.1.1", "-m")[0] == 255
    assert (tmp_path / "state" / "rules.json").read_bytes() == before
    run(table, "-C")
    assert [op for op, _ in state.load()] == ["set_timeouts"]  # the empty table is saved
    assert table.is_empty()


@pytest.mark.parametrize("content, says", [
    ('{"lvsuser_rules": 99, "services": []}', "format version 99"),
    ('{"services": []}', "is not an lvsuser rules file"),
    ("not json at all", "is not an lvsuser rules file"),
])
def test_another_version_is_refused_never_misread(tmp_path, capsys, content, says):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "rules.json").write_text(content)
    with pytest.raises(StateError, match=says):
        RulesState(str(state_dir)).load()
    code = daemon.main(["--backend", "table", "--control", str(tmp_path / "c.sock"),
                        "--state-dir", str(state_dir)])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("lvsuser: ") and says in err and err.count("\n") == 1, err
    assert (state_dir / "rules.json").read_text() == content  # left for the user to look at
    assert not (tmp_path / "c.sock").exists()


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


class Daemon:
    """`lvsuser run --backend table` in a child process."""

    def __init__(self, tmp_path, *extra):
        self.sock = str(tmp_path / "control.sock")
        self.state = tmp_path / "state"
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-m", "lvsuser", "run", "--backend", "table",
                                      "--control", self.sock, "--state-dir", str(self.state),
                                      *extra], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        # a socket file left by a SIGKILLed director is there before the new one serves
        if not wait_for(lambda: self.proc.poll() is not None
                        or run(self.sock, "-L", "--timeout")[0] == 0):
            self.stop(signal.SIGKILL)
            raise AssertionError("no control socket")
        assert self.proc.poll() is None, self.proc.communicate()

    def stop(self, signum=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


def test_restarts_keep_the_rules_and_an_empty_table_leaves_nothing(tmp_path):
    first = Daemon(tmp_path)
    try:
        for words in SETUP:
            assert run(first.sock, *words)[0] == 0, words
        expected = listings(first.sock)
    finally:
        code, err = first.stop()
    assert code == 0 and "Traceback" not in err, err
    assert (first.state / "rules.json").exists()

    second = Daemon(tmp_path)  # after SIGTERM: everything is back, nothing re-added
    try:
        assert listings(second.sock) == expected
        assert run(second.sock, "-d", "-t", "198.18.0.1:80", "-r", "198.18.1.3:8080")[0] == 0
        expected = listings(second.sock)
    finally:
        second.stop(signal.SIGKILL)

    third = Daemon(tmp_path)  # after SIGKILL: the last change is there too
    try:
        assert listings(third.sock) == expected
        assert run(third.sock, "-C")[0] == 0
        assert run(third.sock, "--set", "900", "120", "300")[0] == 0  # the defaults again
    finally:
        code, err = third.stop()
    assert code == 0, err
    assert not third.state.exists()  # an empty table: the state is gone


def test_clean_and_a_rules_file_replace_the_saved_table(tmp_path):
    first = Daemon(tmp_path)
    try:
        assert run(first.sock, "-A", "-t", "198.18.0.1:80", "-s", "rr")[0] == 0
    finally:
        first.stop()
    rules_file = tmp_path / "rules"
    rules_file.write_text("-A -u 198.18.0.2:53 -s wlc\n")
    second = Daemon(tmp_path, "--rules", str(rules_file))
    try:
        assert "UDP  198.18.0.2:53 wlc" in run(second.sock, "-Ln")[1]
        assert "198.18.0.1:80" not in run(second.sock, "-Ln")[1]
    finally:
        second.stop()
    third = Daemon(tmp_path, "--clean")
    try:
        assert run(third.sock, "-Ln")[1].count("\n") == 3  # the header alone
    finally:
        third.stop()
    assert not third.state.exists()
