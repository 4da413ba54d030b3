"""Docker schema1 manifests: the native helpers, config synthesis, and pulls end to end."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.cli import run_cli
from support.fakeregistry import FakeRegistry
from support.images import ImageInfo, LayoutCache, push, random_layer
from support.registry import RegistryServer
from support.schema1 import sign

import imgpull
from imgpull._core import Schema1Error, diff_id_file, fix_schema1_layers, schema1_payload
from imgpull.errors import ManifestError, ManifestVerificationError, UnsupportedManifestError
from imgpull.manifest import DOCKER_MANIFEST_V1_SIGNED, Schema1Manifest, parse_manifest
from imgpull.progress import ProgressEvent
from imgpull.schema1 import HistoryEntry, make_config, manifest_digest, plan


def hexid(c: str) -> str:
    return c * 64


def chain(*ids: str) -> list[tuple[str, str]]:
    """Top first; each parent is the next id."""
    return [(hexid(c), hexid(ids[i + 1]) if i + 1 < len(ids) else "") for i, c in enumerate(ids)]


# -- fix_schema1_layers -------------------------------------------------------


def test_fix_layers_valid_and_repeats() -> None:
    assert fix_schema1_layers(chain("a", "b", "c")) == [0, 1, 2]
    # moby's TestFixManifestLayers: a repeated top entry collapses to one
    layers = [(hexid("b"), hexid("a")), (hexid("b"), hexid("a")), (hexid("a"), "")]
    assert fix_schema1_layers(layers) == [1, 2]


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([("A" * 64, "")], f"image ID '{'A' * 64}' is invalid"),
        ([(hexid("a"), hexid("b"))], "invalid parent ID in the base layer of the image"),
        (
            [(hexid("a"), hexid("b")), (hexid("b"), hexid("a")), (hexid("a"), "")],
            f"ID {hexid('a')} appears multiple times in manifest",
        ),
        (
            [(hexid("a"), hexid("c")), (hexid("b"), "")],
            f"invalid parent ID. Expected {hexid('b')}, got {hexid('c')}",
        ),
        ([], "no FSLayers in manifest"),
    ],
)
def test_fix_layers_errors(layers: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(Schema1Error) as info:
        fix_schema1_layers(layers)
    assert str(info.value) == message
    assert isinstance(info.value, imgpull.ImgpullError)


def test_fix_layers_windows_base_parent() -> None:
    assert fix_schema1_layers([(hexid("a"), hexid("b"))], allow_base_parent=True) == [0]


IDS = st.sampled_from([hexid(c) for c in "abcd"] + ["", "xyz", "A" * 64])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(IDS, IDS), max_size=12))
def test_fix_layers_property(layers: list[tuple[str, str]]) -> None:
    """Random chains (cycles included) never hang or crash; errors are Schema1Error."""
    try:
        keep = fix_schema1_layers(layers)
    except Schema1Error:
        return
    assert keep == sorted(set(keep))
    assert keep[-1] == len(layers) - 1
    kept = [layers[i] for i in keep]
    assert kept[-1][1] == ""
    for (_, parent), (below, _) in itertools.pairwise(kept):
        assert parent == below
    assert len({i for i, _ in kept}) == len(kept)


# -- schema1_payload ----------------------------------------------------------


def test_payload_signed_and_unsigned() -> None:
    payload = b'{\n   "schemaVersion": 1,\n   "name": "x"\n}'
    assert schema1_payload(sign(payload)) == payload
    assert schema1_payload(payload) == payload
    with pytest.raises(Schema1Error):
        schema1_payload(b'{"signatures": []}')


def test_manifest_digest_over_payload() -> None:
    payload = b'{\n   "schemaVersion": 1\n}'
    want = "sha256:" + hashlib.sha256(payload).hexdigest()
    assert manifest_digest(sign(payload), None) == want
    assert manifest_digest(sign(payload), want) == want
    with pytest.raises(ManifestVerificationError):
        manifest_digest(sign(payload), "sha256:" + "0" * 64)


def test_parse_reads_only_the_signed_payload() -> None:
    """moby's extra_data_manifest, in small: the body's second fsLayers (after
    the signed part) would win a plain JSON parse; the payload's are used."""
    payload = (
        b'{\n   "schemaVersion": 1,\n   "fsLayers": [{"blobSum": "sha256:' + b"1" * 64 + b'"}]\n}'
    )
    decoy = b',\n   "fsLayers": [{"blobSum": "sha256:' + b"f" * 64 + b'"}]'
    raw = sign(payload, extra=decoy)
    assert json.loads(raw)["fsLayers"] == [{"blobSum": "sha256:" + "f" * 64}]
    digest = manifest_digest(raw, "sha256:" + hashlib.sha256(payload).hexdigest())
    manifest = parse_manifest(raw, DOCKER_MANIFEST_V1_SIGNED, digest)
    assert isinstance(manifest, Schema1Manifest)
    assert manifest.body == json.loads(payload)
    assert manifest.raw == raw


