"""`imgpull export --format rootfs` against `umoci unpack`, for every kind of test image.

One multi-layer image (whiteouts and an opaque directory across layers, hard
links, symlinks, setuid/setgid/sticky/0600/0755 modes, an empty file, nested
directories, a non-root owner, later layers writing through symlinked
parents such as a merged-/usr `lib -> usr/lib`) is pushed as Docker v2s2, as OCI, as Docker
schema1 (v2s1) and as OCI with zstd layers.  For each, the CLI pulls and exports
the root filesystem; skopeo copies the same reference into an OCI layout and
umoci unpacks it; the two trees must be equal (paths, types, modes, owners,
sizes, link targets, file hashes, file mtimes, hard-link groups), and equal to
the tree the layers describe.

umoci 0.4.7 cannot unpack zstd layers ("blob is not correct mediatype"), so for
the zstd image skopeo recompresses the layers to gzip on the way into umoci's
layout (the same tars: the diffIDs are checked); imgpull reads the zstd blobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cli import run_cli
from support.images import (
    MT_OCI_LAYER_GZIP,
    MT_OCI_LAYER_ZSTD,
    Compression,
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
    read_oci_layout,
    skopeo_inspect,
)
from support.registry import MissingToolError, RegistryServer, require_tool, require_tools
from support.trees import tree

KINDS = ("v2s2", "oci", "v2s1", "zstd")
EPOCH = 1704067200  # FIXED_EPOCH of support.images


def image_layers(compression: Compression) -> tuple[Any, ...]:
    return (
        files_layer(
            {
                "etc": Dir(),
                "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n",
                "etc/shadow": File(b"root:*:19000::::::\n", mode=0o600),
                "etc/empty": b"",
                "etc/gone": b"whited out by layer 2\n",
                "usr": Dir(),
                "usr/bin": Dir(),
                "usr/bin/tool": File(b"#!/bin/sh\necho 1\n", mode=0o755),
                "usr/bin/su": File(b"\x7fELF setuid\n", mode=0o4755),
                "usr/bin/su-link": Hardlink("usr/bin/su"),  # survives: a pair
                "usr/bin/tool-old": Hardlink("usr/bin/tool"),  # tool is replaced above
                "usr/bin/sh": Symlink("tool"),
                "usr/share": Dir(),
                "usr/share/doc": Dir(),
                "usr/share/doc/pkg": Dir(mode=0o750),
                "usr/share/doc/pkg/deep": Dir(),
                "usr/share/doc/pkg/deep/README": b"nested\n",
                "opt": Dir(),
                "opt/app": Dir(mode=0o775),
                "opt/app/old": b"old\n",
                "opt/app/cache": Dir(),
                "opt/app/cache/f": b"f\n",
                "var": Dir(),
                "var/lib": Dir(),
                "var/lib/state": Dir(mode=0o700),
                "var/lib/state/db": b"db\n",
                "tmp": Dir(mode=0o1777),
                "home": Dir(),
                "home/user": Dir(mode=0o750, uid=1000, gid=1000),
                "home/user/.profile": File(b"export A=1\n", uid=1000, gid=1000),
                # Merged /usr and an absolute link: later layers write through them.
                "usr/lib": Dir(),
                "lib": Symlink("usr/lib"),
                "run": Dir(),
                "var/run": Symlink("/run"),
            },
            compression=compression,
        ),
        files_layer(
            {
                "etc/gone": Whiteout(),
                "etc/localtime": Symlink("/usr/share/zoneinfo/UTC"),  # absolute, dangling
                "opt/app": OpaqueWhiteout(),  # hides old and cache/, not new
                "opt/app/new": File(b"new\n", mode=0o640),
                "var/lib/state": Whiteout(),  # a whole directory
                "usr/bin/tool": File(b"#!/bin/sh\necho 2\n", mode=0o750),
                "usr/bin/sgid": File(b"sgid\n", mode=0o2755),
                "usr/bin/gone": File(b"gone\n", mode=0o755),
                "lib/libc.so": File(b"libc\n", mode=0o755),  # lands in usr/lib
            },
            compression=compression,
        ),
        files_layer(
            {
                "opt/app/cache": Dir(mode=0o711),  # back after the opaque whiteout, empty
                "opt/app/cache/g": b"g\n",
                "var/lib/state": Dir(mode=0o755),  # back after its whiteout
                "var/lib/state/fresh": b"fresh\n",
                "usr/bin/gone": Whiteout(),
                "usr/bin/sh": Symlink("/usr/bin/tool"),  # a symlink replaced
                "var/run/pid": b"1\n",  # lands in /run
            },
            compression=compression,
        ),
    )


def _f(data: bytes, mode: int = 0o644, owner: tuple[int, int] = (0, 0)) -> tuple[Any, ...]:
    return ("f", mode, owner, len(data), hashlib.sha256(data).hexdigest(), float(EPOCH))


def _d(mode: int = 0o755, owner: tuple[int, int] = (0, 0)) -> tuple[Any, ...]:
    return ("d", mode, owner)


def _l(target: str) -> tuple[Any, ...]:
    return ("l", target, (0, 0))


EXPECTED_TREE: dict[str, tuple[Any, ...]] = {
    "etc": _d(),
    "etc/passwd": _f(b"root:x:0:0:root:/root:/bin/sh\n"),
    "etc/shadow": _f(b"root:*:19000::::::\n", 0o600),
    "etc/empty": _f(b""),
    "etc/localtime": _l("/usr/share/zoneinfo/UTC"),
    "usr": _d(),
    "usr/bin": _d(),
    "usr/bin/tool": _f(b"#!/bin/sh\necho 2\n", 0o750),
    "usr/bin/su": _f(b"\x7fELF setuid\n", 0o4755),
    "usr/bin/su-link": _f(b"\x7fELF setuid\n", 0o4755),
    "usr/bin/tool-old": _f(b"#!/bin/sh\necho 1\n", 0o755),
    "usr/bin/sh": _l("/usr/bin/tool"),
    "usr/bin/sgid": _f(b"sgid\n", 0o2755),
    "usr/share": _d(),
    "usr/share/doc": _d(),
    "usr/share/doc/pkg": _d(0o750),
    "usr/share/doc/pkg/deep": _d(),
    "usr/share/doc/pkg/deep/README": _f(b"nested\n"),
    "opt": _d(),
    "opt/app": _d(0o775),
    "opt/app/new": _f(b"new\n", 0o640),
    "opt/app/cache": _d(0o711),
    "opt/app/cache/g": _f(b"g\n"),
    "var": _d(),
    "var/lib": _d(),
    "var/lib/state": _d(),
    "var/lib/state/fresh": _f(b"fresh\n"),
    "tmp": _d(0o1777),
    "home": _d(),
    "home/user": _d(0o750, (1000, 1000)),
    "home/user/.profile": _f(b"export A=1\n", owner=(1000, 1000)),
    "usr/lib": _d(),
    "usr/lib/libc.so": _f(b"libc\n", 0o755),
    "lib": _l("usr/lib"),
    "run": _d(),
    "run/pid": _f(b"1\n"),
    "var/run": _l("/run"),
}


def hardlink_groups(root: Path) -> set[frozenset[str]]:
    """The sets of regular files of a tree that share an inode (more than one path)."""
    by_inode: dict[int, set[str]] = {}
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            by_inode.setdefault(p.lstat().st_ino, set()).add(str(p.relative_to(root)))
    return {frozenset(paths) for paths in by_inode.values() if len(paths) > 1}


@pytest.fixture(scope="module")
def s1_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry with schema1 enabled (for v2s1); it serves v2s2 and OCI as usual too."""
    require_tools()
    with RegistryServer(workdir=tmp_path_factory.mktemp("umoci-registry"), schema1=True) as reg:
        yield reg


