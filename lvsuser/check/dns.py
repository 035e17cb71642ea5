"""DNS_CHECK (check_dns.c): one query over UDP for ``name`` (default ".") of ``type`` (default
SOA); up if an answer with our id, the response bit set and RCODE NOERROR comes back within
connect_timeout and carries at least one answer record."""
from __future__ import annotations

import random
import struct

from lvsuser.check.base import Result, Target, describe_error
from lvsuser.check.udp import exchange

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28, "RRSIG": 46}


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.strip(".").split("."):
        if label:
            raw = label.encode("idna")
            if len(raw) > 63:
                raise ValueError(f"DNS label too long: {label}")
            out += bytes([len(raw)]) + raw
    return out + b"\0"


def build_query(query_id: int, name: str, qtype: int) -> bytes:
    # flags: RD (recursion desired), one question
    return struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + encode_name(name) + \
        struct.pack("!HH", qtype, 1)


def judge_reply(reply: bytes, query_id: int) -> str:
    """'' if the answer is good, else why not."""
    if len(reply) < 12:
        return "short answer"
    rid, flags, _qd, ancount, _ns, _ar = struct.unpack("!HHHHHH", reply[:12])
    if rid != query_id:
        return "answer to another query"
    if not flags & 0x8000:
        return "not a response"
    if flags & 0x000F:
        return f"rcode {flags & 0xF}"
    if ancount == 0:
        return "no answer records"
    return ""


async def check(config, target: Target, timeout: float) -> Result:
    qtype = TYPES.get(str(config.options.get("type", "SOA")).upper(), 6)
    query_id = random.randrange(0x10000)
    try:
        reply = await exchange(target, build_query(query_id, config.options.get("name", "."),
                                                   qtype), timeout)
    except OSError as exc:
        return Result(False, describe_error(exc))
    if reply is None:
        return Result(False, "timeout")
    problem = judge_reply(reply, query_id)
    return Result(not problem, problem or "answered")
