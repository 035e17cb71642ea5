"""Configure, undo and check a real server for LVS-NAT, LVS-TUN and LVS-DR (the guide's step 3).

Theory of operation
-------------------
Everything here acts on the network namespace the process runs in (on a lab host: run it with
`ip netns exec RS ...`). Links, addresses and routes go through pyroute2; sysctls are written
directly under /proc/sys. Nothing shells out.

`apply()` keeps a journal: every change is recorded (with what was there before) in a state file
*as it is made*, under /run/lvsuser/realserver/net-cookie-<netns cookie>/ (one directory per network
namespace, since /run is shared between namespaces). If a step fails, the steps already done are
undone and the error is reported: nothing is left half-configured. `undo()` replays the journal
backwards, so it restores exactly the addresses, routes and sysctl values that were there before,
and stops the decapsulator if one was started. Values the real server already had right are not
touched and therefore not "restored" either.

What each mode needs, and why:

  nat  Replies must go back through the director so it can rewrite their source from RIP back to
       the VIP: the default route must point at the director (guide: `route add default gw DIP`).
  dr   The director forwards frames for the VIP with the real server's MAC and the IP header
       unchanged, so the real server must own the VIP (on lo, /32, label lo:0) but must never
       answer or announce ARP for it, or clients would bypass the director:
       arp_ignore=1 (answer only for addresses on the asking interface) and arp_announce=2 (use
       the best local address on the outgoing interface as ARP source), on lo and all. The
       kernel uses max(all, interface) for both, so setting `all` covers every interface.
  tun  The director wraps packets in IPIP (outer dst = RIP). The kernel's tunl0 strips that
       header; the VIP sits on tunl0, with the same ARP settings as DR. The inner packet's source
       (the client) is not reachable through tunl0, so strict reverse-path filtering would drop
       it: rp_filter must be 0 on the tunnel device and on all (the kernel uses the max of the
       two). Where the kernel has no ipip support, a user-space decapsulator (decap.py) plays
       tunl0's part with a TUN device, lvtun0.
"""
from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

STATE_ROOT = "/run/lvsuser/realserver"
KERNEL_TUNNEL = "tunl0"
USER_TUNNEL = "lvtun0"
MAIN_TABLE = 254
DECAP_READY_TIMEOUT = 10.0

# arp_ignore values that keep an interface from answering for an address it does not carry
ARP_IGNORE_SAFE = {1, 2, 3, 8}


class RealServerError(Exception):
    """A clear, user-facing reason why the real server could not be configured."""


@dataclass
class Problem:
    """One thing --check found wrong: what, why it matters, and the fix."""
    what: str
    fix: str


# --------------------------------------------------------------------------- state location

SO_NETNS_COOKIE = 71


def namespace_id() -> str:
    """An identity of the current network namespace that is never reused.

    /run is shared between namespaces, so state is kept per namespace. The namespace inode is
    not good enough: it is reused once a namespace is gone, and a stale state file would then be
    taken for this namespace's. The netns cookie (SO_NETNS_COOKIE, Linux 5.14) is unique for the
    life of the system; older kernels fall back to the inode."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            cookie = struct.unpack("Q", probe.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
        return f"net-cookie-{cookie}"
    except OSError:
        return f"net-inode-{os.stat('/proc/self/ns/net').st_ino}"


def state_dir() -> str:
    return os.path.join(STATE_ROOT, namespace_id())


def state_path() -> str:
    return os.path.join(state_dir(), "state.json")


@contextlib.contextmanager
def exclusive():
    """Serialise apply/undo in this namespace (two at once would interleave their journals) by
    locking the namespace's state directory; an empty one is removed again afterwards."""
    directory = state_dir()
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        try:
            os.rmdir(directory)  # only succeeds when nothing is recorded
        except OSError:
            pass
        os.close(fd)


def live_namespace_inodes() -> set[int]:
    """Inodes of every network namespace that still exists (held by a process or a mount)."""
    inodes = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                inodes.add(os.stat(f"/proc/{entry}/ns/net").st_ino)
            except OSError:
                pass
    for directory in ("/run/netns", "/var/run/netns"):
        try:
            for name in os.listdir(directory):
                try:
                    inodes.add(os.stat(os.path.join(directory, name)).st_ino)
                except OSError:
                    pass
        except FileNotFoundError:
            pass
    return inodes


