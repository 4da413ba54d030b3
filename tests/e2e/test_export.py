"""`imgpull export`: OCI layouts, docker-archive tars and root filesystems,
checked with skopeo and umoci against a real registry."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.cli import run_cli
from support.images import (
    MT_OCI_CONFIG,
    MT_OCI_INDEX,
    MT_OCI_LAYER_GZIP,
    MT_OCI_MANIFEST,
    REF_NAME_ANNOTATION,
    Dir,
    File,
    Hardlink,
    LayoutCache,
    OpaqueWhiteout,
    Symlink,
    Whiteout,
    _skopeo,
    files_layer,
    push,
    sha256_digest,
)
from support.pushed import PushedImage, push_both
from support.registry import MissingToolError, RegistryServer, require_tool
from support.trees import tree

import imgpull
from imgpull.export import ExportError, ExtractError


def store_files(root: Path) -> dict[str, int]:
    """Every file of a store but the database: path -> size."""
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("imgpull.db")
    }


# OCI layout --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["v2s2", "oci"])
def test_oci_export_skopeo_roundtrip(
    pushed_image: PushedImage, fresh_registry: RegistryServer, tmp_path: Path, fmt: str
) -> None:
    root, dest = tmp_path / "root", tmp_path / "layout"
    ref = pushed_image.ref(fmt)  # type: ignore[arg-type]
    with imgpull.Client(root) as client:
        # Not pulled yet: export pulls it.
        assert client.export(ref, "oci", dest) == dest
        image_id = client.resolve(ref)
    assert json.loads((dest / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((dest / "index.json").read_text())
    assert index["mediaType"] == MT_OCI_INDEX
    (desc,) = index["manifests"]
    assert desc["annotations"] == {REF_NAME_ANNOTATION: fmt}
    if fmt == "oci":
        assert desc["digest"] == pushed_image.digests[fmt]  # the manifest as pulled
    else:  # converted as skopeo does: the OCI manifest of the image's source layout
        blob = (dest / "blobs/sha256" / desc["digest"][7:]).read_bytes()
        assert json.loads(blob) == pushed_image.image.manifest

    inspected = json.loads(
        _skopeo(["inspect", f"oci:{dest}:{fmt}"], timeout=120).stdout  # accepted by skopeo
    )
    assert inspected["Digest"] == desc["digest"]
    assert inspected["Layers"] == pushed_image.layer_digests
    config = json.loads(_skopeo(["inspect", "--config", f"oci:{dest}:{fmt}"], 120).stdout)
    assert config["rootfs"]["diff_ids"] == pushed_image.image.diff_ids

    # Blobs are the store's files (hard links on one filesystem).
    for digest in [image_id, *pushed_image.layer_digests]:
        hexpart = digest.split(":", 1)[1]
        exported, stored = dest / "blobs/sha256" / hexpart, root / "blobs/sha256" / hexpart
        assert exported.read_bytes() == stored.read_bytes()
        assert exported.stat().st_ino == stored.stat().st_ino

    # Copied back into a registry unchanged: the same manifest digest.
    pushed = push(dest, fresh_registry, f"roundtrip/img:{fmt}", fmt, ref=fmt)  # type: ignore[arg-type]
    assert pushed == pushed_image.digests[fmt]
    with imgpull.Client(tmp_path / "root2") as client:
        again = client.pull(fresh_registry.ref(f"roundtrip/img:{fmt}"))
    assert again.id == image_id


def test_oci_export_refuses_non_empty_dest(pushed_image: PushedImage, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with imgpull.Client(tmp_path / "root") as client, pytest.raises(ExportError, match="empty"):
        client.export(pushed_image.ref(), "oci", dest)
    assert [p.name for p in dest.iterdir()] == ["keep"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "root"]  # no temporaries


# docker-archive ------------------------------------------------------------------


def test_docker_archive_cli_skopeo(pushed_image: PushedImage, tmp_path: Path) -> None:
    root, dest = tmp_path / "root", tmp_path / "image.tar"
    ref = pushed_image.ref("v2s2")
    proc = run_cli(
        "export", ref, "--format", "docker-archive", str(dest), "--root", str(root), timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(dest)

    inspected = json.loads(_skopeo(["inspect", f"docker-archive:{dest}"], 120).stdout)
    # In a docker-archive the layers are the uncompressed tars: their digests are the diffIDs.
    assert inspected["Layers"] == pushed_image.image.diff_ids

    with tarfile.open(dest) as tar:
        (manifest,) = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        config_hex = pushed_image.config_digest.split(":", 1)[1]
        assert manifest["Config"] == f"{config_hex}.json"
        assert manifest["RepoTags"] == [f"{pushed_image.registry.host}/test/small:v2s2"]
        assert len(manifest["Layers"]) == len(pushed_image.image.diff_ids)
        for path, diff_id in zip(manifest["Layers"], pushed_image.image.diff_ids, strict=True):
            data = tar.extractfile(path).read()  # type: ignore[union-attr]
            assert sha256_digest(data) == diff_id
        config = tar.extractfile(manifest["Config"]).read()  # type: ignore[union-attr]
        assert sha256_digest(config) == pushed_image.config_digest
        repositories = json.load(tar.extractfile("repositories"))  # type: ignore[arg-type]
        top = pushed_image.image.diff_ids[-1].split(":", 1)[1]
        assert repositories == {f"{pushed_image.registry.host}/test/small": {"v2s2": top}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tar", "root"]

    # The same image copied back out of the archive: the same layers.
    oci = tmp_path / "from-archive"
    _skopeo(["copy", f"docker-archive:{dest}", f"oci:{oci}:x"], 120)
    back = json.loads(_skopeo(["inspect", "--config", f"oci:{oci}:x"], 120).stdout)
    assert back["rootfs"]["diff_ids"] == pushed_image.image.diff_ids


# rootfs ----------------------------------------------------------------------------

WHITEOUT_LAYERS = (
    files_layer(
        {
            "etc": Dir(),
            "etc/a": b"a\n",
            "etc/b": File(b"bb\n", mode=0o600, uid=1000, gid=1000),
            "opt": Dir(),
            "opt/old": b"old\n",
            "opt/sub": Dir(mode=0o750),
            "opt/sub/x": b"x\n",
            "bin": Dir(),
            "bin/tool": File(b"#!/bin/sh\necho 1\n", mode=0o755),
            "bin/link": Symlink("tool"),
            "bin/hard": Hardlink("bin/tool"),
            "var": Dir(mode=0o700),
            "var/gone": Dir(),
            "var/gone/f": b"f\n",
            "var/kept": b"kept\n",
        }
    ),
    files_layer(
        {
            "etc/a": Whiteout(),
            "etc/c": Symlink("/etc/b"),
            "opt": OpaqueWhiteout(),
            "opt/new": File(b"new\n", mode=0o640),
            "var/gone": Whiteout(),
            "bin/tool": File(b"#!/bin/sh\necho 2\n", mode=0o750),
        }
    ),
    files_layer({"opt/sub": Dir(mode=0o711), "opt/sub/y": b"y\n", "etc/b": Whiteout()}),
)

EPOCH = 1704067200.0


def _f(data: bytes, mode: int = 0o644, owner: tuple[int, int] = (0, 0)) -> tuple[Any, ...]:
    return ("f", mode, owner, len(data), hashlib.sha256(data).hexdigest(), EPOCH)


EXPECTED_TREE: dict[str, tuple[Any, ...]] = {
    "etc": ("d", 0o755, (0, 0)),
    "etc/c": ("l", "/etc/b", (0, 0)),
    "opt": ("d", 0o755, (0, 0)),
    "opt/new": _f(b"new\n", 0o640),
    "opt/sub": ("d", 0o711, (0, 0)),
    "opt/sub/y": _f(b"y\n"),
    "bin": ("d", 0o755, (0, 0)),
    "bin/tool": _f(b"#!/bin/sh\necho 2\n", 0o750),
    "bin/link": ("l", "tool", (0, 0)),
    "bin/hard": _f(b"#!/bin/sh\necho 1\n", 0o755),
    "var": ("d", 0o700, (0, 0)),
    "var/kept": _f(b"kept\n"),
}


@pytest.fixture(scope="module")
def whiteout_image(registry: RegistryServer, layout_cache: LayoutCache) -> PushedImage:
    image = layout_cache.get(WHITEOUT_LAYERS, ref="whiteouts")
    return push_both(registry, image, "test/whiteouts")


def test_rootfs_whiteouts_opaque_and_umoci(whiteout_image: PushedImage, tmp_path: Path) -> None:
    dest = tmp_path / "rootfs"
    with imgpull.Client(tmp_path / "root") as client:
        client.export(whiteout_image.ref(), "rootfs", dest)
    got = tree(dest)
    expected = EXPECTED_TREE
    if os.geteuid() != 0:  # owners are set as root only
        uid, gid = os.getuid(), os.getgid()
        expected = {k: (*v[:2], (uid, gid), *v[3:]) for k, v in expected.items()}
    assert got == expected
    hard, tool = dest / "bin/hard", dest / "bin/tool"
    assert hard.stat().st_ino != tool.stat().st_ino  # replaced above, the link kept the old file

    # umoci's unpack of the same image (pulled by skopeo) agrees.
    try:
        umoci = require_tool("umoci")
    except MissingToolError as exc:
        pytest.fail(f"{exc} (scripts/test.sh installs umoci too)", pytrace=False)
    layout = tmp_path / "skopeo-layout"
    _skopeo(
        [
            "copy",
            "--src-tls-verify=false",
            f"docker://{whiteout_image.ref()}",
            f"oci:{layout}:img",
        ],
        120,
    )
    bundle = tmp_path / "bundle"
    args = [umoci, "unpack", "--image", f"{layout}:img", str(bundle)]
    if os.geteuid() != 0:
        args.insert(2, "--rootless")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert tree(bundle / "rootfs") == got


def test_rootfs_size_limit(whiteout_image: PushedImage, tmp_path: Path) -> None:
    dest = tmp_path / "rootfs"
    dest.mkdir()
    with (
        imgpull.Client(tmp_path / "root") as client,
        pytest.raises(ExtractError, match="limit of 5000 bytes") as info,
    ):
        client.export(whiteout_image.ref(), "rootfs", dest, max_bytes=5000)
    assert info.value.kind == "size"
    assert list(dest.iterdir()) == []


# Malicious layers --------------------------------------------------------------------


def _tar(build: Callable[[tarfile.TarFile], None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        build(tar)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"pwned\n", **kw: Any) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 1704067200
    for k, v in kw.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)


def raw_layout(path: Path, tars: list[bytes]) -> Path:
    """An OCI layout (ref `latest`) of hand-made layer tars, gzip level 9."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict[str, Any]:
        digest = sha256_digest(data)
        (blobs / digest[7:]).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    layers = [{"mediaType": MT_OCI_LAYER_GZIP, **put(gzip.compress(t, 9, mtime=0))} for t in tars]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(t) for t in tars]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, **put(json.dumps(config).encode())},
        "layers": layers,
    }
    desc = {
        "mediaType": MT_OCI_MANIFEST,
        **put(json.dumps(manifest).encode()),
        "annotations": {REF_NAME_ANNOTATION: "latest"},
    }
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (path / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": [desc]})
    )
    return path


