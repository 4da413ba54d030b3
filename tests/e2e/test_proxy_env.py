"""HTTPS_PROXY / HTTP_PROXY / NO_PROXY: both HTTP clients go through the proxy.

The registry is named `registry.imgpull.test:PORT`, a name no resolver knows:
only the forward proxy (support.forwardproxy, a process of its own) maps it
to 127.0.0.1. So a pull that succeeds got its manifests (httpx) and its blobs
(the native fetcher) through the proxy; the proxy's log says how.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import support.cli
from support.cli import stored_blobs
from support.forwardproxy import ForwardProxy
from support.images import ImageInfo, push
from support.registry import RegistryServer, require_tools

NAME = "registry.imgpull.test"
REPO_TAG = "proxied/small:v1"
_PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(scope="module")
def named_tls(
    tmp_path_factory: pytest.TempPathFactory, small_image: ImageInfo
) -> Iterator[RegistryServer]:
    """An HTTPS registry whose certificate also names `NAME`."""
    require_tools()
    workdir = tmp_path_factory.mktemp("named-tls")
    with RegistryServer(tls=True, tls_names=(NAME,), workdir=workdir) as reg:
        push(small_image, reg, REPO_TAG)
        yield reg


@pytest.fixture(scope="module")
def named_plain(
    tmp_path_factory: pytest.TempPathFactory, small_image: ImageInfo
) -> Iterator[RegistryServer]:
    require_tools()
    with RegistryServer(workdir=tmp_path_factory.mktemp("named-plain")) as reg:
        push(small_image, reg, REPO_TAG)
        yield reg


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[ForwardProxy]:
    with ForwardProxy({NAME: "127.0.0.1"}, tmp_path / "proxy") as p:
        yield p


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`imgpull ARGS` with exactly the proxy variables in `env`."""
    base = {k: v for k, v in os.environ.items() if k.upper() not in _PROXY_VARS}  # both spellings
    return support.cli.run_cli(*args, env={**base, "IMGPULL_CERTS_D": os.devnull, **env})


def test_https_through_connect_with_the_registrys_ca(
    named_tls: RegistryServer, proxy: ForwardProxy, small_image: ImageInfo, tmp_path: Path
) -> None:
    ref = f"{NAME}:{named_tls.port}/{REPO_TAG}"
    named_tls.clear_request_log()
    proc = run_cli(
        "pull", ref, "--root", str(tmp_path / "root"), "--ca-cert", str(named_tls.ca_path),
        HTTPS_PROXY=proxy.url,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert small_image.blob_digests <= stored_blobs(tmp_path / "root")
    # Tunnels only (TLS end to end), to the registry's name: one or more for
    # httpx, one or more for the native fetcher's parallel blob downloads.
    assert proxy.requests == []
    assert len(proxy.connects) >= 2
    assert set(proxy.connects) == {f"{NAME}:{named_tls.port}"}
    served = {
        e.path.rsplit("/", 1)[1]
        for e in named_tls.request_log()
        if e.method == "GET" and "/blobs/" in e.path and e.status == 200
    }
    assert small_image.blob_digests <= served


def test_tls_through_the_tunnel_is_still_verified(
    named_tls: RegistryServer, proxy: ForwardProxy, tmp_path: Path
) -> None:
    ref = f"{NAME}:{named_tls.port}/{REPO_TAG}"
    proc = run_cli("pull", ref, "--root", str(tmp_path), HTTPS_PROXY=proxy.url)
    assert proc.returncode == 1
    assert proc.stderr.startswith(
        f"Error: cannot reach registry {NAME}:{named_tls.port}: TLS certificate verification failed"
    )
    assert proxy.connects == [f"{NAME}:{named_tls.port}"]  # once: not retried


def test_plain_http_through_the_proxy(
    named_plain: RegistryServer, proxy: ForwardProxy, small_image: ImageInfo, tmp_path: Path
) -> None:
    """HTTP_PROXY: httpx sends absolute-URI requests, the native fetcher tunnels."""
    host = f"{NAME}:{named_plain.port}"
    proc = run_cli(
        "pull", f"{host}/{REPO_TAG}", "--root", str(tmp_path), "--plain-http",
        HTTP_PROXY=proxy.url,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert small_image.blob_digests <= stored_blobs(tmp_path)
    # Through the proxy: the manifest (no ping: the first request settles
    # the scheme and the challenge).
    assert f"GET http://{host}/v2/proxied/small/manifests/v1" in proxy.requests
    assert proxy.connects and set(proxy.connects) == {host}
