"""A WAN-like TCP relay, run as its own process on loopback: round-trip time,
an optional per-connection bandwidth cap, and counters of the connections and
HTTP requests that went through it.

    with WanRelay(registry.host, rtt=0.05, rate=25_000_000) as relay:
        relay.reset()                      # counters to 0, open connections cut
        pull(f"{relay.host}/test/image:tag")
        stats = relay.settled_stats()      # once the client's connections closed
        assert (stats.connections, stats.requests) == (1, 3)

The link it models, per connection:

- Each direction is a delay line: a chunk read from one side is written to
  the other RTT/2 later, so a request/response exchange costs one RTT.
- A new connection's handshake costs one RTT as well: what the client sends
  is held until RTT after the accept (then its RTT/2), as its first request
  would wait for the SYN-ACK on a real link.
- `rate` (bytes/s, 0: none) paces the server -> client bytes of each
  connection separately (a per-connection throughput limit: a proxy, a CDN
  edge, TCP over a lossy path); client -> server bytes are not paced.
- In-flight bytes per direction are bounded: rate x RTT + two chunks when
  capped, WINDOW otherwise; when full, the relay stops reading that side (its
  TCP flow control pushes back), as a link's bandwidth-delay product does.
  Without a cap the throughput of one connection is thus at most
  WINDOW / (RTT/2) (over 300 MB/s at 50 ms).

The counters (:class:`RelayStats`):

- ``connections``: connections accepted since the last reset.
- ``requests``: HTTP/1.x request heads seen in the client -> server streams,
  with ``log`` listing each as (connection number, method, target), in the
  order read. A request's body is skipped by its Content-Length (pulls send
  GET/HEAD without bodies, token POSTs with a Content-Length); a chunked
  body cannot be delimited here, so such a connection stops being counted
  and is counted in ``opaque`` instead, as is a connection whose first bytes
  are not an HTTP request (TLS: only its connection is counted).
- ``open``: connections not yet closed; :meth:`WanRelay.settled_stats` waits
  for 0, so that a client's last connections are in the counts.
- ``down_bytes`` / ``up_bytes``: server -> client and client -> server bytes relayed.

Counts are taken when the relay reads the bytes, before the delay: once a
client has its last response, every request it sent is counted.

:meth:`WanRelay.set_link` changes RTT and rate for connections accepted after
it (a bench runs one relay, so that a daemon configured with its address
keeps it). :meth:`WanRelay.reset` also cuts every open connection, so that
the next run starts cold (no kept-alive connection of a daemon).

As a program: ``python -m support.wanrelay TARGET_HOST:PORT [RTT_S [RATE]]``
prints its port, then answers one JSON line on stdout per command line on
stdin (``stats``, ``reset``, ``link RTT_S RATE``); it ends when stdin closes.
"""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .process import HelperProcess

# Large reads: the relay's CPU goes by the chunk (measured on 2 cores, 8
# connections x 25 MB/s at RTT 50 ms: 1.9 ms of CPU a MB with 256 KiB, 3.4
# with 64 KiB); a chunk is 10 ms at 25 MB/s, the pacing's grain.
CHUNK = 256 * 1024
# In-flight bytes per direction of a connection without a rate cap.
WINDOW = 8 * 1024 * 1024
# Requests kept in the log (the counter goes on past it).
LOG_LIMIT = 100_000
# A request head longer than this is not HTTP as a puller speaks it.
_HEAD_LIMIT = 64 * 1024
# A paced connection that fell behind (a busy machine) may catch up by this
# much at once, no more: a cap, not an average over a long stall.
_PACE_SLACK = 0.010
_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"OPTIONS ")


@dataclass(frozen=True)
class RelayStats:
    connections: int
    requests: int
    opaque: int
    open: int
    down_bytes: int
    up_bytes: int
    # (connection number from 1, method, request target) per request.
    log: list[tuple[int, str, str]] = field(default_factory=list)

    def methods(self) -> collections.Counter[str]:
        """Requests per method."""
        return collections.Counter(m for _, m, _ in self.log)


# ---------------------------------------------------------------------------
# The relay process
# ---------------------------------------------------------------------------


class _Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.epoch = 0  # bumped by reset: a connection of an earlier epoch counts no more
        self.clear()

    def clear(self) -> None:
        self.connections = self.requests = self.opaque = 0
        self.down_bytes = self.up_bytes = 0
        self.log: list[tuple[int, str, str]] = []


class _Link:
    """What a connection accepted now gets."""

    def __init__(self, rtt: float, rate: float) -> None:
        self.rtt = rtt
        self.rate = rate


