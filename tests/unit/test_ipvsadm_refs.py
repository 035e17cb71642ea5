"""Replay every captured scenario against a fresh in-memory table and compare with real ipvsadm.

tests/data/ipvsadm/scenarios/NAME.txt holds the commands; tests/data/ipvsadm/refs/NAME.json what
ipvsadm 1.31 printed for each of them on kernel IPVS (tools/capture_ipvsadm_refs.py).  The table
is given the reference kernel's scheduler set (refs/_meta.json names the kernel).  For every
command, stdout, stderr and the exit status must be identical byte for byte, except for the few
places listed in KNOWN_DIFFERENCES, where lvsuser differs on purpose; those are checked to show
lvsuser's own behaviour instead, so they cannot drift silently either.
"""
import dataclasses
import io
import json
import pathlib
import shlex

import pytest

from lvsuser.backends.table import TableBackend
from lvsuser.control import ipvsadm
from lvsuser.control.ipvsadm.command import parse_command
from lvsuser.control.ipvsadm.constants import PROGRAM
from lvsuser.control.ipvsadm.errors import IpvsadmExit
from lvsuser.control.ipvsadm.resolver import Resolver
from lvsuser.control.client import RemoteBackend
from lvsuser.control.server import ControlServer

DATA = pathlib.Path(__file__).resolve().parents[1] / "data" / "ipvsadm"
SCENARIOS = sorted(p.stem for p in (DATA / "refs").glob("*.json") if not p.stem.startswith("_"))

SYNC_UNSUPPORTED = "Connection sync daemon is not supported by lvsuser yet\n"


class ReferenceHostResolver(Resolver):
    """The reference guest knew only localhost; never ask DNS from a test."""

    HOSTS = {"localhost": b"\x7f\x00\x00\x01"}

    def host_to_addr(self, name):
        return self.HOSTS.get(name)

    def addr_to_host(self, af, packed):
        for name, address in self.HOSTS.items():
            if address == packed:
                return name
        return None


def _daemon_difference(ours, ref):
    """Connection sync is not implemented: start/stop are refused, the daemon list is empty."""
    args = ref["args"]
    try:
        parse_command([PROGRAM] + args, ReferenceHostResolver())
    except IpvsadmExit:  # refused before asking IPVS: that part must match exactly
        return ours == (ref["stdout"], ref["stderr"], ref["rc"])
    if "--start-daemon" in args or "--stop-daemon" in args:
        return ours == ("", SYNC_UNSUPPORTED, 255)
    return ours == ("", "", 0)  # -L --daemon lists nothing


def _refused_rules_note(line):
    return f"ipvsadm: line {line} of the rules was refused; no rule was applied\n"


def _rules_refused(line, code=None):
    """-R printed ipvsadm's message, named the line, and kept the ref's exit status (or code)."""
    def check(ours, ref):
        out, err, rc = ours
        expected_rc = ref["rc"] if code is None else code
        return rc == expected_rc and err.endswith(_refused_rules_note(line)) and (
            code is not None or err == ref["stderr"] + _refused_rules_note(line))
    return check


def _exactly(out, err="", rc=0):
    return lambda ours, ref: ours == (out, err, rc)


@dataclasses.dataclass
class Difference:
    """Where lvsuser differs on purpose: the command (args and stdin), why, how lvsuser answers
    instead, and optionally how the command right after it (a listing) answers instead."""

    args: list
    stdin: object
    why: str
    check: object
    then: object = None


KNOWN_DIFFERENCES = {
    "save_restore": [
        Difference(["-R"], "-A -t 198.18.0.5:80 -s rr\n-a -t 198.18.0.5:80 -r 198.18.1.1:80 -m\n"
                           "-A -t 198.18.0.6:80 -s nosuch\n-A -t 198.18.0.7:80 -s rr\n",
                   "-R is all-or-nothing: the refused line 3 leaves the table unchanged",
                   _rules_refused(3, code=255), then=_exactly("")),
        Difference(["--restore"], "# a comment\n\n-A -t 198.18.0.8:80 -s rr\n"
                                  "-a -t 198.18.0.8:80 -r 198.18.1.1:80 -m\n",
                   "rules may carry # comments (ipvsadm refuses them)", _exactly(""),
                   then=_exactly("-A -t 198.18.0.8:80 -s rr\n"
                                 "-a -t 198.18.0.8:80 -r 198.18.1.1:80 -m -w 1\n")),
        Difference(["-R"], "-L -n\n", "only table-changing commands are allowed in -R input",
                   _rules_refused(1, code=2)),
        Difference(["-R"], "garbage\n", "the refusal also names the line", _rules_refused(1)),
    ],
}


