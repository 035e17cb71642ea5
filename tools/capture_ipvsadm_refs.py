#!/usr/bin/env python3
"""Capture reference outputs of the real ipvsadm against real kernel IPVS, for the CLI's replay tests.

Scenarios live in tests/data/ipvsadm/scenarios/NAME.txt (format: tests/data/ipvsadm/README.md): one
ipvsadm command per line (its arguments, shell-quoted; a leading word ``ipvsadm`` is dropped, so a
line ``ipvsadm`` runs it with no arguments), ``#`` comments, and ``< `` lines giving the
stdin of the command before them.  This script boots the kernel oracle ONCE (tools/ipvs_vm.py), runs
itself inside with ``--in-guest``, and there replays every scenario from a clean state (``ipvsadm -C``,
``--set 900 120 300``, sync daemons stopped; these resets are not recorded), recording each command's
stdout, stderr and exit code.  Back on the host it writes tests/data/ipvsadm/refs/NAME.json and
refs/_meta.json (ipvsadm --version, guest kernel).

    python3 tools/capture_ipvsadm_refs.py              # all scenarios
    python3 tools/capture_ipvsadm_refs.py basic ipv6   # only these
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO, "tests", "data", "ipvsadm")
SCENARIO_DIR = os.path.join(DATA_DIR, "scenarios")
REFS_DIR = os.path.join(DATA_DIR, "refs")
IPVSADM = "ipvsadm"
COMMAND_TIMEOUT = 20  # seconds per ipvsadm run; name lookups in the guest fail fast (no network)

# Run silently before every scenario so each starts from the kernel's fresh state.
RESET_COMMANDS = [["-C"], ["--set", "900", "120", "300"],
                  ["--stop-daemon", "master"], ["--stop-daemon", "backup"]]


class ScenarioError(ValueError):
    pass


def parse_scenario(text: str, name: str = "<scenario>") -> list[tuple[list[str], Optional[str]]]:
    """[(args, stdin or None)] for each command of a scenario file."""
    commands: list[tuple[list[str], Optional[str]]] = []
    stdin_lines: Optional[list[str]] = None

    def close_stdin() -> None:
        nonlocal stdin_lines
        if stdin_lines is not None:
            args, _ = commands[-1]
            commands[-1] = (args, "".join(line + "\n" for line in stdin_lines))
            stdin_lines = None

    for number, raw in enumerate(text.splitlines(), 1):
        if raw.startswith("<"):
            if not commands:
                raise ScenarioError(f"{name}:{number}: stdin line before any command")
            if raw != "<" and not raw.startswith("< "):
                raise ScenarioError(f"{name}:{number}: stdin lines start with '< '")
            if stdin_lines is None:
                stdin_lines = []
            stdin_lines.append(raw[2:])
            continue
        close_stdin()
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            args = shlex.split(line)
        except ValueError as exc:
            raise ScenarioError(f"{name}:{number}: {exc}") from None
        if args[:1] == ["ipvsadm"]:
            args = args[1:]  # "ipvsadm" alone: no arguments at all
        commands.append((args, None))
    close_stdin()
    return commands


def load_scenarios(names: Optional[list[str]] = None) -> dict[str, list]:
    available = sorted(f[:-4] for f in os.listdir(SCENARIO_DIR) if f.endswith(".txt"))
    chosen = names or available
    unknown = [n for n in chosen if n not in available]
    if unknown:
        raise ScenarioError(f"no such scenario: {', '.join(unknown)}")
    scenarios = {}
    for name in chosen:
        with open(os.path.join(SCENARIO_DIR, name + ".txt")) as f:
            scenarios[name] = parse_scenario(f.read(), name)
    return scenarios


# ---------------------------------------------------------------------------------------------
# Inside the guest


def _run_ipvsadm(args: list[str], stdin: Optional[str]) -> dict:
    try:
        proc = subprocess.run([IPVSADM, *args], input=stdin if stdin is not None else "",
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                              errors="surrogateescape")
        return {"args": args, "stdin": stdin, "stdout": proc.stdout, "stderr": proc.stderr,
                "rc": proc.returncode}
    except subprocess.TimeoutExpired:
        raise SystemExit(f"ipvsadm {shlex.join(args)} did not finish in {COMMAND_TIMEOUT} s")


def capture_in_guest(names: Optional[list[str]]) -> dict:
    """Replay the scenarios against this (guest) kernel; returns {"meta": ..., "refs": {name: [...]}}."""
    scenarios = load_scenarios(names)
    version = subprocess.run([IPVSADM, "--version"], capture_output=True, text=True)
    meta = {"ipvsadm_version": version.stdout, "ipvsadm_version_stderr": version.stderr,
            "ipvsadm_version_rc": version.returncode, "kernel": os.uname().release,
            "reset_before_each_scenario": [[IPVSADM, *args] for args in RESET_COMMANDS]}
    refs = {}
    for name, commands in scenarios.items():
        for args in RESET_COMMANDS:
            _run_ipvsadm(args, None)
        refs[name] = [_run_ipvsadm(args, stdin) for args, stdin in commands]
    return {"meta": meta, "refs": refs}


# ---------------------------------------------------------------------------------------------
# On the host


def _load_ipvs_vm():
    spec = importlib.util.spec_from_file_location("lvsuser_tools_ipvs_vm",
                                                  os.path.join(REPO, "tools", "ipvs_vm.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def capture(names: Optional[list[str]] = None, timeout: float = 600) -> dict:
    """Boot the guest once and return capture_in_guest's result."""
    load_scenarios(names)  # fail on the host, before booting, if a scenario is malformed
    ipvs_vm = _load_ipvs_vm()
    script = (f"cd {shlex.quote(REPO)} && exec python3 tools/capture_ipvsadm_refs.py --in-guest "
              + " ".join(shlex.quote(n) for n in names or []))
    result = ipvs_vm.run_in_guest(script, timeout=timeout)
    if result.rc != 0:
        raise SystemExit(f"capture failed in the guest (exit {result.rc}):\n{result.stderr}")
    return json.loads(result.stdout)


def write_refs(captured: dict) -> list[str]:
    os.makedirs(REFS_DIR, exist_ok=True)
    written = []
    for name, records in captured["refs"].items():
        path = os.path.join(REFS_DIR, name + ".json")
        with open(path, "w") as f:
            json.dump(records, f, indent=1, ensure_ascii=False)
            f.write("\n")
        written.append(path)
    with open(os.path.join(REFS_DIR, "_meta.json"), "w") as f:
        json.dump(captured["meta"], f, indent=1)
        f.write("\n")
    return written


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenarios", nargs="*", help="scenario names (default: all)")
    parser.add_argument("--in-guest", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=600, help="guest time limit in seconds")
    args = parser.parse_args(argv)
    try:
        if args.in_guest:
            json.dump(capture_in_guest(args.scenarios or None), sys.stdout)
            return 0
        captured = capture(args.scenarios or None, timeout=args.timeout)
    except ScenarioError as exc:
        print(f"capture_ipvsadm_refs: {exc}", file=sys.stderr)
        return 2
    for path in write_refs(captured):
        print(os.path.relpath(path, REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