def sweep_stale_states() -> None:
    """Forget state left by namespaces that are gone (deleted without --undo): nothing of
    theirs remains to restore, and the directories would pile up in /run."""
    try:
        entries = os.listdir(STATE_ROOT)
    except FileNotFoundError:
        return
    live = None
    for entry in entries:
        path = os.path.join(STATE_ROOT, entry)
        try:
            with open(os.path.join(path, "state.json")) as f:
                inode = json.load(f).get("netns_inode")
        except (OSError, ValueError):
            continue
        if inode is None or entry == namespace_id():
            continue
        if live is None:
            live = live_namespace_inodes()
        if inode not in live:
            shutil.rmtree(path, ignore_errors=True)


def load_state() -> dict | None:
    try:
        with open(state_path()) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RealServerError(f"cannot read state file {state_path()}: {exc}") from None


# --------------------------------------------------------------------------- sysctl

def conf_path(family: str, ifname: str, key: str) -> str:
    return f"/proc/sys/net/{family}/conf/{ifname}/{key}"


def read_sysctl(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def write_sysctl(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(f"{value}\n")


def read_int_sysctl(path: str, default: int = 0) -> int:
    try:
        return int(read_sysctl(path))
    except (FileNotFoundError, ValueError):
        return default


# --------------------------------------------------------------------------- netlink helpers

def _family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _ifname(ipr: IPRoute, index: int) -> str | None:
    links = ipr.get_links(index)
    return links[0].get("IFLA_IFNAME") if links else None


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise RealServerError(f"no interface named {ifname}")
    return found[0]


def addresses(ipr: IPRoute) -> list[dict]:
    """Every address as {ifname, address, prefixlen, label, family}."""
    result = []
    for msg in ipr.get_addr():
        result.append({
            "ifname": _ifname(ipr, msg["index"]),
            "address": msg.get("IFA_ADDRESS") if msg["family"] == socket.AF_INET6
            else msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS"),
            "prefixlen": msg["prefixlen"],
            "label": msg.get("IFA_LABEL"),
            "family": msg["family"],
        })
    return result


def where_is(ipr: IPRoute, address: str) -> list[str]:
    """Interfaces carrying ADDRESS."""
    wanted = ipaddress.ip_address(address)
    return [a["ifname"] for a in addresses(ipr)
            if a["address"] and ipaddress.ip_address(a["address"]) == wanted]


def route_spec(ipr: IPRoute, msg) -> dict:
    """A route message reduced to what is needed to delete or re-create it exactly."""
    oif = msg.get("RTA_OIF")
    return {
        "family": msg["family"],
        "dst": msg.get("RTA_DST") or ("::" if msg["family"] == socket.AF_INET6 else "0.0.0.0"),
        "dst_len": msg["dst_len"],
        "gateway": msg.get("RTA_GATEWAY"),
        "oif_name": _ifname(ipr, oif) if oif else None,
        "priority": msg.get("RTA_PRIORITY"),
        "prefsrc": msg.get("RTA_PREFSRC"),
        "table": msg.get("RTA_TABLE", msg["table"]),
        "proto": msg["proto"],
        "scope": msg["scope"],
        "type": msg["type"],
    }


def default_routes(ipr: IPRoute, family: int) -> list[dict]:
    """Default routes of the main table, preferred (lowest metric) first."""
    specs = [route_spec(ipr, m) for m in ipr.get_routes(family=family, table=MAIN_TABLE)
             if m["dst_len"] == 0 and m["type"] == 1]
    return sorted(specs, key=lambda s: s["priority"] or 0)


def _route_call(ipr: IPRoute, command: str, spec: dict) -> None:
    kwargs = {"family": spec["family"], "dst": f"{spec['dst']}/{spec['dst_len']}",
              "table": spec["table"], "proto": spec["proto"], "scope": spec["scope"],
              "type": spec["type"]}
    if spec.get("gateway"):
        kwargs["gateway"] = spec["gateway"]
    if spec.get("oif_name"):
        kwargs["oif"] = _index(ipr, spec["oif_name"])
    if spec.get("priority") is not None:
        kwargs["priority"] = spec["priority"]
    if spec.get("prefsrc"):
        kwargs["prefsrc"] = spec["prefsrc"]
    ipr.route(command, **kwargs)


# --------------------------------------------------------------------------- the journal

class Journal:
    """Changes made so far, each with what it replaced; saved after every step."""

    def __init__(self, header: dict):
        self.header = header
        self.actions: list[dict] = []

    def save(self) -> None:
        os.makedirs(state_dir(), mode=0o755, exist_ok=True)
        tmp = state_path() + ".tmp"
        with open(tmp, "w") as f:
            json.dump({**self.header, "actions": self.actions}, f, indent=1)
        os.replace(tmp, state_path())

    def record(self, action: dict) -> None:
        self.actions.append(action)
        self.save()

    # changes ---------------------------------------------------------------
    def set_sysctl(self, path: str, value: str) -> None:
        try:
            old = read_sysctl(path)
        except FileNotFoundError:
            raise RealServerError(f"sysctl {path} does not exist on this host") from None
        if old == value:
            return
        write_sysctl(path, value)
        self.record({"op": "sysctl", "path": path, "old": old, "new": value})

    def add_address(self, ipr: IPRoute, ifname: str, address: str, prefixlen: int,
                    label: str | None = None) -> None:
        kwargs = {"index": _index(ipr, ifname), "address": address, "prefixlen": prefixlen}
        if label:
            kwargs["label"] = label
        if _family_of(address) == socket.AF_INET6:
            kwargs["flags"] = 0x02  # IFA_F_NODAD: the VIP is shared on purpose
        ipr.addr("add", **kwargs)
        self.record({"op": "addr_add", "ifname": ifname, "address": address,
                     "prefixlen": prefixlen})

    def delete_route(self, ipr: IPRoute, spec: dict) -> None:
        _route_call(ipr, "del", spec)
        self.record({"op": "route_del", "route": spec})

    def add_route(self, ipr: IPRoute, spec: dict) -> None:
        _route_call(ipr, "add", spec)
        self.record({"op": "route_add", "route": spec})

    def link_up(self, ipr: IPRoute, ifname: str) -> None:
        index = _index(ipr, ifname)
        if ipr.get_links(index)[0]["flags"] & 1:  # IFF_UP already
            return
        ipr.link("set", index=index, state="up")
        self.record({"op": "link_up", "ifname": ifname})

    def started_daemon(self, pid: int, pidfile: str, device: str) -> None:
        self.record({"op": "daemon", "pid": pid, "pidfile": pidfile, "device": device})


def _undo_action(ipr: IPRoute, action: dict) -> None:
    op = action["op"]
    if op == "sysctl":
        if os.path.exists(action["path"]):  # a device that went away took its sysctls along
            write_sysctl(action["path"], action["old"])
    elif op == "addr_add":
        found = ipr.link_lookup(ifname=action["ifname"])
        if found:
            try:
                ipr.addr("del", index=found[0], address=action["address"],
                         prefixlen=action["prefixlen"])
            except NetlinkError as exc:
                if exc.code != 99:  # EADDRNOTAVAIL: already gone
                    raise
    elif op == "route_add":
        try:
            _route_call(ipr, "del", action["route"])
        except NetlinkError as exc:
            if exc.code != 3:  # ESRCH: already gone
                raise
    elif op == "route_del":
        try:
            _route_call(ipr, "add", action["route"])
        except NetlinkError as exc:
            if exc.code != 17:  # EEXIST: already back
                raise
    elif op == "link_up":
        found = ipr.link_lookup(ifname=action["ifname"])
        if found:
            ipr.link("set", index=found[0], state="down")
    elif op == "daemon":
        stop_daemon(action["pid"], action["pidfile"])
        # the TUN device (with its VIP and routes) goes when its last fd closes; the kernel
        # unregisters it asynchronously, so wait for that before calling the host restored
        deadline = time.monotonic() + 3.0
        while ipr.link_lookup(ifname=action["device"]) and time.monotonic() < deadline:
            time.sleep(0.02)
    else:
        raise RealServerError(f"unknown action {op!r} in the state file")


def _rollback(journal: Journal) -> list[str]:
    """Undo JOURNAL's actions newest first; return the errors (the rest is still undone)."""
    errors = []
    with IPRoute() as ipr:
        while journal.actions:
            action = journal.actions[-1]
            try:
                _undo_action(ipr, action)
            except Exception as exc:
                errors.append(f"could not undo {action['op']} {action}: {exc}")
                break
            journal.actions.pop()
            journal.save()
    return errors


# --------------------------------------------------------------------------- the decapsulator

def decap_pidfile() -> str:
    return os.path.join(state_dir(), "decap.pid")


def decap_statsfile() -> str:
    return os.path.join(state_dir(), "decap.stats")


def daemon_alive(pid: int) -> bool:
    """True if PID is a running decapsulator in *this* network namespace."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        same_ns = os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False
    if b"lvsuser.hosts.decap" not in cmdline or not same_ns:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def running_decap_pid() -> int | None:
    try:
        with open(decap_pidfile()) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if daemon_alive(pid) else None


def start_daemon(vips: list[str]) -> int:
    """Start the decapsulator detached; return its pid once it reports ready."""
    os.makedirs(state_dir(), mode=0o755, exist_ok=True)
    read_end, write_end = os.pipe()
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log = open(os.path.join(state_dir(), "decap.log"), "ab")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lvsuser.hosts.decap", "--device", USER_TUNNEL,
             "--vip", *vips, "--pidfile", decap_pidfile(), "--stats", decap_statsfile(),
             "--ready-fd", str(write_end)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(write_end,),
            start_new_session=True, env=env, cwd="/")
    finally:
        os.close(write_end)
        log.close()
    # wait for 'ready' (or an error) with a deadline; EOF means the child died early
    message = b""
    deadline = time.monotonic() + DECAP_READY_TIMEOUT
    try:
        while b"\n" not in message and time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], 0.2)
            if ready:
                chunk = os.read(read_end, 256)
                if not chunk:
                    break
                message += chunk
    finally:
        os.close(read_end)
    text = message.decode(errors="replace").strip()
    if text != "ready":
        stop_daemon(proc.pid, decap_pidfile())
        reason = text or "it exited or did not report in time (see decap.log)"
        raise RealServerError(f"the user-space decapsulator did not start: {reason}")
    return proc.pid


def stop_daemon(pid: int, pidfile: str) -> None:
    """SIGTERM, wait up to 3 s, then SIGKILL; reap it if it is our child."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
        if not daemon_alive(pid):
            break
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and daemon_alive(pid):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            except ChildProcessError:
                pass
            time.sleep(0.05)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.unlink(pidfile)
    except FileNotFoundError:
        pass


def kernel_has_ipip(ipr: IPRoute) -> bool:
    """True if tunl0 exists, after asking for an ipip link if it did not (which loads the module).

    Loading ipip creates tunl0 in every namespace, and tunl0 has the probe's parameters (no
    local or remote address), so the probe itself then fails with EEXIST: its outcome says
    nothing; only tunl0's presence does."""
    if ipr.link_lookup(ifname=KERNEL_TUNNEL):
        return True
    probe = f"lvprobe{os.getpid() % 10000}"
    try:
        ipr.link("add", ifname=probe, kind="ipip")
    except NetlinkError:
        pass  # EOPNOTSUPP: no ipip here; EEXIST: the module just loaded and made tunl0
    else:
        ipr.link("del", index=_index(ipr, probe))
    return bool(ipr.link_lookup(ifname=KERNEL_TUNNEL))


# --------------------------------------------------------------------------- validation

def _parse_ips(values: list[str], what: str) -> list[str]:
    result = []
    for value in values:
        try:
            result.append(str(ipaddress.ip_address(value)))
        except ValueError:
            raise RealServerError(f"{what} {value!r} is not an IP address") from None
    return result


def validate(mode: str, vips: list[str], director: str | None) -> tuple[list[str], str | None]:
    if mode not in ("nat", "tun", "dr"):
        raise RealServerError(f"unknown mode {mode!r}: use nat, tun or dr")
    vips = _parse_ips(vips or [], "VIP")
    if director is not None:
        director = _parse_ips([director], "director address")[0]
    if mode == "nat" and director is None:
        raise RealServerError("nat needs --director DIP: the real server's replies must go back "
                              "through the director (the guide's 'route add default gw DIP')")
    if mode in ("tun", "dr") and not vips:
        raise RealServerError(f"{mode} needs --vip VIP: the real server must own the virtual IP")
    if mode == "tun":
        v6 = [v for v in vips if ":" in v]
        if v6:
            raise RealServerError(f"tun supports IPv4 VIPs only (IPIP); got {', '.join(v6)}")
    return vips, director


# --------------------------------------------------------------------------- apply

def apply(mode: str, vips: list[str], director: str | None, say=print) -> dict:
    """Configure this host as a real server for MODE. Returns the saved state."""
    vips, director = validate(mode, vips, director)
    existing = load_state()
    if existing is not None:
        same = (existing.get("mode"), existing.get("vips"), existing.get("director")) == \
            (mode, vips, director)
        if same and not check(mode, vips, director):
            say(f"realserver {mode}: already configured, nothing to do")
            return existing
        if same:
            # configured once, then broken by hand: go back to the original state and redo,
            # so the journal still describes the way back to what was there before
            say(f"realserver {mode}: configured before but something is wrong; redoing it")
            undo(say=lambda text: None)
            return apply(mode, vips, director, say)
        raise RealServerError(
            f"this host is already configured as a real server ({existing.get('mode')}, state in "
            f"{state_path()}); run 'lvsuser realserver {existing.get('mode')} --undo' first")
    sweep_stale_states()
    journal = Journal({"mode": mode, "vips": vips, "director": director,
                       "applied_at": time.time(),
                       "netns_inode": os.stat("/proc/self/ns/net").st_ino})
    try:
        with IPRoute() as ipr:
            if mode == "nat":
                _apply_nat(ipr, journal, director, say)
            elif mode == "dr":
                _apply_dr(ipr, journal, vips, say)
            else:
                _apply_tun(ipr, journal, vips, say)
        journal.save()
    except BaseException as exc:
        errors = _rollback(journal)
        if not journal.actions:
            try:
                os.unlink(state_path())
            except FileNotFoundError:
                pass
        detail = "; ".join(errors)
        if isinstance(exc, NetlinkError):
            raise RealServerError(f"{os.strerror(exc.code)} while configuring {mode}"
                                  + (f" (and {detail})" if detail else "")) from exc
        if isinstance(exc, (RealServerError, OSError)):
            raise RealServerError(str(exc) + (f" (and {detail})" if detail else "")) from exc
        raise
    return {**journal.header, "actions": journal.actions}


def _apply_nat(ipr: IPRoute, journal: Journal, director: str, say) -> None:
    family = _family_of(director)
    current = default_routes(ipr, family)
    if len(current) == 1 and current[0]["gateway"] == director:
        say(f"default route already via the director {director}")
        return
    route = ipr.route("get", dst=director)[0]
    if route.get("RTA_GATEWAY"):
        raise RealServerError(f"the director {director} is not on a directly connected network "
                              f"(reached via {route.get('RTA_GATEWAY')}); NAT needs it as gateway")
    for spec in current:
        journal.delete_route(ipr, spec)
        say(f"removed default route via {spec['gateway'] or spec['oif_name']}")
    zero = "::" if family == socket.AF_INET6 else "0.0.0.0"
    journal.add_route(ipr, {"family": family, "dst": zero, "dst_len": 0, "gateway": director,
                            "oif_name": None, "priority": None, "prefsrc": None,
                            "table": MAIN_TABLE, "proto": 4, "scope": 0, "type": 1})
    say(f"default route via the director {director} (replies go back through it)")


def _put_vips(ipr: IPRoute, journal: Journal, vips: list[str], device: str, say,
              label_lo: bool = False) -> None:
    for number, vip in enumerate(vips):
        holders = where_is(ipr, vip)
        others = [h for h in holders if h != device]
        if others:
            raise RealServerError(
                f"VIP {vip} is already on {', '.join(others)}; there it would answer ARP for the "
                f"VIP and take traffic past the director. Remove it first.")
        if device in holders:
            say(f"VIP {vip} already on {device}")
            continue
        is_v6 = ":" in vip
        label = f"lo:{number}" if label_lo and not is_v6 else None
        journal.add_address(ipr, device, vip, 128 if is_v6 else 32, label)
        say(f"VIP {vip}/{128 if is_v6 else 32} on {label or device}")


def _arp_settings(journal: Journal, device: str, say) -> None:
    for ifname in (device, "all"):
        journal.set_sysctl(conf_path("ipv4", ifname, "arp_ignore"), "1")
        journal.set_sysctl(conf_path("ipv4", ifname, "arp_announce"), "2")
    say(f"arp_ignore=1 arp_announce=2 on {device} and all (the VIP is never answered or "
        f"announced by ARP)")


def _apply_dr(ipr: IPRoute, journal: Journal, vips: list[str], say) -> None:
    _put_vips(ipr, journal, vips, "lo", say, label_lo=True)
    if any(":" not in v for v in vips):
        _arp_settings(journal, "lo", say)


def _apply_tun(ipr: IPRoute, journal: Journal, vips: list[str], say) -> None:
    if kernel_has_ipip(ipr):
        device = KERNEL_TUNNEL
        journal.link_up(ipr, device)
        say("kernel IPIP: decapsulating on tunl0")
    else:
        device = USER_TUNNEL
        for vip in vips:
            if where_is(ipr, vip):
                raise RealServerError(f"VIP {vip} is already on {', '.join(where_is(ipr, vip))}; "
                                      f"remove it first (the decapsulator's device carries it)")
        stale = running_decap_pid()
        if stale:
            raise RealServerError(f"a decapsulator is already running (pid {stale}) without a "
                                  f"state file; stop it first")
        pid = start_daemon(vips)
        journal.started_daemon(pid, decap_pidfile(), device)
        say(f"no ipip in this kernel: user-space decapsulator started (pid {pid}), "
            f"VIP on TUN device {device}")
    if device == KERNEL_TUNNEL:
        _put_vips(ipr, journal, vips, device, say)
    _arp_settings(journal, device, say)
    for ifname in (device, "all"):
        journal.set_sysctl(conf_path("ipv4", ifname, "rp_filter"), "0")
    say(f"rp_filter=0 on {device} and all (decapsulated packets come from clients that are "
        f"not routed via {device})")


# --------------------------------------------------------------------------- undo

def undo(say=print) -> bool:
    """Restore what apply() changed. Returns False if there was nothing to undo."""
    state = load_state()
    if state is None:
        say("nothing to undo: no realserver state for this network namespace")
        return False
    journal = Journal({k: v for k, v in state.items() if k != "actions"})
    journal.actions = list(state.get("actions", []))
    count = len(journal.actions)
    errors = _rollback(journal)
    if errors:
        raise RealServerError("undo stopped: " + "; ".join(errors)
                              + f" (remaining steps kept in {state_path()})")
    os.unlink(state_path())
    for leftover in (decap_statsfile(), os.path.join(state_dir(), "decap.log")):
        try:
            os.unlink(leftover)
        except FileNotFoundError:
            pass
    try:
        os.rmdir(state_dir())
    except OSError:
        pass
    say(f"realserver {state['mode']}: undone ({count} change{'s' if count != 1 else ''} restored)")
    return True


# --------------------------------------------------------------------------- check

def _network_interfaces(ipr: IPRoute) -> list[str]:
    """Interfaces that face a network: not loopback, not our tunnel devices."""
    names = []
    for link in ipr.get_links():
        name = link.get("IFLA_IFNAME")
        if link["flags"] & 0x8 or name in (KERNEL_TUNNEL, USER_TUNNEL):  # IFF_LOOPBACK
            continue
        names.append(name)
    return names


def _check_arp(ipr: IPRoute, vips: list[str], device: str, mode: str) -> list[Problem]:
    problems = []
    v4 = [v for v in vips if ":" not in v]
    if not v4:
        return problems
    vip_text = ", ".join(v4)
    all_ignore = read_int_sysctl(conf_path("ipv4", "all", "arp_ignore"))
    all_announce = read_int_sysctl(conf_path("ipv4", "all", "arp_announce"))
    fix = (f"lvsuser realserver {mode} --vip {' '.join(vips)}   (or: "
           f"echo 1 > /proc/sys/net/ipv4/conf/all/arp_ignore; "
           f"echo 2 > /proc/sys/net/ipv4/conf/all/arp_announce)")
    leaking = []
    announcing = []
    for ifname in _network_interfaces(ipr):
        ignore = max(all_ignore, read_int_sysctl(conf_path("ipv4", ifname, "arp_ignore")))
        announce = max(all_announce, read_int_sysctl(conf_path("ipv4", ifname, "arp_announce")))
        if ignore not in ARP_IGNORE_SAFE:
            leaking.append(f"{ifname} (arp_ignore {ignore})")
        if announce != 2:
            announcing.append(f"{ifname} (arp_announce {announce})")
    if leaking:
        problems.append(Problem(
            f"ARP would leak the VIP {vip_text}: {', '.join(leaking)} "
            f"{'answers' if len(leaking) == 1 else 'answer'} ARP requests for "
            f"the VIP, so clients and routers would send VIP traffic straight to this real server "
            f"instead of the director", fix))
    if announcing:
        problems.append(Problem(
            f"ARP would leak the VIP {vip_text}: {', '.join(announcing)} may use the VIP as the "
            f"source of its own ARP requests, teaching neighbours that the VIP lives here", fix))
    return problems


def check(mode: str, vips: list[str], director: str | None) -> list[Problem]:
    """Everything wrong with this host as a MODE real server (empty list: all good)."""
    vips, director = validate(mode, vips, director)
    problems: list[Problem] = []
    with IPRoute() as ipr:
        if mode == "nat":
            routes = default_routes(ipr, _family_of(director))
            fix = f"lvsuser realserver nat --director {director}"
            if not routes:
                problems.append(Problem(
                    f"NAT gateway is not the director: there is no default route, so replies to "
                    f"clients cannot go back through the director {director}", fix))
            elif routes[0]["gateway"] != director:
                via = routes[0]["gateway"] or f"dev {routes[0]['oif_name']}"
                problems.append(Problem(
                    f"NAT gateway is not the director: the default route goes via {via}, not "
                    f"{director}; replies would leave with the real server's own address and "
                    f"the client would drop them", fix))
            return problems

        fix_all = f"lvsuser realserver {mode} --vip {' '.join(vips)}"
        if mode == "dr":
            device = "lo"
        elif ipr.link_lookup(ifname=KERNEL_TUNNEL):
            device = KERNEL_TUNNEL
        else:
            device = USER_TUNNEL
            if running_decap_pid() is None:
                problems.append(Problem(
                    "decapsulator not running: this kernel has no ipip, so tunnelled packets "
                    "are only unwrapped by lvsuser's user-space decapsulator",
                    f"lvsuser realserver tun --undo; {fix_all}"))
        found = ipr.link_lookup(ifname=device)
        if found and device != "lo" and not ipr.get_links(found[0])[0]["flags"] & 1:
            problems.append(Problem(
                f"{device} is down: the VIP on it does not count as local and tunnelled packets "
                f"are not decapsulated", f"lvsuser realserver {mode} --undo; {fix_all}"))
        for vip in vips:
            holders = where_is(ipr, vip)
            if device not in holders:
                problems.append(Problem(
                    f"VIP {vip} missing on {device}: packets for the VIP would be dropped "
                    f"(the real server must own the VIP to answer it)", fix_all))
            others = [h for h in holders if h != device]
            if others:
                problems.append(Problem(
                    f"VIP {vip} is on {', '.join(others)}: that interface answers ARP for the "
                    f"VIP and takes traffic past the director",
                    f"remove {vip} from {', '.join(others)}; keep it on {device} only"))
        problems.extend(_check_arp(ipr, vips, device, mode))
        if mode == "tun" and ipr.link_lookup(ifname=device):
            effective = max(read_int_sysctl(conf_path("ipv4", "all", "rp_filter")),
                            read_int_sysctl(conf_path("ipv4", device, "rp_filter")))
            if effective == 1:
                problems.append(Problem(
                    f"rp_filter would drop decapsulated packets: strict reverse-path filtering "
                    f"is on for {device} (the kernel uses the larger of all and {device}), and "
                    f"clients are not routed via {device}",
                    f"echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter; "
                    f"echo 0 > /proc/sys/net/ipv4/conf/{device}/rp_filter"))
    return problems


def summary(mode: str, vips: list[str], director: str | None) -> str:
    """One line describing a correctly configured host (printed by --check when all is well)."""
    if mode == "nat":
        return f"default route via the director {director}"
    device = "lo" if mode == "dr" else (KERNEL_TUNNEL if os.path.exists(
        conf_path("ipv4", KERNEL_TUNNEL, "arp_ignore")) else USER_TUNNEL)
    text = f"VIP {', '.join(vips)} on {device}, ARP for it neither answered nor announced"
    if mode == "tun":
        text += ", rp_filter off"
        if device == USER_TUNNEL:
            text += f", user-space decapsulator running (pid {running_decap_pid()})"
    return text
