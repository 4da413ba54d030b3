"""Proxy settings without a proxy: which endpoints both HTTP clients send
through HTTPS_PROXY / NO_PROXY (loopback never), unusable settings as one
clear error without the proxy's password, and the request deadline on every
connection pool, proxied ones included. Pulls through a real forward proxy:
e2e/test_proxy_env.py."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

import imgpull
from imgpull.hosts import ConfigError
from imgpull.registry import Endpoint, RegistryClient, endpoint_for
from imgpull.transport import _proxy_for

# A name no resolver knows (only e2e/test_proxy_env.py's forward proxy does).
NAME = "registry.imgpull.test"
_PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


def _proxied(endpoint: Endpoint) -> tuple[bool, bool]:
    """Whether (httpx, the native fetcher) would send to `endpoint` through a proxy."""
    with RegistryClient(endpoint) as client:
        transport = client._http._transport_for_url(httpx.URL(f"{endpoint.base_url}/v2/"))
        via_httpx = transport is not client._http._transport
    return via_httpx, _proxy_for(endpoint) is not None


def test_no_proxy_and_loopback_bypass_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision both clients make (a direct attempt at a name only the
    proxy knows would ask DNS, i.e. leave loopback: so this is checked here)."""
    for var in _PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    named = Endpoint(f"{NAME}:5000")
    assert _proxied(named) == (True, True)
    for loopback in ("127.0.0.1:5000", "127.0.0.2:5000", "[::1]:5000", "localhost:5000"):
        assert _proxied(Endpoint(loopback)) == (False, False), loopback
    for no_proxy in (NAME, ".imgpull.test", f"other.test,{NAME}", "*"):
        monkeypatch.setenv("NO_PROXY", no_proxy)
        assert _proxied(named) == (False, False), no_proxy
    monkeypatch.setenv("NO_PROXY", "other.test")
    assert _proxied(named) == (True, True)


@pytest.mark.parametrize("proxy", ["ftp://127.0.0.1:9", "socks5://127.0.0.1:9"])
def test_unusable_proxy_setting_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, proxy: str
) -> None:
    for var in _PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    monkeypatch.setenv("HTTPS_PROXY", proxy)
    with (
        imgpull.Client(tmp_path, certs_dirs=[]) as client,
        pytest.raises(ConfigError, match=f"cannot use the proxy {proxy} for {NAME}:5000: "),
    ):
        client.pull(f"{NAME}:5000/x:v1")


def test_proxy_password_never_in_the_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in _PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "socks5://bob:hunter2@127.0.0.1:9")
    with imgpull.Client(tmp_path, certs_dirs=[]) as client, pytest.raises(ConfigError) as info:
        client.pull(f"{NAME}:5000/x:v1")
    assert "socks5://127.0.0.1:9" in str(info.value)
    assert "hunter2" not in str(info.value) and "bob" not in str(info.value)


def test_the_deadline_covers_proxied_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests through an environment proxy keep to the deadline too: every
    connection pool of the client, the proxies' included, has it (deadline.py
    reaches into httpx: this fails if a new httpx moves what it wraps)."""
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    with RegistryClient(endpoint_for("registry.example")) as rc:
        http = rc._http
        pools = [http._transport, *(t for t in http._mounts.values() if t is not None)]
        assert len(pools) == 3  # direct, and a proxy per scheme
        for transport in pools:
            backend = transport._pool._network_backend  # type: ignore[attr-defined]
            assert type(backend).__module__ == "imgpull.registry.deadline", backend
