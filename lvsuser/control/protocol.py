"""The control protocol between `lvsuser run` and its clients (ipvsadm, lvsuser mark, ...).

Transport: a unix stream socket (default ``/run/lvsuser/control.sock``, mode 0600, so only root
or the daemon's user may change the table).  Messages are JSON objects, one per line (UTF-8,
terminated by ``\\n``).  A client sends requests and reads one reply per request, in order; it
may keep the connection open for many requests.

Request::

    {"op": "add_service", "args": {"svc": <Service>}}

``op`` is one of the ``Backend`` methods listed in ``OPERATIONS``; ``args`` are its keyword
arguments.  Reply::

    {"ok": true, "result": <value or null>}
    {"ok": false, "errno": 17, "message": "service already exists"}

A reply is never longer than ``MAX_LINE`` either: one that would be is refused with errno
EMSGSIZE (90) instead.  Listings that grow with the table are therefore paged -- connections
with ``get_connections_page``::

    {"op": "get_connections_page", "args": {"cursor": 0, "limit": 4096}}
    {"ok": true, "result": {"__tuple__": [[<row>, ...], <next cursor>]}}

The client sends the cursor it got back until that is 0 (cursors are opaque; 0 starts).  The
server serves at most ``page_rows()`` rows a page (fewer if the client asks for fewer), which
keeps a page's reply well under ``MAX_LINE``; a page may be short, even empty, before the end.
``ipvsadm -Lnc`` prints each page as it arrives, over one connection.  There is no
``get_connections`` on the wire: a whole listing would have no bound.

``errno`` is what kernel IPVS would return for the same request (the client raises
``model.IPVSError(errno)`` and ipvsadm prints its own message for it).  ``apply_batch`` failures
also carry ``"index"``: the position of the refused operation; nothing of the batch was applied.
A request that is not understood gets errno EINVAL (22) and ``"bad_request": true``.

Model objects travel as JSON objects tagged with their class::

    {"__type__": "Service", "af": 2, "protocol": 6, "addr": {"__ip__": "198.18.0.10"}, ...,
     "dests": [{"__type__": "Dest", ...}], "stats": {"__type__": "Stats", ...}}

IP addresses are ``{"__ip__": "text"}``, networks ``{"__net__": "198.18.0.0/24"}``, tuples
``{"__tuple__": [...]}``; enums travel as their integer values.  Lines longer than
``MAX_LINE`` bytes are refused.
"""
from __future__ import annotations

import json

MAX_LINE = 16 * 1024 * 1024
# Connection listing pages: rows a page holds at most, and a bound on one encoded row (IPv6
# addresses included), which together keep a page's reply well under MAX_LINE.  A page is
# small because json.dumps encodes it in one C call that holds the GIL throughout (~20 us a
# row): 4096 rows held it ~80 ms, long enough to stall the datapath thread's Python ticks
# (expiry, stats); 256 hold it a few ms.
PAGE_ROWS = 256
MAX_ROW_BYTES = 512
DEFAULT_SOCKET = "/run/lvsuser/control.sock"
ENV_SOCKET = "LVSUSER_CONTROL"

# Backend methods a client may call.
OPERATIONS = frozenset({
    "ping", "get_info", "get_counters",
    "add_service", "edit_service", "del_service", "get_services", "get_service", "flush", "zero",
    "add_dest", "edit_dest", "del_dest",
    "get_timeouts", "set_timeouts", "get_connections_page",
    "add_mark_rule", "del_mark_rule", "get_mark_rules",
    "start_daemon", "stop_daemon", "get_daemons",
    "apply_batch",
})


# The model and the modules that describe it are imported at the first encode/decode: a command
# line that only frames messages (ipvsadm's rule changes, see control/link.py) never needs them.
dataclasses = enum = ipaddress = None
_WIRE_CLASSES: dict = {}
_ENUM_FIELDS: dict = {}


def _load_codec() -> None:
    global dataclasses, enum, ipaddress
    if _WIRE_CLASSES:
        return
    import dataclasses
    import enum
    import ipaddress

    from lvsuser import model

    _ENUM_FIELDS.update({("Dest", "fwd"): model.Forward, ("Dest", "tun_type"): model.TunType})
    _WIRE_CLASSES.update({
        cls.__name__: cls
        for cls in (model.Service, model.Dest, model.Stats, model.ServiceKey, model.Timeouts,
                    model.SyncDaemon, model.MarkRule)
    })


class ProtocolError(ValueError):
    """A message that does not follow this protocol."""


def encode(value: object) -> object:
    """Turn model objects into JSON-ready values."""
    _load_codec()
    return _encode(value)


def _encode(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {"__type__": type(value).__name__}
        for field in dataclasses.fields(value):
            out[field.name] = _encode(getattr(value, field.name))
        return out
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return {"__ip__": str(value)}
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return {"__net__": str(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ProtocolError(f"cannot encode {type(value).__name__}")


def decode(value: object) -> object:
    """The inverse of ``encode``; raises ProtocolError for anything malformed."""
    _load_codec()
    return _decode(value)


def _decode(value: object) -> object:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    try:
        if "__ip__" in value:
            return ipaddress.ip_address(value["__ip__"])
        if "__net__" in value:
            return ipaddress.ip_network(value["__net__"])
        if "__tuple__" in value:
            return tuple(_decode(v) for v in value["__tuple__"])
        if "__type__" in value:
            name = value["__type__"]
            cls = _WIRE_CLASSES.get(name)
            if cls is None:
                raise ProtocolError(f"unknown type {name!r}")
            known = {f.name for f in dataclasses.fields(cls)}
            kwargs = {}
            for key, raw in value.items():
                if key == "__type__":
                    continue
                if key not in known:
                    raise ProtocolError(f"unknown field {name}.{key}")
                field_value = _decode(raw)
                enum_type = _ENUM_FIELDS.get((name, key))
                if enum_type is not None:
                    field_value = enum_type(field_value)
                kwargs[key] = field_value
            return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError(str(exc)) from exc
    return {k: _decode(v) for k, v in value.items()}


def page_rows() -> int:
    """Rows a page of the connection listing holds at most."""
    return max(1, min(PAGE_ROWS, MAX_LINE // MAX_ROW_BYTES))


def dump_line(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def load_line(line: bytes) -> dict:
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message


def request(op: str, **args: object) -> bytes:
    return dump_line({"op": op, "args": encode(args)})


def ok_reply(result: object) -> bytes:
    return dump_line({"ok": True, "result": encode(result)})


def error_reply(errno_: int, message: str, **extra: object) -> bytes:
    return dump_line({"ok": False, "errno": errno_, "message": message, **extra})
