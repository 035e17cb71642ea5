"""Load generators and what they measure: trafgen for 64-byte UDP, nginx + wrk for TCP.

Packet rate: trafgen (netsniff-ng) sends from the client namespace through a TX ring with the
qdisc bypassed, pinned to one CPU, for a fixed time; delivered packets are read from the real
servers' nftables counters (see topology.py) before and after, so the rate is what got through,
not what was offered. Both are recorded: offered minus delivered is the director's loss.

trafgen is run with --no-sock-mem and --notouch-irq: without them it rewrites the host's
net.core socket-memory sysctls and IRQ affinities, which are not ours to change.

Frames are 60 bytes on the wire before the FCS, i.e. 64-byte Ethernet frames: 14 Ethernet + 20
IPv4 + 8 UDP + 18 payload. Two packet templates alternate, so the kernel-forwarding baseline can
address rs1 and rs2 directly while VIP candidates send both templates to the VIP:

- "flows": a bounded set of 1,000 flows (source ports counting up, 500 per template);
- "newflows": source address and port random per packet from 256 addresses x 65,536 ports, so
  nearly every packet opens a connection the director has not seen.

TCP: one nginx per real server (our own config, in a temporary directory, never the system
service), wrk in the client. Connection rate: `Connection: close`, so every request is a new TCP
connection; the server closes first and keeps the TIME_WAIT. Latency: one keep-alive connection
at a time, so the percentiles are a request's round trip rather than queueing.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

from bench.topology import CLIENT_ADDR, HTTP_PORT, NEW_FLOW_SOURCES, UDP_PORT, BenchTopology

FLOWS = 1000
NEW_FLOW_SOURCE_COUNT = 256
UDP_PAYLOAD = 18  # 14 + 20 + 8 + 18 = 60 bytes, 64 with the FCS
GENERATOR_CPU = "0"
MAX_PPS_BOUND = 5_000_000  # a packet-count cap per second of run, in case SIGINT is missed
WARMUP_SECONDS = 0.5


class ToolMissing(RuntimeError):
    """A load generator or server binary is not installed; str() names it and the fix."""


def require(binary: str) -> str:
    path = shutil.which(binary)
    if not path:
        raise ToolMissing(f"{binary} not installed (bash tools/setup.sh installs it)")
    return path


# ------------------------------------------------------------------------------ trafgen
def _packet(dst_mac: str, src_mac: str, saddr: str, daddr: str, sport: str) -> str:
    return ("{\n"
            f"  eth(da={dst_mac}, sa={src_mac}),\n"
            f"  ipv4(saddr={saddr}, daddr={daddr}, ttl=64),\n"
            f"  udp(sport={sport}, dport={UDP_PORT}),\n"
            f"  fill(0x00, {UDP_PAYLOAD})\n"
            "}\n")


def trafgen_config(variant: str, targets: tuple[str, str], dst_mac: str, src_mac: str) -> str:
    """trafgen packet templates for VARIANT ('flows' or 'newflows'), alternating over TARGETS."""
    if variant == "flows":
        half = FLOWS // 2
        return "".join(
            _packet(dst_mac, src_mac, CLIENT_ADDR, target,
                    f"dinc({1024 + i * half}, {1024 + (i + 1) * half - 1})")
            for i, target in enumerate(targets))
    if variant == "newflows":
        sources = ipaddress.ip_network(NEW_FLOW_SOURCES)
        return "".join(
            _packet(dst_mac, src_mac, str(sources[1 + i]), targets[i % 2], "drnd()")
            for i in range(NEW_FLOW_SOURCE_COUNT))
    raise ValueError(f"unknown packet-rate variant {variant!r}")


@dataclasses.dataclass
class PacketRun:
    """Counts over a window; every counter has its own window length because each is read at
    its own moment (see BenchTopology.delivered)."""

    seconds: float  # the generator's (offered) window
    offered: int
    delivered: dict[str, int]
    delivered_seconds: dict[str, float]

    @property
    def delivered_pps(self) -> float:
        return sum(count / self.delivered_seconds[name] for name, count in self.delivered.items())

    @property
    def offered_pps(self) -> float:
        return self.offered / self.seconds


def packet_rate(topo: BenchTopology, variant: str, targets: tuple[str, str], seconds: float,
                workdir: str) -> PacketRun:
    """Send VARIANT traffic for SECONDS; count what the real servers received."""
    trafgen = require("trafgen")
    client_mac = topo.mac(topo.client, "eth0")
    conf = os.path.join(workdir, f"trafgen-{variant}.cfg")
    with open(conf, "w") as f:
        f.write(trafgen_config(variant, targets, topo.director_mac, client_mac))
    argv = ["taskset", "-c", GENERATOR_CPU, trafgen, "--dev", "eth0", "--conf", conf,
            "--cpus", "1", "--num", str(int(MAX_PPS_BOUND * (seconds + WARMUP_SECONDS + 5))),
            "--no-sock-mem", "--notouch-irq", "--no-cpu-stats"]
    # cwd: trafgen writes a temporary file into its working directory.
    proc = topo.popen(topo.client, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                      text=True, cwd=workdir)
    try:
        # Measure a window of steady sending, not trafgen's ring set-up and tear-down.
        time.sleep(WARMUP_SECONDS)
        first = _snapshot(topo)
        time.sleep(seconds)
        last = _snapshot(topo)
        still_running = proc.poll() is None
    finally:
        _interrupt(proc)
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            topo.stop(proc)
            _, err = proc.communicate()
    if not still_running:
        raise RuntimeError(f"trafgen stopped early ({proc.returncode}): "
                           f"{(err or '').strip()[-300:]}")
    return PacketRun(
        last.tx_when - first.tx_when, last.tx - first.tx,
        {name: count - first.delivered[name][1] for name, (_, count) in last.delivered.items()},
        {name: when - first.delivered[name][0] for name, (when, _) in last.delivered.items()})


@dataclasses.dataclass
class _Snapshot:
    tx_when: float
    tx: int
    delivered: dict[str, tuple[float, int]]  # real server -> (when read, count)


def _snapshot(topo: BenchTopology) -> _Snapshot:
    """All counters once, each with the moment it was read."""
    start = time.monotonic()
    tx = topo.tx_packets(topo.client, "eth0")
    tx_when = (start + time.monotonic()) / 2
    return _Snapshot(tx_when, tx, topo.delivered())


def _interrupt(proc: subprocess.Popen) -> None:
    """SIGINT trafgen's whole process group: it forks one sender per --cpus."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------------------ nginx
NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    server {{
        listen {port} backlog=4096;
        location / {{ return 200 "{name}\\n"; }}
    }}
}}
"""


class HttpServers:
    """One nginx per real server, started on enter and stopped on exit."""

    def __init__(self, topo: BenchTopology, workdir: str):
        self.topo = topo
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "HttpServers":
        nginx = require("nginx")
        for rs in self.topo.real_servers:
            rs_dir = tempfile.mkdtemp(prefix=f"nginx-{rs.name}-", dir=self.workdir)
            conf = os.path.join(rs_dir, "nginx.conf")
            with open(conf, "w") as f:
                f.write(NGINX_CONF.format(dir=rs_dir, port=HTTP_PORT, name=rs.name))
            self.topo.sysctl(rs.ns, "net.core.somaxconn", 4096)
            proc = self.topo.popen(rs.ns, [nginx, "-c", conf, "-p", rs_dir],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            self.procs.append(proc)
        for rs, proc in zip(self.topo.real_servers, self.procs):
            self._wait_listening(rs, proc)
        return self

    def _wait_listening(self, rs, proc, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx on {rs.name} exited: {proc.stderr.read().strip()}")
            probe = self.topo.run(rs.ns, ["ss", "-Htln", f"sport = :{HTTP_PORT}"], timeout=5)
            if probe.stdout.strip():
                return
            time.sleep(0.1)
        raise RuntimeError(f"nginx on {rs.name} not listening after {timeout:.0f} s")

    def __exit__(self, *exc_info) -> None:
        for proc in self.procs:
            self.topo.stop(proc)


# ------------------------------------------------------------------------------ wrk
_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6}


def _to_us(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclasses.dataclass
class WrkRun:
    requests: int
    seconds: float
    requests_per_s: float
    p50_us: float
    p99_us: float
    errors: int
    non_2xx: int


def parse_wrk(output: str) -> WrkRun:
    """Read wrk --latency output (wrk 4.x's text report)."""
    def find(pattern: str, default=None):
        match = re.search(pattern, output, re.M)
        if match is None:
            if default is None:
                raise ValueError(f"wrk output lacks {pattern!r}:\n{output[-500:]}")
            return default
        return match

    done = find(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m),")
    errors = 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                              output)
    if socket_errors:
        errors = sum(int(x) for x in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkRun(
        requests=int(done.group(1)),
        seconds=_to_us(done.group(2) + done.group(3)) / 1e6,
        requests_per_s=float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        p50_us=_to_us(find(r"^\s+50%\s+(\S+)").group(1)),
        p99_us=_to_us(find(r"^\s+99%\s+(\S+)").group(1)),
        errors=errors,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def wrk(topo: BenchTopology, target: str, seconds: float, new_connections: bool,
        connections: int = 32) -> WrkRun:
    """Run wrk from the client against http://TARGET/ for SECONDS."""
    binary = require("wrk")
    duration = max(1, round(seconds))
    argv = [binary, "-t1", f"-c{connections if new_connections else 1}", f"-d{duration}s",
            "--timeout", "2s", "--latency"]
    if new_connections:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://{target}:{HTTP_PORT}/")
    # wrk can hang past -d when no connection ever completes: bound it a little above -d.
    result = topo.run(topo.client, argv, timeout=duration + 8)
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed: {(result.stderr or result.stdout).strip()[-300:]}")
    return parse_wrk(result.stdout)
