"""Runs INSIDE the kernel-IPVS guest: each ipvsadm scenario through the real ipvsadm and through
lvsuser's ipvsadm (talking to `lvsuser run --backend BACKEND` over its control socket), and prints
one JSON document with every command's output on both sides and the kernel table each side left.

    python3 tests/kernel/guest_differential.py --backend ipvs|userspace [--deviate] [--netns NS]
                                               SCENARIO...

--deviate adds one deliberate deviation (the first `-a` gets weight + 1 on the lvsuser side) so the
host-side test can show that a difference is caught and named.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tools"))

import capture_ipvsadm_refs as capture  # noqa: E402
from lvsuser.control import ipvsadm as lvs_ipvsadm  # noqa: E402

RESET = capture.RESET_COMMANDS
SNAPSHOT_COMMANDS = [["-Sn"], ["-Ln"], ["-Ln", "--thresholds"], ["-Ln", "--persistent-conn"],
                     ["-Ln", "--tun-info"], ["-L", "--timeout"]]
START_TIMEOUT = 90  # seconds for `lvsuser run` to open its control socket (TCG is slow)


def real(args, stdin=None):
    proc = subprocess.run(["ipvsadm", *args], input=stdin or "", capture_output=True, text=True,
                          timeout=30)
    return [proc.stdout, proc.stderr, proc.returncode]


def ours(args, stdin=None):
    out, err = io.StringIO(), io.StringIO()
    rc = lvs_ipvsadm.main(list(args), stdin=io.StringIO(stdin or ""), stdout=out, stderr=err)
    return [out.getvalue(), err.getvalue(), rc]


def deviate(args):
    """The first real-server add gets one more weight: a deliberate, visible deviation."""
    if args[:1] == ["-a"] and "-w" not in args:
        return args + ["-w", "2"]
    return args


def start_director(backend: str, control: str, netns: str | None):
    env = dict(os.environ, PYTHONPATH=REPO, LVSUSER_CONTROL=control)
    log = open(control + ".log", "w")
    prefix = ["ip", "netns", "exec", netns] if netns else []
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "lvsuser", "run", "--backend", backend,
                             "--control", control], env=env, stdout=log, stderr=log,
                            cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT
    while not os.path.exists(control):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            with open(control + ".log") as f:
                raise SystemExit(f"lvsuser run --backend {backend} did not start:\n{f.read()}")
        time.sleep(0.2)
    return proc, log


def stop_director(proc, log, control: str) -> dict:
    """SIGTERM the director started by start_director; its exit code and the tail of its log."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()
    with open(control + ".log") as f:
        return {"director_log": f.read()[-4000:], "director_rc": proc.returncode}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", required=True, choices=["ipvs", "userspace"])
    parser.add_argument("--deviate", action="store_true")
    parser.add_argument("--netns", help="run the director in this network namespace (the "
                        "userspace backend needs an interface to serve)")
    parser.add_argument("scenarios", nargs="+")
    args = parser.parse_args()
    scenarios = capture.load_scenarios(args.scenarios)

    control_dir = "/run/lvsuser-kernel-test"
    os.makedirs(control_dir, exist_ok=True)
    control = os.path.join(control_dir, "control.sock")
    os.environ["LVSUSER_CONTROL"] = control
    director, log = start_director(args.backend, control, args.netns)
    result = {"backend": args.backend, "scenarios": {}}
    try:
        # The console script itself, once: proves `lvsuser ipvsadm` reaches the director.
        console = subprocess.run([sys.executable, "-m", "lvsuser", "ipvsadm", "-Ln"], cwd=REPO,
                                 env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                                 text=True, timeout=60)
        result["console_ipvsadm"] = [console.stdout, console.stderr, console.returncode]
        first_add_done = False
        for name, commands in scenarios.items():
            for reset in RESET:
                real(reset)
            kernel = [real(a, s) for a, s in commands]
            kernel_table = [real(c) for c in SNAPSHOT_COMMANDS]
            for reset in RESET:
                real(reset)
                ours(reset)
            lvsuser = []
            for a, s in commands:
                if args.deviate and not first_add_done and a[:1] == ["-a"]:
                    first_add_done = True
                    a = deviate(a)
                lvsuser.append(ours(a, s))
            lvsuser_table = [real(c) for c in SNAPSHOT_COMMANDS] if args.backend == "ipvs" else None
            result["scenarios"][name] = {
                "commands": [[a, s] for a, s in commands], "kernel": kernel, "lvsuser": lvsuser,
                "kernel_table": kernel_table, "lvsuser_table": lvsuser_table,
            }
    finally:
        result.update(stop_director(director, log, control))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
