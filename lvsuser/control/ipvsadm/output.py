"""ipvsadm's listings: services with their real servers (print_service_entry) and connections
(print_conn), in every format ipvsadm has (-n, -S, --stats, --rate, --thresholds, ...).

Widths, truncations (ipvsadm formats an address into a 60-byte buffer, a service name into 33
bytes) and C's int wrap-around are reproduced: tests/unit/test_ipvsadm_refs.py compares every
line with kernel captures.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import TextIO

from lvsuser import model
from lvsuser.control.ipvsadm.constants import (
    AF_INET,
    AF_INET6,
    CONN_F_DROUTE,
    CONN_F_FWD_MASK,
    CONN_F_LOCALNODE,
    CONN_F_MASQ,
    CONN_F_TUNNEL,
    FMT_EXACT,
    FMT_NOSORT,
    FMT_NUMERIC,
    FMT_PERSISTENTCONN,
    FMT_RATE,
    FMT_RULE,
    FMT_STATS,
    FMT_THRESHOLDS,
    FMT_TUN_INFO,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    TUN_FLAGS_OPTS,
    TUNFLAGS,
)
from lvsuser.control.ipvsadm.qsort import compare_dests, glibc_qsort, wrap_int
from lvsuser.control.ipvsadm.resolver import PROTO_DB_NAMES, Resolver


class Printer:
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
            proto_name = PROTO_DB_NAMES.get(proto)
            service = self.resolver.port_to_service(port, proto_name) if proto_name else None
            text = f"{bracket_open}{host}{bracket_close}:{service or port}"
        return text[:59]  # ipvsadm formats into a 60-byte buffer


def largenum(value: int, fmt: int) -> str:
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


def title(fmt: int) -> str:
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


def _tun_info(dest: model.Dest) -> str | None:
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
    return str(wrap_int(value))


def _persistence_mask_text(svc) -> str | None:
    """The persistence netmask as ipvsadm prints it (-M / "mask"), or None when it is the default."""
    if svc.af == AF_INET and svc.netmask != 0xFFFFFFFF:
        return str(ipaddress.IPv4Address(svc.netmask & 0xFFFFFFFF))
    if svc.af == AF_INET6 and svc.netmask != 128:
        return _c_str(svc.netmask)
    return None


def format_service_entry(printer: Printer, svc: model.Service, fmt: int) -> str:
    """ipvsadm's print_service_entry."""
    lines = []
    if svc.fwmark:
        if fmt & FMT_RULE:
            svc_name = f"-f {wrap_int(svc.fwmark)}" + (" -6" if svc.af == AF_INET6 else "")
        else:
            svc_name = f"FWM  {wrap_int(svc.fwmark)}" + (" IPv6" if svc.af == AF_INET6 else "")
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
        line = f"{svc_name:<33}" + "".join(largenum(v, fmt) for v in (
            s.conns, s.inpkts, s.outpkts, s.inbytes, s.outbytes))
    elif fmt & FMT_RATE:
        s = svc.stats
        line = f"{svc_name:<33}" + "".join(largenum(v, fmt) for v in (
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
            lines.append(f"  -> {dname:<28}" + "".join(largenum(v, fmt) for v in (
                s.conns, s.inpkts, s.outpkts, s.inbytes, s.outbytes)) + "\n")
        elif fmt & FMT_RATE:
            s = dest.stats
            lines.append(f"  -> {dname:<28} {s.cps:8d} {s.inpps:8d} {s.outpps:8d}"
                         + largenum(s.inbps, fmt) + largenum(s.outbps, fmt) + "\n")
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


def connection_title(fmt: int) -> str:
    """The two lines ipvsadm prints before the connections."""
    if fmt & FMT_PERSISTENTCONN:
        return ("IPVS connection entries\n"
                f"pro expire {'state':<11} {'source':<18} {'virtual':<18} {'destination':<18} "
                f"{'pe name':<16} pe_data\n")
    return ("IPVS connection entries\n"
            f"pro expire {'state':<11} {'source':<18} {'virtual':<18} destination\n")


def format_connection(printer: Printer, row: dict, fmt: int) -> str:
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
