"""`lvsuser drain`: take a real server out gracefully.

    lvsuser drain [--control PATH] -t|-u|--sctp-service VIP:PORT | -f MARK  -r RIP[:PORT]
                  [--timeout S] [--remove] [--interval S]

The real server's weight goes to 0 (new connections go elsewhere; established ones carry on),
then its active connections are watched until none is left: a progress bar on a terminal, a
plain line per interval otherwise (logs, pipes).  At zero the real server is removed if
--remove was given; at the timeout drain stops, says what is left and exits 1 (the server
stays at weight 0).
"""
from __future__ import annotations

import argparse
import ipaddress
import sys
import time
from typing import Optional, TextIO

from lvsuser import model

BAR_WIDTH = 30


def parse_endpoint(text: str, need_port: bool = True) -> tuple:
    """'198.18.0.1:80' or '[2001:db8::1]:80' -> (address, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    addr = ipaddress.ip_address(host)
    if not port_text:
        if need_port:
            raise ValueError(f"{text}: a port is needed (ADDRESS:PORT)")
        return addr, 0
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{text}: bad port")
    return addr, port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvsuser drain",
        description="Set a real server's weight to 0 and wait for its active connections to "
                    "end; then remove it (--remove) or stop at the timeout.")
    parser.add_argument("--control", default=None, help="control socket of the director")
    service = parser.add_mutually_exclusive_group(required=True)
    service.add_argument("-t", "--tcp-service", metavar="VIP:PORT")
    service.add_argument("-u", "--udp-service", metavar="VIP:PORT")
    service.add_argument("--sctp-service", metavar="VIP:PORT")
    service.add_argument("-f", "--fwmark-service", metavar="MARK", type=int)
    parser.add_argument("-6", "--ipv6", action="store_true", help="the fwmark service is IPv6")
    parser.add_argument("-r", "--real-server", required=True, metavar="RIP[:PORT]")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="S",
                        help="give up after S seconds (default 300)")
    parser.add_argument("--remove", action="store_true",
                        help="delete the real server once it has no active connection")
    parser.add_argument("--interval", type=float, default=1.0, metavar="S",
                        help="how often to look (default 1 s)")
    return parser


def service_key(args) -> model.ServiceKey:
    if args.fwmark_service is not None:
        return model.ServiceKey(af=model.AF_INET6 if args.ipv6 else model.AF_INET,
                                fwmark=args.fwmark_service)
    for text, proto in ((args.tcp_service, model.IPPROTO_TCP),
                        (args.udp_service, model.IPPROTO_UDP),
                        (args.sctp_service, model.IPPROTO_SCTP)):
        if text:
            addr, port = parse_endpoint(text)
            af = model.AF_INET6 if addr.version == 6 else model.AF_INET
            return model.ServiceKey(af=af, protocol=proto, addr=addr, port=port)
    raise ValueError("no service given")


class Progress:
    """A bar redrawn in place on a terminal; a line per report otherwise."""

    def __init__(self, out: TextIO, name: str, start: int):
        self.out = out
        self.name = name
        self.start = max(start, 1)
        self.tty = out.isatty()

    def show(self, active: int, inactive: int, elapsed: float) -> None:
        if self.tty:
            done = BAR_WIDTH - min(BAR_WIDTH, round(BAR_WIDTH * active / self.start))
            bar = "#" * done + "." * (BAR_WIDTH - done)
            self.out.write(f"\rdraining {self.name} [{bar}] {active} active, {inactive} "
                           f"inactive, {elapsed:.0f}s ")
        else:
            self.out.write(f"draining {self.name}: {active} active, {inactive} inactive "
                           f"connections after {elapsed:.0f}s\n")
        self.out.flush()

    def end(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def drain(backend, key: model.ServiceKey, addr, port: Optional[int], timeout: float,
          remove: bool, interval: float = 1.0, out: TextIO = sys.stdout,
          clock=time.monotonic, sleep=time.sleep) -> int:
    """The whole drain against a Backend; returns the exit status."""
    service = backend.get_service(key)
    if service is None:
        print("lvsuser drain: no such service", file=sys.stderr)
        return 1
    matches = [d for d in service.dests if d.addr == addr and (port is None or d.port == port)]
    if len(matches) != 1:
        print("lvsuser drain: " + ("no such real server in the service" if not matches else
                                   "several real servers match: give the port"),
              file=sys.stderr)
        return 1
    dest = matches[0]
    name = f"[{dest.addr}]:{dest.port}" if dest.af == model.AF_INET6 else f"{dest.addr}:{dest.port}"
    if dest.weight != 0:
        weight_before = dest.weight
        dest.weight = 0
        backend.edit_dest(key, dest)
        print(f"{name}: weight {weight_before} -> 0", file=out)
    started = clock()
    progress = Progress(out, name, dest.activeconns)
    while True:
        service = backend.get_service(key)
        current = service.find_dest(dest.addr, dest.port) if service else None
        if current is None:
            progress.end()
            print(f"{name} is gone (removed by someone else)", file=out)
            return 0
        elapsed = clock() - started
        progress.show(current.activeconns, current.inactconns, elapsed)
        if current.activeconns == 0:
            break
        if elapsed >= timeout:
            progress.end()
            print(f"timeout after {timeout:g}s: {current.activeconns} active and "
                  f"{current.inactconns} inactive connections left on {name} "
                  f"(kept at weight 0)", file=out)
            return 1
        sleep(min(interval, max(0.0, timeout - elapsed)) or interval)
    progress.end()
    if remove:
        backend.del_dest(key, current)
        print(f"{name}: no active connection left; removed", file=out)
    else:
        print(f"{name}: no active connection left (weight 0; --remove deletes it)", file=out)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    from lvsuser.control.client import RemoteBackend
    from lvsuser.control.link import ControlUnreachable

    args = build_parser().parse_args(argv)
    try:
        key = service_key(args)
        addr, port = parse_endpoint(args.real_server, need_port=False)
    except ValueError as exc:
        print(f"lvsuser drain: {exc}", file=sys.stderr)
        return 2
    backend = RemoteBackend(args.control)
    try:
        return drain(backend, key, addr, port or None, args.timeout, args.remove,
                     args.interval)
    except ControlUnreachable as exc:
        print(f"lvsuser drain: {exc.strerror or exc}; is `lvsuser run` running?",
              file=sys.stderr)
        return 2
    except model.IPVSError as exc:
        print(f"lvsuser drain: {exc.message or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nlvsuser drain: interrupted (the real server stays at weight 0)",
              file=sys.stderr)
        return 130
    finally:
        backend.close()
