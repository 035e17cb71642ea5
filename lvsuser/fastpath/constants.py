"""What both datapath cores share: counter and state names, expiry budgets, timeouts.

``lvsuser.pyfastpath`` (the reference core) and ``lvsuser._fastpath`` (the compiled core) both
import these names from here, so neither reaches into the other's private names, and a
listing or a counter means the same thing whichever core produced it.  The compiled core's C
enums (parse.pxi's C_* counters, conntab.pxi's TS_* states) follow the orders given here; the
unit tests compare them.
"""
from __future__ import annotations

import ipaddress

from lvsuser import model

# Per-reason counters: the same names, in the same order, in both cores.
COUNTER_NAMES = (
    "rx",                  # frames seen
    "pass_not_ip",         # not IPv4/IPv6/ARP: left to the kernel
    "pass_not_service",    # IP, but to no virtual service and no NAT reply
    "eth_truncated",
    "ip_truncated",
    "ip_bad_version",
    "ip_bad_header",       # IHL < 5, total length inconsistent
    "ip_bad_checksum",
    "ip6_bad_ext",         # IPv6 extension header chain malformed / too long
    "fragment",            # fragment to a VIP: no reassembly in user space
    "l4_truncated",
    "l4_unsupported",      # a protocol other than TCP/UDP to a VIP
    "tcp_not_syn",         # TCP to a service without a connection and without SYN: kernel's local stack
    "no_scheduler",
    "no_dest",             # the scheduler found no real server: ICMP port unreachable sent
    "no_route",            # the real server has no route in the config
    "table_full",
    "ttl_exceeded",        # TTL/hop limit <= 1: ICMP time exceeded sent
    "frag_needed",         # too big with DF / IPv6: ICMP fragmentation needed / packet too big sent
    "needs_fragmentation", # too big without DF: dropped (the kernel would fragment)
    "icmp_error_in",       # ICMP errors forwarded to a real server
    "icmp_error_out",      # ICMP errors forwarded to a client (NAT)
    "icmp_bad",            # ICMP error with a malformed quote
    "icmp_not_conn",       # ICMP error quoting no known connection
    "arp_reply",
    "nd_advert",
    "conn_new",
    "conn_reused",         # port reuse in TIME_WAIT/CLOSE: old connection expired, rescheduled
    "conn_expired",
    "conn_dest_gone",      # expired because its real server was deleted
    "fwd_in",
    "fwd_out",
    "no_room",             # C core only: a driver's frame slot has no room for the result
    "icmp_ratelimited",    # an ICMP error not sent: over the kernel's global ICMP rate
    "one_packet",          # UDP with -o (one-packet scheduling): connection dropped after use
    "local_node",          # to a local-node dest: handed to the director's own stack (PASS)
    "icmp_tunnel",         # an ICMP error about our IP-in-IP packet, relayed to the client
    "scheduler_error",     # a plugin scheduler raised: logged, the connection counted in no_dest
)

# TCP states (IP_VS_TCP_S_*), in the kernel's order, and their names in listings.
TCP_STATE_NAMES = ("NONE", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT", "TIME_WAIT", "CLOSE",
                   "CLOSE_WAIT", "LAST_ACK", "LISTEN", "SYNACK")

EST_INTERVAL = 2.0  # ip_vs_est: rates are sampled every 2 seconds

# One default expire() call does bounded work (it holds the core lock, so the datapath waits):
# the compiled core visits at most EXPIRE_SLOTS table slots, and both cores free at most
# EXPIRE_MAX_FREED entries (plus a template whose last connection went); the drivers call
# expire() often enough that this still keeps up with heavy churn (io.pxi).
EXPIRE_SLOTS = 1 << 15
EXPIRE_MAX_FREED = 1024


def tcp_timeouts(timeouts: model.Timeouts) -> tuple:
    """Seconds per TCP state (TCP_STATE_NAMES order): the kernel's table with `--set tcp tcpfin`."""
    return (2, timeouts.tcp, 120, 60, timeouts.tcp_fin, 120, 10, 60, 30, 120, 120)


def addr_from_bytes(af: int, raw: bytes) -> model.IPAddress:
    """An address object from its packed form (4 bytes for AF_INET, 16 for AF_INET6)."""
    return ipaddress.IPv4Address(raw) if af == model.AF_INET else ipaddress.IPv6Address(raw)


def default_scheduler_factory(name: str, service: model.Service):
    """The Python scheduler `name` from the registry (lvsuser.schedulers), for `service`."""
    from lvsuser import schedulers
    return schedulers.create(name, service)
