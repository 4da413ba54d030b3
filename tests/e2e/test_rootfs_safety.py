"""`pull --rootfs DIR` and `export` touch nothing of the user's (issue 16):
only what imgpull can show it wrote is emptied (a marker in DIR whose job ID
the store holds), nothing outside DIR changes, DIR gets its mode and owner
back, a DIR inside the store or holding it is refused, and a read-only DIR
or a race to create DIR ends in one line with no job row left. Against the
session registry; kills through a throttling relay; a user's run as
`nobody` and read-only mounts in mount namespaces of their own (root only).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.cli import (
    NOBODY,
    cli_env,
    imgpull_argv,
    kill_rootfs_pull,
    nobody_env,
    nobody_imgpull_argv,
    run_argv,
    run_cli,
    stored_blobs,
    with_mounts,
)
from support.images import Dir, ImageInfo, LayoutCache, files_layer, push, random_layer
from support.registry import RegistryServer
from support.throttle import ThrottledRelay
from support.trees import tree

import imgpull
from imgpull.errors import RootfsError
from imgpull.rootfs import MARKER

TIMEOUT = 60
# A tree worth a kill in the middle: files, a big layer through the relay, files.
SLOW_LAYERS = (
    files_layer({"etc": Dir(), "etc/os-release": b"ID=test\n", "usr": Dir(), "usr/share": Dir()}),
    random_layer(8_000_000, seed=1616),
    files_layer({"opt": Dir(), "opt/x": b"x\n"}),
)
# Read-only directories, set once their content is written (as nobody could
# not write into them otherwise), and DIR's own mode and owner through ".":
# what a cleanup has to get through. The config's diffID is wrong, so the
# pull fails once the layer is applied.
BAD_LAYERS = (
    files_layer(
        {
            ".": Dir(mode=0o755),
            "a/b/c/f": b"f\n",
            "a/b/c": Dir(mode=0o555),
            "a/b": Dir(mode=0o555),
            "a": Dir(mode=0o000),
        }
    ),
)
TINY_LAYERS = (files_layer({"etc": Dir(), "etc/hostname": b"tiny\n", MARKER: b"the image's\n"}),)


@dataclass(frozen=True)
class Images:
    registry: RegistryServer
    relay: ThrottledRelay
    slow: ImageInfo
    bad: ImageInfo

    def ref(self, name: str, *, relayed: bool = False) -> str:
        host = self.relay.host if relayed else self.registry.host
        return f"{host}/test/rootfs-safety-{name}:v1"


@pytest.fixture(scope="module")
def images(registry: RegistryServer, layout_cache: LayoutCache) -> Iterator[Images]:
    slow = layout_cache.get(SLOW_LAYERS, ref="rootfs-safety-slow")
    bad = layout_cache.get(
        BAD_LAYERS,
        ref="rootfs-safety-bad",
        config_extra={"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}},
    )
    tiny = layout_cache.get(TINY_LAYERS, ref="rootfs-safety-tiny")
    # ~8 MB at 8 MB/s: the pull is still downloading when the bottom layer is written.
    with ThrottledRelay(registry.host, rate=8_000_000) as relay:
        images = Images(registry, relay, slow, bad)
        for name, image in (("slow", slow), ("bad", bad), ("tiny", tiny)):
            push(image, registry, f"test/rootfs-safety-{name}:v1", "oci")
        yield images


@pytest.fixture(scope="module")
def slow_tree(images: Images, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The slow image's tree as `pull` + `export --format rootfs` writes it."""
    work = tmp_path_factory.mktemp("rootfs-safety-expected")
    with imgpull.Client(work / "store") as client:
        client.export(images.ref("slow"), "rootfs", work / "rootfs")
    return tree(work / "rootfs")


