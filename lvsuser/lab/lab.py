"""Build and run one of the guide's labs in network namespaces, then tear it down.

Theory of operation
-------------------
A lab is a `netns.Topology` holding one namespace per host of the plan (client, director,
rs1, rs2) plus a "switch" namespace with one bridge per network; every host interface is a veth
whose other end is a port of that switch. Hosts are configured the way the
guide configures them, with our own commands: the director gets ip_forward=1, its VIP, `lvsuser
run` and the guide's ipvsadm lines through `lvsuser ipvsadm`; each real server gets its step 3 as
one `lvsuser realserver ...` line and a tiny HTTP server answering its own name. IPv6 is off in
every lab namespace so that captures hold only the traffic the guide talks about.

Then a sniffer on the switch captures every wire (trace.py), and one in each real server its
TUN device, while the client sends its requests, and the first
request's packets are drawn hop by hop. Everything the lab starts lives inside its namespaces,
so removing the namespaces (Topology exit, on success, error, Ctrl-C or SIGTERM) ends it all;
the real servers' state files are undone first so /run is left clean. A kept lab (--keep) is
recorded in /run/lvsuser/lab/<id>/lab.json for `lvsuser lab down`.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time

from pyroute2 import IPRoute

from lvsuser.lab import netns, trace
from lvsuser.lab.plan import Plan

LAB_ROOT = "/run/lvsuser/lab"
PYTHON = sys.executable
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
START_TIMEOUT = 30.0  # generous: the lab must also work on a loaded two-core machine


class LabError(RuntimeError):
    """The lab could not be built or run; the message says what and where to look."""


def child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + path if path else "")
    env.update(extra or {})
    return env


def wait_for_line(proc: subprocess.Popen, expected: str, timeout: float, what: str) -> None:
    """Wait until PROC prints EXPECTED on stdout; raise LabError if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if line.strip() == expected:
                return
            if not line and proc.poll() is not None:
                break
        elif proc.poll() is not None:
            break
    raise LabError(f"{what} did not start (exit status {proc.poll()})")


