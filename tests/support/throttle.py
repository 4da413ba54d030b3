"""A bandwidth-limiting TCP relay, run as its own process on loopback.

Loopback moves a 70 MB image in a fraction of a second, too fast to kill a
pull in the middle of a blob. Put this relay between imgpull and the registry
and every byte the server sends is paced to ``rate`` bytes/s in total (all
connections share one budget, so a pull's duration does not depend on how
many blobs it fetches at once). What the client sends passes unpaced.

    with ThrottledRelay("127.0.0.1:5000", rate=40_000_000) as relay:
        pull(f"{relay.host}/test/image:tag")

As a program: ``python -m support.throttle TARGET_HOST:PORT RATE`` prints its port and relays
until killed.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time

from .process import HelperProcess

# Small kernel buffers on the relay's sockets: what a killed client never
# received must not be counted as sent (the registry's access log counts the
# bytes it wrote into its socket), and pacing must be what the client sees.
_SOCK_BUF = 128 * 1024
_CHUNK = 32 * 1024


class _Pacer:
    """One budget of `rate` bytes/s shared by every connection."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def wait(self, n: int) -> None:
        with self._lock:
            start = max(time.monotonic(), self._next)
            self._next = start + n / self._rate
        delay = start - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _pump(src: socket.socket, dst: socket.socket, pacer: _Pacer | None) -> None:
    try:
        while True:
            data = src.recv(_CHUNK)
            if not data:
                break
            if pacer is not None:
                pacer.wait(len(data))
            dst.sendall(data)
    except OSError:
        pass
    finally:
        # Either side gone: end both directions, so that the registry sees a
        # killed client as a broken connection at once.
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def _serve(listener: socket.socket, target: tuple[str, int], pacer: _Pacer) -> None:
    while True:
        client, _ = listener.accept()
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        for s in (client, upstream):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCK_BUF)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCK_BUF)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            upstream.connect(target)
        except OSError:
            client.close()
            upstream.close()
            continue
        threads = [
            threading.Thread(target=_pump, args=(client, upstream, None), daemon=True),
            threading.Thread(target=_pump, args=(upstream, client, pacer), daemon=True),
        ]
        for t in threads:
            t.start()
        threading.Thread(target=_close_after, args=(threads, client, upstream), daemon=True).start()


def _close_after(threads: list[threading.Thread], *socks: socket.socket) -> None:
    for t in threads:
        t.join()
    for s in socks:
        s.close()


def main(argv: list[str]) -> None:
    host, _, port = argv[0].rpartition(":")
    rate = float(argv[1])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print(listener.getsockname()[1], flush=True)
    _serve(listener, (host, int(port)), _Pacer(rate))


class ThrottledRelay(HelperProcess):
    """Runs this module as a relay process to `target` ("host:port");
    `host` is the registry part of an image reference through it."""

    what = "throttling relay"

    def __init__(self, target: str, *, rate: float) -> None:
        super().__init__()
        self.target = target
        self.rate = rate

    def start(self) -> ThrottledRelay:
        self._spawn(self.target, str(self.rate))
        return self


if __name__ == "__main__":
    main(sys.argv[1:])