# -- diff_id_file ---------------------------------------------------------------


def test_diff_id_file(tmp_path: Path) -> None:
    tar = bytearray(b"x" * 2048)
    tar[257:262] = b"ustar"
    want = "sha256:" + hashlib.sha256(tar).hexdigest()
    (tmp_path / "plain").write_bytes(tar)
    (tmp_path / "gz").write_bytes(gzip.compress(tar[:1000]) + gzip.compress(tar[1000:]))
    assert diff_id_file(str(tmp_path / "plain")) == want
    assert diff_id_file(str(tmp_path / "gz")) == want
    (tmp_path / "junk").write_bytes(b"not a layer at all")
    with pytest.raises(ValueError, match="unknown layer compression"):
        diff_id_file(str(tmp_path / "junk"))
    with pytest.raises(FileNotFoundError):
        diff_id_file(str(tmp_path / "missing"))


# -- config synthesis -------------------------------------------------------------

DIFF = "sha256:" + "d" * 64


def test_config_modern_keeps_raw_values_sorted_and_escaped() -> None:
    """docker_version >= 1.8.3: the v1 JSON's own values, compacted, keys sorted."""
    top = (
        '{"id": "' + hexid("a") + '", "parent": "' + hexid("b") + '", "Size": 12, '
        '"throwaway": false, "layer_id": "x", "parent_id": "y", '
        '"os": "linux", "docker_version": "1.13.1", "architecture": "amd64", '
        '"config": {"Labels": {"a": "<b> & c"}, "Cmd": ["sh", "-c", "echo 1.50"]}, '
        '"created": "2017-01-02T03:04:05.120000000Z", "zeta": 1.50, "custom": [1, 2 ,3]}'
    )
    history = [HistoryEntry("2017-01-02T03:04:05.12Z", "sh", "", "", False)]
    got = make_config(top, [DIFF], history).decode()
    assert got == (
        '{"architecture":"amd64",'
        '"config":{"Labels":{"a":"\\u003cb\\u003e \\u0026 c"},"Cmd":["sh","-c","echo 1.50"]},'
        '"created":"2017-01-02T03:04:05.120000000Z","custom":[1,2,3],'
        '"docker_version":"1.13.1",'
        '"history":[{"created":"2017-01-02T03:04:05.12Z","created_by":"sh"}],'
        '"os":"linux","rootfs":{"type":"layers","diff_ids":["' + DIFF + '"]},"zeta":1.50}'
    )


def test_config_old_docker_goes_through_v1image() -> None:
    """docker_version < 1.8.3 (or none): V1Image's fields only, Go struct order."""
    top = json.dumps(
        {
            "id": hexid("a"),
            "created": "2015-01-01T00:00:00.500+00:00",
            "docker_version": "1.6.2",
            "unknown_field": "dropped",
            "Author": "me",
            "config": {"cmd": "/bin/sh", "ExposedPorts": {"80/tcp": {}}, "StopTimeout": 3},
        }
    )
    got = json.loads(make_config(top, [DIFF], []))
    assert "unknown_field" not in got
    assert "id" not in got
    assert got["author"] == "me"  # matched case-insensitively, as Go does
    assert got["created"] == "2015-01-01T00:00:00.5Z"
    assert got["config"]["Cmd"] == ["/bin/sh"]  # StrSlice from a string
    assert got["config"]["ExposedPorts"] == {"80/tcp": {}}
    assert got["config"]["StopTimeout"] == 3
    assert got["config"]["Volumes"] is None and "Healthcheck" not in got["config"]
    assert got["container_config"]["Hostname"] == ""
    assert list(got) == sorted(got)
    assert got["history"] == []


