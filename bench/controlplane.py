"""`python3 -m bench.controlplane`: what a rule change and a listing cost, and what they do to traffic.

Theory of operation
-------------------
Health checkers and scripts change rules all day, so a change must be cheap for the one who makes
it and invisible to the traffic already flowing.  In the benchmark's namespaces (bench/topology.py)
one `lvsuser run` director serves two NAT services: the bulk service VIP:9000, filled with UDP
connections by trafgen's random-source generator, and a probe service VIP2:9001, through which a
paced sender streams 5,000 datagrams/s to a receiver on rs2 that records every arrival.  The
longest gap between two arrivals is what a rule change or a listing did to the datapath (the
director's core lock, the GIL, the CPU they share), compared with the gap of the same stream when
nothing happens.

Measured, alternating with their baselines in the same run (absolute times are noisy here):

- `cli`: one `lvsuser ipvsadm -e` (weight 1 <-> 2 on a bulk real server), process start to exit,
  against `python3 -c pass`: medians of N runs, at 1,000 and at 2 million connections;
- `gap`: the probe's longest gap with 1,000 connections and no edits (the baseline), during 20 edits
  of the bulk service with 1,000 and with 2 million connections, and during `ipvsadm -Lnc` of
  4 million connections (which must complete: its rows are counted).

Targets (issue 16): cli <= 2.5x python; cli at 2M <= 1.5x cli at 1k; gap during edits at 2M <= 2x
the baseline; gap during the 4M listing <= 2x the baseline.  They are reported met or missed,
never asserted.  Everything the run creates goes with it (namespaces, processes, files).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench import traffic
from bench.topology import UDP_PORT, VIP, BenchTopology

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PROBE_VIP = "198.18.100.2"
PROBE_PORT = 9001
PROBE_PPS = 5000
PROBE_LIMIT_S = 900.0
DIRECTOR_CPU = "1"
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p))

# Receives the probe stream for SECONDS; prints the arrival count, the longest gap and when it was.
RECEIVER = r"""
import json, socket, sys, time
addr, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((addr, port))
s.settimeout(0.5)
print("ready", flush=True)
end = time.monotonic() + seconds
last = None
gap = 0.0
count = 0
# ends at SECONDS, or once the stream has stopped for IDLE seconds (the sender is done)
IDLE = 5.0
while time.monotonic() < end and not (last is not None and time.monotonic() - last > IDLE):
    try:
        s.recv(64)
    except socket.timeout:
        continue
    now = time.monotonic()
    if last is not None and now - last > gap:
        gap = now - last
    last = now
    count += 1
print(json.dumps({"count": count, "max_gap_ms": gap * 1000.0}), flush=True)
"""

# Sends PPS datagrams/s for at most SECONDS until SIGTERM, paced in 1 ms ticks (what is due is
# sent, then it sleeps to the next tick: a busy-wait would take a whole core from the director);
# prints how many it sent.
SENDER = r"""
import signal, socket, sys, time
addr, port, pps, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((addr, port))
start = time.monotonic()
total = int(pps * seconds)
sent = 0
while sent < total and not stop:
    now = time.monotonic()
    due = min(total, int((now - start) * pps) + 1)
    while sent < due:
        try:
            s.send(sent.to_bytes(8, "big"))
        except OSError:
            pass
        sent += 1
    time.sleep(0.001)
