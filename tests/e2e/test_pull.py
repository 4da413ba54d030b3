"""End to end: `imgpull pull` against a real registry, images pushed by skopeo."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support.cli import imgpull_argv, run_cli
from support.images import LayoutCache, files_layer, random_layer, skopeo_pull_oci
from support.pushed import PushedImage, push_both
from support.registry import RegistryServer, free_port

import imgpull
from imgpull.progress import ProgressEvent


def blob_names(root: Path) -> set[str]:
    return {"sha256:" + p.name for p in (root / "blobs" / "sha256").iterdir()}


@pytest.mark.parametrize("fmt", ["v2s2", "oci"])
def test_store_matches_skopeo(pushed_image: PushedImage, tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "root"
    with imgpull.Client(root) as client:
        image = client.pull(pushed_image.ref(fmt))  # type: ignore[arg-type]
    skopeo = skopeo_pull_oci(
        pushed_image.registry, f"{pushed_image.repo}:{fmt}", tmp_path / "oci", tag=fmt
    )
    stored = blob_names(root)
    assert image.digest == pushed_image.digests[fmt]
    assert set(skopeo.layer_digests) <= stored
    assert [d.digest for d in image.layers] == skopeo.layer_digests
    for digest in skopeo.layer_digests:
        assert (root / "blobs/sha256" / digest[7:]).read_bytes() == skopeo.blob(digest)
    if fmt == "oci":
        # No conversion: manifest and config are the very same bytes.
        assert image.digest == skopeo.manifest_digest
        assert image.id == skopeo.config_digest
        assert stored == {skopeo.manifest_digest, skopeo.config_digest, *skopeo.layer_digests}
    else:
        # skopeo converts v2s2 to OCI on the way to `oci:`; the content is the same.
        config = json.loads((root / "blobs/sha256" / image.id[7:]).read_bytes())
        assert config["rootfs"] == skopeo.config["rootfs"]
        assert stored == {image.digest, image.id, *skopeo.layer_digests}
    assert not any((root / "ingest" / "sha256").iterdir())


def test_second_pull_is_up_to_date(pushed_image: PushedImage, tmp_path: Path) -> None:
    ref = pushed_image.ref("oci")
    assert run_cli("pull", ref, "--root", str(tmp_path), timeout=300).returncode == 0
    pushed_image.registry.clear_request_log()
    proc = run_cli("pull", ref, "--root", str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "oci: Pulling from test/small",
        f"Digest: {pushed_image.digests['oci']}",
        f"Status: Image is up to date for {ref}",
        ref,
    ]
    assert pushed_image.registry.blob_gets() == []


def test_pull_by_digest(pushed_image: PushedImage, tmp_path: Path) -> None:
    ref = pushed_image.digest_ref("v2s2")
    events: list[ProgressEvent] = []
    with imgpull.Client(tmp_path) as client:
        image = client.pull(ref, progress=events.append)
        assert image.updated
        assert image.digest == pushed_image.digests["v2s2"]
        assert client.resolve(ref) == image.id
        again = client.pull(ref)
        assert not again.updated
    statuses = [e.status for e in events]
    assert f"Digest: {image.digest}" in statuses
    assert f"Status: Downloaded newer image for {ref}" in statuses


def test_progress_events_and_bytes(pushed_image: PushedImage, tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    with imgpull.Client(tmp_path, max_concurrent_downloads=1) as client:
        image = client.pull(pushed_image.ref("oci"), progress=events.append)
    assert image.downloaded_bytes == image.size  # config and layers, each once
    by_layer = {}
    for e in events:
        if e.id is not None:
            by_layer.setdefault(e.id, []).append(e.status)
    layers = [d.digest[7:19] for d in image.layers]
    assert sorted(by_layer) == sorted(layers)
    # With one download at a time, a later layer waits its turn, unless it
    # is small enough to take no slot (issue 17: its time is a round trip).
    for desc in image.layers[1:]:
        small = desc.size <= 256 * 1024
        assert ("Waiting" in by_layer[desc.digest[7:19]]) != small
    for statuses in by_layer.values():
        assert statuses[0] == "Pulling fs layer"
        assert statuses[-3:] == ["Download complete", "Extracting", "Pull complete"]


def test_moved_tag_repoints(
    fresh_registry: RegistryServer, layout_cache: LayoutCache, tmp_path: Path
) -> None:
    first = layout_cache.get([random_layer(100_000, seed=11)], ref="one")
    second = layout_cache.get([random_layer(100_000, seed=12)], ref="two")
    push_both(fresh_registry, first, "test/moving")
    ref = fresh_registry.ref("test/moving:oci")
    with imgpull.Client(tmp_path) as client:
        a = client.pull(ref)
        push_both(fresh_registry, second, "test/moving")
        b = client.pull(ref)
        assert a.id != b.id and b.updated
        assert client.resolve(ref) == b.id
        # The old image stays reachable by its digest.
        assert client.resolve(f"{fresh_registry.host}/test/moving@{a.digest}") == a.id


def test_corrupt_blob_gives_digest_mismatch(
    fresh_registry: RegistryServer, layout_cache: LayoutCache, tmp_path: Path
) -> None:
    good = layout_cache.get([random_layer(50_000, seed=21)], ref="good")
    bad = layout_cache.get([random_layer(50_000, seed=21), random_layer(80_000, seed=22)])
    push_both(fresh_registry, good, "test/corrupt")
    ok = run_cli(
        "pull", fresh_registry.ref("test/corrupt:v2s2"), "--root", str(tmp_path), timeout=300
    )
    assert ok.returncode == 0, ok.stderr
    refs_before = json.loads(
        run_cli("images", "--json", "--root", str(tmp_path), timeout=300).stdout
    )
    blobs_before = blob_names(tmp_path)

    pushed = push_both(fresh_registry, bad, "test/corrupt2")
    victim = pushed.layer_digests[1]
    path = fresh_registry.blob_path(victim)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))

    proc = run_cli("pull", pushed.ref("v2s2"), "--root", str(tmp_path), timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("Error: digest mismatch")
    assert victim in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "blobs" / "sha256" / victim[7:]).exists()
    assert blob_names(tmp_path) - blobs_before <= {pushed.layer_digests[0], pushed.config_digest}
    assert (
        json.loads(run_cli("images", "--json", "--root", str(tmp_path), timeout=300).stdout)
        == refs_before
    )


@pytest.mark.parametrize(
    ("make_ref", "words"),
    [
        (lambda reg: "library/Ubuntu", "must be lowercase"),
        (lambda reg: "a@sha256:123", "invalid reference format"),
        (lambda reg: reg.ref("test/small:no-such-tag"), "not found"),
        (lambda reg: reg.ref("test/no-such-repo:latest"), "not found"),
        (lambda reg: f"127.0.0.1:{free_port()}/x/y:z", "cannot reach registry"),
    ],
    ids=["uppercase", "bad-digest", "unknown-tag", "unknown-repo", "unreachable"],
)
def test_errors_are_one_line(
    pushed_image: PushedImage,
    tmp_path: Path,
    make_ref: Callable[[RegistryServer], str],
    words: str,
) -> None:
    proc = run_cli("pull", make_ref(pushed_image.registry), "--root", str(tmp_path), timeout=300)
    assert proc.returncode != 0
    assert proc.stdout == ""  # docker names what it pulls only once it is found
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("Error: ")
    assert words in proc.stderr
    assert "Traceback" not in proc.stderr


def test_two_processes_pull_same_image(pushed_image: PushedImage, tmp_path: Path) -> None:
    ref = pushed_image.ref("v2s2")
    cmd = imgpull_argv("pull", ref, "--root", str(tmp_path), "-q")
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    with imgpull.Client(tmp_path) as client:
        assert client.resolve(ref) == pushed_image.config_digest


def test_images_and_inspect(pushed_image: PushedImage, tmp_path: Path) -> None:
    ref = pushed_image.ref("oci")
    assert run_cli("pull", ref, "--root", str(tmp_path), timeout=300).returncode == 0
    table = run_cli("images", "--root", str(tmp_path), timeout=300).stdout.splitlines()
    assert table[0].split()[:4] == ["REPOSITORY", "TAG", "DIGEST", "IMAGE"]
    repo = ref.rsplit(":", 1)[0]
    assert any(
        line.split()[:2] == [repo, "oci"] and pushed_image.config_digest[7:19] in line
        for line in table[1:]
    )
    info = json.loads(run_cli("inspect", ref, "--root", str(tmp_path), timeout=300).stdout)
    assert info["Id"] == pushed_image.config_digest
    assert info["RepoTags"] == [ref]
    assert info["RepoDigests"] == [f"{repo}@{pushed_image.digests['oci']}"]
    assert [layer["Digest"] for layer in info["Layers"]] == pushed_image.layer_digests
    assert [layer["DiffID"] for layer in info["Layers"]] == pushed_image.image.diff_ids
    assert info["Layers"][0]["ChainID"] == pushed_image.image.diff_ids[0]
    assert info["RootFS"]["diff_ids"] == pushed_image.image.diff_ids
    missing = run_cli("inspect", "nothing:here", "--root", str(tmp_path), timeout=300)
    assert missing.returncode == 1 and "no such image" in missing.stderr.lower()


def test_files_layer_bytes_roundtrip(
    fresh_registry: RegistryServer, layout_cache: LayoutCache, tmp_path: Path
) -> None:
    image = layout_cache.get([files_layer({"hello.txt": b"hello\n"})], ref="files")
    pushed = push_both(fresh_registry, image, "test/files")
    with imgpull.Client(tmp_path) as client:
        pulled = client.pull(pushed.ref("oci"))
    layer = pulled.layers[0]
    assert (tmp_path / "blobs/sha256" / layer.digest[7:]).read_bytes() == image.blob(layer.digest)


def _ingest(root: Path, digest: str) -> Path:
    path = root / "ingest" / "sha256" / digest[7:]
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_resumes_a_partial_download(pushed_image: PushedImage, tmp_path: Path) -> None:
    layer = pushed_image.layer_digests[0]
    data = pushed_image.image.blob(layer)
    # What an earlier, interrupted pull left behind: the first third.
    _ingest(tmp_path, layer).write_bytes(data[: len(data) // 3])
    with imgpull.Client(tmp_path) as client:
        image = client.pull(pushed_image.ref("oci"))
    assert (tmp_path / "blobs/sha256" / layer[7:]).read_bytes() == data
    # Only the missing two thirds came over the network for that layer.
    assert image.downloaded_bytes == image.size - len(data) // 3
    assert not _ingest(tmp_path, layer).exists()


def test_bad_partial_is_started_over_once(pushed_image: PushedImage, tmp_path: Path) -> None:
    layer = pushed_image.layer_digests[2]
    data = pushed_image.image.blob(layer)
    # A partial file whose bytes are wrong: the resumed blob cannot verify,
    # so the puller truncates it and downloads the whole blob again.
    _ingest(tmp_path, layer).write_bytes(b"\0" * (len(data) // 2))
    with imgpull.Client(tmp_path) as client:
        image = client.pull(pushed_image.ref("v2s2"))
    assert (tmp_path / "blobs/sha256" / layer[7:]).read_bytes() == data
    assert image.downloaded_bytes == image.size + len(data) - len(data) // 2
