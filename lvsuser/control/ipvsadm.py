"""``lvsuser ipvsadm``: the ipvsadm 1.31 command line, byte for byte, against any Backend.

Theory of operation
-------------------
ipvsadm parses its argument vector with popt, checks the combination of command and options
against a table, sends one request to IPVS and prints either a listing or the message its
``ipvs_strerror`` table has for (request, errno).  Users' scripts parse all of that, so each step
is reproduced as ipvsadm 1.31 does it:

* ``_Popt`` walks argv as popt 1.19 does: short options cluster (``-Ln``), a short option's
  argument may be glued (``-t1.2.3.4:80``) or be the next word (whatever it starts with),
  ``--long=value``, ``-p``'s optional argument is taken only when the next word does not start
  with ``-``, words that are not options are collected and reported later, ``--`` ends options.
  The *first* option must be a command; otherwise ipvsadm only prints its "Try ..." line.
* ``parse_options`` mirrors ipvsadm's option switch, including its order effects (``-r``
  before ``-t`` sees no service port; ``-M`` reads an IPv4 mask unless the service is already
  IPv6), and ``_check_options`` its command/option table and the checks after it.
* ``fail()`` is an exception carrying ipvsadm's text and exit code: 2 for bad input, 255 (-1)
  for a refused request or a popt error, 1 when a listing cannot be produced.
* Listings sort services and destinations with ipvsadm's comparison functions, whose address
  subtraction wraps around 32 bits, through a merge sort like glibc's qsort, so that even the
  odd orders it produces (10.0.0.1 after 200.0.0.1) are the same.

Names are resolved (without ``-n``) through a ``Resolver`` so that tests can pin them; the
default one asks the C library exactly like ipvsadm (gethostbyaddr, getservbyport, ...).

Deliberate differences: ``-R`` applies all lines or none (see ``rules``); ``--start-daemon``
reports that connection sync is not supported; the backend is reached lazily, so ``-h`` and
parse errors work without a running director.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional, TextIO

from lvsuser import model
from lvsuser.backends.base import Backend
from lvsuser.model import AF_INET, AF_INET6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, IPVSError

PROGRAM = "ipvsadm"
IPVSADM_VERSION = "v1.31 2019/12/24"
MAX_TIMEOUT = 86400 * 31
IPVS_SVC_PERSISTENT_TIMEOUT = 6 * 60  # libipvs.h: what a bare -p gives (not the kernel's 300)
INT_MAX = 2**31 - 1
UINT_MAX = 2**32 - 1
DEF_SCHED = "wlc"
DEF_TUNNEL_TYPE = "ipip"
DEF_MCAST_IFN = "eth0"
SCHEDULERS = "rr|wrr|lc|wlc|lblc|lblcr|dh|sh|sed|nq|fo|ovf|mh"
PE_LIST = "sip"
SCHEDNAME_MAXLEN = 16
IFNAME_MAXLEN = 16
PENAME_MAXLEN = 32
IPPROTO_IP = 0

# --- commands and options (ipvsadm.c's CMD_*, OPTC_* and their names) -----------------------
(CMD_NONE, CMD_ADD, CMD_EDIT, CMD_DEL, CMD_FLUSH, CMD_LIST, CMD_ADDDEST, CMD_DELDEST,
 CMD_EDITDEST, CMD_TIMEOUT, CMD_STARTDAEMON, CMD_STOPDAEMON, CMD_RESTORE, CMD_SAVE,
 CMD_ZERO) = range(15)

CMDNAMES = ["add-service", "edit-service", "delete-service", "flush", "list", "add-server",
            "delete-server", "edit-server", "set", "start-daemon", "stop-daemon", "restore",
            "save", "zero"]

OPTNAMES = ["numeric", "connection", "service-address", "scheduler", "persistent", "netmask",
            "real-server", "forwarding-method", "weight", "u-threshold", "l-threshold",
            "mcast-interface", "timeout", "daemon", "stats", "rate", "thresholds",
            "persistent-conn", "nosort", "syncid", "exact", "ops", "pe", "sched-flags",
            "mcast-group", "mcast-port", "mcast-ttl", "sync-maxlen", "tun-info", "tun-type",
            "tun-port", "tun-nocsum", "tun-csum", "tun-remcsum"]
(OPTC_NUMERIC, OPTC_CONNECTION, OPTC_SERVICE, OPTC_SCHEDULER, OPTC_PERSISTENT, OPTC_NETMASK,
 OPTC_SERVER, OPTC_FORWARD, OPTC_WEIGHT, OPTC_UTHRESHOLD, OPTC_LTHRESHOLD, OPTC_MCAST,
 OPTC_TIMEOUT, OPTC_DAEMON, OPTC_STATS, OPTC_RATE, OPTC_THRESHOLDS, OPTC_PERSISTENTCONN,
 OPTC_NOSORT, OPTC_SYNCID, OPTC_EXACT, OPTC_ONEPACKET, OPTC_PERSISTENCE_ENGINE,
 OPTC_SCHED_FLAGS, OPTC_MCAST_GROUP, OPTC_MCAST_PORT, OPTC_MCAST_TTL, OPTC_SYNC_MAXLEN,
 OPTC_TUN_INFO, OPTC_TUN_TYPE, OPTC_TUN_PORT, OPTC_TUN_NOCSUM, OPTC_TUN_CSUM,
 OPTC_TUN_REMCSUM) = range(34)


def _opt(optc: int) -> int:
    return 1 << optc


# Which options each command takes: '+' required, 'x' illegal, '1' at most one of them, ' ' free.
# Columns follow OPTNAMES; rows follow CMDNAMES (ipvsadm.c's commands_v_options).
COMMANDS_V_OPTIONS = [
    "xx+   xxxxxxxxxxxxxxx   xxxxxxxxxx",  # ADD
    "xx+   xxxxxxxxxxxxxxx   xxxxxxxxxx",  # EDIT
    "xx+xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # DEL
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # FLUSH
    " 11xxxxxxxxx11       xxxxxxx xxxxx",  # LIST
    "xx+xxx+    xxxxxxxxxxxxxxxxxx     ",  # ADDSRV
    "xx+xxx+xxxxxxxxxxxxxxxxxxxxxxxxxxx",  # DELSRV
    "xx+xxx+    xxxxxxxxxxxxxxxxxx     ",  # EDITSRV
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # TIMEOUT
    "xxxxxxxxxxx xxxxxxx xxxx    xxxxxx",  # STARTD
    "xxxxxxxxxxxxxxxxxxx xxxxxxxxxxxxxx",  # STOPD
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # RESTORE
    " xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # SAVE
    "xx xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # ZERO
]

TUNNAMES = ["ipip", "gue", "gre"]
TUNFLAGS = ["-c", "+c", "r+c"]
TUN_FLAGS_OPTS = ["--tun-nocsum", "--tun-csum", "--tun-remcsum"]
TUNOPTS = [OPTC_TUN_PORT, OPTC_TUN_NOCSUM, OPTC_TUN_CSUM, OPTC_TUN_REMCSUM]
TUNNEL_TYPES_V_OPTIONS = ["xxxx", "+111", "x11x"]  # ipip, gue, gre

# Printing format flags.
FMT_NUMERIC = 0x0001
FMT_RULE = 0x0002
FMT_STATS = 0x0004
FMT_RATE = 0x0008
FMT_THRESHOLDS = 0x0010
FMT_PERSISTENTCONN = 0x0020
FMT_NOSORT = 0x0040
FMT_EXACT = 0x0080
FMT_TUN_INFO = 0x0100

SERVICE_NONE, SERVICE_ADDR, SERVICE_PORT = 0, 1, 2

# Conn flags (IP_VS_CONN_F_*).
CONN_F_MASQ, CONN_F_LOCALNODE, CONN_F_TUNNEL, CONN_F_DROUTE = 0, 1, 2, 3
CONN_F_FWD_MASK = 7

STATE_MASTER, STATE_BACKUP = 1, 2

# Tags for long-only options (values outside ASCII, as in ipvsadm).
(TAG_SET, TAG_START_DAEMON, TAG_STOP_DAEMON, TAG_MCAST_INTERFACE, TAG_TIMEOUT, TAG_DAEMON,
 TAG_STATS, TAG_RATE, TAG_THRESHOLDS, TAG_PERSISTENTCONN, TAG_SORT, TAG_NO_SORT,
 TAG_PERSISTENCE_ENGINE, TAG_SCTP_SERVICE, TAG_MCAST_GROUP, TAG_MCAST_PORT, TAG_MCAST_TTL,
 TAG_SYNC_MAXLEN, TAG_TUN_INFO, TAG_TUN_TYPE, TAG_TUN_PORT, TAG_TUN_NOCSUM, TAG_TUN_CSUM,
 TAG_TUN_REMCSUM) = range(128, 152)

NONE, STRING, OPTIONAL = "none", "string", "optional"

# (long name, short name, argument, value returned) -- ipvsadm's popt table, in its order.
OPTIONS_TABLE = [
    ("add-service", "A", NONE, ord("A")), ("edit-service", "E", NONE, ord("E")),
    ("delete-service", "D", NONE, ord("D")), ("clear", "C", NONE, ord("C")),
    ("list", "L", NONE, ord("L")), ("list", "l", NONE, ord("l")),
    ("zero", "Z", NONE, ord("Z")), ("add-server", "a", NONE, ord("a")),
    ("edit-server", "e", NONE, ord("e")), ("delete-server", "d", NONE, ord("d")),
    ("set", "", NONE, TAG_SET), ("help", "h", NONE, ord("h")),
    ("version", "v", NONE, ord("v")), ("restore", "R", NONE, ord("R")),
    ("save", "S", NONE, ord("S")), ("start-daemon", "", STRING, TAG_START_DAEMON),
    ("stop-daemon", "", STRING, TAG_STOP_DAEMON), ("tcp-service", "t", STRING, ord("t")),
    ("udp-service", "u", STRING, ord("u")), ("sctp-service", "", STRING, TAG_SCTP_SERVICE),
    ("fwmark-service", "f", STRING, ord("f")), ("scheduler", "s", STRING, ord("s")),
    ("persistent", "p", OPTIONAL, ord("p")), ("netmask", "M", STRING, ord("M")),
    ("real-server", "r", STRING, ord("r")), ("masquerading", "m", NONE, ord("m")),
    ("ipip", "i", NONE, ord("i")), ("gatewaying", "g", NONE, ord("g")),
    ("weight", "w", STRING, ord("w")), ("u-threshold", "x", STRING, ord("x")),
    ("l-threshold", "y", STRING, ord("y")), ("numeric", "n", NONE, ord("n")),
    ("connection", "c", NONE, ord("c")), ("mcast-interface", "", STRING, TAG_MCAST_INTERFACE),
    ("syncid", "", STRING, ord("I")), ("timeout", "", NONE, TAG_TIMEOUT),
    ("daemon", "", NONE, TAG_DAEMON), ("stats", "", NONE, TAG_STATS),
    ("rate", "", NONE, TAG_RATE), ("thresholds", "", NONE, TAG_THRESHOLDS),
    ("persistent-conn", "", NONE, TAG_PERSISTENTCONN), ("nosort", "", NONE, TAG_NO_SORT),
    ("sort", "", NONE, TAG_SORT), ("exact", "X", NONE, ord("X")),
    ("ipv6", "6", NONE, ord("6")), ("ops", "o", NONE, ord("o")),
    ("pe", "", STRING, TAG_PERSISTENCE_ENGINE), ("sched-flags", "b", STRING, ord("b")),
    ("mcast-group", "", STRING, TAG_MCAST_GROUP), ("mcast-port", "", STRING, TAG_MCAST_PORT),
    ("mcast-ttl", "", STRING, TAG_MCAST_TTL), ("sync-maxlen", "", STRING, TAG_SYNC_MAXLEN),
    ("tun-info", "", NONE, TAG_TUN_INFO), ("tun-type", "", STRING, TAG_TUN_TYPE),
    ("tun-port", "", STRING, TAG_TUN_PORT), ("tun-nocsum", "", NONE, TAG_TUN_NOCSUM),
    ("tun-csum", "", NONE, TAG_TUN_CSUM), ("tun-remcsum", "", NONE, TAG_TUN_REMCSUM),
]

POPT_ERROR_NOARG = -10
POPT_ERROR_BADOPT = -11
POPT_ERROR_UNWANTEDARG = -12
POPT_MESSAGES = {
    POPT_ERROR_NOARG: "missing argument",
    POPT_ERROR_BADOPT: "unknown option",
    POPT_ERROR_UNWANTEDARG: "option does not take an argument",
}


class IpvsadmExit(Exception):
    """ipvsadm ends here: ``stdout``/``stderr`` text to print and the exit status."""

    def __init__(self, code: int, stderr: str = "", stdout: str = ""):
        super().__init__(code, stderr)
        self.code = code
        self.stderr = stderr
        self.stdout = stdout


def fail(code: int, message: str) -> None:
    raise IpvsadmExit(code, message + "\n")


def tryhelp_exit(program: str, code: int) -> None:
    raise IpvsadmExit(code, f"Try `{program} -h' or '{program} --help' for more information.\n")


def _exit_status(code: int) -> int:
    return code & 0xFF


# --- name resolution --------------------------------------------------------------------------
class Resolver:
    """The C library's name services, as ipvsadm calls them; tests substitute their own."""

    def host_to_addr(self, name: str) -> Optional[bytes]:
        if not name:  # glibc's gethostbyname("") fails; Python's answers 0.0.0.0 (INADDR_ANY)
            return None
        try:
            return socket.inet_aton(socket.gethostbyname(name))
        except (OSError, UnicodeError, ValueError):
            return None

    def addr_to_host(self, af: int, packed: bytes) -> Optional[str]:
        try:
            return socket.gethostbyaddr(socket.inet_ntop(af, packed))[0]
        except (OSError, UnicodeError, ValueError):
            return None

    def service_to_port(self, name: str, proto: str) -> Optional[int]:
        try:
            return socket.getservbyname(name, proto)
        except (OSError, UnicodeError, ValueError):
            return None

    def port_to_service(self, port: int, proto: str) -> Optional[str]:
        try:
            return socket.getservbyport(port, proto)
        except (OSError, OverflowError, ValueError):
            return None


