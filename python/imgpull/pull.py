"""Orchestration of one pull: resolve → select → fetch → verify → record.

The steps follow docker's puller (pull-semantics.md §3 to §9). A Puller
resolves the reference to the blobs it needs and records the result; the
blobs come from the Client's TransferService (transfer.py), which decides
when and from which offset, shared with the Client's other pulls. The bytes
themselves move socket → hash → file inside the native Fetcher, on threads
that run with the GIL released.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from imgpull import schema1
from imgpull._core import (
    DEFAULT_MAX_RATIO,
    DEFAULT_MAX_UNSIZED,
    diff_id_file,
    sha256_bytes,
)
from imgpull.errors import (
    ForeignLayerError,
    ImageConflictError,
    ImgpullError,
    ManifestError,
    ManifestUnknownError,
    ManifestVerificationError,
    NoMatchingPlatformError,
    StoreError,
    UnsupportedManifestError,
)
from imgpull.layers import chain_ids, check_diff_ids
from imgpull.manifest import (
    ACCEPT,
    DOCKER_CONFIG,
    IMAGE_MANIFEST_TYPES,
    INDEX_TYPES,
    MAX_INDEX_DEPTH,
    MAX_MANIFEST_BYTES,
    MAX_MANIFESTS_PER_PULL,
    SCHEMA1_TYPES,
    Descriptor,
    ImageManifest,
    Manifest,
    ManifestIndex,
    Schema1Manifest,
    parse_manifest,
    short_id,
    verify_manifest_digest,
)
from imgpull.platform import (
    Platform,
    format_all,
    format_platform,
    platform_matches_image,
    rank_manifests,
)
from imgpull.progress import (
    ALREADY_EXISTS,
    EXTRACTING,
    PULL_COMPLETE,
    PULLING_FS_LAYER,
    WAITING,
    ProgressCallback,
    ProgressEvent,
)
from imgpull.reference import Reference
from imgpull.registry.client import ManifestHead
from imgpull.registry.errors import one_line
from imgpull.retry import RetryPolicy
from imgpull.store import ImageRecord, LayerRecord, Store
from imgpull.store.content import BlobLimits
from imgpull.transfer import BlobSource, PullTransfers
from imgpull.transport import Transport


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


# How long a stopped pull waits for its transfers to end (at their next chunk).
_SETTLE = 5.0


class _ImageGone(Exception):
    """The stored image a pull meant to reuse was removed meanwhile (an rmi)."""


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
    ) -> None:
        """`transfers`: this pull's part of the Client's TransferService, with
        its cancel token."""
        self.ref = ref
        self.repo = ref.repository
        self.host = ref.domain
        self.store = store
        self.registry = transport.registry
        self.options = options
        self.emit = emit
        self._transfers = transfers
        self._token = transfers.token
        self._source = BlobSource(
            transport, ref.domain, ref.repository, options.retry, options.blob_limits
        )
        self._manifests_read = 1  # the top one; bounded by MAX_MANIFESTS_PER_PULL
        self._chosen_by_platform = False  # an index entry's platform matched

    # Resolve --------------------------------------------------------------

    def pull(self) -> Image:
        ref = self.ref
        self._token.check()
        top = self._resolve(ref)
        # As docker: named once the manifest is found (an unknown tag gets the
        # error alone); by digest, by the whole canonical reference, tag dropped.
        label = ref.tag if ref.digest is None else f"{ref.name}@{ref.digest}"
        self.emit(ProgressEvent(f"{label}: Pulling from {ref.repository}"))
        manifest = self._select(top) if isinstance(top, ManifestIndex) else top
        if isinstance(manifest, Schema1Manifest):
            image = self._pull_schema1(ref, top, manifest)
        else:
            assert isinstance(manifest, ImageManifest)
            image = self._pull_image(ref, top, manifest)
        if self.options.report_status:
            self.emit(ProgressEvent(f"Status: {image.status}"))
        self._warn_platform_mismatch(image)
        return image

    def _resolve(self, ref: Reference) -> Manifest:
        repo = ref.repository
        if ref.digest is not None:
            return self._manifest_by_digest(repo, ref.digest)
        assert ref.tag is not None
        tag = ref.tag
        head: ManifestHead | None = self._retrying(
            f"manifest {tag}", lambda: self.registry.head_manifest(repo, tag, ACCEPT)
        )
        if head is None or head.digest is None:
            return self._fetch_manifest(repo, ref.tag, expected=None)
        if self.store.content.exists(head.digest):
            # The registry just said this repository serves that digest, and
            # we hold the bytes: no need to fetch them again (unless an `rmi`
            # deletes them right now).
            try:
                raw = self.store.content.read(head.digest)
                return parse_manifest(raw, head.media_type or "", head.digest)
            except StoreError:
                pass
        try:
            return self._fetch_manifest(repo, head.digest, expected=head.digest)
        except ManifestUnknownError:
            self.emit(
                ProgressEvent(
                    f"Warning: the registry serves {ref.familiar()} by tag but not by its "
                    f"digest {head.digest}; it is not conforming, falling back to the tag"
                )
            )
            return self._fetch_manifest(repo, ref.tag, expected=None)

    def _manifest_by_digest(self, repo: str, digest: str) -> Manifest:
        """The manifest `digest` of `repo`: from the local store when the registry
        confirms (HEAD) that the repository has it, as docker does; else fetched."""
        if self.store.content.exists(digest):
            head: ManifestHead | None = self._retrying(
                f"manifest {digest}", lambda: self.registry.head_manifest(repo, digest, ACCEPT)
            )
            if head is not None and head.digest == digest:
                try:
                    raw = self.store.content.read(digest)
                    return parse_manifest(raw, head.media_type or "", digest)
                except StoreError:
                    pass  # removed meanwhile (an `rmi`): fetch it
        return self._fetch_manifest(repo, digest, expected=digest)

    def _fetch_manifest(self, repo: str, reference: str, *, expected: str | None) -> Manifest:
        resp = self._retrying(
            f"manifest {reference}",
            lambda: self.registry.get_manifest(
                repo, reference, ACCEPT, max_bytes=MAX_MANIFEST_BYTES
            ),
        )
        raw = resp.body
        if resp.media_type in SCHEMA1_TYPES:
            # Over the canonical payload (signatures stripped), checked first.
            digest = schema1.manifest_digest(raw, expected)
            if resp.digest and resp.digest != digest:
                raise ManifestVerificationError(
                    f"manifest verification failed for digest {resp.digest}: "
                    f"the payload hashes to {digest}"
                )
            return parse_manifest(raw, resp.media_type, digest)
        if expected is not None:
            digest = expected
            if resp.media_type not in SCHEMA1_TYPES:
                verify_manifest_digest(raw, expected)
        else:
            digest = sha256_bytes(raw)
            if resp.digest and resp.digest != digest and resp.media_type not in SCHEMA1_TYPES:
                raise ManifestVerificationError(
                    f"manifest verification failed for digest {resp.digest}: "
                    f"the bytes hash to {digest}"
                )
        return parse_manifest(raw, resp.media_type, digest)

    def _select(self, index: ManifestIndex, depth: int = 1) -> Manifest:
        """The best entry for the wanted platform, following nested indexes
        (`depth`: how deep `index` is, the top one being 1)."""
        want = self.options.platform
        known = IMAGE_MANIFEST_TYPES | INDEX_TYPES | SCHEMA1_TYPES
        entries = [(d, d.platform) for d in index.manifests if d.media_type in known]
        repo = self.repo
        name = self.ref.familiar()
        for desc in rank_manifests(entries, want):
            # Bounds set by the registry's answer; no image comes near them.
            if self._manifests_read >= MAX_MANIFESTS_PER_PULL:
                raise ManifestError(
                    f"refusing {name}: its manifest list makes the pull fetch more than "
                    f"{MAX_MANIFESTS_PER_PULL} manifests (the limit); the registry's answer is "
                    "broken or hostile: pull a platform's manifest by digest (NAME@sha256:...)"
                )
            self._manifests_read += 1
            child = self._manifest_by_digest(repo, desc.digest)
            if isinstance(child, ManifestIndex):
                if depth >= MAX_INDEX_DEPTH:
                    raise ManifestError(
                        f"refusing {name}: its manifest list nests indexes more than "
                        f"{MAX_INDEX_DEPTH} deep (the limit); the registry's answer is broken "
                        "or hostile: pull a platform's manifest by digest (NAME@sha256:...)"
                    )
                try:
                    return self._select(child, depth + 1)
                except NoMatchingPlatformError:
                    continue
            self._chosen_by_platform = desc.platform is not None
            return child
        raise NoMatchingPlatformError(
            f"no matching manifest for {format_all(want)} in the manifest list entries"
        )

    def _warn_platform_mismatch(self, image: Image) -> None:
        """docker's warning when the platform was asked for and the image
        pulled (a single-platform one, or an index entry without a platform)
        is for another: pulled all the same, as docker does."""
        want = self.options.platform
        got = Platform(image.platform.os, image.platform.architecture, image.platform.variant)
        if (
            not self.options.explicit_platform
            or self._chosen_by_platform
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
                return self._record(ref, top, manifest, None, ())
            except _ImageGone:
                pass  # removed meanwhile (an `rmi`): pull it
        downloaded = self._download_all(config_desc, manifest.layers)
        for attempt in range(3):
            try:
                config = self._load_config(config_desc.digest, len(manifest.layers))
                break
            except StoreError:
                # A concurrent `imgpull rmi` removed the config after we saw
                # it (our blobs are only protected once recorded): fetch again.
                if attempt == 2:
                    raise
                self._download_all(config_desc, [])
        diff_ids = self._diff_ids(manifest.layers)
        # Nothing (image, references) is recorded unless they match.
        check_diff_ids(config["rootfs"]["diff_ids"], diff_ids)
        self._registered(downloaded)
        return self._record(ref, top, manifest, config, diff_ids)

    def _download_all(
        self, config: Descriptor | None, layers: Sequence[Descriptor]
    ) -> list[Descriptor]:
        """Download the config and the layers not in the store; returns the
        layers downloaded (each digest once), in manifest order."""
        limit = max(1, self.options.max_concurrent_downloads)
        seen: set[str] = set()
        todo: list[Descriptor] = []
        for layer in layers:
            if self.store.content.exists(layer.digest):
                self.emit(_layer_event(ALREADY_EXISTS, layer))
            elif layer.digest not in seen:
                seen.add(layer.digest)
                todo.append(layer)
                self.emit(_layer_event(PULLING_FS_LAYER, layer))
        for layer in todo[limit:]:
            self.emit(_layer_event(WAITING, layer))

        done = threading.Event()
        reporter = threading.Thread(target=self._report, args=(done,), daemon=True)
        reporter.start()
        # The config has its own thread so that it never queues behind layers.
        # Layer threads outnumber the download slots, so that one blob's
        # commit (verify, fsync, rename) overlaps the next one's download.
        # The Client's service schedules them: its slots, each digest once.
        fetch = self._transfers.fetch
        futures: list[Future[None]] = [
            *([fetch(self._source, config, layer=False, small=True)] if config else []),
            *(fetch(self._source, d, layer=True) for d in todo),
        ]
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
        self._transfers.settle(_SETTLE)

    def _registered(self, downloaded: Iterable[Descriptor]) -> None:
        """Docker's last two statuses of a downloaded layer, once its diffID
        (computed while it downloaded) has been checked against the config."""
        for layer in downloaded:
            # With its byte count, as docker's (so no plain line shows it).
            size = layer.size if layer.size >= 0 else self.store.content.size(layer.digest)
            self.emit(_layer_event(EXTRACTING, layer, size, size))
            self.emit(_layer_event(PULL_COMPLETE, layer, total=size))

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
        if not content.exists(layer.digest):
            # Removed meanwhile (an `rmi`): fetch it again, which records it.
            self._transfers.download(self._source, layer, layer=True)
            record = meta.layer_diff_id(layer.digest)
            if record is not None:
                return record.diff_id
        diff_id = _diff_id(content.path(layer.digest), self.options.max_ratio)
        meta.record_layer(layer.digest, diff_id, None, self.host, self.repo)
        return diff_id

    def _report(self, done: threading.Event) -> None:
        while not done.wait(self.options.progress_interval):
            for event in self._transfers.downloading():
                self.emit(event)

    def _retrying(self, what: str, call: Callable[[], Any]) -> Any:
        attempt = 0
        while True:
            attempt += 1
            self._token.check()
            try:
                return call()
            except ImgpullError as exc:
                delay = self.options.retry.delay(attempt, exc)
                if delay is None:
                    raise
                self._token.sleep(delay)

    def _pull_schema1(self, ref: Reference, top: Manifest, manifest: Schema1Manifest) -> Image:
        """Docker's pullSchema1: the plan and the config come from schema1.py."""
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
        self._registered(downloaded)
        return self._record(
            ref, image_manifest if top is manifest else top, image_manifest, loaded, diff_ids
        )

    # Record ---------------------------------------------------------------

    def _stored_config(self, image_id: str) -> dict[str, Any]:
        """The config of a stored image (checked when it was recorded), read
        inside a transaction; _ImageGone when the image has been removed."""
        if self.store.meta.get_image(image_id) is None:
            raise _ImageGone(image_id)
        config: dict[str, Any] = json.loads(self.store.content.read(image_id))
        return config

    def _load_config(self, digest: str, layer_count: int) -> dict[str, Any]:
        try:
            config = json.loads(self.store.content.read(digest))
        # ValueError: bad UTF-8/JSON, over-long integers; RecursionError: deep nesting.
        except (ValueError, RecursionError) as exc:
            raise ManifestError(f"image configuration {digest} is not valid JSON: {exc}") from None
        if not isinstance(config, dict):
            raise ManifestError(f"image configuration {digest} is not a JSON object")
        rootfs = config.get("rootfs")
        if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
            raise ManifestError("invalid rootfs in image configuration")
        diff_ids = rootfs.get("diff_ids")
        if not isinstance(diff_ids, list) or len(diff_ids) != layer_count:
            raise ManifestError("layers from manifest don't match image configuration")
        want_os = self.options.platform.os
        got_os = config.get("os") or want_os
        if got_os != want_os:
            raise UnsupportedManifestError(
                f'image operating system "{got_os}" cannot be used on this platform ({want_os})'
            )
        return config

    def _record(
        self,
        ref: Reference,
        top: Manifest,
        manifest: ImageManifest,
        config: dict[str, Any] | None,
        diff_ids: Sequence[str],
    ) -> Image:
        """Store the manifests and record the pull: one transaction, so a crash
        leaves the store as before or after it, and pays for one commit.

        `config` None: the image is stored already (`_pull_image`); only the
        manifests and references are recorded, or _ImageGone is raised when
        it has been removed meanwhile.
        """
        content, meta = self.store.content, self.store.meta
        image_id = manifest.config.digest
        known = config is None
        manifests = {top.digest: top, manifest.digest: manifest}.values()
        # A stored image's own blobs are safe while its row stands.
        blobs = () if known else {d.digest: d for d in (manifest.config, *manifest.layers)}.values()
        # A concurrent `rmi` may delete blobs this pull found present (and so
        # did not download): it deletes a file only inside a write transaction
        # and only while nothing uses it (Store.delete_blob). So a check made
        # inside the transaction that records our image is conclusive, and
        # once the image is committed its blobs are safe. When something is
        # gone, that same transaction pins every blob of the image (counts
        # them as used), so that no removal takes them while we fetch what is
        # gone: the second attempt succeeds. Pins go with the record.
        pin = f"pull:{os.getpid()}:{id(self)}:{time.time()}"
        pinned = False
        try:
            for _ in range(3):
                for m in manifests:
                    content.put(m.raw, m.digest)
                with meta.transaction():
                    if known:
                        config = self._stored_config(image_id)
                        # Its diffIDs are recorded, unless a store of schema < 3
                        # recorded it: then they are its config's (checked then).
                        recorded = meta.image_rootfs(image_id)
                        diff_ids = [] if recorded else config["rootfs"]["diff_ids"]
                    assert config is not None
                    gone = [d for d in blobs if not content.exists(d.digest)]
                    if not gone and all(content.exists(m.digest) for m in manifests):
                        platform = _config_platform(config)
                        updated, kept = self._record_image(
                            ref, top, manifest, config, blobs, known=known
                        )
                        if diff_ids:
                            meta.set_image_rootfs(image_id, diff_ids, chain_ids(diff_ids))
                        if pinned:
                            meta.unpin_blobs(pin)
                            pinned = False
                        break
                    meta.pin_blobs(
                        pin, [*(d.digest for d in blobs), *(m.digest for m in manifests)]
                    )
                    pinned = True
                for d in gone:
                    self._transfers.download(self._source, d, layer=d is not manifest.config)
            else:
                raise StoreError(
                    f"blobs of {ref.familiar()} keep disappearing from the store as they are "
                    "pulled; try again"
                )
        finally:
            if pinned:
                meta.unpin_blobs(pin)
        self.emit(ProgressEvent(f"Digest: {top.digest}"))
        if kept is not None:
            # As docker: the image is stored, but a digest reference never
            # moves (a pull by tag leaves it where it is without a word).
            new = short_id(image_id)
            raise ImageConflictError(
                f"Cannot overwrite digest {top.digest}: it names image {short_id(kept)}; the "
                f"{platform} image pulled is stored as {new} without a name: name it (imgpull "
                f"tag {new} NAME:TAG), or remove the digest reference (imgpull rmi "
                f"{replace(ref, tag=None).familiar()}) and pull again"
            )
        return Image(
            reference=ref,
            id=image_id,
            digest=top.digest,
            manifest_digest=manifest.digest,
            media_type=manifest.media_type,
            platform=platform,
            layers=manifest.layers,
            size=_image_size(manifest),
            updated=updated,
            downloaded_bytes=self._transfers.received,
            source=self.registry.base_url,
        )

    def _record_image(
        self,
        ref: Reference,
        top: Manifest,
        manifest: ImageManifest,
        config: dict[str, Any],
        blobs: Iterable[Descriptor],
        *,
        known: bool = False,
    ) -> tuple[bool, str | None]:
        """The rows of one pull, inside the caller's transaction (`known`: the
        image is stored, only its manifests and references are recorded).

        Returns whether the reference now points somewhere new, and for a
        pull by digest whose digest reference names another image, that
        image's ID (docker never moves a digest reference).
        """
        meta = self.store.meta
        image_id = manifest.config.digest
        platform = _config_platform(config)
        for m in {top.digest: top, manifest.digest: manifest}.values():
            meta.record_blob(m.digest, len(m.raw), m.media_type, self.host, self.repo)
        # Every blob, not only those fetched: a concurrent `rmi` may have
        # dropped the rows of one this pull found present.
        for d in blobs:
            meta.record_blob(d.digest, d.size, d.media_type, self.host, self.repo)
        if known:
            meta.add_image_manifests(image_id, [top.digest, manifest.digest])
        else:
            meta.add_image(
                ImageRecord(
                    id=image_id,
                    manifest_digest=manifest.digest,
                    media_type=manifest.media_type,
                    os=platform.os,
                    architecture=platform.architecture,
                    variant=platform.variant,
                    created=config.get("created")
                    if isinstance(config.get("created"), str)
                    else None,
                    size=_image_size(manifest),
                    pulled_at=time.time(),
                ),
                [LayerRecord(d.digest, d.size, d.media_type) for d in manifest.layers],
                manifests=[top.digest],
            )
        by_digest = f"{ref.name}@{top.digest}"
        current = meta.resolve(by_digest)
        if current is None:
            updated = meta.set_reference(by_digest, ref.name, None, top.digest, image_id)
        else:
            updated = False
        if ref.digest is None:
            updated = meta.set_reference(f"{ref.name}:{ref.tag}", ref.name, ref.tag, None, image_id)
        kept = current if ref.digest is not None and current not in (None, image_id) else None
        return updated, kept


def _layer_event(
    status: str, layer: Descriptor, current: int | None = None, total: int | None = None
) -> ProgressEvent:
    """A layer's event: its short id and full digest, its size when known."""
    size = total if total is not None else (layer.size if layer.size >= 0 else None)
    return ProgressEvent(status, short_id(layer.digest), current, size, digest=layer.digest)


def _diff_id(path: Path, max_ratio: int) -> str:
    """The diffID of a stored layer blob."""
    try:
        return diff_id_file(str(path), max_ratio=max_ratio)
    except ValueError as exc:
        raise ImgpullError(f"cannot read layer {path.name}: {exc}") from None


def _text(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) and value else None


def _config_platform(config: dict[str, Any]) -> Platform:
    return Platform(
        os=_text(config, "os") or "",
        architecture=_text(config, "architecture") or "",
        variant=_text(config, "variant"),
        os_version=_text(config, "os.version"),
    )


def _image_size(manifest: ImageManifest) -> int:
    return manifest.config.size + sum(d.size for d in manifest.layers)
