"""The user-space backend: the IPVS table (TableBackend) driving the datapath core.

Theory of operation
-------------------
``TableBackend`` keeps the virtual-service table with kernel semantics and calls ``_changed()``
after every successful change.  We turn the table plus what the kernel says about this namespace
(interfaces, routes and neighbours towards each real server, which VIPs are local) into one
``CoreConfig`` and publish it; the core adopts it between batches.  The same republish runs when
the netlink monitor reports a change, so the core's MACs and egress interfaces follow the
kernel's.  A publish is skipped when nothing the core sees has changed.

Driver threads run the I/O loop (``AfPacketDriver`` or ``TunDriver`` from ``lvsuser._fastpath``),
which holds the GIL only around the Python parts of a batch.  With ``io='afpacket'`` an nftables
guard keeps the director's kernel out of VIP traffic (director/guard.py), watched and put back
when something removes or changes it (director/guardwatch.py); with ``io='tun'``
policy routes steer that traffic into the TUN device instead (director/tunroutes.py).

``close()`` stops the threads and removes everything this backend added: nft table, rules,
routes, sysctls, the TUN device -- except, with ``keep_state=True``, the guard table, which
keeps the kernel quiet until the restarted director adopts it.  It is idempotent and also runs
from ``atexit``.  Given its control socket, the backend also claims the network namespace (one
director per namespace, director/instance.py) and releases it last in ``close()``.
"""
from __future__ import annotations

import atexit
import contextlib
import copy
import errno
import inspect
import logging
import os
import shutil
import sys
import threading
import time
from typing import Optional

from lvsuser import model, statedir
from lvsuser.backends.base import CONNECTIONS_PAGE, BackendUnavailable
from lvsuser.backends.table import TableBackend
from lvsuser.director import guard as guard_mod
from lvsuser.director import instance
from lvsuser.director.forwarding import Resolver, mac_bytes
from lvsuser.director.guardwatch import GuardWatch
from lvsuser.director.monitor import Monitor
from lvsuser.fastpath import config as cfg

log = logging.getLogger(__name__)

IO_AFPACKET = "afpacket"
IO_TUN = "tun"
# How the AF_PACKET driver transmits: "ring" (TPACKET_V2 TX ring, zero-copy from the ring pages)
# or "mmsg" (sendmmsg straight from the batch; the kernel copies into a linear skb).  Veth peers
# in another namespace must copy ring pages anyway, so "mmsg" can be the cheaper one there.
AFPACKET_TX_ENV = "LVSUSER_AFPACKET_TX"
# Microseconds the AF_PACKET driver watches its RX rings for the next frame, after a wake-up that
# found some, before it sleeps in poll() again (0: always poll).  Idle, it sleeps as before.
# Off by default.  Measured on the bench (2 vCPUs shared by client, director and real servers;
# 3 rounds x 3 s alternating, `python3 -m bench --only forward,lvsuser-nat-afpacket,
# lvsuser-dr-afpacket --metrics udp_flows_pps,http_p50_us`), 0 against 20 us:
#   64-byte UDP pps   NAT 511,898 / 496,079   DR 510,841 / 510,962   (no gain)
#   HTTP p50          NAT 83 / 46 us          DR 49 / 38 us           (the reply comes within the spin)
#   HTTP p99          NAT 196 / 302 us        DR 211 / 1,620 us       (the spinner holds a CPU the
#                                                                      servers and client need)
# (sched_yield() inside the spin did not help the tail.)  On a host whose director has a core of
# its own the spin is worth turning on: it trades a busy core for the wake-up latency.
AFPACKET_BUSY_POLL_ENV = "LVSUSER_AFPACKET_BUSY_POLL_US"
AFPACKET_BUSY_POLL_DEFAULT = 0