class NumericResolver(Resolver):
    """Resolves nothing: every address and port prints as a number."""

    def host_to_addr(self, name):
        return None

    def addr_to_host(self, af, packed):
        return None

    def service_to_port(self, name, proto):
        return None

    def port_to_service(self, port, proto):
        return None


_PROTO_DB_NAMES = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_SCTP: "sctp"}


# --- popt ----------------------------------------------------------------------------------------
class _Popt:
    """poptGetNextOpt over ipvsadm's table (no aliases, no config files, no ONEDASH options)."""

    def __init__(self, argv: list[str]):
        self.argv = argv
        self.next = 1
        self.next_char_arg: Optional[str] = None
        self.rest_leftover = False
        self.leftovers: list[str] = []
        self._long = {}
        for entry in OPTIONS_TABLE:
            self._long.setdefault(entry[0], entry)
        self._short = {entry[1]: entry for entry in OPTIONS_TABLE if entry[1]}

    def bad_option(self) -> str:
        return self.argv[self.next - 1]

    def get_arg(self) -> Optional[str]:
        return self.leftovers.pop(0) if self.leftovers else None

    def next_opt(self) -> tuple[int, Optional[str]]:
        argv = self.argv
        while True:
            long_arg: Optional[str] = None
            entry = None
            if self.next_char_arg is None and self.next == len(argv):
                return -1, None
            if self.next_char_arg is None:
                orig = argv[self.next]
                self.next += 1
                if self.rest_leftover or not orig.startswith("-") or orig == "-":
                    self.leftovers.append(orig)
                    continue
                if orig == "--":
                    self.rest_leftover = True
                    continue
                body = orig[1:]
                one_dash = not body.startswith("-")
                if not one_dash:
                    body = body[1:]
                name, eq, value = body.partition("=")
                if eq:
                    long_arg = value
                if not one_dash:
                    entry = self._long.get(name)
                    if entry is None:
                        return POPT_ERROR_BADOPT, None
                else:
                    self.next_char_arg = orig[1:]
                    long_arg = None
            if self.next_char_arg is not None:
                chars = self.next_char_arg
                self.next_char_arg = None
                entry = self._short.get(chars[0])
                if entry is None:
                    return POPT_ERROR_BADOPT, None
                if len(chars) > 1:
                    self.next_char_arg = chars[1:]
            _, _, kind, value = entry
            if kind == NONE:
                if long_arg is not None or (self.next_char_arg or "").startswith("="):
                    return POPT_ERROR_UNWANTEDARG, None
                return value, None
            if long_arg is not None:
                arg: Optional[str] = long_arg
            elif self.next_char_arg is not None:
                rest = self.next_char_arg
                arg = rest[1:] if rest.startswith("=") else rest
                self.next_char_arg = None
            elif self.next == len(argv):
                if kind != OPTIONAL:
                    return POPT_ERROR_NOARG, None
                arg = None
            elif kind == OPTIONAL and argv[self.next].startswith("-"):
                arg = None
            else:
                arg = argv[self.next]
                self.next += 1
            return value, arg


# --- what one command line asks for ----------------------------------------------------------
@dataclass
class ServiceArgs:
    """ipvs_service_t as ipvsadm fills it (netmask: IPv4 mask as an int, or IPv6 prefix)."""

    af: int = 0
    protocol: int = 0
    addr: Optional[model.IPAddress] = None
    port: int = 0
    fwmark: int = 0
    sched_name: str = ""
    flags: int = 0
    timeout: int = 0
    netmask: int = 0xFFFFFFFF
    pe_name: str = ""

    def key(self) -> model.ServiceKey:
        if self.fwmark:
            return model.ServiceKey(af=self.af, fwmark=self.fwmark)
        return model.ServiceKey(af=self.af, protocol=self.protocol, addr=self._address(),
                                port=self.port)

    def _address(self) -> model.IPAddress:
        if self.addr is not None:
            return self.addr
        return ipaddress.IPv6Address(0) if self.af == AF_INET6 else ipaddress.IPv4Address(0)

    def to_service(self) -> model.Service:
        return model.Service(af=self.af, protocol=self.protocol,
                             addr=None if self.fwmark else self._address(), port=self.port,
                             fwmark=self.fwmark, scheduler=self.sched_name, flags=self.flags,
                             timeout=self.timeout, netmask=self.netmask, pe_name=self.pe_name)


