"""Layer registration fused with the download in real pulls: diffIDs (gzip,
zstd, plain, resumed mid-layer), chain IDs, known layers not fetched again,
store migration. The pure functions and the writer alone: unit/test_layers.py."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from support.images import ImageInfo, LayoutCache, files_layer, push, random_layer
from support.pushed import PushedImage
from support.registry import RegistryServer

import imgpull
from imgpull.errors import ManifestError
from imgpull.layers import chain_ids
from imgpull.progress import ProgressEvent


def _sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def blob_gets(registry: RegistryServer) -> list[str]:
    return [e.path for e in registry.request_log() if e.method == "GET" and "/blobs/" in e.path]


def _no_file_diff_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if a pull reads a layer file back to compute its diffID."""

    def boom(path: str) -> str:
        raise AssertionError(f"diff_id_file({path}) called: the diffID was not fused")

    monkeypatch.setattr("imgpull.pull.diff_id_file", boom)


def _check_registered(client: imgpull.Client, image: imgpull.Image, info: ImageInfo) -> None:
    """The pulled layers' recorded diffIDs are the config's (as built), and
    the image's rootfs rows hold them with their chain IDs."""
    meta = client.store.meta
    for desc, built in zip(image.layers, info.layers, strict=True):
        record = meta.layer_diff_id(desc.digest)
        assert record is not None
        assert record.diff_id == built.diff_id
        assert record.uncompressed_size == built.tar_size
    diff_ids = info.diff_ids
    assert meta.image_rootfs(image.id) == list(zip(diff_ids, chain_ids(diff_ids), strict=True))