def _pull(ref: str, root: Path, dest: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("pull", ref, "--root", str(root), "--rootfs", str(dest), *extra)


def _job_rows(root: Path) -> int:
    """The store's rootfs job rows, read past imgpull's API."""
    db = sqlite3.connect(root / "imgpull.db")
    try:
        return int(db.execute("SELECT count(*) FROM rootfs_jobs").fetchone()[0])
    finally:
        db.close()


def _kill_mid_pull(images: Images, root: Path, dest: Path) -> None:
    kill_rootfs_pull(images.ref("slow", relayed=True), root, dest, TIMEOUT)


def _refused(dest: Path) -> str:
    """The error of a pull into `dest`, which holds what imgpull did not write."""
    entries = sorted(os.listdir(dest))
    named = next(e for e in entries if e != MARKER)
    more = f" and {len(entries) - 1} more" if len(entries) > 1 else ""
    return (
        f"Error: {dest} holds {named!r}{more}, not written by imgpull: move it away, "
        f"or pass --force to empty {dest}\n"
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# A killed pull's DIR made again ----------------------------------------------


def test_a_rerun_keeps_what_a_user_put_in_dir_since(
    images: Images, slow_tree: dict[str, object], tmp_path: Path
) -> None:
    root, dest = tmp_path / "store", tmp_path / "rootfs"
    _kill_mid_pull(images, root, dest)
    assert _job_rows(root) == 1
    # The user empties DIR (or makes it again: ext4 often gives the inode
    # back): the path, device and inode of the killed job's DIR, which once
    # sufficed, match.
    inode = dest.stat().st_ino
    for child in dest.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    assert dest.stat().st_ino == inode
    (dest / "mine").write_text("keep me")
    # Quiet, the same reference or another: the one line, nothing touched.
    for ref in (images.ref("slow"), images.ref("tiny")):
        proc = _pull(ref, root, dest, "-q")
        assert (proc.returncode, proc.stderr) == (1, _refused(dest))
        assert os.listdir(dest) == ["mine"] and (dest / "mine").read_text() == "keep me"
    assert _job_rows(root) == 0  # the killed job's marker is gone: its row too
    proc = _pull(images.ref("slow"), root, dest, "--force")
    assert proc.returncode == 0, proc.stderr
    assert f"{dest} is not empty: emptying it (--force)" in proc.stdout
    assert tree(dest) == slow_tree and _job_rows(root) == 0


def test_a_partial_tree_is_emptied_only_where_and_for_whom_it_was_written(
    images: Images, tmp_path: Path
) -> None:
    """The marker proves the tree is imgpull's only to the store that holds
    its job, and only where the job wrote it."""
    root, dest = tmp_path / "store", tmp_path / "rootfs"
    _kill_mid_pull(images, root, dest)
    proc = _pull(images.ref("tiny"), tmp_path / "other-store", dest, "-q")
    assert (proc.returncode, proc.stderr) == (1, _refused(dest))
    assert _job_rows(root) == 1
    moved = tmp_path / "moved"
    dest.rename(moved)
    proc = _pull(images.ref("tiny"), root, moved, "-q")
    assert (proc.returncode, proc.stderr) == (1, _refused(moved))
    assert (moved / MARKER).is_file() and (moved / "usr" / "share").is_dir()
    assert _job_rows(root) == 0  # its DIR is gone: the job expired


def test_a_file_of_the_marker_s_name_in_an_image_is_the_image_s(
    images: Images, tmp_path: Path
) -> None:
    dest = tmp_path / "rootfs"
    proc = _pull(images.ref("tiny"), tmp_path / "store", dest)
    assert proc.returncode == 0, proc.stderr
    assert (dest / MARKER).read_bytes() == b"the image's\n"
    assert (dest / "etc" / "hostname").read_bytes() == b"tiny\n"
    assert _job_rows(tmp_path / "store") == 0


def test_force_through_the_api(images: Images, tmp_path: Path) -> None:
    dest = tmp_path / "rootfs"
    dest.mkdir()
    (dest / "mine").write_text("not kept")
    with imgpull.Client(tmp_path / "store") as client:
        with pytest.raises(RootfsError, match="pass --force"):
            client.pull(images.ref("tiny"), rootfs=dest)
        assert os.listdir(dest) == ["mine"]

    async def pull() -> None:
        async with imgpull.AsyncClient(tmp_path / "store") as client:
            await client.pull(images.ref("tiny"), rootfs=dest, force=True)

    asyncio.run(asyncio.wait_for(pull(), TIMEOUT))
    assert sorted(os.listdir(dest)) == sorted(["etc", MARKER])


# Cleanup: nothing outside DIR, DIR's own mode and owner ---------------------


def test_a_failed_pull_gives_dir_its_mode_and_owner_back(images: Images, tmp_path: Path) -> None:
    root, dest = tmp_path / "store", tmp_path / "rootfs"
    dest.mkdir()
    dest.chmod(0o700)
    os.chown(dest, 4321, 4321)  # the image's "." says root's, 0755
    tmp_path.chmod(0o775)
    proc = _pull(images.ref("bad"), root, dest)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert "the image is corrupt" in lines[0], proc.stderr
    assert lines[1].startswith(f"{dest} was emptied: nothing of the image is in it"), lines
    assert os.listdir(dest) == [] and _mode(dest) == 0o700 and _mode(tmp_path) == 0o775
    assert (dest.stat().st_uid, dest.stat().st_gid) == (4321, 4321)
    assert _job_rows(root) == 0
    # An export's DEST too (the diffID is checked as the layer is applied).
    assert run_cli("pull", images.ref("bad"), "--root", str(root), "--fetch-only").returncode == 0
    proc = run_cli("export", images.ref("bad"), str(dest), "-f", "rootfs", "--root", str(root))
    assert proc.returncode == 1 and "the image is corrupt" in proc.stderr, proc.stderr
    assert os.listdir(dest) == [] and _mode(dest) == 0o700
    assert (dest.stat().st_uid, dest.stat().st_gid) == (4321, 4321)


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory user nobody can reach (pytest's are root's, 0700), with
    `py` to mount this Python on and `home`, nobody's."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("setpriv") is None:
        pytest.skip("needs root, unshare and setpriv to run imgpull as nobody")
    base = Path(tempfile.mkdtemp(prefix="imgpull-nobody-", dir="/tmp"))
    try:
        base.chmod(0o755)
        (base / "py").mkdir()
        (base / "home").mkdir()
        os.chown(base / "home", NOBODY, NOBODY)
        yield base
    finally:
        shutil.rmtree(base)


def _nobody_dir(path: Path, mode: int) -> Path:
    path.mkdir()
    os.chown(path, NOBODY, NOBODY)
    path.chmod(mode)
    return path


def test_a_user_s_failed_pull_changes_nothing_outside_dir(images: Images, nobody_dir: Path) -> None:
    base = nobody_dir
    env = nobody_env(base / "py", base / "home")

    def pull_as_nobody(dest: Path) -> subprocess.CompletedProcess[str]:
        argv = nobody_imgpull_argv(base / "py", "pull", images.ref("bad"), "--root", str(root))
        return run_argv([*argv, "--rootfs", str(dest)], env=env)

    root = _nobody_dir(base / "store", 0o755)
    parent = _nobody_dir(base / "parent", 0o775)
    for made in (True, False):
        dest = parent / f"rootfs-{made}"
        if not made:
            _nobody_dir(dest, 0o700)
        proc = pull_as_nobody(dest)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.splitlines()
        assert "the image is corrupt" in lines[0] and len(lines) == 2, proc.stderr
        what = "was removed" if made else "was emptied"
        assert lines[1].startswith(f"{dest} {what}: nothing of the image is in it"), lines
        assert _mode(parent) == 0o775
        assert dest.exists() != made
        if not made:
            assert os.listdir(dest) == [] and _mode(dest) == 0o700
            assert (dest.stat().st_uid, dest.stat().st_gid) == (NOBODY, NOBODY)
    assert sorted(os.listdir(parent)) == ["rootfs-False"]
    # A parent the user cannot write: one line, no job row.
    locked = _nobody_dir(base / "locked", 0o555)
    proc = pull_as_nobody(locked / "rootfs")
    assert (proc.returncode, proc.stderr) == (
        1,
        f"Error: cannot create {locked / 'rootfs'}: Permission denied\n",
    )
    assert _job_rows(root) == 0 and _mode(locked) == 0o555


# DIR inside the store, or holding it -------------------------------------------


def test_dir_inside_the_store_or_holding_it_is_refused(images: Images, tmp_path: Path) -> None:
    root = tmp_path / "holder" / "store"
    ref = images.ref("tiny")
    assert run_cli("pull", ref, "--root", str(root)).returncode == 0
    blobs = stored_blobs(root)
    (tmp_path / "link").symlink_to(root / "ingest")
    inside = [
        root / "ingest" / "sha256",
        root / "blobs" / "sha256",
        root / "blobs" / "sha256" / "x",
        tmp_path / "link" / "x",  # a symbolic link into the store
    ]

    def refused(proc: subprocess.CompletedProcess[str], dest: Path, how: str) -> None:
        assert (proc.returncode, proc.stderr) == (
            1,
            f"Error: {dest} {how} the store {root}: choose a path outside it\n",
        )

    for dest in inside:
        refused(_pull(ref, root, dest), dest, "is inside")
        for fmt in ("oci", "docker-archive", "rootfs"):
            proc = run_cli("export", ref, str(dest), "-f", fmt, "--root", str(root))
            refused(proc, dest, "is inside")
    holder = tmp_path / "holder"
    refused(_pull(ref, root, holder, "--force"), holder, "holds")
    for fmt in ("oci", "docker-archive", "rootfs"):
        proc = run_cli("export", ref, str(holder), "-f", fmt, "--root", str(root))
        refused(proc, holder, "holds")
    assert not (root / "blobs" / "sha256" / "x").exists()
    assert stored_blobs(root) == blobs and _job_rows(root) == 0
    # A fresh store's blob folder (made by the pull itself, empty).
    fresh = tmp_path / "fresh"
    dest = fresh / "blobs" / "sha256"
    proc = _pull(images.ref("slow"), fresh, dest)
    assert (proc.returncode, proc.stderr) == (
        1,
        f"Error: {dest} is inside the store {fresh}: choose a path outside it\n",
    )
    assert stored_blobs(fresh) == set() and _job_rows(fresh) == 0


# A read-only DIR, a race to create DIR ----------------------------------------


def test_a_read_only_dir_ends_in_one_line_and_leaves_no_job_row(
    images: Images, tmp_path: Path
) -> None:
    """DIR read-only (a read-only bind mount of itself, in a mount namespace
    of the pull's own), then read-write again with a user's file in it."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a read-only mount")
    root, dest = tmp_path / "store", tmp_path / "rootfs"
    dest.mkdir()
    read_only = [
        ["mount", "--bind", str(dest), str(dest)],
        ["mount", "-o", "remount,bind,ro", str(dest)],
    ]
    for target, line in (
        (dest, f"Error: cannot write to {dest}: Read-only file system\n"),
        (dest / "sub", f"Error: cannot create {dest / 'sub'}: Read-only file system\n"),
    ):
        argv = imgpull_argv("pull", images.ref("tiny"), "--root", str(root))
        proc = run_argv(with_mounts(read_only, [*argv, "--rootfs", str(target)]), env=cli_env())
        assert (proc.returncode, proc.stderr) == (1, line)
        assert _job_rows(root) == 0
    assert os.listdir(dest) == []
    (dest / "mine").write_text("keep me")
    proc = _pull(images.ref("tiny"), root, dest, "-q")
    assert (proc.returncode, proc.stderr) == (1, _refused(dest))
    assert os.listdir(dest) == ["mine"]


ROUNDS = 60


def _race(clients: tuple[imgpull.Client, imgpull.Client], ref: str, dest: Path) -> list[object]:
    """Both clients pull `ref` into `dest` at once: what each returned or raised."""
    barrier = threading.Barrier(len(clients), timeout=TIMEOUT)
    results: list[object] = []

    def pull(client: imgpull.Client) -> None:
        barrier.wait()
        try:
            results.append(client.pull(ref, rootfs=dest))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=pull, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    return results


def test_pulls_racing_to_create_dir_end_in_one_line(images: Images, tmp_path: Path) -> None:
    """Two pulls (threads, a Client each) create the same absent DIR: one
    writes the tree, the other stops with a RootfsError, never an OSError."""
    ref = images.ref("tiny")
    with imgpull.Client(tmp_path / "store") as client:
        client.pull(ref)  # stored: the rounds race on DIR, not on the download
    outcomes: dict[str, int] = {}
    with imgpull.Client(tmp_path / "store") as one, imgpull.Client(tmp_path / "store") as two:
        for i in range(ROUNDS):
            dest = tmp_path / f"rootfs-{i}"
            results = _race((one, two), ref, dest)
            assert len(results) == 2, results
            errors = [r for r in results if isinstance(r, BaseException)]
            assert len(errors) <= 1, errors
            for exc in errors:
                assert isinstance(exc, RootfsError), repr(exc)
                assert "\n" not in str(exc) and not getattr(exc, "__notes__", None)
                key = str(exc).replace(str(dest), "DIR")
                outcomes[key] = outcomes.get(key, 0) + 1
            assert sorted(os.listdir(dest)) == sorted(["etc", MARKER])
    print(f"{ROUNDS} rounds, the losing pull's error: {outcomes}")
    assert _job_rows(tmp_path / "store") == 0


# The store's schema ------------------------------------------------------------


def test_schema_4_job_rows_are_dropped(images: Images, tmp_path: Path) -> None:
    """A row of schema 4 matched DIR by path, device and inode: it proves
    nothing, and goes; the DIR it named is then refused, not emptied."""
    root, dest = tmp_path / "store", tmp_path / "rootfs"
    with imgpull.Client(root):
        pass
    dest.mkdir()
    (dest / "mine").write_text("keep me")
    st = dest.stat()
    db = sqlite3.connect(root / "imgpull.db", isolation_level=None)
    db.execute("DROP TABLE rootfs_jobs")
    db.execute(
        "CREATE TABLE rootfs_jobs (path TEXT PRIMARY KEY, device INTEGER NOT NULL,"
        " inode INTEGER NOT NULL, reference TEXT NOT NULL, started_at REAL NOT NULL)"
    )
    db.execute(
        "INSERT INTO rootfs_jobs VALUES (?, ?, ?, 'x', 0)", (str(dest), st.st_dev, st.st_ino)
    )
    db.execute("PRAGMA user_version=4")
    db.close()
    proc = _pull(images.ref("tiny"), root, dest, "-q")
    assert (proc.returncode, proc.stderr) == (1, _refused(dest))
    assert _job_rows(root) == 0
    with imgpull.Client(root) as client:
        assert client.store.meta.rootfs_jobs() == []
