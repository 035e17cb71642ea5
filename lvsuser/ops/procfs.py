"""`lvsuser run --procfs DIR`: DIR/net/ip_vs, ip_vs_stats and ip_vs_conn as the kernel writes them.

Theory of operation
-------------------
Tools written for kernel IPVS read three files: ``/proc/net/ip_vs`` (services and their real
servers, ``ip_vs_info_seq_show`` in net/netfilter/ipvs/ip_vs_ctl.c), ``/proc/net/ip_vs_stats``
(the namespace's totals and rates, ``ip_vs_stats_show``) and ``/proc/net/ip_vs_conn`` (the
connection table, ``ip_vs_conn_seq_show`` in ip_vs_conn.c).  node_exporter's IPVS collector is
one of them (``--path.procfs DIR``); shell scripts that grep /proc are others.  We keep the same
three files under a directory of the user's choice, byte for byte in the kernel's formats:

* addresses in hex as the kernel prints ``ntohl(addr)`` (``%08X``), IPv6 ones as ``%pI6`` (eight
  groups of four lower-case hex digits), ports ``%04X``; IPv6 services and real servers in
  brackets (``[...]:PORT``); firewall-mark services as ``FWM  %08X``;
* the kernel's quirks kept: an IPv4 service line has an empty ``ops`` field (two spaces before
  the end of the line), an IPv6 one has none; the persistence timeout is printed in jiffies
  (``svc->timeout`` is stored as seconds x HZ; Debian's kernels use HZ=250), and the IPv6
  persistence "netmask" is the prefix length as libipvs sends it (host order) read back through
  ``ntohl`` -- 128 prints as 80000000 on a little-endian host;
* the totals are 64-bit hex (``%8LX``, ``%16LX``).  Ours are the sums over the present services
  (the kernel also keeps what deleted services counted; ``ipvsadm -Z`` zeroes both alike).

Each file is written to a temporary name in the same directory and renamed over the old one, so
a reader sees the previous or the next version, never half of one.  ``ProcfsWriter`` refreshes
the two small files every ``interval`` seconds from ``backend.get_services()``; the connection
table, which may hold millions of rows, is written by its own thread page by page
(``backend.iter_connections()``, which never holds the datapath's lock while it builds rows),
so a big table delays only its own file.  Nothing here touches the real /proc.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from typing import Iterable, Iterator, Optional

from lvsuser import model

log = logging.getLogger("lvsuser.procfs")

# Debian's amd64 kernels (the ones this project checks against) are built with CONFIG_HZ=250.
KERNEL_HZ = 250

IP_VS = "ip_vs"
IP_VS_STATS = "ip_vs_stats"
IP_VS_CONN = "ip_vs_conn"
FILES = (IP_VS, IP_VS_STATS, IP_VS_CONN)
# How long start() waits for the first ip_vs_conn (seconds); a bigger table is written after.
FIRST_ROUND_WAIT = 1.0

_PROTO_NAMES = {0: "IP", model.IPPROTO_TCP: "TCP", model.IPPROTO_UDP: "UDP",
                model.IPPROTO_SCTP: "SCTP", 1: "ICMP", 58: "ICMPv6"}

# ip_vs_fwd_name(): anything that is not Local/Tunnel/Route prints as Masq (Bypass included).
_FWD_NAMES = {model.Forward.LOCALNODE: "Local", model.Forward.TUNNEL: "Tunnel",
              model.Forward.ROUTE: "Route"}

CONN_HEADER = ("Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires "
               "PEName PEData\n")


def proto_name(protocol: int) -> str:
    """ip_vs_proto_name()."""
    return _PROTO_NAMES.get(protocol, f"IP_{protocol}")


def fwd_name(fwd: int) -> str:
    return _FWD_NAMES.get(int(fwd) & model.FWD_MASK, "Masq")


def _as_address(value) -> model.IPAddress:
    """An address object from what a backend's row holds: an address, its text, or /proc hex."""
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    text = str(value)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return ipaddress.IPv4Address(int(text, 16) & 0xFFFFFFFF)


def hex_v4(addr: ipaddress.IPv4Address) -> str:
    """%08X of ntohl(addr)."""
    return f"{int(addr):08X}"


def pi6(addr: ipaddress.IPv6Address) -> str:
    """%pI6: eight colon-separated groups of four lower-case hex digits, nothing compressed."""
    return addr.exploded


def _netmask_word(svc: model.Service) -> int:
    """What the kernel prints for ntohl(svc->netmask)."""
    if svc.af == model.AF_INET6:
        # libipvs sends the prefix length as a host-order u32; the kernel keeps the raw word
        return int.from_bytes((svc.netmask & 0xFFFFFFFF).to_bytes(4, "little"), "big")
    return svc.netmask & 0xFFFFFFFF


