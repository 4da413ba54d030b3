"""A root filesystem written while its image is pulled (`pull --rootfs DIR`).

Each layer is applied as soon as it and every layer below it are stored: it
is inflated once, its tar hashed (the diffID, checked against the config's)
while the native core creates its files, and later layers download
meanwhile. A layer that arrives before the one below it has been applied
waits on disk, in the store, not in memory. The safety rules are the rootfs
export's (imgpull.export): nothing lands outside DIR, bombs are bounded.

RootfsTarget is DIR for one pull: it must not exist or be empty, nor be
inside the store or hold it; it is locked (flock) so that one process writes
it. Nothing of the user's is touched: before the first layer a marker file
in DIR and a job row in the store get the same random job ID, so that a
rerun after a kill -9 can show the partial tree there is imgpull's and start
it again; anything else in DIR stops the pull (unless --force). A pull that
fails empties DIR (removes it when the pull created it), changing nothing
outside it, and gives DIR its mode and owner back; the blobs downloaded stay
in the store, so a rerun fetches only the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path

from imgpull._core import DEFAULT_MAX_RATIO, Extraction
from imgpull.errors import (
    ExtractError,
    ImgpullError,
    ManifestError,
    PullCancelledError,
    RootfsError,
)
from imgpull.manifest import Descriptor
from imgpull.progress import (
    EXTRACTING,
    PULL_COMPLETE,
    ProgressCallback,
    ProgressEvent,
    layer_event,
)
from imgpull.store import Store
from imgpull.store.metadata import RootfsJob
from imgpull.verify import mismatch

# DIR's marker while a pull writes it: the job's ID, which the store's job
# row holds too, proves that a partial tree there is imgpull's (a path, even
# with its device and inode, does not: `rm -rf DIR && mkdir DIR` gives the
# inode back). A layer may write an entry of this name: it is then the
# image's (kept), and no longer proves anything.
MARKER = ".imgpull-rootfs-job"
_MARKER_TEXT = (
    "imgpull is writing a root filesystem here (job {}). If that pull was stopped, "
    "running it again empties this directory and writes the whole tree.\n"
)
_MARKER_ID = re.compile(rb"\(job ([0-9a-f]{32})\)")


def read_marker(directory: str | os.PathLike[str], *, dir_fd: int | None = None) -> str | None:
    """The job ID in the marker file of `directory` (relative to `dir_fd` if
    given), None when there is no such marker (or something else of its name)."""
    try:
        # O_NONBLOCK: a FIFO of that name (an image's) does not hang the open.
        fd = os.open(
            os.path.join(directory, MARKER),
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            dir_fd=dir_fd,
        )
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        found = _MARKER_ID.search(os.read(fd, 1024))
    except OSError:
        return None
    finally:
        os.close(fd)
    return found[1].decode() if found else None


def clear_dir(top: Path, *, keep: str | None = None) -> None:
    """Remove everything in the directory `top` (but its entry `keep`), not
    `top` itself. Directories an image made read-only, `top` included, are
    made writable first; nothing outside `top` is changed, and another
    filesystem mounted inside is not entered. Raises OSError (its filename
    the first entry that could not be removed) when something remains."""
    first: OSError | None = None
    device = top.lstat().st_dev
    pending = [top]
    visited: list[Path] = []  # each directory before those inside it
    while pending:  # iterative: an image's tree may be deeper than Python's recursion
        folder = pending.pop()
        try:
            st = folder.lstat()
            if st.st_dev != device:
                raise OSError(errno.EXDEV, "another filesystem is mounted there", str(folder))
            if st.st_mode & 0o700 != 0o700:
                os.chmod(folder, stat.S_IMODE(st.st_mode) | 0o700)
            with os.scandir(folder) as entries:
                found = list(entries)
        except OSError as exc:
            first = first or exc
            continue
        visited.append(folder)
        for entry in found:
            if folder == top and entry.name == keep:
                continue
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
                continue
            try:
                os.unlink(entry.path)
            except OSError as exc:
                first = first or exc
    for folder in reversed(visited[1:]):
        try:
            folder.rmdir()
        except OSError as exc:
            first = first or exc
    if first is not None:
        if first.filename is None:
            first.filename = str(top)
        raise first


def remove_tree(path: Path) -> None:
    """Remove a directory imgpull made (a work folder) with everything in
    it, as far as possible."""
    with contextlib.suppress(OSError):
        clear_dir(path)
        path.rmdir()


def _set_state(path: Path, mode: int, uid: int, gid: int) -> None:
    """Give the directory `path` back its permission bits and owner."""
    st = path.lstat()
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.lchown(path, uid, gid)  # before chmod: chown clears set-id bits
    if stat.S_IMODE(st.st_mode) != mode or (st.st_uid, st.st_gid) != (uid, gid):
        os.chmod(path, mode)


def restore_dir(path: Path, *, before: os.stat_result | None) -> None:
    """Leave the directory `path` as it was before it was written to: gone
    when it did not exist (`before` None), else empty, with the mode and
    owner of `before`. Raises OSError naming what could not be removed."""
    clear_dir(path)
    if before is None:
        path.rmdir()
    else:
        _set_state(path, stat.S_IMODE(before.st_mode), before.st_uid, before.st_gid)


def check_dir_dest(dest: Path, error: type[ImgpullError] = RootfsError) -> os.stat_result | None:
    """`dest`'s state when it exists (then it must be an empty directory),
    else None (then its parent must be a directory)."""
    try:
        st = dest.lstat()
    except FileNotFoundError:
        if not dest.parent.is_dir():
            raise error(f"{dest.parent} is not a directory") from None
        return None
    if not stat.S_ISDIR(st.st_mode) or any(dest.iterdir()):
        raise error(f"{dest} exists and is not an empty directory")
    return st


def check_outside_store(dest: Path, store: Store, error: type[ImgpullError]) -> None:
    """Refuse a destination inside the store or holding it (symbolic links
    resolved, bind mounts seen by device and inode): written there, a layer
    could replace a blob; emptied, the store would go with it."""

    def ids(path: Path) -> list[tuple[int, int]]:
        """(device, inode) of `path` and of each of its parents that exists."""
        found = []
        for p in (path, *path.parents):
            with contextlib.suppress(OSError):
                st = p.stat()
                found.append((st.st_dev, st.st_ino))
        return found

    where = Path(os.path.realpath(dest))
    try:
        root = Path(os.path.realpath(store.root)).stat()
    except OSError:
        return  # no store there yet: nothing of it to harm
    if (root.st_dev, root.st_ino) in ids(where):
        raise error(f"{dest} is inside the store {store.root}: choose a path outside it")
    with contextlib.suppress(OSError):
        st = where.stat()
        if (st.st_dev, st.st_ino) in ids(Path(os.path.realpath(store.root))):
            raise error(f"{dest} holds the store {store.root}: choose a path outside it")


def _os_error(err: OSError) -> str:
    return f"{err.filename}: {err.strerror}" if err.filename else str(err.strerror or err)


class RootfsTarget:
    """DIR, for one pull that writes the image's root filesystem there."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        store: Store,
        reference: str,
        *,
        max_ratio: int = DEFAULT_MAX_RATIO,
        max_bytes: int | None = None,
        force: bool = False,
    ) -> None:
        """`force`: empty DIR when it holds what imgpull cannot show it wrote."""
        self.path = Path(os.path.abspath(path))
        self.store = store
        self.reference = reference
        self.max_ratio = max_ratio
        self.max_bytes = max_bytes
        self.force = force
        self._fd: int | None = None
        self._job: RootfsJob | None = None
        self._dirty = False
        # (layers applied, layers) of the attempt in progress, for the notes.
        self.applied = (0, 0)

    # Open -------------------------------------------------------------------

    def open(self, emit: ProgressCallback) -> None:
        """Check, create if need be, and lock DIR; prove it writable with
        the marker, then record the job. A partial tree a killed pull of
        this store left there (its marker holds a job of the store) is
        emptied first; anything else there stops the pull unless `force`."""
        path = self.path
        check_outside_store(path, self.store, RootfsError)
        for _ in range(3):  # DIR removed while opened (a racing pull's cleanup): again
            if self._lock():
                break
        else:
            raise RootfsError(f"{path} was removed while being opened: try again")
        try:
            self._start(emit)
        except BaseException as exc:
            self._undo_start()
            if isinstance(exc, OSError):  # the marker: DIR read-only, a full disk
                raise RootfsError(f"cannot write to {path}: {exc.strerror}") from None
            raise

    def _lock(self) -> bool:
        """Create DIR unless it exists, open and lock it; False when DIR was
        removed meanwhile."""
        path = self.path
        try:
            path.mkdir(mode=0o755)
            made = True
        except FileExistsError:  # there already, or a racing pull made it
            made = False
        except (FileNotFoundError, NotADirectoryError):
            raise RootfsError(f"{path.parent} is not a directory") from None
        except OSError as exc:
            raise RootfsError(f"cannot create {path}: {exc.strerror}") from None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise RootfsError(f"{path} exists and is not a directory") from None
            raise RootfsError(f"cannot open {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            st, now = os.fstat(fd), path.lstat()
        except BlockingIOError:
            os.close(fd)
            raise RootfsError(f"another imgpull is writing {path}") from None
        except OSError as exc:
            os.close(fd)
            if isinstance(exc, FileNotFoundError):
                return False
            raise RootfsError(f"cannot lock {path}: {exc.strerror}") from None
        if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
            os.close(fd)  # locked a directory removed (and made again) since
            return False
        self._fd = fd
        mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        self._job = RootfsJob(
            secrets.token_hex(16), str(path), self.reference, time.time(), made, mode, uid, gid
        )
        return True

    def _start(self, emit: ProgressCallback) -> None:
        """Empty DIR if need be and allowed, write the marker, record the job."""
        assert self._fd is not None and self._job is not None
        path, meta = self.path, self.store.meta
        self._expire_jobs()
        entries = sorted(os.listdir(self._fd))
        if entries:
            found = read_marker(".", dir_fd=self._fd)
            jobs = meta.rootfs_jobs(found) if found else []
            if jobs and jobs[0].path == str(path):
                job = jobs[0]
                started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.started_at))
                emit(
                    ProgressEvent(
                        f"{path} holds part of the root filesystem of {job.reference}, from a "
                        f"pull stopped at {started}: emptying it to write it again"
                    )
                )
                # The same job again: DIR's state before it is the first pull's.
                self._job = dataclasses.replace(
                    job, reference=self.reference, started_at=self._job.started_at
                )
                self._clear(keep=MARKER)
            elif found and entries == [MARKER]:
                pass  # only a marker: a pull killed before it recorded its job
            elif self.force:
                emit(ProgressEvent(f"{path} is not empty: emptying it (--force)"))
                self._clear()
            else:
                others = [e for e in entries if e != MARKER] or entries
                more = f" and {len(entries) - 1} more" if len(entries) > 1 else ""
                raise RootfsError(
                    f"{path} holds {others[0]!r}{more}, not written by imgpull: move it away, "
                    f"or pass --force to empty {path}"
                )
        self._write_marker()
        meta.start_rootfs_job(self._job)

    def _clear(self, keep: str | None = None) -> None:
        try:
            clear_dir(self.path, keep=keep)
        except OSError as exc:
            raise RootfsError(
                f"{self.path} could not be emptied ({_os_error(exc)}): empty or remove it yourself"
            ) from None

    def _write_marker(self) -> None:
        assert self._fd is not None and self._job is not None
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(MARKER, flags, 0o644, dir_fd=self._fd)
        try:
            os.write(fd, _MARKER_TEXT.format(self._job.id).encode())
            os.fsync(fd)
            os.fsync(self._fd)
        except OSError:
            # A marker in part (a full disk) would not be recognised again.
            with contextlib.suppress(OSError):
                os.unlink(MARKER, dir_fd=self._fd)
            raise
        finally:
            os.close(fd)

    def _ours(self) -> bool:
        """Whether DIR's marker is this job's (a layer may replace it)."""
        assert self._job is not None
        return read_marker(".", dir_fd=self._fd) == self._job.id

    def _expire_jobs(self) -> None:
        """Forget the jobs whose DIR no longer holds their marker: removed,
        emptied, or written by another job since. A job in progress wrote its
        marker before its row, so it is not one of them."""
        meta = self.store.meta
        for job in meta.rootfs_jobs():
            if read_marker(job.path) != job.id:
                meta.end_rootfs_job(job.id)

    def _undo_start(self) -> None:
        """After a failed open: no marker, no job row, DIR gone if made,
        unless DIR still holds a partial tree (then a rerun needs them)."""
        job, fd = self._job, self._fd
        if job is not None and fd is not None:
            with contextlib.suppress(OSError, ImgpullError):
                if os.listdir(fd) == [MARKER] and self._ours():
                    os.unlink(MARKER, dir_fd=fd)
                    self.store.meta.end_rootfs_job(job.id)
                if job.made:
                    self.path.rmdir()  # only if empty
        self._unlock()

    # Write ------------------------------------------------------------------

    def extraction(self) -> Extraction:
        """A new extraction into DIR (for a pull attempt); DIR is emptied
        first if an earlier attempt wrote to it."""
        if self._dirty:
            try:
                self._empty()
            except OSError as exc:
                raise RootfsError(f"{self.path} could not be emptied ({_os_error(exc)})") from None
        self._dirty = True
        return Extraction(str(self.path), max_ratio=self.max_ratio, max_bytes=self.max_bytes)

    def _empty(self) -> None:
        """Remove everything in DIR but this job's marker (written again if
        a layer replaced it). Raises OSError when something remains."""
        ours = self._ours()
        clear_dir(self.path, keep=MARKER if ours else None)
        if not ours:
            self._write_marker()

    def succeeded(self) -> None:
        """The tree is whole: the marker goes (unless a layer replaced it,
        then it is the image's), DIR's mode and times as the image set them."""
        assert self._fd is not None and self._job is not None
        fd = self._fd
        try:
            if self._ours():
                st = os.fstat(fd)
                mode = stat.S_IMODE(st.st_mode)
                if mode & 0o300 != 0o300:  # the image's root is read-only (for a user)
                    os.chmod(fd, mode | 0o300)
                os.unlink(MARKER, dir_fd=fd)
                os.chmod(fd, mode)
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        except OSError as exc:
            # The job stays: a rerun empties DIR and writes it again.
            raise RootfsError(
                f"{self.path} holds the whole tree but its marker {MARKER} could not be "
                f"removed ({exc.strerror}): remove it yourself, or run the same pull again"
            ) from None
        finally:
            self._unlock()
        self.store.meta.end_rootfs_job(self._job.id)

    def failed(self, exc: BaseException) -> None:
        """Empty DIR (remove it if this job made it) and say so on `exc`:
        what was done, and what could not be."""
        assert self._fd is not None and self._job is not None
        path, job = self.path, self._job
        done, total = self.applied
        try:
            self._empty()
        except OSError as err:
            # The job and its marker stay: a rerun empties DIR itself.
            exc.add_note(
                f"{path} holds a partial root filesystem ({done} of {total} layers applied, "
                f"the next maybe in part) and could not be emptied ({_os_error(err)}); "
                "running the same pull again empties it and writes the whole tree"
            )
            self._unlock()
            return
        try:
            os.unlink(MARKER, dir_fd=self._fd)
            self.store.meta.end_rootfs_job(job.id)
            if job.made:
                path.rmdir()
                what = "was removed"
            else:
                _set_state(path, job.mode, job.uid, job.gid)
                what = "was emptied"
        except OSError as err:
            what = (
                f"was emptied but could not be "
                f"{'removed' if job.made else 'given back its mode and owner'} "
                f"({_os_error(err)})"
            )
        finally:
            self._unlock()
        # A rerun helps unless the image's content is at fault.
        rerun = not isinstance(exc, (ManifestError, ExtractError))
        exc.add_note(
            f"{path} {what}: nothing of the image is in it"
            + (
                "; the blobs downloaded stay in the store, so running the same pull "
                "again fetches only the rest"
                if rerun
                else ""
            )
        )

    def _unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None


