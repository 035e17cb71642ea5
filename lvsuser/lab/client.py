"""The lab's client: N HTTP GETs, each on a new TCP connection, one JSON line per request.

    python3 -m lvsuser.lab.client --url-host 198.19.10.3 --port 80 --requests 4

Each line: {"n": 1, "local_port": 40312, "answer": "rs1", "error": null, "ms": 1.7}. The local
port lets the lab find each request's packets in the captures. Every request has a timeout, so
the whole run is bounded.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import time


def one_request(host: str, port: int, timeout: float) -> tuple[int | None, str | None, str | None]:
    """Return (local port, answer body, error text)."""
    local_port = None
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            local_port = conn.getsockname()[1]
            conn.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1."):
            return local_port, None, "no HTTP answer"
        return local_port, body.decode(errors="replace").strip(), None
    except OSError as exc:
        return local_port, None, exc.strerror or str(exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lvsuser-lab-client")
    parser.add_argument("--url-host", required=True)
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between requests")
    args = parser.parse_args(argv)
    for number in range(1, args.requests + 1):
        started = time.monotonic()
        local_port, answer, error = one_request(args.url_host, args.port, args.timeout)
        print(json.dumps({"n": number, "local_port": local_port, "answer": answer, "error": error,
                          "ms": round((time.monotonic() - started) * 1000, 1)}), flush=True)
        time.sleep(args.pause)
    return 0


if __name__ == "__main__":
    sys.exit(main())
