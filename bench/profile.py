"""Where the director's cycles go: a perf profile of a running lvsuser during a packet-rate run.

When a target is missed the report has to say what limits it. Two facts answer most of that:
how busy the director process was (near 100% of a core: it is the bottleneck; far below: the
limit is elsewhere, the generator, veth or the kernel path), and where its samples fall
(the C fastpath, the Python interpreter, the kernel's socket/ring code). `perf record -e
cpu-clock` works without hardware counters, which this virtual machine does not expose.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

from bench import traffic
from bench.candidates import process_cpu_seconds


def _classify(report_text: str) -> dict[str, float]:
    """Share of samples per broad place, from `perf report --sort dso,symbol` lines."""
    shares = {"fastpath (C)": 0.0, "python interpreter": 0.0, "kernel": 0.0, "other": 0.0}
    for line in report_text.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]", line)
        if not match:
            continue
        share, dso, where = float(match.group(1)), match.group(2), match.group(3)
        if where == "k":
            shares["kernel"] += share
        elif "_fastpath" in dso:
            shares["fastpath (C)"] += share
        elif "python" in dso:
            shares["python interpreter"] += share
        else:
            shares["other"] += share
    return {k: round(v, 1) for k, v in shares.items()}


def diagnose(busy: float, delivered_pps: float, offered_pps: float) -> str:
    """One sentence on where the limit is, from the director's CPU share and its loss."""
    delivered_share = delivered_pps / offered_pps if offered_pps else 0.0
    if busy > 0.85:
        return "the director process is saturated: its own work is the limit"
    if delivered_share < 0.9:
        return (f"the director lost {1 - delivered_share:.0%} of the frames while its process was "
                "not saturated: frames are dropped before the process sees them (RX ring "
                "overruns while it sleeps: ring size, block-retire timer, wakeup latency)")
    return ("the director delivered what it was offered without saturating: the limit is the "
            "generator and veth path, not the director")


def summarize(busy: float, delivered_pps: float, offered_pps: float, shares: dict) -> str:
    return (f"lvsuser used {busy:.0%} of one CPU while delivering {delivered_pps:,.0f} of "
            f"{offered_pps:,.0f} offered packets/s; {diagnose(busy, delivered_pps, offered_pps)}. "
            "Samples: " + ", ".join(f"{k} {v}%" for k, v in shares.items()) + ".")


def profile_candidate(topo, candidate, settings, workdir: str) -> dict:
    """Start CANDIDATE, run one 1,000-flow UDP burst under perf, summarise, stop."""
    if not shutil.which("perf"):
        return {"summary": "perf not installed (apt linux-perf)", "top": ""}
    data = os.path.join(workdir, "perf.data")
    try:
        candidate.start(topo, workdir)
        pid = candidate.proc.pid
        cpu_before = process_cpu_seconds(pid)
        recorder = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "999",
                                     "-p", str(pid), "-o", data],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            run = traffic.packet_rate(topo, "flows", candidate.udp_targets(topo),
                                      settings.seconds, workdir)
        finally:
            recorder.send_signal(2)
            try:
                recorder.wait(timeout=20)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait()
        busy = (process_cpu_seconds(pid) - cpu_before) / run.seconds
    finally:
        candidate.stop(topo)
    result = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children",
                             "--sort", "dso,symbol"], capture_output=True, text=True, timeout=60)
    # perf appends empty sort columns ("-  -") to each line; keep share, dso and symbol.
    lines = [re.sub(r"(\s+-)+\s*$", "", line) for line in result.stdout.splitlines()
             if line.strip() and not line.startswith("#")]
    top = "\n".join(lines[:15])
    shares = _classify(result.stdout)
    summary = summarize(busy, run.delivered_pps, run.offered_pps, shares)
    return {"summary": summary, "top": top, "busy": round(busy, 3), "shares": shares,
            "delivered_pps": run.delivered_pps, "offered_pps": run.offered_pps}
