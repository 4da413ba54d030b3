"""The content-addressed blob store: `blobs/sha256/<hex>` as in an OCI layout.

Bytes arrive through an ingest file (`ingest/sha256/<hex>`) that a native
BlobWriter appends to and hashes, and that commit() renames into `blobs/`
only once size and digest match. A lock file per digest makes one process
(and one thread) at a time the writer of a blob; the others wait and then
find it committed. Partial ingest files are kept on failure, so any later
process resumes them.

Resuming re-reads the partial file rather than saving the SHA-256 state next
to it (BlobWriter.open re-hashes the prefix, writer.rs). After a kill -9 or a
power cut the file's length and a separately saved hash state can disagree
(they reach the disk in no guaranteed order), while the file alone cannot
contradict itself; re-reading it from the page cache is cheap beside the
network (measured: ~1 GB/s for a blob, ~0.3 GB/s for a layer, which is
replayed through the decompressor too); and that replay is needed anyway, as
a decompressor's state cannot be saved. Wrong bytes (a torn write, zeros
after a power cut) fail the digest at commit, which removes the file, and the
puller starts that blob over once; a partial longer than the blob is started
over when opened; one as long as the blob is only verified (pull.py).

A blob fetched as several ranges at once (transfer.py) has its later chunks
written in place ahead of the writer; `<ingest>.chunks` (ChunkRecord) lists
the chunks finished, each line written after its bytes, so that a run after
a kill -9 keeps them: the writer then trusts the file's prefix up to the
first gap only, and the finished chunks past it are taken in when it gets
there. Whatever a record says, commit() verifies size and digest.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from imgpull._core import DEFAULT_MAX_RATIO, DEFAULT_MAX_UNSIZED, BlobWriter
from imgpull.errors import DiskFullError, PullCancelledError, StoreError
from imgpull.manifest import check_digest

# How often a cancellable wait for another process's blob looks again.
_LOCK_POLL = 0.05
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full(path: str | os.PathLike[str], then: str) -> DiskFullError:
    return DiskFullError(f"no space left on device writing {path}: free some space, then {then}")


def local_write_error(exc: BaseException) -> StoreError | None:
    """The StoreError for a local file error met while filling a blob
    (DiskFullError for ENOSPC/EDQUOT), or None when `exc` is not one.

    The BlobWriter, the native fetcher's writes and file calls all raise
    OSError with the file's name. Never retried: waiting does not free the disk.
    """
    if not isinstance(exc, OSError) or exc.filename is None:
        return None
    reason = exc.strerror or str(exc)
    if exc.errno in _FULL:
        return disk_full(exc.filename, "run the pull again (what was downloaded is kept)")
    return StoreError(f"cannot write {exc.filename}: {reason}")


class ChunkRecord:
    """The chunks of a blob's ingest file known to be in it, beside it as
    `<ingest>.chunks`: "prefix N" (bytes 0..N written in order) and
    "START END" (a chunk fetched in place) lines, appended after the bytes
    they name are in the file. Advisory: wrong bytes fail the digest."""

    def __init__(self, partial: str | os.PathLike[str]) -> None:
        self.path = Path(f"{os.fspath(partial)}.chunks")
        self._broken = False

    def exists(self) -> bool:
        return self.path.is_file()

    def begin(self, prefix: int, chunks: list[tuple[int, int]]) -> None:
        """A new record: the prefix, and chunks already in the file."""
        lines = [f"prefix {prefix}\n", *(f"{a} {b}\n" for a, b in chunks)]
        self._write("w", "".join(lines))

    def add(self, start: int, end: int) -> None:
        self._write("a", f"{start} {end}\n")

    def prefix(self, n: int) -> None:
        self._write("a", f"prefix {n}\n")

    def _write(self, mode: str, text: str) -> None:
        """Best effort: a record that cannot be written (a full disk) is
        removed, and a rerun trusts the file as it did before chunks (its
        holes fail the digest, and the blob starts over)."""
        if self._broken:
            return
        try:
            with self.path.open(mode) as f:
                f.write(text)
        except OSError:
            self._broken = True
            with suppress(OSError):
                self.remove()

    def load(self, size: int | None) -> tuple[int, list[tuple[int, int]]]:
        """(trusted prefix, finished chunks past it): only what lies within
        the file and the blob; (0, []) for a missing or unreadable record."""
        try:
            text = self.path.read_text()
            length = Path(os.fspath(self.path)[: -len(".chunks")]).stat().st_size
        except (OSError, UnicodeDecodeError):
            return 0, []
        limit = length if size is None else min(length, size)
        prefix, chunks = 0, []
        for line in text.splitlines():
            parts = line.split()
            try:
                if len(parts) == 2 and parts[0] == "prefix":
                    prefix = max(prefix, min(int(parts[1]), limit))
                elif len(parts) == 2:
                    a, b = int(parts[0]), int(parts[1])
                    if 0 <= a < b <= limit:
                        chunks.append((a, b))
            except ValueError:
                continue  # a torn last line
        chunks.sort()
        for a, b in chunks:
            if a <= prefix:
                prefix = max(prefix, b)
        return prefix, [(a, b) for a, b in chunks if b > prefix]

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class BlobLimits:
    """What a registry's bytes may make a writer take (BlobWriter): a layer's
    decompressed : compressed bytes, and the bytes of a blob whose descriptor
    gives no size (0: no limit, either). Past them the writer raises
    LimitExceededError and removes the partial file."""

    max_ratio: int = DEFAULT_MAX_RATIO
    max_unsized: int = DEFAULT_MAX_UNSIZED


class ContentStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.ingest_dir = self.root / "ingest" / "sha256"
        try:
            self.blobs.mkdir(parents=True, exist_ok=True)
            self.ingest_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store at {self.root}: {exc.strerror}") from None
        # flock is per open file description, so threads of one process would
        # not exclude each other through it alone.
        self._thread_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._sides = 0

    def path(self, digest: str) -> Path:
        algo, hexpart = check_digest(digest).split(":", 1)
        if algo != "sha256":
            raise StoreError(f"the store keeps sha256 blobs only, not {algo}")
        return self.blobs / hexpart

    def exists(self, digest: str) -> bool:
        dest = self.path(digest)
        if not dest.is_file():
            return False
        self._drop_stale_lock(dest)
        return True

    def size_problem(self, digest: str, size: int) -> str | None:
        """What is wrong with the blob's file by the cheap check a stored
        image's blobs pass before a pull calls it up to date: "is missing",
        "is N bytes, not SIZE" (truncated, appended to); None when it is
        there with `size` bytes (size < 0: unknown, there at all)."""
        try:
            got = self.path(digest).stat().st_size
        except FileNotFoundError:
            return "is missing"
        return None if size < 0 or got == size else f"is {got} bytes, not {size}"

    def read(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"blob {digest} is not in the store at {self.root}") from None

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    @contextmanager
    def ingest(
        self,
        digest: str,
        size: int | None,
        *,
        layer: bool = False,
        cancelled: Callable[[], bool] | None = None,
        limits: BlobLimits = BlobLimits(),
    ) -> Iterator[BlobWriter | None]:
        """Hold the writer's role for `digest`.

        Yields None when the blob is (or, after waiting for another writer,
        has become) present; else a BlobWriter positioned at the end of any
        partial file left by an earlier attempt or process. The caller
        commits it with `commit(writer)`; leaving the block without a commit
        keeps the partial file. `layer`: a layer writer, which also computes
        the diffID (BlobWriter(layer=True)). `cancelled`: polled while another
        process writes the blob, so that a Ctrl-C need not wait for it.
        `limits`: the writer's (see BlobLimits).
        """
        dest = self.path(digest)
        hexpart = dest.name
        try:
            with self._thread_lock(hexpart), self._file_lock(hexpart, dest, cancelled=cancelled):
                if dest.is_file():
                    yield None
                    return
                writer = self.writer(digest, size, layer=layer, limits=limits)
                try:
                    yield writer
                finally:
                    writer.close()
                    # An empty partial file holds nothing to resume, nor one
                    # of a blob stored meanwhile (another copy of it, raced
                    # from another source, won): leave no litter.
                    partial = Path(writer.path)
                    if partial.is_file() and (partial.stat().st_size == 0 or dest.is_file()):
                        partial.unlink()
                    if not partial.is_file():
                        ChunkRecord(partial).remove()
        except OSError as exc:
            # Also what the caller's block raised while filling the writer.
            error = local_write_error(exc)
            if error is None:
                raise
            raise error from None

    def writer(
        self,
        digest: str,
        size: int | None,
        *,
        layer: bool = False,
        limits: BlobLimits = BlobLimits(),
        path: Path | None = None,
    ) -> BlobWriter:
        """A writer on the ingest file of `digest`, continuing what is there.

        Only for the holder of `ingest(digest)`: e.g. to start over after a
        failed commit, which removed the partial file; or on `path`, a
        side_path() of the digest (a second copy, from another source).
        """
        if path is None:
            path = self.ingest_dir / self.path(digest).name
        # A file with chunks fetched ahead: only its prefix up to the first
        # gap is taken as it is (ChunkRecord).
        record = ChunkRecord(path)
        trusted = record.load(size)[0] if record.exists() else None
        return BlobWriter(
            str(path),
            digest,
            size,
            layer=layer,
            max_ratio=limits.max_ratio,
            max_unsized=limits.max_unsized,
            trusted=trusted,
        )

    def side_path(self, digest: str) -> Path:
        """An ingest file of this process's own for a second copy of `digest`
        while another writer holds the digest's: its bytes never mix with the
        other's, and commit() (a rename of verified bytes) may come from
        either. Its holder removes it unless it is committed."""
        with self._guard:
            self._sides += 1
            n = self._sides
        return self.ingest_dir / f"{self.path(digest).name}.{os.getpid()}-{n}.side"

    def commit(self, writer: BlobWriter) -> Path:
        dest = self.path(writer.digest)
        try:
            writer.commit(str(dest))
        finally:
            # Committed, or removed by a failed commit: its record goes too.
            if not Path(writer.path).is_file():
                ChunkRecord(writer.path).remove()
        return dest

    def put(self, data: bytes, digest: str) -> Path:
        """Store small verified bytes (manifests, configs) under their digest."""
        with self.ingest(digest, len(data)) as writer:
            if writer is None:
                return self.path(digest)
            writer.truncate()
            writer.write(data)
            return self.commit(writer)

    def partial_size(self, digest: str) -> int:
        """Bytes already in the ingest file of `digest` (0 when none)."""
        try:
            return (self.ingest_dir / self.path(digest).name).stat().st_size
        except FileNotFoundError:
            return 0

    def _thread_lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._thread_locks.setdefault(key, threading.Lock())

    @contextmanager
    def locked(self, digest: str) -> Iterator[Path]:
        """Hold the writer's role for `digest` without writing: to delete the
        blob (`remove`) with no writer or waiter of it in between."""
        dest = self.path(digest)
        with self._thread_lock(dest.name), self._file_lock(dest.name, dest, always_unlink=True):
            yield dest

    def remove(self, digest: str) -> bool:
        """Delete the blob file; only for the holder of `locked(digest)`."""
        try:
            self.path(digest).unlink()
            return True
        except FileNotFoundError:
            return False

    def _drop_stale_lock(self, dest: Path) -> None:
        """Remove the lock file of the committed blob `dest` if nobody holds
        it: one a process killed between the commit and its cleanup left
        behind (a pull that finds the blob never takes that lock again).
        Held, it is left to its holder (e.g. an `rmi` deleting the blob):
        only a holder may unlink it, see _file_lock."""
        lock_path = self.ingest_dir / f"{dest.name}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(fd, lock_path) and dest.is_file():
                lock_path.unlink()
        except OSError:  # held by someone (BlockingIOError), or gone meanwhile
            pass
        finally:
            os.close(fd)

    @contextmanager
    def _file_lock(
        self,
        key: str,
        dest: Path,
        *,
        always_unlink: bool = False,
        cancelled: Callable[[], bool] | None = None,
    ) -> Iterator[None]:
        lock_path = self.ingest_dir / f"{key}.lock"
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _flock(fd, cancelled)
                # The holder before us may have unlinked the lock file (see
                # below): then a newcomer can lock a new file at that path,
                # so our lock on the old one excludes nobody; start over.
                if _same_file(fd, lock_path):
                    break
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        try:
            yield
            # Unlinking by the holder is safe thanks to the check above (and
            # only by the holder: a newcomer would lock a file we then remove);
            # done once the blob is committed (or deleted) to leave no litter.
            if always_unlink or dest.is_file():
                lock_path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd` (raises
    FileNotFoundError when it names nothing)."""
    st, now = os.fstat(fd), os.stat(path)
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


def _flock(fd: int, cancelled: Callable[[], bool] | None) -> None:
    """Take the exclusive lock on `fd`, waiting for its holder. With
    `cancelled`, polled: a thread blocked in flock(2) cannot be woken."""
    if cancelled is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if cancelled():
                raise PullCancelledError(
                    "pull cancelled while another pull was writing this blob"
                ) from None
            time.sleep(_LOCK_POLL)
