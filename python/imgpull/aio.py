"""imgpull.AsyncClient: the Client, for asyncio.

    async with imgpull.AsyncClient(root="/var/lib/imgpull") as client:
        image = await client.pull("alpine:3.20")
        async with client.stream_pull("debian:12") as events:
            async for event in events:
                print(event.id, event.status)
        print(events.image.id)

This is an asyncio API over native transfer threads, not a second puller on
asyncio sockets. An AsyncClient wraps one Client (same constructor keywords):
blob bodies still stream socket -> SHA-256 -> file on the Client's transfer
threads with the GIL released, manifests still come over sync httpx. Each
pull runs on a worker thread of its own with its own CancelToken, and the
coroutine only awaits its end: no thread per byte or per event, and the
event loop never blocks.

Cancelling: `task.cancel()`, `asyncio.timeout()` and `asyncio.wait_for()`
cancel the pull's token; the coroutine then waits (without blocking the loop,
for at most a couple of seconds) until the pull has stopped: connections
closed, nothing more written, partial downloads kept for the next pull to
resume. Then it re-raises CancelledError (which `asyncio.timeout()` turns
into TimeoutError). `timeout=` and `cancel=` work as on Client.pull
(PullTimeoutError, PullCancelledError).

Threads: progress callbacks (`progress=`) run on the event loop's thread, in
the order the pull emitted the events, one at a time; a callback that raises
stops its pull with that error, as on Client. An AsyncClient may serve many
tasks at once and is bound to no loop (each call uses the loop it runs on);
all its pulls share the Client's download slots and blobs in flight, and its
`client` may be used from other threads meanwhile. images(), resolve(),
inspect(), tag() and remove() are the Client's, run in asyncio.to_thread
(short store queries; a cancel does not stop one midway).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import suppress
from types import TracebackType
from typing import Any, Generic, TypeVar

from imgpull.client import Client, ImageSummary, Removal
from imgpull.errors import ImgpullError
from imgpull.platform import Platform
from imgpull.progress import DOWNLOADING, ProgressCallback, ProgressEvent
from imgpull.pull import Image
from imgpull.reference import Reference
from imgpull.transfer import CancelToken

_T = TypeVar("_T")
# How long a cancelled coroutine waits for its pull to stop. The request in
# flight is interrupted (its connection shut down), so the pull stops well
# within it; a blob's TCP connect in progress is not (ureq cannot), and is
# then left to end on its own (having been cancelled, the pull writes nothing
# after it).
_STOP_WAIT = 2.0

# A blocking Client call, given the pull's token and the progress callback
# to pass on (None: no events wanted).
_Call = Callable[[CancelToken, "ProgressCallback | None"], _T]


class _Run(Generic[_T]):
    """One blocking Client call on a worker thread, awaited from the loop.

    Events the call emits (on its own and on transfer threads) are handed to
    `sink` on the loop's thread, in order, with call_soon_threadsafe.
    """

    def __init__(
        self,
        call: _Call[_T],
        sink: Callable[[ProgressEvent], None] | None,
        cancel: CancelToken | None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._future: asyncio.Future[_T] = self._loop.create_future()
        # Marks its error retrieved: a run whose waiter was cancelled and
        # moved on logs no "exception was never retrieved".
        self._future.add_done_callback(_retrieve)
        self._sink = sink
        self._over = False
        self._callback_error: Exception | None = None
        self.token, self._detach = cancel.child() if cancel is not None else (CancelToken(), _nil)
        thread = threading.Thread(
            target=self._work, args=(call,), name="imgpull-aio-pull", daemon=True
        )
        thread.start()

    @property
    def done(self) -> bool:
        return self._future.done()

    def result(self) -> _T:
        return self._future.result()

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        self._future.add_done_callback(lambda _: callback())

    async def wait(self) -> _T:
        """The call's result; cancelling the waiting task stops the call."""
        try:
            await asyncio.wait({self._future})
        except asyncio.CancelledError:
            await self.stop()
            raise
        return self._future.result()

    async def stop(self) -> None:
        """Cancel the call and wait, at most _STOP_WAIT s and without
        blocking the loop, for it to end (a cancel meanwhile is held back
        until then: the transfers are stopping already)."""
        self.token.cancel()
        deadline = self._loop.time() + _STOP_WAIT
        cancelled = False
        while not self._future.done() and (left := deadline - self._loop.time()) > 0:
            try:
                await asyncio.wait({self._future}, timeout=left)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError

    # The worker thread -----------------------------------------------------

    def _work(self, call: _Call[_T]) -> None:
        try:
            result = call(self.token, self._emit if self._sink is not None else None)
        except BaseException as exc:  # handed to the awaiting task
            self._post(self._failed, exc)
        else:
            self._post(self._succeeded, result)
        finally:
            self._detach()

    def _emit(self, event: ProgressEvent) -> None:
        # On the worker or a transfer thread.
        if not self._over:
            self._post(self._deliver, event)

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        with suppress(RuntimeError):  # the loop is closed: no one is waiting
            self._loop.call_soon_threadsafe(callback, *args)

    # On the loop -----------------------------------------------------------

    def _deliver(self, event: ProgressEvent) -> None:
        if self._over or self._sink is None:
            return
        try:
            self._sink(event)
        except Exception as exc:  # as on Client: it stops this pull only
            self._callback_error = self._callback_error or exc
            self.token.cancel()

    def _succeeded(self, result: _T) -> None:
        if self._callback_error is not None:
            self._failed(self._callback_error)
            return
        self._over = True
        self._future.set_result(result)

    def _failed(self, error: BaseException) -> None:
        self._over = True
        self._future.set_exception(self._callback_error or error)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _nil() -> None:
    pass