@dataclass
class DestArgs:
    af: int = 0
    addr: Optional[model.IPAddress] = None
    port: int = 0
    conn_flags: int = CONN_F_DROUTE
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0
    tun_type: int = 0
    tun_port: int = 0
    tun_flags: int = 0

    def to_dest(self) -> model.Dest:
        addr = self.addr
        if addr is None:
            addr = ipaddress.IPv6Address(0) if self.af == AF_INET6 else ipaddress.IPv4Address(0)
        return model.Dest(addr=addr, port=self.port, fwd=model.Forward(self.conn_flags & CONN_F_FWD_MASK),
                          weight=self.weight, u_threshold=self.u_threshold,
                          l_threshold=self.l_threshold, tun_type=model.TunType(self.tun_type),
                          tun_port=self.tun_port, tun_flags=self.tun_flags,
                          af=self.af or model.af_of(addr))


@dataclass
class DaemonArgs:
    state: int = 0
    mcast_ifn: str = ""
    syncid: int = 0
    mcast_group: str = ""
    mcast_port: int = 0
    mcast_ttl: int = 0
    sync_maxlen: int = 0


@dataclass
class CommandEntry:
    cmd: int = CMD_NONE
    svc: ServiceArgs = field(default_factory=ServiceArgs)
    dest: DestArgs = field(default_factory=DestArgs)
    timeout: model.Timeouts = field(default_factory=lambda: model.Timeouts(0, 0, 0))
    daemon: DaemonArgs = field(default_factory=DaemonArgs)
    options: int = 0
    format: int = 0


# --- parsing helpers (ipvsadm.c's, with the C library's number parsing) ---------------------
def _strtol_whole(text: str) -> Optional[int]:
    """strtol(text, &end, 10) that must consume everything: None if it does not."""
    stripped = text.lstrip(" \t\n\v\f\r")
    body = stripped
    sign = 1
    if body[:1] in ("+", "-"):
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    if not body or not body.isascii() or not body.isdigit():
        return None
    value = sign * int(body)
    if value > 2**63 - 1 or value < -(2**63):
        return None  # ERANGE
    return value


def string_to_number(text: str, low: int, high: int) -> int:
    number = _strtol_whole(text)
    if number is None or not low <= number <= high:
        return -1
    return number


def _atoi(text: str) -> int:
    stripped = text.lstrip(" \t\n\v\f\r")
    digits = ""
    sign = 1
    if stripped[:1] in ("+", "-"):
        sign = -1 if stripped[0] == "-" else 1
        stripped = stripped[1:]
    for ch in stripped:
        if "0" <= ch <= "9":
            digits += ch
        else:
            break
    value = sign * int(digits) if digits else 0
    return ((value + 2**31) % 2**32) - 2**31  # atoi into an int, as C would wrap it


def _str_is_digit(text: str) -> bool:
    return all("0" <= ch <= "9" for ch in text)


def _inet_aton(text: str) -> Optional[bytes]:
    if "\0" in text:
        return None
    try:
        return socket.inet_aton(text)
    except (OSError, UnicodeError, ValueError):
        return None


def _inet_pton6(text: str) -> Optional[bytes]:
    try:
        return socket.inet_pton(socket.AF_INET6, text)
    except (OSError, UnicodeError, ValueError):
        return None


def parse_service(buf: Optional[str], svc: ServiceArgs, resolver: Resolver) -> int:
    """ipvsadm's parse_service: SERVICE_ADDR|SERVICE_PORT bits, or SERVICE_NONE."""
    if buf is None or _str_is_digit(buf):
        return SERVICE_NONE
    port_text: Optional[str] = None
    if buf.startswith("["):
        buf = buf[1:]
        close = buf.find("]")
        if close < 0:
            return SERVICE_NONE
        after = buf[close + 1:]
        buf = buf[:close]
        if not after.startswith(":"):
            return SERVICE_NONE
        port_text = after[1:]
    packed6 = _inet_pton6(buf)
    if packed6 is not None:
        svc.addr = ipaddress.IPv6Address(packed6)
        svc.af = AF_INET6
        svc.netmask = 128
    else:
        colon = buf.rfind(":")
        if colon >= 0:
            port_text = buf[colon + 1:]
            buf = buf[:colon]
        else:
            port_text = None
        packed = _inet_aton(buf)
        if packed is None:
            packed = resolver.host_to_addr(buf)
        if packed is None:
            return SERVICE_NONE
        svc.addr = ipaddress.IPv4Address(packed)
        svc.af = AF_INET
    result = SERVICE_ADDR
    if port_text is not None:
        result |= SERVICE_PORT
        number = string_to_number(port_text, 0, 65535)
        if number == -1:
            proto_name = _PROTO_DB_NAMES.get(svc.protocol)
            found = resolver.service_to_port(port_text, proto_name) if proto_name else None
            if found is None:
                return SERVICE_NONE
            number = found
        svc.port = number
    return result


def parse_netmask(buf: str, resolver: Resolver) -> Optional[int]:
    packed = _inet_aton(buf)
    if packed is None:
        packed = resolver.host_to_addr(buf)
    if packed is None:
        return None
    return int.from_bytes(packed, "big")


def parse_timeout(buf: Optional[str], low: int, high: int) -> int:
    if buf is None:
        return IPVS_SVC_PERSISTENT_TIMEOUT
    value = string_to_number(buf, low, high)
    if value == -1:
        fail(2, f"invalid timeout value `{buf}' specified")
    return value


def parse_fwmark(buf: str) -> int:
    value = _strtol_whole(buf)
    if value is None or value <= 0 or value > UINT_MAX:
        fail(2, f"invalid fwmark value `{buf}' specified")
    return value


def parse_sched_flags(sched: str, arg: str) -> int:
    sched = sched or DEF_SCHED
    flags = 0
    tokens = [t for t in arg.split(",") if t]
    if not tokens:
        fail(2, "invalid scheduler flag `(null)'")
    for flag in tokens:
        if flag == "flag-1":
            flags |= model.SVC_F_SCHED1
        elif flag == "flag-2":
            flags |= model.SVC_F_SCHED2
        elif flag == "flag-3":
            flags |= model.SVC_F_SCHED3
        elif flag in ("sh-fallback", "sh-port", "mh-fallback", "mh-port"):
            flags |= model.SVC_F_SCHED1 if flag.endswith("fallback") else model.SVC_F_SCHED2
            if sched != flag[:2]:
                fail(2, f"incompatible scheduler flag `{flag}'")
        else:
            fail(2, f"invalid scheduler flag `{flag}'")
    return flags


def _option_to_protocol(value: int) -> int:
    protocols = {ord("t"): IPPROTO_TCP, ord("u"): IPPROTO_UDP, TAG_SCTP_SERVICE: IPPROTO_SCTP}
    return protocols.get(value, IPPROTO_IP)


def _set_command(ce: CommandEntry, cmd: int) -> None:
    if ce.cmd != CMD_NONE:
        fail(2, "multiple commands specified")
    ce.cmd = cmd


def _set_option(ce: CommandEntry, optc: int) -> None:
    bit = _opt(optc)
    if ce.options & bit:
        fail(2, f"multiple '{OPTNAMES[optc]}' options specified")
    ce.options |= bit


_FIRST_COMMANDS = {
    ord("A"): CMD_ADD, ord("E"): CMD_EDIT, ord("D"): CMD_DEL, ord("a"): CMD_ADDDEST,
    ord("e"): CMD_EDITDEST, ord("d"): CMD_DELDEST, ord("C"): CMD_FLUSH, ord("L"): CMD_LIST,
    ord("l"): CMD_LIST, ord("Z"): CMD_ZERO, TAG_SET: CMD_TIMEOUT, ord("R"): CMD_RESTORE,
    ord("S"): CMD_SAVE,
}


