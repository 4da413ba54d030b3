"""Manifest parsing and dispatch: table-driven, no network."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from support.schema1 import sign

from imgpull.errors import ManifestError, ManifestVerificationError, UnsupportedManifestError
from imgpull.manifest import (
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V1_SIGNED,
    DOCKER_MANIFEST_V2,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    ImageManifest,
    ManifestIndex,
    Schema1Manifest,
    parse_manifest,
    verify_manifest_digest,
)

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


def image(media_type: str | None = DOCKER_MANIFEST_V2, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schemaVersion": 2,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": D1,
            "size": 10,
        },
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "digest": D2,
                "size": 20,
            }
        ],
    }
    if media_type is not None:
        body["mediaType"] = media_type
    body.update(over)
    return body


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("content_type", "body", "kind", "media_type"),
    [
        (DOCKER_MANIFEST_V2, image(), ImageManifest, DOCKER_MANIFEST_V2),
        (OCI_MANIFEST, image(OCI_MANIFEST), ImageManifest, OCI_MANIFEST),
        (OCI_MANIFEST, image(None), ImageManifest, OCI_MANIFEST),
        # Generic content types: the body decides.
        ("application/json", image(), ImageManifest, DOCKER_MANIFEST_V2),
        ("", image(None), ImageManifest, OCI_MANIFEST),
        (
            "text/plain; charset=utf-8",
            {"schemaVersion": 2, "manifests": []},
            ManifestIndex,
            OCI_INDEX,
        ),
        (
            DOCKER_MANIFEST_LIST,
            {
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST_LIST,
                "manifests": [
                    {
                        "mediaType": DOCKER_MANIFEST_V2,
                        "digest": D1,
                        "size": 1,
                        "platform": {"os": "linux", "architecture": "arm", "variant": "v7"},
                    }
                ],
            },
            ManifestIndex,
            DOCKER_MANIFEST_LIST,
        ),
        (
            "application/json",
            sign(b'{\n   "schemaVersion": 1,\n   "fsLayers": [],\n   "history": []\n}'),
            Schema1Manifest,
            DOCKER_MANIFEST_V1_SIGNED,
        ),
    ],
)
def test_dispatch(content_type: str, body: Any, kind: type, media_type: str) -> None:
    m = parse_manifest(body if isinstance(body, bytes) else raw(body), content_type, D1)
    assert isinstance(m, kind)
    assert m.media_type == media_type


def test_index_entry_platform() -> None:
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": D1,
                "size": 5,
                "platform": {
                    "os": "windows",
                    "architecture": "amd64",
                    "os.version": "10.0.17763.1",
                },
            }
        ],
    }
    m = parse_manifest(raw(body), OCI_INDEX, D2)
    assert isinstance(m, ManifestIndex)
    p = m.manifests[0].platform
    assert p is not None
    assert (p.os, p.architecture, p.os_version) == ("windows", "amd64", "10.0.17763.1")


@pytest.mark.parametrize(
    ("content_type", "data", "error", "words"),
    [
        (DOCKER_MANIFEST_V2, b"{not json", ManifestError, "not valid JSON"),
        (DOCKER_MANIFEST_V2, b"[]", ManifestError, "JSON object"),
        (DOCKER_MANIFEST_V2, raw(image(layers="x")), ManifestError, "layers must be a list"),
        (DOCKER_MANIFEST_V2, raw(image(config=None)), ManifestError, "config descriptor"),
        (
            DOCKER_MANIFEST_V2,
            raw(image(layers=[{"digest": "sha256:12", "size": 1}])),
            ManifestError,
            "invalid layer 0 digest",
        ),
        (
            DOCKER_MANIFEST_V2,
            raw(image(layers=[{"digest": D1, "size": -1}])),
            ManifestError,
            "size",
        ),
        (
            DOCKER_MANIFEST_V2,
            raw(image(layers=[{"digest": D1, "size": "1"}])),
            ManifestError,
            "size",
        ),
        (DOCKER_MANIFEST_V2, raw(image(schemaVersion=3)), ManifestError, "schemaVersion"),
        (DOCKER_MANIFEST_V2, raw(image(OCI_MANIFEST)), ManifestError, "body says"),
        (
            "application/vnd.example+json",
            raw({"x": 1}),
            UnsupportedManifestError,
            "unsupported manifest format: application/vnd.example+json",
        ),
        (
            "application/json",
            raw({"x": 1}),
            UnsupportedManifestError,
            "unsupported manifest format",
        ),
        (DOCKER_MANIFEST_V2, b" " * (MAX_MANIFEST_BYTES + 1), ManifestError, "limit"),
    ],
)
def test_malformed(content_type: str, data: bytes, error: type, words: str) -> None:
    with pytest.raises(error) as info:
        parse_manifest(data, content_type, D1)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("config_type", "name"),
    [
        ("application/vnd.docker.plugin.v1+json", "plugin"),
        ("application/vnd.cncf.helm.config.v1+json", "Helm chart"),
        ("application/vnd.example.thing", "unknown"),
    ],
)
def test_non_image_config_named(config_type: str, name: str) -> None:
    body = image(config={"mediaType": config_type, "digest": D1, "size": 1})
    m = parse_manifest(raw(body), DOCKER_MANIFEST_V2, D2)
    assert isinstance(m, ImageManifest)
    with pytest.raises(UnsupportedManifestError, match=f"\\({name}\\)"):
        m.check_config_type()


@pytest.mark.parametrize(
    "config_type",
    [
        "application/vnd.docker.container.image.v1+json",
        "application/vnd.oci.image.config.v1+json",
        "application/octet-stream",
        "",
    ],
)
def test_image_configs_pass(config_type: str) -> None:
    body = image(config={"mediaType": config_type, "digest": D1, "size": 1})
    m = parse_manifest(raw(body), DOCKER_MANIFEST_V2, D2)
    assert isinstance(m, ImageManifest)
    m.check_config_type()


def test_verify_digest() -> None:
    data = raw(image())
    good = "sha256:" + hashlib.sha256(data).hexdigest()
    verify_manifest_digest(data, good)
    with pytest.raises(ManifestVerificationError, match="manifest verification failed"):
        verify_manifest_digest(data + b" ", good)