def afpacket_busy_poll_us() -> int:
    """The spin budget from the environment: an integer 0..10000, else the default."""
    text = os.environ.get(AFPACKET_BUSY_POLL_ENV, "").strip()
    if not text:
        return AFPACKET_BUSY_POLL_DEFAULT
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 10000:
        raise BackendUnavailable(f"{AFPACKET_BUSY_POLL_ENV}={text!r}: expected microseconds, 0..10000.")
    return value


# Connection-table size when none is given.  The table allocates as it fills (~50 bytes an entry),
# so a roomy bound costs nothing until used; 4M holds ~10 s of a 400k/s new-flow flood at the
# 300 s UDP timeout, where 1M was full within 3 s and refused every new connection after that.
DEFAULT_MAX_CONNS = 1 << 22
DATAPATH_SWITCH_INTERVAL = 0.0005  # seconds (sys.setswitchinterval), see UserspaceBackend


def _load_core(max_conns: int = DEFAULT_MAX_CONNS, state_path: Optional[str] = None):
    """The compiled core if it is built, else the pure-Python reference.

    ``state_path``: the file the compiled core keeps its connections and real-server slots in
    (``<state dir>/datapath.map``), to adopt them again after a restart."""
    try:
        from lvsuser import _fastpath

        if hasattr(_fastpath, "Core"):
            if state_path is None:
                return _fastpath.Core(max_conns=max_conns)
            os.makedirs(os.path.dirname(state_path), mode=0o700, exist_ok=True)
            try:
                return _fastpath.Core(max_conns=max_conns, state_path=state_path)
            except cfg.StateError as exc:
                raise BackendUnavailable(f"{exc} (`lvsuser run --clean` starts afresh and "
                                         f"discards it).") from exc
    except ImportError:
        pass
    try:
        from lvsuser import pyfastpath

        return pyfastpath.Core(max_conns=max_conns)
    except ImportError as exc:
        raise BackendUnavailable(f"the datapath core is not available ({exc}).") from exc


def _publish_refused(exc: Exception) -> model.IPVSError:
    """The IPVSError a client gets when the datapath or the guard refuses a new table, with the
    errno the kernel would give for the like (no memory, an invalid table, an I/O failure)."""
    if isinstance(exc, MemoryError):
        code = errno.ENOMEM
    elif isinstance(exc, (ValueError, TypeError)):
        code = errno.EINVAL
    elif isinstance(exc, OSError) and exc.errno:
        code = exc.errno
    else:
        code = errno.EIO
    log.error("the datapath refused the new table, which is left as it was: %s", exc)
    return model.IPVSError(code, f"the datapath refused the new table: {exc}")


def _drivers_module():
    try:
        from lvsuser import _fastpath
    except ImportError as exc:
        raise BackendUnavailable(
            "the compiled datapath lvsuser._fastpath is missing: run "
            "`python3 setup.py build_ext --inplace`.") from exc
    if not hasattr(_fastpath, "AfPacketDriver"):
        raise BackendUnavailable("lvsuser._fastpath was built without its I/O drivers; rebuild it.")
    return _fastpath


