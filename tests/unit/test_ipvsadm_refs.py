"""Replay every captured scenario against a fresh in-memory table and compare with real ipvsadm.

tests/data/ipvsadm/scenarios/NAME.txt holds the commands; tests/data/ipvsadm/refs/NAME.json what
ipvsadm 1.31 printed for each of them on kernel IPVS (tools/capture_ipvsadm_refs.py).  For every
command, stdout, stderr and the exit status must be identical byte for byte, except for the few
places listed in KNOWN_DIFFERENCES, where lvsuser differs on purpose; those are checked to show
lvsuser's own behaviour instead, so they cannot drift silently either.
"""
import io
import json
import pathlib
import shlex

import pytest

from lvsuser.backends.table import TableBackend
from lvsuser.control import ipvsadm

DATA = pathlib.Path(__file__).resolve().parents[1] / "data" / "ipvsadm"
SCENARIOS = sorted(p.stem for p in (DATA / "refs").glob("*.json") if not p.stem.startswith("_"))

SYNC_UNSUPPORTED = "Connection sync daemon is not supported by lvsuser yet\n"


class ReferenceHostResolver(ipvsadm.Resolver):
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
        ipvsadm.parse_command([ipvsadm.PROGRAM] + args, ReferenceHostResolver())
    except ipvsadm.IpvsadmExit:  # refused before asking IPVS: that part must match exactly
        return ours == (ref["stdout"], ref["stderr"], ref["rc"])
    if "--start-daemon" in args or "--stop-daemon" in args:
        return ours == ("", SYNC_UNSUPPORTED, 255)
    return ours == ("", "", 0)  # -L --daemon lists nothing


def _rules_refused_at(line):
    def check(ours, ref):
        out, err, rc = ours
        return f"ipvsadm: line {line} of the rules was refused; no rule was applied\n" in err
    return check


# (scenario, index in refs, the command there, why lvsuser differs, check of lvsuser's output)
KNOWN_DIFFERENCES = {
    ("save_restore", 22): ("-R", "-R is all-or-nothing: the bad line 3 leaves the table unchanged",
                           _rules_refused_at(3)),
    ("save_restore", 23): ("-Sn", "nothing of the refused -R was applied",
                           lambda ours, ref: ours == ("", "", 0)),
    ("save_restore", 25): ("--restore", "rules files may carry # comments",
                           lambda ours, ref: ours == ("", "", 0)),
    ("save_restore", 26): ("-Sn", "the commented rules file was applied",
                           lambda ours, ref: ours == ("-A -t 198.18.0.8:80 -s rr\n"
                                                      "-a -t 198.18.0.8:80 -r 198.18.1.1:80 -m -w 1\n",
                                                      "", 0)),
    ("save_restore", 28): ("-R", "only table-changing commands are allowed in -R input",
                           _rules_refused_at(1)),
    ("save_restore", 30): ("-R", "the refusal also names the line",
                           lambda ours, ref: ours[2] == ref["rc"] and ours[1].startswith(ref["stderr"])
                           and _rules_refused_at(1)(ours, ref)),
    ("schedulers", 13): ("-A -t 198.18.0.1:14 -s twos",
                         "the reference kernel (6.1) predates ip_vs_twos; lvsuser has it",
                         lambda ours, ref: ours == ("", "", 0)),
    ("schedulers", 17): ("-Ln", "the twos service is listed",
                         lambda ours, ref: ours[0] == ref["stdout"].replace(
                             "TCP  198.18.0.1:13 mh\n", "TCP  198.18.0.1:13 mh\nTCP  198.18.0.1:14 twos\n")),
    ("schedulers", 18): ("-Sn", "the twos service is saved",
                         lambda ours, ref: ours[0] == ref["stdout"].replace(
                             "-A -t 198.18.0.1:13 -s mh\n",
                             "-A -t 198.18.0.1:13 -s mh\n-A -t 198.18.0.1:14 -s twos\n")),
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


def _replay(name):
    refs = json.loads((DATA / "refs" / f"{name}.json").read_text())
    backend = TableBackend()
    results = []
    for ref in refs:
        out, err = io.StringIO(), io.StringIO()
        rc = ipvsadm.main(ref["args"], backend, stdin=io.StringIO(ref["stdin"] or ""),
                          stdout=out, stderr=err, resolver=ReferenceHostResolver())
        results.append((out.getvalue(), err.getvalue(), rc))
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


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_matches_real_ipvsadm(name):
    refs, results = _replay(name)
    mismatches = []
    for index, (ref, ours) in enumerate(zip(refs, results)):
        command = " ".join(ref["args"])
        if name == "daemon" and any(a in ref["args"] for a in ("--start-daemon", "--stop-daemon",
                                                               "--daemon")):
            if not _daemon_difference(ours, ref):
                mismatches.append(f"[{index}] {command}: sync daemon refusal changed: {ours!r}")
            continue
        known = KNOWN_DIFFERENCES.get((name, index))
        if known is not None:
            expected_command, why, check = known
            assert command == expected_command, f"refs changed at {name}[{index}]: update KNOWN_DIFFERENCES"
            if not check(ours, ref):
                mismatches.append(f"[{index}] {command} ({why}): got {ours!r}")
            continue
        expected = (ref["stdout"], ref["stderr"], ref["rc"])
        if ours != expected:
            mismatches.append(f"[{index}] {command}\n  ours: {ours!r}\n  ref:  {expected!r}")
    assert not mismatches, "\n".join(mismatches)


def test_every_scenario_is_replayed():
    assert len(SCENARIOS) >= 10
    assert {p.stem for p in (DATA / "scenarios").glob("*.txt")} <= set(SCENARIOS)
