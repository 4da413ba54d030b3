"""Registry authentication: challenges, credentials, bearer tokens.

The flow is docker's (distribution/registry/client/auth): `GET /v2/` answers
401 with `WWW-Authenticate`; a Bearer challenge names a token server (realm)
that hands out short-lived tokens per scope, a Basic challenge means sending
the credentials on every request. Secrets never reach a message or a repr.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus

import httpx

from imgpull.errors import AuthenticationError, RegistryError
from imgpull.registry.deadline import DEFAULT_REQUEST_TIMEOUT, deadline, locked
from imgpull.registry.errors import (
    header_values,
    json_object,
    one_line,
    parse_retry_after,
    request_failure,
)
from imgpull.rfc3339 import parse_rfc3339
from imgpull.safetext import redact

__all__ = [
    "Challenge",
    "CredentialStore",
    "Credentials",
    "parse_challenges",
    "pull_scope",
    "same_origin",
]

# Docker's minimum and default token lifetime (seconds): a token server that
# says less (or nothing) is taken to mean 60 s.
MIN_TOKEN_LIFETIME = 60.0
# Refresh this long before the expiry so a token does not lapse in flight.
EXPIRY_MARGIN = 5.0
# Token responses are small JSON; refuse anything huge.
MAX_TOKEN_RESPONSE = 1 << 20
# Sent as OAuth client_id, like docker's "docker".
CLIENT_ID = "imgpull"
# Redirects followed from a token realm (httpx's default is 20).
MAX_TOKEN_REDIRECTS = 10


def _now() -> float:
    """Monotonic clock for expiries (a module function so tests can move time)."""
    return time.monotonic()


def _wall() -> float:
    """Wall clock, only to age a token by its `issued_at`."""
    return time.time()


@dataclass(frozen=True)
class Credentials:
    """Username/password, or an identity (refresh) token from `docker login`.

    The secret fields are left out of the repr so a logged object leaks nothing.
    """

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    identity_token: str | None = field(default=None, repr=False)

    @property
    def has_basic(self) -> bool:
        return bool(self.username) and self.password is not None

    def basic_header(self) -> str | None:
        if not self.has_basic:
            return None
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


# Looks up credentials for a registry host ("docker.io", "127.0.0.1:5000");
# the ~/.docker/config.json reader will be one of these.
CredentialStore = Callable[[str], "Credentials | None"]


def pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


def same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    """Same scheme, host and port (default ports filled in): where credentials
    stored for one may go, as docker keys its auth challenges."""
    return (a.scheme, a.host, a.port or _DEFAULT_PORTS.get(a.scheme)) == (
        b.scheme,
        b.host,
        b.port or _DEFAULT_PORTS.get(b.scheme),
    )


_DEFAULT_PORTS = {"http": 80, "https": 443}


# ---------------------------------------------------------------------------
# WWW-Authenticate parsing (RFC 7235, leniently: registries in the wild send
# unquoted URLs and odd spacing).

_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True)
class Challenge:
    """One authentication challenge: scheme lower-cased, parameter names too."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        return self.params.get("scope")


class _Scanner:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def at_end(self) -> bool:
        return self.i >= len(self.s)

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def skip_ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
            self.i += 1

    def token(self) -> str:
        start = self.i
        while self.i < len(self.s) and self.s[self.i] in _TCHARS:
            self.i += 1
        return self.s[start : self.i]

    def quoted(self) -> str:
        # Caller saw the opening quote. Backslash escapes the next character;
        # an unterminated string runs to the end rather than failing.
        self.i += 1
        out: list[str] = []
        while self.i < len(self.s):
            c = self.s[self.i]
            self.i += 1
            if c == "\\" and self.i < len(self.s):
                out.append(self.s[self.i])
                self.i += 1
            elif c == '"':
                break
            else:
                out.append(c)
        return "".join(out)

    def bare_value(self) -> str:
        # Unquoted values may be URLs (not tchars): read up to a comma or space.
        start = self.i
        while self.i < len(self.s) and self.s[self.i] not in ", \t":
            self.i += 1
        return self.s[start : self.i]


