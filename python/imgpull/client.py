"""The public library API: a Client owns a store and the registry connections.

    with imgpull.Client(root="/var/lib/imgpull") as client:
        image = client.pull("alpine:3.20", platform="linux/arm64")

The CLI is a thin layer over this class.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from imgpull import hosts
from imgpull._core import DEFAULT_MAX_RATIO, DEFAULT_MAX_UNSIZED, sha256_file
from imgpull.errors import (
    ConfigError,
    CredentialsError,
    DamagedBlobError,
    DigestMismatchError,
    ExportError,
    FetchError,
    ImageConflictError,
    ImageNotFoundError,
    ImgpullError,
    InvalidReferenceError,
    LimitExceededError,
    ManifestVerificationError,
    PullCancelledError,
    PullTimeoutError,
    RegistryError,
    SizeMismatchError,
    StoreError,
)
from imgpull.hosts import Mirror, parse_mirror, registry_key
from imgpull.manifest import short_id
from imgpull.platform import Platform, host_platform, parse_platform
from imgpull.progress import ProgressCallback, ProgressEvent, with_refs
from imgpull.reference import DEFAULT_DOMAIN, DEFAULT_TAG, Reference, parse_reference
from imgpull.retry import (
    DEFAULT_CONNECTIONS_PER_LAYER,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_SPLIT_THRESHOLD,
    RetryPolicy,
    StallPolicy,
    check_connections_per_layer,
)
from imgpull.rfc3339 import parse_rfc3339
from imgpull.store import LayerRecord, ReferenceRecord, Store
from imgpull.verify import (
    config_diff_ids,
    damaged_blobs,
    ensure_verified,
    record_verified,
    verify_image,
)

# What pulls and exports need is imported by the methods that use it: the
# local queries (images, inspect, tag, remove) load no HTTP (httpx), no
# transfer machinery, no exporter.
if TYPE_CHECKING:
    from imgpull.pull import Image
    from imgpull.registry import Credentials, Endpoint
    from imgpull.rootfs import RootfsTarget
    from imgpull.transfer import CancelToken, TransferService
    from imgpull.transport import Transport, Transports

CredentialLookup = Callable[[str], "Credentials | None"]
_T = TypeVar("_T")
# Pulls of one pull_many() at once, shared between registry hosts
# (_ByHost: a host that stalls holds its share only). Their manifest and
# config requests do not wait for the download slots (the transfers of
# layers do), so this many images resolve at once: a pull by tag is two
# dependent round trips before its layers (manifest, config), and with 4
# at a time the 40-image fleet at 50 ms waited 10 rounds of them.
_MAX_WORKERS = 16
# How long close() waits for the pulls it cancelled to stop.
_CLOSE_WAIT = 10.0


@dataclass(frozen=True)
class ImageSummary:
    """One row of `imgpull images`: a reference and the image it names."""

    repository: str
    tag: str | None
    digest: str | None
    image_id: str
    created: str | None
    size: int


@dataclass(frozen=True)
class Removal:
    """One record of `imgpull rmi`, as docker's: a reference untagged or a
    blob (the image's config, i.e. its ID, or a layer) deleted."""

    untagged: str | None = None
    deleted: str | None = None

    def __str__(self) -> str:
        return f"Untagged: {self.untagged}" if self.untagged else f"Deleted: {self.deleted}"


def _ignore(_: ProgressEvent) -> None:
    pass


class Client:
    """Pulls images into a local store.

    `plain_http`: True forces http, False forces https, None (the default)
    uses https except for loopback registries, as docker treats 127.0.0.0/8.
    `credentials` maps a registry host to credentials (or None); by default
    they come from Docker's config file (imgpull.credentials.DockerCredentials).
    `ca_file`, `client_cert`/`client_key` and `insecure` apply to every
    endpoint; the certs.d folder of each host (`certs_dirs`, default
    hosts.certs_dirs()) adds its CAs and gives its client certificate unless
    one is passed. `mirrors` maps a registry ("docker.io", "host:port") to
    mirrors tried first, in order ("[http[s]://]host[:port]" or Mirror).
    `retry` says when a failed request is tried again; `stall` when a blob
    download counts as stalled (then it is retried from its offset);
    `request_timeout` bounds each other request (manifest, tag page, ping,
    token) as a whole, in seconds: a timed-out one is retried like a network
    failure. `max_ratio` and `max_unsized_blob` bound what a pull's layers
    may decompress to and what a blob of unknown size may hold (PullOptions;
    LimitExceededError past them).

    Transfers: every pull of a Client shares one TransferService: at most
    `max_concurrent_downloads` blob bodies download at once over all of
    them (as docker's daemon-wide setting), at most
    `max_concurrent_per_host` (default no cap of its own) from one registry
    host, shared fairly between hosts (a host alone uses every slot; a slow
    host keeps its share only), and a blob several pulls want is fetched
    once (a pull whose registry did not start that transfer fetches its own
    copy when it is slow). Image configs and layers of 256 KiB or less take
    no slot: their time is a round trip, not bandwidth. A blob of
    `split_threshold` bytes or more (32 MiB) whose one connection runs below
    what fills a link (100 MB/s: a proxy or CDN capping each connection)
    is fetched on up to `max_connections_per_layer` (1 to 16, default 4)
    connections at once, as Range requests; the extra ones take no slot,
    within the host's connection room (the slots x that, at most 16); a
    registry that ignores Range gets one stream.

    Threads: a Client may be used from several threads at once (pull,
    pull_many, pull_all_tags and the local queries); close() may be called
    from any thread, and cancels the pulls in progress (PullCancelledError)
    and waits for them to stop before closing the store. A CancelToken may
    be cancelled from any thread. Progress callbacks run on the pull's own
    thread, on the Client's transfer threads and on a progress thread per
    pull, so they must be thread-safe (the renderers of imgpull.progress are);
    a callback must not block for long, as a transfer thread waits for it.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        plain_http: bool | None = None,
        insecure: bool = False,
        ca_file: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        credentials: CredentialLookup | None = None,
        max_concurrent_downloads: int = 3,
        retry: RetryPolicy | None = None,
        stall: StallPolicy | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        refuse_schema1: bool = False,
        allow_foreign: bool = True,
        mirrors: Mapping[str, Sequence[str | Mirror]] | None = None,
        certs_dirs: Sequence[str | os.PathLike[str]] | None = None,
        max_ratio: int = DEFAULT_MAX_RATIO,
        max_unsized_blob: int = DEFAULT_MAX_UNSIZED,
        max_concurrent_per_host: int | None = None,
        max_connections_per_layer: int = DEFAULT_CONNECTIONS_PER_LAYER,
        split_threshold: int = DEFAULT_SPLIT_THRESHOLD,
    ) -> None:
        if max_concurrent_downloads < 1 or (
            max_concurrent_per_host is not None and max_concurrent_per_host < 1
        ):
            raise ImgpullError("max concurrent downloads must be at least 1")
        if not request_timeout > 0:
            raise ImgpullError("the request timeout must be a positive number of seconds")
        check_connections_per_layer(max_connections_per_layer)
        self._tls = hosts.TLSFiles(
            ca_file=ca_file, client_cert=client_cert, client_key=client_key, dirs=certs_dirs
        )
        self._mirrors = {
            registry_key(name): tuple(m if isinstance(m, Mirror) else parse_mirror(m) for m in ms)
            for name, ms in (mirrors or {}).items()
        }
        self.store = Store(root)
        self._insecure = insecure
        self._plain_http = plain_http
        self._max_concurrent = max_concurrent_downloads
        self._retry = retry or RetryPolicy()
        # Docker schema1 manifests (deprecated): pulled with a warning unless refused.
        self._refuse_schema1 = refuse_schema1
        # Foreign (non-distributable) layers: fetched from their URLs unless refused.
        self._allow_foreign = allow_foreign
        self._max_ratio = max_ratio
        self._max_unsized_blob = max_unsized_blob
        self._credentials = credentials
        self._request_timeout = request_timeout
        self._stall = stall or StallPolicy()
        self._max_per_host = max_concurrent_per_host
        self._per_layer = max_connections_per_layer
        self._split_threshold = split_threshold
        # The transports and the transfer service: made by the first pull
        # (_network), as the local queries use neither.
        self._net: tuple[Transports, TransferService] | None = None
        # The tokens of the pulls in progress, which close() cancels.
        self._pulls = threading.Condition()
        self._live: set[CancelToken] = set()
        self._closed = False

    def _network(self) -> tuple[Transports, TransferService]:
        with self._pulls:
            if self._net is None:
                from imgpull.credentials import DockerCredentials
                from imgpull.transfer import TransferService
                from imgpull.transport import Transports

                transports = Transports(
                    # Docker's config file (credsStore, credHelpers, auths) unless given.
                    self._credentials or DockerCredentials(),
                    request_timeout=self._request_timeout,
                    stall=self._stall,
                )
                transfers = TransferService(
                    self.store,
                    max_concurrent_downloads=self._max_concurrent,
                    max_per_host=self._max_per_host,
                    foreign_fetcher=transports.foreign,
                    max_connections_per_layer=self._per_layer,
                    split_threshold=self._split_threshold,
                )
                self._net = (transports, transfers)
            return self._net

    @property
    def _transports(self) -> Transports:
        return self._network()[0]

    @property
    def _transfers(self) -> TransferService:
        return self._network()[1]

    # Lifecycle --------------------------------------------------------------

    def close(self) -> None:
        """Cancel the pulls in progress, wait (a bounded time) for them to
        stop, then close the connections and the store."""
        with self._pulls:
            self._closed = True
            live = list(self._live)
        for token in live:
            token.cancel(
                PullCancelledError(
                    "pull cancelled: the Client was closed; partial downloads are kept, "
                    "pull again with a new Client to resume"
                )
            )
        with self._pulls:
            stopped = self._pulls.wait_for(lambda: not self._live, timeout=_CLOSE_WAIT)
        # A pull stuck past the wait (in a blob's TCP connect, which a cancel
        # does not interrupt) is not waited for: it has been cancelled.
        with self._pulls:
            net = self._net
        if net is not None:
            net[1].close(wait=stopped)
            net[0].close()
        self._tls.close()
        self.store.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # Pull -------------------------------------------------------------------

    def pull(
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
        """Pull one image. `timeout` (seconds): past it the pull stops with
        PullTimeoutError; `cancel`: a token whose cancel() (from any thread)
        stops it with PullCancelledError. Either way partial downloads are
        kept and the next pull resumes them.

        `rootfs`: a directory (absent or empty) to write the image's root
        filesystem to in the same pass, each layer applied as soon as it and
        those below it are stored (imgpull.rootfs); after a failure it is
        emptied (removed if the pull made it), which the error's notes say.
        It must not hold anything imgpull cannot show it wrote (a killed
        pull's partial tree, marked as this store's job) unless `force`:
        then it is emptied first (`force` goes with `rootfs` only).
        `fetch_only`: check the blobs' digests only, not the layers'
        diffIDs; the image is recorded unverified, and its diffIDs are
        checked at their first use (export, inspect, verify, a `rootfs`
        pull). The two do not go together: a root filesystem checks them."""
        ref = parse_reference(reference) if isinstance(reference, str) else reference
        want = parse_platform(platform) if isinstance(platform, str) else platform
        emit = progress or _ignore
        if rootfs is not None and fetch_only:
            raise ImgpullError(
                "a fetch-only pull writes no root filesystem: give --rootfs or --fetch-only"
            )
        target = None
        if rootfs is not None:
            from imgpull.rootfs import RootfsTarget

            target = RootfsTarget(
                rootfs, self.store, ref.familiar(), max_ratio=self._max_ratio, force=force
            )
            target.open(emit)
        try:
            with self._running(cancel, timeout) as token:
                image = self._pull(ref, want, emit, token, rootfs=target, fetch_only=fetch_only)
        except BaseException as exc:
            if target is not None:
                target.failed(exc)
            raise
        if target is not None:
            target.succeeded()
        return image

    def pull_many(
        self,
        references: Iterable[str | Reference],
        *,
        platform: str | Platform | None = None,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
        cancel: CancelToken | None = None,
        fetch_only: bool = False,
    ) -> list[Image | ImgpullError]:
        """Pull several images at once, sharing the Client's transfers (each
        blob fetched once). Returns one result per reference, in order: its
        Image, or the error that stopped it (one failure does not stop the
        others). A few pulls run at a time, so that the next images resolve
        while earlier layers download, shared between the registry hosts
        (a stalled host holds its share of them only). `timeout` and
        `cancel` apply to the whole run: a pull they stop gets
        PullTimeoutError/PullCancelledError.
        `fetch_only`: as for pull()."""
        refs = list(references)
        want = parse_platform(platform) if isinstance(platform, str) else platform
        emit = progress or _ignore
        results: list[Image | ImgpullError | None] = [None] * len(refs)
        todo = _ByHost(refs)
        with self._running(cancel, timeout) as token:

            def work() -> None:
                while True:
                    item = todo.take()
                    if item is None:
                        return
                    i, reference = item
                    try:
                        results[i] = self._pull_one(reference, want, emit, token, fetch_only)
                    finally:
                        todo.done(i)

            threads = [
                threading.Thread(target=work, name=f"imgpull-pull-{n}", daemon=True)
                for n in range(min(len(refs), _MAX_WORKERS))
            ]
            for t in threads:
                t.start()
            try:
                for t in threads:
                    t.join()
            except BaseException:  # Ctrl-C: stop them all, then go
                token.cancel()
                for t in threads:
                    t.join()
                raise
        return [r if r is not None else PullCancelledError("pull cancelled") for r in results]

    def _pull_one(
        self,
        reference: str | Reference,
        want: Platform | None,
        emit: ProgressCallback,
        token: CancelToken,
        fetch_only: bool,
    ) -> Image | ImgpullError:
        """One pull of pull_many: its Image or its error."""
        from imgpull.registry.deadline import interruptible

        own, detach = token.child()
        try:
            ref = parse_reference(reference) if isinstance(reference, str) else reference
            with interruptible(own):  # this thread's requests
                return self._pull(ref, want, emit, own, fetch_only=fetch_only)
        except ImgpullError as exc:
            return own.error if own.cancelled and own.error is not None else exc
        finally:
            detach()

    @contextmanager
    def _running(self, cancel: CancelToken | None, timeout: float | None) -> Iterator[CancelToken]:
        """A token for pulls, cancelled with `cancel`, after `timeout` seconds
        and by close(), which also interrupts this thread's registry requests
        (registry.deadline.interruptible); a failure once it is cancelled
        raises its error."""
        from imgpull.registry.deadline import interruptible
        from imgpull.transfer import CancelToken

        if timeout is not None and not timeout > 0:
            raise ImgpullError("the pull timeout must be a positive number of seconds")
        token, detach = cancel.child() if cancel is not None else (CancelToken(), lambda: None)
        with self._pulls:
            if self._closed:
                detach()
                raise PullCancelledError("this Client is closed: pull with a new Client")
            self._live.add(token)
        timer = None
        if timeout is not None:
            error = PullTimeoutError(
                f"the pull did not finish within {timeout:g} seconds; pull again to resume "
                "(partial downloads are kept), or give it more time"
            )
            timer = threading.Timer(timeout, token.cancel, args=(error,))
            timer.daemon = True
            timer.start()
        try:
            with interruptible(token):
                yield token
        except ImgpullError:
            # Whatever the cancel broke (a transfer, a wait) says less than why.
            if token.cancelled and token.error is not None:
                raise token.error from None
            raise
        finally:
            if timer is not None:
                timer.cancel()
            detach()
            with self._pulls:
                self._live.discard(token)
                self._pulls.notify_all()

    def _pull(
        self,
        ref: Reference,
        want: Platform | None,
        emit: ProgressCallback,
        token: CancelToken,
        status: bool = True,
        *,
        rootfs: RootfsTarget | None = None,
        fetch_only: bool = False,
    ) -> Image:
        """One pull; `status`: end with docker's Status line."""
        from imgpull.pull import Puller, PullOptions

        refs = (ref.familiar(),)
        sink = emit
        emit = with_refs(emit, refs)  # so a bulk run's events say which pull

        def attempt(transport: Transport, retry: RetryPolicy) -> Image:
            options = PullOptions(
                platform=want or host_platform(),
                explicit_platform=want is not None,
                report_status=status,
                max_concurrent_downloads=self._max_concurrent,
                retry=retry,
                refuse_schema1=self._refuse_schema1,
                allow_foreign=self._allow_foreign,
                max_ratio=self._max_ratio,
                max_unsized_blob=self._max_unsized_blob,
                fetch_only=fetch_only,
            )
            # A token of this attempt's own: its first failed blob cancels
            # the attempt's other transfers, not the caller's next attempt.
            own, detach = token.child()
            try:
                transfers = self._transfers.pull(own, emit, refs, sink)
                puller = Puller(self.store, transport, options, emit, ref, transfers, rootfs)
                return puller.pull()
            finally:
                detach()

        return self._with_fallback(ref.domain, emit, attempt, token)

    def pull_all_tags(
        self,
        name: str | Reference,
        *,
        platform: str | Platform | None = None,
        progress: ProgressCallback | None = None,
        on_error: Callable[[Reference, ImgpullError], None] | None = None,
        fetch_only: bool = False,
    ) -> list[Image]:
        """Pull every tag of a repository (`docker pull --all-tags`), in the
        order the registry lists them; the first failure stops the run, unless
        `on_error(tag reference, error)` is given: then a failed tag is passed
        to it and the others are pulled (only the successes are returned); a
        listed tag that is not a valid tag is passed with the name alone.
        `fetch_only`: as for pull()."""
        ref = parse_reference(name, default_tag=None) if isinstance(name, str) else name
        if not ref.is_name_only:
            raise InvalidReferenceError(
                f"tag can't be used with --all-tags/-a: {ref.familiar()} (give the name only)"
            )
        want = parse_platform(platform) if isinstance(platform, str) else platform
        emit = progress or _ignore
        with self._running(None, None) as token:
            tags = self._with_fallback(
                ref.domain,
                emit,
                lambda transport, _retry: transport.registry.list_tags(ref.repository),
                token,
            )
            # As docker: one Status line for the whole repository, at the end.
            pulled = []
            for tag in tags:
                try:
                    tagged = ref.with_tag(tag)
                except InvalidReferenceError as exc:
                    # The list is the registry's: one bad entry costs itself only.
                    skipped = InvalidReferenceError(
                        f"{ref.familiar()}: the registry lists an invalid tag, skipped: {exc}"
                    )
                    if on_error is None:
                        raise skipped from None
                    on_error(ref, skipped)
                    continue
                try:
                    pulled.append(
                        self._pull(tagged, want, emit, token, status=False, fetch_only=fetch_only)
                    )
                except ImgpullError as exc:
                    if on_error is None or token.cancelled:
                        raise
                    on_error(tagged, exc)
        if pulled or on_error is None:  # no Status when every tag failed
            from imgpull.pull import pull_status

            updated = any(i.updated for i in pulled)
            emit(ProgressEvent(f"Status: {pull_status(ref.familiar(), updated)}"))
        return pulled

    def _with_fallback(
        self,
        domain: str,
        emit: ProgressCallback,
        attempt: Callable[[Transport, RetryPolicy], _T],
        token: CancelToken | None = None,
    ) -> _T:
        """`attempt` on each endpoint of `domain` in turn (its mirrors, then
        itself) until one succeeds (pull-semantics §2). A mirror's failure
        passes to the next endpoint at once (no retries there: the next one is
        the better bet); what was stored meanwhile stays, and partial blobs
        resume. The last endpoint's error is raised as it is. Once `token` is
        cancelled, no further endpoint is tried."""
        from imgpull.transfer import CancelToken

        token = token or CancelToken()
        origin = self._endpoint(domain, self._plain_http, self._insecure)
        mirrors = self._mirrors.get(registry_key(domain), ())
        names = [*(m.host for m in mirrors), origin.name]
        for mirror, following in zip(mirrors, names[1:], strict=True):
            try:
                # The mirror's own TLS files, credentials and connection: a
                # problem with any of them is the mirror's; the next one is tried.
                transport = self._transports.get(self._mirror_endpoint(mirror))
                return attempt(transport, replace(self._retry, attempts=1))
            except ImgpullError as exc:
                token.check()  # a cancelled pull goes to no other endpoint
                if not (_endpoint_failure(exc) or isinstance(exc, (ConfigError, CredentialsError))):
                    raise
                warning = f"Warning: mirror {mirror.host} failed: {exc}; trying {following}"
                emit(ProgressEvent(warning))
        token.check()
        return attempt(self._transports.get(origin), self._retry)

    def _mirror_endpoint(self, m: Mirror) -> Endpoint:
        return self._endpoint(
            m.host,
            plain_http=self._plain_http if m.scheme is None else m.scheme == "http",
            insecure=self._insecure or m.insecure,
            # An insecure mirror without a scheme may be plain HTTP, as
            # containers-registries.conf(5) has it.
            http_fallback=m.insecure and m.scheme is None,
        )

    def _endpoint(
        self, domain: str, plain_http: bool | None, insecure: bool, http_fallback: bool = False
    ) -> Endpoint:
        """The endpoint of one host, with the given TLS files and its certs.d's."""
        from imgpull.registry import endpoint_for

        endpoint = endpoint_for(domain, plain_http=plain_http, insecure=insecure)
        if http_fallback and endpoint.scheme == "https":
            endpoint = replace(endpoint, http_fallback=True)
        return self._tls.apply(endpoint)

    # Local queries ----------------------------------------------------------

    def images(self) -> list[ImageSummary]:
        """What `docker images --digests` lists: per image, newest created
        first, a row per tag (with each digest reference of that repository),
        a `<none>` tag row per repository with digest references only, and a
        `<none>` `<none>` row for an image no reference names."""
        meta = self.store.meta
        by_image: dict[str, list[ReferenceRecord]] = {}
        for r in meta.references():
            by_image.setdefault(r.image_id, []).append(r)
        images = sorted(
            meta.images(), key=lambda i: (_timestamp(i.created), i.pulled_at, i.id), reverse=True
        )
        rows: list[ImageSummary] = []
        for image in images:
            tags: dict[str, list[str]] = {}
            digests: dict[str, list[str]] = {}
            for r in by_image.get(image.id, []):
                if r.tag is not None:
                    tags.setdefault(_familiar(r.name), []).append(r.tag)
                elif r.digest is not None:
                    digests.setdefault(_familiar(r.name), []).append(r.digest)
            names: list[tuple[str, str | None, str | None]] = []
            for repo in sorted(tags):
                for tag in sorted(tags[repo]):
                    repo_digests: list[str | None] = [*sorted(digests.get(repo, []))]
                    names += [(repo, tag, d) for d in repo_digests or [None]]
            for repo in sorted(set(digests) - set(tags)):
                names += [(repo, None, d) for d in sorted(digests[repo])]
            for name, maybe_tag, digest in names or [("<none>", None, None)]:
                rows.append(
                    ImageSummary(name, maybe_tag, digest, image.id, image.created, image.size)
                )
        return rows

    def resolve(self, reference: str) -> str:
        """The image ID a local reference (or an image ID / its prefix) names."""
        return self._lookup(reference)[0]

    def _lookup(self, reference: str) -> tuple[str, Reference | None]:
        """(image ID, the parsed reference) for a local reference; (image ID,
        None) when `reference` is an image ID or a unique prefix of one.
        A reference wins over an ID prefix, as in docker."""
        meta = self.store.meta
        try:
            ref: Reference | None = parse_reference(reference)
        except ImgpullError:
            ref = None
        if ref is not None:
            found = meta.resolve(ref.key)
            if found is not None:
                return found, ref
        wanted = reference.removeprefix("sha256:")
        if re.fullmatch(r"[0-9a-f]{4,64}", wanted):
            matches = [i.id for i in meta.images() if i.id[7:].startswith(wanted)]
            if len(matches) == 1:
                return matches[0], None
        raise ImageNotFoundError(f"No such image: {ref.familiar() if ref else reference}")

    def tag(self, source: str, target: str | Reference) -> Reference:
        """Point the tag `target` (name[:tag], default `latest`) at the image
        `source` names (a reference, an image ID or its prefix), as `docker
        tag` does; returns the normalised target."""
        ref = parse_reference(target) if isinstance(target, str) else target
        if ref.digest is not None:
            raise InvalidReferenceError("refusing to create a tag with a digest reference")
        if ref.tag is None:
            ref = ref.with_tag(DEFAULT_TAG)
        if ref.path in ("sha256", "library/sha256") and ref.domain == DEFAULT_DOMAIN:
            raise InvalidReferenceError(
                "refusing to create an ambiguous tag using digest algorithm as name"
            )
        meta = self.store.meta
        with meta.transaction():  # so that no removal comes between lookup and tag
            image_id, _ = self._lookup(source)
            meta.point(ref, image_id)
        return ref

    def remove(self, reference: str, *, force: bool = False) -> list[Removal]:
        """`docker rmi`: remove a reference; when the image has none left,
        remove the image and the blobs no other image uses.

        By reference: untags it (and, when that was the repository's last
        tag of the image, the repository's digest references too). By image
        ID: removes every reference, which needs `force` when the image has
        more than one tag or references in several repositories. Returns
        docker's records: `Untagged: name:tag`, then `Deleted: <image ID>`
        and the layers deleted with it.

        Crash safety: the database changes are one transaction; the blob
        files go after it (Store.delete_blob), so a crash in between leaves
        unused files only, which Store.gc() removes.
        """
        meta = self.store.meta
        records: list[Removal] = []
        with meta.transaction():
            image_id, ref = self._lookup(reference)
            refs = sorted(meta.references(image_id), key=_familiar_ref)

            def untag(records_to_remove: list[ReferenceRecord]) -> None:
                for r in records_to_remove:
                    meta.delete_reference(r.reference)
                    records.append(Removal(untagged=_familiar_ref(r)))

            if ref is not None:
                given = [r for r in refs if r.reference == ref.key]
                untag(given)
                left = [r for r in refs if r not in given]
                if ref.digest is None and not any(
                    r.tag is not None and r.name == ref.name for r in left
                ):
                    untag([r for r in left if r.name == ref.name])
                    left = [r for r in left if r.name != ref.name]
                if left:
                    return records
            elif _single_reference(refs) or force:
                untag(refs)
            elif refs:
                raise ImageConflictError(
                    f"conflict: unable to delete {short_id(image_id)} (must be forced)"
                    " - image is referenced in multiple repositories"
                )
            layers = [lr.digest for lr in meta.image_layers(image_id)]
            unused = meta.delete_image(image_id)
        records.append(Removal(deleted=image_id))
        deleted = {d for d in unused if self.store.delete_blob(d)}
        records += [Removal(deleted=d) for d in dict.fromkeys(reversed(layers)) if d in deleted]
        return records

    def export(
        self,
        reference: str,
        fmt: str,
        dest: str | os.PathLike[str],
        *,
        platform: str | Platform | None = None,
        max_ratio: int = DEFAULT_MAX_RATIO,
        max_bytes: int | None = None,
    ) -> Path:
        """Export an image as `fmt`: "oci" (an OCI layout directory),
        "docker-archive" (a `docker save` tar file) or "rootfs" (the layers
        applied to a directory); see imgpull.export. A reference not in the
        store is pulled first. `max_ratio` (per layer, decompressed :
        compressed, 0 for none) and `max_bytes` (all layers, decompressed)
        bound a rootfs extraction. Returns `dest`."""
        from imgpull.export import FORMATS, export_image
        from imgpull.rootfs import check_outside_store

        if fmt not in FORMATS:
            raise ExportError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
        check_outside_store(Path(dest), self.store, ExportError)  # before a pull, too
        try:
            image_id, ref = self._lookup(reference)
        except ImageNotFoundError:
            ref = parse_reference(reference)
            image_id = self.pull(ref, platform=platform).id
        # The diffIDs of a fetch-only pull's image are checked now: by the
        # export itself (rootfs, docker-archive: each layer's tar is hashed
        # on its way), else first.
        verified = self.store.meta.is_verified(image_id)
        if not verified and fmt == "oci":
            name = ref.familiar() if ref is not None else image_id
            verify_image(self.store, image_id, max_ratio=max_ratio, name=name)
            verified = True
        out = export_image(
            self.store, image_id, ref, fmt, dest, max_ratio=max_ratio, max_bytes=max_bytes
        )
        if not verified:
            record_verified(self.store, image_id, config_diff_ids(self.store, image_id))
        return out

    def verify(
        self,
        reference: str,
        *,
        repair: bool = False,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> list[str]:
        """Check a local image (`imgpull verify`): every blob against its
        digest, every layer against its config's diffID; the image is then
        verified (see Client.pull's fetch_only). Returns its diffIDs;
        LayerMismatchError names a layer that differs, DamagedBlobError a
        blob missing or not its digest.

        `repair`: the blobs that fail their digest (or are missing) are
        removed from the store and fetched again from the registry a
        reference of the image names (a pull of it by digest: mirrors,
        retries and resumes as any pull, `cancel` stops it), then the image
        is checked again. `progress` hears each damaged blob, the pull's
        events, and a `Repaired: blob <digest>` for each blob fetched again.
        """
        image_id, ref = self._lookup(reference)
        name = ref.familiar() if ref is not None else image_id
        try:
            return verify_image(
                self.store, image_id, max_ratio=self._max_ratio, full=True, name=name
            )
        except DamagedBlobError:
            if not repair:
                raise
        self._repair(image_id, ref, progress or _ignore, cancel)
        return verify_image(self.store, image_id, max_ratio=self._max_ratio, full=True, name=name)

    def _repair(
        self,
        image_id: str,
        ref: Reference | None,
        emit: ProgressCallback,
        cancel: CancelToken | None,
    ) -> None:
        """Remove the image's blobs that fail their digest and pull them
        again (Client.verify's `repair`)."""
        store = self.store
        source = self._repair_source(image_id, ref)
        bad = damaged_blobs(store, image_id)
        for digest, problem in bad.items():
            emit(ProgressEvent(f"Damaged: blob {digest} in the store {problem}: removing it"))
            # Checked again holding the blob's lock: a good copy another pull
            # has just committed stays.
            store.remove_damaged(digest, partial(_hashes_wrong, digest=digest))
        image = store.meta.get_image(image_id)
        if image is None:
            raise ImageNotFoundError(f"No such image: {image_id} (removed meanwhile)")
        # The image's own platform, so that an index resolves to it again.
        want = Platform(image.os, image.architecture, image.variant)
        with self._running(cancel, None) as token:
            # The pull finds the image stored and fetches what is gone.
            pulled = self._pull(source, want, emit, token, status=False)
        if pulled.id != image_id:
            raise StoreError(
                f"{source.familiar()} now names image {pulled.id}, not {image_id}: "
                f"cannot repair {image_id}; remove it (imgpull rmi) and pull it again"
            )
        for digest in bad:
            emit(ProgressEvent(f"Repaired: blob {digest}"))

    def _repair_source(self, image_id: str, ref: Reference | None) -> Reference:
        """What to pull to fetch the blobs of a stored image again: a digest
        reference the image was pulled by (one of `ref`'s repository first),
        so that no tag moved since matters; else a repository it was pulled
        from, by its manifest's digest."""
        refs = self.store.meta.references(image_id)
        names = [parse_reference(r.name, default_tag=None) for r in refs]
        by_digest = [n.with_digest(r.digest) for n, r in zip(names, refs, strict=True) if r.digest]
        by_digest.sort(key=lambda n: ref is None or n.name != ref.name)
        if by_digest:
            return by_digest[0]
        image = self.store.meta.get_image(image_id)
        named = [ref] if ref is not None else names
        if image is None or not named:
            raise StoreError(
                f"image {image_id} has no reference to fetch it from again: "
                "remove it (imgpull rmi) and pull it again"
            )
        return named[0].name_only().with_digest(image.manifest_digest)

    def inspect(self, reference: str) -> dict[str, Any]:
        """What docker's `image inspect` shows that a puller knows."""
        image_id = self.resolve(reference)
        ensure_verified(self.store, image_id, max_ratio=self._max_ratio)
        meta, content = self.store.meta, self.store.content
        image = meta.get_image(image_id)
        assert image is not None
        refs = meta.references(image_id)
        config = json.loads(content.read(image_id))
        return {
            "Id": image.id,
            "RepoTags": [f"{_familiar(r.name)}:{r.tag}" for r in refs if r.tag],
            "RepoDigests": [f"{_familiar(r.name)}@{r.digest}" for r in refs if r.digest],
            "ManifestDigest": image.manifest_digest,
            "ManifestMediaType": image.media_type,
            "Created": image.created,
            "Os": image.os,
            "Architecture": image.architecture,
            "Variant": image.variant,
            "Size": image.size,
            "Layers": _layers_info(meta.image_layers(image_id), meta.image_rootfs(image_id)),
            "Config": config.get("config"),
            "RootFS": config.get("rootfs"),
            "History": config.get("history"),
        }


class _ByHost:
    """The references of a pull_many, handed to its workers host by host:
    the next one is the first waiting of the registry host with the fewest
    pulls running (then the earliest listed), so a host that stalls, or
    answers 429 for ever, holds its share of the workers only and the other
    hosts' pulls go on (issue 16). One host alone gets every worker."""

    def __init__(self, refs: Sequence[str | Reference]) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, list[tuple[int, str | Reference]]] = {}
        self._host_of: dict[int, str] = {}
        self._running: dict[str, int] = {}
        for i, given in enumerate(refs):
            # Parsed once, here: its pull takes the Reference (a string that
            # does not parse stays one, for its pull to report).
            ref = _parsed(given)
            host = registry_key(ref.domain) if isinstance(ref, Reference) else ""
            self._queues.setdefault(host, []).append((i, ref))
            self._host_of[i] = host
        self.hosts = len(self._queues)
        for queue in self._queues.values():
            queue.reverse()  # popped from the end: first listed first

    def take(self) -> tuple[int, str | Reference] | None:
        with self._lock:
            waiting = [h for h, q in self._queues.items() if q]
            if not waiting:
                return None
            host = min(waiting, key=lambda h: (self._running.get(h, 0), self._queues[h][-1][0]))
            self._running[host] = self._running.get(host, 0) + 1
            return self._queues[host].pop()

    def done(self, i: int) -> None:
        with self._lock:
            self._running[self._host_of[i]] -= 1


