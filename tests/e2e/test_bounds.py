"""Bounds on what a registry's bytes may make imgpull take (issue 9, 2a-2c).

- rootfs exports: a GNU long name or a PAX record of 256 MiB (a few hundred
  KB of gzip) is refused from its header, in bounded memory, with one short
  line naming the limit;
- pulls: a layer that decompresses past --max-ratio (gzip or zstd bomb) is
  refused while it streams, nothing kept for it;
- a blob whose descriptor gives no size (schema1) stops at
  --max-unsized-blob; one with a size never takes bytes beyond it.

Real registry for what it serves (hand-made layers pushed with skopeo), the
fake one for bodies no registry sends (endless).
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.cli import run_cli, run_cli_measured
from support.fakeregistry import FakeRegistry, sha256_digest
from support.images import FIXED_EPOCH, Compression, StreamLayer, build_oci_layout, push
from support.registry import RegistryServer
from support.schema1 import sign
from support.tarstreams import MiB, letters, member_stream, tar_file, tar_header, zeros_tar

import imgpull
from imgpull.errors import LimitExceededError, SizeMismatchError
from imgpull.manifest import DOCKER_MANIFEST_V1_SIGNED
from imgpull.progress import ProgressEvent


def _long_name_tar(size: int) -> Iterator[bytes]:
    """A benign file, then a GNU long name entry of `size` bytes for a file."""
    yield tar_file("ok", b"ok\n")
    yield from member_stream(tar_header("././@LongLink", tarfile.GNUTYPE_LONGNAME, size), size)
    yield tar_file("x", b"x\n") + bytes(1024)


def _pax_record_tar(size: int) -> Iterator[bytes]:
    """A benign file, then a PAX header holding one `path` record of `size` bytes."""
    yield tar_file("ok", b"ok\n")
    # "<length> path=<value>\n", the length counting the whole record.
    prefix = f"{size} path=".encode()
    yield tar_header("././@PaxHeader", tarfile.XHDTYPE, size, tarfile.USTAR_FORMAT) + prefix
    yield from letters(size - len(prefix) - 1)
    yield b"\n" + bytes(-size % 512)
    yield tar_file("x", b"x\n") + bytes(1024)


# rootfs: names and tar headers ---------------------------------------------------


@pytest.mark.parametrize(
    ("case", "build", "want"),
    [
        (
            "gnu-long-name",
            _long_name_tar,
            "a GNU long name entry of 268435456 bytes is over the limit of 4096 bytes (PATH_MAX)",
        ),
        (
            "pax-record",
            _pax_record_tar,
            "a PAX extended header of 268435456 bytes is over the limit of 1048576 bytes",
        ),
    ],
)
def test_rootfs_refuses_huge_names_in_bounded_memory(
    fresh_registry: RegistryServer,
    tmp_path: Path,
    case: str,
    build: Callable[[int], Iterator[bytes]],
    want: str,
) -> None:
    layer = StreamLayer(case, lambda: build(256 * MiB))
    image = build_oci_layout(tmp_path / "layout", [layer])
    assert image.layers[0].size < 2 * MiB  # 256 MiB of one letter
    push(image, fresh_registry, "names/img:latest", "v2s2")
    ref = fresh_registry.ref("names/img:latest")
    root = tmp_path / "root"
    # The layer is also a decompression bomb: let it in, to see the export's bounds.
    with imgpull.Client(root, max_ratio=0) as client:
        client.pull(ref)
    work = tmp_path / "work"
    outside = work / "outside"
    outside.mkdir(parents=True)
    (outside / "sentinel").write_text("untouched\n")
    dest = work / "rootfs"
    # No ratio limit either: the name's own bound must hold alone.
    code, _, err, rss_kib = run_cli_measured(
        "export", ref, str(dest), "-f", "rootfs", "--max-ratio", "0", "--root", str(root)
    )
    assert code == 1, err
    assert err.startswith("Error: layer sha256:") and err.count("\n") == 1, err
    assert want in err and len(err) < 300, err
    # The 256 MiB were never held (they took 1.8 GB before this bound).
    assert rss_kib < 200 * 1024, f"peak RSS {rss_kib} KiB"
    assert not dest.exists()
    assert [p.name for p in work.iterdir()] == ["outside"]
    assert [p.name for p in outside.iterdir()] == ["sentinel"]
    assert (outside / "sentinel").read_text() == "untouched\n"


# Pulls: decompression bombs ---------------------------------------------------------


def _assert_nothing_kept(root: Path, digest: str) -> None:
    hexpart = digest.removeprefix("sha256:")
    assert not (root / "blobs" / "sha256" / hexpart).exists()
    assert not (root / "ingest" / "sha256" / hexpart).exists()
    with imgpull.Client(root) as client:
        assert client.images() == []


@pytest.mark.parametrize(("compression", "size"), [("gzip", 256 * MiB), ("zstd", 1024 * MiB)])
def test_pull_refuses_a_decompression_bomb(
    fresh_registry: RegistryServer, tmp_path: Path, compression: Compression, size: int
) -> None:
    bomb = StreamLayer(
        f"zeros-{compression}", lambda: zeros_tar(size), compresslevel=9, compression=compression
    )
    image = build_oci_layout(tmp_path / "layout", [bomb])
    digest = image.layers[0].digest
    assert image.layers[0].tar_size > 200 * image.layers[0].size
    push(image, fresh_registry, "bomb/img:latest", "oci")
    ref = fresh_registry.ref("bomb/img:latest")
    root = tmp_path / "root"
    for _ in range(2):  # a rerun refuses it again, from scratch
        start = time.monotonic()
        with imgpull.Client(root) as client, pytest.raises(LimitExceededError) as info:
            client.pull(ref)
        assert time.monotonic() - start < 10
        assert (info.value.kind, info.value.limit) == ("ratio", 200)
        message = str(info.value)
        assert message.startswith(f"layer {digest}: decompresses to more than 200 times"), message
        assert "--max-ratio 200" in message and "\n" not in message
        _assert_nothing_kept(root, digest)
    # A genuine layer that needs it: the limit raised (0: none), it pulls.
    with imgpull.Client(root, max_ratio=0) as client:
        pulled = client.pull(ref)
    assert [d.digest for d in pulled.layers] == [digest]


def _text_tar(size: int) -> Iterator[bytes]:
    """A tar of one text file of about `size` bytes (gzip makes it ~1/5)."""
    lines = b"".join(
        b"%08d lorem ipsum dolor %d\n" % (i, i * 7919 % 1000) for i in range(size // 30)
    )
    yield tar_file("text", lines) + bytes(1024)


def test_pull_ratio_limit_from_the_cli(fresh_registry: RegistryServer, tmp_path: Path) -> None:
    """A lowered --max-ratio refuses an ordinary layer (one line, exit 1,
    nothing kept); the default lets it in."""
    image = build_oci_layout(
        tmp_path / "layout", [StreamLayer("text", lambda: _text_tar(24 * MiB))]
    )
    info = image.layers[0]
    assert 3 * info.size < info.tar_size < 200 * info.size
    push(image, fresh_registry, "text/img:latest", "v2s2")
    ref = fresh_registry.ref("text/img:latest")
    root = tmp_path / "root"
    proc = run_cli("pull", "--max-ratio", "3", "--root", str(root), ref)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"Error: layer {info.digest}: decompresses to more than 3 ")
    assert "--max-ratio 3" in proc.stderr
    _assert_nothing_kept(root, info.digest)
    with imgpull.Client(root) as client:
        client.pull(ref)


# Blobs of unknown size ------------------------------------------------------------------


def _small_layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = b"hello\n"
        info = tarfile.TarInfo("hello")
        info.size, info.mtime = len(data), FIXED_EPOCH
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


def _serve_schema1(fake: FakeRegistry, blob: str) -> None:
    """Serve test/endless:v1, a signed schema1 manifest of one layer (its
    descriptor has no size); its digest is its payload's."""
    v1 = {"id": "a" * 64, "os": "linux", "architecture": "amd64", "created": "2024-01-01T00:00:00Z"}
    payload = {
        "schemaVersion": 1,
        "name": "test/endless",
        "tag": "v1",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": blob}],
        "history": [{"v1Compatibility": json.dumps(v1)}],
    }
    raw = json.dumps(payload, indent=3).encode()
    fake.add_manifest(
        "test/endless", "v1", sign(raw), DOCKER_MANIFEST_V1_SIGNED, digest=sha256_digest(raw)
    )


