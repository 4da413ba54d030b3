"""Docker schema1 manifests pulled end to end: from a real registry
(distribution with schema1 enabled, pushed by skopeo) beside the same image
as schema2, and from the fake registry with hand-made payloads (the image ID
as moby 20.10 computes it, data after the signed payload never used).

The native helpers and the config synthesis alone: unit/test_schema1.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.cli import run_cli
from support.fakeregistry import FakeRegistry
from support.images import ImageInfo, LayoutCache, push, random_layer
from support.registry import RegistryServer
from support.schema1 import sign

import imgpull
from imgpull.errors import UnsupportedManifestError
from imgpull.manifest import DOCKER_MANIFEST_V1_SIGNED
from imgpull.progress import ProgressEvent

# -- a real registry -------------------------------------------------------------------


@pytest.fixture
def schema1_registry(
    make_registry: Callable[..., RegistryServer], small_image: ImageInfo
) -> tuple[RegistryServer, dict[str, str]]:
    reg = make_registry(schema1=True)
    digests = {fmt: push(small_image, reg, f"test/s1:{fmt}", fmt) for fmt in ("v2s2", "v2s1")}  # type: ignore[arg-type]
    return reg, digests


def test_schema1_pull_matches_schema2(
    schema1_registry: tuple[RegistryServer, dict[str, str]], tmp_path: Path
) -> None:
    reg, digests = schema1_registry
    events: list[ProgressEvent] = []
    with imgpull.Client(tmp_path) as client:
        s2 = client.pull(reg.ref("test/s1:v2s2"))
        s1 = client.pull(reg.ref("test/s1:v2s1"), progress=events.append)
        by_digest = client.pull(reg.ref(f"test/s1@{digests['v2s1']}"))
    assert s1.digest == digests["v2s1"]
    assert by_digest.id == s1.id and by_digest.digest == digests["v2s1"]
    assert any(e.status.startswith("[DEPRECATION NOTICE]") for e in events)
    blobs = tmp_path / "blobs" / "sha256"
    c1 = json.loads((blobs / s1.id[7:]).read_bytes())
    c2 = json.loads((blobs / s2.id[7:]).read_bytes())
    assert c1["rootfs"] == c2["rootfs"]
    assert [d.digest for d in s1.layers] == [d.digest for d in s2.layers]
    assert c1["os"] == "linux" and c1["architecture"] == "amd64"
    # The stored manifest is the canonical payload: it hashes to the digest.
    stored = (blobs / s1.digest[7:]).read_bytes()
    assert "sha256:" + hashlib.sha256(stored).hexdigest() == s1.digest


def test_schema1_wrong_digest_and_refusal(
    schema1_registry: tuple[RegistryServer, dict[str, str]], tmp_path: Path
) -> None:
    reg, _ = schema1_registry
    with imgpull.Client(tmp_path, refuse_schema1=True) as client:
        with pytest.raises(UnsupportedManifestError, match="schema1"):
            client.pull(reg.ref("test/s1:v2s1"))
        client.pull(reg.ref("test/s1:v2s2"))  # schema2 still pulls
    proc = run_cli(
        "pull",
        "--no-schema1",
        "--root",
        str(tmp_path),
        reg.ref("test/s1:v2s1"),
        timeout=300,
    )
    assert proc.returncode == 1
    assert "schema1" in proc.stderr and "--no-schema1" in proc.stderr


# Go's zero time: moby 20.10's History.Created when `created` is missing.
ZERO = "0001-01-01T00:00:00Z"


# -- end to end through the fake registry ---------------------------------------------

EMPTY_LAYER = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"
AUTHOR = "Jane <jane@example.com>"


def _v1(**fields: Any) -> str:
    return json.dumps(fields, separators=(",", ":"))


def _payload(fs_layers: list[str], history: list[str]) -> bytes:
    """A schema1 payload laid out as docker's registry wrote them (3-space
    indent, top layer first)."""
    body = {
        "schemaVersion": 1,
        "name": "test/s1",
        "tag": "v1",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": b} for b in fs_layers],
        "history": [{"v1Compatibility": h} for h in history],
    }
    return json.dumps(body, indent=3).encode()


@dataclass(frozen=True)
class Schema1Image:
    payload: bytes
    digest: str  # of the payload
    layers: list[str]  # downloaded, bottom first
    blobs: dict[str, bytes]  # the layers' bytes
    config: bytes  # what moby 20.10 makes of it, written out by hand below


@pytest.fixture(scope="module")
def s1_image(layout_cache: LayoutCache) -> Schema1Image:
    """Base layer by Jane (with a comment), a throwaway ENV entry, and a top
    layer without `created`: every history field and its absence."""
    image = layout_cache.get(
        [random_layer(3_000, seed=451), random_layer(2_000, seed=452)], ref="schema1-e2e"
    )
    base, top = image.layers
    ids = [hashlib.sha256(n).hexdigest() for n in (b"base", b"env", b"top")]
    history = [
        _v1(
            id=ids[2],
            parent=ids[1],
            author=AUTHOR,
            os="linux",
            architecture="amd64",
            docker_version="1.13.1",
            config={"Cmd": ["sh"]},
            container_config={"Cmd": ["/bin/sh", "-c", '#(nop) CMD ["sh"]']},
        ),
        _v1(
            id=ids[1],
            parent=ids[0],
            throwaway=True,
            created="2020-01-01T00:00:01Z",
            container_config={"Cmd": ["/bin/sh", "-c", "#(nop) ", "ENV A=1"]},
        ),
        _v1(
            id=ids[0],
            created="2020-01-01T00:00:00.500000000Z",
            author=AUTHOR,
            comment="base & co",
            container_config={"Cmd": ["/bin/sh", "-c", "#(nop) ADD file:abc in /"]},
        ),
    ]
    payload = _payload([top.digest, EMPTY_LAYER, base.digest], history)
    # MakeConfigFromV1Config: the top v1 config minus id/parent, keys sorted,
    # HTML-escaped; the history as moby 20.10's History entries, bottom first.
    jane = "Jane \\u003cjane@example.com\\u003e"
    config = (
        '{"architecture":"amd64",'
        f'"author":"{jane}",'
        '"config":{"Cmd":["sh"]},'
        '"container_config":{"Cmd":["/bin/sh","-c","#(nop) CMD [\\"sh\\"]"]},'
        '"docker_version":"1.13.1",'
        '"history":['
        f'{{"created":"2020-01-01T00:00:00.5Z","author":"{jane}",'
        '"created_by":"/bin/sh -c #(nop) ADD file:abc in /","comment":"base \\u0026 co"},'
        '{"created":"2020-01-01T00:00:01Z","created_by":"/bin/sh -c #(nop)  ENV A=1",'
        '"empty_layer":true},'
        f'{{"created":"{ZERO}","author":"{jane}","created_by":"/bin/sh -c #(nop) CMD [\\"sh\\"]"}}'
        "],"
        '"os":"linux",'
        f'"rootfs":{{"type":"layers","diff_ids":["{base.diff_id}","{top.diff_id}"]}}}}'
    ).encode()
    json.loads(config)  # well-formed, at least
    return Schema1Image(
        payload=payload,
        digest="sha256:" + hashlib.sha256(payload).hexdigest(),
        layers=[base.digest, top.digest],
        blobs={d: image.blob(d) for d in (base.digest, top.digest)},
        config=config,
    )


@pytest.fixture
def s1_fake(s1_image: Schema1Image) -> Iterator[FakeRegistry]:
    with FakeRegistry() as fake:
        fake.blobs.update(s1_image.blobs)
        yield fake


def _blob_gets(fake: FakeRegistry) -> list[str]:
    return [r.path.rsplit("/", 1)[-1] for r in fake.requests() if "/blobs/" in r.path]


def test_schema1_image_id_as_docker(
    s1_image: Schema1Image, s1_fake: FakeRegistry, tmp_path: Path
) -> None:
    """The image ID is the digest of the config moby 20.10 builds (written out
    by hand above): author and missing `created` included."""
    fake = s1_fake
    fake.add_manifest(
        "test/s1", "v1", sign(s1_image.payload), DOCKER_MANIFEST_V1_SIGNED, digest=s1_image.digest
    )
    with imgpull.Client(tmp_path) as client:
        image = client.pull(fake.ref("test/s1:v1"))
    assert image.id == "sha256:" + hashlib.sha256(s1_image.config).hexdigest()
    assert (tmp_path / "blobs" / "sha256" / image.id[7:]).read_bytes() == s1_image.config
    assert [d.digest for d in image.layers] == s1_image.layers
    assert EMPTY_LAYER not in _blob_gets(fake)  # throwaway: history only


def test_data_after_the_signed_payload_is_never_used(
    s1_image: Schema1Image, s1_fake: FakeRegistry, layout_cache: LayoutCache, tmp_path: Path
) -> None:
    """moby's extra_data_manifest: a second `fsLayers` after the signed part
    (which a plain JSON parse lets win). Docker verifies the digest over the
    payload and pulls the payload's layers; the others are never fetched."""
    fake = s1_fake
    other = layout_cache.get([random_layer(1_000, seed=453)], ref="schema1-other")
    (decoy,) = other.layers
    fake.blobs[decoy.digest] = other.blob(decoy.digest)  # there to be fetched, if read
    extra = json.dumps([{"blobSum": decoy.digest}] * 3)
    raw = sign(s1_image.payload, extra=f',\n   "fsLayers": {extra}'.encode())
    assert json.loads(raw)["fsLayers"] == [{"blobSum": decoy.digest}] * 3
    fake.add_manifest("test/s1", "extra", raw, DOCKER_MANIFEST_V1_SIGNED, digest=s1_image.digest)
    want_id = "sha256:" + hashlib.sha256(s1_image.config).hexdigest()
    for ref in ("test/s1:extra", f"test/s1@{s1_image.digest}"):
        root = tmp_path / ref.replace("/", "_").replace(":", "_")
        fake.clear_requests()
        with imgpull.Client(root) as client:
            image = client.pull(fake.ref(ref))
            rows = client.images()
        assert decoy.digest not in _blob_gets(fake), ref
        assert sorted(_blob_gets(fake)) == sorted(s1_image.layers), ref
        assert image.digest == s1_image.digest and image.id == want_id
        assert [d.digest for d in image.layers] == s1_image.layers
        assert {r.image_id for r in rows} == {want_id}
        assert {r.digest for r in rows} - {None} == {s1_image.digest}
        # What is stored as the manifest is the payload itself.
        assert (root / "blobs" / "sha256" / s1_image.digest[7:]).read_bytes() == s1_image.payload
