"""What is measured: the kernel baselines and lvsuser in each mode, behind one small interface.

A candidate turns the director (and, for DR/TUN, the real servers) into one kind of load
balancer in `start`, says where the client should send (`udp_targets`, `http_target`), and puts
everything back in `stop`, so that candidates can take turns on the same namespaces round after
round. A candidate that cannot run here raises `Unavailable` with the reason, which the report
prints instead of a number.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.topology import HTTP_PORT, UDP_PORT, VIP, BenchTopology

LVSUSER_CPU = "1"  # the generator has CPU 0; keep the director's process off it


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of PID (all its threads) so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Unavailable(Exception):
    """This candidate cannot run here; str() is the reason shown in the report."""


class Candidate:
    name = "abstract"
    label = ""
    baseline = False

    def start(self, topo: BenchTopology, workdir: str) -> None:
        pass

    def stop(self, topo: BenchTopology) -> None:
        pass

    def udp_targets(self, topo: BenchTopology) -> tuple[str, str]:
        return (VIP, VIP)

    def http_target(self, topo: BenchTopology) -> str:
        return VIP

    def cpu_seconds(self) -> float | None:
        """CPU time used so far by this candidate's director process; None if it has none."""
        return None


class KernelForwarding(Candidate):
    """The ceiling: the client addresses the real servers, the director only routes."""

    name = "forward"
    label = "kernel forwarding (ceiling)"
    baseline = True

    def udp_targets(self, topo):
        return (topo.real_servers[0].addr, topo.real_servers[1].addr)

    def http_target(self, topo):
        return topo.real_servers[0].addr


class NftDnat(Candidate):
    """The kernel load balancer this host has: nftables DNAT, round robin with numgen."""

    name = "nft-dnat"
    label = "nftables DNAT rr"
    baseline = True
    table = "lvsbench_dnat"

    def start(self, topo, workdir):
        servers = ", ".join(f"{i} : {rs.addr}" for i, rs in enumerate(topo.real_servers))
        count = len(topo.real_servers)
        topo.nft(topo.director, f"""
table ip {self.table} {{
    chain pre {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {VIP} udp dport {UDP_PORT} dnat to numgen inc mod {count} map {{ {servers} }}
        ip daddr {VIP} tcp dport {HTTP_PORT} dnat to numgen inc mod {count} map {{ {servers} }}
    }}
}}
""")

    def stop(self, topo):
        topo.run(topo.director, ["nft", "delete", "table", "ip", self.table], timeout=10)


FORWARD_FLAG = {"nat": "-m", "dr": "-g", "tun": "-i"}


def ipvsadm_rules(topo: BenchTopology, mode: str) -> str:
    """The benchmark's services as `ipvsadm -R` input: UDP and HTTP on the VIP, round robin,
    both real servers in MODE. One restore instead of six commands: starting a process is
    cheap here but takes seconds in the emulated guest."""
    lines = []
    for proto, port in (("-u", UDP_PORT), ("-t", HTTP_PORT)):
        lines.append(f"-A {proto} {VIP}:{port} -s rr")
        for rs in topo.real_servers:
            lines.append(f"-a {proto} {VIP}:{port} -r {rs.addr}:{port} {FORWARD_FLAG[mode]}")
    return "\n".join(lines) + "\n"


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `python3 -m lvsuser` must find this checkout's package wherever the benchmark was started from.
LVSUSER_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p))


def lvsuser_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "lvsuser", *args]


def _tail(text: str | None, limit: int = 240) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[:limit]


