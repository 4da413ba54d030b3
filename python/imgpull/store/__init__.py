"""Local state: content-addressed blobs on disk plus SQLite metadata."""

from __future__ import annotations

import os
from pathlib import Path

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

    def close(self) -> None:
        self.meta.close()
