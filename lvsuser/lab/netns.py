"""Network namespaces for tests and the lab: create, wire, configure, run, tear down.

Theory of operation
-------------------
Namespaces are made `ip netns` compatible: each one is a bind mount under /run/netns/NAME, so
`ip netns exec NAME ...` and `ip netns list` see them, and a crashed test leaves something a human
can find and remove. Names are unique per process (prefix + pid + counter), so tests run in parallel.

Links, addresses and routes are set with pyroute2's IPRoute opened inside the namespace
(`IPRoute(netns=NAME)`); nothing here shells out to `ip`.

Sysctls under /proc/sys/net are per network namespace, and the kernel picks the namespace of the
*calling thread* when the file is opened. So `sysctl()` runs a short-lived thread that setns()es
into the namespace, writes the file and exits; the main thread never changes namespace.

Processes are started with a preexec hook that setns()es the child before exec (like
`ip netns exec`, minus its /sys remount). Every child gets its own session so that it and its
children can be signalled as a group.

`Topology` is the owner of everything: on exit (normal, exception, SIGINT, SIGTERM) it stops the
processes it started, kills anything else still living in its namespaces, and removes the
namespaces. SIGTERM (and SIGHUP) are turned into KeyboardInterrupt while a Topology is active in the
main thread, so `finally` blocks and context managers run exactly as on Ctrl-C.

Example::

    with Topology("t") as topo:
        client, director = topo.add_ns("cl"), topo.add_ns("dir")
        topo.veth(client, "eth0", director, "eth0")
        topo.addr(client, "eth0", "198.18.0.2/24")
        topo.addr(director, "eth0", "198.18.0.1/24")
        topo.route(client, "default", "198.18.0.1")
        topo.sysctl(director, "net.ipv4.ip_forward", 1)
        print(topo.run(client, ["ping", "-c1", "-W1", "198.18.0.1"]).stdout)
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import itertools
import os
import signal
import subprocess
import threading
import time
from typing import Iterable, Sequence

from pyroute2 import IPRoute
from pyroute2 import netns as _pr_netns

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

_counter = itertools.count(1)
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class NetnsError(RuntimeError):
    """A namespace operation failed; the message says which and why."""


# --------------------------------------------------------------------------- naming

def unique_name(prefix: str) -> str:
    """Return PREFIX + pid + counter, e.g. 'cl4211n3': unique per process and call."""
    return f"{prefix}{os.getpid()}n{next(_counter)}"


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


# --------------------------------------------------------------------------- create / remove

def create(name: str) -> str:
    """Create namespace NAME (an `ip netns add` equivalent) and bring its loopback up."""
    if exists(name):
        raise NetnsError(f"network namespace {name!r} already exists")
    _pr_netns.create(name)
    with IPRoute(netns=name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    return name


def pids_in(name: str) -> list[int]:
    """Pids of processes whose network namespace is NAME (like `ip netns pids NAME`)."""
    try:
        target = os.stat(netns_path(name))
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino) and int(entry) != os.getpid():
            found.append(int(entry))
    return found


def kill_all_in(name: str, grace: float = 1.0) -> None:
    """SIGTERM every process in namespace NAME, then SIGKILL whatever is left after GRACE s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
        pids = pids_in(name)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and pids_in(name):
            time.sleep(0.05)


def remove(name: str) -> None:
    """Kill what runs in NAME and delete it (an `ip netns del` equivalent). Missing is fine."""
    if not exists(name):
        return
    kill_all_in(name)
    try:
        _pr_netns.remove(name)
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------- entering

def _open_ns_fd(name: str) -> int:
    try:
        return os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(f"network namespace {name!r} does not exist") from None


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def call_in(name: str, func, *args, **kwargs):
    """Run FUNC(*args, **kwargs) in a helper thread that has entered namespace NAME.

    Good for anything that is looked up by the calling thread's namespace at the moment of
    the call: opening /proc/sys/net files, creating sockets. The result (or exception) is
    handed back; the calling thread's namespace is untouched.
    """
    fd = _open_ns_fd(name)
    outcome: dict = {}

    def body():
        try:
            _setns(fd)
            outcome["value"] = func(*args, **kwargs)
        except BaseException as exc:  # handed back to the caller below
            outcome["error"] = exc

    try:
        worker = threading.Thread(target=body, name=f"netns-{name}", daemon=True)
        worker.start()
        worker.join()
    finally:
        os.close(fd)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _sysctl_path(key: str) -> str:
    if key.startswith("/"):
        return key
    return "/proc/sys/" + key.replace(".", "/")


def sysctl(name: str, key: str, value=None):
    """Read (VALUE None) or write a sysctl inside namespace NAME; returns the value read.

    KEY is dotted ('net.ipv4.ip_forward') or a /proc/sys path. Interface names containing a dot
    must use the path form.
    """
    path = _sysctl_path(key)

    def access():
        if value is not None:
            with open(path, "w") as f:
                f.write(f"{value}\n")
        with open(path) as f:
            return f.read().strip()

    return call_in(name, access)


