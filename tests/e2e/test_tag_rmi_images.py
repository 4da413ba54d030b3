"""References and the commands around them: `tag`, `rmi`, `images`, and the
store staying consistent (no orphan rows or files) through them."""

from __future__ import annotations

import multiprocessing
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.cli import run_cli
from support.images import LayoutCache, random_layer
from support.pushed import PushedImage, push_both
from support.registry import RegistryServer

import imgpull
from imgpull.store import Store

BASE = random_layer(300_000, seed=301)


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`imgpull ARGS --root ROOT`."""
    return run_cli(*args, "--root", str(root), timeout=300)


def blob_files(root: Path) -> set[str]:
    return {"sha256:" + p.name for p in (root / "blobs" / "sha256").iterdir()}


def check_store(root: Path) -> None:
    """Every blob file is used by an image and has its row; every row (blob,
    source, layer, manifest, reference) belongs to something that exists."""
    db = sqlite3.connect(root / "imgpull.db")
    try:

        def col(sql: str) -> set[str]:
            return {str(r[0]) for r in db.execute(sql)}

        images = col("SELECT id FROM images")
        used = (
            images
            | col("SELECT digest FROM image_layers")
            | col("SELECT digest FROM image_manifests")
        )
        assert blob_files(root) == used, "blob files vs blobs images use"
        assert col("SELECT digest FROM blobs") == used, "blob rows vs blobs images use"
        assert col("SELECT digest FROM blob_sources") <= used
        assert col("SELECT image_id FROM refs") <= images
        assert col("SELECT image_id FROM image_layers") <= images
        assert col("SELECT image_id FROM image_manifests") == images
        for image_id, manifest in db.execute("SELECT id, manifest_digest FROM images"):
            assert (image_id, manifest) in set(db.execute("SELECT * FROM image_manifests"))
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert db.execute("SELECT * FROM blob_pins").fetchall() == []
        assert col("SELECT digest FROM layer_diff_ids") <= used
        assert col("SELECT image_id FROM image_rootfs") <= images
        assert db.execute("PRAGMA user_version").fetchone()[0] == 5
    finally:
        db.close()
    assert not any((root / "ingest" / "sha256").iterdir()), "litter in ingest/"


def table(root: Path) -> list[list[str]]:
    """`imgpull images` as rows of [repository, tag, digest, image id]."""
    proc = cli(root, "images")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "DIGEST", "IMAGE", "ID", "CREATED", "SIZE"]
    return [line.split()[:4] for line in lines[1:]]


def short(digest: str) -> str:
    return digest[7:19]


class Pair:
    """Two images sharing their base layer, each with a layer of its own."""

    def __init__(self, registry: RegistryServer, layout_cache: LayoutCache) -> None:
        a = layout_cache.get([BASE, random_layer(200_000, seed=302)], ref="a")
        b = layout_cache.get(
            [BASE, random_layer(250_000, seed=303)], ref="b", created="2025-06-01T00:00:00Z"
        )
        self.a: PushedImage = push_both(registry, a, "refs/a")
        self.b: PushedImage = push_both(registry, b, "refs/b")
        self.base = a.layer_digests[0]
        assert self.base == b.layer_digests[0]


@pytest.fixture(scope="module")
def pair(registry: RegistryServer, layout_cache: LayoutCache) -> Pair:
    return Pair(registry, layout_cache)


def test_tag_then_images_shows_both(pushed_image: PushedImage, tmp_path: Path) -> None:
    ref = pushed_image.ref("v2s2")
    repo = ref.rsplit(":", 1)[0]
    image_id = pushed_image.config_digest
    assert cli(tmp_path, "pull", "-q", ref).returncode == 0
    proc = cli(tmp_path, "tag", ref, "myapp:1.0")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    # By ID prefix, into another registry's name, default tag `latest`.
    assert cli(tmp_path, "tag", short(image_id)[:8], "example.com/team/app").returncode == 0
    rows = table(tmp_path)
    digest = pushed_image.digests["v2s2"][:19] + "…"
    assert sorted(rows) == sorted(
        [
            [repo, "v2s2", digest, short(image_id)],
            ["myapp", "1.0", "<none>", short(image_id)],
            ["example.com/team/app", "latest", "<none>", short(image_id)],
        ]
    )
    with imgpull.Client(tmp_path) as client:
        assert client.resolve("myapp:1.0") == image_id
        assert client.resolve("docker.io/library/myapp:1.0") == image_id
        assert sorted(client.inspect("myapp:1.0")["RepoTags"]) == sorted(
            ["example.com/team/app:latest", "myapp:1.0", ref]
        )
        # Re-tagging what a tag already names changes nothing.
        assert client.tag("myapp:1.0", "myapp:1.0").familiar() == "myapp:1.0"
    check_store(tmp_path)


def test_tag_refusals(pushed_image: PushedImage, tmp_path: Path) -> None:
    ref = pushed_image.ref("oci")
    assert cli(tmp_path, "pull", "-q", ref).returncode == 0
    digest = pushed_image.digests["oci"]
    for target, words in [
        (f"myapp@{digest}", "refusing to create a tag with a digest reference"),
        (f"myapp:1@{digest}", "refusing to create a tag with a digest reference"),
        ("MyApp", "must be lowercase"),
        ("sha256", "refusing to create an ambiguous tag using digest algorithm as name"),
    ]:
        proc = cli(tmp_path, "tag", ref, target)
        assert proc.returncode == 1
        assert proc.stderr.startswith("Error: ") and proc.stderr.count("\n") == 1
        assert words in proc.stderr
    proc = cli(tmp_path, "tag", "nothing:here", "myapp")
    assert (proc.returncode, proc.stderr) == (1, "Error: No such image: nothing:here\n")
    assert [row[0] for row in table(tmp_path)] == [ref.rsplit(":", 1)[0]]


def test_rmi_one_of_two_tags_keeps_image(pushed_image: PushedImage, tmp_path: Path) -> None:
    ref = pushed_image.ref("v2s2")
    assert cli(tmp_path, "pull", "-q", ref).returncode == 0
    assert cli(tmp_path, "tag", ref, "myapp:1").returncode == 0
    blobs = blob_files(tmp_path)
    proc = cli(tmp_path, "rmi", "myapp:1")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "Untagged: myapp:1\n", "")
    assert blob_files(tmp_path) == blobs
    assert [row[:2] for row in table(tmp_path)] == [[ref.rsplit(":", 1)[0], "v2s2"]]
    check_store(tmp_path)


def test_rmi_last_reference_keeps_shared_blobs(pair: Pair, tmp_path: Path) -> None:
    a_ref, b_ref = pair.a.ref("v2s2"), pair.b.ref("v2s2")
    for ref in (a_ref, b_ref):
        assert cli(tmp_path, "pull", "-q", ref).returncode == 0
    check_store(tmp_path)
    a_repo = a_ref.rsplit(":", 1)[0]
    proc = cli(tmp_path, "rmi", a_ref)
    assert proc.returncode == 0, proc.stderr
    # docker's records: the tag, then the repository's digest references
    # (no tag of that repository is left), the image, its own layer.
    assert proc.stdout.splitlines() == [
        f"Untagged: {a_ref}",
        f"Untagged: {a_repo}@{pair.a.digests['v2s2']}",
        f"Deleted: {pair.a.config_digest}",
        f"Deleted: {pair.a.layer_digests[1]}",
    ]
    assert blob_files(tmp_path) == {
        pair.b.digests["v2s2"],
        pair.b.config_digest,
        *pair.b.layer_digests,
    }
    assert pair.base in blob_files(tmp_path)
    check_store(tmp_path)
    with imgpull.Client(tmp_path) as client:
        assert client.inspect(b_ref)["Id"] == pair.b.config_digest
        records = client.remove(b_ref)
    assert [str(r) for r in records][-3:] == [
        f"Deleted: {pair.b.config_digest}",
        f"Deleted: {pair.b.layer_digests[1]}",
        f"Deleted: {pair.base}",
    ]
    assert blob_files(tmp_path) == set()
    assert table(tmp_path) == []
    check_store(tmp_path)


def test_rmi_both_formats_removes_every_manifest(pair: Pair, tmp_path: Path) -> None:
    """One image pulled as v2s2 and as OCI: two tags, two manifests, one image."""
    repo = pair.a.ref("v2s2").rsplit(":", 1)[0]
    for fmt in ("v2s2", "oci"):
        assert cli(tmp_path, "pull", "-q", pair.a.ref(fmt)).returncode == 0  # type: ignore[arg-type]
    assert {pair.a.digests["v2s2"], pair.a.digests["oci"]} <= blob_files(tmp_path)
    proc = cli(tmp_path, "rmi", pair.a.ref("v2s2"))
    # Another tag of the repository is left: the digest references stay.
    assert proc.stdout == f"Untagged: {pair.a.ref('v2s2')}\n"
    proc = cli(tmp_path, "rmi", f"{repo}:oci")
    assert proc.stdout.splitlines()[:3] == [
        f"Untagged: {repo}:oci",
        *sorted(f"Untagged: {repo}@{pair.a.digests[f]}" for f in ("v2s2", "oci")),
    ]
    assert blob_files(tmp_path) == set()
    check_store(tmp_path)


def test_rmi_by_id(pair: Pair, tmp_path: Path) -> None:
    ref = pair.a.ref("v2s2")
    image_id = pair.a.config_digest
    assert cli(tmp_path, "pull", "-q", ref).returncode == 0
    # A tag and a digest reference in one repository: an ID removes both.
    proc = cli(tmp_path, "rmi", short(image_id))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:3] == [
        f"Untagged: {ref}",
        f"Untagged: {ref.rsplit(':', 1)[0]}@{pair.a.digests['v2s2']}",
        f"Deleted: {image_id}",
    ]
    check_store(tmp_path)

    assert cli(tmp_path, "pull", "-q", ref).returncode == 0
    assert cli(tmp_path, "tag", ref, "other/repo:x").returncode == 0
    blobs = blob_files(tmp_path)
    proc = cli(tmp_path, "rmi", image_id)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == (
        f"Error: conflict: unable to delete {short(image_id)} (must be forced)"
        " - image is referenced in multiple repositories\n"
    )
    assert blob_files(tmp_path) == blobs and len(table(tmp_path)) == 2
    proc = cli(tmp_path, "rmi", "-f", image_id[7:])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sorted(line for line in lines if line.startswith("Untagged: ")) == sorted(
        [
            f"Untagged: {ref}",
            f"Untagged: {ref.rsplit(':', 1)[0]}@{pair.a.digests['v2s2']}",
            "Untagged: other/repo:x",
        ]
    )
    assert f"Deleted: {image_id}" in lines
    assert blob_files(tmp_path) == set()
    check_store(tmp_path)


def test_rmi_unknown_and_several(pushed_image: PushedImage, tmp_path: Path) -> None:
    ref = pushed_image.ref("oci")
    assert cli(tmp_path, "pull", "-q", ref).returncode == 0
    assert cli(tmp_path, "tag", ref, "x:1").returncode == 0
    proc = cli(tmp_path, "rmi", "nothing", "x:1", "sha256:" + "0" * 64)
    # As docker: each is tried; the errors are reported, the exit code is 1.
    assert proc.returncode == 1
    assert proc.stdout == "Untagged: x:1\n"
    assert proc.stderr.splitlines() == [
        "Error: No such image: nothing:latest",
        f"Error: No such image: sha256:{'0' * 64}",
    ]
    check_store(tmp_path)


def test_pull_after_rmi_downloads_again(pair: Pair, tmp_path: Path) -> None:
    ref = pair.a.ref("oci")
    with imgpull.Client(tmp_path) as client:
        first = client.pull(ref)
        client.remove(ref)
        assert blob_files(tmp_path) == set()
        again = client.pull(ref)
        assert again.updated and again.downloaded_bytes == first.downloaded_bytes > 0
        assert blob_files(tmp_path) == {again.digest, again.id, *pair.a.layer_digests}
    check_store(tmp_path)


def test_dangling_image(pair: Pair, tmp_path: Path) -> None:
    """An image whose last tag moved to another image stays, as `<none>`."""
    a_ref, b_ref = pair.a.ref("v2s2"), pair.b.ref("v2s2")
    with imgpull.Client(tmp_path) as client:
        client.pull(a_ref)
        client.pull(b_ref)
        a_repo = a_ref.rsplit(":", 1)[0]
        assert [str(r) for r in client.remove(f"{a_repo}@{pair.a.digests['v2s2']}")] == [
            f"Untagged: {a_repo}@{pair.a.digests['v2s2']}"
        ]
        client.tag(b_ref, a_ref)
        summaries = client.images()
    # b was created later than a: listed first; then a, dangling.
    assert [(s.repository, s.tag, s.image_id) for s in summaries] == [
        (a_repo, "v2s2", pair.b.config_digest),
        (b_ref.rsplit(":", 1)[0], "v2s2", pair.b.config_digest),
        ("<none>", None, pair.a.config_digest),
    ]
    assert table(tmp_path)[-1] == ["<none>", "<none>", "<none>", short(pair.a.config_digest)]
    proc = cli(tmp_path, "rmi", short(pair.a.config_digest))
    assert proc.stdout.splitlines() == [
        f"Deleted: {pair.a.config_digest}",
        f"Deleted: {pair.a.layer_digests[1]}",
    ]
    check_store(tmp_path)


def test_pull_refetches_blob_removed_meanwhile(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race of rmi and pull: b's pull finds the shared base layer present
    and skips it; before b is recorded, a's removal deletes that layer (no
    image uses it yet). The pull notices when it records, and fetches it again."""
    from imgpull.pull import Puller

    with imgpull.Client(tmp_path) as client:
        client.pull(pair.a.ref("v2s2"))
    original = Puller._load_config
    removed: list[str] = []

    def load_config_then_remove(self: Puller, digest: str, count: int) -> dict[str, Any]:
        if not removed:
            with imgpull.Client(tmp_path) as other:
                removed.extend(str(r) for r in other.remove(pair.a.ref("v2s2")))
        return original(self, digest, count)

    monkeypatch.setattr(Puller, "_load_config", load_config_then_remove)
    with imgpull.Client(tmp_path) as client:
        image = client.pull(pair.b.ref("v2s2"))
    assert f"Deleted: {pair.base}" in removed
    assert image.downloaded_bytes >= sum(layer.size for layer in image.layers)
    assert blob_files(tmp_path) == {image.digest, image.id, *pair.b.layer_digests}
    check_store(tmp_path)


