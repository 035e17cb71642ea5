"""Every rule change is logged with who asked (the socket's peer credentials) and what, as the
ipvsadm line that asks it; refusals with ipvsadm's message; a SIGHUP reload says what it added,
removed and changed, or that nothing changed."""
import io
import logging
import os

import pytest

from lvsuser.backends.table import TableBackend
from lvsuser.control import daemon, ipvsadm
from lvsuser.control.server import ControlServer

ME = f"uid {os.getuid()} (pid {os.getpid()})"


@pytest.fixture
def served(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lvsuser.control")
    path = str(tmp_path / "c.sock")
    server = ControlServer(path, TableBackend()).start()

    def run(*words, stdin=""):
        out, err = io.StringIO(), io.StringIO()
        code = ipvsadm.main([*words, "--control", path], stdin=io.StringIO(stdin), stdout=out,
                            stderr=err)
        return code

    def logged():
        lines = [r.getMessage() for r in caplog.records if r.name == "lvsuser.control"]
        caplog.clear()
        return lines

    try:
        yield run, logged
    finally:
        server.stop()


def test_changes_are_logged_with_the_peers_uid_and_pid(served):
    run, logged = served
    assert run("-A", "-t", "198.18.0.1:80", "-s", "rr") == 0
    assert run("-a", "-t", "198.18.0.1:80", "-r", "198.18.1.1", "-m", "-w", "2") == 0
    assert run("-e", "-t", "198.18.0.1:80", "-r", "198.18.1.1", "-g") == 0
    assert run("--set", "60", "10", "30") == 0
    assert run("-Ln") == 0  # listings are not changes
    assert run("-d", "-t", "198.18.0.1:80", "-r", "198.18.1.1") == 0
    assert run("-D", "-t", "198.18.0.1:80") == 0
    assert logged() == [
        f"rule change by {ME}: -A -t 198.18.0.1:80 -s rr",
        f"rule change by {ME}: -a -t 198.18.0.1:80 -r 198.18.1.1:80 -m -w 2",
        f"rule change by {ME}: -e -t 198.18.0.1:80 -r 198.18.1.1:80 -g -w 1",
        f"rule change by {ME}: --set 60 10 30",
        f"rule change by {ME}: -d -t 198.18.0.1:80 -r 198.18.1.1:80",
        f"rule change by {ME}: -D -t 198.18.0.1:80",
    ]


def test_refusals_are_logged_with_ipvsadms_message(served):
    run, logged = served
    assert run("-A", "-u", "198.18.0.2:53", "-s", "rr") == 0
    assert run("-A", "-u", "198.18.0.2:53", "-s", "rr") == 255
    assert run("-R", stdin="-a -u 198.18.0.2:53 -r 198.18.1.2 -m\n-E -u 198.18.0.9:53 -s rr\n") == 255
    assert logged()[1:] == [
        f"rule change by {ME} refused (Service already exists): -A -u 198.18.0.2:53 -s rr",
        f"rule change by {ME} refused (No such service): a batch of 2: "
        "-a -u 198.18.0.2:53 -r 198.18.1.2:53 -m -w 1; -E -u 198.18.0.9:53 -s rr "
        "(refused at -E -u 198.18.0.9:53 -s rr; nothing applied)",
    ]


def test_a_reload_says_what_it_added_removed_and_changed(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lvsuser.run")
    rules_file = tmp_path / "rules"
    rules_file.write_text("-A -t 198.18.0.1:80 -s rr\n"
                          "-a -t 198.18.0.1:80 -r 198.18.1.1 -m\n"
                          "-a -t 198.18.0.1:80 -r 198.18.1.2 -m\n"
                          "-A -u 198.18.0.1:53 -s rr\n")
    director = daemon.Director(TableBackend(), str(tmp_path / "c.sock"), str(rules_file))
    director.load_rules()
    rules_file.write_text("-A -t 198.18.0.1:80 -s wrr\n"
                          "-a -t 198.18.0.1:80 -r 198.18.1.1 -m -w 5\n"
                          "-a -t 198.18.0.1:80 -r 198.18.1.3 -g\n"
                          "-A -u 198.18.0.7:53 -s rr\n"
                          "--mark 4 -u 198.18.0.7 --dport 53\n")
    caplog.clear()
    assert director.reload()
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reload: ")]
    assert sorted(said) == sorted([
        "reload: changed -E -t 198.18.0.1:80 -s wrr",
        "reload: changed -e -t 198.18.0.1:80 -r 198.18.1.1:80 -m -w 5",
        "reload: added -a -t 198.18.0.1:80 -r 198.18.1.3:80 -g -w 1",
        "reload: removed -d -t 198.18.0.1:80 -r 198.18.1.2:80",
        "reload: added -A -u 198.18.0.7:53 -s rr",
        "reload: removed -D -u 198.18.0.1:53",
        "reload: added mark 4 -u 198.18.0.7/32 --dport 53",
    ])
    caplog.clear()
    assert director.reload()
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("reload: ")] == [
        "reload: no change"]
