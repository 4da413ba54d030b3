"""A fault-injecting HTTP/1.1 reverse proxy, run as its own process.

It sits between imgpull and a real registry on loopback and forwards every
request (keep-alive on both sides) unless a rule the test set says otherwise:

    cut           abort the connection (RST) after ``bytes`` body bytes
    short_body    send ``bytes`` body bytes under the full Content-Length, then
                  close cleanly (FIN): the Content-Length lies
    flip          XOR 0xFF into the body at each of ``offsets``
    stall         stop after ``after`` body bytes for ``seconds`` (None: until
                  the client gives up)
    trickle       after ``after`` body bytes, send ``rate`` bytes a second
    status        answer ``status`` (429, 500, 502, 503) without asking upstream,
                  with ``retry_after`` seconds as delta-seconds or, with
                  ``date=True``, as an HTTP-date
    ignore_range  drop the Range header upstream: a 200 with the whole body
    close_before_headers  close the connection without answering
    as_200        a 206 sent as a 200 (its partial body, no Content-Range)
    bad_range     a 206 whose Content-Range names the bytes one further on
    pace          send the body at ``rate`` bytes a second (this request
                  alone: with ``count=None``, a cap per connection)

A rule matches by method and a regex searched in the path (and with
``ranged`` True/False, only requests with/without a closed Range
``bytes=A-B``: a chunk's), fires on the
matching requests after the first ``skip``, at most ``count`` times (None:
always). Control is a JSON API under ``/__faults__/`` on the same port:
``POST rules`` (a rule or a list), ``GET stats`` (injections per fault
label), ``GET log`` (every proxied request, with a monotonic timestamp),
``POST reset``. The process exits when its stdin closes (the test process
died) or on SIGTERM.

    python -m support.faultproxy --upstream 127.0.0.1:5000   # prints its port

:class:`FaultProxy` (below) starts it for a test and talks to its control API.
Standard library only in the proxy itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import itertools
import json
import math
import re
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .process import HelperProcess

CONTROL = "/__faults__/"
FAULTS = (
    "cut",
    "short_body",
    "flip",
    "stall",
    "trickle",
    "status",
    "ignore_range",
    "close_before_headers",
    "as_200",
    "bad_range",
    "pace",
)
_READ = 64 * 1024
_MAX_HEAD = 64 * 1024
# A stall "for ever" still ends: no proxy task outlives a broken test by much.
_FOREVER = 300.0
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
_ERROR_CODES = {429: "TOOMANYREQUESTS", 503: "UNAVAILABLE"}


@dataclass
class Rule:
    fault: str
    path: str = ""
    method: str | None = "GET"
    count: int | None = 1
    skip: int = 0
    # Fault parameters (see the module docstring).
    bytes: int = 0
    offsets: list[int] = field(default_factory=list)
    after: int = 0
    seconds: float | None = None
    rate: int = 0
    status: int = 503
    retry_after: float | None = None
    date: bool = False
    ranged: bool | None = None
    # How the matrix names it; default: the fault, or e.g. "status 429 (date)".
    label: str = ""
    seen: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; one of {', '.join(FAULTS)}")
        re.compile(self.path)
        if not self.label:
            self.label = self.fault
            if self.fault == "status":
                self.label = f"status {self.status}"
                if self.retry_after is not None:
                    self.label += " retry-after " + ("date" if self.date else "seconds")

    def matches(self, method: str, path: str, closed_range: bool = False) -> bool:
        return (
            (self.method is None or self.method == method)
            and bool(re.search(self.path, path))
            and (self.ranged is None or self.ranged == closed_range)
        )

    @property
    def armed(self) -> bool:
        return self.seen > self.skip and (self.count is None or self.fired < self.count)


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    @property
    def keep_alive(self) -> bool:
        conn = (self.header("connection") or "").lower()
        return conn != "close" if self.version == "HTTP/1.1" else conn == "keep-alive"

    def encode(self, host: str, drop: tuple[str, ...] = ()) -> bytes:
        lines = [f"{self.method} {self.target} HTTP/1.1"]
        for k, v in self.headers:
            if k.lower() == "host":
                v = host
            if k.lower() not in drop:
                lines.append(f"{k}: {v}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


@dataclass
class LogEntry:
    t: float  # time.monotonic() when the request arrived
    method: str
    path: str
    range: str | None
    status: int | None  # as sent to the client (None: nothing was)
    fault: str | None  # the label of the rule that fired
    sent: int = 0  # body bytes sent to the client
    # time.monotonic() when the last body byte was written (None: none was):
    # with `t`, when the request held the connection (concurrency tests).
    last: float | None = None
    # The client connection it came on (numbered from 1 in arrival order):
    # which requests shared a kept-alive connection.
    conn: int = 0


class _Closed(Exception):
    """The client went away, or a fault closed the connection."""


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError as exc:
        raise ValueError("header block too large") from exc


def _parse_headers(lines: list[str]) -> list[tuple[str, str]]:
    headers = []
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"bad header line {line!r}")
        headers.append((name.strip(), value.strip()))
    return headers


async def read_request(reader: asyncio.StreamReader, prefix: bytes = b"") -> Request | None:
    head = await _read_head(reader)
    if head is None:
        return None
    head = prefix + head
    lines = head.decode("latin-1").split("\r\n")[:-2]
    method, target, version = lines[0].split(" ", 2)
    req = Request(method, target, version, _parse_headers(lines[1:]))
    length = req.header("content-length")
    if length:
        req.body = await reader.readexactly(int(length))
    elif req.header("transfer-encoding"):
        raise ValueError("chunked request bodies are not supported")
    return req


class Upstream:
    """One keep-alive connection to the registry, (re)opened as needed."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.conn is None:
            self.conn = await asyncio.open_connection(self.host, self.port, limit=_MAX_HEAD)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn[1].close()
            self.conn = None


