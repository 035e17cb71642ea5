"""`lvsuser run`: readiness, rules at start, SIGHUP reload (atomic), SIGTERM cleanup."""
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest

from lvsuser.backends.base import BackendUnavailable
from lvsuser.backends.table import TableBackend
from lvsuser.control import daemon
from lvsuser.control.client import RemoteBackend

REPO = pathlib.Path(__file__).resolve().parents[2]
GOOD = "-A -t 198.18.0.1:80 -s rr\n-a -t 198.18.0.1:80 -r 198.18.1.1 -m\n"
OTHER = "# reloaded\n-A -u 198.18.0.2:53 -s wlc\n--mark 7 -u 198.18.0.2 --dport 53\n"
BAD = "-A -t 198.18.0.3:80 -s rr\n-A -t 198.18.0.3:80 -s rr\n"


def saved(path):
    remote = RemoteBackend(path, timeout=10)
    try:
        return [(str(s.addr), s.port, s.scheduler, len(s.dests)) for s in remote.get_services()], \
            remote.get_mark_rules()
    finally:
        remote.close()


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_in_process_director_reloads_atomically_and_cleans_up(tmp_path):
    rules_file = tmp_path / "rules"
    rules_file.write_text(GOOD)
    path = str(tmp_path / "control.sock")
    director = daemon.Director(TableBackend(), path, str(rules_file))
    director.load_rules()
    runner = threading.Thread(target=director.run)
    runner.start()
    try:
        assert director.ready.wait(10)
        assert saved(path)[0] == [("198.18.0.1", 80, "rr", 1)]
        rules_file.write_text(BAD)
        assert director.reload() is False  # refused: the running table is kept
        assert saved(path)[0] == [("198.18.0.1", 80, "rr", 1)]
        rules_file.write_text(OTHER)
        director.request_reload()
        assert wait_for(lambda: director.reloads == 1)
        services, marks = saved(path)
        assert services == [("198.18.0.2", 53, "wlc", 0)] and [m.mark for m in marks] == [7]
    finally:
        director.request_stop()
        runner.join(10)
    assert not runner.is_alive()
    assert not os.path.exists(path)


def test_bad_rules_file_stops_the_start(tmp_path):
    rules_file = tmp_path / "rules"
    rules_file.write_text(BAD)
    backend = TableBackend()
    director = daemon.Director(backend, str(tmp_path / "c.sock"), str(rules_file))
    with pytest.raises(daemon.rules.RulesError) as info:
        director.load_rules()
    assert info.value.line == 2
    assert backend.get_services() == []


def test_unavailable_backend_is_one_line_and_exit_1(monkeypatch, capsys, tmp_path):
    def unavailable(kind, io, interfaces, max_conns, control_path=None):
        raise BackendUnavailable("the userspace backend needs root (raw sockets).")

    monkeypatch.setattr(daemon, "make_backend", unavailable)
    assert daemon.main(["--control", str(tmp_path / "c.sock")]) == 1
    err = capsys.readouterr().err
    assert err == "lvsuser: the userspace backend needs root (raw sockets).\n"
    assert not (tmp_path / "c.sock").exists()


def test_signals_in_a_real_process(tmp_path):
    rules_file = tmp_path / "rules"
    rules_file.write_text(GOOD)
    path = str(tmp_path / "run" / "control.sock")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "lvsuser", "run", "--backend", "table",
                             "--control", path, "--rules", str(rules_file)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: os.path.exists(path) or proc.poll() is not None, 20), "no socket"
        assert proc.poll() is None, proc.communicate()
        assert saved(path)[0] == [("198.18.0.1", 80, "rr", 1)]
        rules_file.write_text(BAD)
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert saved(path)[0] == [("198.18.0.1", 80, "rr", 1)]
        rules_file.write_text(OTHER)
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: saved(path)[0] == [("198.18.0.2", 53, "wlc", 0)])
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert not os.path.exists(path)
    assert "reload of" in err and "running table kept: line 2: Service already exists" in err
    assert "Traceback" not in err


def test_cli_dispatches_and_reports_missing_subcommands(capsys, monkeypatch):
    from lvsuser import cli

    assert cli.main(["ipvsadm", "-v"]) == 0
    assert capsys.readouterr().out.startswith("ipvsadm v1.31")
    monkeypatch.setitem(cli._DELEGATES, "lab", ("lvsuser.no_such_module", "main"))
    with pytest.raises(SystemExit) as info:
        cli.main(["lab"])
    assert "the `lab` command is not available" in str(info.value.code)
    assert cli.main(["frobnicate"]) == 2


def test_scheduler_plugins_are_loaded_before_rules(tmp_path, monkeypatch):
    schedulers = pytest.importorskip("lvsuser.schedulers")
    if not hasattr(schedulers, "load_plugins"):
        pytest.skip("the scheduler registry has no plugin loader")
    if hasattr(schedulers, "_registry"):  # keep the test's plugin out of other tests
        monkeypatch.setattr(schedulers, "_registry", dict(schedulers._registry))
    plugin = tmp_path / "leastw_plugin.py"
    name = f"lw{os.getpid() % 100000}"
    plugin.write_text(
        "from lvsuser.schedulers import Scheduler\n"
        f"class LeastWeight(Scheduler):\n    name = {name!r}\n"
        "    def schedule(self, pkt, now):\n        return None\n")
    assert name in daemon.load_schedulers([str(plugin)])
    table = TableBackend()
    assert table.scheduler_known(name)
    with pytest.raises(ValueError):
        daemon.load_schedulers([str(tmp_path / "missing.py")])


def test_systemd_is_told_when_the_socket_is_ready(tmp_path, monkeypatch):
    import socket as socket_mod

    notify_path = str(tmp_path / "notify")
    listener = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_DGRAM)
    listener.bind(notify_path)
    listener.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", notify_path)
    path = str(tmp_path / "c.sock")
    director = daemon.Director(TableBackend(), path)
    runner = threading.Thread(target=director.run)
    runner.start()
    try:
        assert listener.recv(64) == b"READY=1"
        assert os.path.exists(path)  # ready means clients can connect now
    finally:
        director.request_stop()
        runner.join(10)
        assert listener.recv(64) == b"STOPPING=1"
        listener.close()
