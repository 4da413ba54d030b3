"""Resolving a pull: the reference to its manifest, an index to its entry
for the wanted platform (pull-semantics.md §3 and §4).

A Resolver reads manifests for one pull: from the registry (HEAD, then GET,
retried as the pull's RetryPolicy says), or from the store when it holds the
bytes the registry names. It bounds what an index can make it read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from imgpull._core import sha256_bytes
from imgpull.errors import (
    ImgpullError,
    ManifestError,
    ManifestUnknownError,
    ManifestVerificationError,
    NoMatchingPlatformError,
    StoreError,
)
from imgpull.manifest import (
    ACCEPT,
    IMAGE_MANIFEST_TYPES,
    INDEX_TYPES,
    MAX_INDEX_DEPTH,
    MAX_MANIFEST_BYTES,
    MAX_MANIFESTS_PER_PULL,
    SCHEMA1_TYPES,
    Manifest,
    ManifestIndex,
    parse_manifest,
    verify_manifest_digest,
)
from imgpull.platform import Platform, format_all, rank_manifests
from imgpull.progress import ProgressCallback, ProgressEvent
from imgpull.reference import Reference
from imgpull.registry import RegistryClient
from imgpull.registry.client import ManifestHead
from imgpull.retry import RetryPolicy
from imgpull.store import Store
from imgpull.transfer import CancelToken


class Resolver:
    """Finds the manifests of one pull."""

    def __init__(
        self,
        registry: RegistryClient,
        store: Store,
        platform: Platform,
        retry: RetryPolicy,
        emit: ProgressCallback,
        token: CancelToken,
    ) -> None:
        """`platform`: the one wanted; `token`: the pull's cancel token."""
        self.registry = registry
        self.store = store
        self.platform = platform
        self.retry = retry
        self.emit = emit
        self._token = token
        self._manifests_read = 1  # the top one; bounded by MAX_MANIFESTS_PER_PULL
        # Whether select() chose an index entry by its platform.
        self.chosen_by_platform = False

    def resolve(self, ref: Reference) -> Manifest:
        """The manifest `ref` names. By tag, when the store holds an image of
        that tag: its digest (HEAD), then the stored bytes when the store
        holds them, else fetched by digest (by tag again when a
        non-conforming registry does not serve that digest). By a tag the
        store does not know: one GET by tag."""
        repo = ref.repository
        if ref.digest is not None:
            return self._manifest_by_digest(repo, ref.digest)
        assert ref.tag is not None
        tag = ref.tag
        if self.store.meta.resolve(ref.key) is None:
            # Nothing a HEAD could spare: HEAD then GET would be two round
            # trips where one GET by tag (its digest from the bytes) does.
            # Docker Hub counts GETs, not HEADs, against its pull limit; an
            # up-to-date check (the tag is stored) stays one HEAD.
            return self.fetch_manifest(repo, tag, expected=None)
        head: ManifestHead | None = self._retrying(
            f"manifest {tag}", lambda: self.registry.head_manifest(repo, tag, ACCEPT)
        )
        if head is None or head.digest is None:
            return self.fetch_manifest(repo, ref.tag, expected=None)
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
            return self.fetch_manifest(repo, head.digest, expected=head.digest)
        except ManifestUnknownError:
            self.emit(
                ProgressEvent(
                    f"Warning: the registry serves {ref.familiar()} by tag but not by its "
                    f"digest {head.digest}; it is not conforming, falling back to the tag"
                )
            )
            return self.fetch_manifest(repo, ref.tag, expected=None)

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
        return self.fetch_manifest(repo, digest, expected=digest)

    def fetch_manifest(self, repo: str, reference: str, *, expected: str | None) -> Manifest:
        """GET the manifest `reference` (tag or digest) of `repo`, verified
        against `expected` or else the registry's digest header."""
        resp = self._retrying(
            f"manifest {reference}",
            lambda: self.registry.get_manifest(
                repo, reference, ACCEPT, max_bytes=MAX_MANIFEST_BYTES
            ),
        )
        raw = resp.body
        if resp.media_type in SCHEMA1_TYPES:
            from imgpull import schema1  # schema1 images only

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

    def select(self, ref: Reference, index: ManifestIndex, depth: int = 1) -> Manifest:
        """The best entry for the wanted platform, following nested indexes
        (`depth`: how deep `index` is, the top one being 1) of the pull of `ref`."""
        want = self.platform
        known = IMAGE_MANIFEST_TYPES | INDEX_TYPES | SCHEMA1_TYPES
        entries = [(d, d.platform) for d in index.manifests if d.media_type in known]
        repo = ref.repository
        name = ref.familiar()
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
                    return self.select(ref, child, depth + 1)
                except NoMatchingPlatformError:
                    continue
            self.chosen_by_platform = desc.platform is not None
            return child
        raise NoMatchingPlatformError(
            f"no matching manifest for {format_all(want)} in the manifest list entries"
        )

    def _retrying(self, what: str, call: Callable[[], Any]) -> Any:
        attempt = 0
        while True:
            attempt += 1
            self._token.check()
            try:
                return call()
            except ImgpullError as exc:
                delay = self.retry.delay(attempt, exc)
                if delay is None:
                    raise
                self._token.sleep(delay)