def _plain_callback(progress: ProgressCallback | None) -> ProgressCallback | None:
    if progress is not None and inspect.iscoroutinefunction(progress):
        raise ImgpullError(
            "progress= takes a plain function (it runs on the event loop); to await "
            "something per event, iterate `async with client.stream_pull(ref) as events`"
        )
    return progress


class PullStream:
    """The events of one pull as an async iterator (AsyncClient.stream_pull).

    The pull starts when the block is entered and is cancelled (and waited
    for, as a cancelled pull()) if the block is left before it ends. The
    iteration ends when the pull does: then `image` is its Image; a failed
    pull raises its error from the iteration, after the events before it.

    Memory stays bounded however slowly the events are consumed: status
    events are all kept, but a layer's byte counts (Downloading) not yet
    consumed are replaced by the newest one.
    """

    def __init__(self, start: Callable[[Callable[[ProgressEvent], None]], _Run[Image]]) -> None:
        self._start = start
        self._run: _Run[Image] | None = None
        self._wakeup = asyncio.Event()
        # Events not yet consumed, each in a one-item list so that a newer
        # byte count can replace it in place.
        self._queue: deque[list[ProgressEvent]] = deque()
        # Layer id -> its last queued event (not consumed yet).
        self._last: dict[str, list[ProgressEvent]] = {}
        self._image: Image | None = None

    @property
    def done(self) -> bool:
        """Whether the pull has ended (its events may still be unread)."""
        return self._run is not None and self._run.done

    @property
    def image(self) -> Image:
        """The pulled Image, once the iteration has ended."""
        if self._image is None:
            raise ImgpullError(
                "the pull has not finished: iterate its events to the end before reading image"
            )
        return self._image

    async def __aenter__(self) -> PullStream:
        if self._run is not None:
            raise ImgpullError("this pull stream was entered already: call stream_pull() again")
        self._run = self._start(self._put)
        self._run.add_done_callback(self._wakeup.set)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._run is not None and not self._run.done:
            await self._run.stop()

    def __aiter__(self) -> PullStream:
        return self

    async def __anext__(self) -> ProgressEvent:
        run = self._run
        if run is None:
            raise ImgpullError("use `async with client.stream_pull(ref) as events` to iterate")
        while not self._queue:
            if run.done:  # every event it emitted was delivered before its end
                self._image = run.result()
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        slot = self._queue.popleft()
        event = slot[0]
        if event.id is not None and self._last.get(event.id) is slot:
            del self._last[event.id]
        return event

    def _put(self, event: ProgressEvent) -> None:
        """On the loop: queue an event, coalescing a layer's byte counts."""
        if event.id is not None and event.status == DOWNLOADING:
            last = self._last.get(event.id)
            if last is not None and last[0].status == DOWNLOADING:
                last[0] = event
                return
        slot = [event]
        self._queue.append(slot)
        if event.id is not None:
            self._last[event.id] = slot
        self._wakeup.set()