@pytest.fixture(scope="module")
def refs(s1_registry: RegistryServer, layout_cache: LayoutCache) -> dict[str, str]:
    """kind -> reference of the image pushed that way (all have the same diffIDs)."""
    gzip_image = layout_cache.get(image_layers("gzip"), ref="umoci")
    zstd_image = layout_cache.get(image_layers("zstd"), ref="umoci-zstd")
    out: dict[str, str] = {}
    for kind in KINDS:
        image, fmt = (zstd_image, "oci") if kind == "zstd" else (gzip_image, kind)
        push(image, s1_registry, f"test/umoci:{kind}", fmt)  # type: ignore[arg-type]
        out[kind] = s1_registry.ref(f"test/umoci:{kind}")

    # skopeo pushes the zstd blobs as they are: the registry really holds zstd layers.
    manifest = skopeo_inspect(s1_registry, "test/umoci:zstd", raw=True)
    assert [layer["mediaType"] for layer in manifest["layers"]] == [MT_OCI_LAYER_ZSTD] * 3
    assert [layer["digest"] for layer in manifest["layers"]] == zstd_image.layer_digests
    for digest in zstd_image.layer_digests:
        assert zstd_image.blob(digest)[:4] == b"\x28\xb5\x2f\xfd"  # the zstd frame magic
    schema1 = skopeo_inspect(s1_registry, "test/umoci:v2s1", raw=True)
    assert schema1["schemaVersion"] == 1
    assert gzip_image.diff_ids == zstd_image.diff_ids
    return out


