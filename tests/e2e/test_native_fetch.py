"""The native fetcher (imgpull._core.Fetcher) against a loopback http.server:
a body, a resumed and an ignored Range, statuses, a short body, a redirect
that drops Authorization, a refused connection, progress and cancel from
another thread. No registry needed (the writer and the errors alone:
unit/test_native.py)."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgpull._core import BlobWriter, Fetcher, FetchError, Transfer

pytestmark = pytest.mark.timeout(120)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


BODY = bytes(range(256)) * 2048 + b"end"  # 512 KiB + 3


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, str]]  # set per server
    other_port: int

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.seen.append({k.lower(): v for k, v in self.headers.items()})
        if self.path == "/blob":
            rng = self.headers.get("Range")
            if rng:
                start = int(rng.removeprefix("bytes=").rstrip("-"))
                cr = f"bytes {start}-{len(BODY) - 1}/{len(BODY)}"
                self.send(206, BODY[start:], {"Content-Range": cr})
            else:
                self.send(200, BODY, {"Docker-Content-Digest": digest_of(BODY)})
        elif self.path == "/ignores-range":
            self.send(200, BODY)
        elif self.path == "/missing":
            self.send(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
        elif self.path == "/short":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY[:100_000])
            self.close_connection = True
        elif self.path == "/redirect":
            self.send(307, b"", {"Location": f"http://127.0.0.1:{self.other_port}/blob"})
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            for i in range(0, len(BODY), 16 * 1024):
                try:
                    self.wfile.write(BODY[i : i + 16 * 1024])
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.02)
        else:
            self.send(500, b"unexpected path")


class Server:
    def __init__(self, other_port: int = 0) -> None:
        self.seen: list[dict[str, str]] = []
        handler = type("H", (Handler,), {"seen": self.seen, "other_port": other_port})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[tuple[Server, Server]]:
    """(storage, registry): the registry redirects /redirect to storage."""
    storage = Server()
    registry = Server(other_port=storage.port)
    yield storage, registry
    registry.close()
    storage.close()


@pytest.fixture
def fetcher() -> Fetcher:
    return Fetcher(user_agent="imgpull-test", read_timeout=10.0)


def new_writer(tmp_path: Path) -> BlobWriter:
    return BlobWriter(str(tmp_path / "partial"), digest_of(BODY), len(BODY))


def test_fetch_200(tmp_path: Path, servers: tuple[Server, Server], fetcher: Fetcher) -> None:
    storage, _ = servers
    w, t = new_writer(tmp_path), Transfer()
    res = fetcher.fetch_blob(storage.url("/blob"), [("Accept", "*/*")], w, t)
    assert (res.status, res.written, res.body, res.url) == (
        200,
        len(BODY),
        b"",
        storage.url("/blob"),
    )
    assert ("docker-content-digest", digest_of(BODY)) in res.headers
    assert t.received == len(BODY) and not t.cancelled
    assert "accept-encoding" not in storage.seen[0]
    assert storage.seen[0]["user-agent"] == "imgpull-test"
    w.commit(str(tmp_path / "blob"))
    assert (tmp_path / "blob").read_bytes() == BODY


def test_fetch_resume_and_ignored_range(
    tmp_path: Path, servers: tuple[Server, Server], fetcher: Fetcher
) -> None:
    storage, _ = servers
    w = new_writer(tmp_path)
    w.write(BODY[:1000])
    res = fetcher.fetch_blob(storage.url("/blob"), [("Range", f"bytes={w.offset}-")], w)
    assert (res.status, res.written, w.offset) == (206, len(BODY) - 1000, len(BODY))
    w.truncate()
    w.write(b"stale")
    res = fetcher.fetch_blob(storage.url("/ignores-range"), [("Range", "bytes=5-")], w)
    assert (res.status, res.written, w.offset) == (200, len(BODY), len(BODY))
    w.commit(str(tmp_path / "blob"))


def test_fetch_404_returns_status(
    tmp_path: Path, servers: tuple[Server, Server], fetcher: Fetcher
) -> None:
    storage, _ = servers
    w = new_writer(tmp_path)
    res = fetcher.fetch_blob(storage.url("/missing"), [], w)
    assert (res.status, res.written, w.offset) == (404, 0, 0)
    assert b"BLOB_UNKNOWN" in res.body


def test_fetch_short_body_is_retryable(
    tmp_path: Path, servers: tuple[Server, Server], fetcher: Fetcher
) -> None:
    storage, _ = servers
    w = new_writer(tmp_path)
    with pytest.raises(FetchError) as info:
        fetcher.fetch_blob(storage.url("/short"), [], w)
    assert (info.value.kind, info.value.retryable) == ("io", True)
    assert w.offset == 100_000


def test_redirect_drops_authorization(
    tmp_path: Path, servers: tuple[Server, Server], fetcher: Fetcher
) -> None:
    storage, registry = servers
    w = new_writer(tmp_path)
    auth = [("Authorization", "Bearer t0ken")]
    res = fetcher.fetch_blob(registry.url("/redirect"), auth, w)
    assert (res.status, res.url) == (200, storage.url("/blob"))
    assert registry.seen[0]["authorization"] == "Bearer t0ken"
    assert "authorization" not in storage.seen[0]


def test_connection_refused(tmp_path: Path, fetcher: Fetcher) -> None:
    srv = Server()
    url = srv.url("/blob")
    srv.close()
    with pytest.raises(FetchError) as info:
        fetcher.fetch_blob(url, [], new_writer(tmp_path))
    assert (info.value.kind, info.value.retryable) == ("connect", True)


def test_progress_and_cancel_from_another_thread(
    tmp_path: Path, servers: tuple[Server, Server], fetcher: Fetcher
) -> None:
    # The server is Python too: it only gets to send while fetch_blob has
    # the GIL released.
    storage, _ = servers
    w, t = new_writer(tmp_path), Transfer()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fetcher.fetch_blob(storage.url("/slow"), [], w, t)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 10
    while t.received < 64 * 1024 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert 0 < t.received < len(BODY)
    t.cancel()
    thread.join(10)
    assert not thread.is_alive()
    assert t.cancelled
    assert len(errors) == 1 and isinstance(errors[0], FetchError)
    assert (errors[0].kind, errors[0].retryable) == ("cancelled", False)
    assert w.offset == t.received
