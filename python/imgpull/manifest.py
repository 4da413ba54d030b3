"""Manifest kinds, descriptors and the dispatch from bytes to a typed manifest.

Parsing is strict about what a pull relies on (digests, sizes, media types)
and lenient about everything else, as docker is. Every failure is a
ManifestError with a one-line message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from imgpull._core import schema1_payload, sha256_bytes
from imgpull.errors import (
    ManifestError,
    ManifestVerificationError,
    Schema1Error,
    UnsupportedManifestError,
)
from imgpull.platform import Platform

DOCKER_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_MANIFEST_V1 = "application/vnd.docker.distribution.manifest.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"

IMAGE_MANIFEST_TYPES = frozenset({DOCKER_MANIFEST_V2, OCI_MANIFEST})
INDEX_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
SCHEMA1_TYPES = frozenset({DOCKER_MANIFEST_V1_SIGNED, DOCKER_MANIFEST_V1})

# Lists/indexes first so that a multi-platform tag resolves to its list;
# schema1 last: deprecated.
ACCEPT: tuple[str, ...] = (
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V2,
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_V1_SIGNED,
    DOCKER_MANIFEST_V1,
)

# Registries may send these for any manifest; the body then decides.
_GENERIC_TYPES = frozenset({"", "application/json", "text/plain", "application/octet-stream"})

# Config media types that are images (the empty and octet-stream ones are
# what old registries and tools wrote).
IMAGE_CONFIG_TYPES = frozenset({DOCKER_CONFIG, OCI_CONFIG, "application/octet-stream", ""})

# Known non-image configs, named in the error the way docker names them.
_CONFIG_CLASSES: Mapping[str, str] = {
    "application/vnd.docker.plugin.v1+json": "plugin",
    "application/vnd.cncf.helm.config.v1+json": "Helm chart",
    "application/vnd.oci.image.config.v1+json+encrypted": "encrypted image",
    "application/vnd.oci.empty.v1+json": "artifact",
    "application/vnd.cncf.oras.config.v1+json": "ORAS artifact",
    "application/vnd.wasm.config.v1+json": "WebAssembly module",
    "application/vnd.cncf.flux.config.v1+json": "Flux artifact",
    "application/vnd.dev.cosign.simplesigning.v1+json": "cosign signature",
}

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# How many indexes deep one pull follows nested indexes (the top one is 1).
# Images nest at most 2 (an index of per-platform indexes, as some OCI
# layouts do); 4 leaves room, and bounds the recursion a registry controls.
MAX_INDEX_DEPTH = 4
# How many manifests one pull fetches (or reads back from the store), the
# top one included. A pull needs 2 or 3; this bounds the work an index of
# thousands of nested indexes without a match could make it do (each
# manifest up to MAX_MANIFEST_BYTES).
MAX_MANIFESTS_PER_PULL = 50

_DIGEST_RE = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")


def check_digest(value: object, what: str = "digest") -> str:
    """Return value if it is a well-formed digest, else raise ManifestError."""
    if not isinstance(value, str) or not _DIGEST_RE.match(value):
        raise ManifestError(f"invalid {what} {value!r}: expected sha256:<64 hex>")
    return value


def short_id(digest: str) -> str:
    """The 12-hex form docker shows for layers and image IDs."""
    return digest.split(":", 1)[-1][:12]


@dataclass(frozen=True)
class Descriptor:
    """What a manifest says of one blob or child manifest."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None

    @classmethod
    def from_json(cls, obj: object, what: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise ManifestError(f"invalid {what}: expected an object, got {type(obj).__name__}")
        media_type = obj.get("mediaType", "")
        if not isinstance(media_type, str):
            raise ManifestError(f"invalid {what}: mediaType must be a string")
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"invalid {what}: size must be a non-negative integer")
        urls = obj.get("urls") or []
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise ManifestError(f"invalid {what}: urls must be a list of strings")
        annotations = obj.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise ManifestError(f"invalid {what}: annotations must be an object")
        return cls(
            media_type=media_type,
            digest=check_digest(obj.get("digest"), f"{what} digest"),
            size=size,
            urls=tuple(urls),
            annotations={str(k): str(v) for k, v in annotations.items()},
            platform=_platform_from_json(obj.get("platform"), what),
        )


def _platform_from_json(obj: object, what: str) -> Platform | None:
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise ManifestError(f"invalid {what}: platform must be an object")

    def text(key: str) -> str | None:
        value = obj.get(key)
        if value is None or isinstance(value, str):
            return value
        raise ManifestError(f"invalid {what}: platform {key} must be a string")

    def texts(key: str) -> tuple[str, ...]:
        value = obj.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ManifestError(f"invalid {what}: platform {key} must be a list of strings")
        return tuple(value)

    return Platform(
        os=text("os") or "",
        architecture=text("architecture") or "",
        variant=text("variant") or None,
        os_version=text("os.version") or None,
        os_features=texts("os.features"),
        features=texts("features"),
    )


@dataclass(frozen=True)
class ImageManifest:
    """A Docker schema2 or OCI image manifest: one config, ordered layers."""

    media_type: str
    digest: str
    raw: bytes
    config: Descriptor
    layers: tuple[Descriptor, ...]

    def check_config_type(self) -> None:
        """Refuse configs that are not container images, naming what they are."""
        kind = self.config.media_type
        if kind in IMAGE_CONFIG_TYPES:
            return
        name = _CONFIG_CLASSES.get(kind, "unknown")
        raise UnsupportedManifestError(
            f"Encountered remote {kind!r} ({name}) when fetching: "
            "this is not a container image, so imgpull cannot pull it"
        )