class AsyncClient:
    """A Client for asyncio (see the module docstring): `root` and the
    keywords are Client's.

        async with imgpull.AsyncClient(root=...) as client:
            image = await client.pull(ref)
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, **options: Any) -> None:
        self._client = Client(root, **options)

    @property
    def client(self) -> Client:
        """The sync Client underneath (thread-safe; it shares the transfers)."""
        return self._client

    async def aclose(self) -> None:
        """Close the Client in a thread: cancel the pulls in progress (they
        raise PullCancelledError), wait for them to stop, close the store."""
        await asyncio.to_thread(self._client.close)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # Pull -------------------------------------------------------------------

    async def pull(
        self,
        reference: str | Reference,
        *,
        platform: str | Platform | None = None,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
        cancel: CancelToken | None = None,
        rootfs: str | os.PathLike[str] | None = None,
        fetch_only: bool = False,
        force: bool = False,
    ) -> Image:
        """Client.pull, awaited; `progress` is called on the event loop."""
        call = self._pulling(reference, platform, timeout, rootfs, fetch_only, force)
        return await _Run(call, _plain_callback(progress), cancel).wait()

    def stream_pull(
        self,
        reference: str | Reference,
        *,
        platform: str | Platform | None = None,
        timeout: float | None = None,
        cancel: CancelToken | None = None,
        rootfs: str | os.PathLike[str] | None = None,
        fetch_only: bool = False,
        force: bool = False,
    ) -> PullStream:
        """Pull with the events as an async iterator (PullStream):

        async with client.stream_pull(ref) as events:
            async for event in events:
                ...
        image = events.image
        """
        call = self._pulling(reference, platform, timeout, rootfs, fetch_only, force)
        return PullStream(lambda sink: _Run(call, sink, cancel))

    async def pull_many(
        self,
        references: Iterable[str | Reference],
        *,
        platform: str | Platform | None = None,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
        cancel: CancelToken | None = None,
        fetch_only: bool = False,
    ) -> list[Image | ImgpullError]:
        """Client.pull_many, awaited: each reference's Image or error, in order."""
        refs = list(references)

        def call(token: CancelToken, emit: ProgressCallback | None) -> list[Image | ImgpullError]:
            return self._client.pull_many(
                refs,
                platform=platform,
                progress=emit,
                timeout=timeout,
                cancel=token,
                fetch_only=fetch_only,
            )

        return await _Run(call, _plain_callback(progress), cancel).wait()

    def _pulling(
        self,
        reference: str | Reference,
        platform: str | Platform | None,
        timeout: float | None,
        rootfs: str | os.PathLike[str] | None,
        fetch_only: bool,
        force: bool = False,
    ) -> _Call[Image]:
        def call(token: CancelToken, emit: ProgressCallback | None) -> Image:
            return self._client.pull(
                reference,
                platform=platform,
                progress=emit,
                timeout=timeout,
                cancel=token,
                rootfs=rootfs,
                fetch_only=fetch_only,
                force=force,
            )

        return call

    # Local queries, in a thread ------------------------------------------------

    async def images(self) -> list[ImageSummary]:
        return await asyncio.to_thread(self._client.images)

    async def resolve(self, reference: str) -> str:
        return await asyncio.to_thread(self._client.resolve, reference)

    async def inspect(self, reference: str) -> dict[str, Any]:
        return await asyncio.to_thread(self._client.inspect, reference)

    async def verify(
        self,
        reference: str,
        *,
        repair: bool = False,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> list[str]:
        """Client.verify, awaited. With `repair` it pulls, on a worker thread as
        pull() does: cancelling the task cancels that pull; `progress` is
        called on the event loop."""
        if not repair:
            return await asyncio.to_thread(self._client.verify, reference)

        def call(token: CancelToken, emit: ProgressCallback | None) -> list[str]:
            return self._client.verify(reference, repair=True, progress=emit, cancel=token)

        return await _Run(call, _plain_callback(progress), cancel).wait()

    async def tag(self, source: str, target: str | Reference) -> Reference:
        return await asyncio.to_thread(self._client.tag, source, target)

    async def remove(self, reference: str, *, force: bool = False) -> list[Removal]:
        return await asyncio.to_thread(self._client.remove, reference, force=force)


__all__ = ["AsyncClient", "PullStream"]
