"""An overall deadline for a registry request: headers and body, every byte.

httpx's timeouts are per read, so a server sending one byte every few
seconds holds a request as long as it likes. Requests made inside
`deadline(...)` cannot: the connections of a client passed to `install`
wait, in each connect, read and write, no longer than the time left. When
that cut a wait short, the error leaving the `deadline` block is a
RegistryTimeoutError naming the limit. Blob bodies are not bounded this way
(a big layer takes its time): the native fetcher's stall detection watches them.

The deadline is per thread (a context variable): the pool threads of a pull
each run their own requests.

A request can also be interrupted: inside `interruptible(token)`, each
connect, read and write of a connection is registered with the token, whose
cancel shuts that connection's socket down from the cancelling thread. A
request blocked on a silent server then ends at once (not at its deadline),
the server sees the connection close, and the request raises the token's
error. A connect in progress is aborted the same way (its socket is made
here, not in socket.create_connection, so that it can be registered before
it connects). Every registry request (ping, token, manifest, tag page) goes
through these connections, so one binding per thread covers them all. A
thread waiting for another's request (the ping, a token both need) waits in
`locked(lock)`, which a cancel ends too.
"""

from __future__ import annotations

import contextvars
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import httpcore
import httpx
from httpcore._backends.sync import SyncStream

from imgpull.errors import RegistryTimeoutError, RegistryUnreachableError
from imgpull.retry import DEFAULT_REQUEST_TIMEOUT

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "Interrupt",
    "deadline",
    "install",
    "interruptible",
    "locked",
]

# How often a wait in locked() looks at the thread's token.
_LOCK_POLL = 0.05


@dataclass
class _Deadline:
    at: float  # time.monotonic()
    # Set when a wait was cut short by this deadline: then a timeout is ours.
    hit: bool = False

    def cap(self, timeout: float | None, error: type[Exception]) -> tuple[float, bool]:
        """The wait allowed instead of `timeout`, and whether the deadline set it."""
        left = self.at - time.monotonic()
        if left <= 0:
            self.hit = True
            raise error("request deadline passed")
        if timeout is None or left < timeout:
            return left, True
        return timeout, False


_active: contextvars.ContextVar[_Deadline | None] = contextvars.ContextVar(
    "imgpull_request_deadline", default=None
)


