"""Blob transfers: one service per Client, shared by every pull it runs.

A pull (pull.py) resolves what it needs and records what it got; the bytes
in between come from here. The service owns what must be counted across
pulls: the download slots (a limit per Client, as docker's daemon-wide
`max-concurrent-downloads`, shared fairly between registry hosts, and an
optional cap per host), the blobs in flight (each fetched once per Client: a
second pull wanting one waits on the first transfer, holding no slot and no
file lock; unless that transfer is another host's and slow, see
TransferService), the retries with their
"Retrying in N seconds" countdown, the resume and restart rules, foreign
URLs, and the commit of a layer with its diffID. Across processes the
per-digest file locks of store/content.py still make one writer per blob.

Each pull holds a CancelToken; cancelling it stops the transfers only it
wants at once (a blocked read or write has its socket shut down, by the
native Transfer for a body, by registry.deadline.interruptible for the
registry requests a transfer makes), and partial files stay for a resume.

A big blob on a slow connection is fetched as several Range requests at
once (`max_connections_per_layer`, see _Split): its chunks are written in
place into its ingest file and hashed (and inflated) in order as the bytes
before them land; extra connections take no download slot, only the host's
connection room, and give it back as soon as a blob that could start waits.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from imgpull._core import BlobWriter, ChunkWriter, DigestMismatchError, Fetcher, Transfer
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
from imgpull.retry import (
    DEFAULT_CONNECTIONS_PER_LAYER,
    DEFAULT_SPLIT_THRESHOLD,
    RetryPolicy,
    check_connections_per_layer,
)
from imgpull.store import Store
from imgpull.store.content import BlobLimits, ChunkRecord
from imgpull.transport import Transport
from imgpull.version import USER_AGENT

# How often a wait for a slot looks at its job's cancellation (a cancel also
# wakes it at once; this is the backstop).
_SLOT_POLL = 0.1
# How long a pull waits on another registry host's transfer of a blob before
# fetching its own copy from its own source (issue 16: a hostile registry can
# name a good image's layer and trickle it). Short: the other copy costs
# bandwidth only while both run, and only when the first is this slow.
_RACE_GRACE = 1.0
# Config transfers at once per host: they take no download slot, and a bulk
# pull resolves up to 16 images at once (client._MAX_WORKERS), each waiting
# on its config before its diffIDs can be checked.
_CONFIG_THREADS = 16
# How many more graces a transfer about to end is waited for (at its rate).
_RACE_ROUNDS = 5

# Many connections for one big blob (issue 17). A blob of a known size of at
# least `split_threshold` starts as one stream; once that stream has run
# _PROBE_MIN s and brought _PROBE_BYTES (or has run _PROBE_MAX s), it is
# judged. It goes on alone when it runs at _LINK_FILLING or more (one
# connection fills the link: a split would only add requests), or when it
# spent less than _WAITING of its time waiting for bytes (the bytes are
# there; hashing and inflating them is the limit, which more connections do
# not lift). Measured on this loaded 2-core machine, a 64 MiB layer on
# loopback straight from the registry: 93-283 MB/s, waiting 13-41% of the
# time (and 39-77 MB/s when judged over the first 50 ms only: the rate alone
# misjudges a busy CPU, hence the waiting share); through a proxy capping
# each connection at 25 MB/s: 21-24 MB/s, waiting 78-88%, and a 200 MB
# layer took 8.4 s on one connection, 2.8-3.3 s split on four. Otherwise (a
# proxy or CDN edge capping each connection, TCP over a long lossy path:
# 25 MB/s at 200 Mbit/s) the rest of the blob is
# cut into chunks of _MIN_CHUNK to _MAX_CHUNK bytes (about two per
# connection, so that a slow connection delays little at the end) fetched
# on up to N - 1 more connections, within the host's connection room.
# (The option's defaults and bounds live in retry.py, for the CLI.)
_LINK_FILLING = 100_000_000
_WAITING = 0.6
# Under this rate a stream is split whatever its waiting share: one core
# hashes and inflates several times this, so the link is the limit. Through
# the WAN relay (RTT 50 ms, 25 MB/s a connection) the streams of the 1 GB
# image measured 14-19 MB/s but waited only 43-60% of their time (the
# relay's bursts), and went unsplit: 15.8 s, where split they took 7 s.
_SLOW = 40_000_000
_PROBE_MIN = 0.2
_PROBE_BYTES = 4 << 20
_PROBE_MAX = 0.5
_MIN_CHUNK = 1 << 20
_MAX_CHUNK = 16 << 20
# How often the coordinator of a split blob looks at its chunks (a chunk's
# end also wakes it at once): the pace at which their bytes are hashed.
_SPLIT_POLL = 0.02
# Connections to one registry host at most, a split blob's included (or the
# download slots, if more). Through a link capping each connection at 25 MB/s
# and 50 ms (benches/bench_wan.py, the 1 GB image), 16 took `--fetch-only`
# from 7.7 s to 5.4 s and a pull from 8.5 s to 7.8 s against 8; the same
# as the manifest requests' limit per host.
_CONNECTIONS_PER_HOST = 16


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
        *,
        seq: int = 0,
        race: bool = False,
    ) -> None:
        self.source = source
        self.host = _host(source)
        # Its place in its host's queue for a download slot (first come first).
        self.seq = seq
        # A second copy of a blob another host's job is slow to bring: into
        # an ingest file of its own (the first job holds the digest's lock).
        self.race = race
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
        # Set when cancelled or superseded: what its waits (a retry's delay) watch.
        self._stop = threading.Event()
        # Another job stored the blob first: this one stops, and succeeds.
        self._superseded = False
        # Its download slot went to another host's job: this attempt stops
        # (its bytes kept) and the job waits for a slot again.
        self._preempted = False
        self._finished = False
        self._live: tuple[Transfer, int, int] | None = None
        # Bytes of the blob arriving on its chunk connections (a split blob).
        self.chunk_bytes: Callable[[], int] = lambda: 0
        # Big enough to split, not split (yet): shares the connection room.
        self.may_split = False

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
                self._stop.set()
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

    @property
    def stopping(self) -> bool:
        """Cancelled, or superseded by another job's copy."""
        return self._stop.is_set()

    @property
    def superseded(self) -> bool:
        return self._superseded

    def check(self) -> None:
        self.token.check()
        if self._superseded:
            raise _Superseded("another copy of the blob was stored first")

    def sleep(self, seconds: float) -> None:
        if self._stop.wait(max(0.0, seconds)):
            self.check()

    def supersede(self) -> None:
        """Another job stored the blob: stop at the next chunk (or wait)."""
        with self._lock:
            if self.future.done():
                return
            self._superseded = True
            self._stop.set()
            live = self._live
        if live is not None:
            live[0].cancel()
        self._wake()

    def preempt(self) -> None:
        """Stop this attempt (its slot was taken back); the job goes on."""
        with self._lock:
            self._preempted = True
            live = self._live
        if live is not None:
            live[0].cancel()

    def take_preempted(self) -> bool:
        """Whether the last attempt was preempted (and forget it)."""
        with self._lock:
            preempted, self._preempted = self._preempted, False
        return preempted

    def received(self) -> int:
        """Bytes of the blob so far (in the ingest file and arriving)."""
        with self._lock:
            live = self._live
        return 0 if live is None else live[1] + live[0].received + self.chunk_bytes()

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
            if self._stop.is_set() or self._preempted:
                transfer.cancel()
            self._live = (transfer, start, self.desc.size)
            self.chunk_bytes = lambda: 0
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
        return (self.label, min(start + transfer.received + self.chunk_bytes(), total), total)


