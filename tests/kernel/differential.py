"""Comparing a scenario run on two sides (real ipvsadm on kernel IPVS vs lvsuser): the first
divergent command, named, or None.

The results come from tests/kernel/guest_differential.py.  lvsuser's deliberate differences from
ipvsadm (all-or-nothing -R, twos, no sync daemon) are the ones tests/unit/test_ipvsadm_refs.py
documents; we reuse its table so both suites agree on what counts as a difference.
"""
from __future__ import annotations

import os
import shlex

from tests.kernel.conftest import REPO

SCENARIO_DIR = os.path.join(REPO, "tests", "data", "ipvsadm", "scenarios")
SNAPSHOT_NAMES = ["-Sn", "-Ln", "-Ln --thresholds", "-Ln --persistent-conn", "-Ln --tun-info",
                  "-L --timeout"]


def scenario_names() -> list[str]:
    return sorted(f[:-4] for f in os.listdir(SCENARIO_DIR) if f.endswith(".txt"))


def _known_differences():
    """(scenario -> [Difference]) and the sync-daemon rule of the unit replay test, if present."""
    from tests.unit import test_ipvsadm_refs as refs_test

    return (getattr(refs_test, "KNOWN_DIFFERENCES", {}),
            getattr(refs_test, "_daemon_difference", None))


def _show(result) -> str:
    out, err, rc = result
    return f"rc={rc} stdout={out!r} stderr={err!r}"


def first_output_divergence(name: str, scenario: dict):
    """'[index] ipvsadm ARGS: ...' for the first command whose output differs, else None.

    Same walk as tests/unit/test_ipvsadm_refs.py: a known difference is matched by (args, stdin),
    checked with its own rule, and may carry a rule for the listing right after it."""
    known, daemon_difference = _known_differences()
    differences = list(known.get(name, []))
    then_check = None
    twos_accepted = False
    for index, ((args, stdin), theirs, ours) in enumerate(
            zip(scenario["commands"], scenario["kernel"], scenario["lvsuser"])):
        command = shlex.join(["ipvsadm", *args])
        ref = {"args": args, "stdin": stdin, "stdout": theirs[0], "stderr": theirs[1],
               "rc": theirs[2]}
        if twos_accepted:
            ours = [_without_twos(ours[0])] + list(ours[1:])
        ours_t = tuple(ours)
        same = list(ours) == list(theirs)
        if _is_twos_refusal(args, theirs) and list(ours) == ["", "", 0]:
            # Deliberate: ip_vs_twos arrived in Linux 6.2, the oracle runs 6.1; lvsuser has it.
            # Later listings are compared without the twos service.
            twos_accepted = True
            continue
        if then_check is not None:
            check, then_check = then_check, None
            if not (same or check(ours_t, ref)):
                return f"[{index}] {command} (after a known difference): lvsuser {_show(ours)}"
            continue
        if any(a in args for a in ("--start-daemon", "--stop-daemon", "--daemon")):
            # lvsuser may pass sync-daemon commands to the kernel (then they match) or refuse them
            # as the unit replay documents.
            if not same and not (daemon_difference and daemon_difference(ours_t, ref)):
                return f"[{index}] {command}: lvsuser {_show(ours)}; ipvsadm {_show(theirs)}"
            continue
        difference = next((d for d in differences
                           if d.args == args and d.stdin == stdin), None)
        if difference is not None:
            differences.remove(difference)
            if not difference.check(ours_t, ref):
                return (f"[{index}] {command} (a known difference: {difference.why}) changed: "
                        f"{_show(ours)}")
            then_check = difference.then
            continue
        if not same:
            return f"[{index}] {command}: lvsuser {_show(ours)}; ipvsadm {_show(theirs)}"
    return None


def _is_twos_refusal(args, theirs) -> bool:
    return ("twos" in args and theirs[2] != 0
            and theirs[1] == "Scheduler or persistence engine not found\n")


def _without_twos(listing: str) -> str:
    return "".join(line for line in listing.splitlines(keepends=True)
                   if not (line.rstrip("\n").endswith(" twos") or " -s twos" in line))


def first_table_divergence(scenario: dict):
    """How the kernel tables left by the two sides first differ (as real ipvsadm lists them)."""
    if scenario.get("lvsuser_table") is None:
        return None
    for label, theirs, ours in zip(SNAPSHOT_NAMES, scenario["kernel_table"],
                                   scenario["lvsuser_table"]):
        if list(ours) != list(theirs):
            return (f"after the scenario, real `ipvsadm {label}` differs:\n"
                    f"--- as ipvsadm left it\n{theirs[0]}{theirs[1]}\n"
                    f"--- as lvsuser left it\n{ours[0]}{ours[1]}")
    return None