def _parse_one_header(value: str) -> list[Challenge]:
    sc = _Scanner(value)
    out: list[Challenge] = []
    while True:
        while not sc.at_end() and (sc.peek() in " \t," or sc.peek() not in _TCHARS):
            sc.i += 1  # separators and garbage between challenges
        if sc.at_end():
            return out
        scheme = sc.token().lower()
        params: dict[str, str] = {}
        first = True
        while True:
            sc.skip_ws()
            if sc.at_end():
                break
            saw_comma = False
            while sc.peek() == ",":
                saw_comma = True
                sc.i += 1
                sc.skip_ws()
            mark = sc.i
            name = sc.token()
            if not name:
                if sc.at_end():
                    break
                sc.i += 1  # stray character: skip it
                continue
            sc.skip_ws()
            if sc.peek() == "=":
                sc.i += 1
                sc.skip_ws()
                if sc.peek() == "=":
                    # token68 ending in padding ("abc=="): not a parameter.
                    while sc.peek() == "=":
                        sc.i += 1
                    first = False
                    continue
                val = sc.quoted() if sc.peek() == '"' else sc.bare_value()
                params[name.lower()] = val
                first = False
                continue
            if first and not saw_comma:
                first = False  # token68 right after the scheme: ignore it
                continue
            sc.i = mark  # a token with no '=' after a comma starts a new challenge
            break
        out.append(Challenge(scheme, params))


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Every challenge in the given `WWW-Authenticate` header values, in order."""
    out: list[Challenge] = []
    for v in values:
        out.extend(_parse_one_header(v))
    return out


def choose_challenge(challenges: Sequence[Challenge]) -> Challenge | None:
    """Bearer (with a realm) if offered, else Basic, else nothing we can do."""
    for c in challenges:
        if c.scheme == "bearer" and c.realm:
            return c
    for c in challenges:
        if c.scheme == "basic":
            return c
    return None


# ---------------------------------------------------------------------------
# Tokens


@dataclass
class _Token:
    value: str = field(repr=False)
    expires_at: float  # on the _now() clock


def _lifetime(data: Mapping[str, object]) -> float:
    expires_in = data.get("expires_in")
    life = float(expires_in) if isinstance(expires_in, (int, float)) else 0.0
    life = max(life, MIN_TOKEN_LIFETIME)
    issued = data.get("issued_at")
    if isinstance(issued, str) and issued:
        when = parse_rfc3339(issued)
        if when is not None:
            age = _wall() - when.timestamp()
            # Only trust issued_at when it is plausible; a skewed server clock
            # must not make every fresh token look expired.
            if 0 <= age < life:
                life -= age
    return life


class Authenticator:
    """Holds the registry's challenge and a per-scope token cache.

    Thread-safe: blob fetches run on a pool and all ask for headers here.
    One token request per scope at a time (a per-key lock), so a burst of
    threads starting together does not stampede the token server.
    """

    def __init__(
        self,
        http: httpx.Client,
        *,
        registry: str,
        credentials: Credentials | None,
        headers: Sequence[tuple[str, str]],
        force_oauth: bool = False,
        offline: bool = False,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self._http = http
        # Overall limit of one token request, body included (deadline.py).
        self._request_timeout = request_timeout
        self._registry = registry
        self._creds = credentials
        self._headers = list(headers)
        self._force_oauth = force_oauth
        # Ask the token server for a refresh token too (`docker login` does).
        self._offline = offline
        self._lock = threading.Lock()
        self._challenge: Challenge | None = None
        self._tokens: dict[tuple[str, str, str], _Token] = {}
        self._key_locks: dict[tuple[str, str, str], threading.Lock] = {}
        # A refresh token handed back by the token server replaces the
        # identity token for later requests (kept in memory only).
        self._refresh_token = credentials.identity_token if credentials else None

    @property
    def challenge(self) -> Challenge | None:
        with self._lock:
            return self._challenge

    @property
    def has_credentials(self) -> bool:
        return self._creds is not None and (self._creds.has_basic or bool(self._refresh_token))

    @property
    def refresh_token(self) -> str | None:
        """The refresh (identity) token held: given, or handed out by the token server."""
        with self._lock:
            return self._refresh_token

    def secrets(self) -> list[str]:
        """Every secret held (password, Basic credentials, identity, refresh
        and access tokens), also URL-encoded: to redact server text echoing one."""
        with self._lock:
            held = [t.value for t in self._tokens.values()]
            held.append(self._refresh_token or "")
        creds = self._creds
        if creds is not None:
            held += [creds.password or "", creds.identity_token or ""]
            header = creds.basic_header()
            if header:
                held.append(header.split(" ", 1)[1])
        held = [s for s in held if s]
        return held + [quote(s, safe="") for s in held] + [quote_plus(s) for s in held]

    def set_challenge(self, challenge: Challenge | None) -> None:
        with self._lock:
            self._challenge = challenge

    def authorization(self, scope: str | None) -> str | None:
        """The Authorization header value for a request needing `scope`."""
        ch = self.challenge
        if ch is None:
            return None
        if ch.scheme == "basic":
            return self._creds.basic_header() if self._creds else None
        realm = ch.realm or ""
        key = (realm, ch.service or "", scope or "")
        with self._lock:
            tok = self._tokens.get(key)
            if tok is not None and tok.expires_at > _now():
                return "Bearer " + tok.value
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with locked(key_lock):  # another thread may be fetching it
            with self._lock:
                tok = self._tokens.get(key)
                if tok is not None and tok.expires_at > _now():
                    return "Bearer " + tok.value
            value, life = self._fetch_token(realm, ch.service, scope)
            with self._lock:
                self._tokens[key] = _Token(value, _now() + max(life - EXPIRY_MARGIN, 1.0))
            return "Bearer " + value

    def on_unauthorized(self, scope: str | None, sent: str | None, values: Iterable[str]) -> bool:
        """Digest a 401: drop the token that failed, take up a new challenge.

        Returns whether one more try can help. Only the token that was sent is
        dropped, so a thread holding a stale 401 does not evict a fresh token
        another thread just fetched.
        """
        values = list(values)
        new = choose_challenge(parse_challenges(values))
        # A valid token without the rights: a new one from the same token
        # server carries the same rights, so keep it and do not retry.
        denied = _insufficient_scope(values)
        with self._lock:
            old = self._challenge
            if new is not None and (
                old is None
                or old.scheme != new.scheme
                or old.realm != new.realm
                or old.service != new.service
            ):
                self._challenge = new
            if sent is not None and sent.startswith("Bearer ") and not denied:
                used = sent[len("Bearer ") :]
                for k, t in list(self._tokens.items()):
                    if t.value == used and k[2] == (scope or ""):
                        del self._tokens[k]
            current = self._challenge
        if current is None:
            return False
        if current.scheme == "basic":
            # Retrying Basic only helps if we did not send it the first time.
            return sent is None and self._creds is not None and self._creds.has_basic
        return sent is None or not denied

    # -- token server ---------------------------------------------------------

    def _fetch_token(self, realm: str, service: str | None, scope: str | None) -> tuple[str, float]:
        try:
            url = httpx.URL(realm)
        except httpx.InvalidURL as e:
            raise RegistryError(
                f"registry {self._registry} sent an invalid token realm: {one_line(str(e))}"
            ) from None
        if url.scheme not in ("http", "https"):
            raise RegistryError(f"registry {self._registry} sent a token realm that is not HTTP(S)")
        creds = self._creds
        refresh = self._refresh_token
        if refresh:
            form = {"grant_type": "refresh_token", "refresh_token": refresh}
            resp = self._post_oauth(url, service, scope, form)
            if resp is not None:
                return resp
        elif self._force_oauth and creds is not None and creds.has_basic:
            form = {
                "grant_type": "password",
                "username": creds.username or "",
                "password": creds.password or "",
            }
            resp = self._post_oauth(url, service, scope, form)
            if resp is not None:
                return resp
        return self._get_token(url, service, scope)

    def _post_oauth(
        self,
        url: httpx.URL,
        service: str | None,
        scope: str | None,
        form: dict[str, str],
    ) -> tuple[str, float] | None:
        """OAuth2 POST; None when the server does not do it (404/405)."""
        data = dict(form)
        data["client_id"] = CLIENT_ID
        if service:
            data["service"] = service
        if scope:
            data["scope"] = scope
        if form["grant_type"] == "password":
            data["access_type"] = "offline"
        resp = self._token_request("POST", url, data=data)
        if resp[0] in (404, 405):
            return None
        return self._token_from(resp, url)

    def _get_token(
        self, url: httpx.URL, service: str | None, scope: str | None
    ) -> tuple[str, float]:
        params: list[tuple[str, str | int | float | bool | None]] = []
        if service:
            params.append(("service", service))
        if scope:
            params.append(("scope", scope))
        auth = None
        if self._creds is not None and self._creds.has_basic:
            params.append(("account", self._creds.username or ""))
            auth = self._creds.basic_header()
            if self._offline:
                params += [("offline_token", "true"), ("client_id", CLIENT_ID)]
        url = url.copy_merge_params(params)
        return self._token_from(self._token_request("GET", url, auth=auth), url)

    def _token_request(
        self,
        method: str,
        url: httpx.URL,
        *,
        data: dict[str, str] | None = None,
        auth: str | None = None,
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = list(self._headers)
        if auth:
            headers.append(("Authorization", auth))
        host = _host_of(url)
        request = self._http.build_request(method, url, headers=headers, data=data)
        try:
            with deadline(self._request_timeout, "token request", f"token server {host}"):
                for _ in range(MAX_TOKEN_REDIRECTS + 1):
                    resp = self._http.send(request, stream=True, follow_redirects=False)
                    try:
                        following = resp.next_request
                        if following is None:
                            return self._read_token_response(resp, url)
                    finally:
                        resp.close()
                    # httpx drops Authorization when a redirect leaves the
                    # origin, but a 307/308 carries a POST's form (password,
                    # refresh token) anywhere: not to another host.
                    if (
                        data is not None
                        and following.method == request.method
                        and not same_origin(following.url, url)
                    ):
                        raise AuthenticationError(
                            f"token server {host} redirected the login to another host, "
                            f"{_host_of(following.url)}: imgpull does not send the "
                            f"credentials of {self._registry} there"
                        )
                    request = following
        except httpx.RequestError as e:
            raise request_failure(host, e, what="token server") from None
        raise RegistryError(f"token server {host} redirected too many times")

    def _read_token_response(
        self, resp: httpx.Response, url: httpx.URL
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        body = bytearray()
        for chunk in resp.iter_bytes():
            body += chunk
            if len(body) > MAX_TOKEN_RESPONSE:
                raise RegistryError(
                    f"token server {_host_of(url)} sent an oversized response",
                    status=resp.status_code,
                )
        return resp.status_code, resp.headers.multi_items(), bytes(body)

    def _token_from(
        self, resp: tuple[int, list[tuple[str, str]], bytes], url: httpx.URL
    ) -> tuple[str, float]:
        status, headers, body = resp
        host = _host_of(url)
        if status in (401, 403):
            msg = _token_error_message(body, self.secrets())
            if self.has_credentials:
                text = (
                    f"authentication to {self._registry} failed (token server {host} said "
                    f"{status}{': ' + msg if msg else ''}): check your credentials "
                    f"(imgpull login {self._registry})"
                )
            else:
                text = (
                    f"{self._registry} refused an anonymous token (token server {host} said "
                    f"{status}{': ' + msg if msg else ''}): log in with "
                    f"imgpull login {self._registry}"
                )
            raise AuthenticationError(text, status=status, code="UNAUTHORIZED", retry_after=None)
        if not 200 <= status < 300:
            msg = _token_error_message(body, self.secrets())
            raise RegistryError(
                f"token server {host} answered {status}{': ' + msg if msg else ''}",
                status=status,
                code="TOOMANYREQUESTS" if status == 429 else None,
                retry_after=parse_retry_after(
                    next(iter(header_values(headers, "retry-after")), None)
                ),
            )
        data = json_object(body)
        if data is None:
            raise RegistryError(f"token server {host} sent a response that is not a JSON object")
        token = data.get("token") or data.get("access_token")
        if not isinstance(token, str) or not token:
            raise AuthenticationError(
                f"token server {host} sent no token for {self._registry}", status=status
            )
        refresh = data.get("refresh_token")
        if isinstance(refresh, str) and refresh:
            with self._lock:
                self._refresh_token = refresh
        return token, _lifetime(data)


def _insufficient_scope(values: Iterable[str]) -> bool:
    """Whether a 401's Bearer challenge says `error="insufficient_scope"`."""
    return any(c.params.get("error") == "insufficient_scope" for c in parse_challenges(values))


def _host_of(url: httpx.URL) -> str:
    return f"{url.host}:{url.port}" if url.port else url.host


def _token_error_message(body: bytes, secrets: Iterable[str]) -> str:
    """The reason a token server gave, from the shapes seen in the wild
    (`secrets` redacted: a server may echo the credentials back)."""
    data = json_object(body)
    if data is None:
        return ""
    for key in ("details", "error_description", "message", "error"):
        v = data.get(key)
        if isinstance(v, str) and v:
            return one_line(redact(v, secrets))
    errs = data.get("errors")
    if isinstance(errs, list) and errs and isinstance(errs[0], dict):
        m = errs[0].get("message")
        if isinstance(m, str):
            return one_line(redact(m, secrets))
    return ""
