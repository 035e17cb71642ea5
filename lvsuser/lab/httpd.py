"""A tiny HTTP server for lab real servers: every GET is answered with the server's name.

    python3 -m lvsuser.lab.httpd --name rs1 --port 8080

Prints 'ready' once listening, so the lab knows when to send requests. Serves until SIGTERM.
"""
from __future__ import annotations

import argparse
import http.server
import signal
import socketserver
import sys


def make_handler(name: str):
    body = f"{name}\n".encode()

    class NameHandler(http.server.BaseHTTPRequestHandler):
        server_version = "lvsuser-lab"

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):  # quiet: the lab prints its own summary
            pass

    return NameHandler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lvsuser-lab-httpd")
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--bind", default="0.0.0.0")
    args = parser.parse_args(argv)
    # a plain TCP server: http.server's HTTPServer looks its own name up (getfqdn), which can
    # stall in a namespace that cannot reach a DNS server
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer((args.bind, args.port), make_handler(args.name))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