class Unpacker:
    """One pull attempt's layers applied to its RootfsTarget, in order, on a
    thread of their own, each as soon as it is stored."""

    def __init__(
        self,
        target: RootfsTarget,
        layers: Sequence[Descriptor],
        emit: ProgressCallback,
        register: Callable[[Descriptor, str, int], None],
    ) -> None:
        """`register(layer, diffID, size)`: record a layer's diffID once it
        is applied and checked."""
        self.target = target
        self.layers = layers
        self.emit = emit
        self.register = register
        self.announce: set[str] = set()  # layers downloaded: told Extracting, Pull complete
        self._extraction: Extraction | None = None
        self._stopped = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(
        self, ready: Callable[[Descriptor], None], want: Callable[[], Sequence[str | None]]
    ) -> Future[list[str]]:
        """Apply the layers on a new thread. `ready(layer)` returns once the
        layer's blob is stored (raises when it will not be); `want()` the
        config's diffIDs (None: not known in advance, a schema1 image)."""
        future: Future[list[str]] = Future()

        def run() -> None:
            try:
                future.set_result(self._run(ready, want))
            except BaseException as exc:
                future.set_exception(exc)

        self._thread = threading.Thread(target=run, name="imgpull-rootfs", daemon=True)
        self._thread.start()
        return future

    def _run(
        self, ready: Callable[[Descriptor], None], want: Callable[[], Sequence[str | None]]
    ) -> list[str]:
        """Apply the layers (on the unpacker's thread); returns their diffIDs."""
        expected = want()
        with self._lock:
            self._check()
            extraction = self._extraction = self.target.extraction()
        total = len(self.layers)
        diff_ids: list[str] = []
        self.target.applied = (0, total)
        for i, (layer, diff_id) in enumerate(zip(self.layers, expected, strict=True)):
            ready(layer)
            self._check()
            told = layer.digest in self.announce
            if told:
                self.emit(layer_event(EXTRACTING, layer))
            blob = str(self.target.store.content.path(layer.digest))
            try:
                [(got, size)] = extraction.apply([(blob, None)])
            except ExtractError as exc:
                if exc.kind == "cancelled":
                    raise PullCancelledError("pull cancelled") from None
                raise
            if diff_id is not None and got != diff_id:
                raise mismatch(self.target.reference, layer.digest, got, diff_id)
            self.register(layer, got, size)
            diff_ids.append(got)
            self.target.applied = (i + 1, total)
            if told:
                self.emit(layer_event(PULL_COMPLETE, layer))
        return diff_ids

    def stop(self) -> None:
        """Stop at the next entry and wait for the thread to end (so that
        DIR is not written any more)."""
        with self._lock:
            self._stopped = True
            if self._extraction is not None:
                self._extraction.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _check(self) -> None:
        if self._stopped:
            raise PullCancelledError("pull cancelled")