def _malicious(case: str, outside: Path) -> list[bytes]:
    benign = _tar(lambda t: _add(t, "ok", b"fine\n"))
    if case == "traversal":
        return [benign, _tar(lambda t: _add(t, "../escaped"))]
    if case == "absolute":
        return [_tar(lambda t: _add(t, str(outside / "abs")))]
    if case == "symlink-escape":
        return [
            _tar(lambda t: _add(t, "esc", b"", type=tarfile.SYMTYPE, linkname=str(outside))),
            _tar(lambda t: _add(t, "esc/through")),
        ]
    if case == "symlink-escape-relative":

        def nested(t: tarfile.TarFile) -> None:
            _add(t, "d", b"", type=tarfile.DIRTYPE, mode=0o755)
            _add(t, "d/esc", b"", type=tarfile.SYMTYPE, linkname="../../outside")
            _add(t, "d/esc/through")

        return [_tar(nested)]
    if case == "hardlink-escape":
        return [_tar(lambda t: _add(t, "h", b"", type=tarfile.LNKTYPE, linkname="../outside/x"))]
    assert case == "gzip-bomb"
    return [benign, _tar(lambda t: _add(t, "zeros", bytes(64 << 20)))]


def test_rootfs_absolute_symlink_parent_resolves_inside_dest(
    fresh_registry: RegistryServer, tmp_path: Path
) -> None:
    """A link to an absolute path, written through, lands inside DEST, as
    docker resolves it (the path is the image's own /...), never outside."""
    work = tmp_path / "work"
    outside = work / "outside"
    outside.mkdir(parents=True)
    layout = raw_layout(tmp_path / "layout", _malicious("symlink-escape", outside))
    push(layout, fresh_registry, "abs/img:latest", "v2s2")
    ref = fresh_registry.ref("abs/img:latest")
    dest = work / "rootfs"
    with imgpull.Client(tmp_path / "root") as client:
        client.pull(ref)
        client.export(ref, "rootfs", dest)
    assert list(outside.iterdir()) == []
    inside = dest / str(outside).lstrip("/") / "through"
    assert inside.is_file()
    assert (dest / "esc").is_symlink()


