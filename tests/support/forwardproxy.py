"""An HTTP forward proxy process on loopback, for HTTPS_PROXY / HTTP_PROXY tests.

It speaks the two ways clients use a proxy: ``CONNECT host:port`` (a byte
tunnel: TLS goes end to end through it) and absolute-URI requests
(``GET http://host:port/path``, forwarded one request per connection). Host
names are looked up in ``hosts`` only, so a test can use a name that no DNS
knows (``registry.imgpull.test``) and that only the proxy can reach; any other
name is refused with 502, so nothing ever leaves loopback. Every request is
recorded in a log file: ``connects`` ("host:port") and ``requests`` ("METHOD url").

The proxy runs as its own process (``python -m support.forwardproxy LOG NAME=ADDR...``
prints its port), as a real proxy would; ForwardProxy starts and stops it.
"""

from __future__ import annotations

import os
import select
import socket
import socketserver
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from .process import HelperProcess

_MAX_HEAD = 64 * 1024


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: _Proxy


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        client: socket.socket = self.request
        client.settimeout(30)
        head, rest = _read_head(client)
        if not head:
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = [*lines[0].split(" "), "", ""][:3]
        proxy = self.server.proxy
        if method == "CONNECT":
            proxy.record(connect=target)
            upstream = proxy.open(target)
            if upstream is None:
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            with upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    upstream.sendall(rest)
                _relay(client, upstream)
            return
        proxy.record(request=f"{method} {target}")
        parts = urlsplit(target)
        if parts.scheme != "http" or not parts.hostname:
            client.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        upstream = proxy.open(f"{parts.hostname}:{parts.port or 80}")
        if upstream is None:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        # One request per connection: both sides are told so, which keeps
        # the proxy from having to find where a response ends.
        headers = [
            h for h in lines[1:]
            if h and h.split(":", 1)[0].strip().lower() not in ("connection", "proxy-connection",
                                                                  "keep-alive")
        ]  # fmt: skip
        request = "\r\n".join([f"{method} {path} {version}", *headers, "Connection: close", "", ""])
        with upstream:
            upstream.sendall(request.encode("latin-1") + rest)
            answer, body = _read_head(upstream)
            if not answer:
                return
            status, *fields = answer.decode("latin-1").split("\r\n")
            kept = [f for f in fields if f and f.split(":", 1)[0].strip().lower() != "connection"]
            client.sendall("\r\n".join([status, *kept, "Connection: close", "", ""]).encode())
            client.sendall(body)
            _relay(client, upstream)


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The bytes up to the blank line ending an HTTP head, and any bytes after it."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        try:
            chunk = sock.recv(65536)
        except OSError:
            return b"", b""
        if not chunk or len(buf) > _MAX_HEAD:
            return b"", b""
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    peers = {a: b, b: a}
    while True:
        try:
            ready, _, _ = select.select(list(peers), [], [], 30)
        except (OSError, ValueError):
            return
        if not ready:
            return
        for sock in ready:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            try:
                peers[sock].sendall(data)
            except OSError:
                return


class _Proxy:
    """The proxy process's state: the name map and the request log."""

    def __init__(self, hosts: Mapping[str, str], log: Path) -> None:
        self.hosts = {k.lower(): v for k, v in hosts.items()}
        self._log = log.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def record(self, *, connect: str | None = None, request: str | None = None) -> None:
        line = f"CONNECT {connect}" if connect is not None else str(request)
        with self._lock:
            self._log.write(line + "\n")
            self._log.flush()

    def open(self, hostport: str) -> socket.socket | None:
        """A connection to ``host:port`` when ``host`` is one of ``hosts``."""
        host, _, port = hostport.rpartition(":")
        address = self.hosts.get(host.lower())
        if address is None or not port.isdigit():
            return None
        try:
            return socket.create_connection((address, int(port)), timeout=30)
        except OSError:
            return None


def main(argv: list[str]) -> None:
    log, *pairs = argv
    hosts = dict(p.split("=", 1) for p in pairs)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.proxy = _Proxy(hosts, Path(log))
    print(server.server_address[1], flush=True)
    # stdin is the parent's pipe: at its end (the test process is gone), go too.
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    server.serve_forever()


class ForwardProxy(HelperProcess):
    """``with ForwardProxy({"registry.imgpull.test": "127.0.0.1"}, tmp) as proxy:``
    then ``HTTPS_PROXY=proxy.url``; ``proxy.connects``/``proxy.requests`` say
    what went through it."""

    what = "forward proxy"

    def __init__(self, hosts: Mapping[str, str], workdir: Path) -> None:
        super().__init__()
        self.hosts = dict(hosts)
        self.log_path = workdir / "forwardproxy.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def _lines(self) -> list[str]:
        if not self.log_path.exists():
            return []
        return self.log_path.read_text(encoding="utf-8").splitlines()

    @property
    def connects(self) -> list[str]:
        """The CONNECT targets, ``host:port``, oldest first."""
        return [line.split(" ", 1)[1] for line in self._lines() if line.startswith("CONNECT ")]

    @property
    def requests(self) -> list[str]:
        """The absolute-URI requests, ``METHOD url``, oldest first."""
        return [line for line in self._lines() if not line.startswith("CONNECT ")]

    def clear(self) -> None:
        self.log_path.write_text("")

    def start(self) -> ForwardProxy:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text("")
        self._spawn(str(self.log_path), *(f"{k}={v}" for k, v in self.hosts.items()))
        return self


if __name__ == "__main__":
    main(sys.argv[1:])