def test_unsized_blob_stops_at_its_ceiling(tmp_path: Path) -> None:
    layer = _small_layer()
    digest = sha256_digest(layer)
    with FakeRegistry() as fake:
        # A real prefix, then zeros without end (bounded at 1 GiB here).
        endless = fake.add_endless_blob(digest, prefix=layer)
        _serve_schema1(fake, digest)
        root = tmp_path / "root"
        for _ in range(2):  # a rerun starts over, and stops again
            sent, start = endless.sent, time.monotonic()
            with (
                imgpull.Client(root, max_unsized_blob=4 * MiB) as client,
                pytest.raises(LimitExceededError) as info,
            ):
                client.pull(fake.ref("test/endless:v1"))
            assert time.monotonic() - start < 10
            assert (info.value.kind, info.value.limit) == ("unsized", 4 * MiB)
            message = str(info.value)
            assert message.startswith(f"blob {digest}: more than 4194304 bytes"), message
            assert "--max-unsized-blob 4194304" in message and "\n" not in message
            _assert_nothing_kept(root, digest)
            # What went out: the ceiling, plus what socket buffers took.
            assert endless.sent - sent < 4 * MiB + 16 * MiB


def test_unsized_blob_from_a_mirror_falls_back_to_the_registry(tmp_path: Path) -> None:
    """An endless body is the endpoint's failure: the next one is tried."""
    layer = _small_layer()
    digest = sha256_digest(layer)
    with FakeRegistry() as origin, FakeRegistry() as mirror:
        origin.blobs[digest] = layer
        endless = mirror.add_endless_blob(digest, prefix=layer)
        for fake in (origin, mirror):
            _serve_schema1(fake, digest)
        events: list[ProgressEvent] = []
        with imgpull.Client(
            tmp_path / "root",
            mirrors={origin.host: [f"http://{mirror.host}"]},
            certs_dirs=[],
            max_unsized_blob=MiB,
        ) as client:
            image = client.pull(origin.ref("test/endless:v1"), progress=events.append)
        assert [d.digest for d in image.layers] == [digest]
        assert any(f"mirror {mirror.host} failed" in e.status for e in events)
        assert endless.sent < MiB + 32 * MiB


def test_sized_blob_takes_no_byte_beyond_its_size(tmp_path: Path) -> None:
    """A descriptor's size bounds the body: an endless one fails at once."""
    layer = _small_layer()
    digest = sha256_digest(layer)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(gzip.decompress(layer))]},
        }
    ).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256_digest(config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest,
                "size": len(layer),
            }
        ],
    }
    with FakeRegistry() as fake:
        fake.add_blob(config)
        endless = fake.add_endless_blob(digest, prefix=layer)
        fake.add_manifest(
            "test/sized", "v1", manifest, "application/vnd.oci.image.manifest.v1+json"
        )
        root = tmp_path / "root"
        start = time.monotonic()
        with imgpull.Client(root) as client, pytest.raises(SizeMismatchError) as info:
            client.pull(fake.ref("test/sized:v1"))
        assert time.monotonic() - start < 10
        assert info.value.expected == len(layer) and info.value.actual > len(layer)
        assert not (root / "blobs" / "sha256" / digest[7:]).exists()
        # What was kept to resume is at most the blob's own bytes.
        partial = root / "ingest" / "sha256" / digest[7:]
        assert not partial.exists() or partial.stat().st_size <= len(layer)
        assert endless.sent < 32 * MiB
