"""A tiny fake v2 registry on loopback, for what a real registry will not serve.

The real ``docker-registry`` (support.registry) validates what is pushed and
always answers correctly, so it cannot serve a malformed manifest, a body
whose bytes lie about their digest, a 5 MiB manifest, or a tag it serves by
tag but not by digest. This server speaks just enough of the distribution
API for a pull: ``GET /v2/``, ``HEAD``/``GET`` of manifests by tag or digest,
``GET`` of blobs (with ``Range``) and ``GET`` of ``tags/list`` (paged with
``Link`` when ``tags_page_size`` is set), all answered from in-memory tables
the test fills; and blob bodies that never end (``add_endless_blob``).
Everything else is a 404.

    with FakeRegistry() as fake:
        fake.add_image("test/good", "v1", image_info)  # from support.images
        fake.add_manifest("test/bad", "v1", b"{not json", MT_OCI_MANIFEST)
        ... imgpull pull fake.ref("test/bad:v1") ...
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from .httpthread import ServerThread
from .images import ImageInfo
from .process import Managed

_MANIFEST_PATH = re.compile(r"^/v2/(?P<repo>.+)/manifests/(?P<ref>[^/]+)$")
_BLOB_PATH = re.compile(r"^/v2/(?P<repo>.+)/blobs/(?P<digest>[^/]+)$")
_TAGS_PATH = re.compile(r"^/v2/(?P<repo>.+)/tags/list$")
_RANGE = re.compile(r"^bytes=(\d+)-$")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class FakeManifest:
    """How one manifest is served.

    ``digest`` is what ``Docker-Content-Digest`` says (default: the true
    digest of ``body``; set it to lie). ``content_length=False`` sends the
    body chunked, without ``Content-Length``. ``head=False`` answers HEAD
    with 405, as some registries do.
    """

    body: bytes
    media_type: str
    digest: str | None = None
    content_length: bool = True
    head: bool = True

    @property
    def sent_digest(self) -> str:
        return self.digest if self.digest is not None else sha256_digest(self.body)


@dataclass
class EndlessBlob:
    """A blob body that never ends as far as a client can tell: chunked, no
    Content-Length, ``prefix`` then zeros, whatever the Range. It stops after
    ``cap`` bytes all the same (the test's own bound: nothing runs forever);
    ``sent`` counts the bytes written to clients."""

    prefix: bytes = b""
    cap: int = 1 << 30
    sent: int = 0


@dataclass(frozen=True)
class Request:
    method: str
    path: str


class FakeRegistry(Managed):
    """A loopback HTTP server answering from ``manifests``, ``blobs`` and ``tags``."""

    def __init__(self) -> None:
        self.manifests: dict[tuple[str, str], FakeManifest] = {}
        self.blobs: dict[str, bytes] = {}
        self.endless: dict[str, EndlessBlob] = {}
        self.tags: dict[str, list[str]] = {}
        # When set, tags/list answers this many tags a page, with a Link to the next.
        self.tags_page_size: int | None = None
        # When set, every request but the ping is answered with this status
        # (a registry error body; `Retry-After: 0` with a 429): a broken mirror.
        self.fail_with: int | None = None
        self._log: list[Request] = []
        self._lock = threading.Lock()
        self._serving: ServerThread | None = None

    # -- content ------------------------------------------------------------

    def add_blob(self, data: bytes) -> str:
        digest = sha256_digest(data)
        self.blobs[digest] = data
        return digest

    def add_endless_blob(self, digest: str, prefix: bytes = b"", cap: int = 1 << 30) -> EndlessBlob:
        """Serve ``digest`` as an endless body (see EndlessBlob)."""
        blob = EndlessBlob(prefix, cap)
        self.endless[digest] = blob
        return blob

    def add_manifest(
        self,
        repo: str,
        tag: str | None,
        body: bytes | dict[str, Any],
        media_type: str,
        *,
        by_digest: bool = True,
        **options: Any,
    ) -> str:
        """Serve ``body`` as ``repo:tag`` (when a tag is given) and, with
        ``by_digest``, as ``repo@<digest>`` (the digest it claims, see
        FakeManifest). Returns that digest. ``options`` go to FakeManifest."""
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        entry = FakeManifest(raw, media_type, **options)
        if tag is not None:
            self.manifests[(repo, tag)] = entry
            if tag not in self.tags.setdefault(repo, []):
                self.tags[repo].append(tag)
        if by_digest:
            self.manifests[(repo, entry.sent_digest)] = entry
        return entry.sent_digest

    def add_image(
        self, repo: str, tag: str | None, image: ImageInfo, *, by_digest: bool = True
    ) -> str:
        """Serve an image written by support.images (its OCI manifest and blobs)."""
        for digest in (image.config_digest, *image.layer_digests):
            self.blobs[digest] = image.blob(digest)
        raw = image.blob(image.manifest_digest)
        return self.add_manifest(repo, tag, raw, image.manifest["mediaType"], by_digest=by_digest)

    # -- addresses and log ----------------------------------------------------

    @property
    def host(self) -> str:
        assert self._serving is not None, "not started"
        return self._serving.host

    def ref(self, repo_ref: str) -> str:
        """``127.0.0.1:PORT/<repo_ref>``."""
        return f"{self.host}/{repo_ref}"

    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def _record(self, method: str, path: str) -> None:
        with self._lock:
            self._log.append(Request(method, path))

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> FakeRegistry:
        self._serving = ServerThread("127.0.0.1", _handler_for(self), "fake-registry")
        return self

    def stop(self) -> None:
        if self._serving is not None:
            self._serving.stop()
            self._serving = None


def _handler_for(fake: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the request log is fake.requests()

        def do_GET(self) -> None:
            self._answer(head=False)

        def do_HEAD(self) -> None:
            self._answer(head=True)

        def _answer(self, *, head: bool) -> None:
            try:
                self._route(head=head)
            except (BrokenPipeError, ConnectionResetError):
                # The client hung up mid-body (e.g. a manifest over its limit).
                self.close_connection = True

        def _route(self, *, head: bool) -> None:
            path = self.path.split("?", 1)[0]
            fake._record(self.command, path)
            if path == "/v2/" or path == "/v2":
                self._send(200, b"{}", "application/json", head=head)
                return
            if fake.fail_with is not None:
                status = fake.fail_with
                body = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "failing"}]})
                retry = [("Retry-After", "0")] if status == 429 else []
                self._send(status, body.encode(), "application/json", head=head, extra=retry)
                return
            m = _MANIFEST_PATH.match(path)
            if m:
                entry = fake.manifests.get((m["repo"], m["ref"]))
                if entry is None:
                    self._error(404, "MANIFEST_UNKNOWN", "manifest unknown", head=head)
                elif head and not entry.head:
                    self._send(405, b"", "text/plain", head=True)
                else:
                    self._send(
                        200,
                        entry.body,
                        entry.media_type,
                        head=head,
                        extra=[("Docker-Content-Digest", entry.sent_digest)],
                        chunked=not entry.content_length,
                    )
                return
            m = _BLOB_PATH.match(path)
            if m and m["digest"] in fake.endless:
                self._endless(fake.endless[m["digest"]], head=head)
                return
            if m:
                data = fake.blobs.get(m["digest"])
                if data is None:
                    self._error(404, "BLOB_UNKNOWN", "blob unknown to registry", head=head)
                    return
                extra = [("Docker-Content-Digest", m["digest"]), ("Accept-Ranges", "bytes")]
                rng = _RANGE.match(self.headers.get("Range", ""))
                if rng and int(rng[1]) < len(data):
                    start = int(rng[1])
                    extra.append(("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}"))
                    self._send(
                        206, data[start:], "application/octet-stream", head=head, extra=extra
                    )
                else:
                    self._send(200, data, "application/octet-stream", head=head, extra=extra)
                return
            m = _TAGS_PATH.match(path)
            if m and m["repo"] in fake.tags:
                tags, extra = fake.tags[m["repo"]], []
                size = fake.tags_page_size
                if size is not None:
                    last = parse_qs(urlsplit(self.path).query).get("last", [""])[0]
                    start = tags.index(last) + 1 if last in tags else 0
                    if start + size < len(tags):
                        nxt = f"{path}?n={size}&last={quote(tags[start + size - 1])}"
                        extra.append(("Link", f'<{nxt}>; rel="next"'))
                    tags = tags[start : start + size]
                listing = json.dumps({"name": m["repo"], "tags": tags}).encode()
                self._send(200, listing, "application/json", head=head, extra=extra)
                return
            self._error(404, "NAME_UNKNOWN", "repository name not known to registry", head=head)

        def _endless(self, blob: EndlessBlob, *, head: bool) -> None:
            self.send_response(200)
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            self.send_header("Content-Type", "application/octet-stream")
            if head:
                self.end_headers()
                return
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.close_connection = True
            zeros = bytes(64 * 1024)
            pending = blob.prefix
            left = blob.cap
            while left > 0:
                piece = (pending or zeros)[:left]
                pending = pending[len(piece) :]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                with fake._lock:
                    blob.sent += len(piece)
                left -= len(piece)
            self.wfile.write(b"0\r\n\r\n")

        def _error(self, status: int, code: str, message: str, *, head: bool) -> None:
            body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
            self._send(status, body, "application/json", head=head)

        def _send(
            self,
            status: int,
            body: bytes,
            content_type: str,
            *,
            head: bool,
            extra: list[tuple[str, str]] | None = None,
            chunked: bool = False,
        ) -> None:
            self.send_response(status)
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            if content_type:
                self.send_header("Content-Type", content_type)
            for key, value in extra or []:
                self.send_header(key, value)
            if chunked and not head:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                step = 64 * 1024
                for i in range(0, len(body), step):
                    piece = body[i : i + step]
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
                return
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

    return Handler
