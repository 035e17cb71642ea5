"""Kernel IPVS as a backend: the model applied to the kernel's table over generic netlink (pyroute2).

Theory of operation
-------------------
ipvsadm (through libipvs) talks to the kernel's "IPVS" generic-netlink family; this module sends the
same commands with pyroute2's GenericNetlinkSocket and our own attribute maps (below), which follow
``include/uapi/linux/ip_vs.h``.  We keep our own maps because pyroute2's lack several things the
kernel has: the tunnel attributes' byte order (TUN_PORT is big-endian), the daemon and info
attribute sets, and raw 16-byte addresses (the kernel always sends a ``union nf_inet_addr``).

Encoding facts worth knowing (all from ip_vs_ctl.c / libipvs):

* Addresses are 16 bytes on the wire; IPv4 uses the first 4.
* The service netmask is a ``__be32``: for IPv4 the mask's bytes in network order; for IPv6 the
  kernel stores the *prefix length* in that field unchanged, so it travels as a native-order u32.
* Service flags travel as ``struct ip_vs_flags {flags, mask}``; we send the whole word (mask ~0),
  never the kernel-internal HASHED bit.
* NEW/SET_SERVICE need every attribute (scheduler, flags, timeout, netmask); NEW/SET_DEST need
  address, port, forwarding method, weight and both thresholds.
* Errors come back as negative errno in the netlink ACK; they become ``IPVSError(errno)`` unchanged,
  which is the contract of ``backends.base``: the CLI turns them into ipvsadm's messages.

Connections are not in the netlink API: like ipvsadm, we read /proc/net/ip_vs_conn (it holds IPv4
and IPv6 rows; the latter are printed with %pI6, eight groups of four hex digits).
"""
from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
import shutil
import struct
import subprocess
import threading
from typing import Optional

from lvsuser import model
from lvsuser.backends.base import Backend, BackendUnavailable
from lvsuser.model import (Dest, Forward, IPVSError, Service, ServiceKey, Stats, SyncDaemon,
                           Timeouts, TunType)

try:
    from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, genlmsg, nla
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.generic import GenericNetlinkSocket
except ImportError as exc:  # pragma: no cover - pyroute2 is a hard dependency
    raise ImportError(f"pyroute2 is required for the kernel IPVS backend: {exc}") from exc

GENL_FAMILY = "IPVS"
GENL_VERSION = 1

# IPVS_CMD_* (include/uapi/linux/ip_vs.h)
CMD_NEW_SERVICE = 1
CMD_SET_SERVICE = 2
CMD_DEL_SERVICE = 3
CMD_GET_SERVICE = 4
CMD_NEW_DEST = 5
CMD_SET_DEST = 6
CMD_DEL_DEST = 7
CMD_GET_DEST = 8
CMD_NEW_DAEMON = 9
CMD_DEL_DAEMON = 10
CMD_GET_DAEMON = 11
CMD_SET_CONFIG = 12
CMD_GET_CONFIG = 13
CMD_GET_INFO = 15
CMD_ZERO = 16
CMD_FLUSH = 17

# IP_VS_STATE_* for the sync daemon
DAEMON_STATES = {"master": 1, "backup": 2}

PROC_CONN = "/proc/net/ip_vs_conn"
UNAVAILABLE = ("kernel IPVS is not available on this host (the ip_vs module is missing); "
               "run with --backend userspace instead")


