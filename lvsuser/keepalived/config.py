"""keepalived.conf's meaning for lvsuser: virtual_server, virtual_server_group, real_server and
the checker blocks, as keepalived's check_parser.c reads them.

Theory of operation
-------------------
``load(path)`` parses the file (parser.py) and walks the tree with one table of keywords per
block.  Each keyword we implement has a handler; the rest fall in three kinds, never silently:

* keywords of keepalived's VRRP side (vrrp_* blocks, static_* blocks, the VRRP/daemon settings
  of global_defs) -- a *note* "for keepalived's VRRP (run a real keepalived for it)";
* keepalived keywords of the checker side that lvsuser does not implement (smtp_alert, bind_if,
  regex, ...) -- a *warning* naming the keyword, file and line; the rest of the file applies;
* anything else (a typo, a keyword of no keepalived) -- an *error*: the file is refused.

The result is a list of ``check.config.VirtualServerConfig`` (services as the kernel would get
them from keepalived, real servers, checkers) plus the messages.  Defaults are keepalived's:
lvs_sched wlc, lvs_method NAT, protocol TCP, weight 1, delay_loop 60, persistence 360 s when
persistence_timeout has no value, quorum 1.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import shlex
from typing import Callable, Optional

from lvsuser import model
from lvsuser.check.config import CheckerConfig, RealServerConfig, VirtualServerConfig
from lvsuser.keepalived.parser import ConfError, Node, parse_file

VRRP_NOTE = "for keepalived's VRRP (run a real keepalived for it)"

CHECKER_KINDS = ("TCP_CHECK", "HTTP_GET", "SSL_GET", "MISC_CHECK", "UDP_CHECK", "DNS_CHECK",
                 "PING_CHECK")
# keepalived checkers lvsuser does not run
OTHER_CHECKERS = ("SMTP_CHECK", "BFD_CHECK", "FILE_CHECK", "TRACK_FILE_CHECK")

VRRP_BLOCKS = ("vrrp_instance", "vrrp_sync_group", "vrrp_script", "vrrp_track_process",
               "vrrp_track_file", "track_file", "static_ipaddress", "static_routes",
               "static_rules", "garp_group", "linkbeat_interfaces", "bfd_instance")
# global_defs keywords that concern the checker side (all others are VRRP/daemon settings)
GLOBAL_CHECKER_WARN = ("lvs_timeouts", "lvs_sync_daemon", "lvs_flush", "lvs_flush_onstop",
                       "checker_log_all_failures", "lvs_notify_fifo", "lvs_notify_fifo_script",
                       "smtp_server", "smtp_connect_timeout", "smtp_helo_name",
                       "notification_email", "notification_email_from", "smtp_alert",
                       "smtp_alert_checker", "checker_priority", "checker_no_swap",
                       "checker_rt_priority", "checker_cpu_affinity", "enable_script_security",
                       "script_user", "notify_fifo", "notify_fifo_script")

SCHED_FLAGS = {"flag-1": model.SVC_F_SCHED1, "flag-2": model.SVC_F_SCHED2,
               "flag-3": model.SVC_F_SCHED3, "sh-fallback": model.SVC_F_SCHED1,
               "sh-port": model.SVC_F_SCHED2, "mh-fallback": model.SVC_F_SCHED1,
               "mh-port": model.SVC_F_SCHED2}
METHODS = {"NAT": model.Forward.MASQ, "DR": model.Forward.ROUTE, "TUN": model.Forward.TUNNEL}
PROTOCOLS = {"TCP": model.IPPROTO_TCP, "UDP": model.IPPROTO_UDP, "SCTP": model.IPPROTO_SCTP}
KEEPALIVED_PERSISTENCE = 360  # persistence_timeout without a value


def _scheduler_names() -> list[str]:
    """The schedulers this lvsuser has (plugins included once loaded); [] if unknown."""
    try:
        from lvsuser import schedulers
    except ImportError:
        return []
    return schedulers.names()


@dataclasses.dataclass
class Message:
    level: str  # "error", "warning", "note"
    where: str
    text: str

    def __str__(self) -> str:
        return f"{self.where}: {self.level}: {self.text}"


@dataclasses.dataclass
class Configuration:
    virtual_servers: list[VirtualServerConfig]
    messages: list[Message]

    @property
    def errors(self) -> list[Message]:
        return [m for m in self.messages if m.level == "error"]

    def services(self) -> list[model.Service]:
        """The table keepalived would program at start (non-alpha servers in, alpha out;
        inhibited failed servers at weight 0; sorry servers only where quorum starts down)."""
        from lvsuser.backends.table import TableBackend
        from lvsuser.check.ipwrapper import Pool

        table = TableBackend()
        for vs in self.virtual_servers:
            Pool(vs, table, script_runner=lambda argv: None).start()
        return table.get_services()


class _Reader:
    def __init__(self):
        self.messages: list[Message] = []
        self.groups: dict[str, list[Node]] = {}
        self.group_where: dict[str, str] = {}

    def error(self, node: Node, text: str) -> None:
        self.messages.append(Message("error", node.where, text))

    def warn_unsupported(self, node: Node, context: str) -> None:
        self.messages.append(Message(
            "warning", node.where,
            f"keyword '{node.keyword}' in {context} is not supported by lvsuser: ignored"))

    def unknown(self, node: Node, context: str) -> None:
        self.error(node, f"unknown keyword '{node.keyword}' in {context}")

    # --- values --------------------------------------------------------------------------
    def arg(self, node: Node, index: int = 0) -> Optional[str]:
        if len(node.args) <= index:
            self.error(node, f"'{node.keyword}' needs a value")
            return None
        return node.args[index]

    def number(self, node: Node, low: float = 0, high: float = 2**31,
               integer: bool = True) -> Optional[float]:
        text = self.arg(node)
        if text is None:
            return None
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            self.error(node, f"'{node.keyword}' needs a number, not '{text}'")
            return None
        if not low <= value <= high:
            self.error(node, f"'{node.keyword}' {text} is out of range {low}..{high}")
            return None
        return value

    def flag(self, node: Node) -> Optional[bool]:
        if not node.args:
            return True
        word = node.args[0].lower()
        if word in ("true", "on", "yes"):
            return True
        if word in ("false", "off", "no"):
            return False
        self.error(node, f"'{node.keyword}' takes true or false, not '{node.args[0]}'")
        return None

    def address(self, node: Node, text: Optional[str]):
        if text is None:
            return None
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            self.error(node, f"'{text}' is not an IP address (names are not resolved)")
            return None

    def port(self, node: Node, text: Optional[str]) -> Optional[int]:
        if text is None:
            return None
        try:
            value = int(text)
        except ValueError:
            value = -1
        if not 0 <= value <= 65535:
            self.error(node, f"'{text}' is not a port number")
            return None
        return value

    def script(self, node: Node) -> Optional[list[str]]:
        """keepalived's '<script> [username [groupname]]': the first word (quoted, it holds
        the arguments too) is split into argv; a user to run it as is not supported here."""
        if not node.args:
            self.error(node, f"'{node.keyword}' needs a script")
            return None
        if len(node.args) > 1:
            self.messages.append(Message(
                "warning", node.where, f"'{node.keyword}': running the script as user "
                f"{' '.join(node.args[1:])} is not supported by lvsuser: it runs as the "
                f"director's user (quote the script and its arguments together)"))
        try:
            return shlex.split(node.args[0])
        except ValueError:
            return [node.args[0]]

    # --- blocks --------------------------------------------------------------------------
    def read(self, nodes: list[Node]) -> list[VirtualServerConfig]:
        # groups first: a virtual_server may name a group defined after it
        for node in nodes:
            if node.keyword == "virtual_server_group":
                name = self.arg(node)
                if name is None:
                    continue
                if node.children is None:
                    self.error(node, "virtual_server_group needs a { } block")
                    continue
                self.groups[name] = node.children
                self.group_where[name] = node.where
        result = []
        for node in nodes:
            keyword = node.keyword
            if keyword == "virtual_server":
                vs = self.virtual_server(node)
                if vs is not None:
                    result.append(vs)
            elif keyword == "virtual_server_group":
                continue
            elif keyword in VRRP_BLOCKS or keyword.startswith("vrrp_"):
                self.messages.append(Message("note", node.where, f"{keyword}: {VRRP_NOTE}"))
            elif keyword == "global_defs":
                self.global_defs(node)
            elif keyword == "SSL":  # client certificates for SSL_GET
                self.warn_unsupported(node, "the top level")
            elif keyword in ("net_namespace", "instance", "use_pid_dir", "linkbeat_use_polling",
                             "net_namespace_ipvs", "namespace_with_ipsets", "bfd_instance"):
                self.messages.append(Message("note", node.where, f"{keyword}: {VRRP_NOTE}"))
            else:
                self.unknown(node, "the top level")
        return result

    def global_defs(self, node: Node) -> None:
        for child in node.children or []:
            if child.keyword in GLOBAL_CHECKER_WARN:
                self.warn_unsupported(child, "global_defs")
            else:
                self.messages.append(Message("note", child.where,
                                             f"global_defs {child.keyword}: {VRRP_NOTE}"))

    def group_services(self, node: Node, name: str, port_hint: int, protocol: int,
                       template: Callable[..., model.Service]) -> list[model.Service]:
        entries = self.groups.get(name)
        if entries is None:
            self.error(node, f"virtual_server_group '{name}' is not defined")
            return []
        services = []
        for entry in entries:
            words = [entry.keyword] + entry.args
            if words[0] == "fwmark":
                mark = self.number(entry, 1, 2**32 - 1)
                if mark is not None:
                    services.append(template(af=model.AF_INET, fwmark=int(mark)))
                continue
            if len(words) < 2 and not port_hint:
                self.error(entry, "a group entry is 'IP[-END] PORT' or 'fwmark N'")
                continue
            first, _, last = words[0].partition("-")
            start = self.address(entry, first)
            port = self.port(entry, words[1] if len(words) > 1 else str(port_hint))
            if start is None or port is None:
                continue
            addresses = [start]
            if last:
                try:
                    end_low = int(last)
                except ValueError:
                    self.error(entry, f"'{words[0]}': a range ends with a number")
                    continue
                if start.version == 4:
                    base = int(start) & ~0xFF
                    begin_low = int(start) & 0xFF
                else:
                    base = int(start) & ~0xFFFF
                    begin_low = int(start) & 0xFFFF
                if end_low < begin_low:
                    self.error(entry, f"'{words[0]}': the range ends before it starts")
                    continue
                addresses = [ipaddress.ip_address(base + low)
                             for low in range(begin_low, end_low + 1)]
            for addr in addresses:
                af = model.AF_INET6 if addr.version == 6 else model.AF_INET
                services.append(template(af=af, protocol=protocol, addr=addr, port=port))
        return services

    def virtual_server(self, node: Node) -> Optional[VirtualServerConfig]:
        if node.children is None:
            self.error(node, "virtual_server needs a { } block")
            return None
        args = node.args
        kind = "ip"
        if args[:1] == ["fwmark"]:
            kind = "fwmark"
        elif args[:1] == ["group"]:
            kind = "group"
        if (kind == "ip" and len(args) < 2) or (kind != "ip" and len(args) < 2):
            self.error(node, "virtual_server is 'IP PORT', 'fwmark N' or 'group NAME'")
            return None
        settings = dict(scheduler="wlc", flags=model.SVC_F_HASHED, timeout=0, netmask=None,
                        protocol=model.IPPROTO_TCP, method=model.Forward.MASQ)
        vs = VirtualServerConfig(name=" ".join(args), services=[], where=node.where)
        vs_inhibit = False
        real_nodes = []
        for child in node.children:
            keyword = child.keyword
            if keyword in ("lvs_sched", "lb_algo"):
                value = self.arg(child)
                known = _scheduler_names()
                if value is not None and known and value not in known:
                    self.error(child, f"{keyword} {value}: no such scheduler "
                                      f"(known: {', '.join(known)})")
                elif value is not None:
                    settings["scheduler"] = value
            elif keyword in ("lvs_method", "lb_kind"):
                method = self.method(child)
                if method is not None:
                    settings["method"], settings["tunnel"] = method
            elif keyword == "protocol":
                value = (self.arg(child) or "").upper()
                if value not in PROTOCOLS:
                    self.error(child, f"protocol {value}: TCP, UDP or SCTP")
                else:
                    settings["protocol"] = PROTOCOLS[value]
            elif keyword == "persistence_timeout":
                value = self.number(child, 1, 2**31) if child.args else KEEPALIVED_PERSISTENCE
                if value is not None:
                    settings["flags"] |= model.SVC_F_PERSISTENT
                    settings["timeout"] = int(value)
            elif keyword == "persistence_granularity":
                settings["netmask"] = (self.arg(child), child)
            elif keyword in SCHED_FLAGS:
                settings["flags"] |= SCHED_FLAGS[keyword]
            elif keyword == "ops":
                settings["flags"] |= model.SVC_F_ONEPACKET
            elif keyword == "delay_loop":
                value = self.number(child, 0.001, 2**31, integer=False)
                if value is not None:
                    vs.delay_loop = value
            elif keyword in ("connect_timeout", "delay_before_retry", "warmup"):
                value = self.number(child, 0, 2**31, integer=False)
                if value is not None:
                    setattr(vs, keyword, value)
            elif keyword == "retry":
                value = self.number(child, 0, 2**31)
                if value is not None:
                    vs.retry = int(value)
            elif keyword in ("alpha", "omega", "ha_suspend"):
                value = self.flag(child)
                if value is not None:
                    setattr(vs, keyword, value)
                if keyword == "ha_suspend":
                    self.messages.append(Message(
                        "note", child.where, "ha_suspend: checks pause while the virtual "
                        "address is not on this host (moving it is " + VRRP_NOTE + ")"))
            elif keyword == "inhibit_on_failure":
                vs_inhibit = bool(self.flag(child))
            elif keyword in ("quorum", "hysteresis"):
                value = self.number(child, 0 if keyword == "hysteresis" else 1, 2**31)
                if value is not None:
                    setattr(vs, keyword, int(value))
            elif keyword in ("quorum_up", "quorum_down"):
                setattr(vs, keyword, self.script(child))
            elif keyword == "sorry_server":
                addr = self.address(child, self.arg(child, 0))
                port = self.port(child, child.args[1] if len(child.args) > 1 else "0")
                if addr is not None and port is not None:
                    vs.sorry_server = RealServerConfig(addr=addr, port=port, where=child.where)
            elif keyword == "sorry_server_inhibit":
                settings["sorry_inhibit"] = bool(self.flag(child))
            elif keyword == "sorry_server_lvs_method":
                method = self.method(child)
                if method is not None:
                    settings["sorry_method"], settings["sorry_tunnel"] = method
            elif keyword == "real_server":
                real_nodes.append(child)
            elif keyword == "ip_family":
                if child.args[:1] not in (["inet"], ["inet6"]):
                    self.error(child, "ip_family is inet or inet6")
            elif keyword == "virtualhost":  # the HTTP checkers' Host unless they name one
                settings["virtualhost"] = self.arg(child)
            elif keyword in ("smtp_alert", "retry_on_failure", "nat_mask",
                             "failover_threshold", "failover_up", "failover_down",
                             "backup_real_server", "sorry_server_inhibit_on_failure",
                             "lvs_sched_flags", "persistence_engine", "tunnel_type"):
                self.warn_unsupported(child, "virtual_server")
            else:
                self.unknown(child, "virtual_server")

        netmask = None
        if settings["netmask"] is not None:
            text, child = settings["netmask"]
            netmask = (text, child)

        def template(af: int, protocol: int = 0, addr=None, port: int = 0,
                     fwmark: int = 0) -> model.Service:
            mask = model.DEFAULT_NETMASK_V4 if af == model.AF_INET else model.DEFAULT_NETMASK_V6
            if netmask is not None and netmask[0] is not None:
                mask = self.netmask(netmask[1], netmask[0], af, mask)
            return model.Service(af=af, protocol=protocol if not fwmark else 0, addr=addr,
                                 port=port, fwmark=fwmark, scheduler=settings["scheduler"],
                                 flags=settings["flags"], timeout=settings["timeout"],
                                 netmask=mask)

        if kind == "fwmark":
            mark = self.number(Node("fwmark", args[1:], node.where), 1, 2**32 - 1)
            if mark is None:
                return None
            family = model.AF_INET
            for child in node.children:
                if child.keyword == "ip_family" and child.args[:1] == ["inet6"]:
                    family = model.AF_INET6
            vs.services = [template(af=family, fwmark=int(mark))]
        elif kind == "group":
            vs.services = self.group_services(node, args[1], 0, settings["protocol"], template)
        else:
            addr = self.address(node, args[0])
            port = self.port(node, args[1])
            if addr is None or port is None:
                return None
            af = model.AF_INET6 if addr.version == 6 else model.AF_INET
            vs.services = [template(af=af, protocol=settings["protocol"], addr=addr, port=port)]
        if vs.sorry_server is not None:
            vs.sorry_server.fwd = settings.get("sorry_method", settings["method"])
            vs.sorry_server.tunnel = settings.get("sorry_tunnel",
                                                  settings.get("tunnel", (0, 0, 0)))
            vs.sorry_server.inhibit_on_failure = settings.get("sorry_inhibit", False)
        for child in real_nodes:
            rs = self.real_server(child, settings["method"], vs_inhibit,
                                  settings.get("tunnel", (0, 0, 0)))
            if rs is None:
                continue
            if any(other.key == rs.key for other in vs.real_servers):
                self.error(child, f"real_server {rs.addr} {rs.port} is listed twice")
                continue
            vs.real_servers.append(rs)
            for checker in rs.checkers:
                if checker.kind in ("HTTP_GET", "SSL_GET") and settings.get("virtualhost") \
                        and not checker.options.get("virtualhost"):
                    checker.options["virtualhost"] = settings["virtualhost"]
        return vs

    def method(self, node: Node) -> Optional[tuple]:
        """lvs_method NAT|DR|TUN [type ipip|gue port N|gre] [nocsum|csum|remcsum]:
        (forwarding, (tun_type, tun_port, tun_flags)) or None after an error."""
        words = [w for w in node.args]
        if not words or words[0].upper() not in METHODS:
            self.error(node, f"{node.keyword} {' '.join(words)}: NAT, DR or TUN")
            return None
        forward = METHODS[words[0].upper()]
        tun_type, tun_port, tun_flags = 0, 0, 0
        rest = words[1:]
        if rest and forward != model.Forward.TUNNEL:
            self.error(node, f"{node.keyword} {words[0]} takes no options")
            return None
        index = 0
        while index < len(rest):
            word = rest[index].lower()
            if word == "type" and index + 1 < len(rest):
                kind = rest[index + 1].lower()
                if kind not in ("ipip", "gue", "gre"):
                    self.error(node, f"tunnel type {kind}: ipip, gue or gre")
                    return None
                tun_type = {"ipip": 0, "gue": 1, "gre": 2}[kind]
                index += 2
            elif word == "port" and index + 1 < len(rest):
                port = self.port(node, rest[index + 1])
                if port is None:
                    return None
                tun_port = port
                index += 2
            elif word in ("nocsum", "csum", "remcsum"):
                tun_flags = {"nocsum": model.TUN_FLAG_NOCSUM, "csum": model.TUN_FLAG_CSUM,
                             "remcsum": model.TUN_FLAG_REMCSUM}[word]
                index += 1
            else:
                self.error(node, f"{node.keyword} TUN: unknown option '{rest[index]}'")
                return None
        if tun_type == 1 and not tun_port:
            self.error(node, f"{node.keyword} TUN type gue needs a port")
            return None
        return forward, (tun_type, tun_port, tun_flags)

    def netmask(self, node: Node, text: str, af: int, default: int) -> int:
        try:
            if af == model.AF_INET:
                if "." in text:
                    return int(ipaddress.IPv4Address(text))
                return (0xFFFFFFFF << (32 - int(text))) & 0xFFFFFFFF
            return int(text)
        except ValueError:
            self.error(node, f"persistence_granularity {text} is not a netmask")
            return default

    def real_server(self, node: Node, method, vs_inhibit: bool,
                    tunnel: tuple = (0, 0, 0)) -> Optional[RealServerConfig]:
        if len(node.args) < 1 or node.children is None:
            self.error(node, "real_server is 'IP PORT { ... }'")
            return None
        addr = self.address(node, node.args[0])
        port = self.port(node, node.args[1] if len(node.args) > 1 else "0")
        if addr is None or port is None:
            return None
        rs = RealServerConfig(addr=addr, port=port, fwd=method, where=node.where,
                              inhibit_on_failure=vs_inhibit, tunnel=tunnel)
        for child in node.children:
            keyword = child.keyword
            if keyword == "weight":
                value = self.number(child, 0, 65535)
                if value is not None:
                    rs.weight = int(value)
            elif keyword in ("uthreshold", "lthreshold"):
                value = self.number(child, 0, 2**31)
                if value is not None:
                    setattr(rs, "u_threshold" if keyword[0] == "u" else "l_threshold", int(value))
            elif keyword == "inhibit_on_failure":
                rs.inhibit_on_failure = bool(self.flag(child))
            elif keyword in ("notify_up", "notify_down"):
                setattr(rs, keyword, self.script(child))
            elif keyword in ("lvs_method", "lb_kind"):
                method = self.method(child)
                if method is not None:
                    rs.fwd, rs.tunnel = method
            elif keyword == "alpha":
                rs.alpha = self.flag(child)
            elif keyword == "retry":
                value = self.number(child, 0, 2**31)
                rs.retry = None if value is None else int(value)
            elif keyword in ("delay_loop", "delay_before_retry", "connect_timeout", "warmup"):
                value = self.number(child, 0, 2**31, integer=False)
                if value is not None:
                    setattr(rs, keyword, value)
            elif keyword in CHECKER_KINDS:
                checker = self.checker(child)
                if checker is not None:
                    rs.checkers.append(checker)
            elif keyword in OTHER_CHECKERS or keyword in ("smtp_alert", "virtualhost",
                                                          "track_file", "tunnel_type"):
                self.warn_unsupported(child, "real_server")
            else:
                self.unknown(child, "real_server")
        return rs

    def checker(self, node: Node) -> Optional[CheckerConfig]:
        checker = CheckerConfig(kind=node.keyword)
        kind = node.keyword
        options = checker.options
        if kind in ("HTTP_GET", "SSL_GET"):
            options["urls"] = []
        for child in node.children or []:
            keyword = child.keyword
            if keyword == "connect_ip":
                addr = self.address(child, self.arg(child))
                checker.connect_ip = str(addr) if addr is not None else None
            elif keyword == "connect_port":
                checker.connect_port = self.port(child, self.arg(child))
            elif keyword == "bindto":
                addr = self.address(child, self.arg(child))
                checker.bindto = str(addr) if addr is not None else None
            elif keyword == "bind_port":
                checker.bind_port = self.port(child, self.arg(child))
            elif keyword in ("connect_timeout", "delay_before_retry", "warmup", "delay_loop"):
                value = self.number(child, 0, 2**31, integer=False)
                if value is not None:
                    setattr(checker, keyword, value)
            elif keyword in ("retry", "nb_get_retry"):
                value = self.number(child, 0, 2**31)
                if value is not None:
                    checker.retry = int(value)
            elif keyword == "alpha":
                checker.alpha = self.flag(child)
            elif keyword == "log_all_failures":
                pass  # every failure is logged here anyway
            elif kind in ("HTTP_GET", "SSL_GET") and keyword == "url":
                url = self.url(child)
                if url is not None:
                    options["urls"].append(url)
            elif kind in ("HTTP_GET", "SSL_GET") and keyword == "virtualhost":
                options["virtualhost"] = self.arg(child)
            elif kind == "MISC_CHECK" and keyword == "misc_path":
                # one quoted word holds the program and its arguments; several words are
                # the program and its arguments already split
                options["misc_path"] = child.args[0] if len(child.args) == 1 else \
                    shlex.join(child.args)
            elif kind == "MISC_CHECK" and keyword == "misc_timeout":
                value = self.number(child, 0.001, 2**31, integer=False)
                if value is not None:
                    options["misc_timeout"] = value
            elif kind == "MISC_CHECK" and keyword == "misc_dynamic":
                options["misc_dynamic"] = bool(self.flag(child))
            elif kind == "UDP_CHECK" and keyword in ("payload", "require_reply"):
                data = b""
                if child.args:
                    try:
                        data = bytes.fromhex("".join(child.args))
                    except ValueError:
                        self.error(child, f"{keyword}: hexadecimal bytes expected")
                if keyword == "payload":
                    options["payload"] = data
                else:
                    options["require_reply"] = True
                    options["reply_data"] = data or None
            elif kind == "DNS_CHECK" and keyword in ("type", "name"):
                options[keyword] = self.arg(child)
            elif keyword in ("bind_if", "fwmark", "regex", "regex_no_match", "regex_options",
                             "regex_stack", "regex_min_offset", "regex_max_offset",
                             "enable_sni", "tls_compliant", "protocol", "fast_recovery",
                             "user", "min_reply_length", "max_reply_length", "http_protocol"):
                self.warn_unsupported(child, kind)
            else:
                self.unknown(child, kind)
        if kind in ("HTTP_GET", "SSL_GET") and not options["urls"]:
            self.error(node, f"{kind} has no url")
            return None
        if kind == "MISC_CHECK" and not options.get("misc_path"):
            self.error(node, "MISC_CHECK has no misc_path")
            return None
        return checker

    def url(self, node: Node) -> Optional[dict]:
        url: dict = {"path": "/"}
        for child in node.children or []:
            if child.keyword == "path":
                url["path"] = self.arg(child) or "/"
            elif child.keyword == "digest":
                digest = (self.arg(child) or "").lower()
                if len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest):
                    self.error(child, f"digest {digest}: an MD5 is 32 hex digits")
                url["digest"] = digest
            elif child.keyword == "status_code":
                codes: set[int] = set()
                for word in child.args:
                    low, _, high = word.partition("-")
                    try:
                        codes.update(range(int(low), int(high or low) + 1))
                    except ValueError:
                        self.error(child, f"status_code {word}: a code or a range")
                url["status_code"] = codes
            elif child.keyword == "virtualhost":
                self.warn_unsupported(child, "url (one virtualhost per checker here)")
            elif child.keyword.startswith("regex"):
                self.warn_unsupported(child, "url")
            else:
                self.unknown(child, "url")
        return url


def load(path: str) -> Configuration:
    """Read a keepalived.conf; syntax errors become error messages (nothing is raised)."""
    reader = _Reader()
    try:
        nodes = parse_file(path)
    except ConfError as exc:
        return Configuration([], [Message("error", exc.where, exc.message)])
    virtual_servers = reader.read(nodes)
    return Configuration(virtual_servers, reader.messages)
