"""What `imgpull pull` prints with stdout piped, and what it records, line for
line as dockerd 20.10 and the docker CLI (checked side by side with them):

- jsonmessage off a terminal drops the events that carry a byte count
  (Downloading, Extracting); the CLI adds "Using default tag" and ends with
  the full reference (alone with -q); a pull by digest is headed by its
  canonical reference; nothing is printed before the manifest is found.
- An image whose config (its ID) is stored already is not fetched again,
  whatever its layer blobs (pull_v2.go: pullSchema2 returns at once).
- A digest reference never moves to another image: a pull by digest gets
  "Cannot overwrite digest" (the image stays stored), a pull by tag leaves it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.cli import run_cli, stored_blobs
from support.images import (
    LayoutCache,
    PlatformSpec,
    build_oci_index_layout,
    push,
    random_layer,
    recompressed,
)
from support.pushed import PushedImage
from support.registry import RegistryServer

import imgpull
from imgpull.pull import Puller


def pulled(*args: str, root: Path) -> list[str]:
    """stdout of a successful `imgpull pull ARGS`, piped, as lines."""
    proc = run_cli("pull", *args, "--root", str(root))
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stdout
    return proc.stdout.splitlines()


def check_fresh_pull(lines: list[str], head: str, layers: list[str], tail: list[str]) -> None:
    """docker's piped lines of a pull that downloads `layers` (digests), at most
    three at a time: exact, except that downloads running at once interleave."""
    shorts = [d[7:19] for d in layers]
    first = [head, *(f"{s}: Pulling fs layer" for s in shorts)]
    last = [*(f"{s}: Pull complete" for s in shorts), *tail]
    assert lines[: len(first)] == first
    assert lines[-len(last) :] == last
    middle = lines[len(first) : -len(last)]
    assert len(middle) == 2 * len(shorts), lines
    for s in shorts:
        own = [line for line in middle if line.startswith(f"{s}: ")]
        assert own == [f"{s}: Verifying Checksum", f"{s}: Download complete"]


@pytest.mark.parametrize("fmt", ["v2s2", "oci"])
def test_piped_transcript(pushed_image: PushedImage, tmp_path: Path, fmt: str) -> None:
    ref = pushed_image.ref(fmt)  # type: ignore[arg-type]
    digest = pushed_image.digests[fmt]
    lines = pulled(ref, root=tmp_path)
    tail = [f"Digest: {digest}", f"Status: Downloaded newer image for {ref}", ref]
    check_fresh_pull(lines, f"{fmt}: Pulling from test/small", pushed_image.layer_digests, tail)


@pytest.fixture
def tiny(fresh_registry: RegistryServer, layout_cache: LayoutCache) -> tuple[str, str, str]:
    """(NAME, manifest digest, layer digest) of a one-layer image pushed as
    NAME:latest and NAME:other."""
    image = layout_cache.get([random_layer(20_000, seed=901)], ref="tiny")
    digest = push(image, fresh_registry, "bench/tiny:latest", "v2s2")
    push(image, fresh_registry, "bench/tiny:other", "v2s2")
    return fresh_registry.ref("bench/tiny"), digest, image.layer_digests[0]


def test_default_tag_quiet_and_digest_lines(tiny: tuple[str, str, str], tmp_path: Path) -> None:
    name, digest, layer = tiny
    lines = pulled(name, root=tmp_path)
    tail = [
        f"Digest: {digest}",
        f"Status: Downloaded newer image for {name}:latest",
        f"{name}:latest",
    ]
    assert lines[0] == "Using default tag: latest"
    check_fresh_pull(lines[1:], "latest: Pulling from bench/tiny", [layer], tail)
    assert pulled("-q", name, root=tmp_path) == [f"{name}:latest"]
    by_digest = f"{name}@{digest}"
    up_to_date = [
        f"{by_digest}: Pulling from bench/tiny",
        f"Digest: {digest}",
        f"Status: Image is up to date for {by_digest}",
    ]
    assert pulled(by_digest, root=tmp_path) == [*up_to_date, by_digest]
    # The daemon drops the tag of name:tag@digest; the CLI's last line keeps it.
    assert pulled(f"{name}:other@{digest}", root=tmp_path) == [
        *up_to_date,
        f"{name}:other@{digest}",
    ]


def test_unknown_tag_prints_only_the_error(tiny: tuple[str, str, str], tmp_path: Path) -> None:
    name = tiny[0]
    proc = run_cli("pull", f"{name}:nosuchtag", "--root", str(tmp_path))
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == f"Error: manifest for {name}:nosuchtag not found: manifest unknown\n"


def test_all_tags_one_status(
    tiny: tuple[str, str, str], fresh_registry: RegistryServer, tmp_path: Path
) -> None:
    name, digest, layer = tiny
    with fresh_registry.client() as c:
        tags = c.get("/v2/bench/tiny/tags/list").json()["tags"]
    assert sorted(tags) == ["latest", "other"]
    lines = pulled("-a", name, root=tmp_path)
    # Each tag: its lines and digest (the second one finds the image stored);
    # then one Status for the repository, and its name.
    check_fresh_pull(
        lines[:6], f"{tags[0]}: Pulling from bench/tiny", [layer], [f"Digest: {digest}"]
    )
    assert lines[6:] == [
        f"{tags[1]}: Pulling from bench/tiny",
        f"Digest: {digest}",
        f"Status: Downloaded newer image for {name}",
        name,
    ]
    assert pulled("-a", "-q", name, root=tmp_path) == [name]
    again = pulled("-a", name, root=tmp_path)
    assert again[-2:] == [f"Status: Image is up to date for {name}", name]


# -- an image whose config is stored already ----------------------------------------


def test_same_config_other_layer_blobs_downloads_nothing(
    fresh_registry: RegistryServer, layout_cache: LayoutCache, tmp_path: Path
) -> None:
    gzip = layout_cache.get(
        [random_layer(60_000, seed=911), random_layer(40_000, seed=912)], ref="comp"
    )
    zstd = recompressed(gzip, tmp_path / "zstd-layout", "zstd")
    assert zstd.config_digest == gzip.config_digest
    assert not set(zstd.layer_digests) & set(gzip.layer_digests)
    push(gzip, fresh_registry, "test/comp:gzip", "oci")
    zstd_digest = push(zstd, fresh_registry, "test/comp:zstd", "oci")
    root = tmp_path / "root"
    gzip_ref, zstd_ref = fresh_registry.ref("test/comp:gzip"), fresh_registry.ref("test/comp:zstd")
    pulled(gzip_ref, root=root)
    fresh_registry.clear_request_log()

    assert pulled(zstd_ref, root=root) == [
        "zstd: Pulling from test/comp",
        f"Digest: {zstd_digest}",
        f"Status: Downloaded newer image for {zstd_ref}",
        zstd_ref,
    ]
    assert fresh_registry.blob_gets() == []  # no layer, no config
    with imgpull.Client(root) as client:
        assert client.resolve(zstd_ref) == client.resolve(gzip_ref) == gzip.config_digest
        info = client.inspect(zstd_ref)
    # The image keeps the layers it has; the new references name it.
    assert [layer["Digest"] for layer in info["Layers"]] == gzip.layer_digests
    assert sorted(info["RepoDigests"]) == sorted(
        f"{fresh_registry.host}/test/comp@{d}" for d in (gzip.manifest_digest, zstd_digest)
    )
    assert stored_blobs(root) == {gzip.manifest_digest, zstd_digest, *gzip.blob_digests}
    dest = tmp_path / "out"
    export = run_cli("export", zstd_ref, str(dest), "--format", "rootfs", "--root", str(root))
    assert export.returncode == 0, export.stderr
    # Both layers write data/blob-0000.bin: the top one's is what is left.
    assert (dest / "data" / "blob-0000.bin").stat().st_size == 40_000
    assert fresh_registry.blob_gets() == []
    # Both references gone, nothing of either pull is left.
    for ref in (gzip_ref, zstd_ref):
        assert run_cli("rmi", ref, "--root", str(root)).returncode == 0
    assert stored_blobs(root) == set()


def test_stored_image_removed_meanwhile_is_pulled(
    fresh_registry: RegistryServer,
    layout_cache: LayoutCache,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An `rmi` between the look-up that finds the image stored and the
    transaction that would name it: the pull fetches the image after all."""
    gzip = layout_cache.get([random_layer(30_000, seed=921)], ref="comp-race")
    zstd = recompressed(gzip, tmp_path / "zstd-layout", "zstd")
    push(gzip, fresh_registry, "test/race:gzip", "oci")
    push(zstd, fresh_registry, "test/race:zstd", "oci")
    gzip_ref, zstd_ref = fresh_registry.ref("test/race:gzip"), fresh_registry.ref("test/race:zstd")
    record = Puller._record

    def removed_first(self: Puller, *args: Any) -> imgpull.Image:
        if args[3] is None:  # the stored image is about to be named
            with imgpull.Client(tmp_path) as other:
                other.remove(gzip_ref)
        return record(self, *args)

    monkeypatch.setattr(Puller, "_record", removed_first)
    with imgpull.Client(tmp_path) as client:
        client.pull(gzip_ref)
        fresh_registry.clear_request_log()
        image = client.pull(zstd_ref)
        assert image.id == gzip.config_digest and client.resolve(zstd_ref) == image.id
        assert [layer["Digest"] for layer in client.inspect(zstd_ref)["Layers"]] == (
            zstd.layer_digests
        )
    assert sorted(p.rsplit("/", 1)[1] for p in fresh_registry.blob_gets()) == sorted(
        zstd.blob_digests
    )
    assert stored_blobs(tmp_path) == {image.digest, *zstd.blob_digests}


