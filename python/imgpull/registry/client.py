"""A synchronous client for one v2 registry endpoint.

Manifests, tag lists and the ping go through httpx; blob bodies go through the
native `Fetcher` (the client only builds their URL and headers and maps the
status). Thread-safe: a pull fetches blobs from a thread pool, all sharing
one client, one connection pool and one token cache.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import ssl
import sys
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from imgpull import debuglog
from imgpull.errors import (
    AuthenticationError,
    ManifestError,
    RegistryError,
    RegistryUnreachableError,
)
from imgpull.manifest import ACCEPT, MAX_MANIFEST_BYTES
from imgpull.registry import deadline
from imgpull.registry.auth import (
    Authenticator,
    Challenge,
    Credentials,
    CredentialStore,
    choose_challenge,
    parse_challenges,
    pull_scope,
    same_origin,
)
from imgpull.registry.errors import (
    Kind,
    error_from_response,
    header_values,
    is_refused,
    is_tls_verify_failure,
    json_object,
    network_reason,
    one_line,
    request_failure,
)
from imgpull.version import USER_AGENT

if TYPE_CHECKING:
    from imgpull._core import BlobWriter, ChunkWriter, Fetcher, FetchResult, Transfer

__all__ = [
    "DEFAULT_ACCEPT",
    "MAX_MANIFEST_BYTES",
    "MAX_TAGS",
    "Endpoint",
    "ManifestHead",
    "ManifestResponse",
    "RegistryClient",
    "endpoint_for",
    "is_loopback",
]

# The manifest module owns the media types; these are its names here.
DEFAULT_ACCEPT = ACCEPT
# Enough of an error body to read its JSON, never a whole mis-sent blob.
_MAX_ERROR_BODY = 64 * 1024
_MAX_TAGS_PAGE = 16 * 1024 * 1024
_MAX_TAG_PAGES = 10_000
# A repository's tag list, all pages together: --all-tags pulls each tag, so
# more than this many is no pull anyone means; the bytes bound the pages'
# padding (a page may hold anything besides its tags).
MAX_TAGS = 100_000
_MAX_TAG_BYTES = 64 * 1024 * 1024

DOCKER_HUB = "docker.io"
DOCKER_HUB_HOST = "registry-1.docker.io"


@dataclass(frozen=True)
class Endpoint:
    """Where a registry is served and how to talk TLS to it.

    `host` is host[:port] ("127.0.0.1:5000", "[::1]:5000"); `domain` the
    registry's name in references ("docker.io") when it differs. With
    `http_fallback` the scheme is not known: the first request that fails
    below TLS verification is tried again over the other scheme (loopback
    registries, docker's default; a loopback one is tried over http first).
    """

    host: str
    scheme: str = "https"
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    insecure: bool = False
    http_fallback: bool = False
    domain: str | None = None

    def __post_init__(self) -> None:
        if self.scheme not in ("http", "https"):
            raise ValueError(f"endpoint scheme must be http or https, not {self.scheme!r}")
        if not self.host or "/" in self.host:
            raise ValueError(f"not a registry host: {self.host!r}")
        if self.client_key and not self.client_cert:
            raise ValueError("client_key given without client_cert")

    @property
    def name(self) -> str:
        """The registry as users write it: for messages and `imgpull login`."""
        return self.domain or self.host

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS settings for httpx (the native Fetcher gets the same files)."""
        try:
            return self._ssl_context()
        except OSError as e:  # ssl.SSLError is an OSError too
            why = e.strerror or str(e)
            raise RegistryError(
                f"cannot load the TLS files for {self.host} "
                f"(ca_file={self.ca_file}, client_cert={self.client_cert}): {one_line(why, 120)}"
            ) from None

    def _ssl_context(self) -> ssl.SSLContext:
        files = (self.ca_file, self.client_cert, self.client_key)
        return _shared_ssl_context(self.insecure, *files, _versions(files))


def _versions(paths: tuple[str | None, ...]) -> tuple[tuple[int, int, int] | None, ...]:
    """What tells a file rewritten in place from the one read before."""
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path) if path else None
        except OSError:
            st = None  # the load itself says what is wrong
        out.append(None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class _RootsOnFirstUse(ssl.SSLContext):
    """A verifying context that loads the system's roots when it first
    wraps a socket, not when it is made: a plain-http registry's client needs
    them only if a redirect or a token realm leads to https, and an https
    one's first request pays what building it would have (~10 ms a
    process, which an up-to-date pull of a loopback registry would spend
    for nothing)."""

    _lock = threading.Lock()
    _loaded = False

    def _load_roots(self) -> None:
        with self._lock:
            if not self._loaded:
                self.load_default_certs(ssl.Purpose.SERVER_AUTH)
                self._loaded = True

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._load_roots()
        return super().wrap_socket(*args, **kwargs)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self._load_roots()
        return super().wrap_bio(*args, **kwargs)


# One context per set of TLS files, shared by every endpoint that has them:
# each holds the system's roots (~0.8 MB), and a bulk pull may name many hosts.
@functools.lru_cache(maxsize=16)
def _shared_ssl_context(
    insecure: bool,
    ca_file: str | None,
    client_cert: str | None,
    client_key: str | None,
    _versions: tuple[tuple[int, int, int] | None, ...],
) -> ssl.SSLContext:
    if insecure:
        # Nothing is verified: no roots to load.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        # The system's roots, as docker and the native Fetcher use (loaded
        # at the first handshake); an extra CA adds to them, read now so
        # that a bad file is reported before any request.
        ctx = _RootsOnFirstUse(ssl.PROTOCOL_TLS_CLIENT)
        if ca_file:
            ctx.load_verify_locations(cafile=ca_file)
    if client_cert:
        ctx.load_cert_chain(client_cert, client_key)
    keylog = os.environ.get("SSLKEYLOGFILE")  # as ssl.create_default_context
    if keylog and not sys.flags.ignore_environment:
        ctx.keylog_filename = keylog
    return ctx


def _split_host(hostport: str) -> str:
    if hostport.startswith("["):
        return hostport[1:].split("]", 1)[0]
    if hostport.count(":") == 1:
        return hostport.split(":", 1)[0]
    return hostport


def is_loopback(hostport: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (with or without a port)."""
    host = _split_host(hostport).lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return bool(ipaddress.ip_address(host).is_loopback)
    except ValueError:
        return False


def _plain_first(endpoint: Endpoint) -> bool:
    """Whether an endpoint of unknown scheme is tried over http first: a
    loopback one that was given no TLS settings."""
    return is_loopback(endpoint.host) and not (
        endpoint.ca_file or endpoint.client_cert or endpoint.insecure
    )


def _scheme(base: str) -> str:
    return base.split(":", 1)[0]


def _direct_if_loopback(hostport: str) -> dict[str, httpx.BaseTransport | None]:
    """httpx mounts sending a loopback host's requests direct (None: no proxy)."""
    if not is_loopback(hostport):
        return {}
    host = _split_host(hostport)
    return {f"all://{f'[{host}]' if ':' in host else host}": None}


def endpoint_for(
    domain: str,
    *,
    plain_http: bool | None = False,
    insecure: bool = False,
    ca_file: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
) -> Endpoint:
    """The endpoint serving a reference's domain.

    HTTPS unless `plain_http=True`. `plain_http=None` means "auto": HTTPS, and
    for a loopback host a fallback to HTTP when HTTPS cannot connect (docker
    treats 127.0.0.0/8 as insecure by default); elsewhere auto is HTTPS only.
    """
    host = DOCKER_HUB_HOST if domain in (DOCKER_HUB, "index.docker.io") else domain
    name = DOCKER_HUB if host == DOCKER_HUB_HOST else domain
    return Endpoint(
        host=host,
        scheme="http" if plain_http else "https",
        ca_file=ca_file,
        client_cert=client_cert,
        client_key=client_key,
        insecure=insecure,
        http_fallback=plain_http is None and is_loopback(host),
        domain=name if name != host else None,
    )


@dataclass(frozen=True)
class ManifestResponse:
    body: bytes
    # Content-Type without parameters; "" when the registry sent none.
    media_type: str
    # Docker-Content-Digest as sent (unverified), or None.
    digest: str | None
    url: str


@dataclass(frozen=True)
class ManifestHead:
    digest: str
    media_type: str
    size: int | None


def _is_digest(reference: str) -> bool:
    return ":" in reference


def _media_type(headers: httpx.Headers) -> str:
    value: str = headers.get("content-type") or ""
    return value.split(";", 1)[0].strip()


def _read_capped(resp: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """Up to `limit` bytes of a streamed body, and whether there was more."""
    buf = bytearray()
    for chunk in resp.iter_bytes():
        buf += chunk
        if len(buf) > limit:
            return bytes(buf[:limit]), True
    return bytes(buf), False


def _error_body(resp: httpx.Response) -> bytes:
    """Enough of an error answer's body to read its JSON; b"" when the
    connection broke meanwhile (the status alone still says what went wrong)."""
    try:
        return _read_capped(resp, _MAX_ERROR_BODY)[0]
    except httpx.RequestError:
        return b""


class RegistryClient:
    """One registry endpoint: ping, manifests, tags, blob requests.

    Credentials come from `credentials`, else from `credential_store(name)`.
    `headers` are extra headers for every request (docker's X-Meta-*).
    Pass `http` to supply the httpx client (tests); it is then not closed here.
    `login` asks token servers for a refresh token too (see check_login).
    `timeout` bounds each connect and read; `request_timeout` each whole
    request but blob bodies (a ping, a manifest, a tag page, a token).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        credentials: Credentials | None = None,
        credential_store: CredentialStore | None = None,
        user_agent: str = USER_AGENT,
        headers: Sequence[tuple[str, str]] = (),
        timeout: float = 60.0,
        force_oauth: bool = False,
        http: httpx.Client | None = None,
        login: bool = False,
        request_timeout: float = deadline.DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        if not request_timeout > 0:
            raise ValueError("request_timeout must be a positive number of seconds")
        self._endpoint = endpoint
        self._request_timeout = request_timeout
        self._owns_http = http is None
        if http is None:
            http = httpx.Client(
                # Always our own context: httpx's default one costs ~0.1 s to
                # build, and redirects may lead from http to https.
                verify=endpoint.ssl_context(),
                http2=False,
                trust_env=True,
                # Proxies from the environment, except for loopback, as in Go
                # and as the native Fetcher is given (transport._proxy_for).
                mounts=_direct_if_loopback(endpoint.host),
                follow_redirects=True,
                timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
            )
            debuglog.install(http)
            deadline.install(http)
        self._http = http
        self._headers: list[tuple[str, str]] = [("User-Agent", user_agent), *headers]
        if credentials is None and credential_store is not None:
            credentials = credential_store(endpoint.name)
        self._auth = Authenticator(
            http,
            registry=endpoint.name,
            credentials=credentials,
            headers=self._headers,
            force_oauth=force_oauth,
            offline=login,
            request_timeout=request_timeout,
        )
        self._base = endpoint.base_url
        # An endpoint whose scheme is not known (http_fallback): its first
        # request settles it (see _settle). A loopback one without TLS files
        # is tried over plain http first: that is what loopback registries
        # serve, and a TLS attempt first costs a round trip on every run.
        self._probing = endpoint.http_fallback
        if self._probing and _plain_first(endpoint):
            self._base = f"http://{endpoint.host}"
        self._scheme_lock = threading.Lock()
        # Whether any request got an answer yet (and with it the challenge).
        self._contacted = False

    # -- lifecycle --------------------------------------------------------

    @property
    def endpoint(self) -> Endpoint:
        return self._endpoint

    @property
    def base_url(self) -> str:
        """`scheme://host` in use (http after an auto fallback)."""
        return self._base

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RegistryClient({self._base!r})"

    # -- ping ---------------------------------------------------------------

    def ping(self) -> Challenge | None:
        """GET /v2/ and record the auth challenge it answers (None: no auth).

        A pull does not ping: its first request finds out what a ping would
        (the scheme, the challenge), one round trip sooner.
        """
        with self._deadline("GET /v2/"):
            resp = self._open_first(self._ping_once)
            try:
                body, _ = _read_capped(resp, _MAX_ERROR_BODY)
            except httpx.RequestError as e:
                raise request_failure(self._endpoint.host, e) from None
            finally:
                resp.close()
        return self._read_ping(resp.status_code, resp.headers.multi_items(), body, resp.url)

    def _ping_once(self) -> httpx.Response:
        request = self._http.build_request("GET", f"{self._base}/v2/", headers=self._headers)
        return self._http.send(request, stream=True, follow_redirects=True)

    def _deadline(self, what: str) -> AbstractContextManager[None]:
        """The overall time limit of one request (see deadline.py)."""
        return deadline.deadline(self._request_timeout, what, self._endpoint.host)

    def _read_ping(
        self, status: int, headers: list[tuple[str, str]], body: bytes, url: httpx.URL
    ) -> Challenge | None:
        ep = self._endpoint
        if status == 401 and not self._own(url):
            # Docker keys challenges by host: one from the host a redirect
            # led to is not the registry's, and gets none of its credentials.
            self._auth.set_challenge(None)
            return None
        if status == 401:
            challenge = choose_challenge(
                parse_challenges(header_values(headers, "www-authenticate"))
            )
            self._auth.set_challenge(challenge)
            return challenge
        if 200 <= status < 300:
            self._auth.set_challenge(None)
            return None
        if status == 404:
            raise RegistryError(
                f"{ep.name} does not serve the registry v2 API (GET /v2/ answered 404)",
                status=404,
            )
        raise error_from_response(status, headers, body, registry=ep.name, kind="ping")

    # -- the scheme -----------------------------------------------------------

    def _open_first(self, send: Callable[[], httpx.Response]) -> httpx.Response:
        """`send()` (a request built from the current base), settling the
        scheme first if this is the endpoint's first request; RegistryError
        for a transport failure."""
        if self._probing:
            with deadline.locked(self._scheme_lock):  # the others wait for the answer
                if self._probing:
                    resp = self._settle(send)
                    self._probing = False
                    self._contacted = True
                    return resp
        try:
            resp = send()
        except httpx.RequestError as e:
            raise request_failure(self._endpoint.host, e) from None
        self._contacted = True
        return resp

    def _settle(self, send: Callable[[], httpx.Response]) -> httpx.Response:
        """The first request to an endpoint of unknown scheme: over the scheme
        tried first, then once over the other when the answer says it was the
        wrong one (docker's fallback for insecure registries). The base it
        ends on holds for the client's life."""
        ep = self._endpoint
        first = self._base
        other = f"{'https' if first.startswith('http:') else 'http'}://{ep.host}"
        try:
            resp = send()
        except httpx.RequestError as e:
            # An untrusted certificate is an answer: plain http is no way round
            # it; nor is the other scheme round a refused port or unknown name.
            if not isinstance(e, httpx.TransportError) or is_tls_verify_failure(e) or is_refused(e):
                raise request_failure(ep.host, e) from None
            self._base = other
            try:
                return send()
            except httpx.RequestError as e2:
                self._base = first
                if not isinstance(e2, httpx.TransportError):
                    raise request_failure(ep.host, e2) from None
                raise RegistryUnreachableError(
                    f"cannot reach registry {ep.host}: over {_scheme(first)}: "
                    f"{network_reason(e)}; over {_scheme(other)}: {network_reason(e2)}"
                ) from None
        if not first.startswith("http:") or resp.status_code != 400:
            return resp
        try:
            body = _error_body(resp)
        finally:
            resp.close()
        if b"HTTPS" not in body.upper():
            return _replay(resp, body)
        # "Client sent an HTTP request to an HTTPS server" (Go), nginx's
        # "plain HTTP request was sent to HTTPS port": a TLS port.
        self._base = other
        try:
            return send()
        except httpx.RequestError as e:
            raise request_failure(ep.host, e) from None

    def check_login(self) -> str | None:
        """Verify the credentials as `docker login` does: ping, then GET /v2/
        with them (for a token server: a token with no scope).

        Returns the refresh (identity) token the token server handed out, if
        any, which docker stores instead of the password.
        """
        self.ping()
        with self._deadline("GET /v2/"):
            resp = self._open("GET", f"{self._base}/v2/", scope=None)
            try:
                return self._login_answer(resp)
            finally:
                resp.close()

    def _login_answer(self, resp: httpx.Response) -> str | None:
        if resp.status_code in (401, 403) and self._own(resp.url):
            raise AuthenticationError(
                f"login to {self._endpoint.name} failed: the registry refused the "
                f"credentials ({resp.status_code}); check the username and password",
                status=resp.status_code,
            )
        if not 200 <= resp.status_code < 300:
            raise self._error(resp, kind="ping", repo="")
        return self._auth.refresh_token

    # -- requests -----------------------------------------------------------

    def _open(
        self,
        method: str,
        url: str,
        *,
        scope: str | None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> httpx.Response:
        """Send with auth; on a 401, re-authenticate and try once more.

        Returns the streamed response; the caller closes it. A 401 from a
        host a redirect led to is returned as it is: its challenge is not
        the registry's, and no credential of the registry goes there.
        """
        retried = False
        while True:
            auth = self._auth.authorization(scope)
            h = [*self._headers, *headers]
            if auth:
                h.append(("Authorization", auth))

            def send(h: list[tuple[str, str]] = h) -> httpx.Response:
                request = self._http.build_request(method, self._rebase(url), headers=h)
                return self._http.send(request, stream=True, follow_redirects=True)

            resp = self._open_first(send)
            if resp.status_code != 401 or retried or not self._own(resp.url):
                return resp
            try:
                body = _error_body(resp)
            finally:
                resp.close()
            challenges = resp.headers.get_list("www-authenticate")
            if not self._auth.on_unauthorized(scope, auth, challenges):
                # Nothing new to try: hand back the same answer, body included.
                return _replay(resp, body)
            retried = True

    def _error(
        self,
        resp: httpx.Response,
        *,
        kind: Kind,
        repo: str,
        reference: str | None = None,
    ) -> RegistryError:
        body = _error_body(resp)
        return error_from_response(
            resp.status_code,
            resp.headers.multi_items(),
            body,
            registry=self._endpoint.name,
            kind=kind,
            repo=repo,
            reference=reference,
            authenticated=self._auth.has_credentials,
            secrets=self._secrets(resp.request.headers.get("authorization")),
            redirected_to=self._elsewhere(resp.url),
        )

    def _secrets(self, sent: str | None) -> list[str]:
        """What to redact from the server's words: every secret held, and the
        credential this request sent (a token dropped after its 401 included)."""
        held = self._auth.secrets()
        if sent and " " in sent:
            held.append(sent.split(" ", 1)[1])
        return held

    def _own(self, url: httpx.URL | str) -> bool:
        """Whether `url` is on the registry's own origin (where its credentials go)."""
        return same_origin(httpx.URL(url), httpx.URL(self._base))

    def _elsewhere(self, url: httpx.URL | str) -> str | None:
        """The host[:port] of `url` when a redirect led off the registry, else None."""
        if self._own(url):
            return None
        u = httpx.URL(url)
        return f"{u.host}:{u.port}" if u.port else u.host

    def _rebase(self, url: str) -> str:
        """`url` on the current base: built before the endpoint's first
        request settled its scheme, it may name the other one."""
        for base in (f"http://{self._endpoint.host}", f"https://{self._endpoint.host}"):
            if base != self._base and url.startswith(base + "/"):
                return self._base + url[len(base) :]
        return url

    def _url(self, repo: str, *parts: str) -> str:
        path = "/".join(quote(p, safe=":@") for p in parts)
        return f"{self._base}/v2/{quote(repo, safe='/')}/{path}"

    # -- manifests ----------------------------------------------------------

    def get_manifest(
        self,
        repo: str,
        reference: str,
        accept: Sequence[str] = DEFAULT_ACCEPT,
        *,
        max_bytes: int = MAX_MANIFEST_BYTES,
    ) -> ManifestResponse:
        """GET a manifest by tag or digest; its digest is not verified here."""
        url = self._url(repo, "manifests", reference)
        sep = "@" if _is_digest(reference) else ":"
        with self._deadline(f"manifest {repo}{sep}{reference}"):
            return self._get_manifest(url, repo, reference, accept, max_bytes)

    def _get_manifest(
        self, url: str, repo: str, reference: str, accept: Sequence[str], max_bytes: int
    ) -> ManifestResponse:
        resp = self._open(
            "GET", url, scope=pull_scope(repo), headers=[("Accept", ", ".join(accept))]
        )
        try:
            if not 200 <= resp.status_code < 300:
                raise self._error(resp, kind="manifest", repo=repo, reference=reference)
            subject = f"{repo}{'@' if _is_digest(reference) else ':'}{reference}"
            length = resp.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise ManifestError(
                    f"manifest for {subject} is {int(length)} bytes, over the "
                    f"{max_bytes}-byte limit: refusing it"
                )
            try:
                body, over = _read_capped(resp, max_bytes)
            except httpx.RequestError as e:
                raise request_failure(self._endpoint.host, e) from None
            if over:
                raise ManifestError(
                    f"manifest for {subject} is larger than the {max_bytes}-byte limit: refusing it"
                )
            return ManifestResponse(
                body=body,
                media_type=_media_type(resp.headers),
                digest=resp.headers.get("docker-content-digest"),
                url=str(resp.url.copy_with(query=None)),
            )
        finally:
            resp.close()

    def head_manifest(
        self, repo: str, reference: str, accept: Sequence[str] = DEFAULT_ACCEPT
    ) -> ManifestHead | None:
        """HEAD a manifest: its digest, media type and size without the body.

        None whenever HEAD does not give an answer to act on (405, 404, any
        error, no Docker-Content-Digest): the caller then GETs, which either
        works or says precisely what is wrong (unknown repository vs tag).
        Network failures still raise.
        """
        url = self._url(repo, "manifests", reference)
        sep = "@" if _is_digest(reference) else ":"
        with self._deadline(f"HEAD of manifest {repo}{sep}{reference}"):
            resp = self._open(
                "HEAD", url, scope=pull_scope(repo), headers=[("Accept", ", ".join(accept))]
            )
            resp.close()
        digest = resp.headers.get("docker-content-digest")
        if not 200 <= resp.status_code < 300 or not digest:
            return None
        length = resp.headers.get("content-length")
        return ManifestHead(
            digest=digest,
            media_type=_media_type(resp.headers),
            size=int(length) if length is not None and length.isdigit() else None,
        )

    # -- blobs --------------------------------------------------------------

    def blob_request(
        self, repo: str, digest: str, *, offset: int = 0, end: int | None = None
    ) -> tuple[str, list[tuple[str, str]]]:
        """URL and headers for the native fetcher to GET a blob from `offset`
        (up to `end`, exclusive: one chunk of it).

        Gets (or reuses) a token for the repository first. The fetcher drops
        Authorization itself when a redirect leaves this host.
        """
        if offset < 0:
            raise ValueError("offset must be >= 0")
        if not self._contacted:
            # Never the case in a pull (a manifest request comes first): the
            # native fetcher learns neither the scheme nor the challenge.
            self.ping()
        headers = [*self._headers, ("Accept-Encoding", "identity")]
        auth = self._auth.authorization(pull_scope(repo))
        if auth:
            headers.append(("Authorization", auth))
        if end is not None:
            headers.append(("Range", f"bytes={offset}-{end - 1}"))
        elif offset > 0:
            headers.append(("Range", f"bytes={offset}-"))
        return self._url(repo, "blobs", digest), headers

    def fetch_blob(
        self,
        repo: str,
        digest: str,
        writer: BlobWriter | ChunkWriter,
        fetcher: Fetcher,
        transfer: Transfer | None = None,
        *,
        end: int | None = None,
    ) -> FetchResult:
        """Stream a blob into `writer` from its offset, up to `end` if given
        (a ChunkWriter: its range of the blob); raise on an HTTP error.

        One re-authentication on a 401; one restart from 0 on a 416 (the
        partial file is not a prefix the registry can continue). Other
        retries belong to the caller. FetchError from the fetcher passes
        through unchanged. The body is not verified: call writer.commit().
        """
        scope = pull_scope(repo)
        reauthed = restarted = False
        while True:
            # A ChunkWriter has an end: one range of the blob.
            end = getattr(writer, "end", end)
            url, headers = self.blob_request(repo, digest, offset=writer.offset, end=end)
            sent = next((v for k, v in headers if k == "Authorization"), None)
            debuglog.log_exchange("GET", url, headers)
            result = fetcher.fetch_blob(url, headers, writer, transfer)
            status = result.status
            # result.url: where the redirects ended (storage, say), redacted there.
            debuglog.log_exchange("GET", result.url, (), status, result.headers)
            if 200 <= status < 300:
                return result
            # A 401 from where a redirect led: not the registry's challenge.
            if status == 401 and not reauthed and self._own(result.url):
                reauthed = True
                if self._auth.on_unauthorized(
                    scope, sent, header_values(result.headers, "www-authenticate")
                ):
                    continue
            if status == 416 and not hasattr(writer, "end") and writer.offset > 0 and not restarted:
                restarted = True
                writer.truncate()
                continue
            raise error_from_response(
                status,
                result.headers,
                result.body,
                registry=self._endpoint.name,
                kind="blob",
                repo=repo,
                reference=digest,
                authenticated=self._auth.has_credentials,
                secrets=self._secrets(sent),
                redirected_to=self._elsewhere(result.url),
            )

    # -- tags ---------------------------------------------------------------

    def list_tags(self, repo: str) -> list[str]:
        """Every tag of a repository, following `Link: <…>; rel="next"` pages."""
        url: str | None = self._url(repo, "tags", "list")
        tags: list[str] = []
        seen: set[str] = set()
        read = 0
        while url is not None and url not in seen and len(seen) < _MAX_TAG_PAGES:
            seen.add(url)
            with self._deadline(f"tag list of {repo}"):
                body, over, nxt, page_url = self._tags_page(url, repo)
            read += len(body)
            if over or read > _MAX_TAG_BYTES:
                raise RegistryError(f"tag list of {repo} from {self._endpoint.name} is too large")
            # Counted before parsing: a page of short tags is millions of
            # Python strings (each tag is a quoted string; so are the keys).
            if body.count(b'"') // 2 > MAX_TAGS - len(tags) + 2:
                raise self._too_many_tags(repo)
            tags.extend(_parse_tags(body, repo, self._endpoint.name))
            del body
            if len(tags) > MAX_TAGS:
                raise self._too_many_tags(repo)
            url = None
            if nxt:
                target = page_url.join(nxt)
                origin = httpx.URL(self._base)  # settled by the first page
                if (target.scheme, target.host, target.port) != (
                    origin.scheme,
                    origin.host,
                    origin.port,
                ):
                    # Never send this registry's token to another host.
                    raise RegistryError(
                        f"{self._endpoint.name} sent a tag-list page link to another host"
                    )
                url = str(target)
        return tags

    def _too_many_tags(self, repo: str) -> RegistryError:
        return RegistryError(
            f"{repo} on {self._endpoint.name} lists more than {MAX_TAGS:,} tags, too many to "
            "pull them all: pull the tags you need by name"
        )

    def _tags_page(self, url: str, repo: str) -> tuple[bytes, bool, str | None, httpx.URL]:
        """One page of tags/list: its body, whether it was cut, its next link, its URL."""
        resp = self._open(
            "GET", url, scope=pull_scope(repo), headers=[("Accept", "application/json")]
        )
        try:
            if not 200 <= resp.status_code < 300:
                raise self._error(resp, kind="tags", repo=repo)
            try:
                body, over = _read_capped(resp, _MAX_TAGS_PAGE)
            except httpx.RequestError as e:
                raise request_failure(self._endpoint.host, e) from None
            return body, over, resp.links.get("next", {}).get("url"), resp.url
        finally:
            resp.close()


def _replay(resp: httpx.Response, body: bytes) -> httpx.Response:
    """A read response rebuilt around its (already decoded) body."""
    headers = [
        (k, v) for k, v in resp.headers.multi_items()
        if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
    ]  # fmt: skip
    return httpx.Response(resp.status_code, headers=headers, content=body, request=resp.request)


def _parse_tags(body: bytes, repo: str, registry: str) -> list[str]:
    data = json_object(body)
    if data is None:
        raise RegistryError(f"tag list of {repo} from {registry} is not a JSON object")
    raw = data.get("tags")
    if raw is None:
        return []  # distribution sends null for a repository with no tags
    if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
        raise RegistryError(f"tag list of {repo} from {registry} is malformed")
    return list(raw)