def parse_options(argv: list[str], resolver: Resolver) -> CommandEntry:
    """ipvsadm's parse_options + the defaults process_options sets first."""
    ce = CommandEntry()
    program = argv[0]
    popt = _Popt(argv)
    sched_flags_arg = ""

    value, optarg = popt.next_opt()
    if value < 0:
        tryhelp_exit(program, -1)
    if value in _FIRST_COMMANDS:
        _set_command(ce, _FIRST_COMMANDS[value])
    elif value in (TAG_START_DAEMON, TAG_STOP_DAEMON):
        _set_command(ce, CMD_STARTDAEMON if value == TAG_START_DAEMON else CMD_STOPDAEMON)
        if optarg == "master":
            ce.daemon.state = STATE_MASTER
        elif optarg == "backup":
            ce.daemon.state = STATE_BACKUP
        elif value == TAG_START_DAEMON:
            fail(2, "illegal start-daemon parameter specified")
        else:
            fail(2, "illegal start_daemon specified")
    elif value == ord("h"):
        raise IpvsadmExit(0, stdout=usage_text(program))
    elif value == ord("v"):
        raise IpvsadmExit(0, stdout=version_text())
    else:
        tryhelp_exit(program, -1)

    svc, dest = ce.svc, ce.dest
    while True:
        value, optarg = popt.next_opt()
        if value < 0:
            break
        if value in (ord("t"), ord("u"), TAG_SCTP_SERVICE):
            _set_option(ce, OPTC_SERVICE)
            svc.protocol = _option_to_protocol(value)
            parsed = parse_service(optarg, svc, resolver)
            if not parsed & SERVICE_ADDR:
                fail(2, "illegal virtual server address[:port] specified")
        elif value == ord("f"):
            _set_option(ce, OPTC_SERVICE)
            svc.af = AF_INET
            svc.protocol = IPPROTO_TCP
            svc.fwmark = parse_fwmark(optarg)
        elif value == ord("s"):
            _set_option(ce, OPTC_SCHEDULER)
            svc.sched_name = optarg[:SCHEDNAME_MAXLEN - 1]
        elif value == ord("p"):
            _set_option(ce, OPTC_PERSISTENT)
            svc.flags |= model.SVC_F_PERSISTENT
            svc.timeout = parse_timeout(optarg, 1, MAX_TIMEOUT)
        elif value == ord("M"):
            _set_option(ce, OPTC_NETMASK)
            if svc.af != AF_INET6:
                mask = parse_netmask(optarg, resolver)
                if mask is None:
                    fail(2, "illegal virtual server persistent mask specified")
                svc.netmask = mask
            else:
                svc.netmask = _atoi(optarg)
                if svc.netmask < 1 or svc.netmask > 128:
                    fail(2, "illegal ipv6 netmask specified")
        elif value == ord("r"):
            _set_option(ce, OPTC_SERVER)
            scratch = ServiceArgs(**vars(svc))
            parsed = parse_service(optarg, scratch, resolver)
            dest.af, dest.addr, dest.port = scratch.af, scratch.addr, scratch.port
            if not parsed & SERVICE_ADDR:
                fail(2, "illegal real server address[:port] specified")
            if parsed == SERVICE_ADDR:
                dest.port = svc.port  # no port given: the service's
        elif value in (ord("i"), ord("g"), ord("m")):
            _set_option(ce, OPTC_FORWARD)
            dest.conn_flags = {ord("i"): CONN_F_TUNNEL, ord("g"): CONN_F_DROUTE,
                               ord("m"): CONN_F_MASQ}[value]
        elif value == ord("w"):
            _set_option(ce, OPTC_WEIGHT)
            dest.weight = string_to_number(optarg, 0, INT_MAX)  # Debian's 1.31 allows INT_MAX
            if dest.weight == -1:
                fail(2, "illegal weight specified")
        elif value == ord("x"):
            _set_option(ce, OPTC_UTHRESHOLD)
            dest.u_threshold = string_to_number(optarg, 0, INT_MAX)
            if dest.u_threshold == -1:
                fail(2, "illegal u_threshold specified")
        elif value == ord("y"):
            _set_option(ce, OPTC_LTHRESHOLD)
            dest.l_threshold = string_to_number(optarg, 0, INT_MAX)
            if dest.l_threshold == -1:
                fail(2, "illegal l_threshold specified")
        elif value == ord("c"):
            _set_option(ce, OPTC_CONNECTION)
        elif value == ord("n"):
            _set_option(ce, OPTC_NUMERIC)
            ce.format |= FMT_NUMERIC
        elif value == TAG_MCAST_INTERFACE:
            _set_option(ce, OPTC_MCAST)
            ce.daemon.mcast_ifn = optarg[:IFNAME_MAXLEN - 1]
        elif value == ord("I"):
            _set_option(ce, OPTC_SYNCID)
            ce.daemon.syncid = string_to_number(optarg, 0, 255)
            if ce.daemon.syncid == -1:
                fail(2, "illegal syncid specified")
        elif value in _FORMAT_OPTIONS:
            optc, fmt = _FORMAT_OPTIONS[value]
            _set_option(ce, optc)
            ce.format |= fmt
        elif value == TAG_SORT:
            pass  # sorting is the default; accepted for compatibility
        elif value == ord("6"):
            if svc.fwmark:
                svc.af = AF_INET6
                svc.netmask = 128
            else:
                fail(2, "-6 used before -f\n")
        elif value == ord("o"):
            _set_option(ce, OPTC_ONEPACKET)
            svc.flags |= model.SVC_F_ONEPACKET
        elif value == TAG_PERSISTENCE_ENGINE:
            _set_option(ce, OPTC_PERSISTENCE_ENGINE)
            svc.pe_name = optarg[:PENAME_MAXLEN]
        elif value == ord("b"):
            _set_option(ce, OPTC_SCHED_FLAGS)
            sched_flags_arg = optarg[:127]
        elif value == TAG_MCAST_GROUP:
            _set_option(ce, OPTC_MCAST_GROUP)
            ce.daemon.mcast_group = _parse_mcast_group(optarg)
        elif value == TAG_MCAST_PORT:
            _set_option(ce, OPTC_MCAST_PORT)
            ce.daemon.mcast_port = string_to_number(optarg, 1, 65535)
            if ce.daemon.mcast_port == -1:
                fail(2, "illegal mcast-port specified")
        elif value == TAG_MCAST_TTL:
            _set_option(ce, OPTC_MCAST_TTL)
            ce.daemon.mcast_ttl = string_to_number(optarg, 1, 255)
            if ce.daemon.mcast_ttl == -1:
                fail(2, "illegal mcast-ttl specified")
        elif value == TAG_SYNC_MAXLEN:
            _set_option(ce, OPTC_SYNC_MAXLEN)
            ce.daemon.sync_maxlen = string_to_number(optarg, 1, 65535 - 20 - 8)
            if ce.daemon.sync_maxlen == -1:
                fail(2, "illegal sync-maxlen specified")
        elif value == TAG_TUN_TYPE:
            _set_option(ce, OPTC_TUN_TYPE)
            if optarg not in TUNNAMES:
                fail(2, "illegal tunnel type specified")
            dest.tun_type = TUNNAMES.index(optarg)
        elif value == TAG_TUN_PORT:
            _set_option(ce, OPTC_TUN_PORT)
            port = string_to_number(optarg, 1, 65535)
            if port == -1:
                fail(2, "illegal tunnel port specified")
            dest.tun_port = port
        elif value in (TAG_TUN_NOCSUM, TAG_TUN_CSUM, TAG_TUN_REMCSUM):
            optc = {TAG_TUN_NOCSUM: OPTC_TUN_NOCSUM, TAG_TUN_CSUM: OPTC_TUN_CSUM,
                    TAG_TUN_REMCSUM: OPTC_TUN_REMCSUM}[value]
            _set_option(ce, optc)
            dest.tun_flags |= {TAG_TUN_NOCSUM: model.TUN_FLAG_NOCSUM,
                               TAG_TUN_CSUM: model.TUN_FLAG_CSUM,
                               TAG_TUN_REMCSUM: model.TUN_FLAG_REMCSUM}[value]
        else:
            fail(2, f"invalid option `{popt.bad_option()}'")

    if value < -1:
        raise IpvsadmExit(-1, f"{popt.bad_option()}: {POPT_MESSAGES[value]}\n")

    if ce.cmd == CMD_TIMEOUT:
        first, second, third = popt.get_arg(), popt.get_arg(), popt.get_arg()
        if first is None or second is None or third is None:
            fail(2, "--set option requires 3 timeout values")
        ce.timeout = model.Timeouts(tcp=parse_timeout(first, 0, MAX_TIMEOUT),
                                    tcp_fin=parse_timeout(second, 0, MAX_TIMEOUT),
                                    udp=parse_timeout(third, 0, MAX_TIMEOUT))
    leftover = popt.get_arg()
    if leftover is not None:
        fail(2, f"unexpected argument {leftover}")
    if sched_flags_arg:
        svc.flags &= ~(model.SVC_F_SCHED1 | model.SVC_F_SCHED2 | model.SVC_F_SCHED3)
        svc.flags |= parse_sched_flags(svc.sched_name, sched_flags_arg)
    return ce


_FORMAT_OPTIONS = {
    TAG_TIMEOUT: (OPTC_TIMEOUT, 0), TAG_DAEMON: (OPTC_DAEMON, 0),
    TAG_STATS: (OPTC_STATS, FMT_STATS), TAG_RATE: (OPTC_RATE, FMT_RATE),
    TAG_THRESHOLDS: (OPTC_THRESHOLDS, FMT_THRESHOLDS),
    TAG_PERSISTENTCONN: (OPTC_PERSISTENTCONN, FMT_PERSISTENTCONN),
    TAG_NO_SORT: (OPTC_NOSORT, FMT_NOSORT), ord("X"): (OPTC_EXACT, FMT_EXACT),
    TAG_TUN_INFO: (OPTC_TUN_INFO, FMT_TUN_INFO),
}


def _parse_mcast_group(text: str) -> str:
    if ":" in text:
        packed = _inet_pton6(text)
        if packed is None or not ipaddress.IPv6Address(packed).is_multicast:
            fail(2, f"invalid IPv6 mcast-group `{text}'")
        return str(ipaddress.IPv6Address(packed))
    try:
        packed = socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        packed = None
    if packed is None or not ipaddress.IPv4Address(packed).is_multicast:
        fail(2, f"invalid IPv4 mcast-group `{text}'")
    return str(ipaddress.IPv4Address(packed))


