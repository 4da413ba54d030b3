"""Mirrors: tried first, in order; on their failure the next endpoint (§2).

The mirror is a real pull-through cache: docker-registry in proxy mode in
front of the origin registry. Failures a real server will not produce on
demand (500, 429, a missing or corrupt blob) come from support.fakeregistry.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import support.cli
from support.cli import cli_env, stored_blobs
from support.fakeregistry import FakeRegistry
from support.images import ImageInfo, push
from support.registry import RegistryServer, free_port, require_tools

import imgpull
from imgpull.progress import ProgressEvent

REPO_TAG = "mirror/small:v1"


@pytest.fixture(scope="module")
def origin(
    tmp_path_factory: pytest.TempPathFactory, small_image: ImageInfo
) -> Iterator[RegistryServer]:
    require_tools()
    with RegistryServer(workdir=tmp_path_factory.mktemp("origin")) as reg:
        push(small_image, reg, REPO_TAG, "oci")
        yield reg


@pytest.fixture(scope="module")
def cache(
    tmp_path_factory: pytest.TempPathFactory, origin: RegistryServer
) -> Iterator[RegistryServer]:
    """A pull-through cache of `origin`."""
    with RegistryServer(workdir=tmp_path_factory.mktemp("cache"), proxy_of=origin.url) as reg:
        yield reg


def blob_gets(registry: RegistryServer, *, by_imgpull: bool) -> set[str]:
    """Digests of blobs served (2xx) to imgpull, or to anyone else (the cache)."""
    return {
        e.path.rsplit("/", 1)[1]
        for e in registry.request_log()
        if e.method == "GET"
        and "/blobs/" in e.path
        and 200 <= e.status < 300
        and ("imgpull" in e.user_agent) == by_imgpull
    }


def run_cli(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`imgpull ARGS`, with IMGPULL_CONFIG=`config` when given."""
    env = cli_env() if config is None else cli_env(IMGPULL_CONFIG=str(config))
    return support.cli.run_cli(*args, env=env)


def pull(root: Path, ref: str, mirrors: list[str]) -> tuple[imgpull.Image, list[str]]:
    """A pull through `mirrors`; the image and the messages it emitted."""
    events: list[ProgressEvent] = []
    origin_domain = ref.split("/", 1)[0]
    with imgpull.Client(root, mirrors={origin_domain: mirrors}, certs_dirs=[]) as client:
        image = client.pull(ref, progress=events.append)
    return image, [e.status for e in events if e.id is None]