class _Stats:
    """Counter attributes shared by services and dests (IPVS_STATS_ATTR_*)."""

    class stats(nla):
        nla_map = (
            ("IPVS_STATS_ATTR_UNSPEC", "none"),
            ("IPVS_STATS_ATTR_CONNS", "uint32"),
            ("IPVS_STATS_ATTR_INPKTS", "uint32"),
            ("IPVS_STATS_ATTR_OUTPKTS", "uint32"),
            ("IPVS_STATS_ATTR_INBYTES", "uint64"),
            ("IPVS_STATS_ATTR_OUTBYTES", "uint64"),
            ("IPVS_STATS_ATTR_CPS", "uint32"),
            ("IPVS_STATS_ATTR_INPPS", "uint32"),
            ("IPVS_STATS_ATTR_OUTPPS", "uint32"),
            ("IPVS_STATS_ATTR_INBPS", "uint32"),
            ("IPVS_STATS_ATTR_OUTBPS", "uint32"),
            ("IPVS_STATS_ATTR_PAD", "none"),
        )

    class stats64(nla):
        nla_map = (
            ("IPVS_STATS_ATTR_UNSPEC", "none"),
            ("IPVS_STATS_ATTR_CONNS", "uint64"),
            ("IPVS_STATS_ATTR_INPKTS", "uint64"),
            ("IPVS_STATS_ATTR_OUTPKTS", "uint64"),
            ("IPVS_STATS_ATTR_INBYTES", "uint64"),
            ("IPVS_STATS_ATTR_OUTBYTES", "uint64"),
            ("IPVS_STATS_ATTR_CPS", "uint64"),
            ("IPVS_STATS_ATTR_INPPS", "uint64"),
            ("IPVS_STATS_ATTR_OUTPPS", "uint64"),
            ("IPVS_STATS_ATTR_INBPS", "uint64"),
            ("IPVS_STATS_ATTR_OUTBPS", "uint64"),
            ("IPVS_STATS_ATTR_PAD", "none"),
        )


class ipvs_msg(genlmsg):
    """Requests and replies of every IPVS command except GET_INFO (see ipvs_info_msg)."""

    prefix = "IPVS_CMD_ATTR_"
    nla_map = (
        ("IPVS_CMD_ATTR_UNSPEC", "none"),
        ("IPVS_CMD_ATTR_SERVICE", "service"),
        ("IPVS_CMD_ATTR_DEST", "dest"),
        ("IPVS_CMD_ATTR_DAEMON", "daemon"),
        ("IPVS_CMD_ATTR_TIMEOUT_TCP", "uint32"),
        ("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN", "uint32"),
        ("IPVS_CMD_ATTR_TIMEOUT_UDP", "uint32"),
    )

    class service(nla, _Stats):
        prefix = "IPVS_SVC_ATTR_"
        nla_map = (
            ("IPVS_SVC_ATTR_UNSPEC", "none"),
            ("IPVS_SVC_ATTR_AF", "uint16"),
            ("IPVS_SVC_ATTR_PROTOCOL", "uint16"),
            ("IPVS_SVC_ATTR_ADDR", "cdata"),  # 16 bytes, union nf_inet_addr
            ("IPVS_SVC_ATTR_PORT", "be16"),
            ("IPVS_SVC_ATTR_FWMARK", "uint32"),
            ("IPVS_SVC_ATTR_SCHED_NAME", "asciiz"),
            ("IPVS_SVC_ATTR_FLAGS", "flags"),
            ("IPVS_SVC_ATTR_TIMEOUT", "uint32"),
            ("IPVS_SVC_ATTR_NETMASK", "cdata"),  # __be32; see the module docstring
            ("IPVS_SVC_ATTR_STATS", "stats"),
            ("IPVS_SVC_ATTR_PE_NAME", "asciiz"),
            ("IPVS_SVC_ATTR_STATS64", "stats64"),
        )

        class flags(nla):
            fields = (("flags", "I"), ("mask", "I"))

    class dest(nla, _Stats):
        prefix = "IPVS_DEST_ATTR_"
        nla_map = (
            ("IPVS_DEST_ATTR_UNSPEC", "none"),
            ("IPVS_DEST_ATTR_ADDR", "cdata"),
            ("IPVS_DEST_ATTR_PORT", "be16"),
            ("IPVS_DEST_ATTR_FWD_METHOD", "uint32"),
            ("IPVS_DEST_ATTR_WEIGHT", "uint32"),
            ("IPVS_DEST_ATTR_U_THRESH", "uint32"),
            ("IPVS_DEST_ATTR_L_THRESH", "uint32"),
            ("IPVS_DEST_ATTR_ACTIVE_CONNS", "uint32"),
            ("IPVS_DEST_ATTR_INACT_CONNS", "uint32"),
            ("IPVS_DEST_ATTR_PERSIST_CONNS", "uint32"),
            ("IPVS_DEST_ATTR_STATS", "stats"),
            ("IPVS_DEST_ATTR_ADDR_FAMILY", "uint16"),
            ("IPVS_DEST_ATTR_STATS64", "stats64"),
            ("IPVS_DEST_ATTR_TUN_TYPE", "uint8"),
            ("IPVS_DEST_ATTR_TUN_PORT", "be16"),
            ("IPVS_DEST_ATTR_TUN_FLAGS", "uint16"),
        )

    class daemon(nla):
        prefix = "IPVS_DAEMON_ATTR_"
        nla_map = (
            ("IPVS_DAEMON_ATTR_UNSPEC", "none"),
            ("IPVS_DAEMON_ATTR_STATE", "uint32"),
            ("IPVS_DAEMON_ATTR_MCAST_IFN", "asciiz"),
            ("IPVS_DAEMON_ATTR_SYNC_ID", "uint32"),
            ("IPVS_DAEMON_ATTR_SYNC_MAXLEN", "uint16"),
            ("IPVS_DAEMON_ATTR_MCAST_GROUP", "cdata"),
            ("IPVS_DAEMON_ATTR_MCAST_GROUP6", "cdata"),
            ("IPVS_DAEMON_ATTR_MCAST_PORT", "uint16"),
            ("IPVS_DAEMON_ATTR_MCAST_TTL", "uint8"),
        )