def _generic_opt_check(command: int, options: int) -> None:
    row = COMMANDS_V_OPTIONS[command - 1]
    last = 0
    count = 0
    for j, rule in enumerate(row):
        if not options & _opt(j):
            if rule == "+":
                fail(2, f"You need to supply the '{OPTNAMES[j]}' option for the "
                        f"'{CMDNAMES[command - 1]}' command")
        else:
            if rule == "x":
                fail(2, f"Illegal '{OPTNAMES[j]}' option with the '{CMDNAMES[command - 1]}' command")
            if rule == "1":
                count += 1
                if count == 1:
                    last = j
                    continue
                fail(2, f"The option '{OPTNAMES[j]}' conflicts with the '{OPTNAMES[last]}' "
                        f"option in the '{CMDNAMES[command - 1]}' command")


def _tunnel_opt_check(tun_type: int, options: int) -> None:
    row = TUNNEL_TYPES_V_OPTIONS[tun_type]
    last = 0
    count = 0
    for j, optc in enumerate(TUNOPTS):
        rule = row[j]
        if not options & _opt(optc):
            if rule == "+":
                fail(2, f"You need to supply the '{OPTNAMES[optc]}' option for the "
                        f"'{TUNNAMES[tun_type]}' tunnel type")
        else:
            if rule == "x":
                fail(2, f"Illegal '{OPTNAMES[optc]}' option with the '{TUNNAMES[tun_type]}' "
                        f"tunnel type")
            if rule == "1":
                count += 1
                if count == 1:
                    last = optc
                    continue
                fail(2, f"The option '{OPTNAMES[optc]}' conflicts with the '{OPTNAMES[last]}' "
                        f"option in the '{TUNNAMES[tun_type]}' tunnel type")


def check_command(ce: CommandEntry) -> None:
    """The checks process_options makes between parsing and doing."""
    _generic_opt_check(ce.cmd, ce.options)
    svc, dest = ce.svc, ce.dest
    if ce.cmd in (CMD_ADD, CMD_EDIT):
        if not svc.fwmark and not svc.port and not svc.flags & model.SVC_F_PERSISTENT:
            fail(2, "Zero port specified for non-persistent service")
        if svc.flags & model.SVC_F_ONEPACKET and not svc.fwmark and svc.protocol != IPPROTO_UDP:
            fail(2, "One-Packet Scheduling is only for UDP virtual services")
        if not svc.sched_name:
            svc.sched_name = DEF_SCHED
    if ce.cmd == CMD_STARTDAEMON and not ce.daemon.mcast_ifn:
        ce.daemon.mcast_ifn = DEF_MCAST_IFN
    fwd = dest.conn_flags & CONN_F_FWD_MASK
    if ce.cmd in (CMD_ADDDEST, CMD_EDITDEST):
        if not svc.fwmark and fwd in (CONN_F_TUNNEL, CONN_F_DROUTE):
            dest.port = svc.port
        if dest.af != svc.af and fwd != CONN_F_TUNNEL:
            fail(2, "Different address family is allowed only for tunneling servers")
        tunnel_options = (_opt(OPTC_TUN_TYPE) | _opt(OPTC_TUN_PORT) | _opt(OPTC_TUN_NOCSUM)
                          | _opt(OPTC_TUN_CSUM) | _opt(OPTC_TUN_REMCSUM))
        if ce.options & tunnel_options and fwd != CONN_F_TUNNEL:
            fail(2, "Tunnel options conflict with forward method")
        _tunnel_opt_check(dest.tun_type, ce.options)


def parse_command(argv: list[str], resolver: Optional[Resolver] = None) -> CommandEntry:
    """Parse and check one ipvsadm command line (argv[0] is the program name).

    Raises IpvsadmExit for what ipvsadm would end on before talking to IPVS (including -h, -v)."""
    ce = parse_options(argv, resolver or Resolver())
    check_command(ce)
    return ce


def table_operation(ce: CommandEntry) -> Optional[tuple[str, dict]]:
    """The Backend call a table-changing command makes, as (method, kwargs); None otherwise."""
    if ce.cmd == CMD_FLUSH:
        return "flush", {}
    if ce.cmd == CMD_ADD:
        return "add_service", {"svc": ce.svc.to_service()}
    if ce.cmd == CMD_EDIT:
        return "edit_service", {"svc": ce.svc.to_service()}
    if ce.cmd == CMD_DEL:
        return "del_service", {"key": ce.svc.key()}
    if ce.cmd == CMD_ZERO:
        return "zero", {"key": ce.svc.key() if ce.options & _opt(OPTC_SERVICE) else None}
    if ce.cmd == CMD_ADDDEST:
        return "add_dest", {"key": ce.svc.key(), "dest": ce.dest.to_dest()}
    if ce.cmd == CMD_EDITDEST:
        return "edit_dest", {"key": ce.svc.key(), "dest": ce.dest.to_dest()}
    if ce.cmd == CMD_DELDEST:
        return "del_dest", {"key": ce.svc.key(), "dest": ce.dest.to_dest()}
    if ce.cmd == CMD_TIMEOUT:
        return "set_timeouts", {"timeouts": ce.timeout}
    return None


# libipvs function each operation goes through, for ipvs_strerror.
_LIBIPVS_FUNCTION = {
    "flush": "flush", "add_service": "add_service", "edit_service": "update_service",
    "del_service": "del_service", "zero": "zero_service", "add_dest": "add_dest",
    "edit_dest": "update_dest", "del_dest": "del_dest", "set_timeouts": "set_timeout",
    "start_daemon": "start_daemon", "stop_daemon": "stop_daemon",
    "get_services": "get_services", "get_dests": "get_dests", "get_service": "get_service",
    "add_mark_rule": "mark_rule", "del_mark_rule": "mark_rule",
}

_STRERROR_TABLE = [
    ("add_service", errno.EEXIST, "Service already exists"),
    ("add_service", errno.ENOENT, "Scheduler or persistence engine not found"),
    ("update_service", errno.ESRCH, "No such service"),
    ("update_service", errno.ENOENT, "Scheduler or persistence engine not found"),
    ("del_service", errno.ESRCH, "No such service"),
    ("zero_service", errno.ESRCH, "No such service"),
    ("add_dest", errno.ESRCH, "Service not defined"),
    ("add_dest", errno.EEXIST, "Destination already exists"),
    ("update_dest", errno.ESRCH, "Service not defined"),
    ("update_dest", errno.ENOENT, "No such destination"),
    ("del_dest", errno.ESRCH, "Service not defined"),
    ("del_dest", errno.ENOENT, "No such destination"),
    ("start_daemon", errno.EEXIST, "Daemon has already run"),
    ("stop_daemon", errno.ESRCH, "No daemon is running"),
    ("get_services", errno.ESRCH, "No such service"),
    ("get_dests", errno.ESRCH, "No such service"),
    ("get_service", errno.ESRCH, "No such service"),
    # lvsuser's own: connection sync is not implemented by the user-space director.
    ("start_daemon", errno.ENOSYS, "Connection sync daemon is not supported by lvsuser yet"),
    ("stop_daemon", errno.ENOSYS, "Connection sync daemon is not supported by lvsuser yet"),
    (None, errno.EPERM, "Permission denied (you must be root)"),
    (None, errno.EINVAL, "Invalid operation.  Possibly wrong module version, address not unicast, ..."),
    (None, errno.ENOPROTOOPT, "Protocol not available"),
    (None, errno.ENOMEM, "Memory allocation problem"),
    (None, errno.EOPNOTSUPP, "Operation not supported with IPv6"),
    (None, errno.EAFNOSUPPORT, "Operation not supported with specified address family"),
    (None, errno.EMSGSIZE, "Module is wrong version"),
]


def ipvs_strerror(function: Optional[str], err: int) -> str:
    for func, code, message in _STRERROR_TABLE:
        if (func is None or func == function) and code == err:
            return message
    return os.strerror(err)


def strerror_for_operation(op: str, err: int) -> str:
    return ipvs_strerror(_LIBIPVS_FUNCTION.get(op, op), err)


# --- output -------------------------------------------------------------------------------
def version_text() -> str:
    major, minor, patch = model.IPVS_VERSION
    return f"ipvsadm {IPVSADM_VERSION} (compiled with popt and IPVS v{major}.{minor}.{patch})\n"


