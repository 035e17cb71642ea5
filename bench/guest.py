"""Kernel IPVS against lvsuser, both measured inside one QEMU guest run.

Theory of operation
-------------------
This host's kernel has no ip_vs, so kernel IPVS only runs inside the oracle's guest
(tools/ipvs_vm.py, Debian's stock kernel under TCG emulation). TCG is many times slower than the
host, so a number from the guest means nothing next to a host number; only ratios between
candidates measured in the same guest run do. The guest therefore runs this same benchmark
(`python3 -m bench --inside-guest`, the host's root is shared read-only) with kernel IPVS in NAT,
DR and TUN mode (driven by the real ipvsadm) and lvsuser in the same modes, alternating as on the
host, and prints its JSON report between two marker lines, which we parse here. Guest candidates
are named `guest-...` and flagged `guest: true`, so the report only ever compares them with each
other (kernel IPVS NAT is the guest's baseline).
"""
from __future__ import annotations

import json
import os
import sys

BEGIN = "----- bench guest report begin -----"
END = "----- bench guest report end -----"
GUEST_BASELINES = ["guest-ipvs-nat", "guest-forward"]
GUEST_TIMEOUT = 1500  # seconds; TCG boots in seconds, but every process start there takes seconds
# TCG runs everything many times slower; fewer, shorter rounds and only the packet and connection
# rates keep the guest run bounded (a latency under emulation says little even as a ratio).
GUEST_MAX_ROUNDS = 2
GUEST_MAX_SECONDS = 1.0
GUEST_METRICS = ("udp_flows_pps", "tcp_conn_per_s")


def _unavailable(reason: str) -> dict:
    names = [("guest-forward", "guest: kernel forwarding (ceiling)", True),
             ("guest-ipvs-nat", "guest: kernel IPVS NAT", True),
             ("guest-ipvs-dr", "guest: kernel IPVS DR", False),
             ("guest-ipvs-tun", "guest: kernel IPVS TUN", False),
             ("guest-lvsuser-nat-afpacket", "guest: lvsuser NAT --io afpacket", False),
             ("guest-lvsuser-dr-afpacket", "guest: lvsuser DR --io afpacket", False),
             ("guest-lvsuser-tun-afpacket", "guest: lvsuser TUN --io afpacket", False)]
    return {
        "candidates": {name: {"name": name, "label": label, "baseline": baseline,
                              "available": False, "reason": reason, "runs": {}, "details": {},
                              "errors": [], "medians": {}, "guest": True}
                       for name, label, baseline in names},
        "baselines": [], "meta": {"available": False, "reason": reason},
    }


def _guest_script(settings) -> str:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    metrics = ",".join(m for m in settings.metrics if m in GUEST_METRICS) or GUEST_METRICS[0]
    rounds = min(settings.rounds, GUEST_MAX_ROUNDS)
    seconds = min(settings.seconds, GUEST_MAX_SECONDS)
    return (f"cd {repo} && {sys.executable} -m bench --inside-guest "
            f"--rounds {rounds} --seconds {seconds} --metrics {metrics}")


def run(settings, workdir: str) -> dict:
    """Run the guest part; returns {'candidates': ..., 'baselines': [...], 'meta': ...}."""
    try:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from tools import ipvs_vm  # the kernel oracle's runner
    except ImportError as exc:
        return _unavailable(f"tools/ipvs_vm.py not importable ({exc})")
    runner = getattr(ipvs_vm, "run_in_guest", None)
    if runner is None:
        return _unavailable("tools/ipvs_vm.py has no run_in_guest(script, timeout)")
    try:
        outcome = runner(_guest_script(settings), GUEST_TIMEOUT)
    except Exception as exc:  # the guest not booting is a result to report, not a crash
        first_line = (str(exc).splitlines() or [""])[0]
        return _unavailable(f"guest run failed: {exc.__class__.__name__}: {first_line}")
    output = _output_text(outcome)
    if BEGIN not in output or END not in output:
        stderr = getattr(outcome, "stderr", "") or ""
        output += "\n" + stderr
        tail = " | ".join(output.strip().splitlines()[-3:])[-300:]
        return _unavailable(f"guest printed no report: {tail or 'no output'}")
    data = json.loads(output.split(BEGIN, 1)[1].split(END, 1)[0])
    for cand in data["candidates"].values():
        cand["guest"] = True
    return {"candidates": data["candidates"], "baselines": GUEST_BASELINES,
            "meta": {"available": True, "kernel": data["meta"].get("kernel"),
                     "note": "TCG emulation: compare guest numbers only with each other"}}


def _output_text(outcome) -> str:
    """run_in_guest's answer as text, whether it returns a string, a tuple or an object."""
    if isinstance(outcome, str):
        return outcome
    if isinstance(outcome, bytes):
        return outcome.decode(errors="replace")
    if isinstance(outcome, tuple):
        return "\n".join(_output_text(part) for part in outcome if isinstance(part, (str, bytes)))
    for attr in ("output", "stdout"):
        value = getattr(outcome, attr, None)
        if isinstance(value, (str, bytes)):
            return _output_text(value)
    return str(outcome)