class ipvs_info_msg(genlmsg):
    """GET_INFO's reply uses its own attribute numbers (IPVS_INFO_ATTR_*)."""

    prefix = "IPVS_INFO_ATTR_"
    nla_map = (
        ("IPVS_INFO_ATTR_UNSPEC", "none"),
        ("IPVS_INFO_ATTR_VERSION", "uint32"),
        ("IPVS_INFO_ATTR_CONN_TAB_SIZE", "uint32"),
    )


# --- encoding helpers ---------------------------------------------------------------------------
def _addr_bytes(addr: model.IPAddress) -> bytes:
    return addr.packed.ljust(16, b"\0")


def _addr_from(af: int, raw: bytes) -> model.IPAddress:
    if af == model.AF_INET6:
        return ipaddress.IPv6Address(bytes(raw[:16]))
    return ipaddress.IPv4Address(bytes(raw[:4]))


def _netmask_bytes(af: int, netmask: int) -> bytes:
    if af == model.AF_INET6:
        return struct.pack("=I", netmask)  # a prefix length, stored as is
    return struct.pack("!I", netmask)  # a mask, network order


def _netmask_from(af: int, raw: bytes) -> int:
    if af == model.AF_INET6:
        return struct.unpack("=I", bytes(raw[:4]))[0]
    return struct.unpack("!I", bytes(raw[:4]))[0]


def _stats_from(attrs) -> Stats:
    stats = attrs.get_attr("IPVS_SVC_ATTR_STATS64") or attrs.get_attr("IPVS_DEST_ATTR_STATS64")
    if stats is None:
        stats = attrs.get_attr("IPVS_SVC_ATTR_STATS") or attrs.get_attr("IPVS_DEST_ATTR_STATS")
    if stats is None:
        return Stats()

    def get(name: str) -> int:
        return stats.get_attr("IPVS_STATS_ATTR_" + name) or 0

    return Stats(conns=get("CONNS"), inpkts=get("INPKTS"), outpkts=get("OUTPKTS"),
                 inbytes=get("INBYTES"), outbytes=get("OUTBYTES"), cps=get("CPS"),
                 inpps=get("INPPS"), outpps=get("OUTPPS"), inbps=get("INBPS"), outbps=get("OUTBPS"))


def _service_key_attrs(key: ServiceKey) -> list:
    attrs = [("IPVS_SVC_ATTR_AF", key.af)]
    if key.fwmark:
        attrs.append(("IPVS_SVC_ATTR_FWMARK", key.fwmark))
    else:
        attrs += [("IPVS_SVC_ATTR_PROTOCOL", key.protocol),
                  ("IPVS_SVC_ATTR_ADDR", _addr_bytes(key.addr)),
                  ("IPVS_SVC_ATTR_PORT", key.port)]
    return attrs


