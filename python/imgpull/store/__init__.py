"""Local state: content-addressed blobs on disk plus SQLite metadata."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from imgpull.errors import ImgpullError
from imgpull.store.content import ContentStore
from imgpull.store.metadata import ImageRecord, LayerRecord, MetadataStore, ReferenceRecord

__all__ = [
    "ContentStore",
    "ImageRecord",
    "LayerRecord",
    "MetadataStore",
    "ReferenceRecord",
    "Store",
    "default_root",
]


def default_root() -> Path:
    """`$IMGPULL_ROOT`, else the XDG data folder (~/.local/share/imgpull)."""
    env = os.environ.get("IMGPULL_ROOT")
    if env:
        return Path(env)
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return Path(data) / "imgpull"


class Store:
    """One root folder: `blobs/`, `ingest/` and `imgpull.db`."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.content = ContentStore(self.root)
        self.meta = MetadataStore(self.root / "imgpull.db")

    def delete_blob(self, digest: str) -> bool:
        """Delete a blob's file and rows unless some image uses it; True if deleted.

        The race this settles: a pull that found the blob present (and so
        did not download it) records its image later. Here the check "no
        image uses it" and the unlink happen inside one write transaction;
        the pull checks that its blobs exist inside the write transaction
        that records its image, and fetches again what is gone. Write
        transactions exclude each other, so either the pull's image is
        committed first (and this keeps the file) or the file is gone before
        the pull looks (and it downloads it again). The per-digest lock keeps
        a writer of the same blob from committing it while it is deleted.
        """
        with self.content.locked(digest), self.meta.transaction():
            if self.meta.blob_in_use(digest):
                return False
            self.meta.forget_blob(digest)
            # A crash after this unlink rolls back the row deletion: rows of
            # an unused blob without a file, which gc() removes too.
            self.content.remove(digest)
            return True

    def remove_damaged(self, digest: str, damaged: Callable[[Path], bool]) -> bool:
        """Delete a blob's file that `damaged(path)` finds broken (truncated,
        replaced behind our back), so that a pull fetches it again; True if
        deleted. Its rows stay: the images using it still do.

        The check and the unlink happen holding the blob's lock (a writer
        committing a good copy meanwhile is waited for, and that copy is what
        is checked: it stays); the unlink, as delete_blob's, inside a write
        transaction (a pull recording an image sees the file present or
        gone, and then fetches it), which the check (maybe a hash) does not
        hold up.
        """
        with self.content.locked(digest) as path:
            try:
                if not damaged(path):
                    return False
            except FileNotFoundError:
                return False
            with self.meta.transaction():
                return self.content.remove(digest)

    def gc(self, *, grace: float = 3600.0) -> list[str]:
        """Delete the blobs (files and rows) no image uses: what a crash
        between `rmi`'s commit and its file deletion leaves, or a failed pull.

        Files younger than `grace` seconds are kept: they may be the fresh
        downloads of a pull that has not recorded its image yet (deleting
        them would only cost that pull a second download, see delete_blob).
        Returns the digests deleted.
        """
        cutoff = time.time() - grace
        files: dict[str, float] = {}
        for path in self.content.blobs.iterdir():
            try:
                self.content.path("sha256:" + path.name)
                files["sha256:" + path.name] = path.stat().st_mtime
            except (ImgpullError, OSError):  # not a blob name, or gone already
                continue
        unused = (set(files) | self.meta.recorded_blobs()) - self.meta.used_blobs()
        return [
            digest
            for digest in sorted(unused)
            if files.get(digest, 0.0) <= cutoff and self.delete_blob(digest)
        ]

    def close(self) -> None:
        self.meta.close()