def usage_text(program: str) -> str:
    p = program
    return version_text() + (
        "Usage:\n"
        f"  {p} -A|E virtual-service [-s scheduler] [-p [timeout]] [-M netmask] [--pe persistence_engine] [-b sched-flags]\n"
        f"  {p} -D virtual-service\n"
        f"  {p} -C\n"
        f"  {p} -R\n"
        f"  {p} -S [-n]\n"
        f"  {p} -a|e virtual-service -r server-address [options]\n"
        f"  {p} -d virtual-service -r server-address\n"
        f"  {p} -L|l [virtual-service] [options]\n"
        f"  {p} -Z [virtual-service]\n"
        f"  {p} --set tcp tcpfin udp\n"
        f"  {p} --start-daemon {{master|backup}} [daemon-options]\n"
        f"  {p} --stop-daemon {{master|backup}}\n"
        f"  {p} -h\n\n"
        "Commands:\n"
        "Either long or short options are allowed.\n"
        "  --add-service     -A        add virtual service with options\n"
        "  --edit-service    -E        edit virtual service with options\n"
        "  --delete-service  -D        delete virtual service\n"
        "  --clear           -C        clear the whole table\n"
        "  --restore         -R        restore rules from stdin\n"
        "  --save            -S        save rules to stdout\n"
        "  --add-server      -a        add real server with options\n"
        "  --edit-server     -e        edit real server with options\n"
        "  --delete-server   -d        delete real server\n"
        "  --list            -L|-l     list the table\n"
        "  --zero            -Z        zero counters in a service or all services\n"
        "  --set tcp tcpfin udp        set connection timeout values\n"
        "  --start-daemon              start connection sync daemon\n"
        "  --stop-daemon               stop connection sync daemon\n"
        "  --help            -h        display this help message\n\n"
        "virtual-service:\n"
        "  --tcp-service|-t  service-address   service-address is host[:port]\n"
        "  --udp-service|-u  service-address   service-address is host[:port]\n"
        "  --sctp-service    service-address   service-address is host[:port]\n"
        "  --fwmark-service|-f fwmark          fwmark is an integer greater than zero\n"
        "\n"
        "Options:\n"
        "  --ipv6         -6                   fwmark entry uses IPv6\n"
        f"  --scheduler    -s scheduler         one of {SCHEDULERS},\n"
        f"                                      the default scheduler is {DEF_SCHED}.\n"
        f"  --pe            engine              alternate persistence engine may be {PE_LIST},\n"
        "                                      not set by default.\n"
        "  --persistent   -p [timeout]         persistent service\n"
        "  --netmask      -M netmask           persistent granularity mask\n"
        "  --real-server  -r server-address    server-address is host (and port)\n"
        "  --gatewaying   -g                   gatewaying (direct routing) (default)\n"
        "  --ipip         -i                   ipip encapsulation (tunneling)\n"
        "  --masquerading -m                   masquerading (NAT)\n"
        "  --tun-type      type                one of ipip|gue|gre,\n"
        f"                                      the default tunnel type is {DEF_TUNNEL_TYPE}.\n"
        "  --tun-port      port                tunnel destination port\n"
        "  --tun-nocsum                        tunnel encapsulation without checksum\n"
        "  --tun-csum                          tunnel encapsulation with checksum\n"
        "  --tun-remcsum                       tunnel encapsulation with remote checksum\n"
        "  --weight       -w weight            capacity of real server\n"
        "  --u-threshold  -x uthreshold        upper threshold of connections\n"
        "  --l-threshold  -y lthreshold        lower threshold of connections\n"
        "  --connection   -c                   output of current IPVS connections\n"
        "  --timeout                           output of timeout (tcp tcpfin udp)\n"
        "  --daemon                            output of daemon information\n"
        "  --stats                             output of statistics information\n"
        "  --rate                              output of rate information\n"
        "  --exact                             expand numbers (display exact values)\n"
        "  --thresholds                        output of thresholds information\n"
        "  --persistent-conn                   output of persistent connection info\n"
        "  --tun-info                          output of tunnel information\n"
        "  --nosort                            disable sorting output of service/server entries\n"
        "  --sort                              does nothing, for backwards compatibility\n"
        "  --ops          -o                   one-packet scheduling\n"
        "  --numeric      -n                   numeric output of addresses and ports\n"
        "  --sched-flags  -b flags             scheduler flags (comma-separated)\n"
        "Daemon Options:\n"
        "  --syncid sid                        syncid for connection sync (default=255)\n"
        "  --sync-maxlen length                Max sync message length (default=1472)\n"
        "  --mcast-interface interface         multicast interface for connection sync\n"
        "  --mcast-group address               IPv4/IPv6 group (default=224.0.0.81)\n"
        "  --mcast-port port                   UDP port (default=8848)\n"
        "  --mcast-ttl ttl                     Multicast TTL (default=1)\n"
    )


def _wrap_int(value: int) -> int:
    """An unsigned 32-bit difference stored into a C int."""
    value &= 0xFFFFFFFF
    return value - 2**32 if value >= 2**31 else value


def _addr_words(addr: Optional[model.IPAddress], af: int) -> list[int]:
    if addr is None:
        return [0, 0, 0, 0] if af == AF_INET6 else [0]
    packed = addr.packed
    return [int.from_bytes(packed[i:i + 4], "big") for i in range(0, len(packed), 4)]


def _compare_addresses(af: int, a: Optional[model.IPAddress], b: Optional[model.IPAddress]) -> int:
    words_a, words_b = _addr_words(a, af), _addr_words(b, af)
    if af == AF_INET6:
        words_a = (words_a + [0, 0, 0, 0])[:4]
        words_b = (words_b + [0, 0, 0, 0])[:4]
        result = 0
        for i in range(4):
            result = _wrap_int(words_a[i] - words_b[i])
            if result:
                break
        return result
    return _wrap_int(words_a[0] - words_b[0])


def compare_services(s1: model.Service, s2: model.Service) -> int:
    """libipvs ipvs_cmp_services, wrap-around included."""
    result = _wrap_int(s1.fwmark - s2.fwmark)
    if result:
        return result
    result = s1.af - s2.af
    if result:
        return result
    result = s1.protocol - s2.protocol
    if result:
        return result
    result = _compare_addresses(s1.af, None if s1.fwmark else s1.addr, None if s2.fwmark else s2.addr)
    if result:
        return result
    return s1.port - s2.port


def compare_dests(d1: model.Dest, d2: model.Dest) -> int:
    """libipvs ipvs_cmp_dests."""
    result = _compare_addresses(d1.af, d1.addr, d2.addr)
    if result:
        return result
    return d1.port - d2.port


def glibc_qsort(items: list, compare: Callable[[object, object], int]) -> list:
    """glibc's qsort for small arrays: a top-down merge sort taking the left item on ties."""
    if len(items) <= 1:
        return list(items)
    half = len(items) // 2
    left = glibc_qsort(items[:half], compare)
    right = glibc_qsort(items[half:], compare)
    merged = []
    i = j = 0
    while i < len(left) and j < len(right):
        if compare(left[i], right[j]) <= 0:
            merged.append(left[i])
            i += 1
        else:
            merged.append(right[j])
            j += 1
    merged.extend(left[i:])
    merged.extend(right[j:])
    return merged


class _Printer:
    def __init__(self, out: TextIO, resolver: Resolver):
        self.out = out
        self.resolver = resolver

    def write(self, text: str) -> None:
        self.out.write(text)

    def addrport(self, af: int, addr: model.IPAddress, port: int, proto: int, fmt: int) -> str:
        bracket_open, bracket_close = ("", "") if af == AF_INET else ("[", "]")
        packed = addr.packed
        if fmt & FMT_NUMERIC:
            text = f"{bracket_open}{socket.inet_ntop(af, packed)}{bracket_close}:{port}"
        else:
            host = self.resolver.addr_to_host(af, packed) or socket.inet_ntop(af, packed)
            proto_name = _PROTO_DB_NAMES.get(proto)
            service = self.resolver.port_to_service(port, proto_name) if proto_name else None
            text = f"{bracket_open}{host}{bracket_close}:{service or port}"
        return text[:59]  # ipvsadm formats into a 60-byte buffer


def _largenum(value: int, fmt: int) -> str:
    if fmt & FMT_EXACT:
        digits = str(value)
        width = 9 if len(digits) <= 8 else len(digits) + 1
        return digits.rjust(width)
    if value < 100000000:
        return f"{value:9d}"
    if value < 1000000000:
        return f"{value // 1000:8d}K"
    if value < 100000000000:
        return f"{value // 1000000:8d}M"
    if value < 100000000000000:
        return f"{value // 1000000000:8d}G"
    return f"{value // 1000000000000:8d}T"


def _sched_flags_text(svc: model.Service) -> str:
    names = []
    if svc.scheduler in ("sh", "mh"):
        if svc.flags & model.SVC_F_SCHED1:
            names.append(f"{svc.scheduler}-fallback")
        if svc.flags & model.SVC_F_SCHED2:
            names.append(f"{svc.scheduler}-port")
    else:
        for bit, name in ((model.SVC_F_SCHED1, "flag-1"), (model.SVC_F_SCHED2, "flag-2"),
                          (model.SVC_F_SCHED3, "flag-3")):
            if svc.flags & bit:
                names.append(name)
    return ",".join(names)


def _title(fmt: int) -> str:
    head = "Prot LocalAddress:Port"
    if fmt & FMT_STATS:
        return (f"{head:<33} {'Conns':>8} {'InPkts':>8} {'OutPkts':>8} {'InBytes':>8} {'OutBytes':>8}\n"
                "  -> RemoteAddress:Port\n")
    if fmt & FMT_RATE:
        return (f"{head:<33} {'CPS':>8} {'InPPS':>8} {'OutPPS':>8} {'InBPS':>8} {'OutBPS':>8}\n"
                "  -> RemoteAddress:Port\n")
    if fmt & FMT_THRESHOLDS:
        return (f"{head:<33} {'Uthreshold':<10} {'Lthreshold':<10} {'ActiveConn':<10} {'InActConn':<10}\n"
                "  -> RemoteAddress:Port\n")
    if fmt & FMT_PERSISTENTCONN:
        return (f"{head:<33} {'Weight':<9} {'PersistConn':<11} {'ActiveConn':<10} {'InActConn':<10}\n"
                "  -> RemoteAddress:Port\n")
    if fmt & FMT_TUN_INFO:
        return ("Prot LocalAddress:Port Scheduler Flags\n"
                "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn\n")
    if not fmt & FMT_RULE:
        return ("Prot LocalAddress:Port Scheduler Flags\n"
                "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n")
    return ""