class UserspaceBackend(TableBackend):
    name = "userspace"

    def __init__(self, io: str = IO_AFPACKET, interfaces: Optional[list[str]] = None,
                 core=None, tun_name: Optional[str] = None,
                 max_conns: int = DEFAULT_MAX_CONNS,
                 initial: Optional[list[tuple[str, dict]]] = None,
                 state_dir: Optional[str] = None, control_path: Optional[str] = None):
        """``initial``: the batch that fills the table before the first publish (saved rules
        or a rules file), so an adopted datapath never sees an empty table; ``state_dir``:
        where the core keeps what outlives the process (statedir.py).  ``control_path``: the
        director's control socket.  Given it, the backend claims the network namespace (one
        director per namespace, director/instance.py) and names its guard table after the
        director's state tag, so a restarted director adopts it."""
        if io not in (IO_AFPACKET, IO_TUN):
            raise BackendUnavailable(f"unknown I/O driver {io!r}: use 'afpacket' or 'tun'.")
        if os.geteuid() != 0:
            raise BackendUnavailable("the userspace backend needs root (raw sockets, nftables, routes).")
        if io == IO_AFPACKET and shutil.which("nft") is None:
            raise BackendUnavailable("the nft command (package nftables) is needed to keep the "
                                     "director's kernel out of VIP traffic.")
        if io == IO_TUN and not os.path.exists("/dev/net/tun"):
            raise BackendUnavailable("--io tun needs /dev/net/tun (the tun kernel module).")
        self.io = io  # before the table is filled: add_dest checks it
        super().__init__(initial)
        self._fastpath = _drivers_module()
        state_path = os.path.join(state_dir, statedir.DATAPATH_FILE) if state_dir else None
        self.core = core if core is not None else _load_core(max_conns, state_path)
        # Publishing takes TableBackend's lock (_changed() already runs under it, the monitor
        # thread takes it too: one lock order).  _core_lock is held around every call into the
        # core from Python (publish, stats, and for the pure-Python core each batch): the C core
        # swaps its tables itself, the reference core does not.
        self._core_lock = threading.Lock()
        # The driver thread takes the GIL between batches (expiry, statistics); a control thread
        # busy with Python (a listing, a reload) hands it over only every switch interval, 5 ms
        # by default, which the datapath would feel as a gap: ask for a quicker hand-over.
        if sys.getswitchinterval() > DATAPATH_SWITCH_INTERVAL:
            sys.setswitchinterval(DATAPATH_SWITCH_INTERVAL)
        self._closed = False
        self._published_key = None
        self._kernel_view = None  # local addresses at the last refresh (None: none yet)
        self._egress: dict = {}  # real-server address -> forwarding.Egress, at the last refresh
        self._threads: list[threading.Thread] = []
        self._drivers: list = []
        self._guard: Optional[guard_mod.Guard] = None
        self._tunroutes = None
        self._tun = None
        self._monitor: Optional[Monitor] = None
        self._guard_watch: Optional[GuardWatch] = None
        self.control_path = control_path
        self._claim: Optional[instance.NamespaceClaim] = None
        if control_path is not None:
            try:
                self._claim = instance.claim_namespace(control_path)
            except instance.NamespaceTaken as exc:
                raise BackendUnavailable(str(exc)) from exc
            except OSError as exc:
                raise BackendUnavailable(f"cannot claim this network namespace: {exc}.") from exc
        self.resolver = Resolver()
        try:
            links = self.resolver.links()
            self._interface_names = list(interfaces) if interfaces else None
            self.interfaces = self._pick_interfaces(links, interfaces)
            if io == IO_AFPACKET:
                self._guard = guard_mod.Guard.for_director(control_path)
                guard_mod.sweep_stale(own=self._guard.table, claimed=self._claim is not None)
                self._start_afpacket(links)
                self._log_served()
            else:
                self._start_tun(tun_name)
            try:
                self._republish()
            except guard_mod.GuardError as exc:
                raise BackendUnavailable(f"cannot install the nftables guard: {exc}.") from exc
            self._monitor = Monitor(self._republish_quietly).start()
            if self._guard is not None:
                self._guard_watch = GuardWatch(self._guard).start()
        except BaseException:
            self.close()
            raise
        atexit.register(self.close)

    # --- interfaces and drivers -------------------------------------------------------------
    @staticmethod
    def _pick_interfaces(links: dict, names: Optional[list[str]]) -> dict[int, dict]:
        """ifindex -> link info of the interfaces to serve: the named ones, or by default every
        Ethernet-like interface that carries addresses itself -- a bridge, not its ports, whose
        frames for us reach the bridge device anyway (and would otherwise be seen twice)."""
        if names:
            by_name = {info["name"]: (idx, info) for idx, info in links.items()}
            chosen = {}
            for name in names:
                if name not in by_name:
                    raise BackendUnavailable(f"there is no interface named {name!r} in this namespace.")
                idx, info = by_name[name]
                chosen[idx] = info
            return chosen
        # none at all is fine: at boot the network may not be up yet, and the netlink monitor
        # reports each interface as it appears
        return {idx: info for idx, info in links.items()
                if info["ethernet"] and not info["loopback"] and not info["master"]}

    def _start_thread(self, driver, name: str) -> None:
        thread = threading.Thread(target=driver.run, name=name, daemon=True)
        self._drivers.append(driver)
        self._threads.append(thread)
        thread.start()

    def _log_served(self) -> None:
        names = ", ".join(info["name"] for _, info in sorted(self.interfaces.items()))
        if names:
            log.info("serving interfaces %s", names)
        else:
            log.info("serving no interface yet: each one is served as it appears")

    def _start_afpacket(self, links: dict) -> None:
        ports = [(idx, info["mtu"]) for idx, info in sorted(self.interfaces.items())]
        if not ports:  # no rings to open until an interface appears
            self._served_ports = ports
            return
        try:
            driver = self._fastpath.AfPacketDriver(self.core, ports, self._core_lock,
                                                   os.environ.get(AFPACKET_TX_ENV, "ring"),
                                                   afpacket_busy_poll_us())
        except (OSError, ValueError) as exc:
            raise BackendUnavailable(f"cannot open AF_PACKET rings: {getattr(exc, 'strerror', None) or exc}.") from exc
        self._start_thread(driver, "lvsuser-afpacket")
        self._served_ports = ports

    def _stop_drivers(self) -> None:
        for driver in self._drivers:
            driver.stop()
        for thread in self._threads:
            thread.join(5)
        for driver in self._drivers:
            try:
                driver.close()
            except RuntimeError as exc:
                log.warning("driver did not stop: %s", exc)
        self._drivers, self._threads = [], []

    def _follow_interfaces(self, links: dict) -> None:
        """Serve interfaces that appeared, stop serving those that went (AF_PACKET mode).

        A ring is bound to one ifindex, so a changed set (or MTU) means new rings: the driver is
        restarted; connections live in the core and survive."""
        try:
            wanted = self._pick_interfaces(links, self._interface_names)
        except BackendUnavailable as exc:
            log.warning("%s", exc)
            wanted = {}
        ports = [(idx, info["mtu"]) for idx, info in sorted(wanted.items())]
        self.interfaces = wanted
        if ports == getattr(self, "_served_ports", None):
            return
        self._log_served()
        self._stop_drivers()
        self._served_ports = []
        self._start_afpacket(links)

    def _start_tun(self, tun_name: Optional[str]) -> None:
        from lvsuser.director.tunroutes import TunRoutes

        name = tun_name or f"lvs{os.getpid() % 1000000}"
        mtu = max([info["mtu"] for info in self.interfaces.values()] + [1500])
        try:
            self._tun = self._fastpath.TunDriver(self.core, name, mtu, self._core_lock)
        except OSError as exc:
            raise BackendUnavailable(f"cannot create TUN device {name}: {exc.strerror or exc}.") from exc
        ipr = self.resolver.ipr
        ipr.link("set", index=self._tun.ifindex, state="up", mtu=mtu)
        table = 20000 + os.getpid() % 10000
        self._tunroutes = TunRoutes(ipr, self._tun.ifindex, name, table)
        self._tunroutes.setup()
        self._start_thread(self._tun, "lvsuser-tun")

    # --- real servers the I/O driver cannot serve -------------------------------------------
    def _refuse_unservable_dest(self, dest: model.Dest) -> None:
        # DR rewrites only the Ethernet destination, and the TUN device carries bare IP
        # packets: such a real server would silently get nothing, so refuse it up front.
        if self.io == IO_TUN and dest.fwd == model.Forward.ROUTE:
            reason = (f"real server {dest.addr} refused: direct routing (-g) needs Ethernet "
                      f"frames, which --io tun does not carry; use -m or -i, or run the "
                      f"director with --io afpacket")
            log.error("%s", reason)
            raise model.IPVSError(errno.EINVAL, reason)

    def add_dest(self, key: model.ServiceKey, dest: model.Dest) -> None:
        self._refuse_unservable_dest(dest)
        super().add_dest(key, dest)

    def edit_dest(self, key: model.ServiceKey, dest: model.Dest) -> None:
        self._refuse_unservable_dest(dest)
        super().edit_dest(key, dest)

    # --- publishing -------------------------------------------------------------------------
    # A client's change publishes from what the kernel last told us (links, local addresses,
    # the egress towards each real server), asking netlink only about real-server addresses it
    # has not seen; the monitor's refresh (every second, and after every netlink event) asks
    # again about everything and republishes if the kernel's answers changed.
    def _changed(self) -> None:
        parent = getattr(super(), "_changed", None)
        if parent is not None:
            parent()
        if getattr(self, "_closed", True) or not hasattr(self, "resolver"):
            return
        try:
            self._republish(refresh=False)
        except model.IPVSError:
            raise
        except Exception as exc:
            # The datapath (or nft) refused the new table: the client is told, and the table
            # goes back to what it was (TableBackend.transaction), which is published again.
            raise _publish_refused(exc) from exc

    def _republish_quietly(self) -> None:
        if not self._closed:
            self._republish(refresh=True)

    def _build_config(self, refresh: bool = True) -> tuple[cfg.CoreConfig, list[str]]:
        # The stored services are copied on write by TableBackend: published as they are.
        services = self._dump_order()
        mark_rules = list(self._mark_rules)
        dest_addrs = {dest.addr for svc in services for dest in svc.dests}
        if refresh or self._kernel_view is None:
            links = self.resolver.links()
            # addresses we put on our own TUN device (non-local IPv4 VIPs) do not make a VIP local
            local_addrs = self.resolver.local_addresses(
                exclude_ifindex=self._tun.ifindex if self._tun is not None else 0)
            if self.io == IO_AFPACKET:
                self._follow_interfaces(links)
            self._kernel_view = local_addrs
            self._egress = self.resolver.resolve_all(dest_addrs, probe=True) if dest_addrs else {}
        else:
            local_addrs = self._kernel_view
            unseen = dest_addrs - self._egress.keys()
            if unseen:
                self._egress.update(self.resolver.resolve_all(unseen, probe=True))
        routes = {}
        for addr in dest_addrs:
            eg = self._egress[addr]
            if not eg.ready:
                log.debug("real server %s not reachable yet: %s", addr, eg.reason)
                continue
            if self.io == IO_TUN:
                routes[addr] = cfg.DestRoute(ifindex=self._tun.ifindex, mtu=eg.mtu,
                                             src_addr=eg.src_addr)
            else:
                routes[addr] = cfg.DestRoute(ifindex=eg.ifindex, src_mac=mac_bytes(eg.src_mac),
                                             dst_mac=mac_bytes(eg.dst_mac), mtu=eg.mtu,
                                             src_addr=eg.src_addr)
        local_macs = {idx: mac_bytes(info["mac"]) for idx, info in self.interfaces.items()}
        vips = sorted({svc.addr for svc in services if svc.addr is not None},
                      key=lambda a: (a.version, a))
        proxy = [vip for vip in vips if vip not in local_addrs]
        proxy_vips = {idx: list(proxy) for idx in self.interfaces} if proxy and self.io == IO_AFPACKET else {}
        config = cfg.CoreConfig(services=services, routes=routes, local_macs=local_macs,
                                proxy_vips=proxy_vips, timeouts=copy.copy(self._timeouts),
                                mark_rules=mark_rules,
                                mode=cfg.MODE_L3 if self.io == IO_TUN else cfg.MODE_L2)
        ifnames = [info["name"] for info in self.interfaces.values()]
        self._local_vip_families = {model.af_of(v) for v in vips if v in local_addrs}
        # --io tun: non-local VIPs are answered for by the kernel (tunroutes.apply_proxies); an
        # IPv4 one becomes an address of the TUN device, so the local table must move too
        self._tun_proxies = tuple(sorted(str(v) for v in proxy)) if self.io == IO_TUN else ()
        if any(v.version == 4 for v in proxy) and self.io == IO_TUN:
            self._local_vip_families.add(model.AF_INET)
        return config, ifnames

    def _fingerprint(self, config: cfg.CoreConfig, ifnames: list[str]):
        """What the core and the guard see, as a comparable value (counters excluded)."""
        services = tuple(
            (svc.key, svc.scheduler, svc.flags, svc.timeout, svc.netmask, svc.pe_name,
             tuple((d.addr, d.port, int(d.fwd), d.weight, d.u_threshold, d.l_threshold,
                    int(d.tun_type), d.tun_port, d.tun_flags) for d in svc.dests))
            for svc in config.services)
        routes = tuple(sorted((str(a), r.ifindex, r.src_mac, r.dst_mac, r.mtu, str(r.src_addr))
                              for a, r in config.routes.items()))
        return (services, routes, tuple(sorted(config.local_macs.items())),
                tuple(sorted((k, tuple(v)) for k, v in config.proxy_vips.items())),
                (config.timeouts.tcp, config.timeouts.tcp_fin, config.timeouts.udp),
                tuple(config.mark_rules), config.mode, tuple(sorted(ifnames)),
                tuple(sorted(getattr(self, "_tun_proxies", ()))))

    @contextlib.contextmanager
    def _netlink(self):
        """A netlink handle for this call only.  pyroute2 (0.9) opens its socket in, and for,
        the thread that uses it, so one long-lived handle used from the control server's
        short-lived threads would leave a socket behind per change."""
        from pyroute2 import IPRoute

        ipr = IPRoute()
        saved = self.resolver
        self.resolver = Resolver(ipr)
        if self._tunroutes is not None:
            self._tunroutes.ipr = ipr
        try:
            yield ipr
        finally:
            self.resolver = saved
            if self._tunroutes is not None:
                self._tunroutes.ipr = saved.ipr
            ipr.close()

    def _needs_netlink(self, refresh: bool) -> bool:
        """Whether publishing must ask the kernel: a refresh, the first publish, a real server
        never resolved, or --io tun (its policy routes are applied through netlink)."""
        if refresh or self._kernel_view is None or self._tunroutes is not None:
            return True
        return any(dest.addr not in self._egress
                   for svc in self._services.values() for dest in svc.dests)

    def _republish(self, refresh: bool = True) -> None:
        with self._lock:
            if self._closed:
                return
            if self._needs_netlink(refresh):
                with self._netlink():
                    self._republish_locked(refresh)
            else:
                self._republish_locked(refresh)

    def _republish_locked(self, refresh: bool = True) -> None:
        config, ifnames = self._build_config(refresh)
        key = self._fingerprint(config, ifnames)
        if key == self._published_key:
            return
        # (core.publish validates the configuration itself, before it changes anything)
        # From here the core, the guard and the routes may each hold the new table or the old:
        # until all of them took it, the next publish must not be skipped as "unchanged".
        self._published_key = None
        with self._core_lock:
            self.core.publish(config)
        if self._guard is not None:
            self._guard.apply(ifnames, guard_mod.service_rules(config.services, config.mark_rules))
        if self._tunroutes is not None:
            self._tunroutes.apply(config.services, config.mark_rules, self._local_vip_families)
            self._tunroutes.apply_proxies(
                list(self._tun_proxies), {idx: info["name"] for idx, info in self.interfaces.items()})
        self._published_key = key

    # --- run-time state from the core -----------------------------------------------------
    def _fill_live_state(self, services: list[model.Service]) -> None:
        """Counters, rates and connection counts come from the core, which owns them."""
        with self._core_lock:
            live = {svc.key: svc for svc in self.core.services()}
        for svc in services:
            got = live.get(svc.key)
            if got is None:
                continue
            svc.stats = copy.copy(got.stats)
            for dest in svc.dests:
                live_dest = got.find_dest(dest.addr, dest.port)
                if live_dest is None:
                    continue
                dest.stats = copy.copy(live_dest.stats)
                dest.activeconns = live_dest.activeconns
                dest.inactconns = live_dest.inactconns
                dest.persistconns = live_dest.persistconns

    def _zero_live_counters(self, key) -> None:
        with self._core_lock:
            self.core.zero(key)

    def get_connections(self) -> list[dict]:
        return list(self.iter_connections())

    def get_connections_page(self, cursor: int = 0,
                             limit: int = CONNECTIONS_PAGE) -> tuple[list[dict], int]:
        """A chunk of the core's table: copied under the core's lock, converted outside it."""
        if cursor < 0 or limit <= 0:
            raise model.IPVSError(errno.EINVAL, "bad cursor or page size")
        with self._listing_lock():
            return self.core.connections_chunk(cursor, limit, time.monotonic())

    def _listing_lock(self):
        """What a connection listing holds while it reads the core.  The compiled core's
        connections_chunk takes the core's own lock around the copy (C data only) and builds
        Python objects after releasing it: holding _core_lock as well would stop the driver's
        expiry ticks (which take it) for the whole conversion.  The pure-Python core is read
        under _core_lock, as every call into it."""
        if type(self.core).__module__ == "lvsuser._fastpath":
            return contextlib.nullcontext()
        return self._core_lock

    def core_counters(self) -> dict:
        """The core's per-reason counters (drops, passes, new connections)."""
        with self._core_lock:
            return dict(self.core.counters())

    def get_counters(self) -> dict:
        return {"core": self.core_counters(), "io": self.driver_stats()}

    def driver_stats(self) -> dict:
        out = {}
        for driver in self._drivers:
            for key, value in driver.stats().items():
                out[key] = out.get(key, 0) + value
        return out

    # --- shutdown ---------------------------------------------------------------------------
    def close(self, keep_state: bool = False) -> None:
        """Stop and remove what this backend added.  `keep_state`: the director will be back
        (a restart that adopts its state), so the guard table stays and keeps the kernel out
        of VIP traffic meanwhile; the next director with this control socket adopts it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._monitor is not None:
            self._monitor.stop()
        if self._guard_watch is not None:  # before the guard goes, or it would put it back
            self._guard_watch.stop()
        # what the core and the drivers counted, kept for whoever reads the log (drops by
        # reason, batches): `lvsuser counters` asks a running director for the same
        stats = self.driver_stats()
        self._stop_drivers()
        for title, counters in (("core", self.core_counters()), ("I/O", stats)):
            nonzero = ", ".join(f"{k}={v}" for k, v in counters.items() if v)
            if nonzero:
                log.info("%s counters: %s", title, nonzero)
        if self._guard is not None:
            if keep_state:
                self._guard.forget()
                log.info("nft table netdev %s left in place for the next director", self._guard.table)
            else:
                self._guard.remove()
        if self._tunroutes is not None:
            with self._netlink():
                self._tunroutes.close()
        self.resolver.close()
        parent = getattr(super(), "close", None)
        if parent is not None:
            # Backend.close(keep_state) is the control engineer's; older bases take no argument
            if "keep_state" in inspect.signature(parent).parameters:
                parent(keep_state=keep_state)
            else:
                parent()
        if self._claim is not None:  # last: the namespace is free once we have left it clean
            self._claim.release()