def test_plan_walks_from_the_bottom_and_skips_throwaway() -> None:
    v1 = [
        {"id": hexid("c"), "parent": hexid("b"), "os": "linux", "docker_version": "1.13.0"},
        {
            "id": hexid("b"),
            "parent": hexid("a"),
            "throwaway": True,
            "created": "2020-01-01T00:00:00Z",
            "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) ", "ENV X=1"]},
        },
        {"id": hexid("a"), "author": "A", "comment": "base"},
    ]
    body = {
        "schemaVersion": 1,
        "name": "x",
        "fsLayers": [{"blobSum": "sha256:" + c * 64} for c in "321"],
        "history": [{"v1Compatibility": json.dumps(v)} for v in v1],
    }
    raw = json.dumps(body).encode()
    manifest = parse_manifest(raw, DOCKER_MANIFEST_V1_SIGNED, manifest_digest(raw, None))
    p = plan(manifest, "x")  # type: ignore[arg-type]
    assert [d.digest[7:8] for d in p.layers] == ["1", "3"]
    assert [h.empty_layer for h in p.history] == [False, True, False]
    assert p.history[0].author == "A" and p.history[0].comment == "base"
    assert p.history[1].created_by == "/bin/sh -c #(nop)  ENV X=1"
    assert p.os == "linux"
    body["history"] = body["history"][:2]
    raw = json.dumps(body).encode()
    bad = parse_manifest(raw, DOCKER_MANIFEST_V1_SIGNED, manifest_digest(raw, None))
    with pytest.raises(ManifestError, match="length of history not equal"):
        plan(bad, "x")  # type: ignore[arg-type]


# -- end to end ---------------------------------------------------------------------


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


# -- history entries as the docker engine here (moby 20.10) writes them ----------
#
# moby 20.10's image.History: created (time.Time, no omitempty: Go's zero time
# when missing), author, created_by, comment, empty_layer (all omitempty).
# (moby v25 uses ocispec.History instead: created omitted when missing,
# created_by before author.)

ZERO = "0001-01-01T00:00:00Z"
HISTORY_JSON = [
    (HistoryEntry(None, "", "", "", False), f'{{"created":"{ZERO}"}}'),
    (
        HistoryEntry("2020-01-01T00:00:00.5Z", "sh -c make", "Jane <j@x.org>", "a & b", True),
        '{"created":"2020-01-01T00:00:00.5Z","author":"Jane \\u003cj@x.org\\u003e",'
        '"created_by":"sh -c make","comment":"a \\u0026 b","empty_layer":true}',
    ),
    (
        HistoryEntry(None, "sh", "Jane", "", False),
        f'{{"created":"{ZERO}","author":"Jane","created_by":"sh"}}',
    ),
    (HistoryEntry(None, "", "", "", True), f'{{"created":"{ZERO}","empty_layer":true}}'),
    (
        HistoryEntry(ZERO, "", "me", "", False),
        f'{{"created":"{ZERO}","author":"me"}}',
    ),
]


@pytest.mark.parametrize(("entry", "text"), HISTORY_JSON)
def test_history_entry_json(entry: HistoryEntry, text: str) -> None:
    assert entry.go_json() == text


def test_history_from_v1_without_created() -> None:
    """A v1Compatibility without `created` gives a history entry with Go's
    zero time (moby 20.10's History.Created is no pointer), and `created:
    null` the same."""
    for v1 in ({"id": hexid("a"), "author": "A"}, {"id": hexid("a"), "created": None}):
        body = {
            "schemaVersion": 1,
            "fsLayers": [{"blobSum": "sha256:" + "1" * 64}],
            "history": [{"v1Compatibility": json.dumps(v1)}],
        }
        raw = json.dumps(body).encode()
        manifest = parse_manifest(raw, DOCKER_MANIFEST_V1_SIGNED, manifest_digest(raw, None))
        (entry,) = plan(manifest, "x").history  # type: ignore[arg-type]
        assert entry.created is None
        author = ',"author":"A"' if "author" in v1 else ""
        assert entry.go_json() == f'{{"created":"{ZERO}"{author}}}'


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
