"""TLS to the registry: a custom CA (--ca-cert, certs.d), --insecure, and mutual TLS.

Real HTTPS registries (docker-registry with a CA made by openssl; one of them
requires client certificates). A pull fetches manifests through httpx and
blobs through the native fetcher, so a pull that ends with every blob in the
store shows that both sides used the same TLS settings.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import support.cli
from support.cli import stored_blobs
from support.images import ImageInfo, push
from support.registry import RegistryServer, require_tools

import imgpull
from imgpull.errors import TLSVerificationError


@dataclass(frozen=True)
class Pushed:
    registry: RegistryServer
    ref: str
    blobs: tuple[str, ...]  # config and layers


def _push(registry: RegistryServer, image: ImageInfo, repo_tag: str) -> Pushed:
    push(image, registry, repo_tag)
    return Pushed(registry, registry.ref(repo_tag), (image.config_digest, *image.layer_digests))


@pytest.fixture(scope="module")
def tls_image(tls_registry: RegistryServer, small_image: ImageInfo) -> Pushed:
    return _push(tls_registry, small_image, "tls/small:v1")


@pytest.fixture(scope="module")
def mtls_image(
    tmp_path_factory: pytest.TempPathFactory, small_image: ImageInfo
) -> Iterator[Pushed]:
    """An HTTPS registry that requires a client certificate signed by its CA."""
    require_tools()
    workdir = tmp_path_factory.mktemp("mtls-registry")
    with RegistryServer(tls=True, client_auth=True, workdir=workdir) as reg:
        yield _push(reg, small_image, "mtls/small:v1")


def run_cli(*args: str, certs_d: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`imgpull ARGS` with certs.d pointed at `certs_d` (never the machine's own)."""
    env = {**os.environ, "IMGPULL_CERTS_D": str(certs_d) if certs_d else os.devnull}
    return support.cli.run_cli(*args, env=env)


def blob_gets(registry: RegistryServer) -> set[str]:
    """Digests of the blobs the registry served (200) so far."""
    return {
        e.path.rsplit("/", 1)[1]
        for e in registry.request_log()
        if e.method == "GET" and "/blobs/" in e.path and e.status == 200
    }


def handshake_errors(registry: RegistryServer, before: int, *, settle: float = 0.5) -> int:
    """TLS handshake failures the registry logged since `before` (it logs them
    as it notices; wait, bounded, for the first and a moment for any more)."""
    deadline = time.monotonic() + 10
    while registry.log_text().count("TLS handshake error") <= before:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    time.sleep(settle)
    return registry.log_text().count("TLS handshake error") - before


def certs_d_for(registry: RegistryServer, base: Path, *files: Path) -> Path:
    """`base/<host:port>/` holding `files` (a certs.d for that registry)."""
    folder = base / registry.host
    folder.mkdir(parents=True)
    for f in files:
        shutil.copy(f, folder / f.name)
    return base


def test_ca_cert_flag_verifies_the_registry(tls_image: Pushed, tmp_path: Path) -> None:
    reg = tls_image.registry
    assert reg.ca_path is not None
    proc = run_cli("pull", tls_image.ref, "--root", str(tmp_path), "--ca-cert", str(reg.ca_path))
    assert proc.returncode == 0, proc.stderr
    assert set(tls_image.blobs) <= stored_blobs(tmp_path)


def test_certs_d_ca_is_used_for_manifests_and_blobs(
    tls_image: Pushed, mtls_image: Pushed, tmp_path: Path
) -> None:
    """certs.d/<host:port>/*.crt: every CA there is trusted (here another CA
    too, so both clients get a bundle of two) by httpx and the native fetcher."""
    reg = tls_image.registry
    other = mtls_image.registry.tls_files
    assert reg.tls_files is not None and other is not None
    other_ca = tmp_path / "other.crt"
    shutil.copy(other.ca_cert, other_ca)
    certs_d = certs_d_for(reg, tmp_path / "certs.d", other_ca, reg.tls_files.ca_cert)
    root = tmp_path / "root"
    proc = run_cli("pull", tls_image.ref, "--root", str(root), certs_d=certs_d)
    assert proc.returncode == 0, proc.stderr
    assert set(tls_image.blobs) <= stored_blobs(root)


def test_untrusted_certificate_is_one_clear_error_without_retries(
    tls_image: Pushed, tmp_path: Path
) -> None:
    reg = tls_image.registry
    before = reg.log_text().count("TLS handshake error")
    proc = run_cli("pull", tls_image.ref, "--root", str(tmp_path), certs_d=tmp_path / "none")
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"Error: cannot reach registry {reg.host}: TLS certificate")
    assert "--ca-cert" in lines[0] and "certs.d/<host:port>/ca.crt" in lines[0]
    assert "--insecure" in lines[0]
    # One handshake: no retry, and no fall back to plain HTTP either.
    assert handshake_errors(reg, before) == 1
    assert stored_blobs(tmp_path) == set()


def test_insecure_skips_verification(tls_image: Pushed, tmp_path: Path) -> None:
    proc = run_cli("pull", tls_image.ref, "--root", str(tmp_path), "--insecure", "--https")
    assert proc.returncode == 0, proc.stderr
    assert set(tls_image.blobs) <= stored_blobs(tmp_path)


def test_mtls_without_client_certificate_is_a_clear_error(
    mtls_image: Pushed, tmp_path: Path
) -> None:
    reg = mtls_image.registry
    assert reg.ca_path is not None
    before = reg.log_text().count("TLS handshake error")
    proc = run_cli("pull", mtls_image.ref, "--root", str(tmp_path), "--ca-cert", str(reg.ca_path))
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "refused the TLS client certificate" in lines[0]
    assert "--client-cert" in lines[0] and "certs.d/<host:port>/client.cert" in lines[0]
    assert handshake_errors(reg, before) == 1
    assert "client didn't provide a certificate" in reg.log_text()


def test_mtls_with_client_certificate_flags(mtls_image: Pushed, tmp_path: Path) -> None:
    reg = mtls_image.registry
    assert reg.ca_path is not None and reg.client_cert is not None
    cert, key = reg.client_cert
    reg.clear_request_log()
    proc = run_cli(
        "pull", mtls_image.ref, "--root", str(tmp_path), "--ca-cert", str(reg.ca_path),
        "--client-cert", str(cert), "--client-key", str(key),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert set(mtls_image.blobs) <= stored_blobs(tmp_path)
    # The blobs (native fetcher) came over mutual TLS too, from this registry.
    assert set(mtls_image.blobs) <= blob_gets(reg)


def test_mtls_from_certs_d(mtls_image: Pushed, tmp_path: Path) -> None:
    """certs.d/<host:port>/{ca.crt,client.cert,client.key}, as docker reads it."""
    reg = mtls_image.registry
    assert reg.cert_dir is not None
    certs_d = certs_d_for(reg, tmp_path / "certs.d", *sorted(reg.cert_dir.iterdir()))
    reg.clear_request_log()
    with imgpull.Client(tmp_path / "root", certs_dirs=[certs_d]) as client:
        image = client.pull(mtls_image.ref)
    assert image.source == f"https://{reg.host}"
    assert set(mtls_image.blobs) <= stored_blobs(tmp_path / "root")
    assert set(mtls_image.blobs) <= blob_gets(reg)


def test_client_without_ca_refuses_the_registry(tls_image: Pushed, tmp_path: Path) -> None:
    with (
        imgpull.Client(tmp_path, certs_dirs=[]) as client,
        pytest.raises(TLSVerificationError, match="TLS certificate verification failed"),
    ):
        client.pull(tls_image.ref)
