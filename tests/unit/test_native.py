"""The native module (imgpull._core) through Python: writer semantics, typed
errors with their attributes, the GIL being released, and a fetch smoke test
against a loopback http.server. No registry needed."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imgpull import _core
from imgpull._core import (
    BlobWriter,
    DigestMismatchError,
    Fetcher,
    FetchError,
    ImgpullError,
    SizeMismatchError,
    Transfer,
)

pytestmark = pytest.mark.timeout(120)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def blob() -> bytes:
    return bytes(range(256)) * 4096 + b"tail"  # ~1 MiB, not chunk-aligned


# --- hashing ---------------------------------------------------------------


def test_version() -> None:
    assert _core.__version__.count(".") == 2


def test_sha256_bytes_and_file(tmp_path: Path, blob: bytes) -> None:
    assert _core.sha256_bytes(b"") == digest_of(b"")
    assert _core.sha256_bytes(blob) == digest_of(blob)
    (tmp_path / "f").write_bytes(blob)
    assert _core.sha256_file(str(tmp_path / "f")) == digest_of(blob)
    with pytest.raises(FileNotFoundError):
        _core.sha256_file(str(tmp_path / "missing"))


# --- BlobWriter ------------------------------------------------------------


def test_write_commit(tmp_path: Path, blob: bytes) -> None:
    partial, dest = tmp_path / "partial", tmp_path / "dest"
    w = BlobWriter(str(partial), digest_of(blob), len(blob))
    assert (w.path, w.digest, w.size, w.offset) == (str(partial), digest_of(blob), len(blob), 0)
    for i in range(0, len(blob), 100_000):
        w.write(blob[i : i + 100_000])
    assert w.offset == len(blob)
    w.commit(str(dest))
    assert dest.read_bytes() == blob
    assert not partial.exists()
    with pytest.raises(ValueError, match="closed"):
        w.write(b"x")


def test_unknown_size(tmp_path: Path) -> None:
    w = BlobWriter(str(tmp_path / "p"), digest_of(b"abc"))
    assert w.size is None
    w.write(b"abc")
    w.commit(str(tmp_path / "d"))
    assert (tmp_path / "d").read_bytes() == b"abc"


def test_reopen_resumes(tmp_path: Path, blob: bytes) -> None:
    partial = str(tmp_path / "partial")
    w = BlobWriter(partial, digest_of(blob), len(blob))
    w.write(blob[:300_000])
    w.close()
    w.close()
    w = BlobWriter(partial, digest_of(blob), len(blob))
    assert w.offset == 300_000
    w.write(blob[300_000:])
    w.commit(str(tmp_path / "dest"))
    assert (tmp_path / "dest").read_bytes() == blob


def test_truncate(tmp_path: Path) -> None:
    w = BlobWriter(str(tmp_path / "p"), digest_of(b"good"), 4)
    w.write(b"bad")
    w.truncate()
    assert w.offset == 0
    w.write(b"good")
    w.commit(str(tmp_path / "d"))
    assert (tmp_path / "d").read_bytes() == b"good"


def test_size_guard(tmp_path: Path) -> None:
    w = BlobWriter(str(tmp_path / "p"), digest_of(b"1234"), 4)
    w.write(b"12")
    with pytest.raises(SizeMismatchError) as info:
        w.write(b"345")
    assert (info.value.expected, info.value.actual) == (4, 5)
    assert isinstance(info.value, ImgpullError)
    assert w.offset == 2


def test_short_commit_raises_size_mismatch(tmp_path: Path) -> None:
    partial, dest = tmp_path / "p", tmp_path / "d"
    w = BlobWriter(str(partial), digest_of(b"1234"), 4)
    w.write(b"123")
    with pytest.raises(SizeMismatchError) as info:
        w.commit(str(dest))
    assert (info.value.expected, info.value.actual) == (4, 3)
    assert str(info.value) == "size mismatch: expected 4 bytes, got 3"
    assert not partial.exists()
    assert not dest.exists()


def test_digest_mismatch(tmp_path: Path) -> None:
    partial, dest = tmp_path / "p", tmp_path / "d"
    w = BlobWriter(str(partial), digest_of(b"good"), 4)
    w.write(b"evil")
    with pytest.raises(DigestMismatchError) as info:
        w.commit(str(dest))
    err = info.value
    assert (err.expected, err.actual) == (digest_of(b"good"), digest_of(b"evil"))
    assert str(err) == f"digest mismatch: expected {err.expected}, got {err.actual}"
    assert not partial.exists()
    assert not dest.exists()


def test_existing_dest_is_kept(tmp_path: Path) -> None:
    partial, dest = tmp_path / "p", tmp_path / "d"
    dest.write_bytes(b"data")
    w = BlobWriter(str(partial), digest_of(b"data"), 4)
    w.write(b"data")
    w.commit(str(dest))
    assert not partial.exists()
    assert dest.read_bytes() == b"data"


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid digest"):
        BlobWriter(str(tmp_path / "p"), "sha256:ABC")
    with pytest.raises(FileNotFoundError):
        BlobWriter(str(tmp_path / "no" / "p"), digest_of(b""))


def test_error_hierarchy() -> None:
    for cls in (DigestMismatchError, SizeMismatchError, FetchError):
        assert issubclass(cls, ImgpullError)
        assert cls.__module__ == "imgpull._core"
    # Class-level defaults: the attributes exist even when raised from Python.
    assert (FetchError("x").kind, FetchError("x").retryable) == ("io", False)


def test_one_writer_shared_by_threads_stays_consistent(tmp_path: Path) -> None:
    chunk = 64 * 1024
    w = BlobWriter(str(tmp_path / "p"), digest_of(b""))

    def work(byte: int) -> None:
        for _ in range(40):
            w.write(bytes([byte]) * chunk)

    threads = [threading.Thread(target=work, args=(b,)) for b in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    data = (tmp_path / "p").read_bytes()
    assert w.offset == len(data) == 3 * 40 * chunk
    # Each write landed whole: the file is a sequence of uniform chunks.
    for i in range(0, len(data), chunk):
        assert len(set(data[i : i + chunk])) == 1


# --- the GIL is released ---------------------------------------------------


def ticks_during(call: Callable[[], object]) -> int:
    """How often another Python thread got to run while `call` ran."""
    ticks = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    time.sleep(0.05)
    try:
        before = ticks
        call()
        return ticks - before
    finally:
        stop.set()
        spinner.join()


def test_write_releases_the_gil(tmp_path: Path) -> None:
    data = bytes(200 * 1024 * 1024)
    w = BlobWriter(str(tmp_path / "p"), digest_of(data), len(data))
    # With the GIL held for the whole call, the spinner could not tick.
    assert ticks_during(lambda: w.write(data)) > 1000
    assert ticks_during(lambda: w.commit(str(tmp_path / "d"))) >= 0
    assert ticks_during(lambda: _core.sha256_file(str(tmp_path / "d"))) > 1000


def test_two_threads_writing_both_progress(tmp_path: Path) -> None:
    data = bytes(50 * 1024 * 1024)
    writers = [BlobWriter(str(tmp_path / f"p{i}"), digest_of(data * 4)) for i in range(2)]
    done = [0, 0]

    def work(i: int) -> None:
        for _ in range(4):
            writers[i].write(data)
            done[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert done == [4, 4]
    for i, w in enumerate(writers):
        w.commit(str(tmp_path / f"d{i}"))


# --- fetch smoke test ------------------------------------------------------


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


def test_fetcher_arguments_are_keyword_only(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        Fetcher("ua")  # type: ignore[call-arg]
    with pytest.raises(FileNotFoundError):
        Fetcher(user_agent="x", ca_file=str(tmp_path / "none.pem"))
    with pytest.raises(ValueError):
        Fetcher(user_agent="x", read_timeout=0)


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
