"""Checking a stored image's layers against its config (`imgpull verify`).

A full pull checks every layer's diffID while it downloads. A fetch-only
pull (`pull --fetch-only`) checks only the blobs' digests, and marks the
image unverified; its diffIDs are then checked the first time they are
needed (an export, `pull --rootfs`, inspect, a full pull of the same image,
or `imgpull verify`), here, and recorded: the image is then verified.

`imgpull verify` also hashes every blob of the image: a file damaged behind
imgpull's back (DamagedBlobError, which says to run `imgpull verify
--repair`; Client.verify removes and refetches it then).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from imgpull._core import DEFAULT_MAX_RATIO, diff_id_file, sha256_file
from imgpull.errors import CorruptLayerError, DamagedBlobError, LayerMismatchError, StoreError
from imgpull.layers import chain_ids
from imgpull.store import Store

# Layers hashed at once: inflating is one core's work per layer.
_WORKERS = 2


def config_diff_ids(store: Store, image_id: str) -> list[str]:
    """The diffIDs the stored image's config gives, bottom layer first."""
    try:
        config = json.loads(store.content.read(image_id))
        diff_ids = config["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise StoreError(
            f"the configuration of image {image_id} cannot be read from the store ({exc}): "
            "pull the image again"
        ) from None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise StoreError(f"the configuration of image {image_id} has no valid rootfs.diff_ids")
    return diff_ids


def stored_layers(store: Store, image_id: str) -> list[tuple[str, str]]:
    """(layer blob digest, the config's diffID) of a stored image, bottom
    first; LayerMismatchError when their counts differ."""
    want = config_diff_ids(store, image_id)
    layers = [lr.digest for lr in store.meta.image_layers(image_id)]
    if len(layers) != len(want):
        raise LayerMismatchError(
            f"image {image_id}: {len(layers)} layers but {len(want)} diffIDs in its configuration"
        )
    return list(zip(layers, want, strict=True))


def mismatch(image: str, layer: str, got: str, want: str) -> LayerMismatchError:
    """The error of a layer of `image` (a reference or an ID) whose tar is
    not the config's diffID."""
    return LayerMismatchError(
        f"layer {layer} of {image} has diffID {got}, not {want} as the image's "
        "configuration says: the image is corrupt; remove it (imgpull rmi) and pull it again"
    )


def record_verified(store: Store, image_id: str, diff_ids: Sequence[str]) -> None:
    """The image's layers were checked to be these diffIDs (its config's)."""
    store.meta.set_image_rootfs(image_id, diff_ids, chain_ids(diff_ids))


def ensure_verified(store: Store, image_id: str, *, max_ratio: int = DEFAULT_MAX_RATIO) -> None:
    """Check an unverified (fetch-only) image's diffIDs; nothing for one
    already checked."""
    if not store.meta.is_verified(image_id):
        verify_image(store, image_id, max_ratio=max_ratio)


def damaged(digest: str, problem: str, name: str) -> DamagedBlobError:
    """The error of the stored blob `digest`, whose file `problem` ("is
    missing", "hashes to …"), of the image `name` (a reference or an ID)."""
    return DamagedBlobError(
        f"blob {digest} in the store {problem}: the store is damaged; "
        f"run `imgpull verify --repair {name}` to fetch it again",
        digest,
    )


def blob_damage(store: Store, digest: str) -> str | None:
    """What is wrong with the stored file of `digest` ("is missing",
    "hashes to …"), read in full; None when it hashes to its digest."""
    try:
        got = sha256_file(str(store.content.path(digest)))
    except FileNotFoundError:
        return "is missing"
    return None if got == digest else f"hashes to {got}"


def first_damaged(store: Store, digests: Sequence[str]) -> tuple[str, str] | None:
    """(digest, what is wrong) of the first of `digests` whose stored file
    is missing or not its digest (blob_damage); None when all are sound."""
    for digest in dict.fromkeys(digests):
        problem = blob_damage(store, digest)
        if problem is not None:
            return digest, problem
    return None


def image_blobs(store: Store, image_id: str) -> list[str]:
    """The blobs of a stored image that its digest covers, each once: its
    manifest, config and layers."""
    image = store.meta.get_image(image_id)
    if image is None:
        raise StoreError(f"No such image: {image_id}")
    layers = [lr.digest for lr in store.meta.image_layers(image_id)]
    return list(dict.fromkeys([image.manifest_digest, image_id, *layers]))


def damaged_blobs(store: Store, image_id: str) -> dict[str, str]:
    """Each blob of the stored image (image_blobs) whose file is missing or
    not its digest: digest → what is wrong (blob_damage)."""
    found = {digest: blob_damage(store, digest) for digest in image_blobs(store, image_id)}
    return {digest: problem for digest, problem in found.items() if problem is not None}


def verify_image(
    store: Store,
    image_id: str,
    *,
    max_ratio: int = DEFAULT_MAX_RATIO,
    full: bool = False,
    name: str | None = None,
) -> list[str]:
    """Check the stored image's layers against its config's diffIDs and
    record them (the image is then verified); returns the diffIDs.

    A layer blob whose diffID is registered already (computed from these
    very bytes by an earlier pull) is not inflated again, unless `full`:
    then every blob of the image (manifest, config, layers) is hashed again
    and every layer inflated, as `imgpull verify` does. LayerMismatchError
    names the first layer that differs; DamagedBlobError the first blob
    missing or not matching its digest (`name`: how its message names the
    image, by default its ID).
    """
    meta = store.meta
    if meta.get_image(image_id) is None:
        raise StoreError(f"No such image: {image_id}")
    if full:  # first: the config itself may be damaged
        found = first_damaged(store, image_blobs(store, image_id))
        if found is not None:
            raise damaged(*found, name or image_id)
    pairs = stored_layers(store, image_id)
    layers = [digest for digest, _ in pairs]
    known: dict[str, str] = {}
    todo: list[str] = []
    for digest in dict.fromkeys(layers):
        record = None if full else meta.layer_diff_id(digest)
        if record is not None:
            known[digest] = record.diff_id
        else:
            todo.append(digest)

    def compute(digest: str) -> str:
        try:
            return diff_id_file(str(stored_blob(store, digest)), max_ratio=max_ratio)
        except CorruptLayerError as exc:
            raise CorruptLayerError(f"cannot read layer {digest}: {exc}") from None

    try:
        with ThreadPoolExecutor(_WORKERS, thread_name_prefix="imgpull-verify") as pool:
            known.update(zip(todo, pool.map(compute, todo), strict=True))
        for digest, diff_id in pairs:
            if known[digest] != diff_id:
                raise mismatch(f"image {image_id}", digest, known[digest], diff_id)
    except (CorruptLayerError, LayerMismatchError):
        # The store's copy of a layer inflated here may be what is wrong (not
        # hashed yet unless `full`): a refetch repairs that, not a bad image.
        found = None if full else first_damaged(store, todo)
        if found is None:
            raise
        raise damaged(*found, name or image_id) from None
    for digest in todo:
        sources = meta.blob_sources(digest)
        registry, repository = sources[0] if sources else ("", "")
        meta.record_layer(digest, known[digest], None, registry, repository)
    want = [diff_id for _, diff_id in pairs]
    record_verified(store, image_id, want)
    return want


def stored_blob(store: Store, digest: str) -> Path:
    """The file of a blob of the store (StoreError when it is missing)."""
    path = store.content.path(digest)
    if not path.is_file():
        raise StoreError(f"blob {digest} is missing from the store: pull the image again")
    return path
