"""Docker schema1 manifests: the native helpers (layer-chain repair, the
signed payload, diffIDs of a file), config synthesis and history entries as
moby 20.10 writes them. Pulls end to end: e2e/test_pull_schema1.py."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.schema1 import sign

import imgpull
from imgpull._core import Schema1Error, diff_id_file, fix_schema1_layers, schema1_payload
from imgpull.errors import ManifestError, ManifestVerificationError
from imgpull.manifest import DOCKER_MANIFEST_V1_SIGNED, Schema1Manifest, parse_manifest
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