class Proxy:
    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream_host, self.upstream_port = host, int(port)
        self.rules: list[Rule] = []
        self.injected: dict[str, int] = {}
        self.log: list[LogEntry] = []
        self.connections = itertools.count(1)

    # -- control ----------------------------------------------------------

    def control(self, req: Request) -> tuple[int, Any]:
        what = req.target[len(CONTROL) :].split("?", 1)[0]
        if req.method == "POST" and what == "rules":
            data = json.loads(req.body or b"[]")
            rules = [Rule(**r) for r in (data if isinstance(data, list) else [data])]
            self.rules.extend(rules)
            return 200, {"rules": len(self.rules)}
        if req.method == "POST" and what == "reset":
            self.rules.clear()
            self.injected.clear()
            self.log.clear()
            return 200, {}
        if req.method == "GET" and what == "stats":
            return 200, {
                "injected": self.injected,
                "requests": len(self.log),
                "rules": [asdict(r) for r in self.rules],
            }
        if req.method == "GET" and what == "log":
            return 200, [asdict(e) for e in self.log]
        return 404, {"error": f"no control {req.method} {what}"}

    # -- proxying ---------------------------------------------------------

    def _choose(self, req: Request) -> Rule | None:
        path = req.target.split("?", 1)[0]
        closed = bool(re.fullmatch(r"bytes=\d+-\d+", req.header("range") or ""))
        for candidate in self.rules:
            if candidate.matches(req.method, path, closed):
                candidate.seen += 1
        rule = next(
            (r for r in self.rules if r.matches(req.method, path, closed) and r.armed), None
        )
        if rule is not None:
            rule.fired += 1
            self.injected[rule.label] = self.injected.get(rule.label, 0) + 1
        return rule

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = Upstream(self.upstream_host, self.upstream_port)
        conn = next(self.connections)
        try:
            # A TLS ClientHello (imgpull tries https first, then falls back
            # to http on loopback): close at once rather than wait for a
            # header block that never comes.
            first = await reader.readexactly(1)
            if first == b"\x16":
                return
            while True:
                try:
                    req = await read_request(reader, first)
                    first = b""
                except ValueError as exc:
                    await _send_simple(writer, 400, {"error": str(exc)}, keep_alive=False)
                    return
                if req is None:
                    return
                if req.target.startswith(CONTROL):
                    try:
                        status, body = self.control(req)
                    except (ValueError, TypeError, re.error) as exc:
                        status, body = 400, {"error": str(exc)}
                    await _send_simple(writer, status, body, keep_alive=req.keep_alive)
                    if not req.keep_alive:
                        return
                    continue
                entry = LogEntry(
                    time.monotonic(),
                    req.method,
                    req.target,
                    req.header("range"),
                    None,
                    None,
                    conn=conn,
                )
                self.log.append(entry)
                rule = self._choose(req)
                entry.fault = rule.label if rule else None
                if not await self._serve(req, rule, entry, reader, writer, upstream):
                    return
        except (_Closed, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            upstream.close()
            writer.close()

    async def _serve(
        self,
        req: Request,
        rule: Rule | None,
        entry: LogEntry,
        client_reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: Upstream,
    ) -> bool:
        """Answers one request; False when the client connection is done."""
        if rule is not None and rule.fault == "close_before_headers":
            return False
        if rule is not None and rule.fault == "status":
            extra = []
            if rule.retry_after is not None:
                extra.append(("Retry-After", _retry_after(rule.retry_after, rule.date)))
            code = _ERROR_CODES.get(rule.status, "UNKNOWN")
            body = {"errors": [{"code": code, "message": "injected by faultproxy"}]}
            entry.status = rule.status
            await _send_simple(writer, rule.status, body, keep_alive=req.keep_alive, extra=extra)
            return req.keep_alive
        drop = ("range",) if rule is not None and rule.fault == "ignore_range" else ()
        up_reader, up_writer = await upstream.open()
        try:
            up_writer.write(req.encode(f"{self.upstream_host}:{self.upstream_port}", drop))
            await up_writer.drain()
            head = await _read_head(up_reader)
        except ConnectionError:
            head = None
        if head is None:
            # A keep-alive connection the registry had closed: once more, fresh.
            upstream.close()
            up_reader, up_writer = await upstream.open()
            up_writer.write(req.encode(f"{self.upstream_host}:{self.upstream_port}", drop))
            await up_writer.drain()
            head = await _read_head(up_reader)
            if head is None:
                return False
        lines = head.decode("latin-1").split("\r\n")[:-2]
        status = int(lines[0].split(" ", 2)[1])
        headers = _parse_headers(lines[1:])
        if rule is not None and rule.fault in ("as_200", "bad_range") and status == 206:
            head, status = _misrange(lines, headers, rule.fault)
        entry.status = status
        writer.write(head)
        length = next((v for k, v in headers if k.lower() == "content-length"), None)
        chunked = any(
            k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in headers
        )
        up_keep = not any(k.lower() == "connection" and v.lower() == "close" for k, v in headers)
        if req.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            await writer.drain()
        elif length is not None:
            sink = _Body(writer, client_reader, rule, entry)
            left = int(length)
            while left > 0:
                chunk = await up_reader.read(min(_READ, left))
                if not chunk:
                    upstream.close()
                    return False
                left -= len(chunk)
                if not await sink.send(chunk, last=left == 0):
                    upstream.close()
                    return False
        elif chunked:
            await _relay_chunked(up_reader, writer)
        else:
            while chunk := await up_reader.read(_READ):
                writer.write(chunk)
                await writer.drain()
            upstream.close()
            return False
        if not up_keep:
            upstream.close()
        return req.keep_alive


class _Body:
    """Sends one response body to the client, applying the body faults."""

    def __init__(
        self,
        writer: asyncio.StreamWriter,
        client_reader: asyncio.StreamReader,
        rule: Rule | None,
        entry: LogEntry,
    ) -> None:
        self.writer, self.client_reader, self.entry = writer, client_reader, entry
        self.rule = rule
        self.offset = 0
        self.stalled = False
        self.started = 0.0

    async def _write(self, data: bytes) -> None:
        if data:
            self.writer.write(data)
            await self.writer.drain()
            self.offset += len(data)
            self.entry.sent += len(data)
            self.entry.last = time.monotonic()

    async def _client_gone(self, timeout: float) -> bool:
        """Waits up to `timeout` s for the client to close; True if it did."""
        try:
            data = await asyncio.wait_for(self.client_reader.read(1), timeout)
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return not data

    async def send(self, chunk: bytes, *, last: bool = False) -> bool:
        """False once the connection is finished (by a fault or the client);
        `last`: the body's final bytes."""
        rule, start = self.rule, self.offset
        if rule is None or rule.fault in ("ignore_range", "status", "as_200", "bad_range"):
            await self._write(chunk)
            return True
        if rule.fault == "pace":
            self.started = self.started or time.monotonic()
            await self._write(chunk)
            ahead = self.started + self.offset / rule.rate - time.monotonic()
            if ahead > 0 and last:
                # The client may send its next request on this connection
                # meanwhile: a read would take its first byte.
                await asyncio.sleep(ahead)
            elif ahead > 0 and await self._client_gone(ahead):
                raise _Closed
            return True
        if rule.fault == "flip":
            buf = bytearray(chunk)
            for off in rule.offsets:
                if start <= off < start + len(buf):
                    buf[off - start] ^= 0xFF
            await self._write(bytes(buf))
            return True
        if rule.fault in ("cut", "short_body"):
            keep = max(0, rule.bytes - start)
            await self._write(chunk[:keep])
            if keep >= len(chunk):
                return True
            if rule.fault == "cut":
                # Let the bytes reach the client before the RST drops them.
                await asyncio.sleep(0.1)
                _reset(self.writer)
            else:
                self.writer.close()
            raise _Closed
        if rule.fault == "stall" and not self.stalled:
            split = max(0, rule.after - start)
            if split >= len(chunk):
                await self._write(chunk)
                return True
            await self._write(chunk[:split])
            self.stalled = True
            if await self._client_gone(_FOREVER if rule.seconds is None else rule.seconds):
                raise _Closed
            await self._write(chunk[split:])
            return True
        if rule.fault == "trickle":
            split = max(0, rule.after - start)
            await self._write(chunk[:split])
            rest = chunk[split:]
            piece = max(1, rule.rate // 10)
            while rest:
                await self._write(rest[:piece])
                rest = rest[piece:]
                if await self._client_gone(0.1):
                    raise _Closed
            return True
        await self._write(chunk)
        return True


def _misrange(lines: list[str], headers: list[tuple[str, str]], fault: str) -> tuple[bytes, int]:
    """A 206's head answered wrong: as a 200 without Content-Range, or with
    a Content-Range one byte further on than the bytes sent."""
    kept = []
    for name, value in headers:
        if name.lower() == "content-range":
            if fault == "as_200":
                continue
            m = re.fullmatch(r"bytes (\d+)-(\d+)/(\S+)", value.strip())
            if m:
                value = f"bytes {int(m[1]) + 1}-{int(m[2]) + 1}/{m[3]}"
        kept.append(f"{name}: {value}")
    status = 200 if fault == "as_200" else 206
    first = f"HTTP/1.1 {status} {'OK' if status == 200 else 'Partial Content'}"
    return ("\r\n".join([first, *kept]) + "\r\n\r\n").encode("latin-1"), status


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), as a dropped connection looks."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _retry_after(seconds: float, date: bool) -> str:
    if not date:
        return f"{seconds:g}"
    # Whole seconds from the next whole second: the wait is never shorter.
    return email.utils.formatdate(math.ceil(time.time()) + seconds, usegmt=True)


async def _relay_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        line = await reader.readuntil(b"\r\n")
        writer.write(line)
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:  # trailers, up to the empty line
                trailer = await reader.readuntil(b"\r\n")
                writer.write(trailer)
                if trailer == b"\r\n":
                    await writer.drain()
                    return
        writer.write(await reader.readexactly(size + 2))
        await writer.drain()


async def _send_simple(
    writer: asyncio.StreamWriter,
    status: int,
    body: Any,
    *,
    keep_alive: bool,
    extra: list[tuple[str, str]] | None = None,
) -> None:
    data = json.dumps(body).encode()
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
        *(f"{k}: {v}" for k, v in extra or []),
    ]
    if not keep_alive:
        lines.append("Connection: close")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)
    await writer.drain()


