"""What one ipvsadm command line asks for: ipvsadm's ipvs_service_t, ipvs_dest_t and friends.

These are plain classes holding what the parser fills in, addresses as packed bytes.  Each
knows two ways out:

* ``wire_*()``: the operation's arguments as the control protocol carries them (exactly what
  ``protocol.encode`` makes of the model object), built without importing the model, so that a
  rule change from the command line costs no more than parsing and one message;
* ``to_*()``: the model objects themselves (``protocol.decode`` of the wire form: one source of
  truth), for an in-process backend and for rules files.
"""
from __future__ import annotations

import socket

from lvsuser.control.ipvsadm.constants import AF_INET, AF_INET6, CMD_NONE, CONN_F_DROUTE, CONN_F_FWD_MASK


def _wire_ip(af: int, packed: bytes | None) -> dict:
    if packed is None:
        return {"__ip__": "::" if af == AF_INET6 else "0.0.0.0"}
    return {"__ip__": socket.inet_ntop(AF_INET6 if len(packed) == 16 else AF_INET, packed)}


def _decode(wire):
    from lvsuser.control.protocol import decode

    return decode(wire)


class ServiceArgs:
    """ipvs_service_t as ipvsadm fills it (netmask: IPv4 mask as an int, or IPv6 prefix)."""

    __slots__ = ("af", "protocol", "addr", "port", "fwmark", "sched_name", "flags", "timeout",
                 "netmask", "pe_name")

    def __init__(self) -> None:
        self.af = 0
        self.protocol = 0
        self.addr: bytes | None = None  # packed, 4 or 16 bytes
        self.port = 0
        self.fwmark = 0
        self.sched_name = ""
        self.flags = 0
        self.timeout = 0
        self.netmask = 0xFFFFFFFF
        self.pe_name = ""

    def copy(self) -> "ServiceArgs":
        twin = ServiceArgs()
        for name in self.__slots__:
            setattr(twin, name, getattr(self, name))
        return twin

    def wire_key(self) -> dict:
        if self.fwmark:
            return {"__type__": "ServiceKey", "af": self.af, "fwmark": self.fwmark}
        return {"__type__": "ServiceKey", "af": self.af, "protocol": self.protocol,
                "addr": _wire_ip(self.af, self.addr), "port": self.port}

    def wire_service(self) -> dict:
        return {"__type__": "Service", "af": self.af, "protocol": self.protocol,
                "addr": None if self.fwmark else _wire_ip(self.af, self.addr), "port": self.port,
                "fwmark": self.fwmark, "scheduler": self.sched_name, "flags": self.flags,
                "timeout": self.timeout, "netmask": self.netmask, "pe_name": self.pe_name}

    def key(self):
        """model.ServiceKey"""
        return _decode(self.wire_key())

    def to_service(self):
        """model.Service"""
        return _decode(self.wire_service())


class DestArgs:
    """ipvs_dest_t as ipvsadm fills it."""

    __slots__ = ("af", "addr", "port", "conn_flags", "weight", "u_threshold", "l_threshold",
                 "tun_type", "tun_port", "tun_flags")

    def __init__(self) -> None:
        self.af = 0
        self.addr: bytes | None = None  # packed, 4 or 16 bytes
        self.port = 0
        self.conn_flags = CONN_F_DROUTE
        self.weight = 1
        self.u_threshold = 0
        self.l_threshold = 0
        self.tun_type = 0
        self.tun_port = 0
        self.tun_flags = 0

    def wire_dest(self) -> dict:
        addr = _wire_ip(self.af, self.addr)
        af = self.af or (AF_INET6 if ":" in addr["__ip__"] else AF_INET)
        return {"__type__": "Dest", "addr": addr, "port": self.port,
                "fwd": self.conn_flags & CONN_F_FWD_MASK, "weight": self.weight,
                "u_threshold": self.u_threshold, "l_threshold": self.l_threshold,
                "tun_type": self.tun_type, "tun_port": self.tun_port,
                "tun_flags": self.tun_flags, "af": af}

    def to_dest(self):
        """model.Dest"""
        return _decode(self.wire_dest())


class DaemonArgs:
    """ipvs_daemon_t as ipvsadm fills it (mcast_group as text, "" when not given)."""

    __slots__ = ("state", "mcast_ifn", "syncid", "mcast_group", "mcast_port", "mcast_ttl",
                 "sync_maxlen")

    def __init__(self) -> None:
        self.state = 0
        self.mcast_ifn = ""
        self.syncid = 0
        self.mcast_group = ""
        self.mcast_port = 0
        self.mcast_ttl = 0
        self.sync_maxlen = 0


class CommandEntry:
    """One parsed command line: the command, its arguments, the options given and the format."""

    __slots__ = ("cmd", "svc", "dest", "timeout", "daemon", "options", "format")

    def __init__(self) -> None:
        self.cmd = CMD_NONE
        self.svc = ServiceArgs()
        self.dest = DestArgs()
        self.timeout = (0, 0, 0)  # --set tcp tcpfin udp
        self.daemon = DaemonArgs()
        self.options = 0
        self.format = 0

    def wire_timeouts(self) -> dict:
        tcp, tcp_fin, udp = self.timeout
        return {"__type__": "Timeouts", "tcp": tcp, "tcp_fin": tcp_fin, "udp": udp}
