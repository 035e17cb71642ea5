"""Packet-path tracing for the lab: capture on every hop, then draw one request's path.

Theory of operation
-------------------
Capture: a sniffer process (`python3 -m lvsuser.lab.trace capture ...`) opens an AF_PACKET
socket for all protocols, unbound, so it sees every interface of its namespace, including ones
created later (the real server's lvtun0), both directions. The lab runs one on its switch, where
every wire ends, so frames are seen as they crossed the wire, however the sender transmitted
them (a director sending with PACKET_QDISC_BYPASS is invisible to taps on its own host). The kernel stamps each
frame (SO_TIMESTAMPNS) when it is received or sent, on one clock shared by all namespaces, so
frames from different hosts can be put in the order they happened. Only IPv4 and ARP are kept;
each frame becomes one JSON line. Sniffers are bounded in frames and seconds.

Drawing: a request is identified by the client's TCP source port, which no LVS method changes
(NAT rewrites the destination, DR only the MAC, TUN wraps the packet whole). Every captured frame
whose innermost TCP segment carries that port belongs to the request: the SYN going out and the
SYN-ACK coming back are drawn hop by hop, each hop with its link layer (MACs, named after the
lab host that owns them), its IP header(s) in tcpdump's words, and what changed since the
previous hop (NAT rewrite, DR MAC change, TUN encapsulation, decapsulation).

This module's rendering half does no I/O: frames in, text out, so it is unit-tested with
scapy-built frames.
"""
from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ARPHRD_ETHER = 1
ARPHRD_NONE = 0xFFFE       # TUN devices: no link layer
ARPHRD_TUNNEL = 768        # the kernel's tunl0 (where ipip exists): no link layer either
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35


# --------------------------------------------------------------------------- capture

def capture(out_path: str, max_frames: int, max_seconds: float, links=("ether", "raw"),
            ready=sys.stdout) -> int:
    """Write IPv4/ARP frames seen on any interface of this namespace to OUT_PATH (JSON lines).
    LINKS picks Ethernet interfaces ("ether") and/or IP-only ones such as TUN devices ("raw")."""
    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    kept = 0
    deadline = time.monotonic() + max_seconds
    with open(out_path, "w") as out:
        print("ready", file=ready, flush=True)
        while not stopping and kept < max_frames and time.monotonic() < deadline:
            try:
                readable, _, _ = select.select([sock], [], [], 0.2)
            except InterruptedError:
                continue
            if not readable:
                continue
            data, ancillary, _, address = sock.recvmsg(65535, socket.CMSG_SPACE(16))
            ifname, proto, pkttype, hatype = address[0], address[1], address[2], address[3]
            if hatype == ARPHRD_ETHER:
                if len(data) < 14 or struct.unpack_from("!H", data, 12)[0] not in (ETH_P_IP, ETH_P_ARP):
                    continue
                link = "ether"
            elif hatype in (ARPHRD_NONE, ARPHRD_TUNNEL) and proto == ETH_P_IP:
                link = "raw"
            else:
                continue  # loopback and anything else: not part of a path
            if link not in links:
                continue
            stamp = time.time()
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                    seconds, nanos = struct.unpack("qq", payload[:16])
                    stamp = seconds + nanos / 1e9
            out.write(json.dumps({"t": stamp, "if": ifname,
                                  "dir": "out" if pkttype == PACKET_OUTGOING else "in",
                                  "link": link, "hex": data.hex()}) + "\n")
            out.flush()
            kept += 1
    sock.close()
    return 0


# --------------------------------------------------------------------------- frames

@dataclass
class Frame:
    host: str          # lab role: client, director, rs1, ...
    ifname: str
    direction: str     # "in" or "out"
    time: float
    link: str          # "ether" or "raw" (TUN device: IP only)
    data: bytes

    def decode(self):
        from scapy.layers.inet import IP
        from scapy.layers.l2 import Ether
        return Ether(self.data) if self.link == "ether" else IP(self.data)


def load_capture(host: str, path: str) -> list[Frame]:
    """Frames from one sniffer's file; a torn last line (sniffer killed mid-write) is skipped."""
    frames = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    item = json.loads(line)
                    frames.append(Frame(host, item["if"], item["dir"], item["t"], item["link"],
                                        bytes.fromhex(item["hex"])))
                except (ValueError, KeyError):
                    continue
    except FileNotFoundError:
        pass
    return frames


def accepted_by(ethernet_frame: bytes, mac: str) -> bool:
    """Would a (non-promiscuous) NIC with MAC take this frame: broadcast, multicast, or its own?"""
    if len(ethernet_frame) < 6:
        return False
    destination = ethernet_frame[:6]
    return bool(destination[0] & 1) or destination == bytes.fromhex(mac.replace(":", ""))


def ip_layers(packet) -> list:
    """The IPv4 headers of PACKET, outermost first (two for IPIP)."""
    from scapy.layers.inet import IP
    layers = []
    layer = packet.getlayer(IP)
    while layer is not None:
        layers.append(layer)
        layer = layer.payload.getlayer(IP) if layer.proto == 4 else None
    return layers