def test_delete_blob_keeps_what_an_image_uses(pair: Pair, tmp_path: Path) -> None:
    with imgpull.Client(tmp_path) as client:
        client.pull(pair.a.ref("oci"))
    store = Store(tmp_path)
    assert store.delete_blob(pair.base) is False
    assert store.gc(grace=0) == []
    check_store(tmp_path)


def test_gc_after_crash_between_commit_and_files(pair: Pair, tmp_path: Path) -> None:
    """rmi's database commit happened, its file deletions did not: gc finishes."""
    with imgpull.Client(tmp_path) as client:
        image = client.pull(pair.a.ref("oci"))
    store = Store(tmp_path)
    with store.meta.transaction():
        for r in store.meta.references(image.id):
            store.meta.delete_reference(r.reference)
        unused = store.meta.delete_image(image.id)
    assert set(unused) == blob_files(tmp_path)
    with pytest.raises(AssertionError):
        check_store(tmp_path)
    assert store.gc() == []  # too fresh: might be a running pull's downloads
    assert sorted(store.gc(grace=0)) == sorted(unused)
    store.close()
    check_store(tmp_path)


def test_schema_1_store_is_migrated(pair: Pair, tmp_path: Path) -> None:
    with imgpull.Client(tmp_path) as client:
        image = client.pull(pair.a.ref("v2s2"))
    db = sqlite3.connect(tmp_path / "imgpull.db", isolation_level=None)
    db.execute("DROP TABLE image_manifests")
    db.execute("PRAGMA user_version=1")
    db.close()
    with imgpull.Client(tmp_path) as client:
        assert client.store.meta.image_manifests(image.id) == [image.digest]
        client.remove(pair.a.ref("v2s2"))
    assert blob_files(tmp_path) == set()
    check_store(tmp_path)


