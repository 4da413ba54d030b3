"""Bytes checked on the way out (issue 16): a stored blob truncated or
replaced behind imgpull's back is never exported; a pull refetches what
fails the cheap check (size), `imgpull verify --repair` what fails its
digest. Against the session registry's small image."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from pathlib import Path

import pytest
from support.cli import run_cli
from support.pushed import PushedImage

import imgpull
from imgpull.errors import DamagedBlobError
from imgpull.progress import ProgressEvent

FORMATS = ("oci", "docker-archive", "rootfs")
TIMEOUT = 60


def _pull(root: Path, ref: str) -> imgpull.Image:
    with imgpull.Client(root) as client:
        return client.pull(ref)


def _blob(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest[7:]


def _sound(path: Path, digest: str) -> bool:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == digest


def _damage(root: Path, digest: str, how: str) -> None:
    """Damage the store's file in place, as a disk or a hand would:
    `truncated` to half, or `replaced` by other bytes of the same size."""
    path = _blob(root, digest)
    data = path.read_bytes()
    path.chmod(0o644)  # blobs are stored read-only
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else data[::-1])
    assert not _sound(path, digest)


def _target(pushed_image: PushedImage, which: str) -> str:
    """The digest of the blob a test damages: the config or the bottom layer."""
    return pushed_image.config_digest if which == "config" else pushed_image.layer_digests[0]


def _assert_damage_line(stderr: str, digest: str, ref: str) -> None:
    """The one line a damaged blob gets: it names the blob, says the store is
    damaged and what to run."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"Error: blob {digest} in the store "), stderr
    assert "the store is damaged" in lines[0], stderr
    assert f"imgpull verify --repair {ref}" in lines[0], stderr


def _assert_export_refused(root: Path, ref: str, dest: Path, fmt: str, digest: str) -> None:
    """`imgpull export REF DEST` fails with the line naming the damaged
    `digest`, and writes nothing: no DEST, no temporaries beside it (ROOT's
    folder holds ROOT alone)."""
    proc = run_cli("export", ref, str(dest), "--format", fmt, "--root", str(root), timeout=TIMEOUT)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    _assert_damage_line(proc.stderr, digest, ref)
    assert sorted(p.name for p in root.parent.iterdir()) == [root.name]


