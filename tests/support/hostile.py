"""A hostile v2 registry on loopback, for the trust tests (e2e/test_hostile.py).

Three small servers, threads of the test process, each on a free port and
each logging every request it gets (with its ``Authorization`` header and
body), so a test can check where a credential went:

* the **registry** (127.0.0.1): serves an image (``add_image``) behind no
  auth, Basic, or Bearer auth, and misbehaves as told: ``redirects`` a path
  to another URL (307), ``trickle``s a kind of answer (``trickle_head``: its
  headers too) one byte every ``trickle_interval`` seconds, goes ``silent``
  (after the headers; ``silent_head``: before them) until the client hangs
  up, logging when it did (``silences``), answers with an error
  (``error_status``, optionally echoing back the credentials it got);
* its **realm** (127.0.0.1, another port): the token server the registry
  itself names, which checks the Basic credentials or an identity token
  (OAuth POST) and hands out tokens, or redirects (``realm_redirect``);
* the **evil** host (127.0.0.2): answers every request 401 with a challenge
  of its own (``Bearer`` with a realm on itself, or ``Basic``), and hands out
  a token at ``/token`` to whoever asks.

Every behaviour is bounded: a trickle or a silence stops after
``trickle_limit`` seconds or when the client hangs up, and stopping the
servers ends every handler.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from .fakeregistry import sha256_digest
from .httpthread import ServerThread
from .images import ImageInfo
from .process import Managed

Kind = Literal["ping", "manifest", "blob", "tags", "token", "error"]
AuthMode = Literal["none", "basic", "bearer"]

_MANIFEST = re.compile(r"^/v2/(?P<repo>.+)/manifests/(?P<ref>[^/]+)$")
_BLOB = re.compile(r"^/v2/(?P<repo>.+)/blobs/(?P<digest>[^/]+)$")
_TAGS = re.compile(r"^/v2/(?P<repo>.+)/tags/list$")
_REPO = re.compile(r"^/v2/(?P<repo>.+)/(?:manifests|blobs|tags)/")
# Request bodies (token forms) are small; a bigger one is not read.
_MAX_REQUEST_BODY = 64 * 1024


@dataclass(frozen=True)
class Seen:
    """One request a server got."""

    method: str
    target: str  # path and query
    authorization: str | None
    body: bytes

    def mentions(self, secret: str) -> bool:
        """Whether `secret` is anywhere in this request (header, URL, body)."""
        return any(
            secret in text
            for text in (self.authorization or "", self.target, self.body.decode("latin-1"))
        )


@dataclass
class Silence:
    """One answer a server held back: when it began (time.monotonic()) and
    when the client hung up (None: not yet, or it never did)."""

    target: str
    began: float
    hung_up: float | None = None


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"
    # Seconds between bytes of the body (None: all at once); with
    # trickle_head, of the status line and headers too.
    trickle: float | None = None
    trickle_head: bool = False
    # Nothing more after the headers (with silent_head, or for a HEAD:
    # nothing at all) until the client hangs up.
    silent: bool = False
    silent_head: bool = False


Route = Callable[["Request"], Answer]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    authorization: str | None
    body: bytes


class Host:
    """One loopback HTTP server answering through `route`, logging requests."""

    def __init__(self, name: str, bind: str, route: Route, stopping: threading.Event) -> None:
        self.name = name
        self._bind = bind
        self._route = route
        self._stopping = stopping
        self._log: list[Seen] = []
        self._lock = threading.Lock()
        self._serving: ServerThread | None = None
        self.trickle_limit = 20.0
        self._silences: list[Silence] = []

    @property
    def host(self) -> str:
        assert self._serving is not None, "not started"
        return self._serving.host

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self._log)

    def silences(self) -> list[Silence]:
        with self._lock:
            return list(self._silences)

    def _silence(self, target: str, sock: socket.socket) -> None:
        """Hold the answer to `target` until the client hangs up (bounded)."""
        silence = Silence(target, time.monotonic())
        with self._lock:
            self._silences.append(silence)
        give_up = silence.began + self.trickle_limit
        while time.monotonic() < give_up and self._pause(0):
            if not select.select([sock], [], [], 0.02)[0]:
                continue
            try:
                gone = not sock.recv(1, socket.MSG_PEEK)
            except OSError:
                gone = True
            if gone:
                silence.hung_up = time.monotonic()
                return
            self._pause(0.02)  # bytes of a next request: not a hang-up

    def start(self) -> None:
        self._serving = ServerThread(self._bind, _handler(self), f"hostile-{self.name}")

    def stop(self) -> None:
        if self._serving is not None:
            self._serving.stop()
            self._serving = None

    def _handle(self, req: Request) -> Answer:
        with self._lock:
            self._log.append(
                Seen(
                    req.method,
                    req.path + (f"?{req.query}" if req.query else ""),
                    req.authorization,
                    req.body,
                )
            )
        return self._route(req)

    def _pause(self, seconds: float) -> bool:
        """Wait; False when the servers are stopping."""
        return not self._stopping.wait(seconds)


def _handler(host: Host) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the log is Host.seen()

        def do_GET(self) -> None:
            self._serve()

        def do_HEAD(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, _MAX_REQUEST_BODY)) if length else b""
            parts = urlsplit(self.path)
            req = Request(
                self.command, parts.path, parts.query, self.headers.get("Authorization"), body
            )
            try:
                self._write(host._handle(req))
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up: so does the trickle

        def _write(self, answer: Answer) -> None:
            lines = [f"HTTP/1.1 {answer.status} X", "Docker-Distribution-API-Version: registry/2.0"]
            if answer.content_type:
                lines.append(f"Content-Type: {answer.content_type}")
            lines += [f"{key}: {value}" for key, value in answer.headers]
            lines.append(f"Content-Length: {len(answer.body)}")
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            body = b"" if self.command == "HEAD" else answer.body
            if answer.silent:
                if not answer.silent_head and self.command != "HEAD":
                    self.wfile.write(head)  # the body never comes
                    self.wfile.flush()
                self.close_connection = True
                host._silence(self.path, self.connection)
            elif answer.trickle is None:
                self.wfile.write(head + body)
            elif answer.trickle_head:
                self._trickle(head + body, answer.trickle)
            else:
                self.wfile.write(head)
                self._trickle(body, answer.trickle)

        def _trickle(self, data: bytes, interval: float) -> None:
            self.wfile.flush()
            give_up = time.monotonic() + host.trickle_limit
            for i in range(len(data)):
                if time.monotonic() > give_up or not host._pause(interval):
                    self.close_connection = True
                    return
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()

    return Handler


_KINDS: tuple[tuple[re.Pattern[str], Kind], ...] = (
    (_MANIFEST, "manifest"),
    (_BLOB, "blob"),
    (_TAGS, "tags"),
)


def _kind_of(path: str) -> Kind:
    return next((kind for pattern, kind in _KINDS if pattern.match(path)), "error")


def _json(data: object) -> bytes:
    return json.dumps(data).encode()


def _error_body(code: str, message: str) -> bytes:
    return _json({"errors": [{"code": code, "message": message}]})


def basic(user: str, password: str) -> str:
    """The Basic ``Authorization`` value of user:password."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class HostileRegistry(Managed):
    """The registry, its token realm and the evil host (see the module doc).

    ``auth`` is how the registry authenticates: ``basic`` wants ``user`` and
    ``password`` on every request; ``bearer`` wants a token of its realm,
    which asks the same Basic credentials. ``evil_scheme`` is the challenge
    the evil host answers with.
    """

    def __init__(
        self,
        *,
        auth: AuthMode = "none",
        user: str = "",
        password: str = "",
        evil_scheme: Literal["bearer", "basic"] = "bearer",
    ) -> None:
        self.auth = auth
        self.user = user
        self.password = password
        self.evil_scheme = evil_scheme
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.blobs: dict[str, bytes] = {}
        self.tags: dict[str, list[str]] = {}
        # When set, every tags/list is paged: page N (from 0) holds
        # tag_pages(N), made as it is asked for (pages may be huge), with a
        # Link to the next until tag_page_count pages.
        self.tag_pages: Callable[[int], list[str]] | None = None
        self.tag_page_count = 0
        # Path -> absolute URL: GET/HEAD of that path answered 307 there.
        self.redirects: dict[str, str] = {}
        # Kinds of answer whose body is sent one byte every trickle_interval
        # seconds; in trickle_head, status line and headers too.
        self.trickle: set[Kind] = set()
        self.trickle_head: set[Kind] = set()
        self.trickle_interval = 1.0
        # Kinds of answer (or blob digests) held back until the client hangs
        # up: after the headers, or in silent_head before them (Host.silences).
        self.silent: set[str] = set()
        self.silent_head: set[str] = set()
        # When set, the requests of `error_on` get this status and an
        # error body with `error_message` (after authentication).
        self.error_status: int | None = None
        self.error_on: set[Kind] = {"manifest", "blob", "tags"}
        self.error_message = "denied"
        # Extra headers of that error answer.
        self.error_headers: list[tuple[str, str]] = []
        # Append the credentials got (the Authorization header, a Basic one
        # decoded, a token form's secret) to the registry's and the realm's
        # error messages: a server echoing them back.
        self.error_echo = False
        self.tokens: set[str] = set()
        # The refresh token the realm accepts (grant_type=refresh_token).
        self.identity_token = ""
        # When set, the realm answers every token request 307 there.
        self.realm_redirect: str | None = None
        self._stopping = threading.Event()
        self.registry = Host("registry", "127.0.0.1", self._registry_route, self._stopping)
        self.realm = Host("realm", "127.0.0.1", self._realm_route, self._stopping)
        self.evil = Host("evil", "127.0.0.2", self._evil_route, self._stopping)

    # -- content ------------------------------------------------------------

    def add_image(self, repo: str, tag: str, image: ImageInfo) -> str:
        """Serve an image of support.images as repo:tag (and by digest)."""
        for digest in image.blob_digests:
            self.blobs[digest] = image.blob(digest)
        raw = image.blob(image.manifest_digest)
        media_type = image.manifest["mediaType"]
        self.manifests[(repo, tag)] = self.manifests[(repo, image.manifest_digest)] = (
            raw,
            media_type,
        )
        self.tags.setdefault(repo, []).append(tag)
        return image.manifest_digest

    # -- addresses ----------------------------------------------------------

    @property
    def host(self) -> str:
        return self.registry.host

    def ref(self, repo_ref: str) -> str:
        return f"{self.registry.host}/{repo_ref}"

    def silences(self) -> list[Silence]:
        """The answers held back, by the registry and by its realm."""
        return sorted(self.registry.silences() + self.realm.silences(), key=lambda s: s.began)

    def redirect_to_evil(self, path: str) -> None:
        """GET/HEAD of `path` (e.g. /v2/test/a/manifests/v1) goes to the evil host."""
        self.redirects[path] = f"{self.evil.url}/storage{path}"

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> HostileRegistry:
        for h in (self.realm, self.evil, self.registry):
            h.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        for h in (self.registry, self.realm, self.evil):
            h.stop()

    # -- the registry -------------------------------------------------------

    def _challenge(self, path: str) -> str:
        if self.auth == "basic":
            return 'Basic realm="hostile"'
        m = _REPO.match(path)
        scope = f',scope="repository:{m["repo"]}:pull"' if m else ""
        return f'Bearer realm="{self.realm.url}/token",service="hostile"{scope}'

    def _authorized(self, got: str | None) -> bool:
        if self.auth == "none":
            return True
        if self.auth == "basic":
            return got == basic(self.user, self.password)
        return got is not None and got.removeprefix("Bearer ") in self.tokens

    def _registry_route(self, req: Request) -> Answer:
        ping = req.path in ("/v2/", "/v2")
        kind: Kind = "ping" if ping else "error"
        if ping and req.path in self.redirects:
            # As a front proxy would: before authentication.
            answer = Answer(307, b"", [("Location", self.redirects[req.path])], "")
        elif not self._authorized(req.authorization):
            answer = Answer(
                401,
                _error_body("UNAUTHORIZED", "authentication required"),
                [("WWW-Authenticate", self._challenge(req.path))],
            )
        elif req.path in self.redirects:
            answer = Answer(307, b"", [("Location", self.redirects[req.path])], "")
        elif req.path in ("/v2/", "/v2"):
            answer = Answer(200, b"{}")
        elif self.error_status is not None and _kind_of(req.path) in self.error_on:
            kind = "error"
            message = self.error_message
            if self.error_echo:
                message += f" (you sent {req.authorization}{self._decoded(req.authorization)})"
            answer = Answer(
                self.error_status, _error_body("DENIED", message), list(self.error_headers)
            )
        else:
            kind, answer = self._content(req.path, req.query)
        return self._paced(kind, answer, req.path)

    def _paced(self, kind: Kind, answer: Answer, path: str) -> Answer:
        names = {kind, path.rsplit("/", 1)[-1]}  # a blob also by its digest
        if names & (self.silent | self.silent_head):
            answer.silent = True
            answer.silent_head = bool(names & self.silent_head)
        elif kind in self.trickle or kind in self.trickle_head:
            answer.trickle = self.trickle_interval
            answer.trickle_head = kind in self.trickle_head
            if answer.content_type == "application/json":
                # Trailing white space, so that even `{}` takes a while.
                answer.body += b" " * 64
        return answer

    @staticmethod
    def _decoded(authorization: str | None) -> str:
        if authorization is None or not authorization.startswith("Basic "):
            return ""
        return ", that is " + base64.b64decode(authorization[6:]).decode(errors="replace")

    def _content(self, path: str, query: str = "") -> tuple[Kind, Answer]:
        m = _MANIFEST.match(path)
        if m:
            found = self.manifests.get((m["repo"], m["ref"]))
            if found is None:
                return "error", Answer(404, _error_body("MANIFEST_UNKNOWN", "manifest unknown"))
            raw, media_type = found
            return "manifest", Answer(
                200, raw, [("Docker-Content-Digest", sha256_digest(raw))], media_type
            )
        m = _BLOB.match(path)
        if m:
            data = self.blobs.get(m["digest"])
            if data is None:
                return "error", Answer(404, _error_body("BLOB_UNKNOWN", "blob unknown"))
            return "blob", Answer(200, data, [], "application/octet-stream")
        m = _TAGS.match(path)
        if m and self.tag_pages is not None:
            return "tags", self._tag_page(m["repo"], int(parse_qs(query).get("page", ["0"])[0]))
        if m and m["repo"] in self.tags:
            return "tags", Answer(200, _json({"name": m["repo"], "tags": self.tags[m["repo"]]}))
        return "error", Answer(404, _error_body("NAME_UNKNOWN", "repository name not known"))

    def _tag_page(self, repo: str, page: int) -> Answer:
        assert self.tag_pages is not None
        headers = []
        if page + 1 < self.tag_page_count:
            headers.append(("Link", f'</v2/{repo}/tags/list?page={page + 1}>; rel="next"'))
        return Answer(200, _json({"name": repo, "tags": self.tag_pages(page)}), headers)

    # -- the registry's own token realm ------------------------------------

    def _realm_route(self, req: Request) -> Answer:
        if req.path != "/token":
            return Answer(404, b"{}")
        if self.realm_redirect is not None:
            return Answer(307, b"", [("Location", self.realm_redirect)], "")
        if req.method == "POST":  # OAuth2 form: a password or a refresh (identity) token
            form = {k: v[0] for k, v in parse_qs(req.body.decode(errors="replace")).items()}
            sent = form.get("refresh_token") or form.get("password") or ""
            ok = (self.identity_token != "" and sent == self.identity_token) or (
                form.get("username") == self.user and sent == self.password
            )
        else:
            sent = f"{req.authorization}{self._decoded(req.authorization)}"
            ok = not self.user or req.authorization == basic(self.user, self.password)
        if not ok:
            echo = f" (you sent {sent})" if self.error_echo else ""
            return Answer(401, _json({"details": f"wrong credentials{echo}"}))
        token = "tok-" + secrets.token_hex(16)
        self.tokens.add(token)
        answer = Answer(200, _json({"token": token, "expires_in": 300}))
        return self._paced("token", answer, req.path)

    # -- the evil host --------------------------------------------------------

    def _evil_route(self, req: Request) -> Answer:
        if req.path == "/token":
            return Answer(200, _json({"token": "evil-token", "expires_in": 300}))
        if self.evil_scheme == "basic":
            challenge = 'Basic realm="evil"'
        else:
            challenge = f'Bearer realm="{self.evil.url}/token",service="evil"'
        return Answer(
            401,
            _error_body("UNAUTHORIZED", "evil wants your credentials"),
            [("WWW-Authenticate", challenge)],
        )
