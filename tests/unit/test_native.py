"""The native module (imgpull._core) through Python: writer semantics, typed
errors with their attributes, the GIL being released, the Fetcher's
arguments. Local files only (its fetches against a loopback server:
e2e/test_native_fetch.py)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
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


# --- Fetcher arguments (fetches: e2e/test_native_fetch.py) ----------------


def test_fetcher_arguments_are_keyword_only(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        Fetcher("ua")  # type: ignore[call-arg]
    with pytest.raises(FileNotFoundError):
        Fetcher(user_agent="x", ca_file=str(tmp_path / "none.pem"))
    with pytest.raises(ValueError):
        Fetcher(user_agent="x", read_timeout=0)