class Lab:
    def __init__(self, plan: Plan, keep: bool = False, say=print):
        self.plan = plan
        self.say = say
        self.lab_id = f"{plan.mode}{os.getpid()}"
        self.dir = os.path.join(LAB_ROOT, self.lab_id)
        self.topo = netns.Topology(prefix="lvslab", keep=keep)
        self.ns: dict[str, str] = {}
        self.control = os.path.join(self.dir, "control.sock")
        self.director_proc: subprocess.Popen | None = None
        self.sniffers: dict[str, subprocess.Popen] = {}
        self.namer = trace.Namer(plan.owner_of_mac(), plan.role_of_address())

    # ------------------------------------------------------------------ lifetime
    def __enter__(self) -> "Lab":
        os.makedirs(self.dir, exist_ok=True)
        self.topo.__enter__()
        self.record(kept=False)  # so `lab down` finds it even if this process is SIGKILLed
        return self

    def __exit__(self, *exc_info) -> None:
        if exc_info[0] is not None:
            self.topo.keep = False  # --keep keeps a working lab, never a half-built one
        try:
            if not self.topo.keep:
                self.stop_sniffers()
                self.undo_real_servers()
        finally:
            self.topo.__exit__(*exc_info)
            if not self.topo.keep:
                shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def switch_port(role: str, ifname: str) -> str:
        return f"{role}-{ifname}"[:15]

    def ns_name(self, role: str) -> str:
        return f"lvs{self.plan.mode}-{role}-{os.getpid()}"

    # ------------------------------------------------------------------ building
    def build(self) -> None:
        plan = self.plan
        for host in plan.hosts:
            ns = self.topo.add_ns(host.role, name=self.ns_name(host.role))
            self.ns[host.role] = ns
            self.record(kept=False)
            self._quiet_ipv6(ns)
        # every wire goes through the switch namespace: one bridge per network, one port per
        # host interface. The switch is where the lab captures, so it sees each frame exactly as
        # it crossed the wire, whatever way the sending host transmitted it.
        switch = self.topo.add_ns("switch", name=self.ns_name("switch"))
        self.ns["switch"] = switch
        self._quiet_ipv6(switch)
        bridges = {}
        for number, network in enumerate(plan.networks):
            bridges[network] = f"br{number}"
            netns.bridge(switch, bridges[network])
        for host in plan.hosts:
            ns = self.ns[host.role]
            for interface in host.interfaces:
                port = self.switch_port(host.role, interface.name)
                netns.veth(ns, interface.name, switch, port, up=False)
                with IPRoute(netns=switch) as ipr:
                    ipr.link("set", index=ipr.link_lookup(ifname=port)[0],
                             master=ipr.link_lookup(ifname=bridges[interface.network])[0],
                             state="up")
                netns.set_mac(ns, interface.name, interface.mac)
                netns.link_up(ns, interface.name)
                netns.addr(ns, interface.name, f"{interface.address}/{interface.prefixlen}")
        self.record(kept=False)
        director = self.ns["director"]
        netns.sysctl(director, "net.ipv4.ip_forward", 1)
        if plan.vip_on_director:
            device = plan.vip_on_director.split(":")[0]
            netns.addr(director, device, f"{plan.vip}/32", label=plan.vip_on_director)

    def _quiet_ipv6(self, ns: str) -> None:
        for key in ("all", "default"):
            netns.sysctl(ns, f"net.ipv6.conf.{key}.disable_ipv6", 1)

    # ------------------------------------------------------------------ director
    def start_director(self) -> None:
        log = open(os.path.join(self.dir, "director.log"), "wb")
        try:
            self.director_proc = self.topo.popen(
                self.ns["director"], [PYTHON, "-m", "lvsuser", "run", "--control", self.control,
                                      "--state-dir", os.path.join(self.dir, "state")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=child_env())
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.director_proc.poll() is not None:
                raise LabError("the director (`lvsuser run`) exited at start:\n"
                               + self._tail("director.log"))
            if os.path.exists(self.control):
                return
            time.sleep(0.05)
        raise LabError("the director (`lvsuser run`) did not open its control socket within "
                       f"{START_TIMEOUT:.0f} s:\n" + self._tail("director.log"))

    def _tail(self, name: str, lines: int = 8) -> str:
        try:
            with open(os.path.join(self.dir, name), errors="replace") as f:
                text = f.read().strip().splitlines()[-lines:]
        except OSError:
            return "  (no log)"
        return "\n".join("  | " + line for line in text) or "  (empty log)"

    def ipvsadm(self, args: tuple[str, ...]) -> None:
        result = netns.run(self.ns["director"], [PYTHON, "-m", "lvsuser", "ipvsadm", *args],
                           env=child_env({"LVSUSER_CONTROL": self.control}), timeout=15)
        if result.returncode != 0:
            raise LabError(f"lvsuser ipvsadm {' '.join(args)} failed: "
                           f"{(result.stderr or result.stdout).strip()}")

    def ipvsadm_listing(self) -> str:
        result = netns.run(self.ns["director"], [PYTHON, "-m", "lvsuser", "ipvsadm", "-L", "-n"],
                           env=child_env({"LVSUSER_CONTROL": self.control}), timeout=15)
        return result.stdout

    # ------------------------------------------------------------------ real servers
    def realserver(self, role: str, *args: str) -> subprocess.CompletedProcess:
        return netns.run(self.ns[role], [PYTHON, "-m", "lvsuser.hosts", *args],
                         env=child_env(), timeout=30)

    def realserver_everywhere(self, *args: str) -> dict[str, subprocess.CompletedProcess]:
        """Run `lvsuser realserver ARGS` on every real server at once (each takes a moment)."""
        running = {}
        for host in self.plan.real_servers:
            ns = self.ns.get(host.role)
            if ns and netns.exists(ns):
                running[host.role] = netns.popen(
                    ns, [PYTHON, "-m", "lvsuser.hosts", *args], stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
        results = {}
        try:
            for role, proc in running.items():
                out, err = proc.communicate(timeout=30)
                results[role] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        finally:
            for proc in running.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return results

    def configure_real_servers(self) -> None:
        for role, result in self.realserver_everywhere(*self.plan.realserver_args).items():
            if result.returncode != 0:
                raise LabError(f"lvsuser realserver on {role} failed: {result.stderr.strip()}")

    def start_http_servers(self) -> None:
        for host in self.plan.real_servers:
            proc = self.topo.popen(self.ns[host.role],
                                   [PYTHON, "-m", "lvsuser.lab.httpd", "--name", host.role,
                                    "--port", str(self.plan.rs_port)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True, env=child_env())
            wait_for_line(proc, "ready", START_TIMEOUT, f"the HTTP server on {host.role}")

    def undo_real_servers(self) -> None:
        """Remove the real servers' state files (their namespaces go away anyway)."""
        try:
            self.realserver_everywhere(self.plan.mode, "--undo")
        except (OSError, subprocess.SubprocessError):
            pass  # best effort: the namespace removal that follows stops everything

    # ------------------------------------------------------------------ traffic and traces
    def start_sniffers(self) -> None:
        """Capture on the switch (every wire) and, for TUN devices, inside each real server."""
        points = [("switch", "ether")] + [(h.role, "raw") for h in self.plan.real_servers]
        for role, links in points:
            proc = self.topo.popen(self.ns[role],
                                   [PYTHON, "-m", "lvsuser.lab.trace", "capture", "--out",
                                    os.path.join(self.dir, f"capture-{role}.jsonl"),
                                    "--links", links,
                                    "--max-frames", "3000", "--max-seconds", "60"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True, env=child_env())
            wait_for_line(proc, "ready", START_TIMEOUT, f"the packet capture on {role}")
            self.sniffers[role] = proc

    def stop_sniffers(self) -> None:
        for proc in self.sniffers.values():
            self.topo.stop(proc)
        self.sniffers.clear()

    def captured_frames(self) -> list[trace.Frame]:
        """Frames as the hosts sent and received them: a frame entering switch port
        'rs1-eth0' is what rs1 sent out of eth0, one leaving it is what rs1 received."""
        ports = {self.switch_port(h.role, i.name): (h.role, i)
                 for h in self.plan.hosts for i in h.interfaces}
        frames = []
        for frame in trace.load_capture("switch", os.path.join(self.dir, "capture-switch.jsonl")):
            if frame.ifname not in ports:
                continue  # the bridge devices themselves
            role, interface = ports[frame.ifname]
            frame.host, frame.ifname = role, interface.name
            frame.direction = "out" if frame.direction == "in" else "in"
            if frame.direction == "in" and not trace.accepted_by(frame.data, interface.mac):
                continue  # flooded by the bridge to a host whose NIC drops it
            frames.append(frame)
        for host in self.plan.real_servers:
            frames += trace.load_capture(host.role,
                                         os.path.join(self.dir, f"capture-{host.role}.jsonl"))
        return frames

    def save_captures(self, target: str) -> None:
        os.makedirs(target, exist_ok=True)
        for name in os.listdir(self.dir):
            if name.startswith("capture-"):
                shutil.copy(os.path.join(self.dir, name), os.path.join(target, name))

    def send_requests(self, count: int) -> list[dict]:
        result = netns.run(self.ns["client"],
                           [PYTHON, "-m", "lvsuser.lab.client", "--url-host", self.plan.vip,
                            "--port", str(self.plan.port), "--requests", str(count)],
                           env=child_env(), timeout=10 + 3 * count)
        answers = []
        for line in result.stdout.splitlines():
            try:
                answers.append(json.loads(line))
            except ValueError:
                continue
        if not answers:
            raise LabError(f"the client printed nothing: {result.stderr.strip()}")
        return answers

    def forget_vip_neighbour(self) -> None:
        """Drop the client's ARP entry for the VIP (as if it had expired)."""
        with IPRoute(netns=self.ns["client"]) as ipr:
            for entry in ipr.get_neighbours(dst=self.plan.vip):
                try:
                    ipr.neigh("del", dst=self.plan.vip, ifindex=entry["ifindex"])
                except Exception:
                    pass

    def client_vip_neighbour(self) -> str | None:
        """MAC the client currently uses for the VIP."""
        with IPRoute(netns=self.ns["client"]) as ipr:
            for entry in ipr.get_neighbours(dst=self.plan.vip):
                mac = entry.get("NDA_LLADDR")
                if mac:
                    return mac
        return None

    def set_arp(self, role: str, ignore: int, announce: int) -> None:
        for ifname in ("all", "lo"):
            netns.sysctl(self.ns[role], f"net.ipv4.conf.{ifname}.arp_ignore", ignore)
            netns.sysctl(self.ns[role], f"net.ipv4.conf.{ifname}.arp_announce", announce)

    # ------------------------------------------------------------------ keeping
    def record(self, kept: bool) -> str:
        """Write lab.json: what `lvsuser lab down` needs to remove this lab."""
        path = os.path.join(self.dir, "lab.json")
        with open(path + ".tmp", "w") as f:
            json.dump({"id": self.lab_id, "mode": self.plan.mode, "owner_pid": os.getpid(),
                       "kept": kept, "namespaces": self.ns_list(),
                       "real_servers": {h.role: self.ns[h.role] for h in self.plan.real_servers
                                        if h.role in self.ns},
                       "control": self.control, "created": time.time()}, f, indent=1)
        os.replace(path + ".tmp", path)
        return path

    def ns_list(self) -> list[str]:
        return list(self.topo.namespaces)


# --------------------------------------------------------------------------- lab down

def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:
        return True


def recorded_labs(include_running: bool = False) -> list[dict]:
    """Labs recorded under /run/lvsuser/lab: kept ones, and ones whose lab process died
    without cleaning up (SIGKILL). Labs still being run by a live process are left alone
    unless INCLUDE_RUNNING."""
    labs = []
    try:
        entries = sorted(os.listdir(LAB_ROOT))
    except FileNotFoundError:
        return labs
    for entry in entries:
        try:
            with open(os.path.join(LAB_ROOT, entry, "lab.json")) as f:
                record = json.load(f)
        except (OSError, ValueError):
            continue
        if record.get("kept") or include_running or not _alive(record.get("owner_pid")):
            labs.append(record)
    return labs


def take_down(record: dict, say=print) -> None:
    """Remove a recorded lab: undo its real servers, remove its namespaces, forget it."""
    mode = record.get("mode", "nat")
    for role, ns in record.get("real_servers", {}).items():
        if netns.exists(ns):
            netns.run(ns, [PYTHON, "-m", "lvsuser.hosts", mode, "--undo"], env=child_env(),
                      timeout=30)
    removed = 0
    for ns in reversed(record.get("namespaces", [])):
        if netns.exists(ns):
            netns.remove(ns)
            removed += 1
    shutil.rmtree(os.path.join(LAB_ROOT, record["id"]), ignore_errors=True)
    say(f"lab {record['id']} ({mode}) removed: {removed} namespace{'s' if removed != 1 else ''}")
