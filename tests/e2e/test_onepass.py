"""`pull --rootfs DIR` (one pass: registry → store and root filesystem) and
`pull --fetch-only` (digests only; diffIDs checked at first use), against a
real registry; kills and stalls through a throttling relay process.

The trees one pass writes are compared with umoci's in test_export_umoci.py
(v2s2, OCI, schema1, zstd); here: what a failure leaves, reruns, a kill -9,
a stored image, the checks of a fetch-only image at each first use.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.cli import kill_rootfs_pull, run_cli
from support.images import Dir, File, ImageInfo, LayoutCache, files_layer, push, random_layer
from support.registry import RegistryServer
from support.throttle import ThrottledRelay
from support.trees import tree

import imgpull
from imgpull.errors import ImgpullError, PullCancelledError
from imgpull.export import ExportError
from imgpull.layers import LayerMismatchError
from imgpull.transfer import CancelToken

TIMEOUT = 60
# Files in the bottom and top layers, a big incompressible file between.
LAYERS = (
    files_layer(
        {
            "etc": Dir(),
            "etc/os-release": b"ID=test\n",
            "usr": Dir(),
            "usr/bin": Dir(),
            "usr/bin/tool": File(b"#!/bin/sh\necho 1\n", mode=0o755),
            **{f"usr/share/f{i:03d}": f"file {i}\n".encode() for i in range(200)},
        }
    ),
    random_layer(12_000_000, seed=611),
    files_layer({"etc/os-release": b"ID=test\nVERSION=2\n", "opt": Dir(), "opt/x": b"x\n"}),
)


@dataclass(frozen=True)
class Images:
    registry: RegistryServer
    relay: ThrottledRelay
    good: ImageInfo
    bad: ImageInfo  # its config's second diffID is wrong

    def ref(self, name: str, *, slow: bool = False) -> str:
        host = self.relay.host if slow else self.registry.host
        return f"{host}/test/onepass-{name}:v1"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, layout_cache: LayoutCache) -> Iterator[Images]:
    good = layout_cache.get(LAYERS, ref="onepass")
    wrong = [good.diff_ids[0], "sha256:" + "0" * 64, good.diff_ids[2]]
    bad = layout_cache.get(
        LAYERS, ref="onepass-bad", config_extra={"rootfs": {"type": "layers", "diff_ids": wrong}}
    )
    with (
        RegistryServer(workdir=tmp_path_factory.mktemp("onepass-registry")) as registry,
        # ~12 MB at 8 MB/s: the middle layer takes 1.5 s, the pull is
        # still downloading when the bottom layer is written.
        ThrottledRelay(registry.host, rate=8_000_000) as relay,
    ):
        push(good, registry, "test/onepass-good:v1", "oci")
        push(bad, registry, "test/onepass-bad:v1", "v2s2")
        yield Images(registry, relay, good, bad)


@pytest.fixture(scope="module")
def expected_tree(images: Images, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The image's tree as `pull` + `export --format rootfs` writes it."""
    work = tmp_path_factory.mktemp("onepass-expected")
    with imgpull.Client(work / "store") as client:
        client.export(images.ref("good"), "rootfs", work / "rootfs")
    got = tree(work / "rootfs")
    assert got["etc/os-release"][3] == len(b"ID=test\nVERSION=2\n")  # the top layer's
    return got