class Lvsuser(Candidate):
    """`lvsuser run` in the director namespace, configured with `lvsuser ipvsadm` lines."""

    def __init__(self, mode: str, io: str):
        self.mode, self.io = mode, io
        self.name = f"lvsuser-{mode}-{io}"
        self.label = f"lvsuser {mode.upper()} --io {io}"
        self.proc: subprocess.Popen | None = None
        self.realservers_done: list = []
        self.control = ""

    def start(self, topo, workdir):
        if self.mode == "dr" and self.io == "tun":
            # Not a failure of lvsuser: DR rewrites the destination MAC, and a TUN device
            # carries IP packets without Ethernet headers (issue 3: --io tun is for NAT/TUN).
            raise Unavailable("DR needs Ethernet frames to rewrite the MAC; --io tun carries "
                              "bare IP packets (use --io afpacket)")
        self.control = os.path.join(workdir, f"{self.name}.sock")
        if os.path.exists(self.control):
            os.unlink(self.control)
        if self.mode in ("dr", "tun"):
            for rs in topo.real_servers:
                result = topo.run(rs.ns, lvsuser_argv("realserver", self.mode, "--vip", VIP),
                                  timeout=30, env=LVSUSER_ENV)
                if result.returncode != 0:
                    raise Unavailable(f"`lvsuser realserver {self.mode}` failed: "
                                      f"{_tail(result.stderr or result.stdout)}")
                self.realservers_done.append(rs)
        # a fresh director each time: no table saved by an earlier run (kept beside the socket)
        argv = ["taskset", "-c", LVSUSER_CPU] + lvsuser_argv(
            "run", "--control", self.control, "--io", self.io,
            "--state-dir", self.control + ".state", "--clean")
        self.proc = topo.popen(topo.director, argv, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=LVSUSER_ENV)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.control):
            if self.proc.poll() is not None:
                raise Unavailable(f"`lvsuser run --io {self.io}` exited "
                                  f"({self.proc.returncode}): {_tail(self.proc.stderr.read())}")
            if time.monotonic() > deadline:
                raise Unavailable("`lvsuser run` made no control socket within 20 s")
            time.sleep(0.1)
        env = dict(LVSUSER_ENV, LVSUSER_CONTROL=self.control)
        result = topo.run(topo.director, lvsuser_argv("ipvsadm", "-R"), timeout=60, env=env,
                          input=ipvsadm_rules(topo, self.mode))
        if result.returncode != 0:
            raise Unavailable(f"`lvsuser ipvsadm -R` failed: {_tail(result.stderr or result.stdout)}")

    def cpu_seconds(self):
        if self.proc is None:
            return None
        try:
            return process_cpu_seconds(self.proc.pid)
        except OSError:
            return None

    def stop(self, topo):
        if self.proc is not None:
            # The table outlives a director stopped with rules in it (its guard too, keeping the
            # kernel out of VIP traffic until it is back); the next candidate needs the
            # director's kernel and nftables as they were, so clear the table first.
            if self.proc.poll() is None:
                topo.run(topo.director, lvsuser_argv("ipvsadm", "-C"), timeout=30,
                         env=dict(LVSUSER_ENV, LVSUSER_CONTROL=self.control))
            topo.stop(self.proc)
            self.proc = None
        for rs in self.realservers_done:
            topo.run(rs.ns, lvsuser_argv("realserver", self.mode, "--vip", VIP, "--undo"),
                     timeout=30, env=LVSUSER_ENV)
        self.realservers_done = []
        if self.control and os.path.exists(self.control):
            os.unlink(self.control)


class KernelIpvs(Candidate):
    """Kernel IPVS, driven by the real ipvsadm: only inside the QEMU guest (bench/guest.py).

    IPVS works at LOCAL_IN, so the VIP must be a local address of the director (on lo, as the
    classic guide's DR/TUN directors have it on an interface). DR real servers carry the VIP on
    lo; TUN real servers on tunl0 (the guest kernel has ipip), with rp_filter off there so the
    decapsulated packets are accepted.
    """

    def __init__(self, mode: str):
        self.mode = mode
        self.name = f"ipvs-{mode}"
        self.label = f"kernel IPVS {mode.upper()}"
        self.baseline = mode == "nat"

    def _must(self, topo, ns, argv, **kwargs):
        result = topo.run(ns, argv, timeout=30, **kwargs)
        if result.returncode != 0:
            raise Unavailable(f"`{' '.join(argv)}` failed: {_tail(result.stderr or result.stdout)}")

    def start(self, topo, workdir):
        self._must(topo, topo.director, ["ip", "addr", "add", f"{VIP}/32", "dev", "lo"])
        self._must(topo, topo.director, ["ipvsadm", "-R"], input=ipvsadm_rules(topo, self.mode))
        for rs in topo.real_servers:
            if self.mode == "dr":
                self._must(topo, rs.ns, ["ip", "addr", "add", f"{VIP}/32", "dev", "lo"])
            elif self.mode == "tun":
                self._must(topo, rs.ns, ["modprobe", "ipip"])
                self._must(topo, rs.ns, ["ip", "link", "set", "tunl0", "up"])
                self._must(topo, rs.ns, ["ip", "addr", "add", f"{VIP}/32", "dev", "tunl0"])
                topo.sysctl(rs.ns, "/proc/sys/net/ipv4/conf/tunl0/rp_filter", 0)

    def stop(self, topo):
        topo.run(topo.director, ["ipvsadm", "-C"], timeout=30)
        topo.run(topo.director, ["ip", "addr", "del", f"{VIP}/32", "dev", "lo"], timeout=30)
        for rs in topo.real_servers:
            dev = {"dr": "lo", "tun": "tunl0"}.get(self.mode)
            if dev:
                topo.run(rs.ns, ["ip", "addr", "del", f"{VIP}/32", "dev", dev], timeout=30)


def guest_candidates() -> list[Candidate]:
    """What runs inside the QEMU guest: kernel IPVS and lvsuser in the same modes."""
    found: list[Candidate] = [KernelForwarding()]
    found += [KernelIpvs(mode) for mode in ("nat", "dr", "tun")]
    found += [Lvsuser(mode, "afpacket") for mode in ("nat", "dr", "tun")]
    for cand in found:
        cand.name, cand.label = f"guest-{cand.name}", f"guest: {cand.label}"
    return found


def all_candidates() -> list[Candidate]:
    """Every host candidate, baselines first (report order)."""
    found: list[Candidate] = [KernelForwarding(), NftDnat()]
    for io in ("afpacket", "tun"):
        for mode in ("nat", "dr", "tun"):
            found.append(Lvsuser(mode, io))
    return found