class Interrupt(Protocol):
    """What stops the requests of a thread: a transfer.CancelToken."""

    @property
    def cancelled(self) -> bool: ...

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run `callback` once cancelled; returns the function that unregisters it."""
        ...

    def check(self) -> None:
        """Raise the error the cancel set, if cancelled."""
        ...


_interrupt: contextvars.ContextVar[Interrupt | None] = contextvars.ContextVar(
    "imgpull_request_interrupt", default=None
)


@contextmanager
def interruptible(token: Interrupt) -> Iterator[None]:
    """The requests made inside (on this thread) end as soon as `token` is
    cancelled, raising its error (see the module docstring)."""
    reset = _interrupt.set(token)
    try:
        yield
    finally:
        _interrupt.reset(reset)


@contextmanager
def locked(lock: threading.Lock) -> Iterator[None]:
    """`with lock`, for a lock held across another thread's request: inside
    interruptible(token), the wait ends with the token's error once it is
    cancelled (the other request may hold the lock until its deadline)."""
    token = _interrupt.get()
    if token is None:
        lock.acquire()
    else:
        while not lock.acquire(timeout=_LOCK_POLL):
            token.check()
    try:
        yield
    finally:
        lock.release()


@contextmanager
def deadline(seconds: float, what: str, host: str) -> Iterator[None]:
    """Bound the request made inside to `seconds` in all.

    `what` and `host` word the error ("manifest for test/a:v1",
    "127.0.0.1:5000"). A deadline inside another is another request's (a
    token fetched for a manifest request): it has its own, and the outer
    one's clock stops meanwhile.
    """
    outer = _active.get()
    start = time.monotonic()
    mine = _Deadline(start + seconds)
    token = _active.set(mine)
    try:
        yield
    except (httpx.TransportError, RegistryUnreachableError) as exc:
        if not mine.hit or isinstance(exc, RegistryTimeoutError):
            raise
        raise RegistryTimeoutError(
            f"{what} from {host} did not complete within {seconds:g} s (the request "
            "deadline): the server is too slow or stalling; try again, or raise the "
            "limit with --request-timeout (Client(request_timeout=...))"
        ) from None
    finally:
        _active.reset(token)
        if outer is not None:
            outer.at += time.monotonic() - start


def install(http: httpx.Client) -> None:
    """Make every connection of `http` (proxied ones included) keep to the
    deadline of the thread using it.

    httpx has no public hook for this: the network backend of each of its
    connection pools is wrapped. test_hostile's trickle tests fail if a new
    httpx moves these attributes.
    """
    for transport in _transports(http):
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if isinstance(backend, httpcore.NetworkBackend) and not isinstance(backend, _Backend):
            pool._network_backend = _Backend(backend)  # type: ignore[union-attr]


def _transports(http: httpx.Client) -> Iterable[object]:
    yield getattr(http, "_transport", None)
    mounts: dict[Any, object] = getattr(http, "_mounts", {})
    yield from mounts.values()


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        token = _interrupt.get()

        def connect(wait: float | None) -> httpcore.NetworkStream:
            if token is not None and isinstance(self._inner, httpcore.SyncBackend):
                return _connect(host, port, wait, local_address, socket_options, token)
            return self._inner.connect_tcp(host, port, wait, local_address, socket_options)

        if token is not None:
            token.check()  # no new connection for a cancelled request
        return _Stream(_bounded(connect, timeout, httpcore.ConnectTimeout))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


_R = TypeVar("_R")


def _shut(sock: object) -> None:
    """Wake whatever thread is blocked on `sock` (close() would not), a
    connect included. The plain socket's shutdown, also under TLS: the SSL
    object is left to the blocked thread."""
    if isinstance(sock, socket.socket):
        with suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _connect(
    host: str,
    port: int,
    timeout: float | None,
    local_address: str | None,
    socket_options: Iterable[Any] | None,
    token: Interrupt,
) -> httpcore.NetworkStream:
    """httpcore's SyncBackend.connect_tcp (socket.create_connection, each
    address in turn), with each socket registered with `token` while it
    connects: a cancel shuts it down, which aborts the connect."""
    try:
        error = OSError(f"no address found for {host}")
        for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, 0, socket.SOCK_STREAM
        ):
            sock = socket.socket(family, kind, proto)
            unregister = token.on_cancel(partial(_shut, sock))
            try:
                sock.settimeout(timeout)
                if local_address is not None:
                    sock.bind((local_address, 0))
                sock.connect(address)
                for option in socket_options or ():
                    sock.setsockopt(*option)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            finally:
                unregister()
                if token.cancelled:
                    sock.close()
                    token.check()
            return SyncStream(sock)
        raise error
    except TimeoutError as exc:  # socket.timeout
        raise httpcore.ConnectTimeout(str(exc)) from exc
    except OSError as exc:
        raise httpcore.ConnectError(str(exc)) from exc


def _bounded(
    call: Callable[[float | None], _R], timeout: float | None, error: type[Exception]
) -> _R:
    """`call(wait)` with the wait cut to the thread's deadline, if any."""
    d = _active.get()
    if d is None:
        return call(timeout)
    wait, capped = d.cap(timeout, error)
    try:
        return call(wait)
    except error:
        d.hit |= capped
        raise


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def _io(
        self, call: Callable[[float | None], _R], timeout: float | None, error: type[Exception]
    ) -> _R:
        """One blocking operation on the connection, within the deadline, and
        ended by a cancel of the thread's token: it shuts the socket down."""
        token = _interrupt.get()
        if token is None:
            return _bounded(call, timeout, error)
        token.check()
        unregister = token.on_cancel(self._shutdown)
        try:
            return _bounded(call, timeout, error)
        except Exception:
            if not token.cancelled:
                raise
        finally:
            unregister()
            # Whatever the shut socket made of the request (EOF, a reset, a
            # half-read answer), it was the cancel.
            token.check()
        raise AssertionError("unreachable: a cancelled token raises")  # pragma: no cover

    def _shutdown(self) -> None:
        _shut(self._inner.get_extra_info("socket"))

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._io(
            lambda wait: self._inner.read(max_bytes, wait), timeout, httpcore.ReadTimeout
        )

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._io(lambda wait: self._inner.write(buffer, wait), timeout, httpcore.WriteTimeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _Stream(
            self._io(
                lambda wait: self._inner.start_tls(ssl_context, server_hostname, wait),
                timeout,
                httpcore.ConnectTimeout,
            )
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)
