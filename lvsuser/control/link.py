"""One client connection to the control socket: a request line out, reply lines in.

This is the whole client side of the transport (see ``protocol`` for the messages), kept free
of the model so that a command line can change a rule by importing little more than ``socket``
and ``json``.  ``RemoteBackend`` (client.py) speaks the model over it; ``ipvsadm`` sends the
wire form of its arguments straight through ``call_raw``.
"""
from __future__ import annotations

import errno
import os
import socket
import threading

from lvsuser.control import protocol


class ControlUnreachable(OSError):
    """No director answers on the control socket; str() names the socket and the reason."""


def default_socket_path() -> str:
    return os.environ.get(protocol.ENV_SOCKET) or protocol.DEFAULT_SOCKET


class ControlLink:
    """A connection opened at first use; each call is one request line and its reply line(s)."""

    def __init__(self, path: str | None = None, timeout: float = 30.0):
        self.path = path or default_socket_path()
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._reader = None
        self.lock = threading.Lock()  # one request/reply exchange at a time

    def connect(self) -> None:
        with self.lock:
            self._connect_locked()

    def _connect_locked(self) -> None:
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            reason = exc.strerror or str(exc)
            raise ControlUnreachable(exc.errno or errno.ECONNREFUSED,
                                     f"cannot connect to {self.path}: {reason}") from exc
        self._sock = sock
        self._reader = sock.makefile("rb")

    def close(self) -> None:
        with self.lock:
            if self._reader is not None:
                self._reader.close()
            if self._sock is not None:
                self._sock.close()
            self._sock = None
            self._reader = None

    def send_locked(self, op: str, wire_args: dict) -> None:
        """Send one request (the caller holds ``lock``)."""
        self._connect_locked()
        try:
            self._sock.sendall(protocol.dump_line({"op": op, "args": wire_args}))
        except OSError as exc:
            self._lost(exc)

    def read_locked(self) -> dict:
        """Read one reply line as a dict (the caller holds ``lock``)."""
        try:
            line = self._reader.readline(protocol.MAX_LINE + 1)
        except OSError as exc:
            self._lost(exc)
        if not line:
            self._sock = None
            raise ControlUnreachable(errno.ECONNRESET, f"{self.path} closed the connection")
        return protocol.load_line(line)

    def _lost(self, exc: OSError) -> None:
        self._sock = None
        raise ControlUnreachable(exc.errno or errno.EPIPE,
                                 f"lost connection to {self.path}: {exc}") from exc

    def call_raw(self, op: str, wire_args: dict) -> dict:
        """One request, one reply: ``{"ok": true, "result": ...}`` or ``{"ok": false, ...}``."""
        with self.lock:
            self.send_locked(op, wire_args)
            return self.read_locked()