def _service_attrs(svc: Service) -> list:
    attrs = _service_key_attrs(svc.key)
    attrs += [("IPVS_SVC_ATTR_SCHED_NAME", svc.scheduler),
              ("IPVS_SVC_ATTR_FLAGS", {"flags": svc.flags & ~model.SVC_F_HASHED,
                                       "mask": 0xFFFFFFFF}),
              ("IPVS_SVC_ATTR_TIMEOUT", svc.timeout),
              ("IPVS_SVC_ATTR_NETMASK", _netmask_bytes(svc.af, svc.netmask))]
    if svc.pe_name:
        attrs.append(("IPVS_SVC_ATTR_PE_NAME", svc.pe_name))
    return attrs


def _dest_attrs(dest: Dest, with_settings: bool = True) -> list:
    attrs = [("IPVS_DEST_ATTR_ADDR", _addr_bytes(dest.addr)),
             ("IPVS_DEST_ATTR_PORT", dest.port),
             ("IPVS_DEST_ATTR_ADDR_FAMILY", model.af_of(dest.addr))]
    if with_settings:
        attrs += [("IPVS_DEST_ATTR_FWD_METHOD", int(dest.fwd) & model.FWD_MASK),
                  ("IPVS_DEST_ATTR_WEIGHT", dest.weight & 0xFFFFFFFF),
                  ("IPVS_DEST_ATTR_U_THRESH", dest.u_threshold & 0xFFFFFFFF),
                  ("IPVS_DEST_ATTR_L_THRESH", dest.l_threshold & 0xFFFFFFFF),
                  ("IPVS_DEST_ATTR_TUN_TYPE", int(dest.tun_type)),
                  ("IPVS_DEST_ATTR_TUN_PORT", dest.tun_port),
                  ("IPVS_DEST_ATTR_TUN_FLAGS", dest.tun_flags)]
    return attrs


def _service_from(attrs) -> Service:
    af = attrs.get_attr("IPVS_SVC_ATTR_AF")
    fwmark = attrs.get_attr("IPVS_SVC_ATTR_FWMARK") or 0
    flags = attrs.get_attr("IPVS_SVC_ATTR_FLAGS")
    netmask_raw = attrs.get_attr("IPVS_SVC_ATTR_NETMASK")
    svc = Service(
        af=af,
        protocol=0 if fwmark else attrs.get_attr("IPVS_SVC_ATTR_PROTOCOL"),
        addr=None if fwmark else _addr_from(af, attrs.get_attr("IPVS_SVC_ATTR_ADDR")),
        port=0 if fwmark else attrs.get_attr("IPVS_SVC_ATTR_PORT"),
        fwmark=fwmark,
        scheduler=attrs.get_attr("IPVS_SVC_ATTR_SCHED_NAME") or "",
        flags=flags["flags"] if flags is not None else 0,
        timeout=attrs.get_attr("IPVS_SVC_ATTR_TIMEOUT") or 0,
        netmask=_netmask_from(af, netmask_raw) if netmask_raw is not None else 0,
        pe_name=attrs.get_attr("IPVS_SVC_ATTR_PE_NAME") or "",
    )
    svc.stats = _stats_from(attrs)
    return svc


def _dest_from(attrs, svc_af: int) -> Dest:
    af = attrs.get_attr("IPVS_DEST_ATTR_ADDR_FAMILY") or svc_af
    dest = Dest(
        addr=_addr_from(af, attrs.get_attr("IPVS_DEST_ATTR_ADDR")),
        port=attrs.get_attr("IPVS_DEST_ATTR_PORT"),
        fwd=Forward(attrs.get_attr("IPVS_DEST_ATTR_FWD_METHOD") & model.FWD_MASK),
        weight=attrs.get_attr("IPVS_DEST_ATTR_WEIGHT"),
        u_threshold=attrs.get_attr("IPVS_DEST_ATTR_U_THRESH") or 0,
        l_threshold=attrs.get_attr("IPVS_DEST_ATTR_L_THRESH") or 0,
        tun_type=TunType(attrs.get_attr("IPVS_DEST_ATTR_TUN_TYPE") or 0),
        tun_port=attrs.get_attr("IPVS_DEST_ATTR_TUN_PORT") or 0,
        tun_flags=attrs.get_attr("IPVS_DEST_ATTR_TUN_FLAGS") or 0,
        af=af,
        activeconns=attrs.get_attr("IPVS_DEST_ATTR_ACTIVE_CONNS") or 0,
        inactconns=attrs.get_attr("IPVS_DEST_ATTR_INACT_CONNS") or 0,
        persistconns=attrs.get_attr("IPVS_DEST_ATTR_PERSIST_CONNS") or 0,
    )
    dest.stats = _stats_from(attrs)
    return dest