def innermost_tcp(packet):
    from scapy.layers.inet import TCP
    layers = ip_layers(packet)
    if not layers:
        return None, None
    inner = layers[-1]
    return inner, inner.getlayer(TCP)


def frames_of_request(frames: list[Frame], client_port: int) -> tuple[list, list]:
    """(SYN hops, SYN-ACK hops) of the connection from CLIENT_PORT, in time order, decoded."""
    forward, backward = [], []
    for frame in sorted(frames, key=lambda f: f.time):
        try:
            packet = frame.decode()
        except Exception:
            continue  # a frame scapy cannot decode is not part of the drawing
        ip, tcp = innermost_tcp(packet)
        if tcp is None:
            continue
        flags = int(tcp.flags)
        syn, ack = bool(flags & 0x02), bool(flags & 0x10)
        if syn and not ack and tcp.sport == client_port:
            forward.append((frame, packet))
        elif syn and ack and tcp.dport == client_port:
            backward.append((frame, packet))
    return _first_attempt(forward), _first_attempt(backward)


def _first_attempt(hops: list) -> list:
    """Keep the first transmission only: a retransmitted SYN would draw the path twice."""
    seen = set()
    kept = []
    for frame, packet in hops:
        key = (frame.host, frame.ifname, frame.direction)
        if key in seen:
            continue
        seen.add(key)
        kept.append((frame, packet))
    return kept


# --------------------------------------------------------------------------- words

def tcp_flags(tcp) -> str:
    names = [("S", 0x02), ("F", 0x01), ("R", 0x04), ("P", 0x08), ("U", 0x20)]
    text = "".join(letter for letter, bit in names if int(tcp.flags) & bit)
    if int(tcp.flags) & 0x10:
        text += "."
    return text or "none"


class Namer:
    """Names MACs and addresses after lab hosts: '02:00:00:00:03:00 (rs1)'."""

    def __init__(self, macs: dict[str, str], addresses: dict[str, str]):
        self.macs = {k.lower(): v for k, v in macs.items()}
        self.addresses = addresses

    def mac(self, mac: str) -> str:
        owner = self.macs.get(mac.lower())
        if mac.lower() == "ff:ff:ff:ff:ff:ff":
            owner = "broadcast"
        return f"{mac} ({owner})" if owner else mac

    def host(self, address: str) -> str:
        return self.addresses.get(address, address)


NO_NAMES = Namer({}, {})


def describe_ip(layers, namer: Namer) -> list[str]:
    """tcpdump-like lines for the IP header(s); an inner packet is indented under its outer."""
    from scapy.layers.inet import TCP
    lines = []
    for depth, ip in enumerate(layers):
        pad = "  " * depth
        if ip.proto == 4:
            lines.append(f"{pad}IP {ip.src} > {ip.dst}: IPIP (proto 4), ttl {ip.ttl}, "
                         f"length {ip.len}   [{namer.host(ip.src)} -> {namer.host(ip.dst)}]")
            continue
        tcp = ip.getlayer(TCP)
        if tcp is not None:
            lines.append(f"{pad}IP {ip.src}.{tcp.sport} > {ip.dst}.{tcp.dport}: Flags "
                         f"[{tcp_flags(tcp)}], seq {tcp.seq}, ttl {ip.ttl}")
        else:
            lines.append(f"{pad}IP {ip.src} > {ip.dst}: proto {ip.proto}, ttl {ip.ttl}")
    return lines


def describe_arp(packet, namer: Namer) -> str:
    from scapy.layers.l2 import ARP
    arp = packet.getlayer(ARP)
    if arp.op == 1:
        return f"ARP, Request who-has {arp.pdst} tell {arp.psrc}"
    return f"ARP, Reply {arp.psrc} is-at {namer.mac(arp.hwsrc)}"


def what_changed(previous, current, prev_frame: Frame, frame: Frame, namer: Namer) -> list[str]:
    """Plain words for what a hop did to the packet, compared with the hop before it."""
    notes = []
    before, after = ip_layers(previous), ip_layers(current)
    if not before or not after:
        return notes
    if len(after) > len(before):
        outer = after[0]
        notes.append(f"TUN: wrapped in IPIP; outer header {outer.src} > {outer.dst} "
                     f"({namer.host(outer.src)} -> {namer.host(outer.dst)}), proto 4")
    elif len(after) < len(before):
        notes.append("decapsulated: the outer IPIP header is gone, the client's packet is "
                     "delivered to the VIP")
    inner_before, inner_after = before[-1], after[-1]
    from scapy.layers.inet import TCP
    tb, ta = inner_before.getlayer(TCP), inner_after.getlayer(TCP)
    if (inner_before.dst, tb.dport) != (inner_after.dst, ta.dport):
        notes.append(f"NAT: destination rewritten {inner_before.dst}:{tb.dport} -> "
                     f"{inner_after.dst}:{ta.dport} ({namer.host(inner_after.dst)})")
    if (inner_before.src, tb.sport) != (inner_after.src, ta.sport):
        notes.append(f"NAT: source rewritten {inner_before.src}:{tb.sport} -> "
                     f"{inner_after.src}:{ta.sport} (back to the {namer.host(inner_after.src)})")
    same_ip = len(after) == len(before) and not notes
    if same_ip and frame.link == "ether" and prev_frame.link == "ether" \
            and previous.dst.lower() != current.dst.lower() and frame.direction == "out":
        notes.append(f"DR: IP header unchanged, destination MAC is now "
                     f"{namer.mac(current.dst)}")
    return notes