@dataclass(frozen=True)
class ManifestIndex:
    """A Docker manifest list or OCI index: one entry per platform (or kind)."""

    media_type: str
    digest: str
    raw: bytes
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Schema1Manifest:
    """A Docker schema1 manifest (deprecated); kept raw until it is pulled.
    `body` is its canonical payload's JSON (never anything outside it)."""

    media_type: str
    digest: str
    raw: bytes
    body: Mapping[str, Any]


Manifest = ImageManifest | ManifestIndex | Schema1Manifest


def schema1_canonical_payload(raw: bytes) -> bytes:
    """A schema1 manifest's canonical payload: the signed part of a signed
    one (the JWS signatures cut out), the whole of an unsigned one. Its
    digest is the manifest's."""
    try:
        return schema1_payload(raw)
    except Schema1Error as exc:
        raise ManifestError(f"invalid schema1 manifest: {exc}") from None


def _load_object(raw: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    # ValueError covers bad UTF-8, bad JSON and integers over Python's digit
    # limit; RecursionError is what very deep nesting gives.
    except (ValueError, RecursionError) as exc:
        raise ManifestError(f"malformed manifest: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"malformed manifest: expected a JSON object, got {type(obj).__name__}")
    return obj


def sniff_media_type(obj: Mapping[str, Any]) -> str:
    """The media type a body declares by its fields (for generic content types)."""
    declared = obj.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    version = obj.get("schemaVersion")
    if version == 1:
        return DOCKER_MANIFEST_V1_SIGNED if "signatures" in obj else DOCKER_MANIFEST_V1
    if version == 2:
        # OCI lets mediaType be absent; what the body holds tells the kind.
        if "manifests" in obj:
            return OCI_INDEX
        if "config" in obj:
            return OCI_MANIFEST
    return ""


def parse_manifest(raw: bytes, content_type: str, digest: str) -> Manifest:
    """Turn a manifest body into its typed form.

    `content_type` is what the registry said; when it is generic, the body's
    own `mediaType`/`schemaVersion` decide. `digest` is the verified digest of
    `raw` (see verify_manifest_digest).
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            f"manifest is {len(raw)} bytes, over the {MAX_MANIFEST_BYTES} byte limit: refusing it"
        )
    obj = _load_object(raw)
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in _GENERIC_TYPES:
        media_type = sniff_media_type(obj)
    declared = obj.get("mediaType")
    mismatch = isinstance(declared, str) and declared not in ("", media_type)
    if mismatch and media_type not in SCHEMA1_TYPES:
        raise ManifestError(
            f"malformed manifest: registry sent {media_type!r} but the body says {declared!r}"
        )

    if media_type in IMAGE_MANIFEST_TYPES:
        _check_schema_version(obj, 2)
        layers = _descriptors(obj, "layers", "layer", "malformed manifest")
        return ImageManifest(
            media_type=media_type,
            digest=digest,
            raw=raw,
            config=Descriptor.from_json(obj.get("config"), "config descriptor"),
            layers=layers,
        )
    if media_type in INDEX_TYPES:
        _check_schema_version(obj, 2)
        return ManifestIndex(
            media_type=media_type,
            digest=digest,
            raw=raw,
            manifests=_descriptors(
                obj, "manifests", "manifest list entry", "malformed manifest list"
            ),
        )
    if media_type in SCHEMA1_TYPES:
        # Only the signed payload is read: what the digest covers. Bytes after
        # it (moby's extra-data fixture: a second fsLayers, which would win in
        # a plain parse of the whole body) are never used.
        body = _load_object(schema1_canonical_payload(raw))
        _check_schema_version(body, 1)
        return Schema1Manifest(media_type=media_type, digest=digest, raw=raw, body=body)
    # Escaped and cut: the type comes from the registry; the message is one line.
    shown = repr(media_type)[1:-1][:200] if media_type else "no media type"
    raise UnsupportedManifestError(f"unsupported manifest format: {shown}")


def _descriptors(
    obj: Mapping[str, Any], key: str, what: str, problem: str
) -> tuple[Descriptor, ...]:
    items = obj.get(key)
    if not isinstance(items, list):
        raise ManifestError(f"{problem}: {key} must be a list")
    return tuple(Descriptor.from_json(d, f"{what} {i}") for i, d in enumerate(items))


def _check_schema_version(obj: Mapping[str, Any], want: int) -> None:
    if obj.get("schemaVersion") != want:
        raise ManifestError(
            f"malformed manifest: schemaVersion is {obj.get('schemaVersion')!r}, expected {want}"
        )


def verify_manifest_digest(raw: bytes, expected: str) -> None:
    """Manifest bytes fetched by digest must hash to it."""
    algo = expected.split(":", 1)[0]
    if algo != "sha256":
        raise ManifestVerificationError(
            f"manifest verification failed for digest {expected}: unsupported algorithm {algo}"
        )
    actual = sha256_bytes(raw)
    if actual != expected:
        raise ManifestVerificationError(
            f"manifest verification failed for digest {expected}: the bytes hash to {actual}"
        )