@pytest.mark.parametrize("how", ["truncated", "replaced"])
@pytest.mark.parametrize("which", ["layer", "config"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_refuses_a_damaged_blob(
    pushed_image: PushedImage, tmp_path: Path, fmt: str, which: str, how: str
) -> None:
    root, dest = tmp_path / "root", tmp_path / "out"
    ref = pushed_image.ref("v2s2")
    _pull(root, ref)
    digest = _target(pushed_image, which)
    _damage(root, digest, how)
    _assert_export_refused(root, ref, dest, fmt, digest)


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_of_a_fetch_only_image_refuses_a_damaged_layer(
    pushed_image: PushedImage, tmp_path: Path, fmt: str
) -> None:
    """Its diffIDs are checked first (oci) or as it is written: a damaged
    layer gets the same line, not a diffID mismatch."""
    root, dest = tmp_path / "root", tmp_path / "out"
    ref = pushed_image.ref("oci")
    assert run_cli("pull", "--fetch-only", ref, "--root", str(root)).returncode == 0
    digest = pushed_image.layer_digests[1]
    _damage(root, digest, "replaced")
    _assert_export_refused(root, ref, dest, fmt, digest)


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_into_an_empty_dir_leaves_it_empty(
    pushed_image: PushedImage, tmp_path: Path, fmt: str
) -> None:
    root, dest = tmp_path / "root", tmp_path / "out"
    ref = pushed_image.ref("oci")
    _pull(root, ref)
    _damage(root, pushed_image.layer_digests[-1], "replaced")
    dest.mkdir()
    target = dest / "image.tar" if fmt == "docker-archive" else dest
    with imgpull.Client(root) as client, pytest.raises(DamagedBlobError) as caught:
        client.export(ref, fmt, target)
    assert caught.value.digest == pushed_image.layer_digests[-1]
    assert list(dest.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "root"]


def test_oci_export_copy_is_hashed_as_written(
    pushed_image: PushedImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no hard link can be made (another filesystem), each blob is
    copied (or reflinked) and checked all the same."""
    root = tmp_path / "root"
    ref = pushed_image.ref("v2s2")
    _pull(root, ref)

    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    with imgpull.Client(root) as client:
        client.export(ref, "oci", tmp_path / "good")
        for digest in [pushed_image.config_digest, *pushed_image.layer_digests]:
            copied = tmp_path / "good" / "blobs" / "sha256" / digest[7:]
            assert _sound(copied, digest)
            assert copied.stat().st_ino != _blob(root, digest).stat().st_ino
        _damage(root, pushed_image.layer_digests[1], "truncated")
        with pytest.raises(DamagedBlobError, match="verify --repair"):
            client.export(ref, "oci", tmp_path / "bad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good", "root"]


def test_pull_refetches_a_truncated_blob_then_export_works(
    pushed_image: PushedImage, tmp_path: Path
) -> None:
    root, dest = tmp_path / "root", tmp_path / "layout"
    ref = pushed_image.ref("v2s2")
    _pull(root, ref)
    layer, config = pushed_image.layer_digests[1], pushed_image.config_digest
    sizes = {d: _blob(root, d).stat().st_size for d in (layer, config)}
    _damage(root, layer, "truncated")
    _damage(root, config, "truncated")
    proc = run_cli("pull", ref, "--root", str(root), timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    for digest, size in sizes.items():
        warning = f"blob {digest} in the store is {size // 2} bytes, not {size}: fetching it again"
        assert f"Warning: {warning}\n" in proc.stdout, proc.stdout
        assert _sound(_blob(root, digest), digest)
    assert f"{layer[7:19]}: Pull complete" in proc.stdout, proc.stdout
    # The other layers were sound: not fetched again.
    assert f"{pushed_image.layer_digests[0][7:19]}: Pulling fs layer" not in proc.stdout
    proc = run_cli("export", ref, str(dest), "--root", str(root), timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    for digest in [config, *pushed_image.layer_digests]:
        assert _sound(dest / "blobs" / "sha256" / digest[7:], digest)
    assert run_cli("verify", ref, "--root", str(root)).returncode == 0


def test_verify_names_a_replaced_blob_and_suggests_repair(
    pushed_image: PushedImage, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    ref = pushed_image.ref("oci")
    _pull(root, ref)
    layer = pushed_image.layer_digests[0]
    _damage(root, layer, "replaced")
    # Its size is right: a pull does not see it (the cheap check only).
    assert run_cli("pull", ref, "--root", str(root), timeout=TIMEOUT).returncode == 0
    proc = run_cli("verify", ref, "--root", str(root))
    assert proc.returncode == 1, proc.stdout
    _assert_damage_line(proc.stderr, layer, ref)


@pytest.mark.parametrize("by", ["reference", "image ID"])
def test_verify_repair_refetches_then_verify_and_export_pass(
    pushed_image: PushedImage, tmp_path: Path, by: str
) -> None:
    root = tmp_path / "root"
    ref = pushed_image.ref("v2s2")
    image = _pull(root, ref)
    given = ref if by == "reference" else image.id[7:19]
    layer, config = pushed_image.layer_digests[2], pushed_image.config_digest
    _damage(root, layer, "replaced")
    _damage(root, config, "truncated")
    proc = run_cli("verify", "--repair", given, "--root", str(root), timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    for digest in (layer, config):
        assert f"Damaged: blob {digest} in the store" in proc.stdout, proc.stdout
        assert f"Repaired: blob {digest}" in proc.stdout, proc.stdout
        assert _sound(_blob(root, digest), digest)
    assert proc.stdout.splitlines()[-1] == f"{image.id}: verified (3 layers)"
    assert f"{pushed_image.layer_digests[0][7:19]}: Pulling fs layer" not in proc.stdout
    proc = run_cli("verify", given, "--root", str(root))
    assert proc.returncode == 0, proc.stderr
    for fmt in FORMATS:
        dest = tmp_path / fmt
        proc = run_cli("export", ref, str(dest), "-f", fmt, "--root", str(root), timeout=TIMEOUT)
        assert proc.returncode == 0, proc.stderr
    # The references are as they were: the repair pulled by digest.
    with imgpull.Client(root) as client:
        assert {r.reference for r in client.store.meta.references()} == {
            f"{pushed_image.registry.host}/test/small:v2s2",
            f"{pushed_image.registry.host}/test/small@{pushed_image.digests['v2s2']}",
        }


def test_verify_repair_of_a_sound_image_fetches_nothing(
    pushed_image: PushedImage, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    ref = pushed_image.ref("v2s2")
    image = _pull(root, ref)
    proc = run_cli("verify", "--repair", ref, "--root", str(root), timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{image.id}: verified (3 layers)\n"


def test_async_verify_repair(pushed_image: PushedImage, tmp_path: Path) -> None:
    root = tmp_path / "root"
    ref = pushed_image.ref("oci")
    _pull(root, ref)
    layer = pushed_image.layer_digests[1]
    _damage(root, layer, "replaced")
    events: list[ProgressEvent] = []

    async def main() -> list[str]:
        async with imgpull.AsyncClient(root) as client:
            with pytest.raises(DamagedBlobError, match="--repair"):
                await client.verify(ref)
            return await client.verify(ref, repair=True, progress=events.append)

    diff_ids = asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    assert diff_ids == pushed_image.image.diff_ids
    assert ProgressEvent(f"Repaired: blob {layer}") in events
    assert _sound(_blob(root, layer), layer)
