"""The test support itself works: real registries answer (plain, TLS,
htpasswd), images round-trip via skopeo, registries stop cleanly. Its image
builders alone: unit/test_support_images.py."""

from __future__ import annotations

import gzip
import hashlib
import json
import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from support.images import (
    MT_DOCKER_MANIFEST,
    MT_OCI_MANIFEST,
    REF_NAME_ANNOTATION,
    ImageInfo,
    PlatformSpec,
    build_oci_index_layout,
    push,
    random_layer,
    read_oci_layout,
    skopeo_inspect,
    skopeo_pull_oci,
)
from support.pushed import PushedImage
from support.registry import RegistryServer

MANIFEST_ACCEPT = ", ".join([MT_DOCKER_MANIFEST, MT_OCI_MANIFEST])


def test_registry_answers_v2(registry: RegistryServer) -> None:
    assert registry.host.startswith("127.0.0.1:")
    r = httpx.get(f"{registry.url}/v2/")
    assert r.status_code == 200
    assert r.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert any(e.path == "/v2/" and e.status == 200 for e in registry.request_log())


def test_tls_registry_verifies_with_its_ca(tls_registry: RegistryServer) -> None:
    assert tls_registry.url.startswith("https://127.0.0.1:")
    assert tls_registry.ca_path is not None
    ctx = ssl.create_default_context(cafile=str(tls_registry.ca_path))
    assert httpx.get(f"{tls_registry.url}/v2/", verify=ctx).status_code == 200
    # The SAN also covers "localhost".
    port = tls_registry.port
    assert httpx.get(f"https://localhost:{port}/v2/", verify=ctx).status_code == 200
    # Without the CA the certificate must not be trusted.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{tls_registry.url}/v2/")


def test_auth_registry_needs_credentials(auth_registry: RegistryServer) -> None:
    url = f"{auth_registry.url}/v2/"
    r = httpx.get(url)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Basic ")
    assert httpx.get(url, auth=(auth_registry.username or "", "wrong")).status_code == 401
    assert httpx.get(url, auth=auth_registry.credentials).status_code == 200


def test_pushed_image_matches_layout(pushed_image: PushedImage) -> None:
    reg, image = pushed_image.registry, pushed_image.image
    for fmt, media_type in (("v2s2", MT_DOCKER_MANIFEST), ("oci", MT_OCI_MANIFEST)):
        raw = skopeo_inspect(reg, f"{pushed_image.repo}:{pushed_image.tags[fmt]}", raw=True)
        assert raw["mediaType"] == media_type
        assert [layer["digest"] for layer in raw["layers"]] == image.layer_digests
        assert raw["config"]["digest"] == image.config_digest
        info = skopeo_inspect(reg, f"{pushed_image.repo}@{pushed_image.digests[fmt]}")
        assert info["Digest"] == pushed_image.digests[fmt]
        assert info["Layers"] == image.layer_digests
        assert info["Architecture"] == "amd64" and info["Os"] == "linux"
    # The OCI push keeps the layout's manifest byte for byte.
    assert pushed_image.digests["oci"] == image.manifest_digest
    assert pushed_image.digests["v2s2"] != image.manifest_digest


def test_registry_serves_manifest_and_blobs_by_digest(pushed_image: PushedImage) -> None:
    reg, image = pushed_image.registry, pushed_image.image
    with reg.client() as c:
        for fmt, digest in pushed_image.digests.items():
            r = c.get(
                f"/v2/{pushed_image.repo}/manifests/{pushed_image.tags[fmt]}",
                headers={"Accept": MANIFEST_ACCEPT},
            )
            assert r.status_code == 200
            assert r.headers["Docker-Content-Digest"] == digest
            assert "sha256:" + hashlib.sha256(r.content).hexdigest() == digest
        for layer in image.layers:
            blob = c.get(f"/v2/{pushed_image.repo}/blobs/{layer.digest}").content
            assert len(blob) == layer.size
            assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer.digest
            assert "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest() == layer.diff_id
            assert reg.blob_path(layer.digest).read_bytes() == blob


