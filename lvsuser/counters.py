"""The datapath's counters, explained: what `lvsuser counters` prints.

Every packet the director's datapath sees ends in a counter: forwarded, passed to the kernel, or
dropped for a reason.  The core counts by decision (the names are pyfastpath.COUNTER_NAMES, the
same in the C core); the I/O drivers count frames, batches and their own drops.  A test checks
that every counter either side has a line here.
"""
from __future__ import annotations

import json

CORE_HELP = {
    "rx": "frames the core looked at",
    "pass_not_ip": "not IPv4/IPv6/ARP: left to the kernel",
    "pass_not_service": "IP, but to no virtual service and no NAT reply: left to the kernel",
    "eth_truncated": "dropped: shorter than an Ethernet header",
    "ip_truncated": "dropped: shorter than its IP header says",
    "ip_bad_version": "dropped: IP version neither 4 nor 6",
    "ip_bad_header": "dropped: IPv4 header length or total length inconsistent",
    "ip_bad_checksum": "dropped: IPv4 header checksum wrong",
    "ip6_bad_ext": "dropped: IPv6 extension header chain malformed or too long",
    "fragment": "dropped: a fragment to a VIP (no reassembly in user space)",
    "l4_truncated": "dropped: TCP/UDP header cut short",
    "l4_unsupported": "dropped: to a VIP in a protocol other than TCP/UDP",
    "tcp_not_syn": "TCP without a connection and without SYN: left to the kernel",
    "no_scheduler": "dropped: the service's scheduler is not loaded",
    "no_dest": "the scheduler found no real server: ICMP port unreachable sent",
    "no_route": "dropped: the director knows no route to the real server",
    "table_full": "dropped: the connection table is full (lvsuser run --max-conns)",
    "ttl_exceeded": "TTL / hop limit ran out: ICMP time exceeded sent",
    "frag_needed": "too big with DF (or IPv6): ICMP fragmentation needed / packet too big sent",
    "needs_fragmentation": "dropped: too big without DF (the kernel would fragment it)",
    "icmp_error_in": "ICMP errors about a connection forwarded to its real server",
    "icmp_error_out": "ICMP errors from a real server forwarded to the client (NAT)",
    "icmp_bad": "ICMP error quoting a malformed packet: left to the kernel",
    "icmp_not_conn": "ICMP error quoting no known connection: left to the kernel",
    "arp_reply": "ARP replies sent for a VIP the director does not hold itself",
    "nd_advert": "neighbour advertisements sent for such an IPv6 VIP",
    "conn_new": "connections scheduled",
    "conn_reused": "client port reused after TIME_WAIT/CLOSE: rescheduled at once",
    "conn_expired": "connections expired",
    "conn_dest_gone": "connections expired because their real server was deleted",
    "fwd_in": "packets forwarded client -> real server",
    "fwd_out": "packets forwarded real server -> client (NAT replies)",
    "no_room": "dropped: the rewritten frame did not fit the driver's slot",
    "icmp_ratelimited": "ICMP errors not sent: over the kernel's ICMP rate limit",
    "one_packet": "UDP one-packet (-o) connections dropped after their packet",
    "local_node": "to a real server that is this host: handed to its own stack",
    "icmp_tunnel": "ICMP errors about our IP-in-IP packets relayed to the client",
    "scheduler_error": "a plugin scheduler raised (logged; the packet counted in no_dest)",
}

IO_HELP = {
    "rx_frames": "frames read from the rings / TUN device",
    "rx_bytes": "bytes read",
    "tx_frames": "frames sent",
    "tx_bytes": "bytes sent",
    "batches": "batches handed to the core",
    "wakeups": "poll() wake-ups (about 10/s when idle)",
    "csum_completed": "partial checksums completed before the core saw the frame",
    "gso_split": "super-frames (GSO/TSO) cut into segments",
    "gso_segments": "segments made from them",
    "drop_truncated": "dropped: the ring held less than the whole frame",
    "drop_gso_unsupported": "dropped: a super-frame of a kind we cannot segment",
    "drop_tx_full": "dropped: no free TX slot even after a kick",
    "drop_tx_too_big": "dropped: frame larger than a TX slot",
    "drop_tx_no_ring": "dropped: sent to an interface this driver does not serve",
    "tx_errors": "send()/write() failures",
    "rx_ring_drops": "dropped by the kernel: the RX ring was full (the director fell behind)",
    "core_errors": "a Python core raised: that batch was not sent",
    "socket_errors": "errors pending on a ring's socket (an interface went down)",
}


def format_counters(counters: dict, show_all: bool = False) -> str:
    """Text for `lvsuser counters`: one line per counter, value and meaning; zeros left out
    unless SHOW_ALL.  COUNTERS is {'core': {...}, 'io': {...}} as the control socket gives it."""
    sections = []
    for section, title, helps in (("core", "datapath core", CORE_HELP),
                                  ("io", "I/O drivers", IO_HELP)):
        values = counters.get(section) or {}
        rows = [(name, f"{value:,}", helps.get(name, "")) for name, value in values.items()
                if show_all or value]
        sections.append((title, rows))
    every = [row for _, rows in sections for row in rows]
    name_width = max((len(name) for name, _, _ in every), default=0)
    value_width = max((len(value) for _, value, _ in every), default=0)
    lines = []
    for title, rows in sections:
        lines.append(f"{title}:" if rows else f"{title}: all zero")
        for name, value, text in rows:
            lines.append(f"  {name:<{name_width}}  {value:>{value_width}}  {text}".rstrip())
    return "\n".join(lines) + "\n"


COUNTERS_USAGE = """usage: lvsuser counters [--control PATH] [--all] [--json]
What the running director's datapath did with every packet: forwarded, left to the kernel, or
dropped and why.  Zero counters are left out unless --all; --json prints them as one object.
"""


def main(argv: list[str]) -> int:
    """`lvsuser counters`: read the counters over the control socket and print them."""
    import errno
    import sys

    from lvsuser.control.client import RemoteBackend
    from lvsuser.control.link import ControlUnreachable
    from lvsuser.model import IPVSError

    control, show_all, as_json = None, False, False
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            sys.stdout.write(COUNTERS_USAGE)
            return 0
        if arg == "--all":
            show_all = True
        elif arg == "--json":
            as_json = True
        elif arg == "--control" and args:
            control = args.pop(0)
        elif arg.startswith("--control="):
            control = arg.split("=", 1)[1]
        else:
            sys.stderr.write(f"lvsuser counters: unexpected argument {arg!r}\n{COUNTERS_USAGE}")
            return 2
    backend = RemoteBackend(control)
    try:
        counters = backend.get_counters()
    except ControlUnreachable as exc:
        print(f"lvsuser counters: {exc.strerror or exc}; is `lvsuser run` running?", file=sys.stderr)
        return 2
    except IPVSError as exc:
        if exc.errno == errno.ENOSYS:
            print("lvsuser counters: this director's backend has no datapath of its own "
                  "(kernel IPVS: see `lvsuser ipvsadm -Ln --stats`)", file=sys.stderr)
        else:
            print(f"lvsuser counters: {exc.message or exc}", file=sys.stderr)
        return 1
    finally:
        backend.close()
    if as_json:
        print(json.dumps(counters, indent=1, sort_keys=True))
    else:
        sys.stdout.write(format_counters(counters, show_all))
    return 0