def test_pull_through_cache_from_config_file(
    origin: RegistryServer, cache: RegistryServer, small_image: ImageInfo, tmp_path: Path
) -> None:
    """registries.conf-style config: the cache serves the pull, fetching from the origin."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'[[registry]]\nprefix = "{origin.host}"\n'
        f'[[registry.mirror]]\nlocation = "http://{cache.host}"\n'
    )
    origin.clear_request_log()
    proc = run_cli("pull", origin.ref(REPO_TAG), "--root", str(tmp_path / "root"), config=config)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stdout
    assert small_image.blob_digests <= stored_blobs(tmp_path / "root")
    assert small_image.blob_digests <= blob_gets(cache, by_imgpull=True)
    # imgpull asked the origin nothing: the cache fetched what it lacked.
    assert not [e for e in origin.request_log() if "imgpull" in e.user_agent]


def test_second_pull_is_served_by_the_cache(
    origin: RegistryServer, cache: RegistryServer, small_image: ImageInfo, tmp_path: Path
) -> None:
    image, messages = pull(tmp_path / "one", origin.ref(REPO_TAG), [f"http://{cache.host}"])
    assert image.source == cache.url
    assert not [m for m in messages if m.startswith("Warning")]
    # The cache stores what it fetched in the background: wait (bounded) until it holds all.
    deadline = time.monotonic() + 20
    while not all(cache.blob_path(d).exists() for d in small_image.blob_digests):
        assert time.monotonic() < deadline, "the cache never stored the blobs"
        time.sleep(0.05)
    origin.clear_request_log()
    image, _ = pull(tmp_path / "two", origin.ref(REPO_TAG), [f"http://{cache.host}"])
    assert image.source == cache.url
    assert small_image.blob_digests <= stored_blobs(tmp_path / "two")
    assert not [e for e in origin.request_log() if "/blobs/" in e.path]


def test_mirror_down_falls_back_to_origin(
    origin: RegistryServer, small_image: ImageInfo, tmp_path: Path
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    origin.clear_request_log()
    proc = run_cli(
        "pull", origin.ref(REPO_TAG), "--root", str(tmp_path), "--mirror", f"http://{dead}"
    )
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("Warning")]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"Warning: mirror {dead} failed: cannot reach registry {dead}")
    assert warnings[0].endswith(f"trying {origin.host}")
    assert small_image.blob_digests <= stored_blobs(tmp_path)
    assert small_image.blob_digests <= blob_gets(origin, by_imgpull=True)


@pytest.mark.parametrize(
    ("status", "said"),
    [
        (500, "answered 500"),
        (404, "not found"),
        (429, "too many requests"),
        (401, "pull access denied"),
    ],
)
def test_failing_mirror_falls_back_at_once(
    origin: RegistryServer, small_image: ImageInfo, tmp_path: Path, status: int, said: str
) -> None:
    with FakeRegistry() as fake:
        # 404: the mirror has nothing; else it fails every request so.
        fake.fail_with = None if status == 404 else status
        mirror = fake.host
        origin.clear_request_log()
        image, messages = pull(tmp_path, origin.ref(REPO_TAG), [f"http://{mirror}"])
        tried = fake.requests()
    assert image.source == origin.url
    (warning,) = [m for m in messages if m.startswith("Warning")]
    assert warning.startswith(f"Warning: mirror {mirror} failed: ")
    assert said in warning
    # No retry at the mirror (not even after 429's Retry-After: 0): one manifest GET.
    assert len([r for r in tried if r.method == "GET" and "/manifests/" in r.path]) == 1
    assert small_image.blob_digests <= blob_gets(origin, by_imgpull=True)
    assert small_image.blob_digests <= stored_blobs(tmp_path)


@pytest.mark.parametrize("fault", ["missing", "corrupt"])
def test_blob_failing_at_mirror_is_fetched_from_origin(
    origin: RegistryServer, small_image: ImageInfo, tmp_path: Path, fault: str
) -> None:
    """The mirror serves the manifest but one blob is gone or wrong: that blob
    comes from the origin; nothing bad reaches the store."""
    bad = small_image.layer_digests[-1]
    with FakeRegistry() as fake:
        fake.add_image("mirror/small", "v1", small_image)
        if fault == "missing":
            del fake.blobs[bad]
        else:
            data = bytearray(fake.blobs[bad])
            data[len(data) // 2] ^= 0xFF
            fake.blobs[bad] = bytes(data)
        origin.clear_request_log()
        image, messages = pull(tmp_path, origin.ref(REPO_TAG), [f"http://{fake.host}"])
        served_by_mirror = {
            r.path.rsplit("/", 1)[1] for r in fake.requests() if "/blobs/" in r.path
        }
    assert image.source == origin.url
    warning = next(m for m in messages if m.startswith("Warning"))
    assert bad in warning
    assert bad in served_by_mirror
    assert bad in blob_gets(origin, by_imgpull=True)
    assert small_image.blob_digests <= stored_blobs(tmp_path)


def test_mirror_flag_replaces_configured_mirrors(
    origin: RegistryServer, cache: RegistryServer, tmp_path: Path
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[[registry]]\nprefix = "{origin.host}"\n[[registry.mirror]]\nlocation = "http://{dead}"\n'
    )
    cache.clear_request_log()
    proc = run_cli(
        "pull", origin.ref(REPO_TAG), "--root", str(tmp_path / "root"),
        "--mirror", f"http://{cache.host}", config=config,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stdout  # the dead mirror was never tried
    assert [e for e in cache.request_log() if "imgpull" in e.user_agent]


def test_all_tags_are_listed_past_a_failing_mirror(origin: RegistryServer, tmp_path: Path) -> None:
    with FakeRegistry() as fake:
        fake.fail_with = 500
        mirror = fake.host
        events: list[ProgressEvent] = []
        with imgpull.Client(
            tmp_path, mirrors={origin.host: [f"http://{mirror}"]}, certs_dirs=[]
        ) as client:
            images = client.pull_all_tags(
                origin.ref(REPO_TAG.split(":")[0]), progress=events.append
            )
        tried = fake.requests()
    assert [str(i.reference) for i in images] == [origin.ref(REPO_TAG)]
    assert any(r.path.endswith("/tags/list") for r in tried)
    warnings = [e.status for e in events if e.status.startswith("Warning")]
    assert len(warnings) == 2  # the tag list, then the pull of v1
    assert all(w.startswith(f"Warning: mirror {mirror} failed") for w in warnings)


def test_mirror_with_unusable_tls_files_is_skipped(
    origin: RegistryServer, small_image: ImageInfo, tmp_path: Path
) -> None:
    """A mirror's own certs.d folder that cannot be used (a client certificate
    without its key) is that mirror's failure: the registry still serves."""
    mirror = f"127.0.0.1:{free_port()}"
    certs = tmp_path / "certs.d"
    (certs / mirror).mkdir(parents=True)
    (certs / mirror / "client.cert").write_text("not used\n")
    events: list[ProgressEvent] = []
    with imgpull.Client(
        tmp_path / "store", mirrors={origin.host: [mirror]}, certs_dirs=[certs]
    ) as client:
        image = client.pull(origin.ref(REPO_TAG), progress=events.append)
    assert image.source == origin.url
    warnings = [e.status for e in events if e.status.startswith("Warning")]
    assert len(warnings) == 1 and "missing key client.key" in warnings[0], warnings
    assert small_image.blob_digests <= stored_blobs(tmp_path / "store")