def format_service(svc: model.Service, hz: int = KERNEL_HZ) -> str:
    """One service and its real servers, as ip_vs_info_seq_show prints them."""
    ops = "ops " if svc.flags & model.SVC_F_ONEPACKET else ""
    if svc.fwmark:
        head = f"FWM  {svc.fwmark & 0xFFFFFFFF:08X} {svc.scheduler} {ops}"
    elif svc.af == model.AF_INET6:
        head = f"{proto_name(svc.protocol)}  [{pi6(svc.addr)}]:{svc.port:04X} {svc.scheduler} "
    else:
        head = (f"{proto_name(svc.protocol)}  {hex_v4(svc.addr)}:{svc.port:04X} "
                f"{svc.scheduler} {ops} ")
    if svc.flags & model.SVC_F_PERSISTENT:
        head += f"persistent {svc.timeout * hz} {_netmask_word(svc):08X}\n"
    else:
        head += "\n"
    lines = [head]
    for dest in svc.dests:
        if dest.af == model.AF_INET6:
            where = f"  -> [{pi6(dest.addr)}]:{dest.port:04X}      "
        else:
            where = f"  -> {hex_v4(dest.addr)}:{dest.port:04X}      "
        lines.append(f"{where}{fwd_name(dest.fwd):<7} {dest.weight:<6d} "
                     f"{dest.activeconns:<10d} {dest.inactconns:<10d}\n")
    return "".join(lines)


def format_ip_vs(services: Iterable[model.Service], conn_tab_size: int = model.IPVS_CONN_TAB_SIZE,
                 version: tuple = model.IPVS_VERSION, hz: int = KERNEL_HZ) -> str:
    """The whole of /proc/net/ip_vs: the header, then each service in the order given (the
    kernel walks its address-hashed table, then the fwmark table)."""
    major, minor, patch = version
    parts = [f"IP Virtual Server version {major}.{minor}.{patch} (size={conn_tab_size})\n",
             "Prot LocalAddress:Port Scheduler Flags\n",
             "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"]
    ordered = sorted(services, key=lambda svc: 1 if svc.fwmark else 0)  # stable: keeps each table's order
    parts.extend(format_service(svc, hz) for svc in ordered)
    return "".join(parts)


def total_stats(services: Iterable[model.Service]) -> model.Stats:
    """The namespace's totals: the sums of the services' counters and rates."""
    total = model.Stats()
    for svc in services:
        for field in ("conns", "inpkts", "outpkts", "inbytes", "outbytes",
                      "cps", "inpps", "outpps", "inbps", "outbps"):
            setattr(total, field, getattr(total, field) + getattr(svc.stats, field))
    return total


def format_ip_vs_stats(total: model.Stats) -> str:
    """/proc/net/ip_vs_stats for these totals."""
    mask = (1 << 64) - 1
    return ("   Total Incoming Outgoing         Incoming         Outgoing\n"
            "   Conns  Packets  Packets            Bytes            Bytes\n"
            f"{total.conns & mask:8X} {total.inpkts & mask:8X} {total.outpkts & mask:8X} "
            f"{total.inbytes & mask:16X} {total.outbytes & mask:16X}\n\n"
            " Conns/s   Pkts/s   Pkts/s          Bytes/s          Bytes/s\n"
            f"{total.cps & mask:8X} {total.inpps & mask:8X} {total.outpps & mask:8X} "
            f"{total.inbps & mask:16X} {total.outbps & mask:16X}\n")


def format_connection(row: dict) -> str:
    """One /proc/net/ip_vs_conn line for a row of Backend.get_connections()."""
    caddr = _as_address(row["caddr"])
    vaddr = _as_address(row["vaddr"])
    daddr = _as_address(row["daddr"])
    dtext = pi6(daddr) if daddr.version == 6 else hex_v4(daddr)
    pe_name = row.get("pe_name") or ""
    pe_data = row.get("pe_data") or ""
    pe = f" {pe_name} {pe_data}" if pe_data else ""
    if caddr.version == 6:
        client, virtual = pi6(caddr), pi6(vaddr)
    else:
        client, virtual = hex_v4(caddr), hex_v4(vaddr)
    protocol = str(row.get("protocol") or "IP")
    return (f"{protocol:<3} {client} {int(row['cport']):04X} {virtual} {int(row['vport']):04X} "
            f"{dtext} {int(row['dport']):04X} {str(row.get('state') or ''):<11} "
            f"{max(0, int(row.get('expires') or 0)):7d}{pe}\n")


def iter_ip_vs_conn(rows: Iterable[dict]) -> Iterator[str]:
    """/proc/net/ip_vs_conn, line by line."""
    yield CONN_HEADER
    for row in rows:
        yield format_connection(row)