def _same_on_the_wire(sent, received) -> bool:
    """True if RECEIVED is SENT after crossing one wire: out on one host, in on another, same
    link layer and IP header(s)."""
    (frame_a, packet_a), (frame_b, packet_b) = sent, received
    if frame_a.direction != "out" or frame_b.direction != "in" or frame_a.host == frame_b.host:
        return False
    if frame_a.link != frame_b.link:
        return False
    if frame_a.link == "ether" and (packet_a.src, packet_a.dst) != (packet_b.src, packet_b.dst):
        return False
    return describe_ip(ip_layers(packet_a), NO_NAMES) == describe_ip(ip_layers(packet_b), NO_NAMES)


def render_hops(title: str, hops: list, namer: Namer) -> list[str]:
    """One entry per wire crossed ('client:eth0 -> director:eth0') or per single capture point,
    with the link layer, the IP header(s) and what changed since the entry before."""
    lines = [f"  {title}"]
    if not hops:
        lines.append("    (not captured)")
        return lines
    entries = []
    index = 0
    while index < len(hops):
        if index + 1 < len(hops) and _same_on_the_wire(hops[index], hops[index + 1]):
            entries.append((hops[index], hops[index + 1]))
            index += 2
        else:
            entries.append((hops[index], None))
            index += 1
    previous = None
    for first, second in entries:
        frame, packet = first
        where = f"{frame.host}:{frame.ifname} {frame.direction}"
        if second is not None:
            where = f"{frame.host}:{frame.ifname} -> {second[0].host}:{second[0].ifname}"
        if frame.link == "ether":
            link = f"{namer.mac(packet.src)} > {namer.mac(packet.dst)}"
        else:
            link = "no link layer (tunnel device)"
        lines.append(f"    {where:<30} {link}")
        for text in describe_ip(ip_layers(packet), namer):
            lines.append(f"        {text}")
        if previous is not None:
            for note in what_changed(previous[1], packet, previous[0], frame, namer):
                lines.append(f"        ^ {note}")
        previous = second or first
    return lines


def render_request(frames: list[Frame], client_port: int, namer: Namer) -> list[str]:
    forward, backward = frames_of_request(frames, client_port)
    lines = (render_hops("SYN (client -> VIP):", forward, namer)
             + render_hops("SYN-ACK (answer to the client):", backward, namer))
    if backward and all(frame.host != "director" for frame, _ in backward):
        sender = backward[0][0].host
        lines.append(f"        (the answer skips the director: {sender} sends it straight to the "
                     f"client, from the VIP)")
    return lines


def arp_exchanges(frames: list[Frame], target: str, namer: Namer,
                  hosts: tuple[str, ...] = ("client",)) -> list[str]:
    """ARP requests/replies about TARGET as seen by HOSTS, in time order, as text."""
    from scapy.layers.l2 import ARP
    lines = []
    for frame in sorted(frames, key=lambda f: f.time):
        if frame.host not in hosts or frame.link != "ether":
            continue
        try:
            packet = frame.decode()
        except Exception:
            continue
        arp = packet.getlayer(ARP)
        if arp is None or target not in (arp.pdst, arp.psrc):
            continue
        if arp.op == 2 and arp.psrc != target:
            continue
        lines.append(f"   {frame.host}:{frame.ifname} {frame.direction:<3} "
                     f"{describe_arp(packet, namer)}")
    return lines


def arp_answerers(frames: list[Frame], target: str, namer: Namer) -> list[str]:
    """Hosts (by MAC owner) that answered ARP for TARGET, as the client received them."""
    from scapy.layers.l2 import ARP
    owners = []
    for frame in sorted(frames, key=lambda f: f.time):
        if frame.host != "client" or frame.direction != "in" or frame.link != "ether":
            continue
        try:
            arp = frame.decode().getlayer(ARP)
        except Exception:
            continue
        if arp is not None and arp.op == 2 and arp.psrc == target:
            owners.append(namer.macs.get(arp.hwsrc.lower(), arp.hwsrc))
    return owners


# --------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lvsuser-lab-trace")
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("capture", help="sniff this namespace into a JSON-lines file")
    cap.add_argument("--out", required=True)
    cap.add_argument("--max-frames", type=int, default=5000)
    cap.add_argument("--max-seconds", type=float, default=120.0)
    cap.add_argument("--links", default="ether,raw",
                     help="ether, raw (TUN devices) or both, comma-separated")
    args = parser.parse_args(argv)
    if args.command == "capture":
        return capture(args.out, args.max_frames, args.max_seconds,
                       tuple(args.links.split(",")))
    return 2


if __name__ == "__main__":
    sys.exit(main())
