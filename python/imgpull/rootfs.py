"""A root filesystem written while its image is pulled (`pull --rootfs DIR`).

Each layer is applied as soon as it and every layer below it are stored: it
is inflated once, its tar hashed (the diffID, checked against the config's)
while the native core creates its files, and later layers download
meanwhile. A layer that arrives before the one below it has been applied
waits on disk, in the store, not in memory. The safety rules are the rootfs
export's (imgpull.export): nothing lands outside DIR, bombs are bounded.

RootfsTarget is DIR for one pull: it must not exist or be empty; it is
locked (flock) so that one process writes it, and recorded in the store
while being written, so that a rerun after a kill -9 knows the partial tree
there is its own and starts it again. A pull that fails empties DIR (removes
it when the pull created it); the blobs downloaded stay in the store, so a
rerun fetches only the rest.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

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
from imgpull.verify import mismatch


def remove_tree(path: Path) -> None:
    """rmtree that also gets through directories an image made read-only."""

    def retry(func: Any, p: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
                shutil.rmtree(p, ignore_errors=True)
            else:
                func(p)

    shutil.rmtree(path, onerror=retry)


def empty_dir(path: Path) -> None:
    """Remove everything in `path`, leaving it an empty directory."""
    os.chmod(path, 0o755)  # an image's root may be read-only
    for child in list(path.iterdir()):
        if child.is_dir() and not child.is_symlink():
            remove_tree(child)
        else:
            child.unlink()


def restore_dir(path: Path, *, made: bool) -> None:
    """Leave the directory `path` as it was before it was written to: gone
    when the writer `made` it, else empty."""
    if made:
        remove_tree(path)
    else:
        empty_dir(path)


def check_dir_dest(dest: Path, error: type[ImgpullError] = RootfsError) -> bool:
    """True when `dest` exists (then it must be an empty directory); else its
    parent must be a directory."""
    try:
        st = dest.lstat()
    except FileNotFoundError:
        if not dest.parent.is_dir():
            raise error(f"{dest.parent} is not a directory") from None
        return False
    if not stat.S_ISDIR(st.st_mode) or any(dest.iterdir()):
        raise error(f"{dest} exists and is not an empty directory")
    return True


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
    ) -> None:
        self.path = Path(os.path.abspath(path))
        self.store = store
        self.reference = reference
        self.max_ratio = max_ratio
        self.max_bytes = max_bytes
        self._fd: int | None = None
        self._created = False
        self._dirty = False
        # (layers applied, layers) of the attempt in progress, for the notes.
        self.applied = (0, 0)

    def open(self, emit: ProgressCallback) -> None:
        """Check, create if need be, and lock DIR; a partial tree a killed
        pull left there (recorded in this store) is emptied first."""
        path = self.path
        try:
            st = path.lstat()
        except FileNotFoundError:
            if not path.parent.is_dir():
                raise RootfsError(f"{path.parent} is not a directory") from None
            path.mkdir(mode=0o755)
            self._created = True
            st = path.lstat()
        if not stat.S_ISDIR(st.st_mode):
            raise RootfsError(f"{path} exists and is not a directory")
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if isinstance(exc, BlockingIOError):
                raise RootfsError(f"another imgpull is writing {path}") from None
            raise RootfsError(f"cannot lock {path}: {exc.strerror}") from None
        self._fd = fd
        try:
            st = os.fstat(fd)
            meta = self.store.meta
            if any(path.iterdir()):
                job = meta.rootfs_job(str(path), st.st_dev, st.st_ino)
                if job is None:
                    raise RootfsError(f"{path} exists and is not an empty directory")
                started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job[1]))
                emit(
                    ProgressEvent(
                        f"{path} holds part of the root filesystem of {job[0]}, from a pull "
                        f"stopped at {started}: emptying it to write it again"
                    )
                )
                empty_dir(path)
            meta.start_rootfs_job(str(path), st.st_dev, st.st_ino, self.reference)
        except BaseException:
            self._unlock()
            raise

    def extraction(self) -> Extraction:
        """A new extraction into DIR (for a pull attempt); DIR is emptied
        first if an earlier attempt wrote to it."""
        if self._dirty:
            empty_dir(self.path)
        self._dirty = True
        return Extraction(str(self.path), max_ratio=self.max_ratio, max_bytes=self.max_bytes)

    def succeeded(self) -> None:
        self.store.meta.end_rootfs_job(str(self.path))
        self._unlock()

    def failed(self, exc: BaseException) -> None:
        """Empty DIR (remove it if this pull made it) and say so on `exc`."""
        path = self.path
        done, total = self.applied
        try:
            restore_dir(path, made=self._created)
        except OSError as err:
            # The job stays recorded: a rerun empties DIR itself.
            exc.add_note(
                f"{path} holds a partial root filesystem ({done} of {total} layers applied, "
                f"the next maybe in part) and could not be emptied ({err}); running the "
                "same pull again empties it and writes the whole tree"
            )
        else:
            self.store.meta.end_rootfs_job(str(path))
            what = "was removed" if self._created else "was emptied"
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
        finally:
            self._unlock()

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