async def _serve_forever(upstream: str, port: int) -> None:
    proxy = Proxy(upstream)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", port, limit=_MAX_HEAD)
    print(server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    # Our stdin is a pipe from the test process: EOF means it is gone.
    stdin_closed = loop.run_in_executor(None, sys.stdin.buffer.read)
    async with server:
        await stdin_closed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fault-injecting HTTP/1.1 reverse proxy")
    parser.add_argument("--upstream", required=True, help="host:port of the registry")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args.upstream, args.port))


# ---------------------------------------------------------------------------
# The test side: start the process, talk to its control API.


class FaultProxy(HelperProcess):
    """The proxy process in front of `upstream` ("127.0.0.1:PORT").

    with FaultProxy(registry.host) as proxy:
        proxy.add("cut", path=digest, bytes=1 << 20)
        ... pull proxy.ref("test/small:v2s2") ...
        assert proxy.stats()["cut"] == 1
    """

    what = "fault proxy"

    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream
        self._http: Any = None

    def ref(self, repo_tag: str) -> str:
        return f"{self.host}/{repo_tag}"

    def start(self) -> FaultProxy:
        import httpx

        self._spawn("--upstream", self.upstream)
        self._http = httpx.Client(base_url=f"http://{self.host}{CONTROL}", trust_env=False)
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        super().stop()

    def _call(self, method: str, what: str, body: Any = None) -> Any:
        resp = self._http.request(method, what, json=body)
        resp.raise_for_status()
        return resp.json()

    def add(self, fault: str, *, path: str = "", **params: Any) -> None:
        """One rule: see the module docstring for faults and parameters."""
        self._call("POST", "rules", {"fault": fault, "path": path, **params})

    def reset(self) -> None:
        self._call("POST", "reset")

    def stats(self) -> dict[str, int]:
        """Injections so far, per fault label."""
        return dict(self._call("GET", "stats")["injected"])

    def log(self) -> list[LogEntry]:
        return [LogEntry(**e) for e in self._call("GET", "log")]

    def requests(self, path: str, method: str = "GET") -> list[LogEntry]:
        """The logged requests whose path contains `path`."""
        return [e for e in self.log() if e.method == method and path in e.path]


if __name__ == "__main__":
    main()
