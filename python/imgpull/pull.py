"""Orchestration of one pull: resolve → select → fetch → verify → record.

The steps follow docker's puller (pull-semantics.md §3 to §9). A Puller
runs them: its Resolver (resolve.py) finds the manifest and the platform's
entry, the blobs come from the Client's TransferService (transfer.py), which
decides when and from which offset, shared with the Client's other pulls,
and its Recorder (record.py) stores the result in one transaction. The bytes
themselves move socket → hash → file inside the native Fetcher, on threads
that run with the GIL released. Each layer's diffID is computed as it
arrives; with a root filesystem to write (`--rootfs`), the Unpacker
(rootfs.py) computes it instead as it applies the layer, and a fetch-only
pull leaves it for its first use (verify.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgpull._core import DEFAULT_MAX_RATIO, DEFAULT_MAX_UNSIZED, diff_id_file, sha256_bytes
from imgpull.errors import (
    CorruptLayerError,
    ForeignLayerError,
    StoreError,
    UnsupportedManifestError,
)
from imgpull.layers import check_diff_ids
from imgpull.manifest import (
    DOCKER_CONFIG,
    Descriptor,
    ImageManifest,
    Manifest,
    ManifestIndex,
    Schema1Manifest,
)
from imgpull.platform import Platform, format_platform, platform_matches_image
from imgpull.progress import (
    ALREADY_EXISTS,
    EXTRACTING,
    PULL_COMPLETE,
    PULLING_FS_LAYER,
    WAITING,
    ProgressCallback,
    ProgressEvent,
    layer_event,
)
from imgpull.record import Recorder, _ImageGone, image_size, load_config
from imgpull.reference import Reference
from imgpull.registry.errors import one_line
from imgpull.resolve import Resolver
from imgpull.retry import RetryPolicy
from imgpull.store import Store
from imgpull.store.content import BlobLimits
from imgpull.transfer import BlobSource, PullTransfers, settle
from imgpull.transport import Transport
from imgpull.verify import config_diff_ids, ensure_verified, record_verified

# Loaded by the pulls that need them: a root filesystem, a schema1 image.
if TYPE_CHECKING:
    from imgpull.rootfs import RootfsTarget, Unpacker


@dataclass(frozen=True)
class PullOptions:
    platform: Platform
    max_concurrent_downloads: int = 3
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # How often live byte counts are reported while blobs stream.
    progress_interval: float = 0.2
    # Refuse Docker schema1 manifests (deprecated) instead of pulling them.
    refuse_schema1: bool = False
    # `platform` was asked for (not the host's default): docker then warns
    # when a single-platform image for another platform is pulled.
    explicit_platform: bool = False
    # Fetch layers whose descriptor lists `urls` (foreign / non-distributable
    # layers) from those URLs; False refuses images that have any.
    allow_foreign: bool = True
    # End with docker's `Status:` line (an --all-tags run has one for all tags).
    report_status: bool = True
    # Bounds on what the registry's bytes may make us take (BlobLimits): a
    # layer's decompressed : compressed bytes past its first 8 MiB (a
    # decompression bomb), and the bytes of a blob whose descriptor gives no
    # size (schema1 layers: an endless body). 0: no limit.
    max_ratio: int = DEFAULT_MAX_RATIO
    max_unsized_blob: int = DEFAULT_MAX_UNSIZED
    # Check the blobs' digests only: the layers' diffIDs are not computed,
    # and the image is recorded unverified (imgpull.verify checks them at
    # their first use). A schema1 image's config is made of its diffIDs:
    # they are computed all the same.
    fetch_only: bool = False

    @property
    def blob_limits(self) -> BlobLimits:
        return BlobLimits(self.max_ratio, self.max_unsized_blob)


@dataclass(frozen=True)
class Image:
    """What a pull produced (or found already present)."""

    reference: Reference
    id: str  # the config digest: docker's image ID
    digest: str  # the digest pulled: a list's own digest for a list
    manifest_digest: str  # the platform manifest's digest
    media_type: str  # of the platform manifest
    platform: Platform
    layers: tuple[Descriptor, ...]
    size: int  # compressed bytes of config and layers
    updated: bool  # the reference now points somewhere new
    downloaded_bytes: int  # body bytes received over the network by this pull
    # The endpoint that served the pull (`scheme://host`): a mirror or the registry.
    source: str = ""
    # The layers were checked against the config's diffIDs (False after a
    # fetch-only pull: checked at their first use).
    diff_ids_verified: bool = True

    @property
    def status(self) -> str:
        ref = self.reference
        # The daemon pulls `name:tag@digest` as `name@digest`, and says so.
        pulled = ref if ref.digest is None else replace(ref, tag=None)
        return pull_status(pulled.familiar(), self.updated)


def pull_status(name: str, updated: bool) -> str:
    """docker's last word on a pull of `name` (familiar form): whether some
    reference now points somewhere new."""
    if updated:
        return f"Downloaded newer image for {name}"
    return f"Image is up to date for {name}"


# How long a stopped pull waits for its transfers to end (at once: a cancel
# shuts their connections down; but for a blob's TCP connect in progress).
_SETTLE = 5.0
# The lowest layer of a --rootfs pull downloads alone while one connection
# fills the link: measured over _ALONE_LOOK s once bytes flow (polled every
# _ALONE_POLL s), under _ALONE_RATE bytes/s the other layers start beside it.
# Loopback gives one connection GB/s; a capped or long link tens of MB/s.
_ALONE_LOOK = 0.5
_ALONE_POLL = 0.1
_ALONE_RATE = 100_000_000
# A layer this small takes no download slot (as a config): its time is the
# round trip, not the bandwidth it would share with the others (at 25 MB/s
# a connection, 64 KiB is 3 ms of a 50 ms round trip). Many small images
# through 3 slots waited a round trip per 3 layers: 40 layers, 13 rounds.
_LATENCY_BOUND = 256 * 1024


def _latency_bound(layer: Descriptor) -> bool:
    return 0 < layer.size <= _LATENCY_BOUND


class Puller:
    """Pulls one reference from one registry into one store."""

    def __init__(
        self,
        store: Store,
        transport: Transport,
        options: PullOptions,
        emit: ProgressCallback,
        ref: Reference,
        transfers: PullTransfers,
        rootfs: RootfsTarget | None = None,
    ) -> None:
        """`transfers`: this pull's part of the Client's TransferService, with
        its cancel token; `rootfs`: where to write the root filesystem as the
        layers arrive (`pull --rootfs`), opened by the caller."""
        self.ref = ref
        self.repo = ref.repository
        self.host = ref.domain
        self.store = store
        self.registry = transport.registry
        self.options = options
        self.emit = emit
        self._transfers = transfers
        self._token = transfers.token
        self._rootfs = rootfs
        self._unpacker: Unpacker | None = None
        self._source = BlobSource(
            transport, ref.domain, ref.repository, options.retry, options.blob_limits
        )
        self._resolver = Resolver(
            transport.registry, store, options.platform, options.retry, emit, transfers.token
        )
        self._recorder = Recorder(
            store,
            ref.domain,
            ref.repository,
            emit,
            lambda desc, layer: transfers.download(self._source, desc, layer=layer),
        )

    def pull(self) -> Image:
        ref = self.ref
        self._token.check()
        top = self._resolver.resolve(ref)
        # As docker: named once the manifest is found (an unknown tag gets the
        # error alone); by digest, by the whole canonical reference, tag dropped.
        label = ref.tag if ref.digest is None else ref.key
        self.emit(ProgressEvent(f"{label}: Pulling from {ref.repository}"))
        manifest = self._resolver.select(ref, top) if isinstance(top, ManifestIndex) else top
        if isinstance(manifest, Schema1Manifest):
            image = self._pull_schema1(ref, top, manifest)
        else:
            assert isinstance(manifest, ImageManifest)
            image = self._pull_image(ref, top, manifest)
        if self.options.report_status:
            self.emit(ProgressEvent(f"Status: {image.status}"))
        self._warn_platform_mismatch(image)
        return image

    def _warn_platform_mismatch(self, image: Image) -> None:
        """docker's warning when the platform was asked for and the image
        pulled (a single-platform one, or an index entry without a platform)
        is for another: pulled all the same, as docker does."""
        want = self.options.platform
        got = Platform(image.platform.os, image.platform.architecture, image.platform.variant)
        if (
            not self.options.explicit_platform
            or self._resolver.chosen_by_platform
            or platform_matches_image(want, got)
        ):
            return
        self.emit(
            ProgressEvent(
                f"WARNING: image with reference {self.ref} was found but does not match the "
                f"specified platform: wanted {format_platform(want)}, "
                f"actual: {format_platform(got)}"
            )
        )

    # Fetch ----------------------------------------------------------------

    def _pull_image(self, ref: Reference, top: Manifest, manifest: ImageManifest) -> Image:
        manifest.check_config_type()
        if not self.options.allow_foreign:
            for layer in manifest.layers:
                if layer.urls:
                    raise ForeignLayerError(
                        f"layer {layer.digest} of {ref.familiar()} is a foreign layer "
                        f"({layer.media_type}) served from {one_line(layer.urls[0], 200)}; "
                        "refusing it because foreign layers are disabled (--no-foreign-layers)"
                    )
        config_desc = manifest.config
        if self.store.meta.get_image(config_desc.digest) is not None:
            # As docker: the image (its ID is the config digest) is stored
            # already, e.g. pulled from a manifest with other layer blobs
            # (zstd vs gzip): nothing is fetched, the references name it, and
            # it keeps its own manifest and layers, which are present.
            try:
                self._refetch_damaged(config_desc)
                self._use_stored(config_desc.digest, manifest.layers)
                return self._record(ref, top, manifest, None, ())
            except _ImageGone:
                pass  # removed meanwhile (an `rmi`): pull it
        layer_count = len(manifest.layers)
        unpacker = self._start_unpacker(manifest.layers)
        downloaded = self._download_all(
            config_desc,
            manifest.layers,
            want=lambda: self._load_config(config_desc.digest, layer_count)["rootfs"]["diff_ids"],
        )
        for attempt in range(3):
            try:
                config = self._load_config(config_desc.digest, layer_count)
                break
            except StoreError:
                # A concurrent `imgpull rmi` removed the config after we saw
                # it (our blobs are only protected once recorded): fetch again.
                if attempt == 2:
                    raise
                self._download_all(config_desc, [])
        if self.options.fetch_only:  # never with a root filesystem (Client.pull)
            self._registered(downloaded, extracted=False)
            return self._record(ref, top, manifest, config, (), verified=False)
        diff_ids = self._diff_ids(manifest.layers)
        # Nothing (image, references) is recorded unless they match.
        check_diff_ids(config["rootfs"]["diff_ids"], diff_ids)
        if unpacker is None:
            self._registered(downloaded)
        return self._record(ref, top, manifest, config, diff_ids)

    def _refetch_damaged(self, config: Descriptor) -> None:
        """A stored image is pulled again: before it is called up to date,
        each of its blobs (config, its own layers) whose file is missing or
        not the size recorded (truncated, appended to) is removed and
        fetched again. Only sizes are checked, which costs a stat a blob;
        `imgpull verify --repair` finds and mends what only hashing shows."""
        store = self.store
        image_id = config.digest
        layers = store.meta.image_layers(image_id)
        own = (Descriptor(lr.media_type, lr.digest, lr.size) for lr in layers)
        blobs = {d.digest: d for d in (config, *own)}
        problems = {k: store.content.size_problem(k, d.size) for k, d in blobs.items()}
        bad = {k: blobs[k] for k, problem in problems.items() if problem is not None}
        if not bad:
            return
        for digest, d in bad.items():
            warning = f"Warning: blob {digest} in the store {problems[digest]}: fetching it again"
            self.emit(ProgressEvent(warning))
            store.remove_damaged(digest, partial(_wrong_size, size=d.size))
        if store.meta.get_image(image_id) is None:
            raise _ImageGone(image_id)  # removed meanwhile (an `rmi`): pull it
        wanted = [d for digest, d in bad.items() if digest != image_id]
        downloaded = self._download_all(bad.get(image_id), wanted)
        self._registered(downloaded, extracted=not self.options.fetch_only)

    def _use_stored(self, image_id: str, layers: Sequence[Descriptor]) -> None:
        """A stored image is pulled again: its root filesystem written if
        asked for, its diffIDs checked if a fetch-only pull stored it (and
        this pull is not one)."""
        store = self.store
        if self._rootfs is not None:
            unpacker = self._start_unpacker(layers)
            assert unpacker is not None
            for layer in layers:
                if not store.content.exists(layer.digest):
                    raise _ImageGone(image_id)
            want = config_diff_ids(store, image_id)
            # On its thread, so that a Ctrl-C here stops it at its next entry.
            applied = unpacker.start(lambda _: None, lambda: want)
            try:
                diff_ids = applied.result()
            except BaseException:
                unpacker.stop()
                raise
            record_verified(store, image_id, diff_ids)
        elif not self.options.fetch_only:
            ensure_verified(store, image_id, max_ratio=self.options.max_ratio)

    def _start_unpacker(self, layers: Sequence[Descriptor]) -> Unpacker | None:
        """The writer of this pull's root filesystem, if it writes one."""
        if self._rootfs is None:
            return None
        from imgpull.rootfs import Unpacker

        self._unpacker = Unpacker(self._rootfs, layers, self.emit, self._register)
        return self._unpacker

    def _register(self, layer: Descriptor, diff_id: str, size: int) -> None:
        self.store.meta.record_layer(layer.digest, diff_id, size, self.host, self.repo)

    def _start_when_slow(
        self, first: Future[None], started: threading.Event, start: Callable[[], None]
    ) -> None:
        """Call `start()` once the layer downloading alone (`first`) shows it
        does not fill the link: under _ALONE_RATE over its first
        _ALONE_LOOK seconds with bytes; ends when it is done or `started`."""
        since: float | None = None
        seen = 0
        while not first.done() and not started.is_set():
            if started.wait(_ALONE_POLL):
                return
            got = sum(done for _, done, _ in self._transfers.snapshot())
            now = time.monotonic()
            if since is None:
                if got > 0:
                    since, seen = now, got
                continue
            if now - since >= _ALONE_LOOK:
                if (got - seen) / (now - since) < _ALONE_RATE:
                    start()
                return

    def _download_all(
        self,
        config: Descriptor | None,
        layers: Sequence[Descriptor],
        want: Callable[[], Sequence[str | None]] | None = None,
    ) -> list[Descriptor]:
        """Download the config and the layers not in the store; returns the
        layers downloaded (each digest once), in manifest order. With a
        root filesystem to write, its unpacker applies the layers meanwhile,
        each once it and those below are stored, checked against `want()`,
        the config's diffIDs."""
        limit = max(1, self.options.max_concurrent_downloads)
        seen: set[str] = set()
        todo: list[Descriptor] = []
        for layer in layers:
            if self.store.content.exists(layer.digest):
                self.emit(layer_event(ALREADY_EXISTS, layer))
            elif layer.digest not in seen:
                seen.add(layer.digest)
                todo.append(layer)
                self.emit(layer_event(PULLING_FS_LAYER, layer))
        for layer in [d for d in todo if not _latency_bound(d)][limit:]:
            self.emit(layer_event(WAITING, layer))

        done = threading.Event()
        reporter = threading.Thread(target=self._report, args=(done,), daemon=True)
        reporter.start()
        # The config has its own thread so that it never queues behind layers.
        # Layer threads outnumber the download slots, so that one blob's
        # commit (verify, fsync, rename) overlaps the next one's download.
        # The Client's service schedules them: its slots, each digest once.
        # A layer's diffID is computed as it arrives, unless the unpacker
        # hashes it as it applies it, or the pull is fetch-only (schema1
        # images, made of their diffIDs, have no config here: computed).
        unpacker = self._unpacker if layers else None
        diff_id = unpacker is None and not (self.options.fetch_only and config is not None)
        fetch = self._transfers.fetch
        config_future = fetch(self._source, config, layer=False, small=True) if config else None
        start = todo if unpacker is None else todo[:1]

        def fetch_layer(d: Descriptor) -> Future[None]:
            small = _latency_bound(d)
            return fetch(self._source, d, layer=True, small=small, diff_id=diff_id)

        pending = {d.digest: fetch_layer(d) for d in start}
        if len(start) < len(todo):
            # A root filesystem's critical path is applying the layers, which
            # starts when the lowest missing one is stored: it downloads alone
            # (not sharing the link with two others), the rest once it is in,
            # still well ahead of the unpacker. Unless one connection does not
            # fill the link (a cap per connection, a long round trip): then
            # the others starting beside it take nothing from it, and waiting
            # would leave the link idle (issue 17: at 25 MB/s a connection,
            # the 260 MB bottom layer alone cost 10 s).
            later: dict[str, Future[None]] = {d.digest: Future() for d in todo[1:]}
            started = threading.Event()
            once = threading.Lock()  # the watcher and the first's end may race

            def start_rest(first: Future[None] | None) -> None:
                if not once.acquire(blocking=False):
                    return
                started.set()
                failed = first.exception() if first is not None else None
                for d in todo[1:]:
                    mine = later[d.digest]
                    if failed is not None:  # the pull stops: nothing more is started
                        settle(mine, failed)
                        continue
                    fetched = fetch_layer(d)
                    fetched.add_done_callback(partial(_settle_from, mine))

            pending[todo[0].digest].add_done_callback(start_rest)
            threading.Thread(
                target=self._start_when_slow,
                args=(pending[todo[0].digest], started, partial(start_rest, None)),
                name="imgpull-alone",
                daemon=True,
            ).start()
            pending.update(later)
        futures: list[Future[Any]] = [
            *([config_future] if config_future else []),
            *pending.values(),
        ]
        if unpacker is not None:
            unpacker.announce = set(pending)

            def expected() -> Sequence[str | None]:
                if config_future is not None:
                    config_future.result()
                return want() if want is not None else [None] * len(layers)

            def ready(layer: Descriptor) -> None:
                if layer.digest in pending:
                    pending[layer.digest].result()

            futures.append(unpacker.start(ready, expected))
        try:
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f in finished and f.exception() is not None]
            if failed:
                # Stop the others at their next chunk (their partial files stay
                # for the next run) and report the error that started it.
                self._stop()
                self._transfers.raise_callback_error()
                failed[0].result()
        except BaseException:
            self._stop()
            raise
        finally:
            done.set()
            reporter.join()
        return todo

    def _stop(self) -> None:
        """Cancel this pull's transfers (those no other pull wants) and wait
        a little for them to end, so that their partial files are complete."""
        self._token.cancel()
        if self._unpacker is not None:
            self._unpacker.stop()
        self._transfers.settle(_SETTLE)

    def _registered(self, downloaded: Iterable[Descriptor], *, extracted: bool = True) -> None:
        """Docker's last two statuses of a downloaded layer, once its diffID
        (computed while it downloaded) has been checked against the config;
        `extracted` False: Pull complete only (fetch-only)."""
        for layer in downloaded:
            # With its byte count, as docker's (so no plain line shows it).
            size = layer.size if layer.size >= 0 else self.store.content.size(layer.digest)
            if extracted:
                self.emit(layer_event(EXTRACTING, layer, size, size))
            self.emit(layer_event(PULL_COMPLETE, layer, total=size))

    def _diff_ids(self, layers: Sequence[Descriptor]) -> list[str]:
        """Each layer's diffID: as recorded when it was downloaded, else (a blob
        stored by an older imgpull, or by a process that has not recorded it
        yet) computed from the file and recorded."""
        meta = self.store.meta
        found: dict[str, str] = {}
        missing: dict[str, Descriptor] = {}
        for layer in layers:
            record = meta.layer_diff_id(layer.digest)
            if record is not None:
                found[layer.digest] = record.diff_id
            else:
                missing.setdefault(layer.digest, layer)
        if missing:
            limit = max(1, self.options.max_concurrent_downloads)
            with ThreadPoolExecutor(limit, thread_name_prefix="imgpull-diffid") as pool:
                computed = pool.map(self._compute_diff_id, missing.values())
                found.update(zip(missing, computed, strict=True))
        return [found[layer.digest] for layer in layers]

    def _compute_diff_id(self, layer: Descriptor) -> str:
        content, meta = self.store.content, self.store.meta
        for _ in range(3):
            if not content.exists(layer.digest):
                # Removed meanwhile (an `rmi`): fetch it again, which records it.
                self._transfers.download(self._source, layer, layer=True)
                record = meta.layer_diff_id(layer.digest)
                if record is not None:
                    return record.diff_id
            try:
                diff_id = _diff_id(content.path(layer.digest), self.options.max_ratio)
            except FileNotFoundError:
                # Removed between the check and the open (an `rmi` in
                # another process): fetch it again, a bounded number of times.
                continue
            meta.record_layer(layer.digest, diff_id, None, self.host, self.repo)
            return diff_id
        raise StoreError(
            f"layer {layer.digest} was removed from the store while this pull read it, "
            "three times (another process removing images?): pull again once it is done"
        )

    def _report(self, done: threading.Event) -> None:
        while not done.wait(self.options.progress_interval):
            for event in self._transfers.downloading():
                self.emit(event)

    def _pull_schema1(self, ref: Reference, top: Manifest, manifest: Schema1Manifest) -> Image:
        """Docker's pullSchema1: the plan and the config come from schema1.py."""
        from imgpull import schema1

        if self.options.refuse_schema1:
            raise UnsupportedManifestError(
                f"{ref.familiar()} is a Docker schema1 manifest ({manifest.media_type}), "
                "deprecated; refusing it because schema1 pulls are disabled (--no-schema1)"
            )
        self.emit(ProgressEvent(schema1.deprecation_message(str(ref))))
        plan = schema1.plan(manifest, ref.familiar())
        want_os = self.options.platform.os
        if plan.os is not None and plan.os != want_os:
            raise UnsupportedManifestError(
                f'image operating system "{plan.os}" cannot be used on this platform ({want_os})'
            )
        self._start_unpacker(plan.layers)
        downloaded = self._download_all(None, plan.layers)
        content = self.store.content
        # Computed while downloading (or from the files of blobs already here).
        diff_ids = self._diff_ids(plan.layers)
        config = plan.config(diff_ids)
        config_desc = Descriptor(DOCKER_CONFIG, sha256_bytes(config), len(config))
        content.put(config, config_desc.digest)
        # Recorded as an image manifest whose bytes are the canonical payload
        # (they hash to the manifest digest), with the synthesised config.
        image_manifest = ImageManifest(
            media_type=manifest.media_type,
            digest=manifest.digest,
            raw=schema1.canonical_payload(manifest.raw),
            config=config_desc,
            layers=tuple(replace(d, size=content.size(d.digest)) for d in plan.layers),
        )
        loaded = self._load_config(config_desc.digest, len(plan.layers))
        if self._unpacker is None:
            self._registered(downloaded)
        return self._record(
            ref, image_manifest if top is manifest else top, image_manifest, loaded, diff_ids
        )

    # Record ---------------------------------------------------------------

    def _load_config(self, digest: str, layer_count: int) -> dict[str, Any]:
        """The image's config, read from the store and checked (load_config)."""
        return load_config(self.store, digest, layer_count, self.options.platform.os)

    def _record(
        self,
        ref: Reference,
        top: Manifest,
        manifest: ImageManifest,
        config: dict[str, Any] | None,
        diff_ids: Sequence[str],
        *,
        verified: bool = True,
    ) -> Image:
        """Record the pull (Recorder.record: one store transaction) and say
        what it produced; `verified` False for a fetch-only pull."""
        platform, updated = self._recorder.record(
            ref, top, manifest, config, diff_ids, verified=verified
        )
        return Image(
            reference=ref,
            id=manifest.config.digest,
            digest=top.digest,
            manifest_digest=manifest.digest,
            media_type=manifest.media_type,
            platform=platform,
            layers=manifest.layers,
            size=image_size(manifest),
            updated=updated,
            downloaded_bytes=self._transfers.received,
            source=self.registry.base_url,
            diff_ids_verified=self.store.meta.is_verified(manifest.config.digest),
        )


def _settle_from(target: Future[None], source: Future[None]) -> None:
    """`target` ends as `source` did."""
    settle(target, source.exception())


def _wrong_size(path: Path, size: int) -> bool:
    return path.stat().st_size != size


def _diff_id(path: Path, max_ratio: int) -> str:
    """The diffID of a stored layer blob."""
    try:
        return diff_id_file(str(path), max_ratio=max_ratio)
    except CorruptLayerError as exc:
        raise CorruptLayerError(f"cannot read layer {path.name}: {exc}") from None