def _proc_addr(text: str) -> model.IPAddress:
    """/proc/net/ip_vs_conn prints IPv4 as 8 hex digits and IPv6 with %pI6 (colon groups)."""
    if ":" in text:
        return ipaddress.IPv6Address(text)
    return ipaddress.IPv4Address(int(text, 16))


def parse_proc_conn(text: str) -> list[dict]:
    """Rows of /proc/net/ip_vs_conn as the Backend contract describes them."""
    rows = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 9:
            continue  # a malformed line: skip it rather than fail the whole listing
        try:
            rows.append({
                "protocol": fields[0],
                "caddr": _proc_addr(fields[1]), "cport": int(fields[2], 16),
                "vaddr": _proc_addr(fields[3]), "vport": int(fields[4], 16),
                "daddr": _proc_addr(fields[5]), "dport": int(fields[6], 16),
                "state": fields[7], "expires": int(fields[8]),
                "pe_name": fields[9] if len(fields) > 9 else "",
                "pe_data": fields[10] if len(fields) > 10 else "",
            })
        except ValueError:
            continue
    return rows


class IPVSBackend(Backend):
    """Drives the running kernel's IPVS; needs root (CAP_NET_ADMIN) and the ip_vs module."""

    name = "ipvs"

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one request at a time on the socket
        self._sock = self._open(ipvs_msg)

    # --- plumbing -------------------------------------------------------------------------
    @staticmethod
    def _open(msg_class):
        """A socket bound to the IPVS family; loads ip_vs once, as libipvs does, if needed."""
        for attempt in range(2):
            sock = GenericNetlinkSocket()
            try:
                sock.bind(GENL_FAMILY, msg_class)
                return sock
            except NetlinkError as exc:
                sock.close()
                if exc.code == errno.EPERM:
                    raise BackendUnavailable("kernel IPVS needs root (CAP_NET_ADMIN); run lvsuser "
                                             "as root or with --backend userspace") from None
                if attempt == 0 and _load_ip_vs_module():
                    continue
                raise BackendUnavailable(UNAVAILABLE) from None
            except OSError:
                sock.close()
                raise BackendUnavailable(UNAVAILABLE) from None
        raise BackendUnavailable(UNAVAILABLE)

    def _request(self, cmd: int, attrs: list, dump: bool = False) -> list:
        msg = ipvs_msg()
        msg["cmd"] = cmd
        msg["version"] = GENL_VERSION
        msg["attrs"] = attrs
        flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
        with self._lock:
            try:
                return list(self._sock.nlm_request(msg, msg_type=self._sock.prid,
                                                   msg_flags=flags))
            except NetlinkError as exc:
                raise IPVSError(exc.code, os.strerror(exc.code)) from None

    # --- batches (ipvsadm -R, rules files) -------------------------------------------------
    BATCH_OPERATIONS = frozenset({"add_service", "edit_service", "del_service", "flush", "zero",
                                  "add_dest", "edit_dest", "del_dest", "set_timeouts"})

    def apply_batch(self, operations: list[tuple[str, dict]]) -> None:
        """Apply (method name, keyword args) pairs all-or-nothing.

        The kernel has no transactions, so before each operation we compute the calls that would
        undo it; on a refusal those undo steps run, newest first, and BatchFailed(index, errno) is
        raised.  Counters zeroed by a `zero` in a refused batch stay zeroed: they cannot be put
        back."""
        from lvsuser.backends.base import BatchFailed

        undo: list[list] = []
        for index, (op, kwargs) in enumerate(operations):
            if op not in self.BATCH_OPERATIONS:
                self._undo(undo)
                raise BatchFailed(index, errno.EINVAL, f"operation {op!r} not allowed in a batch")
            try:
                inverse = self._inverse_of(op, kwargs)
                getattr(self, op)(**kwargs)
            except IPVSError as exc:
                self._undo(undo)
                raise BatchFailed(index, exc.errno, exc.message) from None
            undo.append(inverse)

    def _inverse_of(self, op: str, kwargs: dict) -> list:
        """The calls, in execution order, that undo `op` once it has succeeded."""
        if op == "add_service":
            return [(self.del_service, (kwargs["svc"].key,))]
        if op == "edit_service":
            old = self.get_service(kwargs["svc"].key)
            return [(self.edit_service, (old,))] if old else []
        if op == "del_service":
            old = self.get_service(kwargs["key"])
            return self._recreate(old) if old else []
        if op == "flush":
            calls = []
            for old in self.get_services():
                calls += self._recreate(old)
            return calls
        if op == "add_dest":
            return [(self.del_dest, (kwargs["key"], kwargs["dest"]))]
        if op in ("edit_dest", "del_dest"):
            key = kwargs["key"]
            svc = self.get_service(key)
            old = svc.find_dest(kwargs["dest"].addr, kwargs["dest"].port) if svc else None
            if old is None:
                return []
            if op == "edit_dest":
                return [(self.edit_dest, (key, old))]
            # The kernel adds at the head of its list (newest first), and schedulers such as rr
            # walk that list: to put the dest back in its place, the dests newer than it are
            # taken out and re-added after it (the kernel revives them from its trash, counters
            # included).
            newer = svc.dests[:svc.dests.index(old)]
            calls = [(self.del_dest, (key, d)) for d in newer]
            calls.append((self.add_dest, (key, old)))
            calls += [(self.add_dest, (key, d)) for d in reversed(newer)]
            return calls
        if op == "set_timeouts":
            return [(self.set_timeouts, (self.get_timeouts(),))]
        return []  # zero: counters cannot be restored

    def _recreate(self, svc: Service) -> list:
        """Calls that bring back a deleted service with its dests in the kernel's list order
        (newest first, so the oldest is added first)."""
        return [(self.add_service, (svc,))] + [(self.add_dest, (svc.key, d))
                                               for d in reversed(svc.dests)]

    def _undo(self, undo: list[list]) -> None:
        for calls in reversed(undo):
            for function, args in calls:
                try:
                    function(*args)
                except IPVSError:
                    pass  # best effort: the kernel changed under us; keep undoing the rest

    # --- info -----------------------------------------------------------------------------
    def get_info(self) -> dict:
        sock = self._open(ipvs_info_msg)
        try:
            msg = ipvs_info_msg()
            msg["cmd"] = CMD_GET_INFO
            msg["version"] = GENL_VERSION
            try:
                replies = sock.nlm_request(msg, msg_type=sock.prid,
                                           msg_flags=NLM_F_REQUEST | NLM_F_ACK)
            except NetlinkError as exc:
                raise IPVSError(exc.code, os.strerror(exc.code)) from None
            for reply in replies:
                version = reply.get_attr("IPVS_INFO_ATTR_VERSION")
                if version is not None:
                    return {"version": ((version >> 16) & 0xFF, (version >> 8) & 0xFF,
                                        version & 0xFF),
                            "conn_tab_size": reply.get_attr("IPVS_INFO_ATTR_CONN_TAB_SIZE")}
        finally:
            sock.close()
        raise IPVSError(errno.EIO, "no GET_INFO reply from the kernel")

    # --- services -------------------------------------------------------------------------
    def add_service(self, svc: Service) -> None:
        self._request(CMD_NEW_SERVICE, [("IPVS_CMD_ATTR_SERVICE", {"attrs": _service_attrs(svc)})])

    def edit_service(self, svc: Service) -> None:
        self._request(CMD_SET_SERVICE, [("IPVS_CMD_ATTR_SERVICE", {"attrs": _service_attrs(svc)})])

    def del_service(self, key: ServiceKey) -> None:
        self._request(CMD_DEL_SERVICE,
                      [("IPVS_CMD_ATTR_SERVICE", {"attrs": _service_key_attrs(key)})])

    def _dests_of(self, key: ServiceKey, af: int) -> list[Dest]:
        replies = self._request(CMD_GET_DEST,
                                [("IPVS_CMD_ATTR_SERVICE", {"attrs": _service_key_attrs(key)})],
                                dump=True)
        return [_dest_from(r.get_attr("IPVS_CMD_ATTR_DEST"), af)
                for r in replies if r.get_attr("IPVS_CMD_ATTR_DEST") is not None]

    def get_services(self) -> list[Service]:
        services = []
        for reply in self._request(CMD_GET_SERVICE, [], dump=True):
            attrs = reply.get_attr("IPVS_CMD_ATTR_SERVICE")
            if attrs is None:
                continue
            svc = _service_from(attrs)
            svc.dests = self._dests_of(svc.key, svc.af)
            services.append(svc)
        return services

    def get_service(self, key: ServiceKey) -> Optional[Service]:
        try:
            replies = self._request(CMD_GET_SERVICE,
                                    [("IPVS_CMD_ATTR_SERVICE", {"attrs": _service_key_attrs(key)})])
        except IPVSError as exc:
            if exc.errno in (errno.ESRCH, errno.ENOENT):
                return None
            raise
        for reply in replies:
            attrs = reply.get_attr("IPVS_CMD_ATTR_SERVICE")
            if attrs is not None:
                svc = _service_from(attrs)
                svc.dests = self._dests_of(svc.key, svc.af)
                return svc
        return None

    def flush(self) -> None:
        self._request(CMD_FLUSH, [])

    def zero(self, key: Optional[ServiceKey] = None) -> None:
        attrs = [] if key is None else [("IPVS_CMD_ATTR_SERVICE",
                                         {"attrs": _service_key_attrs(key)})]
        self._request(CMD_ZERO, attrs)

    # --- dests ----------------------------------------------------------------------------
    def _dest_request(self, cmd: int, key: ServiceKey, dest: Dest, with_settings: bool) -> None:
        self._request(cmd, [("IPVS_CMD_ATTR_SERVICE", {"attrs": _service_key_attrs(key)}),
                            ("IPVS_CMD_ATTR_DEST", {"attrs": _dest_attrs(dest, with_settings)})])

    def add_dest(self, key: ServiceKey, dest: Dest) -> None:
        self._dest_request(CMD_NEW_DEST, key, dest, True)

    def edit_dest(self, key: ServiceKey, dest: Dest) -> None:
        self._dest_request(CMD_SET_DEST, key, dest, True)

    def del_dest(self, key: ServiceKey, dest: Dest) -> None:
        self._dest_request(CMD_DEL_DEST, key, dest, False)

    # --- config ---------------------------------------------------------------------------
    def get_timeouts(self) -> Timeouts:
        for reply in self._request(CMD_GET_CONFIG, []):
            tcp = reply.get_attr("IPVS_CMD_ATTR_TIMEOUT_TCP")
            if tcp is not None:
                return Timeouts(tcp=tcp, tcp_fin=reply.get_attr("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN"),
                                udp=reply.get_attr("IPVS_CMD_ATTR_TIMEOUT_UDP"))
        raise IPVSError(errno.EIO, "no GET_CONFIG reply from the kernel")

    def set_timeouts(self, timeouts: Timeouts) -> None:
        self._request(CMD_SET_CONFIG, [("IPVS_CMD_ATTR_TIMEOUT_TCP", timeouts.tcp),
                                       ("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN", timeouts.tcp_fin),
                                       ("IPVS_CMD_ATTR_TIMEOUT_UDP", timeouts.udp)])

    # --- connections ----------------------------------------------------------------------
    def get_connections(self) -> list[dict]:
        try:
            with open(PROC_CONN) as f:
                return parse_proc_conn(f.read())
        except FileNotFoundError:
            return []

    # --- sync daemon ------------------------------------------------------------------------
    def start_daemon(self, daemon: SyncDaemon) -> None:
        if daemon.state not in DAEMON_STATES:
            raise IPVSError(errno.EINVAL, f"unknown daemon state {daemon.state!r}")
        attrs = [("IPVS_DAEMON_ATTR_STATE", DAEMON_STATES[daemon.state]),
                 ("IPVS_DAEMON_ATTR_MCAST_IFN", daemon.mcast_ifn),
                 ("IPVS_DAEMON_ATTR_SYNC_ID", daemon.syncid)]
        # Optional settings (ipvsadm --sync-maxlen, --mcast-group/port/ttl), sent when the model
        # carries them; the kernel picks its defaults for the rest.
        maxlen = getattr(daemon, "sync_maxlen", 0)
        if maxlen:
            attrs.append(("IPVS_DAEMON_ATTR_SYNC_MAXLEN", maxlen))
        group = getattr(daemon, "mcast_group", None)
        if group:
            group = ipaddress.ip_address(group)
            attrs.append(("IPVS_DAEMON_ATTR_MCAST_GROUP6" if group.version == 6
                          else "IPVS_DAEMON_ATTR_MCAST_GROUP", group.packed))
        port = getattr(daemon, "mcast_port", 0)
        if port:
            attrs.append(("IPVS_DAEMON_ATTR_MCAST_PORT", port))
        ttl = getattr(daemon, "mcast_ttl", 0)
        if ttl:
            attrs.append(("IPVS_DAEMON_ATTR_MCAST_TTL", ttl))
        self._request(CMD_NEW_DAEMON, [("IPVS_CMD_ATTR_DAEMON", {"attrs": attrs})])

    def stop_daemon(self, state: str) -> None:
        if state not in DAEMON_STATES:
            raise IPVSError(errno.EINVAL, f"unknown daemon state {state!r}")
        self._request(CMD_DEL_DAEMON, [("IPVS_CMD_ATTR_DAEMON",
                                        {"attrs": [("IPVS_DAEMON_ATTR_STATE",
                                                    DAEMON_STATES[state])]})])

    def get_daemons(self) -> list[SyncDaemon]:
        names = {v: k for k, v in DAEMON_STATES.items()}
        daemons = []
        for reply in self._request(CMD_GET_DAEMON, [], dump=True):
            attrs = reply.get_attr("IPVS_CMD_ATTR_DAEMON")
            if attrs is None:
                continue
            state = names.get(attrs.get_attr("IPVS_DAEMON_ATTR_STATE"))
            if state is None:
                continue
            values = {"state": state, "mcast_ifn": attrs.get_attr("IPVS_DAEMON_ATTR_MCAST_IFN"),
                      "syncid": attrs.get_attr("IPVS_DAEMON_ATTR_SYNC_ID") or 0}
            group = (attrs.get_attr("IPVS_DAEMON_ATTR_MCAST_GROUP6")
                     or attrs.get_attr("IPVS_DAEMON_ATTR_MCAST_GROUP"))
            optional = {
                "sync_maxlen": attrs.get_attr("IPVS_DAEMON_ATTR_SYNC_MAXLEN"),
                "mcast_group": ipaddress.ip_address(bytes(group)) if group else None,
                "mcast_port": attrs.get_attr("IPVS_DAEMON_ATTR_MCAST_PORT"),
                "mcast_ttl": attrs.get_attr("IPVS_DAEMON_ATTR_MCAST_TTL"),
            }
            # The kernel reports maxlen/group/port/ttl too; pass them on where the model has room.
            known = {field.name for field in dataclasses.fields(SyncDaemon)}
            values.update({k: v for k, v in optional.items() if k in known and v is not None})
            daemons.append(SyncDaemon(**values))
        return daemons

    def close(self, keep_state: bool = False) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def _load_ip_vs_module() -> bool:
    """`modprobe ip_vs`, as libipvs does when the family is missing; True if it may now exist."""
    modprobe = shutil.which("modprobe") or ("/sbin/modprobe" if os.path.exists("/sbin/modprobe")
                                            else None)
    if modprobe is None or not os.path.isdir(f"/lib/modules/{os.uname().release}"):
        return False
    try:
        done = subprocess.run([modprobe, "-q", "ip_vs"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


__all__ = ["IPVSBackend", "parse_proc_conn"]
