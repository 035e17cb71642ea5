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
    bound = ("the director process is the bottleneck" if busy > 0.85 else
             "the director process is not saturated, so the limit is outside it "
             "(generator, veth, or the kernel's ring/softirq work)")
    summary = (f"lvsuser used {busy:.0%} of one CPU while delivering {run.delivered_pps:,.0f} "
               f"of {run.offered_pps:,.0f} offered packets/s; {bound}. Samples: "
               + ", ".join(f"{k} {v}%" for k, v in shares.items()) + ".")
    return {"summary": summary, "top": top, "busy": round(busy, 3), "shares": shares,
            "delivered_pps": run.delivered_pps, "offered_pps": run.offered_pps}
