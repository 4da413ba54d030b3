"""imgpull.registry without a server: challenge parsing, endpoints and
credentials, the token flow, error mapping and Retry-After, manifest size
limits, paginated tags, blob requests.

The client is driven through httpx.MockTransport (MockRegistry: a
scriptable registry and token server, no socket) for what a real server
cannot easily be made to do (odd challenges, expiring tokens, refresh
tokens, error bodies, oversized manifests, paginated tags), and fetch_blob
through a scripted fetcher. Real sockets and real registries:
e2e/test_registry_client_real.py.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from imgpull.errors import (
    AuthenticationError,
    ManifestError,
    ManifestUnknownError,
    NameUnknownError,
    RegistryError,
)
from imgpull.registry import (
    DEFAULT_ACCEPT,
    Credentials,
    Endpoint,
    ManifestHead,
    RegistryClient,
    endpoint_for,
    is_loopback,
    parse_challenges,
    parse_error_body,
    parse_retry_after,
)
from imgpull.registry import auth as auth_mod
from imgpull.registry.auth import choose_challenge
from imgpull.registry.errors import error_from_response
from imgpull.version import USER_AGENT

REG = "reg.example"
REALM = "https://auth.example/token"
SECRET = "s3cr3t-Pa55"
IDENTITY = "identity-tok-XYZ"

MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "sha256:" + "a" * 64,
            "size": 2,
        },
        "layers": [],
    }
).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
OCI = "application/vnd.oci.image.manifest.v1+json"


def _err_body(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()


def _one_line(msg: str) -> None:
    assert "\n" not in msg and msg.strip() == msg and msg


# ---------------------------------------------------------------------------
# A scriptable registry + token server behind httpx.MockTransport (no socket)


class MockRegistry:
    """Registry at https://reg.example, token server at https://auth.example.

    `auth` is "bearer", "basic" or "none". Tokens are numbered; `reject` holds
    tokens the registry refuses (as if revoked). Every request is recorded.
    """

    def __init__(self, *, auth: str = "bearer", expires_in: int | None = 300) -> None:
        self.auth = auth
        self.expires_in = expires_in
        self.token_extra: dict[str, Any] = {}
        self.token_key = "token"
        self.requests: list[httpx.Request] = []
        self.token_requests: list[httpx.Request] = []
        self.issued: list[str] = []
        self.reject: set[str] = set()
        self.users = {"alice": SECRET}
        self.refresh_tokens = {IDENTITY}
        self.post_supported = True
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {
            ("test/x", "v1"): (MANIFEST, OCI),
            ("test/x", MANIFEST_DIGEST): (MANIFEST, OCI),
        }
        self.routes: dict[str, Callable[[httpx.Request], httpx.Response]] = {}
        self.lock = threading.Lock()

    def client(self, **kw: Any) -> RegistryClient:
        http = httpx.Client(transport=httpx.MockTransport(self), follow_redirects=True)
        return RegistryClient(Endpoint(REG), http=http, **kw)

    # -- handlers --
    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
        if request.url.host == "auth.example":
            return self._token(request)
        path = request.url.path
        if path in self.routes:
            return self.routes[path](request)
        if path == "/v2/":
            if self.auth == "none":
                return httpx.Response(200, json={})
            return self._challenge()
        if not self._authorized(request):
            return self._challenge(scope=True)
        parts = path.split("/")
        if len(parts) >= 5 and parts[-2] == "manifests":
            repo, ref = "/".join(parts[2:-2]), parts[-1]
            found = self.manifests.get((repo, ref))
            if found is None and all(r != repo for r, _ in self.manifests):
                return httpx.Response(
                    404, content=_err_body("NAME_UNKNOWN", "repository name not known to registry")
                )
            if found is None:
                return httpx.Response(
                    404, content=_err_body("MANIFEST_UNKNOWN", "manifest unknown")
                )
            body, mt = found
            headers = {
                "Content-Type": mt,
                "Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest(),
            }
            return httpx.Response(
                200, headers=headers, content=b"" if request.method == "HEAD" else body
            )
        return httpx.Response(
            404, content=_err_body("NAME_UNKNOWN", "repository name not known to registry")
        )

    def _challenge(self, scope: bool = False) -> httpx.Response:
        if self.auth == "basic":
            value = 'Basic realm="fake"'
        else:
            value = f'Bearer realm="{REALM}",service="{REG}"'
            if scope:
                value += ',scope="repository:test/x:pull",error="invalid_token"'
        return httpx.Response(
            401,
            headers={"WWW-Authenticate": value},
            content=_err_body("UNAUTHORIZED", "authentication required"),
        )

    def _authorized(self, request: httpx.Request) -> bool:
        if self.auth == "none":
            return True
        got = request.headers.get("authorization", "")
        if self.auth == "basic":
            return got == "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
        token = got.removeprefix("Bearer ")
        return got.startswith("Bearer ") and token in self.issued and token not in self.reject

    def _token(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.token_requests.append(request)
        if request.method == "POST":
            if not self.post_supported:
                return httpx.Response(404)
            form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
            if (
                form.get("grant_type") == "refresh_token"
                and form.get("refresh_token") not in self.refresh_tokens
            ):
                return httpx.Response(401, json={"error": "invalid_grant"})
            if form.get("grant_type") == "password" and self.users.get(
                form.get("username", "")
            ) != form.get("password"):
                return httpx.Response(401, json={"details": "incorrect username or password"})
        else:
            got = request.headers.get("authorization")
            if got is not None:
                user, _, pw = base64.b64decode(got.removeprefix("Basic ")).decode().partition(":")
                if self.users.get(user) != pw:
                    return httpx.Response(401, json={"details": "incorrect username or password"})
        with self.lock:
            tok = f"tok{len(self.issued) + 1}"
            self.issued.append(tok)
        data: dict[str, Any] = {self.token_key: tok, **self.token_extra}
        if self.expires_in is not None:
            data["expires_in"] = self.expires_in
        return httpx.Response(200, json=data)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(auth_mod, "_now", c)
    return c


# ---------------------------------------------------------------------------
# Challenge parsing

CHALLENGES = [
    (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io"',
        [("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io"})],
    ),
    (
        'Bearer realm="https://a/token",service="reg",scope="repository:foo/bar:pull,push"',
        [
            (
                "bearer",
                {
                    "realm": "https://a/token",
                    "service": "reg",
                    "scope": "repository:foo/bar:pull,push",
                },
            )
        ],
    ),
    ('Basic realm="Registry Realm"', [("basic", {"realm": "Registry Realm"})]),
    (
        r'Bearer realm="https://x/t?a=\"b\"",service="s\\v"',
        [("bearer", {"realm": 'https://x/t?a="b"', "service": "s\\v"})],
    ),
    (
        "Bearer realm=https://x/token,service=reg",
        [("bearer", {"realm": "https://x/token", "service": "reg"})],
    ),
    (
        'bearer  Realm = "https://x" ,  Service="s"',
        [("bearer", {"realm": "https://x", "service": "s"})],
    ),
    (
        'Basic realm="r", Bearer realm="https://x",service="s"',
        [("basic", {"realm": "r"}), ("bearer", {"realm": "https://x", "service": "s"})],
    ),
    ('Negotiate abc==, Basic realm="x"', [("negotiate", {}), ("basic", {"realm": "x"})]),
    (
        'Bearer realm="https://x",error="insufficient_scope",scope="repository:a:pull"',
        [
            (
                "bearer",
                {"realm": "https://x", "error": "insufficient_scope", "scope": "repository:a:pull"},
            )
        ],
    ),
    ('Bearer realm="https://x', [("bearer", {"realm": "https://x"})]),
    ("", []),
    (",, ,", []),
    ("Bearer", [("bearer", {})]),
]


@pytest.mark.parametrize(("header", "expected"), CHALLENGES)
def test_parse_challenges(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    got = [(c.scheme, dict(c.params)) for c in parse_challenges([header])]
    assert got == expected


def test_choose_challenge_prefers_bearer_and_reads_several_headers() -> None:
    chs = parse_challenges(['Basic realm="r"', 'Bearer realm="https://x",service="s"'])
    chosen = choose_challenge(chs)
    assert chosen is not None and chosen.scheme == "bearer" and chosen.service == "s"
    assert choose_challenge(parse_challenges(["Bearer service=s"])) is None  # no realm: unusable
    basic = choose_challenge(parse_challenges(['Basic realm="r"']))
    assert basic is not None and basic.scheme == "basic"


# ---------------------------------------------------------------------------
# Endpoints and credentials


def test_endpoint_for() -> None:
    hub = endpoint_for("docker.io")
    assert (hub.host, hub.scheme, hub.name) == ("registry-1.docker.io", "https", "docker.io")
    assert endpoint_for("index.docker.io").host == "registry-1.docker.io"
    assert endpoint_for("quay.io").base_url == "https://quay.io"
    assert endpoint_for("127.0.0.1:5000", plain_http=True).base_url == "http://127.0.0.1:5000"
    auto = endpoint_for("localhost:5000", plain_http=None)
    assert auto.scheme == "https" and auto.http_fallback
    assert not endpoint_for("localhost:5000").http_fallback  # default: https only
    assert not endpoint_for("example.com:5000", plain_http=None).http_fallback
    tls = endpoint_for(
        "r:1", ca_file="/ca.pem", client_cert="/c.pem", client_key="/k.pem", insecure=True
    )
    assert (tls.ca_file, tls.client_cert, tls.client_key, tls.insecure) == (
        "/ca.pem",
        "/c.pem",
        "/k.pem",
        True,
    )
    with pytest.raises(ValueError):
        Endpoint("r", scheme="ftp")


@pytest.mark.parametrize(
    ("host", "loop"),
    [("localhost", True), ("localhost:5000", True), ("127.0.0.1:5000", True), ("127.1.2.3", True),
     ("[::1]:5000", True), ("::1", True), ("10.0.0.1:5000", False), ("example.com", False),
     ("localhost.example.com", False)],
)  # fmt: skip
def test_is_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop


def test_credentials_repr_hides_secrets() -> None:
    c = Credentials("alice", SECRET, identity_token=IDENTITY)
    assert SECRET not in repr(c) and IDENTITY not in repr(c) and "alice" in repr(c)


def test_credential_store_is_asked_for_the_registry_name() -> None:
    asked: list[str] = []

    def store(host: str) -> Credentials | None:
        asked.append(host)
        return Credentials("alice", SECRET)

    fake = MockRegistry()
    with fake.client(credential_store=store) as c:
        c.get_manifest("test/x", "v1")
    assert asked == [REG]
    assert fake.token_requests[0].headers["authorization"].startswith("Basic ")


# ---------------------------------------------------------------------------
# Bearer token flow


def test_anonymous_bearer_flow_and_headers() -> None:
    fake = MockRegistry()
    with fake.client(headers=[("X-Meta-Who", "me")]) as c:
        ch = c.ping()
        assert ch is not None and ch.scheme == "bearer" and ch.realm == REALM
        m = c.get_manifest("test/x", "v1", DEFAULT_ACCEPT)
    assert m.body == MANIFEST and m.media_type == OCI and m.digest == MANIFEST_DIGEST
    assert m.url == f"https://{REG}/v2/test/x/manifests/v1"
    (tok_req,) = fake.token_requests
    assert tok_req.method == "GET" and "authorization" not in tok_req.headers
    assert dict(tok_req.url.params) == {"service": REG, "scope": "repository:test/x:pull"}
    get = fake.requests[-1]
    assert get.headers["authorization"] == "Bearer tok1"
    assert get.headers["accept"] == ", ".join(DEFAULT_ACCEPT)
    assert get.headers["user-agent"] == USER_AGENT and USER_AGENT.startswith("imgpull/")
    assert get.headers["x-meta-who"] == "me"


def test_default_accept_is_dockers_order() -> None:
    assert DEFAULT_ACCEPT == (
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
    )


def test_token_cached_per_scope(clock: Clock) -> None:
    fake = MockRegistry()
    fake.manifests[("test/y", "v1")] = (MANIFEST, OCI)
    with fake.client() as c:
        c.get_manifest("test/x", "v1")
        c.get_manifest("test/x", MANIFEST_DIGEST)
        c.blob_request("test/x", "sha256:" + "b" * 64)
        assert len(fake.token_requests) == 1
        c.get_manifest("test/y", "v1")
        assert len(fake.token_requests) == 2
        assert fake.token_requests[1].url.params["scope"] == "repository:test/y:pull"
    # No ping: the first request's 401 brought the challenge, and every
    # later request carried its token up front (one 401 in all).
    assert sum(r.url.path == "/v2/" for r in fake.requests) == 0
    assert sum("/manifests/" in r.url.path for r in fake.requests) == 4


@pytest.mark.parametrize(
    ("expires_in", "extra", "still_valid_at", "expired_at"),
    [
        (300, {}, 290, 296),  # refreshed a few seconds before the end
        (None, {}, 50, 56),  # no expires_in: docker's 60 s
        (10, {}, 50, 56),  # under the 60 s minimum: raised to 60
        (300, {"issued_at": "AGED"}, 190, 196),  # issued 100 s ago by the server
        (300, {"issued_at": "2001-01-01T00:00:00Z"}, 290, 296),  # absurd issued_at: ignored
    ],
)
def test_token_expiry(
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    expires_in: int | None,
    extra: dict[str, str],
    still_valid_at: float,
    expired_at: float,
) -> None:
    wall = 2_000_000_000.0
    monkeypatch.setattr(auth_mod, "_wall", lambda: wall)
    if extra.get("issued_at") == "AGED":
        extra = {"issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall - 100))}
    fake = MockRegistry(expires_in=expires_in)
    fake.token_extra = extra
    with fake.client() as c:
        start = clock.t
        c.blob_request("test/x", "sha256:" + "b" * 64)
        clock.t = start + still_valid_at
        c.blob_request("test/x", "sha256:" + "b" * 64)
        assert len(fake.token_requests) == 1
        clock.t = start + expired_at
        _, headers = c.blob_request("test/x", "sha256:" + "b" * 64)
        assert len(fake.token_requests) == 2
        assert ("Authorization", "Bearer tok2") in headers


def test_access_token_field_accepted() -> None:
    fake = MockRegistry()
    fake.token_key = "access_token"
    with fake.client() as c:
        assert c.get_manifest("test/x", "v1").body == MANIFEST


def test_basic_credentials_sent_to_token_server() -> None:
    fake = MockRegistry()
    with fake.client(credentials=Credentials("alice", SECRET)) as c:
        c.get_manifest("test/x", "v1")
    (req,) = fake.token_requests
    assert req.method == "GET"
    assert (
        req.headers["authorization"]
        == "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
    )
    assert req.url.params["account"] == "alice"


def test_identity_token_uses_oauth_refresh_grant() -> None:
    fake = MockRegistry()
    fake.token_extra = {"refresh_token": "rotated-refresh"}
    fake.refresh_tokens.add("rotated-refresh")
    fake.manifests[("test/y", "v1")] = (MANIFEST, OCI)
    with fake.client(credentials=Credentials("alice", identity_token=IDENTITY)) as c:
        c.get_manifest("test/x", "v1")
        c.get_manifest("test/y", "v1")
    first, second = fake.token_requests
    assert first.method == "POST" and "authorization" not in first.headers
    form = {k: v[0] for k, v in parse_qs(first.content.decode()).items()}
    assert form == {
        "grant_type": "refresh_token",
        "refresh_token": IDENTITY,
        "client_id": "imgpull",
        "service": REG,
        "scope": "repository:test/x:pull",
    }
    # A refresh token handed back replaces the one held.
    assert parse_qs(second.content.decode())["refresh_token"] == ["rotated-refresh"]


def test_identity_token_falls_back_to_get_when_post_unsupported() -> None:
    fake = MockRegistry()
    fake.post_supported = False
    with fake.client(credentials=Credentials(identity_token=IDENTITY)) as c:
        assert c.get_manifest("test/x", "v1").body == MANIFEST
    assert [r.method for r in fake.token_requests] == ["POST", "GET"]


def test_force_oauth_password_grant() -> None:
    fake = MockRegistry()
    with fake.client(credentials=Credentials("alice", SECRET), force_oauth=True) as c:
        c.get_manifest("test/x", "v1")
    (req,) = fake.token_requests
    form = {k: v[0] for k, v in parse_qs(req.content.decode()).items()}
    assert req.method == "POST" and form["grant_type"] == "password"
    assert form["username"] == "alice" and form["password"] == SECRET


def test_wrong_credentials_at_token_server() -> None:
    fake = MockRegistry()
    with (
        fake.client(credentials=Credentials("alice", "wrong")) as c,
        pytest.raises(AuthenticationError) as ei,
    ):
        c.get_manifest("test/x", "v1")
    msg = str(ei.value)
    _one_line(msg)
    assert "incorrect username or password" in msg and "imgpull login" in msg
    assert "wrong" not in msg and SECRET not in msg
    assert ei.value.status == 401


def test_reauth_once_on_401(clock: Clock) -> None:
    fake = MockRegistry()
    with fake.client() as c:
        c.get_manifest("test/x", "v1")
        fake.reject.add("tok1")  # revoked while still cached
        assert c.get_manifest("test/x", "v1").body == MANIFEST
    assert len(fake.token_requests) == 2
    gets = [r for r in fake.requests if r.url.path.endswith("/manifests/v1")]
    # The first request learnt the challenge (no ping before it).
    assert [g.headers.get("authorization") for g in gets] == [
        None,
        "Bearer tok1",
        "Bearer tok1",
        "Bearer tok2",
    ]


def test_persistent_401_gives_authentication_error_after_one_retry() -> None:
    fake = MockRegistry()
    fake.reject = _RejectAll()
    with fake.client() as c, pytest.raises(AuthenticationError) as ei:
        c.get_manifest("test/x", "v1")
    gets = [r for r in fake.requests if r.url.path.endswith("/manifests/v1")]
    assert len(gets) == 2
    msg = str(ei.value)
    _one_line(msg)
    assert "test/x" in msg and "imgpull login reg.example" in msg
    assert "tok" not in msg  # no token in the message
    assert ei.value.status == 401 and ei.value.code == "UNAUTHORIZED"


class _RejectAll(set[str]):
    def __contains__(self, item: object) -> bool:
        return True


def test_basic_challenge_sends_credentials_every_time() -> None:
    fake = MockRegistry(auth="basic")
    with fake.client(credentials=Credentials("alice", SECRET)) as c:
        c.get_manifest("test/x", "v1")
        c.get_manifest("test/x", MANIFEST_DIGEST)
        _, headers = c.blob_request("test/x", "sha256:" + "b" * 64)
    assert not fake.token_requests
    gets = [r for r in fake.requests if "/manifests/" in r.url.path]
    # The first learnt the challenge (credentials go only where one asks).
    assert "authorization" not in gets[0].headers
    assert len(gets) == 3 and all(g.headers["authorization"].startswith("Basic ") for g in gets[1:])
    assert any(k == "Authorization" and v.startswith("Basic ") for k, v in headers)


def test_basic_challenge_without_credentials() -> None:
    fake = MockRegistry(auth="basic")
    with fake.client() as c, pytest.raises(AuthenticationError) as ei:
        c.get_manifest("test/x", "v1")
    assert "imgpull login" in str(ei.value)
    assert len([r for r in fake.requests if "/manifests/" in r.url.path]) == 1


def test_token_fetch_is_shared_between_threads() -> None:
    fake = MockRegistry()
    gate = threading.Event()
    inner = fake._token

    def slow_token(request: httpx.Request) -> httpx.Response:
        gate.wait(2)
        return inner(request)

    fake._token = slow_token  # type: ignore[method-assign]
    with fake.client() as c:
        c.ping()
        results: list[list[tuple[str, str]]] = []
        errors: list[BaseException] = []

        def work() -> None:
            try:
                results.append(c.blob_request("test/x", "sha256:" + "b" * 64)[1])
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.1)
        gate.set()
        for t in threads:
            t.join(5)
    assert not errors and len(results) == 8
    assert len(fake.token_requests) == 1
    assert all(("Authorization", "Bearer tok1") in h for h in results)


def test_client_repr_has_no_secrets() -> None:
    fake = MockRegistry()
    with fake.client(credentials=Credentials("alice", SECRET)) as c:
        c.get_manifest("test/x", "v1")
        assert SECRET not in repr(c) and "tok1" not in repr(c)


# ---------------------------------------------------------------------------
# Error bodies and Retry-After

ERRORS = [
    (
        404,
        _err_body("MANIFEST_UNKNOWN", "manifest unknown"),
        "manifest",
        "x:nope",
        ManifestUnknownError,
        "MANIFEST_UNKNOWN",
        f"manifest for {REG}/test/x:nope not found: manifest unknown",
    ),
    (
        404,
        b"",
        "manifest",
        "sha256:" + "c" * 64,
        ManifestUnknownError,
        "MANIFEST_UNKNOWN",
        f"manifest for {REG}/test/x@sha256:" + "c" * 64 + " not found",
    ),
    (
        404,
        _err_body("NAME_UNKNOWN", "repository name not known to registry"),
        "manifest",
        "v1",
        NameUnknownError,
        "NAME_UNKNOWN",
        "repository test/x not found: does it exist and may you pull from it?",
    ),
    (404, b"", "tags", None, NameUnknownError, "NAME_UNKNOWN", "repository test/x not found"),
    (
        404,
        _err_body("BLOB_UNKNOWN", "blob unknown to registry"),
        "blob",
        "sha256:" + "d" * 64,
        RegistryError,
        "BLOB_UNKNOWN",
        "blob sha256:" + "d" * 64 + " not found in test/x",
    ),
    (
        401,
        _err_body("UNAUTHORIZED", "authentication required"),
        "manifest",
        "v1",
        AuthenticationError,
        "UNAUTHORIZED",
        "pull access denied for test/x",
    ),
    (
        403,
        _err_body("DENIED", "requested access to the resource is denied"),
        "blob",
        "sha256:" + "d" * 64,
        AuthenticationError,
        "DENIED",
        "access to test/x denied by reg.example: requested access",
    ),
    (
        429,
        _err_body("TOOMANYREQUESTS", "You have reached your pull rate limit."),
        "manifest",
        "v1",
        RegistryError,
        "TOOMANYREQUESTS",
        "too many requests to reg.example: You have reached",
    ),
    (
        503,
        b"<html><body>Service Unavailable\n</body></html>",
        "blob",
        "sha256:" + "d" * 64,
        RegistryError,
        None,
        "registry reg.example answered 503 Service Unavailable for blob",
    ),
    (
        500,
        b"upstream exploded",
        "manifest",
        "v1",
        RegistryError,
        None,
        "500 Internal Server Error for manifest for test/x:v1: upstream exploded",
    ),
    (
        400,
        _err_body("MANIFEST_INVALID", "manifest invalid"),
        "manifest",
        "v1",
        RegistryError,
        "MANIFEST_INVALID",
        "answered 400 Bad Request for manifest for test/x:v1: manifest invalid",
    ),
    (400, b'{"errors": "nope"}', "manifest", "v1", RegistryError, None, "answered 400"),
]


@pytest.mark.parametrize(("status", "body", "kind", "ref", "cls", "code", "text"), ERRORS)
def test_error_mapping(
    status: int,
    body: bytes,
    kind: Any,
    ref: str | None,
    cls: type[RegistryError],
    code: str | None,
    text: str,
) -> None:
    if ref == "x:nope":
        ref = "nope"
    err = error_from_response(
        status, [], body, registry=REG, kind=kind, repo="test/x", reference=ref
    )
    assert type(err) is cls
    assert err.status == status and err.code == code
    assert text in str(err), str(err)
    _one_line(str(err))
    assert "<html" not in str(err)


def test_error_mapping_authenticated_says_check_credentials() -> None:
    err = error_from_response(401, [], b"", registry="docker.io", kind="blob", repo="a/b",
                              reference="sha256:" + "e" * 64, authenticated=True)  # fmt: skip
    assert isinstance(err, AuthenticationError)
    assert "check your credentials (imgpull login docker.io)" in str(err)


def test_parse_error_body() -> None:
    (d,) = parse_error_body(_err_body("blob_unknown", "gone"))
    assert (d.code, d.message) == ("BLOB_UNKNOWN", "gone")
    assert parse_error_body(b"not json") == []
    assert parse_error_body(b"[1]") == []
    assert parse_error_body(b'{"errors": [1, {"message": "m"}]}')[0].code == ""


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("1.5", 1.5),
        ("-5", 0.0),
        (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),
        ("Wed, 21 Oct 2015 07:28:00", None),  # no zone: not an HTTP-date
        ("soon", None),
        ("", None),
        ("nan", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    got = parse_retry_after(value, now=NOW)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_rate_limit_error_carries_retry_after() -> None:
    fake = MockRegistry(auth="none")
    fake.routes["/v2/test/x/manifests/v1"] = lambda r: httpx.Response(
        429, headers={"Retry-After": "7"}, content=_err_body("TOOMANYREQUESTS", "slow down")
    )
    with fake.client() as c, pytest.raises(RegistryError) as ei:
        c.get_manifest("test/x", "v1")
    assert (ei.value.status, ei.value.code, ei.value.retry_after) == (429, "TOOMANYREQUESTS", 7.0)
    assert "retry after 7s" in str(ei.value)


# ---------------------------------------------------------------------------
# Manifests: size limit, HEAD


def _stream_body(size: int, chunk: int = 65536) -> Iterator[bytes]:
    while size > 0:
        n = min(chunk, size)
        yield b" " * n
        size -= n


def test_oversized_manifest_refused_by_content_length() -> None:
    fake = MockRegistry(auth="none")
    served: list[int] = []

    def big(request: httpx.Request) -> httpx.Response:
        served.append(1)
        return httpx.Response(200, headers={"Content-Type": OCI, "Content-Length": str(5 << 20)},
                              content=_stream_body(5 << 20))  # fmt: skip

    fake.routes["/v2/test/x/manifests/big"] = big
    with fake.client() as c, pytest.raises(ManifestError) as ei:
        c.get_manifest("test/x", "big")
    assert "test/x:big" in str(ei.value) and str(4 << 20) in str(ei.value)
    _one_line(str(ei.value))


def test_oversized_manifest_refused_while_streaming() -> None:
    fake = MockRegistry(auth="none")
    fake.routes["/v2/test/x/manifests/big"] = lambda r: httpx.Response(
        200, headers={"Content-Type": OCI}, content=_stream_body((4 << 20) + 1)
    )
    fake.routes["/v2/test/x/manifests/edge"] = lambda r: httpx.Response(
        200, headers={"Content-Type": OCI + "; charset=utf-8"}, content=_stream_body(4 << 20)
    )
    with fake.client() as c:
        with pytest.raises(ManifestError, match="larger than"):
            c.get_manifest("test/x", "big")
        edge = c.get_manifest("test/x", "edge")
        assert len(edge.body) == 4 << 20 and edge.media_type == OCI and edge.digest is None
        with pytest.raises(ManifestError):
            c.get_manifest("test/x", "edge", max_bytes=1000)


def test_head_manifest() -> None:
    fake = MockRegistry()
    fake.routes["/v2/test/x/manifests/nohead"] = lambda r: httpx.Response(405)
    with fake.client() as c:
        head = c.head_manifest("test/x", "v1", DEFAULT_ACCEPT)
        assert head == ManifestHead(MANIFEST_DIGEST, OCI, 0) or (
            head is not None and head.digest == MANIFEST_DIGEST and head.media_type == OCI
        )
        assert c.head_manifest("test/x", "nohead") is None
        assert c.head_manifest("test/x", "missing") is None  # GET will say what is missing
    heads = [r for r in fake.requests if r.method == "HEAD"]
    assert heads and heads[0].headers["accept"] == ", ".join(DEFAULT_ACCEPT)


def test_manifest_errors_through_client() -> None:
    fake = MockRegistry()
    with fake.client() as c:
        with pytest.raises(ManifestUnknownError) as ei:
            c.get_manifest("test/x", "nope")
        assert str(ei.value) == f"manifest for {REG}/test/x:nope not found: manifest unknown"
        with pytest.raises(NameUnknownError) as ei2:
            c.get_manifest("test/nope/deeper", "v1")
        assert str(ei2.value) == (
            "repository test/nope/deeper not found: does it exist and may you pull from it?"
        )


def test_redirected_manifest_url_has_no_query() -> None:
    fake = MockRegistry(auth="none")
    fake.routes["/v2/test/x/manifests/moved"] = lambda r: httpx.Response(
        307, headers={"Location": "https://cdn.example/m?sig=SECRETSIG"}
    )
    fake.routes["/m"] = lambda r: httpx.Response(
        200, headers={"Content-Type": OCI}, content=MANIFEST
    )
    with fake.client() as c:
        m = c.get_manifest("test/x", "moved")
    assert m.body == MANIFEST and m.url == "https://cdn.example/m"


# ---------------------------------------------------------------------------
# Tags


def test_list_tags_follows_link_pagination() -> None:
    fake = MockRegistry()
    pages = {
        None: (["a", "b"], '</v2/test/x/tags/list?last=b&n=2>; rel="next"'),
        "b": (["c", "d"], f'<https://{REG}/v2/test/x/tags/list?last=d&n=2>; rel="next"'),
        "d": (["e"], None),
    }

    def tags(request: httpx.Request) -> httpx.Response:
        if not fake._authorized(request):
            return fake._challenge()
        names, link = pages[request.url.params.get("last")]
        return httpx.Response(
            200, json={"name": "test/x", "tags": names}, headers={"Link": link} if link else {}
        )

    fake.routes["/v2/test/x/tags/list"] = tags
    fake.routes["/v2/test/empty/tags/list"] = lambda r: httpx.Response(
        200, json={"name": "test/empty", "tags": None}
    )
    with fake.client() as c:
        assert c.list_tags("test/x") == ["a", "b", "c", "d", "e"]
        assert c.list_tags("test/empty") == []
        with pytest.raises(NameUnknownError):
            c.list_tags("test/none")
    # One token per repository: the registry, not the token server, says test/none is unknown.
    assert len(fake.token_requests) == 3


def test_list_tags_refuses_link_to_another_host() -> None:
    fake = MockRegistry(auth="none")
    fake.routes["/v2/test/x/tags/list"] = lambda r: httpx.Response(
        200,
        json={"tags": ["a"]},
        headers={"Link": '<https://evil.example/v2/test/x/tags/list?last=a>; rel="next"'},
    )
    with fake.client() as c, pytest.raises(RegistryError, match="another host"):
        c.list_tags("test/x")


def test_list_tags_stops_on_a_link_loop() -> None:
    fake = MockRegistry(auth="none")
    fake.routes["/v2/test/x/tags/list"] = lambda r: httpx.Response(
        200, json={"tags": ["a"]}, headers={"Link": '</v2/test/x/tags/list>; rel="next"'}
    )
    with fake.client() as c:
        assert c.list_tags("test/x") == ["a"]  # the page links to itself: stop


# ---------------------------------------------------------------------------
# Blob requests and fetch_blob with a scripted fetcher


class FakeWriter:
    def __init__(self, offset: int = 0) -> None:
        self._offset = offset
        self.truncated = 0

    @property
    def offset(self) -> int:
        return self._offset

    def truncate(self) -> None:
        self._offset = 0
        self.truncated += 1


class FakeResult:
    def __init__(
        self, status: int, headers: list[tuple[str, str]] | None = None, body: bytes = b""
    ) -> None:
        self.status = status
        self.headers = headers or []
        self.url = ""
        self.written = 0
        self.body = body


class ScriptedFetcher:
    def __init__(self, *results: FakeResult) -> None:
        self.results = list(results)
        self.calls: list[tuple[str, list[tuple[str, str]]]] = []

    def fetch_blob(self, url: str, headers: Any, writer: Any, transfer: Any = None) -> FakeResult:
        self.calls.append((url, list(headers)))
        result = self.results.pop(0)
        result.url = result.url or url  # no redirect: it ended where it was sent
        return result


BLOB = "sha256:" + "b" * 64


def test_blob_request_headers() -> None:
    fake = MockRegistry()
    with fake.client() as c:
        url, headers = c.blob_request("test/x", BLOB)
        assert url == f"https://{REG}/v2/test/x/blobs/{BLOB}"
        h = dict(headers)
        assert h["Authorization"] == "Bearer tok1" and h["User-Agent"] == USER_AGENT
        assert h["Accept-Encoding"] == "identity" and "Range" not in h
        _, headers = c.blob_request("test/x", BLOB, offset=1234)
        assert dict(headers)["Range"] == "bytes=1234-"


def test_fetch_blob_reauths_once_on_401() -> None:
    fake = MockRegistry()
    challenge = (
        "www-authenticate",
        f'Bearer realm="{REALM}",service="{REG}",error="invalid_token"',
    )
    fetcher = ScriptedFetcher(FakeResult(401, [challenge]), FakeResult(206))
    with fake.client() as c:
        res = c.fetch_blob("test/x", BLOB, FakeWriter(10), fetcher)  # type: ignore[arg-type]
    assert res.status == 206
    auths = [dict(h)["Authorization"] for _, h in fetcher.calls]
    assert auths == ["Bearer tok1", "Bearer tok2"]
    assert all(dict(h)["Range"] == "bytes=10-" for _, h in fetcher.calls)


def test_fetch_blob_persistent_401() -> None:
    fake = MockRegistry()
    fetcher = ScriptedFetcher(FakeResult(401), FakeResult(401), FakeResult(200))
    with fake.client() as c, pytest.raises(AuthenticationError):
        c.fetch_blob("test/x", BLOB, FakeWriter(), fetcher)  # type: ignore[arg-type]
    assert len(fetcher.calls) == 2


def test_fetch_blob_416_restarts_from_zero_once() -> None:
    fake = MockRegistry()
    writer = FakeWriter(500)
    fetcher = ScriptedFetcher(FakeResult(416), FakeResult(200))
    with fake.client() as c:
        assert c.fetch_blob("test/x", BLOB, writer, fetcher).status == 200  # type: ignore[arg-type]
    assert writer.truncated == 1
    assert "Range" in dict(fetcher.calls[0][1]) and "Range" not in dict(fetcher.calls[1][1])


@pytest.mark.parametrize(
    ("result", "cls", "code", "retry_after"),
    [
        (
            FakeResult(404, body=_err_body("BLOB_UNKNOWN", "blob unknown to registry")),
            RegistryError,
            "BLOB_UNKNOWN",
            None,
        ),
        (FakeResult(403, body=_err_body("DENIED", "no")), AuthenticationError, "DENIED", None),
        (
            FakeResult(429, [("retry-after", "3")], _err_body("TOOMANYREQUESTS", "wait")),
            RegistryError,
            "TOOMANYREQUESTS",
            3.0,
        ),
        (FakeResult(503, [("retry-after", "2")]), RegistryError, None, 2.0),
    ],
)
def test_fetch_blob_maps_errors(
    result: FakeResult, cls: type[RegistryError], code: str | None, retry_after: float | None
) -> None:
    fake = MockRegistry()
    with fake.client() as c, pytest.raises(RegistryError) as ei:
        c.fetch_blob("test/x", BLOB, FakeWriter(), ScriptedFetcher(result))  # type: ignore[arg-type]
    err = ei.value
    assert type(err) is cls and err.status == result.status and err.code == code
    assert err.retry_after == retry_after
    assert BLOB in str(err) or "test/x" in str(err) or "reg.example" in str(err)


@pytest.mark.parametrize(
    ("registry", "repo", "reference", "shown"),
    [
        ("docker.io", "library/alpine", "nosuchtag", "alpine:nosuchtag"),
        ("docker.io", "user/app", "v9", "user/app:v9"),
        ("ghcr.io", "org/app", "sha256:" + "a" * 64, "ghcr.io/org/app@sha256:" + "a" * 64),
    ],
)
def test_unknown_manifest_is_named_as_docker_names_it(
    registry: str, repo: str, reference: str, shown: str
) -> None:
    body = json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})
    err = error_from_response(
        404, [], body.encode(), registry=registry, kind="manifest", repo=repo, reference=reference
    )
    assert str(err) == f"manifest for {shown} not found: manifest unknown"
