"""The local store: content-addressed blobs and SQLite metadata."""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
from pathlib import Path

import pytest

from imgpull.errors import DigestMismatchError, StoreError
from imgpull.store import ImageRecord, LayerRecord, Store


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_put_and_read(tmp_path: Path) -> None:
    store = Store(tmp_path)
    data = b"hello world"
    path = store.content.put(data, digest(data))
    assert path == tmp_path / "blobs" / "sha256" / digest(data)[7:]
    assert store.content.read(digest(data)) == data
    # Nothing is left in the ingest area after a commit.
    assert list((tmp_path / "ingest" / "sha256").iterdir()) == []


def test_wrong_digest_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    wrong = digest(b"other")
    with pytest.raises(DigestMismatchError):
        store.content.put(b"hello", wrong)
    assert not store.content.exists(wrong)
    assert list((tmp_path / "blobs" / "sha256").iterdir()) == []


def test_partial_ingest_is_resumed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    data = bytes(range(256)) * 4096
    d = digest(data)
    with store.content.ingest(d, len(data)) as writer:
        assert writer is not None
        writer.write(data[:1000])
    # A later attempt (or process) continues where the first stopped.
    assert store.content.partial_size(d) == 1000
    with store.content.ingest(d, len(data)) as writer:
        assert writer is not None
        assert writer.offset == 1000
        writer.write(data[1000:])
        store.content.commit(writer)
    assert store.content.read(d) == data
    with store.content.ingest(d, len(data)) as writer:
        assert writer is None


def test_lock_file_left_by_a_kill_after_commit_is_removed(tmp_path: Path) -> None:
    # kill -9 between the rename into blobs/ and the unlink of the lock file:
    # the next look at the blob removes the litter (a pull skips the blob,
    # so ingest() never runs for it again).
    store = Store(tmp_path)
    data = b"committed"
    store.content.put(data, digest(data))
    lock = tmp_path / "ingest" / "sha256" / f"{digest(data)[7:]}.lock"
    lock.touch()
    assert store.content.exists(digest(data))
    assert not lock.exists()
    # A held lock is left to its holder (here an `rmi` about to delete the
    # blob): removed under it, a newcomer could lock a new file at that path
    # and a second one a third, two writers of one blob at once.
    with store.content.locked(digest(data)):
        assert lock.exists()
        assert store.content.exists(digest(data))
        assert lock.exists()
    assert not lock.exists()
    # A lock of a blob not committed is someone's: left alone.
    absent = tmp_path / "ingest" / "sha256" / f"{digest(b'absent')[7:]}.lock"
    absent.touch()
    assert not store.content.exists(digest(b"absent"))
    assert absent.exists()


def test_one_writer_per_digest_across_threads(tmp_path: Path) -> None:
    store = Store(tmp_path)
    data = b"x" * 100_000
    d = digest(data)
    writers = []

    def work() -> None:
        with store.content.ingest(d, len(data)) as writer:
            writers.append(writer)
            if writer is not None:
                writer.write(data)
                store.content.commit(writer)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(w is not None for w in writers) == 1
    assert store.content.read(d) == data


def _put_in_process(root: str, data: bytes) -> None:
    Store(root).content.put(data, digest(data))


def test_two_processes_same_blob(tmp_path: Path) -> None:
    data = b"y" * 3_000_000
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_put_in_process, args=(str(tmp_path), data)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert Store(tmp_path).content.read(digest(data)) == data


def image(image_id: str) -> ImageRecord:
    return ImageRecord(
        id=image_id,
        manifest_digest="sha256:" + "m" * 64,
        media_type="x",
        os="linux",
        architecture="amd64",
        variant=None,
        created=None,
        size=10,
        pulled_at=0.0,
    )


def test_remove_damaged_checks_again_under_the_lock(tmp_path: Path) -> None:
    store = Store(tmp_path)
    data = b"layer bytes"
    path = store.content.put(data, digest(data))
    assert store.content.size_problem(digest(data), len(data)) is None
    assert store.content.size_problem(digest(data), len(data) + 1) == (
        f"is {len(data)} bytes, not {len(data) + 1}"
    )

    def hashes_wrong(p: Path) -> bool:
        return digest(p.read_bytes()) != digest(data)

    # A sound file (say, a good copy committed since it was found damaged) stays.
    assert not store.remove_damaged(digest(data), hashes_wrong)
    assert path.is_file()
    path.chmod(0o644)
    path.write_bytes(b"layer bytez")  # the same size: only a hash tells
    assert store.content.size_problem(digest(data), len(data)) is None
    assert store.remove_damaged(digest(data), hashes_wrong)
    assert not path.exists()
    assert store.content.size_problem(digest(data), len(data)) == "is missing"
    assert not store.remove_damaged(digest(data), hashes_wrong)  # gone already
    # Its lock file went with it; a pull can store it again.
    assert list((tmp_path / "ingest" / "sha256").iterdir()) == []
    store.content.put(data, digest(data))
    assert store.content.read(digest(data)) == data


def test_references_report_changes(tmp_path: Path) -> None:
    meta = Store(tmp_path).meta
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    meta.add_image(image(a), [LayerRecord("sha256:" + "1" * 64, 5, "t")])
    meta.add_image(image(b), [])
    name = "docker.io/library/x"
    assert meta.set_reference(f"{name}:1", name, "1", None, a) is True
    assert meta.set_reference(f"{name}:1", name, "1", None, a) is False
    assert meta.set_reference(f"{name}:1", name, "1", None, b) is True
    assert meta.resolve(f"{name}:1") == b
    assert meta.image_layers(a)[0].size == 5
    # It survives a reopen.
    assert Store(tmp_path).meta.resolve(f"{name}:1") == b


def test_blob_sources(tmp_path: Path) -> None:
    meta = Store(tmp_path).meta
    d = "sha256:" + "c" * 64
    meta.record_blob(d, 1, "t", "reg:5000", "a/b")
    meta.record_blob(d, 1, "t", "reg:5000", "c/d")
    meta.record_blob(d, 1, "t", "reg:5000", "a/b")
    assert meta.blob_sources(d) == [("reg:5000", "a/b"), ("reg:5000", "c/d")]


def test_unusable_root(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot create the store"):
        Store(blocker / "root")