@pytest.mark.parametrize(
    ("case", "kind"),
    [
        ("traversal", "unsafe"),
        ("absolute", "unsafe"),
        ("symlink-escape-relative", "unsafe"),
        ("hardlink-escape", "unsafe"),
        ("gzip-bomb", "ratio"),
    ],
)
def test_rootfs_refuses_malicious_layers(
    fresh_registry: RegistryServer, tmp_path: Path, case: str, kind: str
) -> None:
    work = tmp_path / "work"
    outside = work / "outside"
    outside.mkdir(parents=True)
    (outside / "sentinel").write_text("untouched\n")
    layout = raw_layout(tmp_path / "layout", _malicious(case, outside))
    push(layout, fresh_registry, "evil/img:latest", "v2s2")
    ref = fresh_registry.ref("evil/img:latest")
    root = tmp_path / "root"
    # The pull lets the bomb in (it refuses one itself): the export must refuse it too.
    with imgpull.Client(root, max_ratio=0) as client:
        client.pull(ref)
        before = store_files(root)
        dest = work / "rootfs"
        dest.mkdir()
        with pytest.raises(ExtractError) as info:
            client.export(ref, "rootfs", dest)
        assert info.value.kind == kind, str(info.value)
        assert list(dest.iterdir()) == []  # left as it was: empty
        # A DEST that did not exist is gone again.
        with pytest.raises(ExtractError):
            client.export(ref, "rootfs", work / "new-rootfs")
        assert not (work / "new-rootfs").exists()
    assert store_files(root) == before
    assert sorted(p.name for p in work.iterdir()) == ["outside", "rootfs"]
    assert [p.name for p in outside.iterdir()] == ["sentinel"]
    assert (outside / "sentinel").read_text() == "untouched\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layout", "root", "work"]

    if case == "traversal":  # the CLI: one clear line, exit 1
        proc = run_cli(
            "export", ref, "-f", "rootfs", str(work / "cli"), "--root", str(root), timeout=300
        )
        assert proc.returncode == 1
        assert proc.stderr.startswith("Error: layer sha256:")
        assert "refusing entry \"../escaped\": has a '..' component" in proc.stderr
        assert not (work / "cli").exists()