def write_atomically(path: str, chunks: Iterable[str]) -> int:
    """Write the text to a temporary file beside PATH and rename it over PATH; bytes written."""
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
    written = 0
    try:
        with open(temporary, "w", encoding="ascii", newline="") as out:
            batch = []
            for chunk in chunks:
                batch.append(chunk)
                if len(batch) >= 4096:
                    text = "".join(batch)
                    out.write(text)
                    written += len(text)
                    batch.clear()
            text = "".join(batch)
            out.write(text)
            written += len(text)
        os.chmod(temporary, 0o444)  # as /proc's: readable by all
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    return written


class _Stopped(Exception):
    """stop() was called during a round."""


class ProcfsWriter:
    """Keeps DIR/net/{ip_vs,ip_vs_stats,ip_vs_conn} up to date with a backend until stopped.

    ``start()`` writes ip_vs and ip_vs_stats before it returns (so they exist when the director
    says it is ready), and ip_vs_conn too unless the table takes over a second to write; then
    it refreshes them every ``interval`` seconds in two daemon threads.  ``stop()``
    ends the threads and removes the files (and DIR/net if it made it and it is empty)."""

    def __init__(self, backend, directory: str, interval: float = 1.0, hz: int = KERNEL_HZ):
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.backend = backend
        self.directory = os.path.abspath(directory)
        self.net_dir = os.path.join(self.directory, "net")
        self.interval = interval
        self.hz = hz
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._made_net_dir = False
        self.refreshes = {IP_VS: 0, IP_VS_CONN: 0}  # completed rounds, for observers and tests

    def path(self, name: str) -> str:
        return os.path.join(self.net_dir, name)

    def _conn_tab_size(self) -> int:
        try:
            return int(self.backend.get_info().get("conn_tab_size", model.IPVS_CONN_TAB_SIZE))
        except Exception:  # a backend without info still gets its table written
            return model.IPVS_CONN_TAB_SIZE

    def write_tables(self) -> None:
        """ip_vs and ip_vs_stats from one reading of the services."""
        services = self.backend.get_services()
        write_atomically(self.path(IP_VS), [format_ip_vs(services, self._conn_tab_size(),
                                                         hz=self.hz)])
        write_atomically(self.path(IP_VS_STATS), [format_ip_vs_stats(total_stats(services))])
        self.refreshes[IP_VS] += 1

    def write_connections(self) -> None:
        rows = self._until_stopped(self.backend.iter_connections())
        write_atomically(self.path(IP_VS_CONN), iter_ip_vs_conn(rows))
        self.refreshes[IP_VS_CONN] += 1

    def _until_stopped(self, rows: Iterable[dict]) -> Iterator[dict]:
        """The rows, abandoned (and the temporary file with them) once stop() is called: a
        round over a huge table must not rename a file into place after stop removed it."""
        for count, row in enumerate(rows):
            if count % 4096 == 0 and self._stop.is_set():
                raise _Stopped()
            yield row

    def start(self) -> "ProcfsWriter":
        if not os.path.isdir(self.net_dir):
            os.makedirs(self.net_dir, exist_ok=True)
            self._made_net_dir = True
        self.write_tables()
        # the connections' first round runs in their thread: an adopted table of millions of
        # connections must not hold up the director's start; a small one is there before we return
        first_round = threading.Event()
        for name, job, done in (("tables", self.write_tables, None),
                                ("conns", self.write_connections, first_round)):
            thread = threading.Thread(target=self._loop, args=(job, done), daemon=True,
                                      name=f"lvsuser-procfs-{name}")
            thread.start()
            self._threads.append(thread)
        first_round.wait(FIRST_ROUND_WAIT)
        log.info("keeping %s/{%s} (every %gs)", self.net_dir, ",".join(FILES), self.interval)
        return self

    def _loop(self, job, first_round: Optional[threading.Event]) -> None:
        next_run = time.monotonic() + (0 if first_round is not None else self.interval)
        while not self._stop.wait(max(0.0, next_run - time.monotonic())):
            try:
                job()
            except _Stopped:
                return
            except Exception as exc:  # a full disk or a backend hiccup: say so, keep going
                log.warning("procfs refresh failed: %s", exc)
            if first_round is not None:
                first_round.set()
                first_round = None
            # paced from the start of the round; a round longer than the interval runs back to back
            next_run = max(next_run + self.interval, time.monotonic())

    def stop(self, remove: bool = True) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()
        if not remove:
            return
        for name in FILES:
            try:
                os.unlink(self.path(name))
            except FileNotFoundError:
                pass
        if self._made_net_dir:
            try:
                os.rmdir(self.net_dir)
            except OSError:
                pass