def _scenario_commands(name):
    """The scenario file as (args, stdin) pairs, the way the capture script reads it."""
    commands = []
    for line in (DATA / "scenarios" / f"{name}.txt").read_text().splitlines():
        if line.startswith("< ") or line == "<":
            args, stdin = commands[-1]
            commands[-1] = (args, (stdin or "") + line[2:] + "\n")
        elif line.strip() and not line.lstrip().startswith("#"):
            args = shlex.split(line)
            commands.append((args[1:] if args[:1] == ["ipvsadm"] else args, None))
    return commands


class ReferenceKernelTable(TableBackend):
    """The table as the reference kernel has it: ip_vs_twos arrived in Linux 6.2, so a 6.1
    oracle refuses `-s twos`, which lvsuser (and newer kernels) accept."""

    def __init__(self, kernel_release: str):
        super().__init__()
        major, minor = (int(part) for part in kernel_release.split(".")[:2])
        self.has_twos = (major, minor) >= (6, 2)

    def scheduler_known(self, name):
        if name == "twos" and not self.has_twos:
            return False
        return super().scheduler_known(name)


def _reference_kernel() -> str:
    meta = DATA / "refs" / "_meta.json"
    return json.loads(meta.read_text()).get("kernel", "6.2") if meta.exists() else "6.2"


def test_lvsuser_itself_offers_twos():
    assert TableBackend().scheduler_known("twos")
    assert run_one(["-A", "-t", "198.18.0.1:80", "-s", "twos"], TableBackend()) == ("", "", 0)


def run_one(args, backend):
    out, err = io.StringIO(), io.StringIO()
    rc = ipvsadm.main(args, backend, stdout=out, stderr=err, resolver=ReferenceHostResolver())
    return out.getvalue(), err.getvalue(), rc


def _replay(name, socket_dir=None):
    """Run the scenario on a fresh table: in-process, or through a control socket in socket_dir."""
    refs = json.loads((DATA / "refs" / f"{name}.json").read_text())
    table = ReferenceKernelTable(_reference_kernel())
    server = remote = None
    backend = table
    if socket_dir is not None:
        path = str(socket_dir / "control.sock")
        server = ControlServer(path, table).start()
        backend = remote = RemoteBackend(path, timeout=10)
    results = []
    try:
        for ref in refs:
            out, err = io.StringIO(), io.StringIO()
            rc = ipvsadm.main(ref["args"], backend, stdin=io.StringIO(ref["stdin"] or ""),
                              stdout=out, stderr=err, resolver=ReferenceHostResolver())
            results.append((out.getvalue(), err.getvalue(), rc))
    finally:
        if remote is not None:
            remote.close()
        if server is not None:
            server.stop()
    return refs, results


@pytest.mark.parametrize("name", SCENARIOS)
def test_refs_match_their_scenario(name):
    refs = json.loads((DATA / "refs" / f"{name}.json").read_text())
    captured = [(ref["args"], ref["stdin"]) for ref in refs]
    scenario = _scenario_commands(name)
    assert scenario[:len(captured)] == captured, f"refs/{name}.json does not follow its scenario"
    if len(scenario) > len(captured):
        pytest.skip(f"scenarios/{name}.txt has {len(scenario) - len(captured)} commands not yet "
                    "captured: regenerate with tools/capture_ipvsadm_refs.py")


@pytest.mark.parametrize("via_socket", [False, True], ids=["in-process", "control-socket"])
@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_matches_real_ipvsadm(name, via_socket, tmp_path):
    refs, results = _replay(name, tmp_path if via_socket else None)
    differences = list(KNOWN_DIFFERENCES.get(name, []))
    mismatches = []
    then_check = None
    for index, (ref, ours) in enumerate(zip(refs, results)):
        command = " ".join(ref["args"])
        if then_check is not None:
            check, then_check = then_check, None
            if not check(ours, ref):
                mismatches.append(f"[{index}] {command} (after a known difference): got {ours!r}")
            continue
        if name == "daemon" and any(a in ref["args"] for a in ("--start-daemon", "--stop-daemon",
                                                               "--daemon")):
            if not _daemon_difference(ours, ref):
                mismatches.append(f"[{index}] {command}: sync daemon refusal changed: {ours!r}")
            continue
        known = next((d for d in differences if d.args == ref["args"] and d.stdin == ref["stdin"]),
                     None)
        if known is not None:
            differences.remove(known)
            if not known.check(ours, ref):
                mismatches.append(f"[{index}] {command} ({known.why}): got {ours!r}")
            then_check = known.then
            continue
        expected = (ref["stdout"], ref["stderr"], ref["rc"])
        if ours != expected:
            mismatches.append(f"[{index}] {command}\n  ours: {ours!r}\n  ref:  {expected!r}")
    assert not differences, f"known differences not found in refs/{name}.json: {differences}"
    assert not mismatches, "\n".join(mismatches)


def test_every_scenario_is_replayed():
    assert len(SCENARIOS) >= 10
    assert {p.stem for p in (DATA / "scenarios").glob("*.txt")} <= set(SCENARIOS)
