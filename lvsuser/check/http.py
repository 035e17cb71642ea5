"""HTTP_GET and SSL_GET (check_http.c, check_ssl.c).

Each url block is fetched in turn with an HTTP/1.0 GET (Host: virtualhost, else the address
and port checked); the check fails at the first url whose status code is not accepted (the
url's status_code list, else 200-299) or whose body's MD5 is not its digest.  The whole fetch
of one url -- connect, request, response -- is bounded by connect_timeout.  SSL_GET is the same
over TLS; like keepalived without a CA file it does not verify the certificate.
"""
from __future__ import annotations

import asyncio
import hashlib
import ssl
from typing import Optional

from lvsuser.check.base import Result, Target, describe_error

MAX_BODY = 16 * 1024 * 1024


def default_status(code: int) -> bool:
    return 200 <= code <= 299


def _client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def fetch(target: Target, path: str, host: str, use_tls: bool,
                sni: Optional[str] = None) -> tuple[int, bytes]:
    """(status code, body) of one GET; raises OSError/ValueError on a broken answer."""
    tls = _client_context() if use_tls else None
    reader, writer = await asyncio.open_connection(
        target.addr, target.port, ssl=tls, server_hostname=(sni or None) if use_tls else None,
        local_addr=target.local)
    try:
        request = (f"GET {path} HTTP/1.0\r\nUser-Agent: KeepAliveClient\r\n"
                   f"Host: {host}\r\nConnection: close\r\n\r\n")
        writer.write(request.encode("latin-1"))
        await writer.drain()
        status_line = await reader.readline()
        parts = status_line.split()
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ValueError(f"not an HTTP answer: {status_line[:60]!r}")
        code = int(parts[1])
        length = None
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if length is not None:
            body = await reader.readexactly(min(length, MAX_BODY))
        else:
            body = await reader.read(MAX_BODY)
        return code, body
    finally:
        writer.close()


def _host_header(config, target: Target) -> str:
    virtualhost = config.options.get("virtualhost")
    if virtualhost:
        return virtualhost
    default_port = 443 if config.kind == "SSL_GET" else 80
    address = f"[{target.addr}]" if ":" in target.addr else target.addr
    return address if target.port == default_port else f"{address}:{target.port}"


async def check(config, target: Target, timeout: float) -> Result:
    use_tls = config.kind == "SSL_GET"
    host = _host_header(config, target)
    for url in config.options.get("urls", []):
        path = url.get("path", "/")
        try:
            code, body = await asyncio.wait_for(
                fetch(target, path, host, use_tls, config.options.get("virtualhost")), timeout)
        except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                ssl.SSLError) as exc:
            return Result(False, f"{path}: {describe_error(exc)}")
        codes = url.get("status_code")
        if not (code in codes if codes else default_status(code)):
            return Result(False, f"{path}: HTTP status {code}")
        digest = url.get("digest")
        if digest and hashlib.md5(body).hexdigest() != digest.lower():
            return Result(False, f"{path}: MD5 digest mismatch")
    return Result(True, "ok")