# -- a digest reference never moves ------------------------------------------------


def test_digest_reference_stays_on_the_first_platform(
    fresh_registry: RegistryServer, tmp_path: Path
) -> None:
    index = build_oci_index_layout(
        tmp_path / "layout",
        [
            PlatformSpec((random_layer(10_000, seed=931),), architecture="amd64"),
            PlatformSpec((random_layer(10_000, seed=932),), architecture="arm64"),
        ],
        ref="multi",
    )
    amd64, arm64 = index.images
    digest = push(index, fresh_registry, "test/plat:multi", "oci", all_images=True)
    by_digest = fresh_registry.ref(f"test/plat@{digest}")
    root = tmp_path / "root"
    pulled("--platform", "linux/amd64", by_digest, root=root)

    def pull_arm64() -> Any:
        return run_cli("pull", "--platform", "linux/arm64", by_digest, "--root", str(root))

    proc = pull_arm64()
    assert proc.returncode == 1
    head = f"{by_digest}: Pulling from test/plat"
    check_fresh_pull(proc.stdout.splitlines(), head, arm64.layer_digests, [f"Digest: {digest}"])
    assert proc.stderr == (
        f"Error: Cannot overwrite digest {digest}: it names image {amd64.config_digest[7:19]}; "
        f"the linux/arm64 image pulled is stored as {arm64.config_digest[7:19]} without a "
        f"name: name it (imgpull tag {arm64.config_digest[7:19]} NAME:TAG), or remove the "
        f"digest reference (imgpull rmi {by_digest}) and pull again\n"
    )
    with imgpull.Client(root) as client:
        assert client.resolve(by_digest) == amd64.config_digest
        rows = {(r.repository, r.tag, r.digest, r.image_id) for r in client.images()}
    assert rows == {
        (fresh_registry.ref("test/plat"), None, digest, amd64.config_digest),
        ("<none>", None, None, arm64.config_digest),
    }
    # Again: the image is there, nothing is fetched, the answer is the same.
    fresh_registry.clear_request_log()
    again = pull_arm64()
    assert again.stdout.splitlines() == [head, f"Digest: {digest}"]
    assert (again.returncode, again.stderr) == (1, proc.stderr)
    assert fresh_registry.blob_gets() == []

    # By tag: the tag names the arm64 image; the digest reference stays.
    tag = fresh_registry.ref("test/plat:multi")
    assert pulled("--platform", "linux/arm64", tag, root=root)[-2:] == [
        f"Status: Downloaded newer image for {tag}",
        tag,
    ]
    with imgpull.Client(root) as client:
        assert client.resolve(tag) == arm64.config_digest
        assert client.resolve(by_digest) == amd64.config_digest
    listed = json.loads(run_cli("images", "--json", "--root", str(root)).stdout)
    assert {(r["tag"], r["digest"], r["image_id"]) for r in listed} == {
        ("multi", None, arm64.config_digest),
        (None, digest, amd64.config_digest),
    }
