"""Build container images without docker, push them with skopeo, read skopeo's pulls.

Images are written as OCI image layouts (``oci-layout``, ``index.json``,
``blobs/sha256/...``) straight from Python: gzip-compressed tar layers made
with :mod:`tarfile`, a real image config (``rootfs.diff_ids`` = sha256 of each
uncompressed tar) and an OCI manifest.  :func:`push` then copies a layout to a
:class:`~support.registry.RegistryServer` with ``skopeo copy`` as Docker v2
schema 2 or as OCI, and :func:`skopeo_pull_oci` pulls an image back with
skopeo, so tests can compare imgpull's result against skopeo's.

Everything is deterministic: the same specs give the same digests (fixed
mtimes, owners and gzip headers; random bytes from a seeded PRNG).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Literal

from .registry import RegistryServer, require_tool

OCI_LAYOUT_VERSION = "1.0.0"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MT_OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
# How a layer blob is compressed (zstd needs the `zstandard` package); zstd
# and plain layers are OCI only: push them with fmt="oci".
Compression = Literal["gzip", "zstd", "none"]
_LAYER_MEDIA_TYPES = {
    "gzip": MT_OCI_LAYER_GZIP,
    "zstd": MT_OCI_LAYER_ZSTD,
    "none": MT_OCI_LAYER_TAR,
}
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

# 2024-01-01T00:00:00Z: a fixed time so tars and configs are reproducible.
FIXED_EPOCH = 1704067200
FIXED_CREATED = "2024-01-01T00:00:00Z"

_CHUNK = 1 << 20  # 1 MiB: big enough that per-call overhead vanishes on ~500 MB layers

PushFormat = Literal["v2s2", "oci", "v2s1"]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------
# Layer specs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class File:
    """A regular file in a :func:`files_layer`."""

    data: bytes
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = FIXED_EPOCH


@dataclass(frozen=True)
class Dir:
    """A directory in a :func:`files_layer` (parents are not added implicitly)."""

    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime: int = FIXED_EPOCH


@dataclass(frozen=True)
class Symlink:
    """A symbolic link; ``target`` is stored verbatim (relative or absolute)."""

    target: str


@dataclass(frozen=True)
class Hardlink:
    """A hard link to an earlier member of the same tar (path without leading ``/``)."""

    target: str


@dataclass(frozen=True)
class Whiteout:
    """An OCI whiteout: deletes ``path`` from lower layers (``.wh.<name>``)."""


@dataclass(frozen=True)
class OpaqueWhiteout:
    """An OCI opaque whiteout: hides everything lower layers put in this directory."""


Entry = bytes | str | File | Dir | Symlink | Hardlink | Whiteout | OpaqueWhiteout


@dataclass(frozen=True)
class RandomLayer:
    """A tar of ``files`` files holding ``size_bytes`` of incompressible bytes in all.

    ``compresslevel`` defaults to 0 (gzip with stored deflate blocks): the data
    doesn't compress anyway, and zlib level 1 on random bytes runs at ~25 MB/s
    where stored blocks run at >1 GB/s, which matters for benchmark-size images.
    """

    size_bytes: int
    seed: int
    files: int = 1
    prefix: str = "data"
    compresslevel: int = 0
    compression: Compression = "gzip"

    def key(self) -> str:
        key = (
            f"random:{self.size_bytes}:{self.seed}:{self.files}:{self.prefix}:{self.compresslevel}"
        )
        return key if self.compression == "gzip" else f"{key}:{self.compression}"


@dataclass(frozen=True)
class FilesLayer:
    """A tar of real files, directories, links and whiteouts, in the given order."""

    entries: tuple[tuple[str, Entry], ...]
    compresslevel: int = 6
    compression: Compression = "gzip"

    def key(self) -> str:
        return "files:" + hashlib.sha256(repr(self).encode()).hexdigest()


@dataclass(frozen=True)
class StreamLayer:
    """A layer whose tar bytes the test writes itself: ``chunks()`` yields them,
    compressed as they come. For hostile tars tarfile will not write or that
    are too big to hold (a 256 MiB GNU long name, a decompression bomb);
    ``name`` tells layers apart (history, LayoutCache)."""

    name: str
    chunks: Callable[[], Iterable[bytes]]
    compresslevel: int = 9
    compression: Compression = "gzip"

    def key(self) -> str:
        return f"stream:{self.name}:{self.compresslevel}:{self.compression}"


LayerSpec = RandomLayer | FilesLayer | StreamLayer


def random_layer(
    size_bytes: int,
    seed: int,
    *,
    files: int = 1,
    prefix: str = "data",
    compresslevel: int = 0,
    compression: Compression = "gzip",
) -> RandomLayer:
    """A layer of pseudo-random bytes (``size_bytes`` in total over ``files`` files)."""
    if size_bytes < 0 or files < 1:
        raise ValueError("size_bytes must be >= 0 and files >= 1")
    return RandomLayer(size_bytes, seed, files, prefix.strip("/"), compresslevel, compression)


def files_layer(
    entries: Mapping[str, Entry], *, compresslevel: int = 6, compression: Compression = "gzip"
) -> FilesLayer:
    """A layer of real files.

    ``entries`` maps a path (``etc/hostname``; a leading ``/`` is dropped) to
    ``bytes`` (a 0644 file), ``str`` (its UTF-8 text), :class:`File`,
    :class:`Dir`, :class:`Symlink`, :class:`Hardlink`, :class:`Whiteout` or
    :class:`OpaqueWhiteout`.  Order is kept, so put directories before their
    contents and hard-link targets before links.
    """
    norm = tuple((p.lstrip("/"), e) for p, e in entries.items())
    return FilesLayer(norm, compresslevel, compression)


# ---------------------------------------------------------------------------
# Writing blobs
# ---------------------------------------------------------------------------


class _LayerSink:
    """A write-only file for tarfile: hashes the tar, gzips it, hashes and stores the gzip.

    One pass, constant memory, so a 500 MB layer never sits in RAM.
    """

    def __init__(
        self, out: BinaryIO, compresslevel: int, compression: Compression = "gzip"
    ) -> None:
        self._out = out
        self._tar_hash = hashlib.sha256()
        self._gz_hash = hashlib.sha256()
        self._z: Any
        if compression == "zstd":
            import zstandard  # only the tests that build zstd layers need it

            self._z = zstandard.ZstdCompressor(level=max(1, compresslevel)).compressobj()
        elif compression == "none":
            self._z = _Identity()
        else:
            # wbits=31: gzip container; zlib writes mtime 0 and no name: reproducible.
            self._z = zlib.compressobj(compresslevel, zlib.DEFLATED, 31)
        self.tar_size = 0
        self.gz_size = 0

    def write(self, data: bytes) -> int:
        self._tar_hash.update(data)
        self.tar_size += len(data)
        self._emit(self._z.compress(data))
        return len(data)

    def tell(self) -> int:
        return self.tar_size

    def _emit(self, chunk: bytes) -> None:
        if chunk:
            self._gz_hash.update(chunk)
            self.gz_size += len(chunk)
            self._out.write(chunk)

    def finish(self) -> tuple[str, int, str, int]:
        """-> (gzip digest, gzip size, diff_id, tar size)."""
        self._emit(self._z.flush())
        return (
            "sha256:" + self._gz_hash.hexdigest(),
            self.gz_size,
            "sha256:" + self._tar_hash.hexdigest(),
            self.tar_size,
        )


class _Identity:
    """The compressobj interface, compressing nothing (plain tar layers)."""

    def compress(self, data: bytes) -> bytes:
        return bytes(data)

    def flush(self) -> bytes:
        return b""


class _RandomReader:
    """``read(n)`` of seeded pseudo-random bytes, for tarfile.addfile."""

    def __init__(self, rng: random.Random, size: int) -> None:
        self._rng = rng
        self._left = size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._left:
            n = self._left
        self._left -= n
        return self._rng.randbytes(n)


def _tarinfo(
    path: str,
    kind: bytes,
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = FIXED_EPOCH,
    size: int = 0,
    linkname: str = "",
) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(path)
    ti.type = kind
    ti.mode = mode
    ti.uid, ti.gid = uid, gid
    ti.uname = ti.gname = "root" if uid == 0 else ""
    ti.mtime = mtime
    ti.size = size
    ti.linkname = linkname
    return ti


def _write_tar(spec: LayerSpec, sink: _LayerSink) -> None:
    if isinstance(spec, StreamLayer):
        for chunk in spec.chunks():
            sink.write(chunk)
        return
    # PAX: long paths and big sizes without GNU extensions, as real images use.
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        tar.copybufsize = _CHUNK
        if isinstance(spec, RandomLayer):
            rng = random.Random(spec.seed)
            base, extra = divmod(spec.size_bytes, spec.files)
            tar.addfile(_tarinfo(spec.prefix, tarfile.DIRTYPE, mode=0o755))
            for i in range(spec.files):
                size = base + (1 if i < extra else 0)
                ti = _tarinfo(f"{spec.prefix}/blob-{i:04d}.bin", tarfile.REGTYPE, size=size)
                tar.addfile(ti, _RandomReader(rng, size))
            return
        for path, entry in spec.entries:
            _add_entry(tar, path, entry)


def _add_entry(tar: tarfile.TarFile, path: str, entry: Entry) -> None:
    if isinstance(entry, str):
        entry = entry.encode()
    if isinstance(entry, bytes):
        entry = File(entry)
    if isinstance(entry, File):
        ti = _tarinfo(
            path,
            tarfile.REGTYPE,
            mode=entry.mode,
            uid=entry.uid,
            gid=entry.gid,
            mtime=entry.mtime,
            size=len(entry.data),
        )
        tar.addfile(ti, io.BytesIO(entry.data))
    elif isinstance(entry, Dir):
        tar.addfile(
            _tarinfo(
                path.rstrip("/"),
                tarfile.DIRTYPE,
                mode=entry.mode,
                uid=entry.uid,
                gid=entry.gid,
                mtime=entry.mtime,
            )
        )
    elif isinstance(entry, Symlink):
        tar.addfile(_tarinfo(path, tarfile.SYMTYPE, mode=0o777, linkname=entry.target))
    elif isinstance(entry, Hardlink):
        tar.addfile(_tarinfo(path, tarfile.LNKTYPE, linkname=entry.target.lstrip("/")))
    elif isinstance(entry, Whiteout):
        head, _, name = path.rstrip("/").rpartition("/")
        tar.addfile(_tarinfo(f"{head}/.wh.{name}" if head else f".wh.{name}", tarfile.REGTYPE))
    elif isinstance(entry, OpaqueWhiteout):
        tar.addfile(_tarinfo(f"{path.rstrip('/')}/.wh..wh..opq", tarfile.REGTYPE))
    else:  # pragma: no cover - the Entry union is closed
        raise TypeError(f"unknown layer entry {entry!r} at {path}")


@dataclass(frozen=True)
class LayerInfo:
    """A layer blob as written: its compressed digest/size and its uncompressed diff_id/size."""

    digest: str
    size: int
    diff_id: str
    tar_size: int
    media_type: str
    spec: LayerSpec


class BlobStore:
    """``<layout>/blobs/sha256``: writes content-addressed blobs."""

    def __init__(self, layout_dir: Path) -> None:
        self.dir = layout_dir / "blobs" / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)
        # Layers written by this store, by spec key: images sharing a base
        # layer (built with store=) write it once.
        self._layers: dict[str, LayerInfo] = {}

    def path(self, digest: str) -> Path:
        return self.dir / digest.removeprefix("sha256:")

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        digest = sha256_digest(data)
        p = self.path(digest)
        if not p.exists():
            tmp = p.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(p)
        return digest, len(data)

    def put_layer(self, spec: LayerSpec) -> LayerInfo:
        done = self._layers.get(spec.key())
        if done is not None and self.path(done.digest).exists():
            return done
        fd, tmp_name = tempfile.mkstemp(dir=self.dir, prefix=".layer-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb", buffering=_CHUNK) as out:
                sink = _LayerSink(out, spec.compresslevel, spec.compression)
                _write_tar(spec, sink)
                digest, size, diff_id, tar_size = sink.finish()
            tmp.replace(self.path(digest))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        media_type = _LAYER_MEDIA_TYPES[spec.compression]
        info = LayerInfo(digest, size, diff_id, tar_size, media_type, spec)
        self._layers[spec.key()] = info
        return info


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """One image written into an OCI layout."""

    layout_dir: Path
    ref: str  # the org.opencontainers.image.ref.name in index.json
    manifest_digest: str  # of the OCI manifest in the layout (not of a pushed v2s2 one)
    manifest_size: int
    manifest: dict[str, Any]
    config_digest: str
    config: dict[str, Any]
    layers: tuple[LayerInfo, ...]
    platform: dict[str, str] = field(default_factory=dict)

    @property
    def layer_digests(self) -> list[str]:
        return [layer.digest for layer in self.layers]

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]

    @property
    def blob_digests(self) -> set[str]:
        """What a pull downloads besides the manifest: config and layers."""
        return {self.config_digest, *self.layer_digests}

    @property
    def total_layer_size(self) -> int:
        return sum(layer.size for layer in self.layers)

    def blob_path(self, digest: str) -> Path:
        return self.layout_dir / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    @property
    def oci_ref(self) -> str:
        """``oci:<dir>:<ref>``, the skopeo source for this image."""
        return f"oci:{self.layout_dir}:{self.ref}"


@dataclass(frozen=True)
class IndexInfo:
    """A multi-platform image (an OCI image index) written into an OCI layout."""

    layout_dir: Path
    ref: str
    index_digest: str
    index: dict[str, Any]
    images: tuple[ImageInfo, ...]

    @property
    def oci_ref(self) -> str:
        return f"oci:{self.layout_dir}:{self.ref}"


def _write_image(
    store: BlobStore,
    layout_dir: Path,
    layers: Iterable[LayerSpec],
    *,
    ref: str,
    architecture: str,
    os_name: str,
    variant: str | None,
    created: str,
    config: Mapping[str, Any] | None,
    config_extra: Mapping[str, Any] | None,
    annotations: Mapping[str, str] | None,
    os_version: str | None = None,
) -> ImageInfo:
    infos = tuple(store.put_layer(spec) for spec in layers)
    cfg: dict[str, Any] = {
        "created": created,
        "architecture": architecture,
        "os": os_name,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
            **(config or {}),
        },
        "rootfs": {"type": "layers", "diff_ids": [i.diff_id for i in infos]},
        "history": [
            {"created": created, "created_by": f"imgpull-tests: {i.spec.key()}"} for i in infos
        ],
    }
    if variant:
        cfg["variant"] = variant
    if os_version:
        cfg["os.version"] = os_version
    cfg.update(config_extra or {})
    config_bytes = json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
    config_digest, config_size = store.put_bytes(config_bytes)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": i.media_type, "digest": i.digest, "size": i.size} for i in infos],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    manifest_bytes = json.dumps(manifest, indent=2).encode()
    manifest_digest, manifest_size = store.put_bytes(manifest_bytes)
    platform = {"architecture": architecture, "os": os_name}
    if variant:
        platform["variant"] = variant
    if os_version:
        platform["os.version"] = os_version
    return ImageInfo(
        layout_dir,
        ref,
        manifest_digest,
        manifest_size,
        manifest,
        config_digest,
        cfg,
        infos,
        platform,
    )


def _write_layout_index(layout_dir: Path, descriptor: dict[str, Any]) -> None:
    (layout_dir / "oci-layout").write_text(json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
    index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": [descriptor]}
    (layout_dir / "index.json").write_text(json.dumps(index, indent=2))


def build_oci_layout(
    layout_dir: Path | str,
    layers: Iterable[LayerSpec],
    *,
    ref: str = "latest",
    architecture: str = "amd64",
    os_name: str = "linux",
    variant: str | None = None,
    created: str = FIXED_CREATED,
    config: Mapping[str, Any] | None = None,
    config_extra: Mapping[str, Any] | None = None,
    annotations: Mapping[str, str] | None = None,
    store: BlobStore | None = None,
) -> ImageInfo:
    """Write a one-image OCI layout into ``layout_dir`` (created; replaces its index.json).

    ``config`` is merged into the image config's ``config`` (Env, Cmd,
    Labels...); ``config_extra`` into the top level of the image config.
    ``store``: the layout's BlobStore, kept between calls so that layers
    shared by several images are written once.
    """
    layout_dir = Path(layout_dir)
    layout_dir.mkdir(parents=True, exist_ok=True)
    store = store or BlobStore(layout_dir)
    image = _write_image(
        store,
        layout_dir,
        layers,
        ref=ref,
        architecture=architecture,
        os_name=os_name,
        variant=variant,
        created=created,
        config=config,
        config_extra=config_extra,
        annotations=annotations,
    )
    _write_layout_index(
        layout_dir,
        {
            "mediaType": MT_OCI_MANIFEST,
            "digest": image.manifest_digest,
            "size": image.manifest_size,
            "annotations": {REF_NAME_ANNOTATION: ref},
        },
    )
    return image


def recompressed(image: ImageInfo, layout_dir: Path | str, compression: Compression) -> ImageInfo:
    """``image`` with its layers compressed another way: the same tars (diffIDs)
    and the same config bytes (image ID), other layer blobs; an OCI layout."""
    layout_dir = Path(layout_dir)
    layout_dir.mkdir(parents=True, exist_ok=True)
    store = BlobStore(layout_dir)
    infos = tuple(store.put_layer(replace(i.spec, compression=compression)) for i in image.layers)
    config_digest, config_size = store.put_bytes(image.blob(image.config_digest))
    manifest: dict[str, Any] = {
        **image.manifest,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": i.media_type, "digest": i.digest, "size": i.size} for i in infos],
    }
    manifest_digest, manifest_size = store.put_bytes(json.dumps(manifest, indent=2).encode())
    _write_layout_index(
        layout_dir,
        {
            "mediaType": MT_OCI_MANIFEST,
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {REF_NAME_ANNOTATION: image.ref},
        },
    )
    return replace(
        image,
        layout_dir=layout_dir,
        manifest_digest=manifest_digest,
        manifest_size=manifest_size,
        manifest=manifest,
        layers=infos,
    )


@dataclass(frozen=True)
class PlatformSpec:
    """One entry of a multi-platform image for :func:`build_oci_index_layout`."""

    layers: tuple[LayerSpec, ...]
    architecture: str = "amd64"
    os_name: str = "linux"
    variant: str | None = None
    os_version: str | None = None  # Windows: "10.0.20348.2113", in config and index entry


def build_oci_index_layout(
    layout_dir: Path | str,
    platforms: Iterable[PlatformSpec],
    *,
    ref: str = "latest",
    created: str = FIXED_CREATED,
    store: BlobStore | None = None,
) -> IndexInfo:
    """Write an OCI layout whose ``ref`` names an image index of several platforms.

    Push it with ``push(..., all_images=True)``. ``store``: as for build_oci_layout.
    """
    layout_dir = Path(layout_dir)
    layout_dir.mkdir(parents=True, exist_ok=True)
    store = store or BlobStore(layout_dir)
    images = tuple(
        _write_image(
            store,
            layout_dir,
            p.layers,
            ref=ref,
            architecture=p.architecture,
            os_name=p.os_name,
            variant=p.variant,
            created=created,
            config=None,
            config_extra=None,
            annotations=None,
            os_version=p.os_version,
        )
        for p in platforms
    )
    index: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": [
            {
                "mediaType": MT_OCI_MANIFEST,
                "digest": i.manifest_digest,
                "size": i.manifest_size,
                "platform": i.platform,
            }
            for i in images
        ],
    }
    index_digest, index_size = store.put_bytes(json.dumps(index, indent=2).encode())
    _write_layout_index(
        layout_dir,
        {
            "mediaType": MT_OCI_INDEX,
            "digest": index_digest,
            "size": index_size,
            "annotations": {REF_NAME_ANNOTATION: ref},
        },
    )
    return IndexInfo(layout_dir, ref, index_digest, index, images)


class LayoutCache:
    """Builds each distinct image once per session under ``root``.

    Keyed by the specs and options, so two tests asking for the same image
    share one layout (and its multi-hundred-MB blobs).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._images: dict[str, ImageInfo] = {}

    def get(self, layers: Iterable[LayerSpec], **options: Any) -> ImageInfo:
        specs = tuple(layers)
        key = hashlib.sha256(
            repr((tuple(s.key() for s in specs), sorted(options.items()))).encode()
        ).hexdigest()[:16]
        if key not in self._images:
            self._images[key] = build_oci_layout(self.root / key, specs, **options)
        return self._images[key]