def _preexec_enter(fd: int):
    def enter():
        _setns(fd)
    return enter


def popen(name: str, argv: Sequence[str], **kwargs) -> subprocess.Popen:
    """Start ARGV inside namespace NAME (its own session); kwargs go to subprocess.Popen."""
    fd = _open_ns_fd(name)
    try:
        kwargs.setdefault("start_new_session", True)
        pass_fds = tuple(kwargs.pop("pass_fds", ())) + (fd,)
        return subprocess.Popen(list(argv), preexec_fn=_preexec_enter(fd), pass_fds=pass_fds,
                                **kwargs)
    finally:
        os.close(fd)


def run(name: str, argv: Sequence[str], timeout: float = 30.0, check: bool = False,
        **kwargs) -> subprocess.CompletedProcess:
    """Run ARGV inside namespace NAME to completion (text output captured unless told otherwise)."""
    if kwargs.pop("capture_output", True):
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("text", True)
    stdin_data = kwargs.pop("input", None)
    if stdin_data is not None:
        kwargs["stdin"] = subprocess.PIPE
    proc = popen(name, argv, **kwargs)
    try:
        out, err = proc.communicate(input=stdin_data, timeout=timeout)
    except BaseException:
        _stop_process(proc)
        raise
    result = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, list(argv), out, err)
    return result


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal PROC's process group (it leads one when started with a new session), else PROC."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def _stop_processes(procs: Sequence[subprocess.Popen], grace: float = 1.0) -> None:
    """Stop PROCS together: SIGTERM to all, wait up to GRACE s, then SIGKILL the rest. All at
    once, so teardown costs one grace period, not one per process."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        running = [p for p in procs if p.poll() is None]
        if not running:
            return
        for proc in running:
            _signal_group(proc, sig)
        deadline = time.monotonic() + wait
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass


def _stop_process(proc: subprocess.Popen, grace: float = 1.0) -> None:
    """Stop PROC and its process group: SIGTERM, wait GRACE s, then SIGKILL."""
    _stop_processes([proc], grace)


# --------------------------------------------------------------------------- links and addresses

def _ifindex(ipr: IPRoute, ns: str, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise NetnsError(f"no interface {ifname!r} in namespace {ns!r}")
    return found[0]


def _split_cidr(cidr: str) -> tuple[str, int]:
    address, _, length = cidr.partition("/")
    if not length:
        length = "128" if ":" in address else "32"
    return address, int(length)


def veth(ns_a: str, if_a: str, ns_b: str, if_b: str, up: bool = True) -> None:
    """Create a veth pair IF_A (in NS_A) <-> IF_B (in NS_B), both up unless UP is false.

    The pair is created under a temporary unique name in NS_A and renamed, so two pairs with the
    same end names in different namespaces never collide."""
    tmp_peer = f"vp{os.getpid() % 100000}n{next(_counter)}"[:15]
    with IPRoute(netns=ns_a) as ipr:
        ipr.link("add", ifname=if_a, kind="veth", peer={"ifname": tmp_peer})
        peer_index = _ifindex(ipr, ns_a, tmp_peer)
        ipr.link("set", index=peer_index, net_ns_fd=ns_b)
        if up:
            ipr.link("set", index=_ifindex(ipr, ns_a, if_a), state="up")
    with IPRoute(netns=ns_b) as ipr:
        index = _ifindex(ipr, ns_b, tmp_peer)
        ipr.link("set", index=index, ifname=if_b)
        if up:
            ipr.link("set", index=index, state="up")


def bridge(ns: str, name: str, ports: Iterable[str] = ()) -> None:
    """Create bridge NAME in NS, enslave PORTS (interfaces already in NS), bring all up."""
    with IPRoute(netns=ns) as ipr:
        ipr.link("add", ifname=name, kind="bridge")
        br_index = _ifindex(ipr, ns, name)
        for port in ports:
            ipr.link("set", index=_ifindex(ipr, ns, port), master=br_index, state="up")
        ipr.link("set", index=br_index, state="up")


def link_up(ns: str, ifname: str) -> None:
    with IPRoute(netns=ns) as ipr:
        ipr.link("set", index=_ifindex(ipr, ns, ifname), state="up")


def addr(ns: str, ifname: str, cidr: str, label: str | None = None) -> None:
    """Add address CIDR ('198.18.0.1/24', '2001:db8::1/64') to IFNAME in NS, optionally with an
    IPv4 LABEL such as 'eth0:0' (what `ifconfig eth0:0 ...` creates)."""
    address, length = _split_cidr(cidr)
    extra = {"label": label} if label else {}
    with IPRoute(netns=ns) as ipr:
        ipr.addr("add", index=_ifindex(ipr, ns, ifname), address=address, prefixlen=length,
                 **extra)


def set_mac(ns: str, ifname: str, mac_address: str) -> None:
    """Give IFNAME in NS a fixed MAC (lab printouts name hosts by MAC)."""
    with IPRoute(netns=ns) as ipr:
        ipr.link("set", index=_ifindex(ipr, ns, ifname), address=mac_address)


def route(ns: str, dst: str, gateway: str | None = None, dev: str | None = None) -> None:
    """Add a route in NS. DST is 'default', 'default6' or a CIDR; give GATEWAY and/or DEV."""
    spec: dict = {}
    if dst in ("default", "default6"):
        spec["dst"] = "::/0" if dst == "default6" or (gateway and ":" in gateway) else "0.0.0.0/0"
    else:
        spec["dst"] = dst
    if gateway:
        spec["gateway"] = gateway
    with IPRoute(netns=ns) as ipr:
        if dev:
            spec["oif"] = _ifindex(ipr, ns, dev)
        ipr.route("add", **spec)


def mac(ns: str, ifname: str) -> str:
    """The MAC address of IFNAME in NS."""
    with IPRoute(netns=ns) as ipr:
        link = ipr.get_links(_ifindex(ipr, ns, ifname))[0]
        return link.get("IFLA_ADDRESS")


# --------------------------------------------------------------------------- topology

_active_topologies: list["Topology"] = []
_signal_lock = threading.Lock()
_saved_handlers: dict = {}


_handler_owner_pid: int | None = None


def _raise_interrupt(signum, frame):
    # A forked child (pyroute2 forks helpers, and stops them with SIGTERM) inherits this handler;
    # it must die as by default, not unwind the parent's stack and tear down its topology.
    if os.getpid() != _handler_owner_pid:
        os._exit(128 + signum)
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


class Topology:
    """Owns namespaces and processes; removes all of them on exit, whatever the exit.

    Namespace names are PREFIX-derived and unique. Methods mirror the module functions and take
    namespace names as returned by `add_ns`.
    """

    def __init__(self, prefix: str = "lvs", keep: bool = False):
        self.prefix = prefix
        self.keep = keep  # leave everything in place on exit (the lab's --keep)
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen] = []
        self._closed = False
        self._owner_pid = os.getpid()  # a forked copy of this object must never tear down

    # context management -------------------------------------------------
    def __enter__(self) -> "Topology":
        if threading.current_thread() is threading.main_thread():
            with _signal_lock:
                if not _active_topologies:
                    global _handler_owner_pid
                    _handler_owner_pid = os.getpid()
                    for sig in (signal.SIGTERM, signal.SIGHUP):
                        _saved_handlers[sig] = signal.signal(sig, _raise_interrupt)
                _active_topologies.append(self)
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            if not self.keep:
                self.close()
        finally:
            with _signal_lock:
                if self in _active_topologies:
                    _active_topologies.remove(self)
                    if not _active_topologies:
                        for sig, handler in _saved_handlers.items():
                            signal.signal(sig, handler)
                        _saved_handlers.clear()

    def close(self) -> None:
        """Stop started processes, then remove every namespace (idempotent). A second Ctrl-C
        during teardown does not stop the teardown."""
        if self._closed or os.getpid() != self._owner_pid:
            return
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            _stop_processes(list(reversed(self.processes)))
            for name in reversed(self.namespaces):
                try:
                    remove(name)
                except OSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.EINVAL):
                        raise
            self._closed = True
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    # namespaces -----------------------------------------------------------
    def add_ns(self, role: str, name: str | None = None) -> str:
        """Create a fresh namespace for ROLE; returns its unique name. NAME overrides the
        generated name (the caller then answers for its uniqueness)."""
        name = name or unique_name(f"{self.prefix}{role}")
        self.namespaces.append(name)  # recorded first: a failed create is still cleaned up
        create(name)
        return name

    def adopt_ns(self, name: str) -> str:
        """Take ownership of an existing namespace (it will be removed on exit)."""
        if not exists(name):
            raise NetnsError(f"network namespace {name!r} does not exist")
        self.namespaces.append(name)
        return name

    # wiring ---------------------------------------------------------------
    veth = staticmethod(veth)
    bridge = staticmethod(bridge)
    link_up = staticmethod(link_up)
    addr = staticmethod(addr)
    set_mac = staticmethod(set_mac)
    route = staticmethod(route)
    sysctl = staticmethod(sysctl)
    mac = staticmethod(mac)
    call_in = staticmethod(call_in)

    # processes --------------------------------------------------------------
    def popen(self, ns: str, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start ARGV in NS; it is stopped when the topology closes."""
        proc = popen(ns, argv, **kwargs)
        self.processes.append(proc)
        return proc

    def run(self, ns: str, argv: Sequence[str], timeout: float = 30.0, check: bool = False,
            **kwargs) -> subprocess.CompletedProcess:
        return run(ns, argv, timeout=timeout, check=check, **kwargs)

    def stop(self, proc: subprocess.Popen) -> None:
        _stop_process(proc)