def _pull_and_remove(root: str, ref: str, rounds: int) -> None:
    import imgpull
    from imgpull.errors import ImageNotFoundError

    with imgpull.Client(root) as client:
        for _ in range(rounds):
            client.pull(ref)
            try:
                client.tag(ref, "mine:latest")
                client.remove("mine:latest")
                client.remove(ref)
            except ImageNotFoundError:
                pass  # the other process removed it first


def test_processes_pulling_and_removing(pair: Pair, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_pull_and_remove, args=(str(tmp_path), pair.a.ref("v2s2"), 4)),
        ctx.Process(target=_pull_and_remove, args=(str(tmp_path), pair.a.ref("v2s2"), 4)),
        ctx.Process(target=_pull_and_remove, args=(str(tmp_path), pair.b.ref("v2s2"), 4)),
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    check_store(tmp_path)
    with imgpull.Client(tmp_path) as client:
        image = client.pull(pair.a.ref("v2s2"))
    assert blob_files(tmp_path) >= {image.id, *pair.a.layer_digests}
    check_store(tmp_path)


def test_a_layer_removed_while_its_diff_id_is_computed_is_fetched_again(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A layer blob present without its diffID (stored by an older imgpull,
    or by a process that has not recorded it yet) is hashed from its file;
    an `rmi` in another process can remove the file between the pull's look
    and its open (test_processes_pulling_and_removing hit it once: a raw
    FileNotFoundError). The pull fetches it again instead."""
    import imgpull.pull as pull_module

    ref = pair.a.ref("v2s2")
    with imgpull.Client(tmp_path / "first") as client:
        client.pull(ref)
    # The layers' blobs alone, as files with no rows, in a store of their own.
    blobs = tmp_path / "second" / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for digest in pair.a.layer_digests:
        hexpart = digest.split(":", 1)[1]
        (blobs / hexpart).write_bytes(
            (tmp_path / "first" / "blobs" / "sha256" / hexpart).read_bytes()
        )
    real = pull_module._diff_id
    removed: list[Path] = []

    def removed_first(path: Path, max_ratio: int) -> str:
        if path not in removed:  # the other process's rmi, just now
            removed.append(path)
            path.unlink()
        return real(path, max_ratio)

    monkeypatch.setattr(pull_module, "_diff_id", removed_first)
    with imgpull.Client(tmp_path / "second") as client:
        image = client.pull(ref)
    assert removed, "the diffIDs were not computed from the files"
    assert blob_files(tmp_path / "second") >= {image.id, *pair.a.layer_digests}
    check_store(tmp_path / "second")