class _RequestCounter:
    """Finds the request heads in one connection's client -> server bytes."""

    def __init__(self, relay: _Relay, conn: int, epoch: int) -> None:
        self.relay = relay
        self.conn = conn
        self.epoch = epoch
        self.head = b""
        self.body_left = 0
        self.opaque = False

    def feed(self, data: bytes) -> None:
        while data and not self.opaque:
            if self.body_left:
                n = min(self.body_left, len(data))
                self.body_left -= n
                data = data[n:]
                continue
            if not self.head:
                data = data.lstrip(b"\r\n")  # tolerated between requests (RFC 9112 2.2)
                if not data:
                    return
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > _HEAD_LIMIT or not _could_be_request(self.head):
                    self._give_up()
                return
            head, data = self.head[:end], self.head[end + 4 :]
            self.head = b""
            if not self._request(head):
                self._give_up()

    def _request(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return False
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    return False
            elif name == b"transfer-encoding":
                return False  # a chunked body: see the module's docstring
        self.body_left = length
        entry = (self.conn, parts[0].decode("latin-1"), parts[1].decode("latin-1"))
        stats = self.relay.stats
        with stats.lock:
            if stats.epoch == self.epoch:
                stats.requests += 1
                if len(stats.log) < LOG_LIMIT:
                    stats.log.append(entry)
        return True

    def _give_up(self) -> None:
        self.opaque = True
        self.head = b""
        stats = self.relay.stats
        with stats.lock:
            if stats.epoch == self.epoch:
                stats.opaque += 1


def _could_be_request(head: bytes) -> bool:
    """Whether the start of a head can still be an HTTP method and a space."""
    return any(m.startswith(head[: len(m)]) for m in _METHODS)


class _DelayLine:
    """One direction of a connection: read from src, write to dst `delay` s
    later, paced to `rate` bytes/s (0: unpaced), at most `limit` bytes held."""

    def __init__(
        self,
        conn: _Connection,
        src: socket.socket,
        dst: socket.socket,
        *,
        delay: float,
        not_before: float,
        rate: float,
        limit: int,
        down: bool,
        counter: _RequestCounter | None,
    ) -> None:
        self.conn = conn
        self.src = src
        self.dst = dst
        self.delay = delay
        self.not_before = not_before
        self.rate = rate
        self.limit = limit
        self.down = down
        self.counter = counter
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.held = 0
        self.eof = False
        self.cond = threading.Condition()

    def start(self) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._write, daemon=True),
        ]
        for t in threads:
            t.start()
        return threads

    def _read(self) -> None:
        stats = self.conn.relay.stats
        try:
            while True:
                with self.cond:
                    while self.held >= self.limit and not self.conn.broken:
                        self.cond.wait()
                    if self.conn.broken:
                        return
                data = self.src.recv(CHUNK)
                now = time.monotonic()
                if not data:
                    break
                if self.counter is not None:
                    self.counter.feed(data)
                with stats.lock:
                    if stats.epoch == self.conn.epoch:
                        if self.down:
                            stats.down_bytes += len(data)
                        else:
                            stats.up_bytes += len(data)
                with self.cond:
                    self.queue.append((max(now, self.not_before) + self.delay, data))
                    self.held += len(data)
                    self.cond.notify_all()
        except OSError:
            self.conn.breaks()
        finally:
            with self.cond:
                self.eof = True
                self.cond.notify_all()

    def _write(self) -> None:
        next_send = 0.0
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.eof and not self.conn.broken:
                        self.cond.wait()
                    if self.conn.broken:
                        return
                    if not self.queue:
                        break  # eof, all written
                    due, data = self.queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if self.rate:
                    # A chunk leaves once its last byte would have crossed
                    # the link: a body of N bytes takes N / rate.
                    now = time.monotonic()
                    next_send = max(next_send, now - _PACE_SLACK) + len(data) / self.rate
                    if next_send > now:
                        time.sleep(next_send - now)
                self.dst.sendall(data)
                with self.cond:
                    self.queue.popleft()
                    self.held -= len(data)
                    self.cond.notify_all()
            # The sender closed its side: pass the FIN on, after the delay.
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            self.conn.breaks()


