"""`lvsuser run --keepalived-conf` with the table backend: the file's services at start,
health checks changing them, SIGHUP applying only the differences, a bad file refused at start
and at reload, rules kept at stop.  The checks go to loopback listeners (connect_ip)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from lvsuser.control.client import RemoteBackend

from .listeners import listen

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def conf(servers: dict, extra_vs: str = "", notify: str = "") -> str:
    """servers: last octet -> (loopback port, weight)."""
    blocks = "".join(f"""
    real_server 198.18.1.{n} 80 {{
        weight {weight}
        {f'notify_down "{notify} down {n}"' if notify else ""}
        TCP_CHECK {{
            connect_ip 127.0.0.1
            connect_port {port}
            connect_timeout 1
            retry 1
            delay_before_retry 0.1
        }}
    }}""" for n, (port, weight) in servers.items())
    return f"""! test configuration
virtual_server 198.18.0.1 80 {{
    {"omega" if notify else ""}
    delay_loop 0.2
    warmup 0
    lvs_sched rr
    lvs_method NAT
{blocks}
}}
{extra_vs}"""


def dests(control):
    backend = RemoteBackend(control, timeout=5)
    try:
        return {svc.port: {str(d.addr): d.weight for d in svc.dests}
                for svc in backend.get_services()}
    finally:
        backend.close()


def test_run_with_a_keepalived_conf(tmp_path):
    one, two = listen(), listen()
    p1, p2 = one.getsockname()[1], two.getsockname()[1]
    conf_file = tmp_path / "keepalived.conf"
    conf_file.write_text(conf({1: (p1, 2), 2: (p2, 1)}))
    control = str(tmp_path / "run" / "control.sock")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "lvsuser", "run", "--backend", "table",
                             "--control", control, "--state-dir", str(tmp_path / "state"),
                             "--keepalived-conf", str(conf_file)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: os.path.exists(control) or proc.poll() is not None, 20)
        assert proc.poll() is None, proc.communicate()
        assert dests(control) == {80: {"198.18.1.1": 2, "198.18.1.2": 1}}
        two.close()  # 198.18.1.2's checks fail: out after retry + 1 failures
        assert wait_for(lambda: dests(control) == {80: {"198.18.1.1": 2}})
        # a foreign service added by hand is not the configuration's: never touched
        subprocess.run([sys.executable, "-m", "lvsuser", "ipvsadm", "-A", "-t",
                        "198.18.0.9:443", "-s", "rr"], env=dict(env, LVSUSER_CONTROL=control),
                       check=True, timeout=30)
        # reload: 198.18.1.1's weight changes, 198.18.1.3 arrives, 198.18.1.2 stays failed
        three = listen()
        conf_file.write_text(conf({1: (p1, 5), 2: (p2, 1), 3: (three.getsockname()[1], 1)}))
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: dests(control) == {80: {"198.18.1.1": 5, "198.18.1.3": 1},
                                                   443: {}})
        # a broken file is refused, the running configuration kept
        conf_file.write_text("virtual_server 198.18.0.1 80 {\n  bogus_keyword 1\n}\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert dests(control) == {80: {"198.18.1.1": 5, "198.18.1.3": 1}, 443: {}}
        # 198.18.1.2 comes back: in again once its check passes
        again = listen(p2)
        conf_file.write_text(conf({1: (p1, 5), 2: (p2, 1), 3: (three.getsockname()[1], 1)}))
        assert wait_for(lambda: dests(control)[80] == {"198.18.1.1": 5, "198.18.1.2": 1,
                                                       "198.18.1.3": 1})
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        three.close()
        again.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        one.close()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert f"{conf_file}:2: error: unknown keyword 'bogus_keyword'" in err
    assert "Removing service 198.18.1.2:80 from VS 198.18.0.1 80 TCP" in err or \
        "Removing service 198.18.1.2:80 from VS" in err


def test_a_bad_keepalived_conf_stops_the_start(tmp_path):
    conf_file = tmp_path / "keepalived.conf"
    conf_file.write_text("virtual_server 198.18.0.1 80 {\n  real_server 198.18.1.1 80 {\n"
                         "    weight x\n  }\n}\n")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "lvsuser", "run", "--backend", "table",
                           "--control", str(tmp_path / "c.sock"), "--state-dir",
                           str(tmp_path / "state"), "--keepalived-conf", str(conf_file)],
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert f"{conf_file}:3: error: 'weight' needs a number, not 'x'" in done.stderr
    assert not os.path.exists(tmp_path / "c.sock")


def test_omega_scripts_run_at_stop(tmp_path):
    one = listen()
    script = tmp_path / "notify.sh"
    script.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/notified\n')
    script.chmod(0o755)
    conf_file = tmp_path / "keepalived.conf"
    conf_file.write_text(conf({1: (one.getsockname()[1], 1)}, notify=str(script)))
    control = str(tmp_path / "c.sock")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "lvsuser", "run", "--backend", "table",
                             "--control", control, "--state-dir", str(tmp_path / "state"),
                             "--keepalived-conf", str(conf_file)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: os.path.exists(control) or proc.poll() is not None, 20)
        assert proc.poll() is None, proc.communicate()
        assert not (tmp_path / "notified").exists()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        one.close()
    assert proc.returncode == 0, err
    # the script ran, with its configured arguments, before the director was gone
    assert (tmp_path / "notified").read_text() == "down 1\n"


def test_a_rules_reload_keeps_the_keepalived_services(tmp_path):
    """--rules and --keepalived-conf together: SIGHUP replaces the rules file's part of the
    table and leaves the keepalived.conf's services as their health made them."""
    one, two = listen(), listen()
    conf_file = tmp_path / "keepalived.conf"
    conf_file.write_text(conf({1: (one.getsockname()[1], 2), 2: (two.getsockname()[1], 1)}))
    rules_file = tmp_path / "rules"
    rules_file.write_text("-A -t 198.18.0.5:25 -s rr\n")
    control = str(tmp_path / "c.sock")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "lvsuser", "run", "--backend", "table",
                             "--control", control, "--state-dir", str(tmp_path / "state"),
                             "--rules", str(rules_file), "--keepalived-conf", str(conf_file)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: os.path.exists(control) or proc.poll() is not None, 20)
        assert proc.poll() is None, proc.communicate()
        two.close()
        assert wait_for(lambda: dests(control) == {25: {}, 80: {"198.18.1.1": 2}})
        rules_file.write_text("-A -t 198.18.0.5:26 -s rr\n")
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: dests(control) == {26: {}, 80: {"198.18.1.1": 2}})
        time.sleep(0.5)  # and it stays so: the failed server is not put back
        assert dests(control) == {26: {}, 80: {"198.18.1.1": 2}}
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        one.close()
    assert proc.returncode == 0 and "Traceback" not in err, err