def umoci_unpack(ref: str, work: Path, *, gzip_layers: bool) -> Path:
    """skopeo copy ``ref`` into an OCI layout, then ``umoci unpack`` it: the rootfs.

    ``gzip_layers``: have skopeo recompress (zstd) layers to gzip, for umoci's sake.
    """
    try:
        umoci = require_tool("umoci")
    except MissingToolError as exc:
        pytest.fail(f"{exc} (scripts/test.sh installs umoci too)", pytrace=False)
    layout, bundle = work / "skopeo-layout", work / "bundle"
    args = ["copy", "--quiet", "--src-tls-verify=false"]
    if gzip_layers:
        args += ["--dest-compress", "--dest-compress-format", "gzip"]
    _skopeo([*args, f"docker://{ref}", f"oci:{layout}:img"], 120)
    manifest = read_oci_layout(layout, "img").manifest
    assert {layer["mediaType"] for layer in manifest["layers"]} == {MT_OCI_LAYER_GZIP}
    args = [umoci, "unpack", "--image", f"{layout}:img", str(bundle)]
    if os.geteuid() != 0:
        args.insert(2, "--rootless")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return bundle / "rootfs"


@pytest.mark.parametrize("way", ["export", "one-pass"])
@pytest.mark.parametrize("kind", KINDS)
def test_rootfs_equals_umoci_unpack(
    refs: dict[str, str], layout_cache: LayoutCache, tmp_path: Path, kind: str, way: str
) -> None:
    """`pull` then `export --format rootfs`, or `pull --rootfs` (one pass)."""
    ref, store, dest = refs[kind], tmp_path / "store", tmp_path / "rootfs"
    diff_ids = layout_cache.get(image_layers("gzip"), ref="umoci").diff_ids  # cached
    if way == "export":
        proc = run_cli("pull", ref, "--root", str(store), timeout=300)
        assert proc.returncode == 0, proc.stderr
        proc = run_cli(
            "export", ref, "--format", "rootfs", str(dest), "--root", str(store), timeout=300
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == str(dest)
    else:
        proc = run_cli("pull", ref, "--root", str(store), "--rootfs", str(dest), timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "Pull complete" in proc.stdout
    # The store has the image, its layers registered with the image's diffIDs.
    proc = run_cli("inspect", ref, "--root", str(store), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [la["DiffID"] for la in json.loads(proc.stdout)["Layers"]] == diff_ids

    got = tree(dest)
    umoci_rootfs = umoci_unpack(ref, tmp_path, gzip_layers=kind == "zstd")
    assert read_oci_layout(tmp_path / "skopeo-layout", "img").diff_ids == diff_ids
    assert got == tree(umoci_rootfs)
    assert hardlink_groups(dest) == hardlink_groups(umoci_rootfs)

    # Both agree with what the layers say, too.
    expected = EXPECTED_TREE
    if os.geteuid() != 0:  # owners are set as root only
        owner = (os.getuid(), os.getgid())
        expected = {k: (*v[:2], owner, *v[3:]) for k, v in expected.items()}
    assert got == expected
    assert hardlink_groups(dest) == {frozenset({"usr/bin/su", "usr/bin/su-link"})}