@pytest.mark.parametrize("fmt", ["v2s2", "oci"])
def test_fused_diff_ids_gzip(
    pushed_image: PushedImage, tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_file_diff_ids(monkeypatch)
    events: list[ProgressEvent] = []
    with imgpull.Client(tmp_path) as client:
        image = client.pull(pushed_image.ref(fmt), progress=events.append)  # type: ignore[arg-type]
        _check_registered(client, image, pushed_image.image)
    for digest in pushed_image.layer_digests:
        statuses = [e.status for e in events if e.id == digest[7:19]]
        assert statuses[-3:] == ["Download complete", "Extracting", "Pull complete"]


def test_fused_diff_ids_zstd_and_plain(
    registry: RegistryServer,
    layout_cache: LayoutCache,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("zstandard")
    info = layout_cache.get(
        (
            random_layer(1024 * 1024, seed=31, compression="zstd", compresslevel=1),
            files_layer({"motd": b"zstd!\n"}, compression="zstd"),
            random_layer(300 * 1024, seed=32, compression="none"),
        ),
        ref="zstd",
    )
    push(info, registry, "test/zstd:v1", "oci")
    _no_file_diff_ids(monkeypatch)
    with imgpull.Client(tmp_path) as client:
        image = client.pull(registry.ref("test/zstd:v1"))
        # skopeo keeps zstd layers as they are (and gzips the plain one on push).
        assert [d.digest for d in image.layers[:2]] == info.layer_digests[:2]
        assert all(d.media_type.endswith("+zstd") for d in image.layers[:2])
        _check_registered(client, image, info)


def test_wrong_diff_id_registers_nothing(
    registry: RegistryServer, layout_cache: LayoutCache, tmp_path: Path
) -> None:
    layers = (random_layer(200 * 1024, seed=41), random_layer(100 * 1024, seed=42))
    good = layout_cache.get(layers, ref="good")
    wrong = [good.diff_ids[0], _sha("not the second layer")]
    info = layout_cache.get(
        layers, ref="wrongdiff", config_extra={"rootfs": {"type": "layers", "diff_ids": wrong}}
    )
    push(info, registry, "test/wrongdiff:v1", "oci")
    ref = registry.ref("test/wrongdiff:v1")
    with imgpull.Client(tmp_path) as client:
        with pytest.raises(ManifestError, match="layers from manifest don't match image"):
            client.pull(ref)
        assert client.images() == []
        assert client.store.meta.references() == []
        assert client.store.meta.get_image(info.config_digest) is None
        assert client.store.meta.image_rootfs(info.config_digest) == []
        # The layers themselves were verified and registered: a fixed image reuses them.
        record = client.store.meta.layer_diff_id(info.layer_digests[1])
        assert record is not None and record.diff_id == good.diff_ids[1]


def test_resume_mid_layer_gives_the_right_diff_id(
    pushed_image: PushedImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = pushed_image.image.layers[0]
    data = pushed_image.image.blob(layer.digest)
    partial = tmp_path / "ingest" / "sha256" / layer.digest[7:]
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data[: len(data) * 2 // 5])
    _no_file_diff_ids(monkeypatch)
    with imgpull.Client(tmp_path) as client:
        image = client.pull(pushed_image.ref("oci"))
        assert image.downloaded_bytes == image.size - len(data) * 2 // 5
        _check_registered(client, image, pushed_image.image)
    assert not partial.exists()


def test_known_layers_not_downloaded_across_repositories(
    fresh_registry: RegistryServer, layout_cache: LayoutCache, tmp_path: Path
) -> None:
    shared = random_layer(600 * 1024, seed=51)
    one = layout_cache.get((shared, random_layer(100 * 1024, seed=52)), ref="one")
    two = layout_cache.get((shared, random_layer(120 * 1024, seed=53)), ref="two")
    assert one.layer_digests[0] == two.layer_digests[0]
    push(one, fresh_registry, "team-a/one:v1", "oci")
    push(two, fresh_registry, "team-b/two:v1", "oci")
    fresh_registry.clear_request_log()
    with imgpull.Client(tmp_path) as client:
        client.pull(fresh_registry.ref("team-a/one:v1"))
        first = blob_gets(fresh_registry)
        fresh_registry.clear_request_log()
        events: list[ProgressEvent] = []
        image = client.pull(fresh_registry.ref("team-b/two:v1"), progress=events.append)
        second = blob_gets(fresh_registry)
        _check_registered(client, image, two)
        record = client.store.meta.layer_diff_id(shared_digest := one.layer_digests[0])
        assert record is not None and record.repository == "team-a/one"
    assert sum(shared_digest in p for p in first) == 1
    assert not any(shared_digest in p for p in second)
    assert sorted(p.rsplit("/", 1)[-1] for p in second) == sorted(
        [two.config_digest, two.layer_digests[1]]
    )
    assert [(e.id, e.digest, e.refs) for e in events if e.status == "Already exists"] == [
        (shared_digest[7:19], shared_digest, (fresh_registry.ref("team-b/two:v1"),))
    ]


def test_blob_without_a_recorded_diff_id(
    fresh_registry: RegistryServer, layout_cache: LayoutCache, tmp_path: Path
) -> None:
    """A blob stored by an older imgpull (no diffID row): not downloaded again,
    its diffID is computed from the file."""
    shared = random_layer(300 * 1024, seed=61)
    one = layout_cache.get((shared, random_layer(50 * 1024, seed=62)), ref="old-one")
    two = layout_cache.get((shared, random_layer(60 * 1024, seed=63)), ref="old-two")
    push(one, fresh_registry, "old/one:v1", "oci")
    push(two, fresh_registry, "old/two:v1", "oci")
    with imgpull.Client(tmp_path) as client:
        client.pull(fresh_registry.ref("old/one:v1"))
    with sqlite3.connect(tmp_path / "imgpull.db") as db:
        db.execute("DELETE FROM layer_diff_ids")
    fresh_registry.clear_request_log()
    with imgpull.Client(tmp_path) as client:
        image = client.pull(fresh_registry.ref("old/two:v1"))
        record = client.store.meta.layer_diff_id(shared_digest := two.layer_digests[0])
        assert record is not None and record.diff_id == two.diff_ids[0]
        assert record.uncompressed_size is None  # computed from the file
        assert [d for d, _ in client.store.meta.image_rootfs(image.id)] == two.diff_ids
    assert not any(shared_digest in p for p in blob_gets(fresh_registry))


def test_schema_2_store_is_migrated(pushed_image: PushedImage, tmp_path: Path) -> None:
    """A store written before diffIDs were recorded: the tables appear, and the
    next pull computes the diffIDs of the blobs already there (no download)."""
    with imgpull.Client(tmp_path) as client:
        image = client.pull(pushed_image.ref("oci"))
    db = sqlite3.connect(tmp_path / "imgpull.db", isolation_level=None)
    db.execute("DROP TABLE layer_diff_ids")
    db.execute("DROP TABLE image_rootfs")
    db.execute("PRAGMA user_version=2")
    db.close()
    pushed_image.registry.clear_request_log()
    with imgpull.Client(tmp_path) as client:
        assert client.store.meta.image_rootfs(image.id) == []
        again = client.pull(pushed_image.ref("oci"))
        assert again.id == image.id and not again.updated
        assert [
            d for d, _ in client.store.meta.image_rootfs(image.id)
        ] == pushed_image.image.diff_ids
    assert blob_gets(pushed_image.registry) == []
    db = sqlite3.connect(tmp_path / "imgpull.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 5
    db.close()