print(sent, flush=True)
"""


def log(message: str) -> None:
    print(f"[controlplane] {message}", file=sys.stderr, flush=True)


def lvsuser_command() -> list[str]:
    """The `lvsuser` an operator types: the console script installed beside this Python (not a
    version manager's shim, which would add its own start-up), else this checkout's module."""
    beside = os.path.join(os.path.dirname(sys.executable), "lvsuser")
    found = beside if os.access(beside, os.X_OK) else shutil.which("lvsuser")
    return [found] if found else [sys.executable, "-m", "lvsuser"]


class Director:
    def __init__(self, topo: BenchTopology, workdir: str, max_conns: int):
        self.topo = topo
        self.sock = os.path.join(workdir, "control.sock")
        self.env = dict(ENV, LVSUSER_CONTROL=self.sock)
        argv = ["taskset", "-c", DIRECTOR_CPU, sys.executable, "-m", "lvsuser", "run",
                "--control", self.sock, "--max-conns", str(max_conns)]
        help_text = subprocess.run([sys.executable, "-m", "lvsuser", "run", "--help"],
                                   capture_output=True, text=True, env=ENV, timeout=30).stdout
        if "--state-dir" in help_text:   # keep the run's state inside the work directory
            argv += ["--state-dir", os.path.join(workdir, "state"), "--clean"]
        self.log_path = os.path.join(workdir, "director.log")
        with open(self.log_path, "w") as out:
            self.proc = topo.popen(topo.director, argv, stdout=out, stderr=subprocess.STDOUT,
                                   env=ENV)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lvsuser run did not start: {self.tail()}")
            time.sleep(0.1)

    def tail(self) -> str:
        with open(self.log_path) as f:
            return f.read()[-2000:]

    def ipvsadm(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        result = subprocess.run(lvsuser_command() + ["ipvsadm", *args], env=self.env,
                                capture_output=True, text=True, timeout=kwargs.pop("timeout", 60),
                                **kwargs)
        if result.returncode != 0:
            raise RuntimeError(f"ipvsadm {' '.join(args)}: {result.stderr.strip()}")
        return result

    def connections(self) -> int:
        """Connections in the table: ActiveConn + InActConn of every real server."""
        total = 0
        for line in self.ipvsadm("-Ln").stdout.splitlines():
            words = line.split()
            if words and words[0] == "->" and words[-1].isdigit() and words[-2].isdigit():
                total += int(words[-1]) + int(words[-2])
        return total

    def stop(self) -> None:
        self.topo.stop(self.proc)


def configure(director: Director, topo: BenchTopology) -> None:
    rs1, rs2 = topo.real_servers
    # UDP connections live an hour: a table filled for minutes must not expire under a listing
    director.ipvsadm("--set", "0", "0", "3600")
    director.ipvsadm("-A", "-u", f"{VIP}:{UDP_PORT}", "-s", "rr")
    for rs in (rs1, rs2):
        director.ipvsadm("-a", "-u", f"{VIP}:{UDP_PORT}", "-r", f"{rs.addr}:{UDP_PORT}", "-m")
    director.ipvsadm("-A", "-u", f"{PROBE_VIP}:{PROBE_PORT}", "-s", "rr")
    director.ipvsadm("-a", "-u", f"{PROBE_VIP}:{PROBE_PORT}", "-r", f"{rs2.addr}:{PROBE_PORT}", "-m")


def fill(director: Director, topo: BenchTopology, target: int, workdir: str,
         limit_s: float = 300.0) -> int:
    """New UDP flows to the bulk VIP until the table holds TARGET connections (or LIMIT_S)."""
    have = director.connections()
    if have >= target:
        return have
    conf = os.path.join(workdir, "trafgen-fill.cfg")
    with open(conf, "w") as f:
        f.write(traffic.trafgen_config("newflows", (VIP, VIP), topo.director_mac,
                                       topo.mac(topo.client, "eth0")))
    argv = ["taskset", "-c", "0", traffic.require("trafgen"), "--dev", "eth0", "--conf", conf,
            "--cpus", "1", "--num", str(int((target - have) * 4)), "--rate", "250000pps",
            "--no-sock-mem", "--notouch-irq", "--no-cpu-stats"]
    proc = topo.popen(topo.client, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                      text=True, cwd=workdir)
    started = time.monotonic()
    try:
        while time.monotonic() - started < limit_s:
            time.sleep(2.0)
            have = director.connections()
            log(f"fill: {have:,} connections after {time.monotonic() - started:.0f} s")
            if have >= target or proc.poll() is not None:
                break
    finally:
        traffic._interrupt(proc)
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            topo.stop(proc)
    time.sleep(0.5)
    return director.connections()


def timed(argv: list[str], env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, timeout=60)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return elapsed


def cli_cost(director: Director, topo: BenchTopology, runs: int) -> dict:
    """Medians of `python3 -c pass` and of one `lvsuser ipvsadm -e`, alternating."""
    rs1 = topo.real_servers[0]
    python, edit = [], []
    for i in range(runs):
        python.append(timed([sys.executable, "-c", "pass"], director.env))
        edit.append(timed(lvsuser_command() + [
            "ipvsadm", "-e", "-u", f"{VIP}:{UDP_PORT}", "-r", f"{rs1.addr}:{UDP_PORT}", "-m",
            "-w", str(1 + (i % 2))], director.env))
    return {"python_ms": statistics.median(python) * 1e3,
            "ipvsadm_e_ms": statistics.median(edit) * 1e3, "runs": runs}


def probe(topo: BenchTopology, seconds: float, during=None) -> dict:
    """The probe stream: SECONDS of it, or, with DURING, from a second before DURING() starts
    until a second after it returns (at most PROBE_LIMIT_S); its longest gap."""
    rs2 = topo.real_servers[1]
    limit = seconds if during is None else PROBE_LIMIT_S
    receiver = topo.popen(rs2.ns, [sys.executable, "-c", RECEIVER, rs2.addr, str(PROBE_PORT),
                                   str(limit + 10.0)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sender = None
    extra = {}
    try:
        if receiver.stdout.readline().strip() != "ready":
            raise RuntimeError(f"probe receiver: {receiver.stderr.read()}")
        sender = topo.popen(topo.client, [sys.executable, "-c", SENDER, PROBE_VIP,
                                          str(PROBE_PORT), str(PROBE_PPS), str(limit)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if during is not None:
            time.sleep(1.0)
            extra = during() or {}
            time.sleep(1.0)
            sender.terminate()
        sent, _ = sender.communicate(timeout=limit + 30)
        out, _ = receiver.communicate(timeout=limit + 30)
    finally:
        for proc in (sender, receiver):
            if proc is not None and proc.poll() is None:
                topo.stop(proc)
    result = json.loads(out.strip().splitlines()[-1])
    result["sent"] = int(sent.strip() or 0)
    result.update(extra)
    return result


def edits(director: Director, topo: BenchTopology, count: int) -> dict:
    rs1 = topo.real_servers[0]
    times = []
    for i in range(count):
        times.append(timed(lvsuser_command() + [
            "ipvsadm", "-e", "-u", f"{VIP}:{UDP_PORT}", "-r", f"{rs1.addr}:{UDP_PORT}", "-m",
            "-w", str(2 - (i % 2))], director.env))
        time.sleep(0.1)
    return {"edits": count, "edit_median_ms": statistics.median(times) * 1e3}


def listing(director: Director) -> dict:
    started = time.perf_counter()
    proc = subprocess.run(lvsuser_command() + ["ipvsadm", "-Lnc"], env=director.env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=900)
    elapsed = time.perf_counter() - started
    rows = proc.stdout.count(b"\n") - 2 if proc.returncode == 0 else 0
    return {"list_rc": proc.returncode, "list_rows": rows, "list_seconds": elapsed,
            "list_error": proc.stderr.decode(errors="replace").strip()[-300:]}


def run(args) -> dict:
    workdir = tempfile.mkdtemp(prefix="lvsctl-")
    out: dict = {"meta": {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
        "commit": subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip(),
        "command": "python3 -m bench.controlplane " + " ".join(args.argv)}}
    try:
        with BenchTopology("lvsc") as topo:
            director = Director(topo, workdir, max(args.list_conns, args.conns, args.huge) * 5 // 4)
            try:
                configure(director, topo)
                out["conns_small"] = fill(director, topo, 1000, workdir)
                log("cli cost at 1,000 connections")
                out["cli_small"] = cli_cost(director, topo, args.cli_runs)
                log("probe, no edits (baseline)")
                out["gap_baseline"] = probe(topo, args.probe_seconds)
                log("probe during edits, 1,000 connections")
                out["gap_edits_small"] = probe(topo, 0, lambda: edits(director, topo, args.edits))
                out["conns_big"] = fill(director, topo, args.conns, workdir)
                log(f"cli cost at {out['conns_big']:,} connections")
                out["cli_big"] = cli_cost(director, topo, args.cli_runs)
                log("probe during edits, big table")
                out["gap_edits_big"] = probe(topo, 0, lambda: edits(director, topo, args.edits))
                out["conns_list"] = fill(director, topo, args.list_conns, workdir)
                log(f"probe during -Lnc of {out['conns_list']:,} connections")
                out["gap_list"] = probe(topo, 0, lambda: listing(director))
                if args.huge:
                    out["conns_huge"] = fill(director, topo, args.huge, workdir)
                    log(f"-Lnc of {out['conns_huge']:,} connections")
                    out["huge_list"] = listing(director)
                out["director_log_tail"] = director.tail()[-1500:]
            finally:
                director.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def verdicts(r: dict) -> list[tuple[str, str, float, float]]:
    """(target, value text, ratio, bound) for the report."""
    base = r["gap_baseline"]["max_gap_ms"]
    return [
        ("one `ipvsadm -e` vs `python3 -c pass` (1k conns)",
         f"{r['cli_small']['ipvsadm_e_ms']:.1f} / {r['cli_small']['python_ms']:.1f} ms",
         r["cli_small"]["ipvsadm_e_ms"] / r["cli_small"]["python_ms"], 2.5),
        (f"`ipvsadm -e` at {r['conns_big']:,} vs 1k conns",
         f"{r['cli_big']['ipvsadm_e_ms']:.1f} / {r['cli_small']['ipvsadm_e_ms']:.1f} ms",
         r["cli_big"]["ipvsadm_e_ms"] / r["cli_small"]["ipvsadm_e_ms"], 1.5),
        (f"probe gap, 20 edits at {r['conns_big']:,} conns vs no edits at 1k",
         f"{r['gap_edits_big']['max_gap_ms']:.1f} / {base:.1f} ms",
         r["gap_edits_big"]["max_gap_ms"] / base, 2.0),
        (f"probe gap during -Lnc of {r['conns_list']:,} vs no edits at 1k",
         f"{r['gap_list']['max_gap_ms']:.1f} / {base:.1f} ms "
         f"({r['gap_list']['list_rows']:,} rows in {r['gap_list']['list_seconds']:.1f} s)",
         r["gap_list"]["max_gap_ms"] / base, 2.0),
    ]


def markdown(r: dict) -> str:
    lines = [f"# Control-plane benchmark ({r['meta']['date']}, commit {r['meta']['commit']}, "
             f"{r['meta']['cpus']} cores)", "", f"`{r['meta']['command']}`", "",
             "| target | measured | ratio | bound | |", "|---|---|---|---|---|"]
    for name, value, ratio, bound in verdicts(r):
        lines.append(f"| {name} | {value} | {ratio:.2f}x | <= {bound}x | "
                     f"{'met' if ratio <= bound else 'missed'} |")
    lines += ["", "Probe streams (5,000 datagrams/s through a second NAT VIP):", "",
              "| phase | received / sent | longest gap |", "|---|---|---|"]
    for key, label in (("gap_baseline", "1k conns, no edits"),
                       ("gap_edits_small", "1k conns, 20 edits"),
                       ("gap_edits_big", f"{r['conns_big']:,} conns, 20 edits"),
                       ("gap_list", f"{r['conns_list']:,} conns, -Lnc")):
        p = r[key]
        lines.append(f"| {label} | {p['count']:,} / {p['sent']:,} | {p['max_gap_ms']:.1f} ms |")
    if "huge_list" in r:
        h = r["huge_list"]
        lines += ["", f"`ipvsadm -Lnc` of {r['conns_huge']:,} connections: exit {h['list_rc']}, "
                      f"{h['list_rows']:,} rows in {h['list_seconds']:.1f} s."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python3 -m bench.controlplane", description=__doc__.split("\n")[0])
    parser.add_argument("--conns", type=int, default=2_000_000, help="the big table (default 2M)")
    parser.add_argument("--list-conns", type=int, default=4_000_000,
                        help="connections listed with -Lnc (default 4M)")
    parser.add_argument("--huge", type=int, default=0, metavar="N",
                        help="then fill to N connections and time one -Lnc of them (e.g. 10000000)")
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--cli-runs", type=int, default=21)
    parser.add_argument("--probe-seconds", type=float, default=4.0)
    parser.add_argument("--publish", action="store_true",
                        help="write bench/latest/controlplane.{md,json} (the committed copy)")
    args = parser.parse_args(argv)
    args.argv = argv
    if os.geteuid() != 0:
        print("python3 -m bench.controlplane: needs root (it builds network namespaces)",
              file=sys.stderr)
        return 2
    result = run(args)
    text = markdown(result)
    print(text)
    out_dir = os.path.join(HERE, "results")
    os.makedirs(out_dir, exist_ok=True)
    targets = [out_dir] + ([os.path.join(HERE, "latest")] if args.publish else [])
    for where in targets:
        with open(os.path.join(where, "controlplane.json"), "w") as f:
            json.dump(result, f, indent=1)
        with open(os.path.join(where, "controlplane.md"), "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
