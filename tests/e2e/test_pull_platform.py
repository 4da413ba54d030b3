"""End to end: choosing a manifest-list / OCI-index entry for `--platform`.

A multi-platform image (seven Linux entries and two Windows ones) is pushed
with skopeo to the real registry as an OCI index and as a Docker manifest
list. For each wanted platform, imgpull must pull the entry docker would
(pull-semantics.md §4) and report and record the list's own digest.
Nested indexes and entries of unknown media type are PUT to the registry as
crafted OCI indexes pointing at the manifests skopeo pushed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.cli import cli_env, run_cli
from support.images import (
    MT_OCI_INDEX,
    IndexInfo,
    PlatformSpec,
    PushFormat,
    build_oci_index_layout,
    push,
    random_layer,
)
from support.pushed import PushedImage
from support.registry import RegistryServer

import imgpull
import imgpull.client
from imgpull.platform import Platform
from imgpull.progress import ProgressEvent

ACCEPT = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
    ]
)

# Entry name -> (architecture, os, variant, os.version). Listed in an order
# that differs from the preference order, so that ranking, not position, picks.
ENTRIES: dict[str, tuple[str, str, str | None, str | None]] = {
    "arm/v5": ("arm", "linux", "v5", None),
    "arm/v6": ("arm", "linux", "v6", None),
    "arm/v7": ("arm", "linux", "v7", None),
    "amd64/v3": ("amd64", "linux", "v3", None),
    "amd64": ("amd64", "linux", None, None),
    "arm64": ("arm64", "linux", None, None),
    "windows-1809": ("amd64", "windows", None, "10.0.17763.5458"),
    "windows-2022": ("amd64", "windows", None, "10.0.20348.2113"),
}

# --platform -> the entry docker picks (None: "no matching manifest").
PLATFORM_TABLE: list[tuple[str, str | None]] = [
    ("linux/amd64", "amd64"),
    ("linux/amd64/v1", "amd64"),
    ("linux/amd64/v2", "amd64"),  # no v2 entry: v1 (spelt without a variant)
    ("linux/amd64/v3", "amd64/v3"),
    ("linux/amd64/v4", "amd64/v3"),  # best the index has that a v4 CPU runs
    ("linux/x86_64", "amd64"),
    ("linux/arm64", "arm64"),
    ("linux/arm64/v8", "arm64"),  # arm64 == arm64/v8
    ("linux/aarch64", "arm64"),
    ("linux/arm64/v9", "arm64"),  # Armv9.0 runs Armv8.x images
    ("linux/arm/v8", "arm/v7"),  # no arm/v8 entry: v7, v6, v5 in that order
    ("linux/arm", "arm/v7"),  # arm means arm/v7
    ("linux/arm/v7", "arm/v7"),
    ("linux/arm/v6", "arm/v6"),
    ("linux/arm/v5", "arm/v5"),
    ("windows/amd64", "windows-2022"),  # any version: the newest
    ("windows(10.0.20348)/amd64", "windows-2022"),
    ("windows(10.0.17763)/amd64", "windows-1809"),  # before 2022: same build only
    ("windows(10.0.26100)/amd64", "windows-2022"),  # 2025 hosts run ltsc2022 images
    ("windows(10.0.14393)/amd64", None),
    ("windows/arm64", None),
    ("windows(10.0.17763)/arm64/v8", None),  # the error keeps the os.version
    ("linux/riscv64", None),
    ("linux/386", None),  # a 386 CPU runs no amd64 image
    ("linux/arm/v4", None),
    ("linux/arm64/v8.10", None),  # no such variant: containerd matches nothing
]

FORMATS: list[PushFormat] = ["oci", "v2s2"]


@dataclass(frozen=True)
class PushedIndex:
    registry: RegistryServer
    repo: str
    tag: str
    digest: str  # the list's own digest as pushed
    entries: dict[str, tuple[str, str]]  # entry name -> (manifest digest, config digest)

    @property
    def ref(self) -> str:
        return self.registry.ref(f"{self.repo}:{self.tag}")


def _get(registry: RegistryServer, path: str) -> tuple[bytes, str]:
    with registry.client() as c:
        resp = c.get(path, headers={"Accept": ACCEPT})
    resp.raise_for_status()
    return resp.content, resp.headers["content-type"]


def _entry_name(platform: dict[str, Any]) -> str:
    for name, (arch, os_name, variant, os_version) in ENTRIES.items():
        if (
            platform.get("architecture") == arch
            and platform.get("os") == os_name
            and platform.get("variant") == variant
            and platform.get("os.version") == os_version
        ):
            return name
    raise AssertionError(f"unexpected platform {platform}")


def _read_pushed(registry: RegistryServer, repo: str, tag: str, digest: str) -> PushedIndex:
    raw, _ = _get(registry, f"/v2/{repo}/manifests/{tag}")
    index = json.loads(raw)
    entries = {}
    for entry in index["manifests"]:
        child, _ = _get(registry, f"/v2/{repo}/manifests/{entry['digest']}")
        config = json.loads(child)["config"]["digest"]
        entries[_entry_name(entry["platform"])] = (entry["digest"], config)
    assert sorted(entries) == sorted(ENTRIES)
    return PushedIndex(registry, repo, tag, digest, entries)


@pytest.fixture(scope="module")
def multi_layout(tmp_path_factory: pytest.TempPathFactory) -> IndexInfo:
    specs = [
        PlatformSpec(
            (random_layer(2_000 + seed, seed=700 + seed),),
            architecture=arch,
            os_name=os_name,
            variant=variant,
            os_version=os_version,
        )
        for seed, (arch, os_name, variant, os_version) in enumerate(ENTRIES.values())
    ]
    return build_oci_index_layout(tmp_path_factory.mktemp("multi"), specs, ref="multi")


@pytest.fixture(scope="module")
def multi(registry: RegistryServer, multi_layout: IndexInfo) -> dict[str, PushedIndex]:
    """The index pushed as `test/multi:oci` (OCI index) and `:v2s2` (manifest list)."""
    out: dict[str, PushedIndex] = {}
    for fmt in FORMATS:
        digest = push(multi_layout, registry, f"test/multi:{fmt}", fmt, all_images=True)
        out[fmt] = _read_pushed(registry, "test/multi", fmt, digest)
    return out


def test_pushed_lists_have_the_wanted_shape(multi: dict[str, PushedIndex]) -> None:
    for fmt, media_type in (
        ("oci", "application/vnd.oci.image.index.v1+json"),
        ("v2s2", "application/vnd.docker.distribution.manifest.list.v2+json"),
    ):
        raw, content_type = _get(multi[fmt].registry, f"/v2/test/multi/manifests/{fmt}")
        assert content_type == media_type
        versions = [m["platform"].get("os.version") for m in json.loads(raw)["manifests"]]
        assert versions[-2:] == ["10.0.17763.5458", "10.0.20348.2113"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("want", "expected"), PLATFORM_TABLE, ids=[w for w, _ in PLATFORM_TABLE])
def test_platform_selection(
    multi: dict[str, PushedIndex], tmp_path: Path, fmt: PushFormat, want: str, expected: str | None
) -> None:
    pushed = multi[fmt]
    with imgpull.Client(tmp_path) as client:
        if expected is None:
            with pytest.raises(imgpull.NoMatchingPlatformError) as info:
                client.pull(pushed.ref, platform=want)
            # containerd's FormatAll of the wanted platform: each `want` is
            # spelt that way already.
            assert str(info.value) == (
                f"no matching manifest for {want} in the manifest list entries"
            )
            assert client.images() == []
            return
        events: list[ProgressEvent] = []
        image = client.pull(pushed.ref, platform=want, progress=events.append)
        manifest_digest, config_digest = pushed.entries[expected]
        assert image.manifest_digest == manifest_digest
        assert image.id == config_digest
        # The list's own digest is what is reported and recorded.
        assert image.digest == pushed.digest
        assert f"Digest: {pushed.digest}" in [e.status for e in events]
        rows = client.images()
        assert {r.tag for r in rows} - {None} == {fmt}
        assert {r.digest for r in rows} - {None} == {pushed.digest}
        assert client.resolve(f"{pushed.registry.host}/test/multi@{pushed.digest}") == image.id
        arch, os_name, variant, os_version = ENTRIES[expected]
        info_ = client.inspect(pushed.ref)
        assert (info_["Os"], info_["Architecture"], info_["Variant"]) == (os_name, arch, variant)
        assert info_["ManifestDigest"] == manifest_digest
        assert image.platform.os_version == os_version
        # An entry chosen for its platform: no mismatch warning.
        assert not [e for e in events if e.status.startswith("WARNING")]


def test_cli_windows_entry_and_no_match(multi: dict[str, PushedIndex], tmp_path: Path) -> None:
    pushed = multi["v2s2"]
    proc = run_cli("pull", "--platform", "windows/amd64", pushed.ref, "--root", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert f"Digest: {pushed.digest}" in proc.stdout.splitlines()
    info = json.loads(run_cli("inspect", pushed.ref, "--root", str(tmp_path)).stdout)
    assert info["Os"] == "windows"
    assert info["ManifestDigest"] == pushed.entries["windows-2022"][0]

    proc = run_cli("pull", "--platform", "linux/riscv64", pushed.ref, "--root", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr == (
        "Error: no matching manifest for linux/riscv64 in the manifest list entries\n"
    )


# -- crafted indexes: nested indexes, unknown entries ---------------------------


def _put_index(registry: RegistryServer, repo: str, tag: str, index: dict[str, Any]) -> str:
    body = json.dumps(index).encode()
    with registry.client() as c:
        resp = c.put(
            f"/v2/{repo}/manifests/{tag}", content=body, headers={"Content-Type": MT_OCI_INDEX}
        )
    assert resp.status_code == 201, resp.text
    digest: str = resp.headers["Docker-Content-Digest"]
    return digest


def _entry(
    pushed: PushedIndex, name: str, *, media_type: str | None = None, platform: bool = True
) -> dict[str, Any]:
    digest = pushed.entries[name][0]
    raw, content_type = _get(pushed.registry, f"/v2/{pushed.repo}/manifests/{digest}")
    entry: dict[str, Any] = {
        "mediaType": media_type or content_type,
        "digest": digest,
        "size": len(raw),
    }
    if platform:
        arch, os_name, variant, _ = ENTRIES[name]
        entry["platform"] = {"architecture": arch, "os": os_name}
        if variant:
            entry["platform"]["variant"] = variant
    return entry


def _manifest_gets(registry: RegistryServer) -> list[str]:
    return [
        e.path.rsplit("/", 1)[-1]
        for e in registry.request_log()
        if e.method == "GET" and "/manifests/" in e.path
    ]


def test_unknown_entry_media_type_is_skipped(multi: dict[str, PushedIndex], tmp_path: Path) -> None:
    pushed = multi["oci"]
    registry = pushed.registry
    # First, an entry of a media type imgpull does not know, declared as
    # linux/amd64 (it is the Windows image's manifest): skipped unfetched.
    decoy = _entry(pushed, "windows-2022", media_type="application/vnd.example.unknown+json")
    decoy["platform"] = {"architecture": "amd64", "os": "linux"}
    index = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": [decoy, _entry(pushed, "amd64"), _entry(pushed, "arm64")],
    }
    digest = _put_index(registry, pushed.repo, "unknown-entry", index)
    registry.clear_request_log()
    with imgpull.Client(tmp_path) as client:
        image = client.pull(registry.ref(f"{pushed.repo}:unknown-entry"), platform="linux/amd64")
    assert image.manifest_digest == pushed.entries["amd64"][0]
    assert image.digest == digest
    assert decoy["digest"] not in _manifest_gets(registry)


def test_nested_index_without_match_tries_the_next_entry(
    multi: dict[str, PushedIndex], tmp_path: Path
) -> None:
    pushed = multi["oci"]
    registry, repo = pushed.registry, pushed.repo

    def nested(tag: str, *names: str) -> dict[str, Any]:
        digest = _put_index(
            registry,
            repo,
            tag,
            {
                "schemaVersion": 2,
                "mediaType": MT_OCI_INDEX,
                "manifests": [_entry(pushed, n) for n in names],
            },
        )
        raw, _ = _get(registry, f"/v2/{repo}/manifests/{digest}")
        return {"mediaType": MT_OCI_INDEX, "digest": digest, "size": len(raw)}

    arm_only = nested("nested-arm", "arm64", "arm/v7")
    amd_only = nested("nested-amd", "amd64/v3", "amd64")
    top = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        # Nested indexes carry no platform of their own: tried in order.
        "manifests": [arm_only, amd_only],
    }
    top_digest = _put_index(registry, repo, "nested", top)
    ref = registry.ref(f"{repo}:nested")
    with imgpull.Client(tmp_path) as client:
        registry.clear_request_log()
        image = client.pull(ref, platform="linux/amd64/v3")
        assert image.manifest_digest == pushed.entries["amd64/v3"][0]
        assert image.digest == top_digest
        gets = _manifest_gets(registry)
        # Both nested indexes were looked into, the arm one first.
        assert gets.index(arm_only["digest"]) < gets.index(amd_only["digest"])
        assert pushed.entries["arm64"][0] not in gets  # never fetched: no match

        arm = client.pull(ref, platform="linux/arm/v8")
        assert arm.manifest_digest == pushed.entries["arm/v7"][0]
        # An arm/v6 CPU cannot run the v7 image: no match in either.
        with pytest.raises(imgpull.NoMatchingPlatformError):
            client.pull(ref, platform="linux/arm/v6")


def test_nested_index_no_match_anywhere(multi: dict[str, PushedIndex], tmp_path: Path) -> None:
    pushed = multi["oci"]
    registry, repo = pushed.registry, pushed.repo
    inner = _put_index(
        registry,
        repo,
        "inner-arm",
        {
            "schemaVersion": 2,
            "mediaType": MT_OCI_INDEX,
            "manifests": [_entry(pushed, "arm64")],
        },
    )
    raw, _ = _get(registry, f"/v2/{repo}/manifests/{inner}")
    _put_index(
        registry,
        repo,
        "outer",
        {
            "schemaVersion": 2,
            "mediaType": MT_OCI_INDEX,
            "manifests": [{"mediaType": MT_OCI_INDEX, "digest": inner, "size": len(raw)}],
        },
    )
    proc = run_cli(
        "pull", "--platform", "linux/amd64", registry.ref(f"{repo}:outer"), "--root", str(tmp_path)
    )
    assert proc.returncode == 1
    assert proc.stderr == (
        "Error: no matching manifest for linux/amd64 in the manifest list entries\n"
    )


# -- crossing architectures: amd64 -> 386, arm64 -> arm ------------------------------

# An index without amd64 or arm64 entries (pushed as an OCI index).
FALLBACK_ENTRIES: dict[str, tuple[str, str | None]] = {
    "arm/v6": ("arm", "v6"),
    "386": ("386", None),
    "arm/v7": ("arm", "v7"),
}
FALLBACK_TABLE: list[tuple[str, str | None]] = [
    ("linux/amd64", "386"),
    ("linux/amd64/v3", "386"),  # after every amd64 level
    ("linux/386", "386"),
    ("linux/arm64", "arm/v7"),  # arm/v8, v7, v6, v5 in that order
    ("linux/arm64/v8.2", "arm/v7"),
    ("linux/arm64/v9", "arm/v7"),
    ("linux/arm/v7", "arm/v7"),
    ("linux/arm/v6", "arm/v6"),
    ("linux/arm/v5", None),
    ("linux/s390x", None),
]


@pytest.fixture(scope="module")
def fallback(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> PushedIndex:
    specs = [
        PlatformSpec((random_layer(1_000 + seed, seed=760 + seed),), architecture=arch, variant=v)
        for seed, (arch, v) in enumerate(FALLBACK_ENTRIES.values())
    ]
    layout = build_oci_index_layout(tmp_path_factory.mktemp("fallback"), specs, ref="fallback")
    digest = push(layout, registry, "test/fallback:oci", "oci", all_images=True)
    raw, _ = _get(registry, "/v2/test/fallback/manifests/oci")
    entries = {}
    for entry in json.loads(raw)["manifests"]:
        p = entry["platform"]
        name = next(
            n
            for n, (a, v) in FALLBACK_ENTRIES.items()
            if (a, v) == (p["architecture"], p.get("variant"))
        )
        child, _ = _get(registry, f"/v2/test/fallback/manifests/{entry['digest']}")
        entries[name] = (entry["digest"], json.loads(child)["config"]["digest"])
    assert sorted(entries) == sorted(FALLBACK_ENTRIES)
    return PushedIndex(registry, "test/fallback", "oci", digest, entries)


def test_platform_fallback_across_architectures(fallback: PushedIndex, tmp_path: Path) -> None:
    """containerd's platforms.Only, which docker filters lists with: an amd64
    host runs the 386 image, an arm64 one the best arm one."""
    with imgpull.Client(tmp_path) as client:
        for want, expected in FALLBACK_TABLE:
            if expected is None:
                with pytest.raises(imgpull.NoMatchingPlatformError, match=f"for {want} in"):
                    client.pull(fallback.ref, platform=want)
                continue
            image = client.pull(fallback.ref, platform=want)
            assert (image.manifest_digest, image.id) == fallback.entries[expected], want
            assert image.digest == fallback.digest


# -- --platform and a single-platform image for another one ---------------------------


def _mismatch(ref: str, want: str) -> str:
    return (
        f"WARNING: image with reference {ref} was found but does not match the "
        f"specified platform: wanted {want}, actual: linux/amd64"
    )


def test_single_platform_image_of_another_platform_warns(
    pushed_image: PushedImage, tmp_path: Path
) -> None:
    """docker pulls it, and says so when the platform was asked for: by
    --platform or DOCKER_DEFAULT_PLATFORM (the CLI's default for the flag)."""
    ref = pushed_image.ref("v2s2")  # a linux/amd64 image

    def warnings(*args: str, default_platform: str | None = None) -> list[str]:
        env = cli_env()
        if default_platform is not None:
            env["DOCKER_DEFAULT_PLATFORM"] = default_platform
        proc = run_cli("pull", *args, ref, "--root", str(tmp_path), env=env)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        status = next(i for i, line in enumerate(lines) if line.startswith("Status: "))
        assert not [line for line in lines[:status] if "WARNING" in line]
        return [line for line in lines[status + 1 :] if "WARNING" in line]

    assert warnings("--platform", "linux/arm64") == [_mismatch(ref, "linux/arm64")]
    assert warnings(default_platform="linux/arm64") == [_mismatch(ref, "linux/arm64")]
    assert warnings("--platform", "linux/386") == [_mismatch(ref, "linux/386")]
    # The flag wins over the variable; amd64/v3 runs an amd64 (v1) image.
    assert warnings("--platform", "linux/amd64/v3", default_platform="linux/arm64") == []
    assert warnings("--platform", "linux/amd64") == []
    assert warnings(default_platform="") == []
    assert warnings() == []


def test_host_default_platform_never_warns(
    pushed_image: PushedImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a platform asked for warns, not the host's: on an arm64 host, an
    amd64-only image pulls without a word, unless arm64 was asked for."""
    monkeypatch.setattr(imgpull.client, "host_platform", lambda: Platform("linux", "arm64", "v8"))
    ref = pushed_image.ref("oci")
    with imgpull.Client(tmp_path) as client:
        events: list[ProgressEvent] = []
        client.pull(ref, progress=events.append)
        assert not [e for e in events if "WARNING" in e.status]
        client.pull(ref, platform="linux/arm64", progress=events.append)
    assert [e.status for e in events if "WARNING" in e.status] == [_mismatch(ref, "linux/arm64")]