def _parsed(reference: str | Reference) -> str | Reference:
    """`reference` parsed, or as given when it does not parse."""
    try:
        return parse_reference(reference) if isinstance(reference, str) else reference
    except ImgpullError:
        return reference


def _endpoint_failure(exc: ImgpullError) -> bool:
    """Whether an error is the endpoint's (its answer, its bytes, reaching
    it), so that the next endpoint may do better; local errors are not."""
    return isinstance(
        exc,
        (RegistryError, FetchError, DigestMismatchError, SizeMismatchError,
         ManifestVerificationError, LimitExceededError),
    )  # fmt: skip


def _hashes_wrong(path: Path, digest: str) -> bool:
    return sha256_file(str(path)) != digest


def _layers_info(
    layers: Sequence[LayerRecord], rootfs: Sequence[tuple[str, str]]
) -> list[dict[str, Any]]:
    """Each layer: compressed digest and size, with its diffID and chain ID
    when registered (rootfs rows are bottom first, like the layers)."""
    info: list[dict[str, Any]] = []
    for i, lr in enumerate(layers):
        entry: dict[str, Any] = {"Digest": lr.digest, "Size": lr.size, "MediaType": lr.media_type}
        if i < len(rootfs):
            entry["DiffID"], entry["ChainID"] = rootfs[i]
        info.append(entry)
    return info


def _familiar(name: str) -> str:
    return parse_reference(name, default_tag=None).familiar_name


def _familiar_ref(r: ReferenceRecord) -> str:
    """`name:tag` or `name@digest`, in docker's familiar form."""
    return _familiar(r.name) + (f":{r.tag}" if r.tag is not None else f"@{r.digest}")


def _single_reference(refs: list[ReferenceRecord]) -> bool:
    """Docker's isSingleReference: at most one tag, and every reference in
    one repository (False when there are none)."""
    tags = [r for r in refs if r.tag is not None]
    return bool(refs) and len(tags) <= 1 and len({r.name for r in refs}) == 1


def _timestamp(created: str | None) -> float:
    """Seconds since the epoch of an RFC 3339 `created` (0 when unknown)."""
    when = parse_rfc3339(created) if created else None
    return when.timestamp() if when is not None else 0.0


__all__ = ["Client", "ImageSummary", "Platform", "Removal"]