_FWD_SWITCH = {CONN_F_MASQ: "-m", CONN_F_TUNNEL: "-i", CONN_F_LOCALNODE: "-g", CONN_F_DROUTE: "-g"}
_FWD_NAME = {CONN_F_MASQ: "Masq", CONN_F_LOCALNODE: "Local", CONN_F_TUNNEL: "Tunnel",
             CONN_F_DROUTE: "Route"}
_RULE_SERVICE_OPTION = {IPPROTO_TCP: "-t", IPPROTO_UDP: "-u", IPPROTO_SCTP: "--sctp-service"}


def _tun_info(dest: model.Dest) -> Optional[str]:
    if int(dest.fwd) & CONN_F_FWD_MASK != CONN_F_TUNNEL:
        return None
    kind = int(dest.tun_type)
    flags = TUNFLAGS[dest.tun_flags] if 0 <= dest.tun_flags < 3 else "?"
    if kind == 0:
        return "ipip"
    if kind == 1:
        return f"gue:{dest.tun_port}:{flags}"[:15]
    if kind == 2:
        return f"gre:{flags}"[:15]
    return None


def _c_str(value: int) -> str:
    """%d of a value that C keeps in an int."""
    return str(_wrap_int(value))


def _persistence_mask_text(svc) -> Optional[str]:
    """The persistence netmask as ipvsadm prints it (-M / "mask"), or None when it is the default."""
    if svc.af == AF_INET and svc.netmask != 0xFFFFFFFF:
        return str(ipaddress.IPv4Address(svc.netmask & 0xFFFFFFFF))
    if svc.af == AF_INET6 and svc.netmask != 128:
        return _c_str(svc.netmask)
    return None


def format_service_entry(printer: _Printer, svc: model.Service, fmt: int) -> str:
    """ipvsadm's print_service_entry."""
    lines = []
    if svc.fwmark:
        if fmt & FMT_RULE:
            svc_name = f"-f {_wrap_int(svc.fwmark)}" + (" -6" if svc.af == AF_INET6 else "")
        else:
            svc_name = f"FWM  {_wrap_int(svc.fwmark)}" + (" IPv6" if svc.af == AF_INET6 else "")
    else:
        vname = printer.addrport(svc.af, svc.addr, svc.port, svc.protocol, fmt)
        if fmt & FMT_RULE:
            svc_name = f"{_RULE_SERVICE_OPTION.get(svc.protocol, '--xxx-service')} {vname}"
        else:
            svc_name = f"{model.PROTOCOL_NAMES.get(svc.protocol, '?'):<4} {vname}"
            if svc.af != AF_INET6:
                svc_name = svc_name[:33]
    if fmt & FMT_RULE:
        line = f"-A {svc_name} -s {svc.scheduler}"
        if svc.flags & model.SVC_F_PERSISTENT:
            line += f" -p {svc.timeout}"
            mask = _persistence_mask_text(svc)
            if mask:
                line += f" -M {mask}"
        if svc.pe_name:
            line += f" --pe {svc.pe_name}"
        if svc.flags & model.SVC_F_ONEPACKET:
            line += " -o"
        if svc.flags & (model.SVC_F_SCHED1 | model.SVC_F_SCHED2 | model.SVC_F_SCHED3):
            line += " -b " + _sched_flags_text(svc)
    elif fmt & FMT_STATS:
        s = svc.stats
        line = f"{svc_name:<33}" + "".join(_largenum(v, fmt) for v in (
            s.conns, s.inpkts, s.outpkts, s.inbytes, s.outbytes))
    elif fmt & FMT_RATE:
        s = svc.stats
        line = f"{svc_name:<33}" + "".join(_largenum(v, fmt) for v in (
            s.cps, s.inpps, s.outpps, s.inbps, s.outbps))
    else:
        line = f"{svc_name} {svc.scheduler}"
        if svc.flags & (model.SVC_F_SCHED1 | model.SVC_F_SCHED2 | model.SVC_F_SCHED3):
            line += f" ({_sched_flags_text(svc)})"
        if svc.flags & model.SVC_F_PERSISTENT:
            line += f" persistent {svc.timeout}"
            mask = _persistence_mask_text(svc)
            if mask:
                line += f" mask {mask}"
            if svc.pe_name:
                line += f" pe {svc.pe_name}"
        if svc.flags & model.SVC_F_ONEPACKET:
            line += " ops"
    lines.append(line + "\n")

    dests = list(svc.dests)
    if not fmt & FMT_NOSORT:
        dests = glibc_qsort(dests, compare_dests)
    for dest in dests:
        dname = printer.addrport(dest.af, dest.addr, dest.port, svc.protocol, fmt)
        if not fmt & FMT_RULE and dest.af != AF_INET6:
            dname = dname[:28]
        fwd = int(dest.fwd) & CONN_F_FWD_MASK
        if fmt & FMT_RULE:
            head = f"-a {svc_name} -r {dname} {_FWD_SWITCH.get(fwd, '(null)')} -w {_c_str(dest.weight)}"
            if fwd == CONN_F_TUNNEL:
                kind = int(dest.tun_type)
                flag_opt = TUN_FLAGS_OPTS[dest.tun_flags] if 0 <= dest.tun_flags < 3 else "(null)"
                if kind == 2:
                    head += f" --tun-type gre {flag_opt}"
                elif kind == 1:
                    head += f" --tun-type gue --tun-port {dest.tun_port} {flag_opt}"
                elif kind == 0:
                    head += " --tun-type ipip"
            lines.append(head + "\n")
        elif fmt & FMT_STATS:
            s = dest.stats
            lines.append(f"  -> {dname:<28}" + "".join(_largenum(v, fmt) for v in (
                s.conns, s.inpkts, s.outpkts, s.inbytes, s.outbytes)) + "\n")
        elif fmt & FMT_RATE:
            s = dest.stats
            lines.append(f"  -> {dname:<28} {s.cps:8d} {s.inpps:8d} {s.outpps:8d}"
                         + _largenum(s.inbps, fmt) + _largenum(s.outbps, fmt) + "\n")
        elif fmt & FMT_THRESHOLDS:
            lines.append(f"  -> {dname:<28} {dest.u_threshold:<10} {dest.l_threshold:<10} "
                         f"{dest.activeconns:<10} {dest.inactconns:<10}\n")
        elif fmt & FMT_PERSISTENTCONN:
            lines.append(f"  -> {dname:<28} {dest.weight:<9} {dest.persistconns:<11} "
                         f"{dest.activeconns:<10} {dest.inactconns:<10}\n")
        elif fmt & FMT_TUN_INFO:
            info = _tun_info(dest) or "n/a"
            lines.append(f"  -> {dname:<28} {_FWD_NAME.get(fwd, '(null)'):<7} {info:<13} "
                         f"{_c_str(dest.weight):<6} {dest.activeconns:<10} {dest.inactconns:<10}\n")
        else:
            lines.append(f"  -> {dname:<28} {_FWD_NAME.get(fwd, '(null)'):<7} "
                         f"{_c_str(dest.weight):<6} {dest.activeconns:<10} {dest.inactconns:<10}\n")
    return "".join(lines)