# ---------------------------------------------------------------------------
# skopeo
# ---------------------------------------------------------------------------


def _skopeo(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    skopeo = require_tool("skopeo")
    # A private, empty auth file: never read the machine's ~/.docker or
    # containers/auth.json, so only the credentials a test passes count.
    with tempfile.TemporaryDirectory(prefix="imgpull-skopeo-") as tmp:
        authfile = Path(tmp) / "auth.json"
        authfile.write_text('{"auths": {}}')
        env = {**os.environ, "REGISTRY_AUTH_FILE": str(authfile)}
        proc = subprocess.run(
            [skopeo, *args], capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    if proc.returncode != 0:
        raise RuntimeError(
            f"skopeo {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr.strip()}"
        )
    return proc


def _transport_flags(registry: RegistryServer, side: Literal["src", "dest", ""]) -> list[str]:
    """TLS/credential flags for one side of a skopeo command (``""`` for inspect)."""
    pre = f"--{side}-" if side else "--"
    flags: list[str] = []
    if registry.cert_dir is not None:
        # Verify against the test CA: proves the certificate is right, too.
        flags += [f"{pre}cert-dir={registry.cert_dir}", f"{pre}tls-verify=true"]
    else:
        # Plain HTTP: tls-verify=false lets containers/image fall back to http.
        flags.append(f"{pre}tls-verify=false")
    if registry.credentials is not None:
        user, password = registry.credentials
        flags.append(f"{pre}creds={user}:{password}")
    return flags


def push(
    source: ImageInfo | IndexInfo | Path | str,
    registry: RegistryServer,
    repo_tag: str,
    format: PushFormat = "v2s2",
    *,
    ref: str | None = None,
    all_images: bool = False,
    timeout: float = 600.0,
) -> str:
    """``skopeo copy`` an image from an OCI layout to ``registry/<repo_tag>``.

    ``format`` is ``"v2s2"`` (Docker v2 schema 2), ``"oci"``, or ``"v2s1"``
    (Docker schema 1, signed by skopeo; the registry needs schema1 enabled);
    layer blobs keep their digests either way, only the manifest (and its
    digest) differs.
    ``repo_tag`` may end in ``@sha256:...`` instead of ``:tag``.  Returns the
    digest of the manifest as pushed.
    """
    if isinstance(source, (ImageInfo, IndexInfo)):
        layout_dir, ref = source.layout_dir, ref or source.ref
    else:
        layout_dir, ref = Path(source), ref or "latest"
    fmt = {"v2s2": "v2s2", "oci": "oci", "v2s1": "v2s1"}[format]
    with tempfile.TemporaryDirectory(prefix="imgpull-push-") as tmp:
        digestfile = Path(tmp) / "digest"
        args = [
            "copy",
            "--quiet",
            "--format",
            fmt,
            "--digestfile",
            str(digestfile),
            *_transport_flags(registry, "dest"),
        ]
        if all_images:
            args.append("--all")
        _skopeo([*args, f"oci:{layout_dir}:{ref}", f"docker://{registry.ref(repo_tag)}"], timeout)
        return digestfile.read_text().strip()


def skopeo_inspect(
    registry: RegistryServer,
    repo_ref: str,
    *,
    raw: bool = False,
    config: bool = False,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """``skopeo inspect`` of ``registry/<repo_ref>``; ``raw`` gives the manifest itself."""
    args = ["inspect", *_transport_flags(registry, "")]
    if raw:
        args.append("--raw")
    if config:
        args.append("--config")
    out = _skopeo([*args, f"docker://{registry.ref(repo_ref)}"], timeout).stdout
    result: dict[str, Any] = json.loads(out)
    return result


@dataclass(frozen=True)
class OciLayoutContents:
    """What an OCI layout holds for one ref: for comparing a pull against skopeo's."""

    layout_dir: Path
    index: dict[str, Any]
    manifest_digest: str
    manifest_bytes: bytes
    manifest: dict[str, Any]
    config_digest: str
    config: dict[str, Any]
    layer_digests: list[str]

    def blob_path(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        return self.layout_dir / "blobs" / algo / hexpart

    def blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config["rootfs"]["diff_ids"])


def read_oci_layout(layout_dir: Path | str, ref: str | None = None) -> OciLayoutContents:
    """Read an OCI layout's manifest for ``ref`` (the only one, when ``ref`` is None)."""
    layout_dir = Path(layout_dir)
    index = json.loads((layout_dir / "index.json").read_text())
    descs = index["manifests"]
    if ref is not None:
        descs = [d for d in descs if d.get("annotations", {}).get(REF_NAME_ANNOTATION) == ref]
    if len(descs) != 1:
        raise ValueError(f"{layout_dir}: expected one manifest for ref {ref!r}, got {len(descs)}")
    digest = descs[0]["digest"]
    algo, _, hexpart = digest.partition(":")
    manifest_bytes = (layout_dir / "blobs" / algo / hexpart).read_bytes()
    manifest = json.loads(manifest_bytes)
    config_digest = manifest["config"]["digest"]
    calgo, _, chex = config_digest.partition(":")
    config = json.loads((layout_dir / "blobs" / calgo / chex).read_bytes())
    return OciLayoutContents(
        layout_dir,
        index,
        digest,
        manifest_bytes,
        manifest,
        config_digest,
        config,
        [layer["digest"] for layer in manifest["layers"]],
    )


def skopeo_pull_oci(
    registry: RegistryServer,
    repo_ref: str,
    dest_dir: Path | str,
    *,
    tag: str = "latest",
    timeout: float = 600.0,
) -> OciLayoutContents:
    """``skopeo copy docker://registry/<repo_ref> oci:<dest_dir>:<tag>`` and read the result.

    skopeo writes an OCI manifest (converting a v2s2 one), but leaves layer
    blobs as they are, so the layer digests match the registry's.  Converting
    from v2s2 it also re-serialises the image config, so only the config's
    content (not its digest) matches then.
    """
    dest_dir = Path(dest_dir)
    _skopeo(
        [
            "copy",
            "--quiet",
            *_transport_flags(registry, "src"),
            f"docker://{registry.ref(repo_ref)}",
            f"oci:{dest_dir}:{tag}",
        ],
        timeout,
    )
    return read_oci_layout(dest_dir, tag)