class _Holder:
    """A download slot held by one attempt of a job."""

    def __init__(self, job: _Job, order: int) -> None:
        self.job = job
        self.host = job.host
        self.order = order  # when it was taken: the latest is given back first
        self.revoked = False  # given back to another host's job (preempted)
        # A second connection of a split blob's job: given back first, and
        # to any job waiting (of its own host too); `stop` ends its chunk.
        self.extra = False
        self.stop: Callable[[], None] = lambda: None


class _Wait:
    """One pull's wait for one blob: the jobs that may bring it (the one it
    joined, and its own source's once it races that one); the first to store
    the blob settles `mine`. `kind`: (layer, small, diff_id), as fetch()
    takes them; `retried`: this pull already tried again its own way."""

    def __init__(
        self,
        pull: PullTransfers,
        source: BlobSource,
        desc: Descriptor,
        kind: tuple[bool, bool, bool],
        mine: Future[None],
        retried: bool,
    ) -> None:
        self.pull, self.source, self.desc, self.kind = pull, source, desc, kind
        self.mine = mine
        self.retried = retried
        self.lock = threading.Lock()
        self.jobs: set[_Job] = set()


class TransferService:
    """The blob transfers of one Client (see the module docstring).

    `max_concurrent_downloads`: blob bodies downloading at once over all
    pulls; `max_per_host`: of those, at most this many from one registry
    host (default: no cap of its own). The slots are shared fairly between
    hosts: a host alone may use them all, and a job of another host waiting
    for one takes one back from the host holding the most (that transfer
    stops, keeping its bytes, and resumes when a slot is free again), so a
    slow host holds its share only. Each host has its own threads (layers
    and configs), so that one host's stalled blobs never keep another's
    waiting for a thread. `race_grace`: how long a pull waits on another
    host's transfer of a blob it wants before it fetches its own copy from
    its own source (unless that transfer is about to end); the first copy
    stored wins, the other is stopped and removed. `foreign_fetcher(url)`:
    the Fetcher for a foreign layer URL (the Client's Transports.foreign).
    `max_connections_per_layer`: connections one blob of `split_threshold`
    bytes or more may use when one is slow (see _Split); the extra ones
    take no slot, only the host's connection room (connections_per_host).
    """

    def __init__(
        self,
        store: Store,
        *,
        max_concurrent_downloads: int = 3,
        max_per_host: int | None = None,
        foreign_fetcher: Callable[[str], Fetcher],
        race_grace: float = _RACE_GRACE,
        max_connections_per_layer: int = DEFAULT_CONNECTIONS_PER_LAYER,
        split_threshold: int = DEFAULT_SPLIT_THRESHOLD,
    ) -> None:
        if max_concurrent_downloads < 1 or (max_per_host is not None and max_per_host < 1):
            raise ImgpullError("max concurrent downloads must be at least 1")
        check_connections_per_layer(max_connections_per_layer)
        self.per_layer = max_connections_per_layer
        self.split_threshold = split_threshold
        self.store = store
        self.limit = max_concurrent_downloads
        self.per_host = max_per_host or max_concurrent_downloads
        # Connections to one host, a split blob's extra ones included: they
        # take no download slot (a link capping each connection wants more
        # connections, not fewer layers at once), only this room.
        self.connections_per_host = max(
            self.per_host, min(_CONNECTIONS_PER_HOST, self.per_host * max_connections_per_layer)
        )
        self.race_grace = race_grace
        self._foreign_fetcher = foreign_fetcher
        self._lock = threading.Lock()
        # Digest -> its jobs in flight: one, or two when a pull races another
        # host's transfer of it with its own source.
        self._jobs: dict[str, list[_Job]] = {}
        self._seq = itertools.count()
        self._slots = threading.Condition()
        self._busy = 0
        self._busy_hosts: dict[str, int] = {}
        # Split blobs' extra connections per host (not in _busy).
        self._extras: dict[str, int] = {}
        self._waiting: list[_Holder] = []
        self._holding: list[_Holder] = []
        # Counters for tests and diagnostics: the most bodies at once, the
        # slots taken back for another host, the copies raced.
        self.peak = 0
        self.preempted = 0
        self.raced = 0
        # Blobs whose one stream was judged (slow or not), at what rates
        # (bytes/s), and split.
        self.judged = 0
        self.rates: list[tuple[float, float]] = []  # (bytes/s, share waiting)
        self.split = 0
        # (host, small) -> its threads. Layer threads outnumber the slots, so
        # that one blob's commit (verify, fsync, rename) overlaps the next
        # one's download. Configs have threads of their own and take no
        # slot: never behind layers.
        self._pools: dict[tuple[str, bool], ThreadPoolExecutor] = {}
        self._closed = False

    def close(self, *, wait: bool = True) -> None:
        """Stop the worker threads (once no pull uses the service)."""
        with self._lock:
            self._closed = True
            pools = list(self._pools.values())
        for pool in pools:
            pool.shutdown(wait=wait, cancel_futures=True)

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
        self._attach(_Wait(pull, source, desc, kind, mine, retried=False))

        def cancelled() -> None:
            settle(mine, pull.token.error or PullCancelledError("pull cancelled"))

        unwatch = pull.token.on_cancel(cancelled)
        mine.add_done_callback(lambda _: unwatch())
        return mine

    def _attach(self, wait: _Wait) -> None:
        """Follow the job that brings `wait`'s blob, joined or started."""
        pull, source, desc = wait.pull, wait.source, wait.desc
        host = _host(source)
        while True:
            with self._lock:
                live = self._jobs.setdefault(desc.digest, [])
                # Its own host's transfer of the blob, else another host's.
                job = next((j for j in live if j.host == host), live[0] if live else None)
                created = job is None
                if job is None:
                    job = self._new_job(source, desc, wait.kind, race=False)
            if job.want(pull):
                break
            # Stopping (its pulls were cancelled) or ending: wait it out, start anew.
            try:
                job.future.exception()
            finally:
                self._forget(job)
        if created:
            self._submit(job)
        self._follow(wait, job)
        if job.host != host:
            # Another registry's transfer: it may be slow, or hostile (it may
            # trickle a blob it only names). This pull's own source is its
            # bound: past a grace, it races that transfer.
            self._watch(wait, job, job.received(), time.monotonic(), 0)

    def _new_job(
        self, source: BlobSource, desc: Descriptor, kind: tuple[bool, bool, bool], *, race: bool
    ) -> _Job:
        """A job for `desc` in the digest's list (under self._lock)."""
        layer, small, diff_id = kind
        job = _Job(source, desc, layer, small, self._wake, diff_id, seq=next(self._seq), race=race)
        self._jobs.setdefault(desc.digest, []).append(job)
        return job

    def _forget(self, job: _Job) -> list[_Job]:
        """Drop `job` from its digest's list; the other jobs of the digest."""
        with self._lock:
            live = self._jobs.get(job.digest, [])
            if job in live:
                live.remove(job)
            if not live:
                self._jobs.pop(job.digest, None)
            return list(live)

    def _submit(self, job: _Job) -> None:
        """Run `job` on its host's threads (or fail it: the Client closed)."""
        with self._lock:
            key = (job.host, job.small)
            pool = self._pools.get(key)
            if pool is None and not self._closed:
                threads = _CONFIG_THREADS if job.small else 2 * self.limit
                name = "imgpull-config" if job.small else "imgpull-layer"
                pool = self._pools[key] = ThreadPoolExecutor(threads, thread_name_prefix=name)
        try:
            if pool is not None:
                pool.submit(self._run, job)
                return
        except RuntimeError:  # shut down meanwhile
            pass
        self._forget(job)
        job.finish()
        job.future.set_exception(
            PullCancelledError("this Client is closed: pull with a new Client")
        )

    def _follow(self, wait: _Wait, job: _Job) -> None:
        with wait.lock:
            wait.jobs.add(job)
        job.future.add_done_callback(lambda f: self._ended(wait, job, f))

    def _ended(self, wait: _Wait, job: _Job, f: Future[None]) -> None:
        """A job `wait` follows ended: the first success settles it; a failure
        waits for the other copy, if one is coming."""
        if wait.mine.done():
            return
        error = f.exception()
        with wait.lock:
            wait.jobs.discard(job)
            others = bool(wait.jobs)
        if error is None:
            settle(wait.mine, None)
            return
        if others:
            return
        pull, source = wait.pull, wait.source
        if (
            not wait.retried
            and not pull.token.cancelled
            and (isinstance(error, PullCancelledError) or job.source != source)
        ):
            # Stopped for other pulls, or failed at another pull's
            # endpoint (a mirror): this pull tries its own way.
            self._attach(_Wait(pull, source, wait.desc, wait.kind, wait.mine, retried=True))
            return
        settle(wait.mine, error)

    def _watch(self, wait: _Wait, job: _Job, seen: int, since: float, rounds: int) -> None:
        """In `race_grace` s: unless `job` (another host's) is done or about
        to be (at its rate of the grace, within another grace), fetch
        `wait`'s own copy."""

        def check() -> None:
            if wait.mine.done() or job.future.done() or wait.pull.token.cancelled:
                return
            got, now = job.received(), time.monotonic()
            rate = (got - seen) / max(now - since, 1e-3)
            left = job.desc.size - got
            if rounds < _RACE_ROUNDS and job.desc.size >= 0 and rate * self.race_grace >= left:
                self._watch(wait, job, got, now, rounds + 1)
                return
            self._race(wait)

        timer = threading.Timer(self.race_grace, check)
        timer.daemon = True
        timer.start()

    def _race(self, wait: _Wait) -> None:
        """`wait`'s blob from its own source as well (into an ingest file of
        its own): the first copy stored is the blob, the other is stopped."""
        host = _host(wait.source)
        with self._lock:
            live = self._jobs.setdefault(wait.desc.digest, [])
            job = next((j for j in live if j.host == host), None)
            created = job is None
            if job is None:
                job = self._new_job(wait.source, wait.desc, wait.kind, race=True)
                self.raced += 1
        if not job.want(wait.pull):
            return  # stopping: the pull keeps waiting on the one it joined
        if created:
            self._submit(job)
        self._follow(wait, job)

    def _run(self, job: _Job) -> None:
        try:
            with interruptible(job.token):
                self._download(job)
        except BaseException as exc:
            self._forget(job)
            job.finish()
            job.future.set_exception(exc)
        else:
            if job.label:
                job.emit(ProgressEvent(DOWNLOAD_COMPLETE, job.label))
            others = self._forget(job)
            job.finish()
            job.future.set_result(None)
            for other in others:  # the blob is stored: a second copy is not needed
                other.supersede()

    def _wake(self) -> None:
        with self._slots:
            self._slots.notify_all()

    @contextmanager
    def _slot(self, job: _Job) -> Iterator[None]:
        """A download slot for `job` (none for a small blob): free, within
        the host's cap, and this job first in line: the line is by the busy
        slots of each waiting job's host, then first come first; a free
        slot is taken back for it from a host holding two more than its own."""
        if job.small:
            yield
            return
        holder = _Holder(job, 0)
        with self._slots:
            self._waiting.append(holder)
            try:
                while not self._may_take(holder):
                    job.check()
                    if not self._revoke_extra(holder):
                        self._take_back(holder)
                    if self._may_take(holder):
                        break
                    self._slots.wait(_SLOT_POLL)
                job.check()
            finally:
                self._waiting.remove(holder)
                self._slots.notify_all()  # the next in line may be another's
            self._hold(holder)
        try:
            yield
        finally:
            self._release(holder)

    def _hold(self, holder: _Holder) -> None:
        """Count `holder`'s slot as busy (under self._slots)."""
        holder.order = next(self._seq)
        self._holding.append(holder)
        if holder.extra:
            self._extras[holder.host] = self._extras.get(holder.host, 0) + 1
            return
        self._busy += 1
        self._busy_hosts[holder.host] = self._busy_hosts.get(holder.host, 0) + 1
        self.peak = max(self.peak, self._busy)

    def _release(self, holder: _Holder) -> None:
        with self._slots:
            self._holding.remove(holder)
            if not holder.revoked:
                self._unhold(holder)
            self._slots.notify_all()

    def _unhold(self, holder: _Holder) -> None:
        if holder.extra:
            self._extras[holder.host] -= 1
        else:
            self._busy -= 1
            self._busy_hosts[holder.host] -= 1

    def _room_wanted(self, host: str) -> bool:
        """Whether a job of `host` waits that a download slot would take
        now but for the host's connection room (under self._slots)."""
        return (
            self._busy < self.limit
            and self._busy_hosts.get(host, 0) < self.per_host
            and any(h.host == host and not h.job.stopping for h in self._waiting)
        )

    def _connections(self, host: str) -> int:
        """Connections `host`'s transfers hold (under self._slots)."""
        return self._busy_hosts.get(host, 0) + self._extras.get(host, 0)

    def _extra_slots(self, job: _Job, n: int) -> list[_Holder]:
        """Up to `n` more connections for a split blob's `job`: within its
        host's connection room (the download slots are the layers'), none
        while a job of the host waits for one; shared with the other blobs
        of the host that may still split, so that the first judged does not
        take them all."""
        got: list[_Holder] = []
        with self._slots:
            free = self.connections_per_host - self._connections(job.host)
            if free <= 0 or self._room_wanted(job.host):
                return got
            peers = {
                h.job
                for h in self._holding
                if h.job is not job and h.host == job.host and h.job.may_split
            }
            for _ in range(min(n, max(1, free // (len(peers) + 1)))):
                holder = _Holder(job, 0)
                holder.extra = True
                self._hold(holder)
                got.append(holder)
        return got

    def _revoke_extra(self, holder: _Holder) -> bool:
        """A split blob's extra connection makes room for `holder`, waiting
        for a slot it could take but for its host's connection room (the
        chunk stops, its bytes kept); under self._slots. False: none to give."""
        host = holder.host
        if holder.job.stopping or self._connections(host) < self.connections_per_host:
            return False
        extras = [
            h
            for h in self._holding
            if h.extra and h.host == host and not h.revoked and h.job is not holder.job
        ]
        if not extras:
            return False
        victim = max(extras, key=lambda h: h.order)
        victim.revoked = True
        self._unhold(victim)
        victim.stop()
        return True

    def _first_in_line(self) -> _Holder | None:
        eligible = [
            h
            for h in self._waiting
            if not h.job.stopping and self._busy_hosts.get(h.host, 0) < self.per_host
        ]
        return min(
            eligible, key=lambda h: (self._busy_hosts.get(h.host, 0), h.job.seq), default=None
        )

    def _may_take(self, holder: _Holder) -> bool:
        return (
            self._busy < self.limit
            and self._connections(holder.host) < self.connections_per_host
            and self._first_in_line() is holder
        )

    def _take_back(self, holder: _Holder) -> None:
        """When every slot is busy: take one back for `holder`, first in
        line, from the host holding the most, if it holds two more than
        `holder`'s host (so that the difference shrinks and never swings
        back). Its latest transfer stops at its next chunk, its bytes kept."""
        if self._busy < self.limit or self._first_in_line() is not holder:
            return
        mine = self._busy_hosts.get(holder.host, 0)
        others = [
            h for h in self._holding if not h.revoked and not h.extra and h.host != holder.host
        ]
        if not others:
            return
        most = max(self._busy_hosts[h.host] for h in others)
        if most <= mine + 1:
            return
        victim = max((h for h in others if self._busy_hosts[h.host] == most), key=lambda h: h.order)
        victim.revoked = True
        self._busy -= 1
        self._busy_hosts[victim.host] -= 1
        self.preempted += 1
        victim.job.preempt()

    # One blob --------------------------------------------------------------

    def _download(self, job: _Job) -> None:
        """Fetch one blob into the content store, unless someone else did."""
        desc = job.desc
        content = self.store.content
        try:
            if job.race:
                self._race_copy(job)
                return
            # A layer's writer also computes its diffID while the bytes arrive.
            with content.ingest(
                desc.digest,
                _known(desc.size),
                layer=job.diff_id,
                cancelled=lambda: job.stopping,
                limits=job.source.limits,
            ) as writer:
                if writer is not None:
                    self._fetch_into(job, writer)
        except ImgpullError:
            # Stopped because another copy was stored first: which is this
            # job's blob too (its partial file went with the commit).
            if job.superseded and content.exists(desc.digest):
                return
            raise

    def _race_copy(self, job: _Job) -> None:
        """A raced copy: into an ingest file of its own (the first job holds
        the digest's lock and its file), removed unless it is committed."""
        content, desc = self.store.content, job.desc
        if content.exists(desc.digest):
            return
        side = content.side_path(desc.digest)
        try:
            size, limits = _known(desc.size), job.source.limits
            writer = content.writer(desc.digest, size, layer=job.diff_id, limits=limits, path=side)
            self._fetch_into(job, writer, side)
        finally:
            side.unlink(missing_ok=True)

    def _fetch_into(self, job: _Job, writer: BlobWriter, side: Path | None = None) -> None:
        """Fill `writer` with the blob and commit it, resuming and retrying
        (`side`: the raced copy's own ingest file, else the digest's)."""
        desc, source, label = job.desc, job.source, job.label
        content = self.store.content
        restarted = False
        attempt = 0
        ranges = self._ranges(job, writer) if side is None else None
        job.may_split = ranges is not None and not ranges.fallback
        try:
            while True:
                attempt += 1
                resumed = writer.offset > 0
                job.take_preempted()  # not holding a slot: none to give back
                try:
                    with self._slot(job), job.track(writer.offset) as transfer:
                        if transfer.cancelled:
                            raise PullCancelledError("pull cancelled")
                        # A partial as long as the blob (a run stopped before
                        # its commit) only needs verifying: a Range from its
                        # end would get a 416 and a whole new download.
                        if ranges is not None:
                            self._ranged(job, writer, transfer, ranges)
                        elif not (resumed and writer.offset == desc.size):
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
                    # The joined bytes of a resume (or of chunks) may be at
                    # fault: start over, once (the failed commit removed the
                    # partial file), as one stream.
                    if not (resumed or (ranges is not None and ranges.split)) or restarted:
                        raise
                    restarted = True
                    ranges = None
                    writer.close()
                    writer = content.writer(
                        desc.digest,
                        _known(desc.size),
                        layer=writer.layer,
                        limits=source.limits,
                        path=side,
                    )
                except ImgpullError as exc:
                    if job.take_preempted() and not job.stopping:
                        # Its slot went to another host: not a failure; it
                        # waits for one again and resumes from its bytes.
                        attempt -= 1
                        continue
                    delay = source.retry.delay(attempt, exc)
                    if delay is None or job.stopping:
                        raise
                    if label:
                        self._countdown(job, label, delay)
                    else:
                        job.sleep(delay)
        finally:
            writer.close()

    def _ranges(self, job: _Job, writer: BlobWriter) -> _Ranges | None:
        """The chunk state of a blob that may be split (None: one stream):
        a registry blob of a known size of `split_threshold` or more, or one
        whose file holds chunks of a split run (which are kept)."""
        desc = job.desc
        record = ChunkRecord(writer.path)
        landed = record.load(desc.size)[1] if desc.size >= 0 and record.exists() else []
        split = self.per_layer > 1 and not desc.urls and desc.size >= max(self.split_threshold, 1)
        if not split and not landed:
            return None
        ranges = _Ranges(desc.size, record, landed)
        # Chunks a split run left: kept, and the rest as one stream.
        ranges.fallback = not split
        return ranges

    def _ranged(self, job: _Job, writer: BlobWriter, transfer: Transfer, ranges: _Ranges) -> None:
        """Fill `writer` from one stream at its offset, which a _Split may
        join with chunk connections; the bytes already in the file past the
        offset (chunks) are taken in, not fetched again."""
        while True:
            reach = ranges.landed.reach(writer.offset)
            if reach > writer.offset:
                writer.absorb(reach)
            if writer.offset >= ranges.size:
                return
            progress, resets = writer.offset + ranges.landed.total(), ranges.resets
            split = _Split(self, job, writer, transfer, ranges)
            try:
                split.front()
                if split.active:
                    split.supervise()
            finally:
                split.stop()
            if ranges.resets == resets and writer.offset + ranges.landed.total() <= progress:
                raise _fetch_error(f"the body of {job.digest} ended early", retryable=True)

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


class _Spans:
    """Disjoint byte ranges [start, end) of a blob, in order: the bytes in
    its ingest file past its writer's offset."""

    def __init__(self, spans: Iterable[tuple[int, int]] = ()) -> None:
        self._spans: list[tuple[int, int]] = []
        for a, b in spans:
            self.add(a, b)

    def add(self, a: int, b: int) -> None:
        if a >= b:
            return
        kept = []
        for x, y in self._spans:
            if y < a or x > b:
                kept.append((x, y))
            else:
                a, b = min(a, x), max(b, y)
        kept.append((a, b))
        self._spans = sorted(kept)

    def items(self) -> list[tuple[int, int]]:
        return list(self._spans)

    def clear(self) -> None:
        self._spans = []

    def total(self) -> int:
        return sum(b - a for a, b in self._spans)

    def reach(self, x: int) -> int:
        """Where the bytes from `x` on stop being there."""
        for a, b in self._spans:
            if a <= x < b:
                return b
        return x

    def next_start(self, x: int, default: int) -> int:
        """The first range starting past `x`, else `default`."""
        return next((a for a, _ in self._spans if a > x), default)

    def gaps(self, a: int, b: int) -> list[tuple[int, int]]:
        """What [a, b) lacks."""
        out = []
        for x, y in self._spans:
            if y <= a or x >= b:
                continue
            if x > a:
                out.append((a, x))
            a = max(a, y)
        if a < b:
            out.append((a, b))
        return out


class _Ranges:
    """A blob that may be fetched in chunks, across the attempts of one
    writer: what lies in its file past the writer's offset (from its record
    or this run's chunks), and whether its registry took Range requests."""

    def __init__(self, size: int, record: ChunkRecord, landed: list[tuple[int, int]]) -> None:
        self.size = size
        self.record = record
        self.landed = _Spans(landed)
        # Chunks came into the file: a digest mismatch starts it over.
        self.split = bool(landed)
        # A Range request went unanswered as asked: one stream from now on.
        self.fallback = False
        self.resets = 0

    def reset(self) -> None:
        """The file was started over (the whole blob is coming)."""
        self.landed.clear()
        self.record.remove()
        self.fallback = True
        self.resets += 1


class _Split:
    """One attempt at a blob of _Ranges: its front stream (the writer's own,
    hashed as it lands) and, when that one is slow and slots are free,
    chunk connections for the rest (each a ChunkWriter in the same file).
    The job's thread runs the front, then as coordinator takes in the
    chunks in order (BlobWriter.absorb) as they land, while a monitor
    thread judges the front's rate and starts the chunks. A chunk answered
    200 or with another Content-Range than asked makes the rest one stream
    again; another error ends its connection (its bytes kept, the rest of
    its chunk to another); when all have ended, the first error is the
    attempt's. A cancel reaches every connection (the coordinator passes
    the job's on within _SPLIT_POLL)."""

    def __init__(
        self,
        service: TransferService,
        job: _Job,
        writer: BlobWriter,
        transfer: Transfer,
        ranges: _Ranges,
    ) -> None:
        self.service, self.job, self.writer = service, job, writer
        self.transfer, self.ranges = transfer, ranges
        self.cond = threading.Condition()
        self.pending: list[tuple[int, int]] = []
        self.live: dict[int, tuple[int, ChunkWriter, Transfer]] = {}
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self.active = False
        self.front_done = False
        self.stopping = False
        self.fell_back = False
        self.ended = 0  # body bytes of the chunk transfers that ended
        # The slots taken for it, and the connection on each.
        self.extras: list[tuple[_Holder, threading.Thread]] = []
        self._keys = itertools.count()
        self._counted = False
        # The job's own slot's connection ended for want of a chunk.
        self.own_idle = False

    # The front ------------------------------------------------------------

    def front(self) -> None:
        """The writer's own stream from its offset up to the next bytes
        already there; a monitor may split the rest meanwhile."""
        writer, ranges = self.writer, self.ranges
        source = self.job.source
        start, generation = writer.offset, writer.generation
        stop = ranges.landed.next_start(start, ranges.size)
        writer.stop_at(stop, generation)
        if not ranges.fallback and self.service.per_layer > 1:
            base = self.transfer.received
            monitor = threading.Thread(
                target=self._monitor,
                args=(start, generation, base),
                name="imgpull-split",
                daemon=True,
            )
            monitor.start()
        try:
            result = source.transport.registry.fetch_blob(
                source.repository,
                self.job.digest,
                writer,
                source.transport.fetcher,
                self.transfer,
                # Up to the bytes already there (else to the end: the rest
                # may be split off while this one runs).
                end=stop if stop < ranges.size else None,
            )
        except FetchError as exc:
            if exc.kind != "range" or start == 0:
                raise
            # A resume answered with another range: the blob once more from 0.
            ranges.reset()
            writer.truncate()
            return
        finally:
            with self.cond:
                self.front_done = True
                self.cond.notify_all()
        if result.status == 200 and start > 0:
            ranges.reset()  # the Range was ignored: the writer started over
        elif self.active:
            ranges.record.prefix(writer.offset)

    def _monitor(self, start: int, generation: int, base: int) -> None:
        """Judge the front's rate once; split the rest if it is slow."""
        t0, waited = time.monotonic(), self.transfer.waited
        while True:
            with self.cond:
                if self.front_done or self.stopping:
                    return
                self.cond.wait(_SPLIT_POLL)
            elapsed = time.monotonic() - t0
            got = self.transfer.received - base
            if elapsed >= _PROBE_MAX or (elapsed >= _PROBE_MIN and got >= _PROBE_BYTES):
                break
        rate, waiting = got / elapsed, (self.transfer.waited - waited) / elapsed
        self.service.judged += 1
        self.service.rates.append((rate, waiting))
        if rate >= _LINK_FILLING or (waiting < _WAITING and rate >= _SLOW):
            self.job.may_split = False
            return  # the link is full, or the connection is not the limit
        service = self.service
        holders = service._extra_slots(self.job, service.per_layer - 1)
        if not holders:
            return
        try:
            with self.cond:
                if self.front_done or self.stopping:
                    return
                self._plan(start + self.transfer.received - base, generation, len(holders) + 1)
                if not self.active:
                    return
                for holder in holders:
                    self._spawn(holder)
                holders = []
        finally:
            for holder in holders:
                service._release(holder)

    def _plan(self, at: int, generation: int, connections: int) -> None:
        """Cut what the front has not reached (from about `at`) into chunks;
        the front keeps the first (under self.cond)."""
        ranges = self.ranges
        end = ranges.landed.next_start(at, ranges.size)
        left = end - at
        chunk = min(max(left // (2 * connections), _MIN_CHUNK), _MAX_CHUNK)
        if left < 2 * chunk:
            return
        stop = self.writer.stop_at(at + chunk, generation)
        if stop is None or stop >= end:
            return
        for a, b in ranges.landed.gaps(stop, ranges.size):
            self.pending.extend((x, min(x + chunk, b)) for x in range(a, b, chunk))
        if not self.pending:
            return
        self.active = True
        ranges.split = True
        self.job.may_split = False
        self.service.split += 1
        # Written before any chunk: the record of what is in the file.
        ranges.record.begin(self.writer.offset, ranges.landed.items())
        before = self.job.chunk_bytes
        self.job.chunk_bytes = lambda: before() + self.bytes()

    # The chunks -----------------------------------------------------------

    def _spawn(self, holder: _Holder | None) -> None:
        thread = threading.Thread(
            target=self._work, args=(holder,), name="imgpull-chunk", daemon=True
        )
        if holder is not None:
            self.extras.append((holder, thread))
        self.threads.append(thread)
        thread.start()

    def bytes(self) -> int:
        """Body bytes of the chunk connections so far."""
        with self.cond:
            return self.ended + sum(t.received for _, _, t in self.live.values())

    def _work(self, holder: _Holder | None) -> None:
        """One connection: chunks, lowest first, until none is left, the
        split stops, or its slot is taken back."""
        try:
            with interruptible(self.job.token):
                while self._chunk(holder):
                    pass
        finally:
            if holder is not None:
                self.service._release(holder)
            with self.cond:
                self.cond.notify_all()

    def _chunk(self, holder: _Holder | None) -> bool:
        """Fetch the next chunk; False when this connection is done."""
        source, ranges = self.job.source, self.ranges
        with self.cond:
            if self.stopping or not self.pending or (holder is not None and holder.revoked):
                self.own_idle = self.own_idle or (holder is None and not self.stopping)
                return False
            start, end = self.pending.pop(0)
            transfer = Transfer()
            key = next(self._keys)
        error: BaseException | None = None
        chunk: ChunkWriter | None = None
        try:
            chunk = ChunkWriter(self.writer.path, self.job.digest, start, end)
            with self.cond:
                self.live[key] = (start, chunk, transfer)
                if self.stopping:
                    transfer.cancel()
            if holder is not None:
                holder.stop = transfer.cancel
                if holder.revoked:
                    transfer.cancel()
            source.transport.registry.fetch_blob(
                source.repository, self.job.digest, chunk, source.transport.fetcher, transfer
            )
            if chunk.offset < end:
                raise _fetch_error(
                    f"chunk {start}-{end - 1} of {self.job.digest} ended early", retryable=True
                )
        except FetchError as exc:
            if exc.kind == "range":
                self._fall_back()
            else:
                error = exc
        except Exception as exc:  # the coordinator raises it
            error = exc
        finally:
            got = start if chunk is None else chunk.offset
            with self.cond:
                self.live.pop(key, None)
                self.ended += transfer.received
                if got > start:
                    ranges.landed.add(start, got)
                    ranges.record.add(start, got)  # its bytes are in the file
                if got < end:
                    self.pending.append((got, end))
                    self.pending.sort()
                if error is not None and not self.stopping and not transfer.cancelled:
                    self.errors.append(error)
                self.cond.notify_all()
        return error is None and not transfer.cancelled

    def _fall_back(self) -> None:
        with self.cond:
            self.fell_back = True
            self.stopping = True
            for _, _, transfer in self.live.values():
                transfer.cancel()
            self.cond.notify_all()

    # The coordinator --------------------------------------------------------

    def _reach(self) -> int:
        """Where the bytes from the writer's offset stop being in the file,
        counting those of the chunks still arriving (under self.cond)."""
        at = self.ranges.landed.reach(self.writer.offset)
        moved = True
        while moved:
            moved = False
            for start, chunk, _ in self.live.values():
                if start <= at < chunk.offset:
                    at = self.ranges.landed.reach(chunk.offset)
                    moved = True
        return at

    def supervise(self) -> None:
        """Once the front is done: its own slot takes chunks too, and the
        chunks' bytes are taken in as they land, until the blob is whole."""
        self._spawn(None)
        writer, size = self.writer, self.ranges.size
        while True:
            if self.transfer.cancelled:
                self.stop()
                raise _fetch_error("cancelled", kind="cancelled")
            with self.cond:
                reach = self._reach()
            if reach > writer.offset:
                writer.absorb(reach)
            if writer.offset >= size:
                return
            with self.cond:
                if self.fell_back or not any(t.is_alive() for t in self.threads):
                    break
                self.cond.wait(_SPLIT_POLL)
            self._top_up()
        self.stop()
        if self.fell_back:
            self.ranges.fallback = True
        elif self.errors:
            raise self.errors[0]
        # Else every extra slot was taken back: the front goes on alone.

    def _top_up(self) -> None:
        """More connections, as slots come free (another blob ended), while
        chunks wait for one."""
        service = self.service
        with self.cond:
            if self.stopping or not self.pending:
                return
            if self.own_idle:
                # The job's own slot found nothing left a moment ago; now a
                # stopped chunk's rest is back.
                self.own_idle = False
                self._spawn(None)
            extra = sum(1 for h, t in self.extras if t.is_alive() and not h.revoked)
            want = min(service.per_layer - 1 - extra, len(self.pending))
            if want > 0:
                for holder in service._extra_slots(self.job, want):
                    self._spawn(holder)

    def stop(self) -> None:
        """End every chunk connection (their bytes kept) and wait for them."""
        with self.cond:
            self.stopping = True
            for _, _, transfer in self.live.values():
                transfer.cancel()
            self.cond.notify_all()
        for thread in self.threads:
            thread.join()
        if self.active and not self._counted:
            self._counted = True
            owner = self.job.owner
            if owner is not None:
                owner._count(self.ended)


def _fetch_error(message: str, *, retryable: bool = False, kind: str = "io") -> FetchError:
    """A FetchError as the native fetcher raises them."""
    error = FetchError(message)
    error.kind = kind
    error.retryable = retryable
    return error


class _Superseded(PullCancelledError):
    """A job stopped because another copy of its blob was stored first."""


def _host(source: BlobSource) -> str:
    """The endpoint a source's blobs come from: what the slots, the threads
    and the shared transfers are counted by."""
    return source.transport.registry.base_url


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
