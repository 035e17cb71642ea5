"""The control socket server: one thread per client, requests applied to one backend.

Theory of operation
-------------------
Each connection is served by its own thread (``socketserver.ThreadingMixIn``); requests are
JSON lines (see ``protocol``).  Atomicity and ordering between clients come from the backend,
whose every operation takes its own lock -- the server adds no locking of its own.  A request
that fails is answered with the errno and the connection stays usable; a malformed line is
answered with EINVAL.  The socket is created with mode 0600 in a directory created if needed.
A socket file left behind by a daemon that died is detected (nobody accepts on it) and replaced;
one that a live daemon answers on is left alone and reported.

Every request that changes the table is logged at INFO with who asked -- the peer's uid and pid
from the socket itself (SO_PEERCRED), which a client cannot forge -- and what was asked, as the
ipvsadm line that asks it (``describe.py``); a refused one with ipvsadm's message for its errno.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import socketserver
import struct
import threading
from typing import Optional

from lvsuser.backends.base import Backend
from lvsuser.control import protocol
from lvsuser.model import IPVSError

log = logging.getLogger("lvsuser.control")


class ControlSocketInUse(RuntimeError):
    """Another live process serves the control socket path."""


# Operations that change the table: these are logged.
CHANGES = frozenset({
    "add_service", "edit_service", "del_service", "flush", "zero", "add_dest", "edit_dest",
    "del_dest", "set_timeouts", "add_mark_rule", "del_mark_rule", "start_daemon", "stop_daemon",
    "apply_batch",
})


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(uid, pid) of the process at the other end of a unix socket; (-1, -1) if unknown."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", raw)
        return uid, pid
    except (OSError, AttributeError, struct.error):
        return -1, -1


def log_change(peer: tuple[int, int], op: str, args: dict, errno_: int = 0,
               index: Optional[int] = None) -> None:
    """One INFO line: who changed what (or was refused what, and why)."""
    from lvsuser.control.describe import describe_operation
    from lvsuser.control.ipvsadm.errors import strerror_for_operation

    uid, pid = peer
    who = f"uid {uid} (pid {pid})" if uid >= 0 else "an unknown peer"
    reason_op = op
    if op == "apply_batch":
        operations = args.get("operations") or []
        lines = [describe_operation(o, kw) for o, kw in operations]
        what = f"a batch of {len(lines)}: " + "; ".join(lines)
        if index is not None and 0 <= index < len(lines):
            reason_op = operations[index][0]
            what += f" (refused at {lines[index]}; nothing applied)"
    else:
        what = describe_operation(op, args)
    if errno_:
        log.info("rule change by %s refused (%s): %s", who, strerror_for_operation(reason_op, errno_),
                 what)
    else:
        log.info("rule change by %s: %s", who, what)


class _Handler(socketserver.StreamRequestHandler):
    def setup(self) -> None:
        super().setup()
        self.peer = peer_credentials(self.request)

    def handle(self) -> None:
        while True:
            line = self.rfile.readline(protocol.MAX_LINE + 1)
            if not line:
                return
            if len(line) > protocol.MAX_LINE:
                self.wfile.write(protocol.error_reply(errno.EMSGSIZE, "request too long",
                                                      bad_request=True))
                return
            if not line.strip():
                continue
            reply = self.server.dispatch(line, self.peer)
            try:
                self.wfile.write(reply)
                self.wfile.flush()
            except OSError:
                return


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, path: str, backend: Backend):
        self.path = path
        self.backend = backend
        prepare_path(path)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            super().__init__(path, _Handler)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self._thread: Optional[threading.Thread] = None

    def dispatch(self, line: bytes, peer: tuple[int, int] = (-1, -1)) -> bytes:
        try:
            message = protocol.load_line(line)
            op = message.get("op")
            if op not in protocol.OPERATIONS:
                raise protocol.ProtocolError(f"unknown op {op!r}")
            args = protocol.decode(message.get("args") or {})
            if not isinstance(args, dict):
                raise protocol.ProtocolError("args must be an object")
        except protocol.ProtocolError as exc:
            return protocol.error_reply(errno.EINVAL, str(exc), bad_request=True)
        if op == "ping":
            return protocol.ok_reply("pong")
        if op == "get_connections_page" and isinstance(args.get("limit"), int):
            args["limit"] = min(args["limit"], protocol.page_rows())
        method = getattr(self.backend, op, None)
        if method is None:
            return protocol.error_reply(errno.ENOSYS, f"{op} is not supported by this backend")
        try:
            result = method(**args)
        except IPVSError as exc:
            extra = {"index": exc.index} if hasattr(exc, "index") else {}
            if op in CHANGES:
                log_change(peer, op, args, exc.errno, extra.get("index"))
            return protocol.error_reply(exc.errno, exc.message, **extra)
        except NotImplementedError:
            return protocol.error_reply(errno.ENOSYS, f"{op} is not supported by this backend")
        except (TypeError, AttributeError, ValueError, KeyError) as exc:
            # Arguments of the wrong shape (a number where a Service belongs, ...): the client's
            # fault; the backend validated nothing yet or refused it before changing anything.
            log.debug("bad arguments for %s: %r", op, exc)
            return protocol.error_reply(errno.EINVAL, f"bad arguments: {exc}", bad_request=True)
        except Exception as exc:  # keep serving other clients; the log says what happened
            log.exception("control request %s failed", op)
            return protocol.error_reply(errno.EIO, f"internal error: {exc}")
        if op in CHANGES:
            log_change(peer, op, args)
        try:
            reply = protocol.ok_reply(result)
        except protocol.ProtocolError as exc:
            return protocol.error_reply(errno.EIO, str(exc))
        if len(reply) > protocol.MAX_LINE:  # the client would refuse it: say why instead
            return protocol.error_reply(errno.EMSGSIZE, f"the reply to {op} would be longer than "
                                                        f"{protocol.MAX_LINE} bytes")
        return reply

    def start(self) -> "ControlServer":
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="lvsuser-control", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def prepare_path(path: str) -> None:
    """Make ``path`` free for a new socket: its directory made, a stale socket removed;
    ControlSocketInUse if a live daemon answers on it (or it is not a socket)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o755, exist_ok=True)
    if not os.path.exists(path) and not os.path.islink(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale control socket %s", path)
        os.unlink(path)
        return
    except OSError as exc:
        if exc.errno == errno.ENOTSOCK or exc.errno == errno.ECONNREFUSED:
            raise ControlSocketInUse(f"{path} exists and is not a socket") from exc
        raise
    finally:
        probe.close()
    raise ControlSocketInUse(f"another lvsuser daemon is serving {path}")
