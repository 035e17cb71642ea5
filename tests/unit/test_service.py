"""`lvsuser service`: the systemd unit and the ipvsadm drop-in, installed under a tmp root;
`lvsuser --version`."""
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading

import pytest

import lvsuser
from lvsuser.backends.table import TableBackend
from lvsuser.control import daemon, rules
from lvsuser.ops import service

REPO = pathlib.Path(__file__).resolve().parents[2]
UNIT = pathlib.Path("etc/systemd/system/lvsuser.service")


def run_cli(*args, env=None):
    env = dict(env or os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "lvsuser", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def launcher(tmp_path):
    """An `lvsuser` program running this checkout, for --exec."""
    path = tmp_path / "bin" / "lvsuser"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m lvsuser \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def unit_settings(text):
    settings = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_version_says_lvsuser():
    result = run_cli("--version")
    assert result.returncode == 0
    assert re.fullmatch(r"lvsuser \d+\.\d+\.\d+\n", result.stdout)
    assert result.stdout == f"lvsuser {lvsuser.__version__}\n"


def test_install_writes_a_notify_unit_and_remove_takes_it_away(tmp_path):
    root = tmp_path / "root"
    program = launcher(tmp_path)
    result = run_cli("service", "install", "--root", str(root), "--exec", program,
                     "--control", "/run/lvsuser/edge.sock", "--rules", "/etc/lvsuser/rules",
                     "--metrics", "198.18.0.1:9177", "--procfs", "/var/lib/lvsuser/proc")
    assert result.returncode == 0, result.stderr
    text = (root / UNIT).read_text()
    settings = unit_settings(text)
    assert settings["Type"] == ["notify"]
    assert settings["ExecStart"] == [
        f"{program} run --control /run/lvsuser/edge.sock --rules /etc/lvsuser/rules "
        "--metrics 198.18.0.1:9177 --procfs /var/lib/lvsuser/proc"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["RuntimeDirectory"] == ["lvsuser"]
    assert settings["RuntimeDirectoryPreserve"] == ["yes"]
    caps = settings["CapabilityBoundingSet"][0].split()
    assert {"CAP_NET_ADMIN", "CAP_NET_RAW"} <= set(caps) and "CAP_SYS_ADMIN" not in caps
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["ReadWritePaths"] == ["/run/lvsuser /var/lib/lvsuser/proc"]
    assert settings["ExecStartPre"] == ["+/bin/mkdir -p /var/lib/lvsuser/proc"]
    assert "AF_PACKET" in settings["RestrictAddressFamilies"][0]
    assert settings["WantedBy"] == ["multi-user.target"]
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        UNIT.as_posix()]  # one file, nothing else

    result = run_cli("service", "remove", "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert not (root / UNIT).exists()
    assert run_cli("service", "remove", "--root", str(root)).stdout.endswith("not installed\n")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (apt package systemd)")
def test_systemd_analyze_verifies_the_unit_even_with_awkward_paths(tmp_path):
    root = tmp_path / "root"
    rules_file = tmp_path / "my rules 100%.txt"
    rules_file.write_text("-A -t 198.18.0.1:80 -s rr\n")
    program = launcher(tmp_path)
    assert service.main(["install", "--root", str(root), "--exec", program,
                         "--rules", str(rules_file), "--procfs", str(tmp_path / "proc $x")]) == 0
    text = (root / UNIT).read_text()
    assert f'--rules "{tmp_path}/my rules 100%%.txt"' in text
    assert f'--procfs "{tmp_path}/proc $$x"' in text
    check = subprocess.run(["systemd-analyze", "verify", str(root / UNIT)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert "lvsuser.service" not in check.stderr, check.stderr  # no complaint about our unit


def test_a_foreign_unit_is_kept_and_put_back(tmp_path, capsys):
    root = tmp_path / "root"
    foreign = root / UNIT
    foreign.parent.mkdir(parents=True)
    foreign.write_text("[Service]\nExecStart=/usr/bin/true\n")
    assert service.main(["install", "--root", str(root), "--exec", "/usr/bin/lvsuser"]) == 1
    assert "was not written by lvsuser" in capsys.readouterr().err
    assert service.main(["remove", "--root", str(root)]) == 1  # not ours: left alone
    assert foreign.read_text() == "[Service]\nExecStart=/usr/bin/true\n"
    assert service.main(["install", "--root", str(root), "--exec", "/usr/bin/lvsuser",
                         "--force"]) == 0
    assert "Type=notify" in foreign.read_text()
    assert service.main(["remove", "--root", str(root)]) == 0
    assert foreign.read_text() == "[Service]\nExecStart=/usr/bin/true\n"
    assert sorted(p.name for p in foreign.parent.iterdir()) == ["lvsuser.service"]


def test_extra_run_arguments_and_bad_metrics_address(tmp_path, capsys):
    root = tmp_path / "root"
    assert service.main(["install", "--root", str(root), "--exec", "/usr/bin/lvsuser",
                         "--metrics", "nowhere"]) == 1
    assert "--metrics nowhere" in capsys.readouterr().err
    assert not (root / UNIT).exists()
    assert service.main(["install", "--root", str(root), "--exec", "/usr/bin/lvsuser",
                         "--backend", "ipvs", "--", "--max-conns", "1000"]) == 0
    start = unit_settings((root / UNIT).read_text())["ExecStart"]
    assert start == ["/usr/bin/lvsuser run --control /run/lvsuser/control.sock --backend ipvs "
                     "--max-conns 1000"]


# --- the ipvsadm drop-in ---------------------------------------------------------------------
def fake_root(tmp_path, separate_sbin):
    root = tmp_path / "root"
    (root / "usr" / "sbin").mkdir(parents=True)
    if separate_sbin:
        (root / "sbin").mkdir()
    else:
        (root / "sbin").symlink_to("usr/sbin")
    return root


def test_shim_refuses_a_real_ipvsadm_unless_forced_and_restores_it(tmp_path, capsys):
    root = fake_root(tmp_path, separate_sbin=False)
    real = root / "usr" / "sbin" / "ipvsadm"
    real.write_bytes(b"\x7fELF real ipvsadm")
    real.chmod(0o755)
    assert service.main(["ipvsadm-shim", "install", "--root", str(root),
                         "--exec", "/usr/bin/lvsuser"]) == 1
    assert "is a real ipvsadm" in capsys.readouterr().err
    assert real.read_bytes() == b"\x7fELF real ipvsadm"
    assert service.main(["ipvsadm-shim", "install", "--root", str(root),
                         "--exec", "/usr/bin/lvsuser", "--force"]) == 0
    assert real.read_text().startswith("#!/bin/sh\n")
    assert (root / "usr" / "sbin" / "ipvsadm.lvsuser-saved").read_bytes() == b"\x7fELF real ipvsadm"
    # /sbin is a link to usr/sbin here: one shim, one saved copy
    assert sorted(p.name for p in (root / "usr" / "sbin").iterdir()) == [
        "ipvsadm", "ipvsadm.lvsuser-saved"]
    assert service.main(["ipvsadm-shim", "remove", "--root", str(root)]) == 0
    assert real.read_bytes() == b"\x7fELF real ipvsadm"
    assert sorted(p.name for p in (root / "usr" / "sbin").iterdir()) == ["ipvsadm"]


def test_shim_goes_in_both_sbins_when_they_differ(tmp_path):
    root = fake_root(tmp_path, separate_sbin=True)
    assert service.main(["ipvsadm-shim", "install", "--root", str(root),
                         "--exec", "/usr/bin/lvsuser"]) == 0
    for where in ("usr/sbin/ipvsadm", "sbin/ipvsadm"):
        assert os.access(root / where, os.X_OK)
    assert service.main(["ipvsadm-shim", "remove", "--root", str(root)]) == 0
    assert not (root / "usr/sbin/ipvsadm").exists() and not (root / "sbin/ipvsadm").exists()


def test_the_shim_drives_the_director_as_ipvsadm_would(tmp_path):
    """A tool that runs /usr/sbin/ipvsadm -Ln gets the director's table, in ipvsadm's words."""
    root = fake_root(tmp_path, separate_sbin=False)
    control = str(tmp_path / "run" / "control.sock")
    assert service.main(["ipvsadm-shim", "install", "--root", str(root), "--control", control,
                         "--exec", launcher(tmp_path)]) == 0
    backend = TableBackend()
    rules.apply_operations(backend, rules.parse_rules(
        "-A -t 198.18.0.1:80 -s rr\n-a -t 198.18.0.1:80 -r 198.18.1.1:8080 -m -w 2\n"))
    director = daemon.Director(backend, control)
    runner = threading.Thread(target=director.run)
    runner.start()
    try:
        assert director.ready.wait(10)
        env = {k: v for k, v in os.environ.items() if k != "LVSUSER_CONTROL"}
        shim = str(root / "usr" / "sbin" / "ipvsadm")
        listing = subprocess.run([shim, "-Ln"], capture_output=True, text=True, env=env, timeout=60)
        assert listing.returncode == 0, listing.stderr
        assert listing.stdout.splitlines()[3:] == [
            "TCP  198.18.0.1:80 rr",
            "  -> 198.18.1.1:8080              Masq    2      0          0         "]
        added = subprocess.run([shim, "-a", "-t", "198.18.0.1:80", "-r", "198.18.1.2:8080", "-m"],
                               capture_output=True, text=True, env=env, timeout=60)
        assert added.returncode == 0, added.stderr
        assert len(backend.get_services()[0].dests) == 2
        # the caller's LVSUSER_CONTROL still wins over the shim's default
        elsewhere = subprocess.run([shim, "-Ln"], capture_output=True, text=True, timeout=60,
                                   env=dict(env, LVSUSER_CONTROL=str(tmp_path / "none.sock")))
        assert elsewhere.returncode != 0
    finally:
        director.request_stop()
        runner.join(10)
