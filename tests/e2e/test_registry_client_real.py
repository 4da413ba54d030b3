"""imgpull.registry's RegistryClient over real sockets: connection failures
and timeouts, the loopback http fallback, and a real CNCF registry
(tests/support/registry.py) over plain HTTP, TLS and htpasswd auth, blobs
fetched by the native fetcher.

What a real server cannot easily be made to do (odd challenges, expiring
tokens, error bodies, ...) is driven through httpx.MockTransport in
unit/test_registry_client.py.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgpull.errors import (
    AuthenticationError,
    ManifestUnknownError,
    NameUnknownError,
    RegistryError,
    RegistryRefusedError,
    RegistryUnreachableError,
    TLSVerificationError,
)
from imgpull.registry import (
    DEFAULT_ACCEPT,
    Credentials,
    Endpoint,
    ManifestHead,
    RegistryClient,
    endpoint_for,
)
from imgpull.retry import RetryPolicy
from imgpull.version import USER_AGENT

OCI = "application/vnd.oci.image.manifest.v1+json"
BLOB = "sha256:" + "b" * 64


def _one_line(msg: str) -> None:
    assert "\n" not in msg and msg.strip() == msg and msg


# ---------------------------------------------------------------------------
# Network failures and the loopback http fallback (real sockets, no registry)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_refused_message() -> None:
    port = _closed_port()
    with (
        RegistryClient(endpoint_for(f"127.0.0.1:{port}", plain_http=True)) as c,
        pytest.raises(RegistryUnreachableError) as ei,
    ):
        c.get_manifest("test/x", "v1")
    assert (
        str(ei.value)
        == f"cannot reach registry 127.0.0.1:{port}: connection refused — is it running?"
    )


def test_timeout_message() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)  # accepts the connection, never answers
    port = srv.getsockname()[1]
    try:
        ep = endpoint_for(f"127.0.0.1:{port}", plain_http=True)
        expected = r"^cannot reach registry 127\.0\.0\.1:\d+: timed out"
        with (
            RegistryClient(ep, timeout=0.5) as c,
            pytest.raises(RegistryUnreachableError, match=expected),
        ):
            c.ping()
    finally:
        srv.close()


class _V2Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def plain_http_server() -> Iterator[int]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _V2Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def test_auto_falls_back_to_http_on_loopback(plain_http_server: int) -> None:
    ep = endpoint_for(f"127.0.0.1:{plain_http_server}", plain_http=None)
    with RegistryClient(ep) as c:
        assert c.ping() is None
        assert c.base_url == f"http://127.0.0.1:{plain_http_server}"
        url, _ = c.blob_request("a/b", BLOB)
        assert url.startswith("http://")


def test_https_only_gives_tls_hint_for_plain_http_server(plain_http_server: int) -> None:
    with (
        RegistryClient(endpoint_for(f"127.0.0.1:{plain_http_server}")) as c,
        pytest.raises(RegistryUnreachableError) as ei,
    ):
        c.ping()
    msg = str(ei.value)
    _one_line(msg)
    assert "TLS" in msg and "plain_http" in msg


def test_auto_fallback_does_not_retry_a_refused_port() -> None:
    """A refused port refuses either scheme: one attempt, one line, no retry."""
    port = _closed_port()
    with (
        RegistryClient(endpoint_for(f"127.0.0.1:{port}", plain_http=None)) as c,
        pytest.raises(RegistryRefusedError) as ei,
    ):
        c.ping()
    assert str(ei.value) == (
        f"cannot reach registry 127.0.0.1:{port}: connection refused — is it running?"
    )
    assert not RetryPolicy().retryable(ei.value)


# ---------------------------------------------------------------------------
# Real registries (tests/support/registry.py: Debian's docker-registry)

MT_DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def _real(reg: Any, *, ca: bool = True, **kw: Any) -> RegistryClient:
    ep = endpoint_for(
        reg.host,
        plain_http=not reg.tls,
        ca_file=str(reg.ca_path) if ca and reg.ca_path else None,
    )
    return RegistryClient(ep, **kw)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_real_ping_and_user_agent(registry: Any) -> None:
    registry.clear_request_log()
    with _real(registry) as c:
        assert c.ping() is None
    log = registry.request_log()
    assert log and log[-1].path == "/v2/" and log[-1].user_agent == USER_AGENT


@pytest.mark.parametrize(("fmt", "media_type"), [("v2s2", MT_DOCKER_V2), ("oci", OCI)])
def test_real_get_manifest_by_tag_and_digest(pushed_image: Any, fmt: str, media_type: str) -> None:
    with _real(pushed_image.registry) as c:
        by_tag = c.get_manifest(pushed_image.repo, pushed_image.tags[fmt], DEFAULT_ACCEPT)
        assert by_tag.media_type == media_type
        assert by_tag.digest == _sha256(by_tag.body) == pushed_image.digests[fmt]
        layers = [layer["digest"] for layer in json.loads(by_tag.body)["layers"]]
        assert layers == pushed_image.layer_digests
        by_digest = c.get_manifest(pushed_image.repo, by_tag.digest)
        assert by_digest.body == by_tag.body and by_digest.digest == by_tag.digest
        head = c.head_manifest(pushed_image.repo, pushed_image.tags[fmt], DEFAULT_ACCEPT)
        assert head == ManifestHead(by_tag.digest, media_type, len(by_tag.body))


def test_real_unknown_tag(pushed_image: Any) -> None:
    with (
        _real(pushed_image.registry) as c,
        pytest.raises(ManifestUnknownError) as ei,
    ):
        c.get_manifest(pushed_image.repo, "nope")
        assert c.head_manifest(pushed_image.repo, "nope") is None
    assert str(ei.value) == (
        f"manifest for {pushed_image.registry.ref(pushed_image.repo)}:nope not found: "
        "manifest unknown"
    )
    assert ei.value.status == 404 and ei.value.code == "MANIFEST_UNKNOWN"


def test_real_unknown_repository(registry: Any) -> None:
    with (
        _real(registry) as c,
        pytest.raises((NameUnknownError, ManifestUnknownError)) as ei,
    ):
        c.get_manifest("test/does-not-exist", "v1")
        _one_line(str(ei.value))
        assert "test/does-not-exist" in str(ei.value) and ei.value.status == 404
        with pytest.raises(NameUnknownError, match=r"^repository test/does-not-exist not found"):
            c.list_tags("test/does-not-exist")


def test_real_list_tags(pushed_image: Any) -> None:
    with _real(pushed_image.registry) as c:
        assert sorted(c.list_tags(pushed_image.repo)) == sorted(pushed_image.tags.values())


def test_real_basic_auth(auth_registry: Any) -> None:
    with _real(
        auth_registry, credentials=Credentials(auth_registry.username, auth_registry.password)
    ) as c:
        ch = c.ping()
        assert ch is not None and ch.scheme == "basic"
        with pytest.raises(NameUnknownError):  # authenticated: the registry says what it has
            c.list_tags("test/none")
    wrong = Credentials(auth_registry.username, "wrong-password")
    with _real(auth_registry, credentials=wrong) as c, pytest.raises(AuthenticationError) as ei:
        c.get_manifest("test/none", "v1")
    msg = str(ei.value)
    _one_line(msg)
    assert "check your credentials" in msg and f"imgpull login {auth_registry.host}" in msg
    assert "wrong-password" not in msg and auth_registry.password not in msg
    with _real(auth_registry) as c, pytest.raises(AuthenticationError, match="imgpull login"):
        c.get_manifest("test/none", "v1")


def test_real_basic_auth_pull_manifest(auth_registry: Any, small_image: Any) -> None:
    from support.images import push

    digest = push(small_image, auth_registry, "test/private:v1")
    creds = Credentials(auth_registry.username, auth_registry.password)
    with _real(auth_registry, credentials=creds) as c:
        m = c.get_manifest("test/private", "v1")
        assert m.digest == digest == _sha256(m.body)


def test_real_tls(tls_registry: Any) -> None:
    with _real(tls_registry) as c:
        assert c.ping() is None
        assert c.base_url == f"https://{tls_registry.host}"
    with _real(tls_registry, ca=False) as c, pytest.raises(TLSVerificationError) as ei:
        c.ping()
    msg = str(ei.value)
    _one_line(msg)
    assert msg.startswith(
        f"cannot reach registry {tls_registry.host}: TLS certificate verification failed"
    )
    assert "CA" in msg
    insecure = Endpoint(tls_registry.host, insecure=True)
    with RegistryClient(insecure) as c:
        assert c.ping() is None


def test_real_tls_auto_mode_never_downgrades_after_a_certificate_failure(tls_registry: Any) -> None:
    ep = endpoint_for(tls_registry.host, plain_http=None)
    assert ep.http_fallback
    with RegistryClient(ep) as c, pytest.raises(TLSVerificationError, match="TLS certificate"):
        c.ping()


def test_real_auto_mode_falls_back_to_http(registry: Any) -> None:
    with RegistryClient(endpoint_for(registry.host, plain_http=None)) as c:
        assert c.ping() is None and c.base_url == registry.url
        with pytest.raises(NameUnknownError):  # requests go to the http base too
            c.list_tags("test/does-not-exist-either")
    # https-only against a plain-HTTP registry: a clear hint.
    with (
        RegistryClient(endpoint_for(registry.host)) as c,
        pytest.raises(RegistryUnreachableError) as ei,
    ):
        c.ping()
    assert "plain_http" in str(ei.value)


def _native_fetcher() -> Any:
    from imgpull import _core

    return _core


@pytest.mark.parametrize("resume_at", [0, 100_000])
def test_real_fetch_blob_end_to_end(pushed_image: Any, tmp_path: Path, resume_at: int) -> None:
    core = _native_fetcher()
    layer = pushed_image.image.layers[0]
    data = pushed_image.image.blob(layer.digest)
    partial = tmp_path / "partial"
    partial.write_bytes(data[:resume_at])
    writer = core.BlobWriter(str(partial), layer.digest, layer.size)
    assert writer.offset == resume_at
    fetcher = core.Fetcher(user_agent=USER_AGENT)
    transfer = core.Transfer()
    with _real(pushed_image.registry) as c:
        result = c.fetch_blob(pushed_image.repo, layer.digest, writer, fetcher, transfer)
    assert result.status == (206 if resume_at else 200)
    assert result.written == len(data) - resume_at
    dest = tmp_path / "blob"
    writer.commit(str(dest))
    assert dest.read_bytes() == data


def test_real_fetch_blob_unknown(pushed_image: Any, tmp_path: Path) -> None:
    core = _native_fetcher()
    missing = "sha256:" + "0" * 64
    writer = core.BlobWriter(str(tmp_path / "p"), missing, None)
    with _real(pushed_image.registry) as c, pytest.raises(RegistryError) as ei:
        c.fetch_blob(pushed_image.repo, missing, writer, core.Fetcher(user_agent=USER_AGENT))
    assert ei.value.status == 404 and ei.value.code == "BLOB_UNKNOWN"
    assert missing in str(ei.value)


def test_real_fetch_blob_with_basic_auth(
    auth_registry: Any, small_image: Any, tmp_path: Path
) -> None:
    core = _native_fetcher()
    from support.images import push

    push(small_image, auth_registry, "test/private:v1")
    layer = small_image.layers[-1]
    writer = core.BlobWriter(str(tmp_path / "p"), layer.digest, layer.size)
    creds = Credentials(auth_registry.username, auth_registry.password)
    with _real(auth_registry, credentials=creds) as c:
        c.fetch_blob("test/private", layer.digest, writer, core.Fetcher(user_agent=USER_AGENT))
    writer.commit(str(tmp_path / "blob"))
    assert (tmp_path / "blob").read_bytes() == small_image.blob(layer.digest)
