"""End to end: what a reference asks for (pull-semantics.md §1 and §3).

`name:tag@digest` pulls by digest; a manifest held locally is reused once the
registry confirms (HEAD) that the repository has it; a tag served by tag but
not by its digest falls back to the tag with a warning; `--all-tags` pulls
every tag in the registry's order and stops at the first error.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import run_cli
from support.fakeregistry import FakeRegistry
from support.images import (
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    ImageInfo,
    LayoutCache,
    PlatformSpec,
    build_oci_index_layout,
    push,
    random_layer,
)
from support.pushed import PushedImage
from support.registry import RegistryServer

import imgpull
from imgpull.progress import ProgressEvent


def manifest_requests(registry: RegistryServer) -> list[tuple[str, str]]:
    return [
        (e.method, e.path.rsplit("/", 1)[-1])
        for e in registry.request_log()
        if "/manifests/" in e.path
    ]


# -- by digest --------------------------------------------------------------------


def test_name_tag_at_digest_pulls_by_digest(pushed_image: PushedImage, tmp_path: Path) -> None:
    registry = pushed_image.registry
    oci = pushed_image.digests["oci"]
    # The tag names the v2s2 manifest; the digest, the OCI one: the digest wins.
    ref = registry.ref(f"{pushed_image.repo}:v2s2@{oci}")
    registry.clear_request_log()
    events: list[ProgressEvent] = []
    with imgpull.Client(tmp_path) as client:
        image = client.pull(ref, progress=events.append)
        assert image.digest == oci
        assert image.media_type == "application/vnd.oci.image.manifest.v1+json"
        assert image.reference.tag == "v2s2"  # kept for display
        rows = client.images()
    assert {r.tag for r in rows} == {None}  # no tag recorded
    assert {r.digest for r in rows} == {oci}
    assert all(ref_ != "v2s2" for _, ref_ in manifest_requests(registry))
    statuses = [e.status for e in events]
    # As docker: headed by the canonical reference, the tag dropped.
    canonical = registry.ref(f"{pushed_image.repo}@{oci}")
    assert statuses[0] == f"{canonical}: Pulling from {pushed_image.repo}"
    assert f"Digest: {oci}" in statuses
    assert statuses[-1] == f"Status: Downloaded newer image for {canonical}"


def test_by_digest_reuses_a_local_manifest_the_registry_confirms(
    pushed_image: PushedImage, tmp_path: Path
) -> None:
    registry = pushed_image.registry
    digest = pushed_image.digests["v2s2"]
    ref = pushed_image.digest_ref("v2s2")
    with imgpull.Client(tmp_path) as client:
        first = client.pull(ref)
        registry.clear_request_log()
        again = client.pull(ref)
    assert again.id == first.id and not again.updated
    # One HEAD confirms the repository has it; the bytes come from the store.
    assert manifest_requests(registry) == [("HEAD", digest)]


def test_by_digest_local_manifest_not_in_this_repository(
    pushed_image: PushedImage, tmp_path: Path
) -> None:
    registry = pushed_image.registry
    digest = pushed_image.digests["oci"]
    with imgpull.Client(tmp_path) as client:
        client.pull(pushed_image.digest_ref("oci"))
        registry.clear_request_log()
        # Same digest, another repository, which does not have it: no reuse.
        with pytest.raises(imgpull.ImgpullError, match="not found"):
            client.pull(registry.ref(f"test/elsewhere@{digest}"))
    assert manifest_requests(registry) == [("HEAD", digest), ("GET", digest)]


def test_by_digest_child_manifests_reused_too(
    registry: RegistryServer, layout_cache: LayoutCache, tmp_path: Path
) -> None:
    layout = build_oci_index_layout(
        tmp_path / "layout",
        [
            PlatformSpec((random_layer(3_000, seed=951),)),
            PlatformSpec((random_layer(3_000, seed=952),), architecture="arm64"),
        ],
        ref="two",
    )
    digest = push(layout, registry, "test/refs-index:two", "oci", all_images=True)
    ref = registry.ref(f"test/refs-index@{digest}")
    with imgpull.Client(tmp_path / "root") as client:
        first = client.pull(ref, platform="linux/arm64")
        registry.clear_request_log()
        again = client.pull(ref, platform="linux/arm64")
    assert again.manifest_digest == first.manifest_digest
    assert manifest_requests(registry) == [("HEAD", digest), ("HEAD", first.manifest_digest)]


# -- the non-conforming registry fallback -----------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    with FakeRegistry() as reg:
        yield reg


@pytest.fixture(scope="module")
def small(layout_cache: LayoutCache) -> ImageInfo:
    return layout_cache.get([random_layer(10_000, seed=961)], ref="refs-small")


@pytest.fixture(scope="module")
def small2(layout_cache: LayoutCache) -> ImageInfo:
    return layout_cache.get([random_layer(10_000, seed=962)], ref="refs-small2")


def _manifest_requests(fake: FakeRegistry) -> list[tuple[str, str]]:
    return [
        (r.method, r.path.rsplit("/", 1)[-1]) for r in fake.requests() if "/manifests/" in r.path
    ]


def test_tag_not_served_by_digest_falls_back_to_tag(
    fake: FakeRegistry, small: ImageInfo, small2: ImageInfo, tmp_path: Path
) -> None:
    """A fresh pull by tag is one GET by tag (no digest needed); the
    up-to-date check of a stored tag that moved HEADs it, and falls back to
    the tag when the registry does not serve the digest it named."""
    digest = fake.add_image("test/odd", "v1", small, by_digest=False)
    events: list[ProgressEvent] = []
    with imgpull.Client(tmp_path) as client:
        image = client.pull(fake.ref("test/odd:v1"), progress=events.append)
        assert image.digest == digest and image.id == small.config_digest
        assert _manifest_requests(fake) == [("GET", "v1")]
        assert not [e for e in events if e.status.startswith("Warning:")]
        fake.clear_requests()
        digest2 = fake.add_image("test/odd", "v1", small2, by_digest=False)
        image = client.pull(fake.ref("test/odd:v1"), progress=events.append)
    assert image.digest == digest2 and image.id == small2.config_digest
    warnings = [e.status for e in events if e.status.startswith("Warning:")]
    assert len(warnings) == 1
    assert "not conforming" in warnings[0] and digest2 in warnings[0]
    assert _manifest_requests(fake) == [("HEAD", "v1"), ("GET", digest2), ("GET", "v1")]


def test_cli_fallback_warning_is_shown(
    fake: FakeRegistry, small: ImageInfo, small2: ImageInfo, tmp_path: Path
) -> None:
    fake.add_image("test/odd", "v1", small, by_digest=False)
    proc = run_cli("pull", fake.ref("test/odd:v1"), "--root", str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    fake.add_image("test/odd", "v1", small2, by_digest=False)
    proc = run_cli("pull", fake.ref("test/odd:v1"), "--root", str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "not conforming, falling back to the tag" in proc.stdout + proc.stderr


# -- --all-tags -------------------------------------------------------------------


def _image(layout_cache: LayoutCache, seed: int) -> ImageInfo:
    return layout_cache.get([random_layer(4_000, seed=seed)], ref=f"all-{seed}")


def test_all_tags_pulls_every_tag_in_order(
    fresh_registry: RegistryServer, layout_cache: LayoutCache, tmp_path: Path
) -> None:
    tags = {"1.0": 971, "1.1": 972, "latest": 971, "edge": 973}
    for tag, seed in tags.items():
        push(_image(layout_cache, seed), fresh_registry, f"test/every:{tag}", "oci")
    name = fresh_registry.ref("test/every")
    with imgpull.Client(tmp_path) as client:
        images = client.pull_all_tags(name, platform="linux/amd64")
        listed = {(r.tag, r.image_id) for r in client.images() if r.tag}
    with fresh_registry.client() as c:
        order = c.get("/v2/test/every/tags/list").json()["tags"]
    assert sorted(order) == sorted(tags)
    assert [i.reference.tag for i in images] == order  # the registry's order
    assert listed == {(t, _image(layout_cache, s).config_digest) for t, s in tags.items()}

    proc = run_cli("pull", "--all-tags", name, "--root", str(tmp_path / "cli"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    pulling = [line for line in proc.stdout.splitlines() if ": Pulling from " in line]
    assert pulling == [f"{t}: Pulling from test/every" for t in order]


@pytest.mark.parametrize("suffix", [":1.0", "@sha256:" + "a" * 64, ":1.0@sha256:" + "a" * 64])
def test_all_tags_refuses_a_tag_or_digest(
    fresh_registry: RegistryServer, tmp_path: Path, suffix: str
) -> None:
    ref = fresh_registry.ref(f"test/every{suffix}")
    fresh_registry.clear_request_log()
    proc = run_cli("pull", "-a", ref, "--root", str(tmp_path), timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: tag can't be used with --all-tags/-a")
    assert proc.stderr.count("\n") == 1
    assert fresh_registry.request_log() == []
    with imgpull.Client(tmp_path) as client, pytest.raises(imgpull.InvalidReferenceError):
        client.pull_all_tags(ref)


def test_all_tags_goes_on_past_a_failing_tag(
    fake: FakeRegistry, layout_cache: LayoutCache, tmp_path: Path
) -> None:
    # The fake lists tags in the order they were added: a, b, c.
    fake.add_image("test/stops", "a", _image(layout_cache, 981))
    arm = layout_cache.get([random_layer(4_000, seed=982)], ref="all-arm", architecture="arm64")
    child = fake.add_image("test/stops", None, arm)
    index = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": [
            {
                "mediaType": MT_OCI_MANIFEST,
                "digest": child,
                "size": arm.manifest_size,
                "platform": {"os": "linux", "architecture": "arm64"},
            }
        ],
    }
    fake.add_manifest("test/stops", "b", index, MT_OCI_INDEX)
    fake.add_image("test/stops", "c", _image(layout_cache, 983))
    root = tmp_path / "root"
    proc = run_cli(
        "pull",
        "-a",
        "--platform",
        "linux/amd64",
        fake.ref("test/stops"),
        "--root",
        str(root),
        timeout=300,
    )
    # As a bulk pull: the tag's error on a line of its own, the other tags
    # pulled, and a non-zero exit at the end.
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"Error: {fake.ref('test/stops:b')}: no matching manifest for linux/amd64 in the "
        "manifest list entries",
        f"Error: 1 tag(s) of {fake.ref('test/stops')} failed: {fake.ref('test/stops:b')}",
    ]
    pulling = [line for line in proc.stdout.splitlines() if ": Pulling from " in line]
    assert pulling == [f"{t}: Pulling from test/stops" for t in "abc"]
    with imgpull.Client(root) as client:
        assert {r.tag for r in client.images() if r.tag} == {"a", "c"}


def test_all_tags_follows_link_pagination(
    fake: FakeRegistry, layout_cache: LayoutCache, tmp_path: Path
) -> None:
    fake.tags_page_size = 2
    names = ["t1", "t2", "t3", "t4", "t5"]
    for i, tag in enumerate(names):
        fake.add_image("test/paged", tag, _image(layout_cache, 990 + i))
    with imgpull.Client(tmp_path) as client:
        images = client.pull_all_tags(fake.ref("test/paged"), platform="linux/amd64")
    assert [i.reference.tag for i in images] == names
    pages = [r for r in fake.requests() if r.path.endswith("/tags/list")]
    assert len(pages) == 3
