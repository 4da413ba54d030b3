"""Recording a pull: its manifests, image, layers and references stored in
one store transaction (pull-semantics.md §9), so that a crash leaves the
store as before or after it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from imgpull.errors import (
    ImageConflictError,
    ManifestError,
    StoreError,
    UnsupportedManifestError,
)
from imgpull.layers import chain_ids
from imgpull.manifest import Descriptor, ImageManifest, Manifest, short_id
from imgpull.platform import Platform
from imgpull.progress import ProgressCallback, ProgressEvent
from imgpull.reference import Reference
from imgpull.store import ImageRecord, LayerRecord, Store


class _ImageGone(Exception):
    """The stored image a pull meant to reuse was removed meanwhile (an rmi)."""


def load_config(store: Store, digest: str, layer_count: int, want_os: str) -> dict[str, Any]:
    """The config `digest` of an image of `layer_count` layers, read from the
    store and checked: JSON, its rootfs, its OS (`want_os`)."""
    try:
        config = json.loads(store.content.read(digest))
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
    got_os = config.get("os") or want_os
    if got_os != want_os:
        raise UnsupportedManifestError(
            f'image operating system "{got_os}" cannot be used on this platform ({want_os})'
        )
    return config


class Recorder:
    """Records the pulls of one repository (`host`, `repo`) into one store."""

    def __init__(
        self,
        store: Store,
        host: str,
        repo: str,
        emit: ProgressCallback,
        refetch: Callable[[Descriptor, bool], None],
    ) -> None:
        """`refetch(desc, layer)`: download a blob again (it was removed from
        the store meanwhile), `layer` unless it is the config."""
        self.store = store
        self.host = host
        self.repo = repo
        self.emit = emit
        self._refetch = refetch

    def _stored_config(self, image_id: str) -> dict[str, Any]:
        """The config of a stored image (checked when it was recorded), read
        inside a transaction; _ImageGone when the image has been removed."""
        if self.store.meta.get_image(image_id) is None:
            raise _ImageGone(image_id)
        config: dict[str, Any] = json.loads(self.store.content.read(image_id))
        return config

    def record(
        self,
        ref: Reference,
        top: Manifest,
        manifest: ImageManifest,
        config: dict[str, Any] | None,
        diff_ids: Sequence[str],
        *,
        verified: bool = True,
    ) -> tuple[Platform, bool]:
        """Store the manifests and record the pull: one transaction, so a crash
        leaves the store as before or after it, and pays for one commit.

        `verified` False: the layers' diffIDs were not checked (a fetch-only
        pull); the image is recorded as such (imgpull.verify).

        `config` None: the image is stored already (Puller._pull_image); only
        the manifests and references are recorded, or _ImageGone is raised
        when it has been removed meanwhile.

        Returns the image's platform (its config's) and whether the reference
        now points somewhere new.
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
                        # A fetch-only pull's image stays unverified.
                        recorded = meta.image_rootfs(image_id)
                        checked = not recorded and meta.is_verified(image_id)
                        diff_ids = config["rootfs"]["diff_ids"] if checked else []
                    assert config is not None
                    gone = [d for d in blobs if not content.exists(d.digest)]
                    if not gone and all(content.exists(m.digest) for m in manifests):
                        platform = _config_platform(config)
                        updated, kept = self._record_image(
                            ref, top, manifest, config, blobs, known=known
                        )
                        if diff_ids:
                            meta.set_image_rootfs(image_id, diff_ids, chain_ids(diff_ids))
                        elif not known and not verified:
                            meta.mark_unverified(image_id)
                        if pinned:
                            meta.unpin_blobs(pin)
                            pinned = False
                        break
                    meta.pin_blobs(
                        pin, [*(d.digest for d in blobs), *(m.digest for m in manifests)]
                    )
                    pinned = True
                for d in gone:
                    self._refetch(d, d is not manifest.config)
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
        return platform, updated

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
                    size=image_size(manifest),
                    pulled_at=time.time(),
                ),
                [LayerRecord(d.digest, d.size, d.media_type) for d in manifest.layers],
                manifests=[top.digest],
            )
        by_digest = ref.name_only().with_digest(top.digest)
        current = meta.resolve(by_digest.key)
        updated = meta.point(by_digest, image_id) if current is None else False
        if ref.digest is None:
            updated = meta.point(ref, image_id)
        kept = current if ref.digest is not None and current not in (None, image_id) else None
        return updated, kept


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


def image_size(manifest: ImageManifest) -> int:
    return manifest.config.size + sum(d.size for d in manifest.layers)