def _conn_address(text) -> tuple[int, model.IPAddress]:
    addr = text if isinstance(text, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else None
    if addr is None:
        raw = str(text)
        try:
            addr = ipaddress.ip_address(raw)
        except ValueError:
            addr = ipaddress.IPv4Address(int(raw, 16) & 0xFFFFFFFF)  # /proc's hex form
    return model.af_of(addr), addr


def format_connection(printer: _Printer, row: dict, fmt: int) -> str:
    """ipvsadm's print_conn for one /proc/net/ip_vs_conn row."""
    protocol = str(row.get("protocol", ""))
    proto = {"TCP": IPPROTO_TCP, "UDP": IPPROTO_UDP, "SCTP": IPPROTO_SCTP}.get(protocol, 0)
    caf, caddr = _conn_address(row["caddr"])
    _, vaddr = _conn_address(row["vaddr"])
    daf, daddr = _conn_address(row["daddr"])
    cname = printer.addrport(caf, caddr, int(row["cport"]), proto, fmt)
    vname = printer.addrport(caf, vaddr, int(row["vport"]), proto, fmt)
    dname = printer.addrport(daf, daddr, int(row["dport"]), proto, fmt)
    expires = int(row.get("expires", 0))
    expire_str = f"{expires // 60:02d}:{expires % 60:02d}"
    state = str(row.get("state", ""))
    pe_name = row.get("pe_name") or ""
    if fmt & FMT_PERSISTENTCONN and pe_name:
        return (f"{protocol:<3} {expire_str:<6} {state:<11} {cname:<18} {vname:<18} {dname:<16} "
                f"{pe_name:<18} {row.get('pe_data') or ''}\n")
    return f"{protocol:<3} {expire_str:<6} {state:<11} {cname:<18} {vname:<18} {dname}\n"


# --- running a command --------------------------------------------------------------------------
class _Session:
    """One ipvsadm invocation: streams, resolver and the backend, reached at first need."""

    def __init__(self, backend: Optional[Backend], control: Optional[str], out: TextIO,
                 err: TextIO, stdin: Optional[TextIO], resolver: Resolver):
        self._backend = backend
        self._control = control
        self.out = out
        self.err = err
        self.stdin = stdin
        self.resolver = resolver
        self.printer = _Printer(out, resolver)
        self.owns_backend = False

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            from lvsuser.control.client import ControlUnreachable, RemoteBackend
            remote = RemoteBackend(self._control)
            try:
                remote.connect()
            except ControlUnreachable as exc:
                _unreachable(exc)
            self._backend = remote
            self.owns_backend = True
        return self._backend

    def close(self) -> None:
        if self.owns_backend and self._backend is not None:
            self._backend.close()


def _unreachable(exc: OSError) -> None:
    """What ipvsadm says when IPVS is missing, naming the socket instead of the module."""
    fail(2, f"Can't initialize ipvs: {exc.strerror or exc}\n"
            "Are you sure that the lvsuser director is running (lvsuser run)?")


def _call(session: _Session, op: str, *args):
    from lvsuser.control.client import ControlUnreachable
    try:
        return getattr(session.backend, op)(*args)
    except ControlUnreachable as exc:
        _unreachable(exc)


def list_all(session: _Session, fmt: int) -> None:
    out = session.out
    if not fmt & FMT_RULE:
        info = _call(session, "get_info")
        major, minor, patch = info["version"]
        out.write(f"IP Virtual Server version {major}.{minor}.{patch} (size={info['conn_tab_size']})\n")
    try:
        services = _call(session, "get_services")
    except IPVSError as exc:
        raise IpvsadmExit(1, ipvs_strerror("get_services", exc.errno) + "\n")
    if not fmt & FMT_NOSORT:
        services = glibc_qsort(services, compare_services)
    out.write(_title(fmt))
    for svc in services:
        out.write(format_service_entry(session.printer, svc, fmt))
    if fmt & FMT_RULE:
        rules = _call(session, "get_mark_rules")
        if rules:
            from lvsuser.control.rules import format_mark_rule
            for rule in rules:
                out.write(format_mark_rule(rule) + "\n")


def list_service(session: _Session, svc_args: ServiceArgs, fmt: int) -> None:
    try:
        svc = _call(session, "get_service", svc_args.key())
    except IPVSError as exc:
        raise IpvsadmExit(1, ipvs_strerror("get_service", exc.errno) + "\n")
    if svc is None:
        raise IpvsadmExit(1, ipvs_strerror("get_service", errno.ESRCH) + "\n")
    session.out.write(_title(fmt))
    session.out.write(format_service_entry(session.printer, svc, fmt))


def list_conn(session: _Session, fmt: int) -> None:
    try:
        rows = _call(session, "get_connections")
    except (IPVSError, NotImplementedError):
        raise IpvsadmExit(1, "cannot open file /proc/net/ip_vs_conn\n")
    out = session.out
    out.write("IPVS connection entries\n")
    if fmt & FMT_PERSISTENTCONN:
        out.write(f"pro expire {'state':<11} {'source':<18} {'virtual':<18} {'destination':<18} "
                  f"{'pe name':<16} pe_data\n")
    else:
        out.write(f"pro expire {'state':<11} {'source':<18} {'virtual':<18} destination\n")
    for row in rows:
        out.write(format_connection(session.printer, row, fmt))


def list_timeout(session: _Session) -> None:
    t = _call(session, "get_timeouts")
    session.out.write(f"Timeout (tcp tcpfin udp): {t.tcp} {t.tcp_fin} {t.udp}\n")


def list_daemon(session: _Session) -> None:
    for daemon in _call(session, "get_daemons"):
        # ipvsadm prints the optional settings only when the kernel reports them.
        line = f"{daemon.state} sync daemon (mcast={daemon.mcast_ifn}, syncid={daemon.syncid}"
        if daemon.sync_maxlen:
            line += f", maxlen={daemon.sync_maxlen}"
        if daemon.mcast_group is not None:
            line += f", group={daemon.mcast_group}"
        if daemon.mcast_port:
            line += f", port={daemon.mcast_port}"
        if daemon.mcast_ttl:
            line += f", ttl={daemon.mcast_ttl}"
        session.out.write(line + ")\n")


def run_command(ce: CommandEntry, session: _Session, argv: list[str], reading_stdin: bool) -> int:
    """The switch at the end of ipvsadm's process_options; returns its result (0 or -1)."""
    options, fmt = ce.options, ce.format
    if ce.cmd == CMD_LIST:
        if ((options & (_opt(OPTC_CONNECTION) | _opt(OPTC_TIMEOUT) | _opt(OPTC_DAEMON))
             and options & (_opt(OPTC_STATS) | _opt(OPTC_RATE) | _opt(OPTC_THRESHOLDS)))
                or (options & (_opt(OPTC_TIMEOUT) | _opt(OPTC_DAEMON))
                    and options & _opt(OPTC_PERSISTENTCONN))):
            fail(2, "options conflicts in the list command")
        if options & _opt(OPTC_CONNECTION):
            list_conn(session, fmt)
        elif options & _opt(OPTC_SERVICE):
            list_service(session, ce.svc, fmt)
        elif options & _opt(OPTC_TIMEOUT):
            list_timeout(session)
        elif options & _opt(OPTC_DAEMON):
            list_daemon(session)
        else:
            list_all(session, fmt)
        return 0
    if ce.cmd == CMD_RESTORE:
        if reading_stdin:
            tryhelp_exit(argv[0], -1)
        from lvsuser.control.rules import restore
        return restore(session, argv[0])
    if ce.cmd == CMD_SAVE:
        list_all(session, fmt | FMT_RULE)
        return 0
    if ce.cmd in (CMD_STARTDAEMON, CMD_STOPDAEMON):
        op = "start_daemon" if ce.cmd == CMD_STARTDAEMON else "stop_daemon"
        state = "master" if ce.daemon.state == STATE_MASTER else "backup"
        d = ce.daemon
        arg = (model.SyncDaemon(state=state, mcast_ifn=d.mcast_ifn, syncid=d.syncid,
                                sync_maxlen=d.sync_maxlen, mcast_port=d.mcast_port,
                                mcast_ttl=d.mcast_ttl,
                                mcast_group=ipaddress.ip_address(d.mcast_group)
                                if d.mcast_group else None)
               if op == "start_daemon" else state)
        try:
            _call(session, op, arg)
        except NotImplementedError:
            session.err.write(strerror_for_operation(op, errno.ENOSYS) + "\n")
            return -1
        except IPVSError as exc:
            session.err.write(strerror_for_operation(op, exc.errno) + "\n")
            return -1
        return 0
    operation = table_operation(ce)
    if operation is None:
        return 0
    op, kwargs = operation
    try:
        _call(session, op, *kwargs.values())
    except IPVSError as exc:
        session.err.write(strerror_for_operation(op, exc.errno) + "\n")
        return -1
    return 0


def process_options(argv: list[str], session: _Session, reading_stdin: bool = False) -> int:
    ce = parse_command(argv, session.resolver)
    return run_command(ce, session, argv, reading_stdin)


def restore_sigpipe() -> None:
    """Python ignores SIGPIPE; a command-line tool should not (only call this from a CLI)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def _split_control_option(argv: list[str]) -> tuple[list[str], Optional[str]]:
    """Take lvsuser's own --control PATH (not an ipvsadm option) out of the arguments."""
    rest: list[str] = []
    control = None
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            rest.extend(argv[i:])
            break
        if word == "--control" and i + 1 < len(argv):
            control = argv[i + 1]
            i += 2
            continue
        if word.startswith("--control="):
            control = word.split("=", 1)[1]
            i += 1
            continue
        rest.append(word)
        i += 1
    return rest, control


def main(argv: Optional[list[str]] = None, backend: Optional[Backend] = None, *,
         stdin: Optional[TextIO] = None, stdout: Optional[TextIO] = None,
         stderr: Optional[TextIO] = None, resolver: Optional[Resolver] = None) -> int:
    """Run one ipvsadm command line; returns the exit status ipvsadm would have."""
    if argv is None:  # the console script: die of SIGPIPE in `... | head` like the C program
        restore_sigpipe()
        argv = sys.argv[1:]
    args, control = _split_control_option(list(argv))
    session = _Session(backend, control, stdout or sys.stdout, stderr or sys.stderr,
                       stdin if stdin is not None else sys.stdin, resolver or Resolver())
    full_argv = [PROGRAM] + args
    try:
        if len(full_argv) == 1:
            list_all(session, 0)
            code = 0
        else:
            code = process_options(full_argv, session)
    except IpvsadmExit as exc:
        session.out.write(exc.stdout)
        session.err.write(exc.stderr)
        code = exc.code
    finally:
        session.out.flush()
        session.close()
    return _exit_status(code)


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