def test_image_config_is_real(small_image: ImageInfo) -> None:
    cfg = json.loads(small_image.blob(small_image.config_digest))
    assert cfg["architecture"] == "amd64" and cfg["os"] == "linux"
    assert cfg["rootfs"] == {"type": "layers", "diff_ids": small_image.diff_ids}
    assert len(cfg["history"]) == len(small_image.layers) == 3
    index = json.loads((small_image.layout_dir / "index.json").read_text())
    assert index["manifests"][0]["annotations"][REF_NAME_ANNOTATION] == "small"
    assert json.loads((small_image.layout_dir / "oci-layout").read_text()) == {
        "imageLayoutVersion": "1.0.0"
    }


def test_skopeo_pull_matches_push(pushed_image: PushedImage, tmp_path: Path) -> None:
    for fmt in ("v2s2", "oci"):
        got = skopeo_pull_oci(
            pushed_image.registry, f"{pushed_image.repo}:{fmt}", tmp_path / fmt, tag=fmt
        )
        assert got.layer_digests == pushed_image.layer_digests
        assert got.diff_ids == pushed_image.image.diff_ids
        if fmt == "oci":
            # Converting v2s2 to OCI, skopeo re-serialises the config; OCI is kept as is.
            assert got.config_digest == pushed_image.config_digest
        assert got.config["rootfs"] == pushed_image.image.config["rootfs"]
        for digest in got.layer_digests:
            assert got.blob(digest) == pushed_image.image.blob(digest)
        assert read_oci_layout(tmp_path / fmt).manifest_digest == got.manifest_digest


@pytest.mark.parametrize("flavour", ["tls", "auth", "tls+auth"])
def test_push_to_secured_registries(
    flavour: str,
    request: pytest.FixtureRequest,
    small_image: ImageInfo,
    tmp_path: Path,
) -> None:
    fixture = {"tls": "tls_registry", "auth": "auth_registry", "tls+auth": "tls_auth_registry"}
    reg: RegistryServer = request.getfixturevalue(fixture[flavour])
    digest = push(small_image, reg, "test/secured:v1", "v2s2")
    pulled = skopeo_pull_oci(reg, f"test/secured@{digest}", tmp_path / "pull")
    assert pulled.layer_digests == small_image.layer_digests


def test_corrupting_a_blob_shows_in_what_the_registry_serves(
    fresh_registry: RegistryServer, small_image: ImageInfo
) -> None:
    push(small_image, fresh_registry, "test/corrupt:v1", "oci")
    layer = small_image.layers[1]
    path = fresh_registry.blob_path(layer.digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with fresh_registry.client() as c:
        served = c.get(f"/v2/test/corrupt/blobs/{layer.digest}").content
    assert len(served) == layer.size
    assert "sha256:" + hashlib.sha256(served).hexdigest() != layer.digest


def test_multi_platform_index_push(fresh_registry: RegistryServer, tmp_path: Path) -> None:
    idx = build_oci_index_layout(
        tmp_path,
        [
            PlatformSpec((random_layer(10_000, seed=1),)),
            PlatformSpec((random_layer(10_000, seed=2),), architecture="arm64", variant="v8"),
        ],
        ref="multi",
    )
    for fmt, media_type in (
        ("oci", "application/vnd.oci.image.index.v1+json"),
        ("v2s2", "application/vnd.docker.distribution.manifest.list.v2+json"),
    ):
        push(idx, fresh_registry, f"test/multi:{fmt}", fmt, all_images=True)  # type: ignore[arg-type]
        raw = skopeo_inspect(fresh_registry, f"test/multi:{fmt}", raw=True)
        assert raw["mediaType"] == media_type
        assert [m["platform"]["architecture"] for m in raw["manifests"]] == ["amd64", "arm64"]


def test_registry_stops_and_cleans_up(make_registry: Callable[..., RegistryServer]) -> None:
    reg = make_registry()
    assert reg.running
    url = f"{reg.url}/v2/"
    reg.stop()
    assert not reg.running
    with pytest.raises(httpx.TransportError):
        httpx.get(url, timeout=2)