class _Connection:
    def __init__(
        self, relay: _Relay, number: int, epoch: int, client: socket.socket, link: _Link
    ) -> None:
        self.relay = relay
        self.number = number
        self.epoch = epoch
        self.client = client
        self.upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.link = link
        self.broken = False
        self.lines: list[_DelayLine] = []

    def run(self) -> None:
        try:
            self._relay()
        except OSError:
            pass
        finally:
            self.client.close()
            self.upstream.close()
            self.relay.closed(self)

    def _relay(self) -> None:
        accepted = time.monotonic()
        rtt, rate = self.link.rtt, self.link.rate
        for s in (self.client, self.upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.upstream.connect(self.relay.target)
        half = rtt / 2
        window = int(rate * rtt) + 2 * CHUNK if rate else WINDOW
        up = _DelayLine(
            self,
            self.client,
            self.upstream,
            delay=half,
            not_before=accepted + rtt,  # the handshake's round trip
            rate=0,
            limit=window,
            down=False,
            counter=_RequestCounter(self.relay, self.number, self.epoch),
        )
        down = _DelayLine(
            self,
            self.upstream,
            self.client,
            delay=half,
            not_before=0.0,
            rate=rate,
            limit=window,
            down=True,
            counter=None,
        )
        self.lines = [up, down]
        threads = up.start() + down.start()
        for t in threads:
            t.join()

    def breaks(self) -> None:
        """Either side failed (or a reset): end both at once, both directions."""
        self.broken = True
        for s in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for line in self.lines:
            with line.cond:
                line.cond.notify_all()


class _Relay:
    def __init__(self, target: tuple[str, int], link: _Link) -> None:
        self.target = target
        self.link = link
        self.stats = _Stats()
        self.live: set[_Connection] = set()

    def serve(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # out of descriptors, say: the next may work
                time.sleep(0.05)
                continue
            with self.stats.lock:
                self.stats.connections += 1
                conn = _Connection(
                    self, self.stats.connections, self.stats.epoch, client, self.link
                )
                self.live.add(conn)
            threading.Thread(target=conn.run, daemon=True).start()

    def closed(self, conn: _Connection) -> None:
        with self.stats.lock:
            self.live.discard(conn)

    def command(self, line: str) -> dict[str, Any]:
        words = line.split()
        if words[:1] == ["link"] and len(words) == 3:
            self.link = _Link(float(words[1]), float(words[2]))
            return {"ok": True}
        if words == ["reset"]:
            with self.stats.lock:
                self.stats.epoch += 1
                self.stats.clear()
                cut = list(self.live)
            for conn in cut:
                conn.breaks()
            return {"ok": True}
        if words == ["stats"]:
            s = self.stats
            with s.lock:
                return {
                    "connections": s.connections,
                    "requests": s.requests,
                    "opaque": s.opaque,
                    "open": sum(1 for c in self.live if c.epoch == s.epoch),
                    "down_bytes": s.down_bytes,
                    "up_bytes": s.up_bytes,
                    "log": list(s.log),
                }
        return {"error": f"unknown command {line!r}"}


def main(argv: list[str]) -> None:
    host, _, port = argv[0].rpartition(":")
    rtt = float(argv[1]) if len(argv) > 1 else 0.0
    rate = float(argv[2]) if len(argv) > 2 else 0.0
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    relay = _Relay((host, int(port)), _Link(rtt, rate))
    threading.Thread(target=relay.serve, args=(listener,), daemon=True).start()
    print(listener.getsockname()[1], flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(relay.command(line)), flush=True)


# ---------------------------------------------------------------------------
# The parent's side
# ---------------------------------------------------------------------------


class WanRelay(HelperProcess):
    """Runs this module as a relay process to `target` ("host:port") with a
    round-trip time of `rtt` seconds and `rate` bytes/s per connection (0:
    none); `host` is the registry part of an image reference through it."""

    what = "WAN relay"

    def __init__(self, target: str, *, rtt: float = 0.0, rate: float = 0.0) -> None:
        super().__init__()
        self.target = target
        self.rtt = rtt
        self.rate = rate
        self._lock = threading.Lock()

    def start(self) -> WanRelay:
        self._spawn(self.target, str(self.rtt), str(self.rate))
        return self

    @property
    def pid(self) -> int:
        """The relay process's (e.g. to read its CPU time)."""
        assert self._proc is not None
        return self._proc.pid

    def _ask(self, command: str) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        with self._lock:
            proc.stdin.write(command.encode() + b"\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.what} ended (asked {command!r})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the {self.what}: {answer['error']}")
        return answer

    def set_link(self, *, rtt: float, rate: float = 0.0) -> None:
        """RTT and rate of the connections accepted from now on."""
        self._ask(f"link {rtt} {rate}")
        self.rtt, self.rate = rtt, rate

    def reset(self) -> None:
        """Counters to 0; every open connection is cut (the next run starts cold)."""
        self._ask("reset")

    def stats(self) -> RelayStats:
        a = self._ask("stats")
        log = [(int(n), str(m), str(t)) for n, m, t in a.pop("log")]
        return RelayStats(**a, log=log)

    def settled_stats(self, limit: float = 10.0) -> RelayStats:
        """The counters once no connection is open (or after `limit` s)."""
        deadline = time.monotonic() + limit
        while True:
            stats = self.stats()
            if stats.open == 0 or time.monotonic() > deadline:
                return stats
            time.sleep(0.02)


if __name__ == "__main__":
    main(sys.argv[1:])