def _one_pass(ref: str, root: Path, dest: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("pull", ref, "--root", str(root), "--rootfs", str(dest), *extra)


def test_one_pass_writes_the_tree_and_registers_the_layers(
    images: Images, expected_tree: dict[str, object], tmp_path: Path
) -> None:
    dest = tmp_path / "rootfs"
    proc = _one_pass(images.ref("good"), tmp_path / "store", dest)
    assert proc.returncode == 0, proc.stderr
    assert tree(dest) == expected_tree
    # docker's statuses: each downloaded layer extracted, then complete.
    for digest in images.good.layer_digests:
        short = digest[7:19]
        assert f"{short}: Extracting" in proc.stdout or f"{short}: Pull complete" in proc.stdout
        assert f"{short}: Pull complete" in proc.stdout
    with imgpull.Client(tmp_path / "store") as client:
        inspected = client.inspect(images.ref("good"))
        assert [la["DiffID"] for la in inspected["Layers"]] == images.good.diff_ids
        # The store's image exports to the same tree, and the job is over.
        client.export(images.ref("good"), "rootfs", tmp_path / "again")
        assert client.store.meta.rootfs_jobs() == []
    assert tree(tmp_path / "again") == expected_tree


def test_one_pass_of_a_stored_image(
    images: Images, expected_tree: dict[str, object], tmp_path: Path
) -> None:
    """The image is in the store already: its tree is written from there,
    into an existing empty directory too."""
    root = tmp_path / "store"
    assert run_cli("pull", images.ref("good"), "--root", str(root)).returncode == 0
    dest = tmp_path / "rootfs"
    dest.mkdir()
    images.registry.clear_request_log()
    proc = _one_pass(images.ref("good"), root, dest)
    assert proc.returncode == 0, proc.stderr
    assert "Image is up to date" in proc.stdout
    assert tree(dest) == expected_tree
    assert not [e for e in images.registry.request_log() if "/blobs/" in e.path]


def test_a_bad_diff_id_fails_the_one_pass_and_empties_dir(images: Images, tmp_path: Path) -> None:
    root = tmp_path / "store"
    for existed in (False, True):
        dest = tmp_path / f"rootfs-{existed}"
        if existed:
            dest.mkdir()
        proc = _one_pass(images.ref("bad"), root, dest)
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert lines[0].startswith("Error: layer " + images.bad.layer_digests[1]), proc.stderr
        assert "sha256:" + "0" * 64 in lines[0] and "the image is corrupt" in lines[0]
        what = "was emptied" if existed else "was removed"
        assert lines[1].startswith(f"{dest} {what}: nothing of the image is in it"), lines
        assert dest.is_dir() == existed
        assert not existed or list(dest.iterdir()) == []
    with imgpull.Client(root) as client:
        assert client.images() == []


def test_dir_must_be_empty_and_not_in_use(images: Images, tmp_path: Path) -> None:
    dest = tmp_path / "rootfs"
    dest.mkdir()
    (dest / "mine").write_text("keep me")
    proc = _one_pass(images.ref("good"), tmp_path / "store", dest)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"Error: {dest} holds 'mine', not written by imgpull: move it away, "
        f"or pass --force to empty {dest}"
    )
    assert (dest / "mine").read_text() == "keep me"

    busy = tmp_path / "busy"
    busy.mkdir()
    fd = os.open(busy, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        proc = _one_pass(images.ref("good"), tmp_path / "store", busy)
        assert proc.returncode == 1
        assert proc.stderr.strip() == f"Error: another imgpull is writing {busy}"
    finally:
        os.close(fd)

    proc = _one_pass(images.ref("good"), tmp_path / "store", tmp_path / "x", "--fetch-only")
    assert proc.returncode == 1 and "give --rootfs or --fetch-only" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_kill_9_during_one_pass_reruns_to_the_same_tree(
    images: Images, expected_tree: dict[str, object], tmp_path: Path
) -> None:
    root, dest = tmp_path / "store", tmp_path / "rootfs"
    # Killed once the bottom layer is being written, the big one still
    # downloading through the relay.
    kill_rootfs_pull(images.ref("good", slow=True), root, dest, TIMEOUT)
    left = tree(dest)
    assert left and left != expected_tree  # part of it
    rerun = _one_pass(images.ref("good"), root, dest)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{dest} holds part of the root filesystem of " in rerun.stdout
    assert tree(dest) == expected_tree


def test_cancel_during_one_pass_empties_dir_and_a_rerun_completes(
    images: Images, expected_tree: dict[str, object], tmp_path: Path
) -> None:
    dest = tmp_path / "rootfs"
    token = CancelToken()
    errors: list[BaseException] = []

    def pull() -> None:
        with imgpull.Client(tmp_path / "store") as client:
            try:
                client.pull(images.ref("good", slow=True), rootfs=dest, cancel=token)
            except ImgpullError as exc:
                errors.append(exc)

    thread = threading.Thread(target=pull)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not (dest / "usr" / "share").is_dir() and thread.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    token.cancel()
    thread.join(TIMEOUT)
    assert len(errors) == 1 and isinstance(errors[0], PullCancelledError), errors
    assert any("was removed: nothing of the image" in n for n in errors[0].__notes__)
    assert not dest.exists()
    with imgpull.Client(tmp_path / "store") as client:
        image = client.pull(images.ref("good"), rootfs=dest)
        assert image.diff_ids_verified
    assert tree(dest) == expected_tree


# Fetch-only ------------------------------------------------------------------


def test_fetch_only_checks_digests_and_leaves_diff_ids_for_later(
    images: Images, tmp_path: Path
) -> None:
    with imgpull.Client(tmp_path) as client:
        image = client.pull(images.ref("good"), fetch_only=True)
        meta = client.store.meta
        assert not image.diff_ids_verified and not meta.is_verified(image.id)
        assert meta.image_rootfs(image.id) == []
        assert all(meta.layer_diff_id(d) is None for d in images.good.layer_digests)
        # inspect needs the diffIDs: checked now, and recorded.
        inspected = client.inspect(images.ref("good"))
        assert [la["DiffID"] for la in inspected["Layers"]] == images.good.diff_ids
        assert meta.is_verified(image.id)
        assert client.pull(images.ref("good")).diff_ids_verified


@pytest.mark.parametrize(
    "use", ["export-rootfs", "export-oci", "export-docker-archive", "inspect", "verify", "rootfs"]
)
def test_fetch_only_refuses_a_bad_diff_id_at_first_use(
    images: Images, tmp_path: Path, use: str
) -> None:
    ref = images.ref("bad")
    root = tmp_path / "store"
    proc = run_cli("pull", ref, "--root", str(root), "--fetch-only")
    assert proc.returncode == 0, proc.stderr  # the digests are right
    assert "Extracting" not in proc.stdout and "Pull complete" in proc.stdout
    dest = tmp_path / "out"
    args = {
        "export-rootfs": ["export", ref, str(dest), "--format", "rootfs"],
        "export-oci": ["export", ref, str(dest), "--format", "oci"],
        "export-docker-archive": ["export", ref, str(dest), "--format", "docker-archive"],
        "inspect": ["inspect", ref],
        "verify": ["verify", ref],
        "rootfs": ["pull", ref, "--rootfs", str(dest)],
    }[use]
    for _ in range(2):  # refused, and still refused: nothing was recorded as checked
        proc = run_cli(*args, "--root", str(root))
        assert proc.returncode == 1, proc.stdout
        first = proc.stderr.splitlines()[0]
        assert first.startswith("Error: ") and "sha256:" + "0" * 64 in first, proc.stderr
        assert images.bad.layer_digests[1][7:] in first, first
        assert not dest.exists()
    with imgpull.Client(root) as client:
        assert not client.store.meta.is_verified(images.bad.config_digest)


def test_fetch_only_then_verify_and_export(
    images: Images, expected_tree: dict[str, object], tmp_path: Path
) -> None:
    root = tmp_path / "store"
    assert run_cli("pull", images.ref("good"), "--root", str(root), "--fetch-only").returncode == 0
    proc = run_cli("verify", images.ref("good"), "--root", str(root))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{images.good.config_digest}: verified (3 layers)"
    proc = run_cli(
        "export", images.ref("good"), str(tmp_path / "fs"), "-f", "rootfs", "--root", str(root)
    )
    assert proc.returncode == 0, proc.stderr
    assert tree(tmp_path / "fs") == expected_tree


def test_verify_finds_a_damaged_blob(images: Images, tmp_path: Path) -> None:
    with imgpull.Client(tmp_path) as client:
        image = client.pull(images.ref("good"))
        blob = client.store.content.path(images.good.layer_digests[2])
        blob.chmod(0o644)
        data = bytearray(blob.read_bytes())
        data[-1] ^= 1
        blob.write_bytes(bytes(data))
        with pytest.raises(ImgpullError, match="the store is damaged"):
            client.verify(images.ref("good"))
        assert client.store.meta.is_verified(image.id)  # a full pull checked it


def test_fetch_only_bulk_and_all_tags(images: Images, tmp_path: Path) -> None:
    with imgpull.Client(tmp_path) as client:
        results = client.pull_many([images.ref("good"), images.ref("bad")], fetch_only=True)
        assert all(isinstance(r, imgpull.Image) and not r.diff_ids_verified for r in results)
        with pytest.raises(LayerMismatchError):
            client.verify(images.ref("bad"))
        with pytest.raises(ExportError):
            client.export(images.ref("bad"), "docker-archive", tmp_path / "a.tar")
        assert not (tmp_path / "a.tar").exists()
