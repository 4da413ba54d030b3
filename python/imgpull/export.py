"""Exports of a local image (`imgpull export`, `Client.export`).

- `oci`: an OCI image layout directory (`oci-layout`, `index.json`, blobs):
  the manifest, its config and layers. An OCI manifest is the one pulled,
  byte for byte. A Docker v2s2 manifest is converted to OCI media types as
  `skopeo copy docker://… oci:…` does (skopeo's oci transport finds no
  image whose index entry has a Docker media type), config and layer blobs
  unchanged; so is the manifest built for a schema1 image. Blobs are hard
  links to the store's files where the filesystem allows, else reflinks
  (FICLONE), else copies: don't modify them in place. Each is hashed as it
  is exported (a link or reflink read once, a copy as it is written).
- `docker-archive`: the tar `docker save` writes and `docker load` and
  `skopeo ... docker-archive:` read: `manifest.json` ([{Config, RepoTags,
  Layers}]), `repositories`, `<config hex>.json` and `<diffID hex>/layer.tar`
  (uncompressed, so its sha256 is the diffID, checked against the config).
- `rootfs`: the layers applied in order to a directory by the native core
  (whiteouts, opaque directories, links, modes, mtimes, xattrs; owners and
  devices as root). Unsafe entries (`..`, absolute paths, writes through a
  symbolic link, hard links out), decompression bombs, and names or tar
  headers past their bounds (PATH_MAX, 1 MiB) raise ExtractError.

Every format is built beside DEST and appears there only once complete
(rootfs: extracted into DEST, which is emptied again on failure, its mode and
owner as before). DEST must not exist or be an empty directory (docker-archive:
must not exist), and must be neither inside the store nor hold it.

The store's copy of a blob can be damaged behind imgpull's back (a file
truncated or replaced): every blob an export writes is checked against its
digest (oci: as it is written; the config always; docker-archive and rootfs
check each layer's tar against its diffID as they write it, and a layer
failing that is then hashed to tell a damaged copy from a bad image). A
damaged blob stops the export with DamagedBlobError, which names it and
`imgpull verify --repair`.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Literal

from imgpull._core import (
    DEFAULT_MAX_RATIO,
    Extraction,
    copy_sha256,
    decompress_to,
    sha256_bytes,
    sha256_file,
)
from imgpull.errors import (
    CorruptLayerError,
    ExportError,
    ExtractError,
    ImgpullError,
    LayerMismatchError,
)
from imgpull.manifest import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, SCHEMA1_TYPES
from imgpull.reference import Reference
from imgpull.rootfs import check_dir_dest, check_outside_store, remove_tree, restore_dir
from imgpull.store import Store
from imgpull.verify import damaged, first_damaged, stored_blob, stored_layers

__all__ = [
    "DEFAULT_MAX_RATIO",
    "FORMATS",
    "ExportError",
    "ExportFormat",
    "ExtractError",
    "export_image",
]

ExportFormat = Literal["oci", "docker-archive", "rootfs"]
FORMATS: tuple[ExportFormat, ...] = ("oci", "docker-archive", "rootfs")
REF_NAME = "org.opencontainers.image.ref.name"
_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def export_image(
    store: Store,
    image_id: str,
    ref: Reference | None,
    fmt: str,
    dest: str | os.PathLike[str],
    *,
    max_ratio: int = DEFAULT_MAX_RATIO,
    max_bytes: int | None = None,
) -> Path:
    """Export the stored image `image_id` as `fmt` to `dest`; returns `dest`.

    `ref` names the image in the export (OCI ref.name annotation = its tag,
    docker-archive RepoTags); None for an image given by ID.
    """
    out = Path(dest)
    check_outside_store(out, store, ExportError)
    # How a damaged blob's error names the image for `imgpull verify --repair`.
    repair_ref = ref.familiar() if ref is not None else image_id
    try:
        if fmt == "oci":
            _export_oci(store, image_id, ref, out, repair_ref)
        elif fmt == "docker-archive":
            _export_docker_archive(store, image_id, ref, out, repair_ref)
        elif fmt == "rootfs":
            _export_rootfs(
                store, image_id, out, repair_ref, max_ratio=max_ratio, max_bytes=max_bytes
            )
        else:
            raise ExportError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    except (OSError, ValueError) as exc:  # a corrupt blob, a file error
        if isinstance(exc, ImgpullError) and not isinstance(exc, CorruptLayerError):
            raise  # a bad reference or platform: already says what is wrong
        raise ExportError(f"export to {out} failed: {exc}") from exc
    return out


# Shared ----------------------------------------------------------------------


def _read_checked(store: Store, digest: str, repair_ref: str) -> bytes:
    """A small blob of the store (a manifest, a config), checked against its
    digest; else DamagedBlobError, naming `repair_ref` for its repair."""
    data = store.content.read(digest)
    got = sha256_bytes(data)
    if got != digest:
        raise damaged(digest, f"hashes to {got}", repair_ref)
    return data


def _check_layers(
    store: Store, digests: list[str], repair_ref: str, exc: BaseException
) -> BaseException:
    """`exc` (a layer that does not decompress, or is not its diffID), unless
    the store's copy of one of `digests` is damaged: then the error saying so
    (a refetch repairs that; a bad image stays bad)."""
    found = first_damaged(store, digests)
    return exc if found is None else damaged(*found, repair_ref)


def _manifest(store: Store, image_id: str, repair_ref: str) -> tuple[bytes, str]:
    """The image's manifest, as an OCI layout holds it (bytes, media type).

    An OCI manifest is kept byte for byte. A Docker v2s2 manifest is
    converted as `skopeo copy docker://... oci:...` does (skopeo refuses
    other media types in an OCI layout's index): the media types mapped, the
    config and layer blobs unchanged. A schema1 image gets the manifest of
    its stored (converted) config and layers.
    """
    image = store.meta.get_image(image_id)
    if image is None:
        raise ExportError(f"No such image: {image_id}")
    if image.media_type == OCI_MANIFEST:
        return _read_checked(store, image.manifest_digest, repair_ref), OCI_MANIFEST
    if image.media_type in SCHEMA1_TYPES:
        config: dict[str, Any] = {"digest": image_id, "size": store.content.size(image_id)}
        layers: list[dict[str, Any]] = [
            {"mediaType": lr.media_type, "digest": lr.digest, "size": lr.size}
            for lr in store.meta.image_layers(image_id)
        ]
    else:
        docker = json.loads(_read_checked(store, image.manifest_digest, repair_ref))
        config, layers = docker["config"], docker.get("layers", [])
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config["digest"], "size": config["size"]},
        "layers": [_oci_layer(layer) for layer in layers],
    }
    return json.dumps(manifest, separators=(",", ":")).encode(), OCI_MANIFEST


_OCI_LAYER_TYPES = {
    "application/vnd.docker.image.rootfs.diff.tar.gzip": (
        "application/vnd.oci.image.layer.v1.tar+gzip"
    ),
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    ),
    "application/vnd.docker.image.rootfs.diff.tar": "application/vnd.oci.image.layer.v1.tar",
}


def _oci_layer(layer: dict[str, Any]) -> dict[str, Any]:
    media_type = layer.get("mediaType") or "application/vnd.docker.image.rootfs.diff.tar.gzip"
    out: dict[str, Any] = {
        "mediaType": _OCI_LAYER_TYPES.get(media_type, media_type),
        "digest": layer["digest"],
        "size": layer["size"],
    }
    if layer.get("urls"):
        out["urls"] = layer["urls"]
    return out


def _share(src: Path, dst: Path) -> str:
    """dst as a hard link to src, else a reflink, else a copy; returns the
    digest of dst's bytes, read once: a link or reflink hashed once made,
    a copy hashed as it is written."""
    try:
        os.link(src, dst)
        linked = True
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        linked = False
    if not linked:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            try:
                fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
                linked = True
            except OSError:
                pass
    return sha256_file(str(dst)) if linked else copy_sha256(str(src), str(dst))


# oci ------------------------------------------------------------------------------


def _export_oci(
    store: Store, image_id: str, ref: Reference | None, dest: Path, repair_ref: str
) -> None:
    existed = check_dir_dest(dest, ExportError)
    raw, media_type = _manifest(store, image_id, repair_ref)
    manifest = json.loads(raw)
    image = store.meta.get_image(image_id)
    assert image is not None
    manifest_digest = sha256_bytes(raw)
    wanted = [manifest["config"]["digest"], *(lr["digest"] for lr in manifest.get("layers", []))]
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        blobs = tmp / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        for digest in dict.fromkeys(wanted):
            got = _share(stored_blob(store, digest), blobs / digest.split(":", 1)[1])
            if got != digest:
                raise damaged(digest, f"hashes to {got}", repair_ref)
        (blobs / manifest_digest.split(":", 1)[1]).write_bytes(raw)
        descriptor: dict[str, Any] = {
            "mediaType": media_type,
            "digest": manifest_digest,
            "size": len(raw),
            "platform": {"architecture": image.architecture, "os": image.os},
        }
        if image.variant:
            descriptor["platform"]["variant"] = image.variant
        if ref is not None and ref.tag is not None:
            descriptor["annotations"] = {REF_NAME: ref.tag}
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]}
        (tmp / "index.json").write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        tmp.chmod(0o755)
        if existed:
            dest.rmdir()  # empty, checked above
        os.rename(tmp, dest)
    except BaseException:
        remove_tree(tmp)
        raise


# docker-archive -----------------------------------------------------------------


def _export_docker_archive(
    store: Store, image_id: str, ref: Reference | None, dest: Path, repair_ref: str
) -> None:
    if dest.exists() or dest.is_symlink():
        raise ExportError(f"{dest} exists")
    if not dest.parent.is_dir():
        raise ExportError(f"{dest.parent} is not a directory")
    config = _read_checked(store, image_id, repair_ref)
    layers = stored_layers(store, image_id)
    config_hex = image_id.split(":", 1)[1]
    repo_tags: list[str] = []
    repositories: dict[str, dict[str, str]] = {}
    if ref is not None and ref.tag is not None:
        name = ref.familiar_name
        repo_tags.append(f"{name}:{ref.tag}")
        if layers:
            repositories[name] = {ref.tag: layers[-1][1].split(":", 1)[1]}
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    part = work / "archive.tar"
    try:
        with (
            open(part, "wb") as fileobj,
            tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            paths: list[str] = []
            parent = ""
            done: set[str] = set()
            for digest, diff_id in layers:
                hexpart = diff_id.split(":", 1)[1]
                paths.append(f"{hexpart}/layer.tar")
                if hexpart in done:
                    continue
                done.add(hexpart)
                layer_tar = work / "layer.tar"
                try:
                    got = decompress_to(str(stored_blob(store, digest)), str(layer_tar))
                except CorruptLayerError as exc:
                    raise _check_layers(store, [digest], repair_ref, exc) from None
                if got != diff_id:
                    raise _check_layers(
                        store,
                        [digest],
                        repair_ref,
                        ExportError(
                            f"layer {digest} decompresses to {got}, "
                            f"not the config's diffID {diff_id}"
                        ),
                    )
                _add_dir(tar, hexpart)
                _add_bytes(tar, f"{hexpart}/VERSION", b"1.0")
                v1: dict[str, Any] = {"id": hexpart, "created": "1970-01-01T00:00:00Z"}
                if parent:
                    v1["parent"] = parent
                _add_bytes(tar, f"{hexpart}/json", json.dumps(v1).encode())
                info = _info(f"{hexpart}/layer.tar", layer_tar.stat().st_size)
                with open(layer_tar, "rb") as data:
                    tar.addfile(info, data)
                layer_tar.unlink()
                parent = hexpart
            _add_bytes(tar, f"{config_hex}.json", config)
            manifest = [{"Config": f"{config_hex}.json", "RepoTags": repo_tags, "Layers": paths}]
            _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
            if repositories:
                _add_bytes(tar, "repositories", json.dumps(repositories).encode())
        os.chmod(part, 0o644)
        os.rename(part, dest)
    finally:
        remove_tree(work)


def _info(name: str, size: int, *, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, 0
    return info


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = _info(name, 0, mode=0o755)
    info.type = tarfile.DIRTYPE
    tar.addfile(info)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_info(name, len(data)), io.BytesIO(data))


# rootfs ---------------------------------------------------------------------------


def _export_rootfs(
    store: Store,
    image_id: str,
    dest: Path,
    repair_ref: str,
    *,
    max_ratio: int,
    max_bytes: int | None,
) -> None:
    existed = check_dir_dest(dest, ExportError)
    _read_checked(store, image_id, repair_ref)  # the diffIDs come from it
    # Each layer's tar is hashed as it is applied: a layer that is not its
    # diffID stops the export there.
    pairs = stored_layers(store, image_id)
    layers = [(str(stored_blob(store, digest)), diff_id) for digest, diff_id in pairs]
    if not existed:
        dest.mkdir(mode=0o755)
    try:
        Extraction(str(dest), max_ratio=max_ratio, max_bytes=max_bytes).apply(layers)
    except BaseException as exc:
        try:
            restore_dir(dest, before=existed)
        except OSError as err:
            exc.add_note(f"{dest} holds part of the image: it could not be emptied ({err})")
        # What a damaged blob can look like (its tar or its data broken).
        bad_layer = isinstance(exc, CorruptLayerError) or (
            isinstance(exc, ExtractError) and exc.kind != "cancelled"
        )
        if not bad_layer:
            raise
        if isinstance(exc, ExtractError) and exc.kind == "diffid":
            exc = LayerMismatchError(f"image {image_id}: {exc}")
        raise _check_layers(store, [d for d, _ in pairs], repair_ref, exc) from None
