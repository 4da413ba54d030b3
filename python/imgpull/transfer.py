"""Blob transfers: one service per Client, shared by every pull it runs.

A pull (pull.py) resolves what it needs and records what it got; the bytes
in between come from here. The service owns what must be counted across
pulls: the download slots (a limit per Client, as docker's daemon-wide
`max-concurrent-downloads`, and one per registry host), the blobs in flight
(each fetched once per Client: a second pull wanting one waits on the first
transfer, holding no slot and no file lock), the retries with their
"Retrying in N seconds" countdown, the resume and restart rules, foreign
URLs, and the commit of a layer with its diffID. Across processes the
per-digest file locks of store/content.py still make one writer per blob.

Each pull holds a CancelToken; cancelling it stops the transfers only it
wants at once (a blocked read or write has its socket shut down, by the
native Transfer for a body, by registry.deadline.interruptible for the
registry requests a transfer makes), and partial files stay for a resume.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from imgpull._core import BlobWriter, DigestMismatchError, Fetcher, Transfer
from imgpull.errors import (
    CorruptLayerError,
    FetchError,
    ForeignLayerError,
    ImgpullError,
    PullCancelledError,
    RegistryError,
)
from imgpull.manifest import Descriptor, short_id
from imgpull.progress import (
    DOWNLOAD_COMPLETE,
    DOWNLOADING,
    VERIFYING,
    ProgressCallback,
    ProgressEvent,
)
from imgpull.registry.deadline import interruptible
from imgpull.registry.errors import one_line
from imgpull.retry import RetryPolicy
from imgpull.store import Store
from imgpull.store.content import BlobLimits
from imgpull.transport import Transport
from imgpull.version import USER_AGENT

# How often a wait for a slot looks at its job's cancellation (a cancel also
# wakes it at once; this is the backstop).
_SLOT_POLL = 0.1


class CancelToken:
    """A handle that stops a pull: `cancel()` from any thread.

        token = imgpull.CancelToken()
        threading.Timer(10, token.cancel).start()
        client.pull(ref, cancel=token)  # PullCancelledError once cancelled

    The request in flight stops at once (its connection is shut down),
    partial downloads are kept, and the pull raises the token's `error`. A
    child token (`child()`) is cancelled with its parent, not the other way
    round.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._next = 0
        self.error: PullCancelledError | None = None

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self, error: PullCancelledError | None = None) -> None:
        """Stop the pull; `error` is what it raises (default: "pull cancelled")."""
        with self._lock:
            if self._event.is_set():
                return
            self.error = error or PullCancelledError(
                "pull cancelled; run it again to resume (partial downloads are kept)"
            )
            self._event.set()
            callbacks = list(self._callbacks.values())
            self._callbacks.clear()
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run `callback` when cancelled (at once if it is); returns the
        function that unregisters it."""
        with self._lock:
            if not self._event.is_set():
                key = self._next
                self._next += 1
                self._callbacks[key] = callback

                def remove() -> None:
                    with self._lock:
                        self._callbacks.pop(key, None)

                return remove
        callback()
        return lambda: None

    def child(self) -> tuple[CancelToken, Callable[[], None]]:
        """A token cancelled with this one (same error), and the function that
        detaches it (call it when the child's work is over)."""
        child = CancelToken()
        return child, self.on_cancel(lambda: child.cancel(self.error))

    def check(self) -> None:
        """Raise the token's error if it is cancelled."""
        if self._event.is_set():
            assert self.error is not None
            raise self.error

    def sleep(self, seconds: float) -> None:
        """Sleep, but raise the token's error as soon as it is cancelled."""
        if self._event.wait(max(0.0, seconds)):
            self.check()


@dataclass(frozen=True)
class BlobSource:
    """Where a pull gets its blobs: an endpoint (mirror or registry) of the
    reference's `domain` and `repository`, and how often to try it."""

    transport: Transport
    domain: str
    repository: str
    retry: RetryPolicy
    limits: BlobLimits


class PullTransfers:
    """One pull's view of the service: the blobs it waits for (for its
    progress lines), its byte count, its events and its token."""

    def __init__(
        self,
        service: TransferService,
        token: CancelToken,
        emit: ProgressCallback,
        refs: tuple[str, ...] = (),
        sink: object = None,
    ):
        self.service = service
        self.token = token
        self.emit = emit
        # Where `emit` ends (the caller's own callback): pulls that share one
        # (a pull_many) hear a shared blob's event once, not once each.
        self.sink = emit if sink is None else sink
        # The reference(s) this pull serves: named on the events of its jobs.
        self.refs = refs
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._stopping: list[_Job] = []
        self.received = 0
        self.callback_error: Exception | None = None

    def fetch(
        self,
        source: BlobSource,
        desc: Descriptor,
        *,
        layer: bool,
        small: bool = False,
        diff_id: bool = True,
    ) -> Future[None]:
        """The blob into the store (a future): joins the transfer in flight
        for its digest, else starts one. `small`: a config, which takes no
        download slot so that it never queues behind layers. `diff_id`: a
        layer's diffID is computed (and registered) as it arrives; without,
        only its digest is checked (a fetch-only pull, or one whose layers
        are hashed as they are applied)."""
        return self.service.fetch(
            self, source, desc, layer=layer, small=small, diff_id=layer and diff_id
        )

    def download(self, source: BlobSource, desc: Descriptor, *, layer: bool) -> None:
        """fetch(), waited for (a config, not a layer, takes no slot)."""
        self.fetch(source, desc, layer=layer, small=not layer).result()

    def notify(self, event: ProgressEvent) -> None:
        """The pull's callback, from a transfer thread: should it raise, only
        this pull stops (with that error: raise_callback_error), not the
        transfer other pulls share."""
        try:
            self.emit(event)
        except Exception as exc:
            with self._lock:
                self.callback_error = self.callback_error or exc
            self.token.cancel()

    def raise_callback_error(self) -> None:
        if self.callback_error is not None:
            raise self.callback_error

    def snapshot(self) -> list[tuple[str, int, int]]:
        """(label, bytes so far, total) of this pull's live layer transfers."""
        with self._lock:
            jobs = list(self._jobs.values())
        return [s for s in (j.progress() for j in jobs if j.layer) if s is not None]

    def downloading(self) -> list[ProgressEvent]:
        """A Downloading event for each of this pull's live layer transfers,
        naming every pull that waits on it."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.layer]
        events = []
        for job in jobs:
            live = job.progress()
            if live is not None:
                events.append(job.event(ProgressEvent(DOWNLOADING, live[0], live[1], live[2])))
        return events

    def _add(self, job: _Job) -> None:
        with self._lock:
            self._jobs[job.digest] = job

    def _drop(self, job: _Job) -> None:
        with self._lock:
            if self._jobs.get(job.digest) is job:
                del self._jobs[job.digest]

    def _stopped(self, job: _Job) -> None:
        with self._lock:
            self._stopping.append(job)

    def settle(self, timeout: float) -> None:
        """Wait (at most `timeout` s) for the transfers this pull's cancel
        stopped to end: their partial files are then complete on disk."""
        with self._lock:
            stopping, self._stopping = self._stopping, []
        deadline = time.monotonic() + timeout
        for job in stopping:
            try:
                job.future.exception(max(0.0, deadline - time.monotonic()))
            except (TimeoutError, FuturesTimeout):
                return

    def _count(self, n: int) -> None:
        with self._lock:
            self.received += n


class _Job:
    """One blob in flight, and the pulls that want it."""

    def __init__(
        self,
        source: BlobSource,
        desc: Descriptor,
        layer: bool,
        small: bool,
        wake: Callable[[], None],
        diff_id: bool = True,
    ) -> None:
        self.source = source
        self._wake = wake
        self.desc = desc
        self.digest = desc.digest
        self.layer = layer
        self.small = small
        self.diff_id = diff_id
        self.label = short_id(desc.digest) if layer else None
        self.future: Future[None] = Future()
        self._lock = threading.Lock()
        # Pull -> the function that stops watching its token.
        self._wanted: dict[PullTransfers, Callable[[], None]] = {}
        self.owner: PullTransfers | None = None
        # Cancelled when no pull wants the job any more; it also interrupts
        # the registry requests the job's thread makes (a token for the blob).
        self.token = CancelToken()
        self._finished = False
        self._live: tuple[Transfer, int, int] | None = None

    # Who wants it ----------------------------------------------------------

    def want(self, pull: PullTransfers) -> bool:
        """Add a pull; False when the job is stopping or ending (then start
        another, which finds the blob stored or resumes its partial file)."""
        with self._lock:
            if self.token.cancelled or self._finished:
                return False
            if pull in self._wanted:
                return True
            if self.owner is None:
                self.owner = pull
            self._wanted[pull] = lambda: None
        pull._add(self)
        unwatch = pull.token.on_cancel(lambda: self.unwant(pull))
        with self._lock:
            if pull in self._wanted:
                self._wanted[pull] = unwatch
            else:
                unwatch()
        return True

    def unwant(self, pull: PullTransfers) -> None:
        """A pull no longer waits (cancelled): the job stops when no one does."""
        live = None
        with self._lock:
            unwatch = self._wanted.pop(pull, None)
            stop = not self._wanted and not self.future.done()
            if stop:
                self.token.cancel(PullCancelledError("pull cancelled"))
                live = self._live
        pull._drop(self)
        if unwatch is not None:
            unwatch()
        if stop:
            pull._stopped(self)
            if live is not None:
                live[0].cancel()
            self._wake()  # a wait for a slot sees it at once

    def wanting(self) -> list[PullTransfers]:
        with self._lock:
            return list(self._wanted)

    def finish(self) -> None:
        with self._lock:
            self._finished = True
            wanted = dict(self._wanted)
            self._wanted.clear()
        for pull, unwatch in wanted.items():
            unwatch()
            pull._drop(self)

    # Its state ---------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        return self.token.cancelled

    def check(self) -> None:
        self.token.check()

    def sleep(self, seconds: float) -> None:
        self.token.sleep(seconds)

    def emit(self, event: ProgressEvent) -> None:
        wanting = self.wanting()
        event = self.event(event, wanting)
        told: set[int] = set()
        for pull in wanting:
            if id(pull.sink) not in told:
                told.add(id(pull.sink))
                pull.notify(event)

    def event(
        self, event: ProgressEvent, wanting: list[PullTransfers] | None = None
    ) -> ProgressEvent:
        """`event` with this blob's digest and size and the references of
        every pull waiting on it."""
        pulls = self.wanting() if wanting is None else wanting
        refs = tuple(dict.fromkeys(r for p in pulls for r in p.refs))
        total = event.total if event.total is not None else _known(self.desc.size)
        return replace(event, digest=self.digest, total=total, refs=refs or event.refs)

    @contextmanager
    def track(self, start: int) -> Iterator[Transfer]:
        """A Transfer handle for one attempt, cancelled with the job."""
        transfer = Transfer()
        with self._lock:
            if self.token.cancelled:
                transfer.cancel()
            self._live = (transfer, start, self.desc.size)
        try:
            yield transfer
        finally:
            with self._lock:
                self._live = None
            owner = self.owner
            if owner is not None:
                owner._count(transfer.received)

    def progress(self) -> tuple[str, int, int] | None:
        with self._lock:
            live = self._live
        if live is None or self.label is None:
            return None
        transfer, start, total = live
        return (self.label, min(start + transfer.received, total), total)


class TransferService:
    """The blob transfers of one Client (see the module docstring).

    `max_concurrent_downloads`: blob bodies downloading at once over all
    pulls; `max_per_host`: of those, at once from one registry host (default
    the same). `foreign_fetcher(url)`: the Fetcher for a foreign layer URL
    (the Client's Transports.foreign).
    """

    def __init__(
        self,
        store: Store,
        *,
        max_concurrent_downloads: int = 3,
        max_per_host: int | None = None,
        foreign_fetcher: Callable[[str], Fetcher],
    ) -> None:
        if max_concurrent_downloads < 1 or (max_per_host is not None and max_per_host < 1):
            raise ImgpullError("max concurrent downloads must be at least 1")
        self.store = store
        self.limit = max_concurrent_downloads
        self.per_host = max_per_host or max_concurrent_downloads
        self._foreign_fetcher = foreign_fetcher
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._slots = threading.Condition()
        self._busy = 0
        self._busy_hosts: dict[str, int] = {}
        # Counters for tests and diagnostics: the most bodies at once.
        self.peak = 0
        # Layer threads outnumber the slots, so that one blob's commit
        # (verify, fsync, rename) overlaps the next one's download. Configs
        # have threads of their own and take no slot: never behind layers.
        self._layers = ThreadPoolExecutor(2 * self.limit, thread_name_prefix="imgpull-layer")
        self._small = ThreadPoolExecutor(2, thread_name_prefix="imgpull-config")

    def close(self, *, wait: bool = True) -> None:
        """Stop the worker threads (once no pull uses the service)."""
        self._layers.shutdown(wait=wait, cancel_futures=True)
        self._small.shutdown(wait=wait, cancel_futures=True)

    def pull(
        self,
        token: CancelToken,
        emit: ProgressCallback,
        refs: tuple[str, ...] = (),
        sink: object = None,
    ) -> PullTransfers:
        """A pull's view of the service; `sink`: the callback `emit` ends at,
        when `emit` wraps one that other pulls share."""
        return PullTransfers(self, token, emit, refs, sink)

    # Scheduling ------------------------------------------------------------

    def fetch(
        self,
        pull: PullTransfers,
        source: BlobSource,
        desc: Descriptor,
        *,
        layer: bool,
        small: bool = False,
        diff_id: bool = True,
    ) -> Future[None]:
        """This pull's future for `desc`: done when the job is, or failed
        with the pull's error as soon as its token is cancelled. A blob in
        flight is joined as it is: when it computes no diffID and this pull
        wanted one, the pull computes it from the file (Puller._diff_ids)."""
        mine: Future[None] = Future()
        kind = (layer, small, diff_id)
        self._attach(pull, source, desc, kind, mine, retried=False)

        def cancelled() -> None:
            settle(mine, pull.token.error or PullCancelledError("pull cancelled"))

        unwatch = pull.token.on_cancel(cancelled)
        mine.add_done_callback(lambda _: unwatch())
        return mine

    def _attach(
        self,
        pull: PullTransfers,
        source: BlobSource,
        desc: Descriptor,
        kind: tuple[bool, bool, bool],
        mine: Future[None],
        *,
        retried: bool,
    ) -> None:
        """`kind`: (layer, small, diff_id), as fetch() takes them."""
        layer, small, diff_id = kind
        while True:
            with self._lock:
                job = self._jobs.get(desc.digest)
                created = job is None or job.future.done()
                if created:
                    job = self._jobs[desc.digest] = _Job(
                        source, desc, layer, small, self._wake, diff_id
                    )
            assert job is not None
            if job.want(pull):
                break
            # Stopping (its pulls were cancelled) or ending: wait it out, start anew.
            try:
                job.future.exception()
            finally:
                with self._lock:
                    if self._jobs.get(desc.digest) is job:
                        del self._jobs[desc.digest]
        if created:
            pool = self._small if small else self._layers
            pool.submit(self._run, job)

        def done(f: Future[None]) -> None:
            if mine.done():
                return
            error = f.exception()
            if (
                error is not None
                and not retried
                and not pull.token.cancelled
                and (isinstance(error, PullCancelledError) or job.source != source)
            ):
                # Stopped for other pulls, or failed at another pull's
                # endpoint (a mirror): this pull tries its own way.
                self._attach(pull, source, desc, kind, mine, retried=True)
                return
            settle(mine, error)

        job.future.add_done_callback(done)

    def _run(self, job: _Job) -> None:
        try:
            with interruptible(job.token):
                self._download(job)
        except BaseException as exc:
            with self._lock:
                if self._jobs.get(job.digest) is job:
                    del self._jobs[job.digest]
            job.finish()
            job.future.set_exception(exc)
        else:
            if job.label:
                job.emit(ProgressEvent(DOWNLOAD_COMPLETE, job.label))
            with self._lock:
                if self._jobs.get(job.digest) is job:
                    del self._jobs[job.digest]
            job.finish()
            job.future.set_result(None)

    def _wake(self) -> None:
        with self._slots:
            self._slots.notify_all()

    @contextmanager
    def _slot(self, job: _Job) -> Iterator[None]:
        """A download slot for `job` (none for a small blob), free of both limits."""
        if job.small:
            yield
            return
        host = job.source.transport.registry.base_url
        with self._slots:
            while self._busy >= self.limit or self._busy_hosts.get(host, 0) >= self.per_host:
                job.check()
                self._slots.wait(_SLOT_POLL)
            job.check()
            self._busy += 1
            self._busy_hosts[host] = self._busy_hosts.get(host, 0) + 1
            self.peak = max(self.peak, self._busy)
        try:
            yield
        finally:
            with self._slots:
                self._busy -= 1
                self._busy_hosts[host] -= 1
                self._slots.notify_all()

    # One blob --------------------------------------------------------------

    def _download(self, job: _Job) -> None:
        """Fetch one blob into the content store, unless someone else did."""
        desc = job.desc
        # A layer's writer also computes its diffID while the bytes arrive.
        with self.store.content.ingest(
            desc.digest,
            _known(desc.size),
            layer=job.diff_id,
            cancelled=lambda: job.cancelled,
            limits=job.source.limits,
        ) as writer:
            if writer is not None:
                self._fetch_into(job, writer)

    def _fetch_into(self, job: _Job, writer: BlobWriter) -> None:
        """Fill `writer` with the blob and commit it, resuming and retrying."""
        desc, source, label = job.desc, job.source, job.label
        content = self.store.content
        restarted = False
        attempt = 0
        try:
            while True:
                attempt += 1
                resumed = writer.offset > 0
                try:
                    with self._slot(job), job.track(writer.offset) as transfer:
                        if transfer.cancelled:
                            raise PullCancelledError("pull cancelled")
                        # A partial as long as the blob (a run stopped before
                        # its commit) only needs verifying: a Range from its
                        # end would get a 416 and a whole new download.
                        if not (resumed and writer.offset == desc.size):
                            self._fetch_blob(source, desc, writer, transfer)
                    if label:
                        job.emit(ProgressEvent(VERIFYING, label))
                    try:
                        content.commit(writer)
                    except CorruptLayerError as exc:  # verified, but does not decompress
                        raise CorruptLayerError(f"failed to register layer: {exc}") from None
                    if writer.diff_id is not None:
                        self.store.meta.record_layer(
                            desc.digest,
                            writer.diff_id,
                            writer.uncompressed_size,
                            source.domain,
                            source.repository,
                        )
                    return
                except DigestMismatchError:
                    # The joined bytes of a resume may be at fault: start over,
                    # once (the failed commit removed the partial file).
                    if not resumed or restarted:
                        raise
                    restarted = True
                    writer.close()
                    writer = content.writer(
                        desc.digest, _known(desc.size), layer=writer.layer, limits=source.limits
                    )
                except ImgpullError as exc:
                    delay = source.retry.delay(attempt, exc)
                    if delay is None or job.cancelled:
                        raise
                    if label:
                        self._countdown(job, label, delay)
                    else:
                        job.sleep(delay)
        finally:
            writer.close()

    def _countdown(self, job: _Job, label: str, delay: float) -> None:
        whole = int(delay)
        for left in range(whole, 0, -1):
            job.emit(ProgressEvent(f"Retrying in {left} second{'s' if left > 1 else ''}", label))
            job.sleep(1.0)
        job.sleep(delay - whole)

    def _fetch_blob(
        self, source: BlobSource, desc: Descriptor, writer: BlobWriter, transfer: Transfer
    ) -> None:
        """Stream one blob into `writer`: from the registry, or for a foreign
        layer from its URLs in order, then from the registry if none served it
        (docker on Windows asks the registry too; we ask it last, so that a
        non-distributable layer is never requested from it needlessly)."""
        registry, fetcher = source.transport.registry, source.transport.fetcher
        repo = source.repository
        if not desc.urls:
            registry.fetch_blob(repo, desc.digest, writer, fetcher, transfer)
            return
        failures: list[str] = []
        for url in desc.urls:
            shown = one_line(url, 200)
            if not _is_http_url(url):
                failures.append(f"{shown}: not an http(s) URL, skipped")
                continue
            try:
                self._fetch_foreign(url, writer, transfer)
                return
            except (FetchError, RegistryError) as exc:
                if transfer.cancelled:
                    raise
                failures.append(f"{shown}: {exc}")
        try:
            registry.fetch_blob(repo, desc.digest, writer, fetcher, transfer)
        except RegistryError as exc:
            raise ForeignLayerError(
                f"cannot fetch foreign layer {desc.digest}: {'; '.join(failures)}; "
                f"and from the registry: {exc}",
                status=exc.status,
                retry_after=exc.retry_after,
            ) from None

    def _fetch_foreign(self, url: str, writer: BlobWriter, transfer: Transfer) -> None:
        """GET a foreign layer URL: no Authorization, no registry headers,
        and a Fetcher without the registry's client certificate."""
        fetcher = self._foreign_fetcher(url)
        restarted = False
        while True:
            headers = [("User-Agent", USER_AGENT), ("Accept-Encoding", "identity")]
            if writer.offset > 0:
                headers.append(("Range", f"bytes={writer.offset}-"))
            result = fetcher.fetch_blob(url, headers, writer, transfer)
            status = result.status
            if 200 <= status < 300:
                return
            if status == 416 and writer.offset > 0 and not restarted:
                restarted = True
                writer.truncate()
                continue
            raise RegistryError(f"answered HTTP {status}", status=status)


def settle(future: Future[None], error: BaseException | None) -> None:
    """Settle `future` with `error` (None: success), unless another thread
    did meanwhile (the job's end and the pull's cancel race)."""
    with suppress(InvalidStateError):
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _is_http_url(url: str) -> bool:
    """An absolute http(s) URL with a host: the only foreign URLs fetched."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _known(size: int) -> int | None:
    """A descriptor's size, None when unknown (schema1 gives none)."""
    return size if size >= 0 else None


__all__ = ["BlobSource", "CancelToken", "PullTransfers", "TransferService"]
