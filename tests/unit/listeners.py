"""A TCP listener on loopback for the health-check tests: it accepts and closes each connection
(a TCP_CHECK's success), so its backlog never fills; closing the socket makes checks fail."""
from __future__ import annotations

import socket
import threading


def listen(port: int = 0, backlog: int = 1024) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(backlog)

    def accept():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    return sock
