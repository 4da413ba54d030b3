"""Image store, reference store and blob metadata in SQLite (WAL).

WAL lets readers run beside one writer, and `busy_timeout` makes a second
imgpull process wait for the write lock instead of failing. Every change is
one short transaction, so a crash leaves the database as before or after a
change, never between.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imgpull.errors import StoreError
from imgpull.store.content import disk_full

if TYPE_CHECKING:
    from imgpull.reference import Reference

# SQLITE_FULL, and SQLITE_IOERR_SHMSIZE: the WAL index (-shm) could not grow.
_DISK_FULL_CODES = frozenset({13, 4874})

# 1: images, image_layers, refs, blobs, blob_sources.
# 2: image_manifests (which manifest blobs belong to which image, so that
#    removing an image removes them), blob_pins, indexes for "is this blob
#    still used".
# 3: layer_diff_ids (layer digest -> diffID, uncompressed size, the
#    repository it was first registered from), image_rootfs (each image's
#    diffIDs and chain IDs, in order).
# 4: unverified_images (pulled with --fetch-only: diffIDs not checked yet),
#    rootfs_jobs (root filesystems a `pull --rootfs` is writing).
# 5: rootfs_jobs keyed by a random job ID, which DIR's marker file holds too
#    (a path, device and inode match a directory recreated since), with
#    DIR's state before the pull; the schema 4 rows, with no marker to match,
#    are dropped.
_SCHEMA_VERSION = 5

# A pin older than this is from a pull that crashed: it protects nothing.
PIN_TTL = 24 * 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id              TEXT PRIMARY KEY,   -- config digest = image ID
    manifest_digest TEXT NOT NULL,      -- the platform-specific manifest
    media_type      TEXT NOT NULL,      -- of that manifest
    os              TEXT NOT NULL,
    architecture    TEXT NOT NULL,
    variant         TEXT,
    created         TEXT,               -- the config's `created`
    size            INTEGER NOT NULL,   -- compressed bytes of config + layers
    pulled_at       REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS image_layers (
    image_id   TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    position   INTEGER NOT NULL,
    digest     TEXT NOT NULL,
    size       INTEGER NOT NULL,
    media_type TEXT NOT NULL,
    PRIMARY KEY (image_id, position)
);
CREATE TABLE IF NOT EXISTS refs (
    reference  TEXT PRIMARY KEY,        -- normalised: name:tag or name@digest
    name       TEXT NOT NULL,
    tag        TEXT,
    digest     TEXT,
    image_id   TEXT NOT NULL REFERENCES images(id),
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS refs_image ON refs(image_id);
CREATE TABLE IF NOT EXISTS blobs (
    digest     TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    media_type TEXT NOT NULL,
    added_at   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS blob_sources (  -- docker's "distribution source"
    digest     TEXT NOT NULL,
    registry   TEXT NOT NULL,
    repository TEXT NOT NULL,
    PRIMARY KEY (digest, registry, repository)
);
CREATE TABLE IF NOT EXISTS image_manifests (  -- the platform manifest and any list above it
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    digest   TEXT NOT NULL,
    PRIMARY KEY (image_id, digest)
);
CREATE INDEX IF NOT EXISTS image_manifests_digest ON image_manifests(digest);
CREATE TABLE IF NOT EXISTS blob_pins (  -- blobs a pull in progress will use (see pull.py)
    digest  TEXT NOT NULL,
    owner   TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (digest, owner)
);
CREATE INDEX IF NOT EXISTS image_layers_digest ON image_layers(digest);
CREATE TABLE IF NOT EXISTS layer_diff_ids (  -- docker's v2 metadata: a layer blob is registered
    digest            TEXT PRIMARY KEY,      -- compressed blob digest
    diff_id           TEXT NOT NULL,         -- sha256 of the uncompressed tar
    uncompressed_size INTEGER,               -- NULL when computed by an older path
    registry          TEXT NOT NULL,
    repository        TEXT NOT NULL,
    added_at          REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS image_rootfs (  -- per image: diffIDs and chain IDs, bottom first
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    diff_id  TEXT NOT NULL,
    chain_id TEXT NOT NULL,
    PRIMARY KEY (image_id, position)
);
CREATE TABLE IF NOT EXISTS unverified_images (  -- fetch-only pulls: diffIDs checked at first use
    image_id TEXT PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS rootfs_jobs (  -- a `pull --rootfs DIR` in progress (or killed)
    id         TEXT PRIMARY KEY,      -- random, also in DIR's marker file (imgpull.rootfs)
    path       TEXT NOT NULL,         -- DIR, absolute
    reference  TEXT NOT NULL,
    started_at REAL NOT NULL,
    made       INTEGER NOT NULL,      -- 1: the pull created DIR
    mode       INTEGER NOT NULL,      -- DIR's permission bits and owner before the pull
    uid        INTEGER NOT NULL,
    gid        INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class ImageRecord:
    id: str
    manifest_digest: str
    media_type: str
    os: str
    architecture: str
    variant: str | None
    created: str | None
    size: int
    pulled_at: float


@dataclass(frozen=True)
class LayerRecord:
    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class LayerDiffRecord:
    """A registered layer blob: its diffID and where it was first pulled from."""

    digest: str
    diff_id: str
    uncompressed_size: int | None
    registry: str
    repository: str


@dataclass(frozen=True)
class RootfsJob:
    """A `pull --rootfs DIR` in progress, or stopped (kill -9) before it ended:
    its ID (also in DIR's marker file), DIR, and DIR's state before it."""

    id: str
    path: str
    reference: str
    started_at: float
    made: bool  # the pull created DIR: a failure removes it
    mode: int  # DIR's permission bits, owner and group before the pull
    uid: int
    gid: int


@dataclass(frozen=True)
class ReferenceRecord:
    reference: str
    name: str
    tag: str | None
    digest: str | None
    image_id: str
    updated_at: float


class MetadataStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            # Threads of the pull share one connection; the lock serialises it.
            self._db = sqlite3.connect(
                self.path, timeout=60.0, check_same_thread=False, isolation_level=None
            )
            self._enable_wal()
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise self._error(exc, "cannot open the store database") from None
        self._lock = threading.RLock()
        self._depth = 0
        self._migrate()

    def _enable_wal(self) -> None:
        # Switching a new database to WAL needs a lock that SQLite does not
        # wait for (no busy handler), so a second process opening the same
        # new store at that moment gets "database is locked": try again.
        deadline = time.monotonic() + 30.0
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _migrate(self) -> None:
        # A store at this schema is left as it is: no write transaction (and
        # no durable commit) for every command that opens it.
        if self._query("PRAGMA user_version") == [(_SCHEMA_VERSION,)]:
            return
        with self.transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise StoreError(
                    f"the store at {self.path} was written by a newer imgpull "
                    f"(schema {version}); upgrade imgpull to use it"
                )
            if version == 4:
                # Rows matched DIR by path, device and inode: nothing to prove
                # a directory there now is the one they wrote (see schema 5).
                db.execute("DROP TABLE IF EXISTS rootfs_jobs")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            if version < 2:
                # Schema 1 knew an image's platform manifest, and the digest
                # references name the manifests (lists included) pulled for it.
                db.execute(
                    "INSERT OR IGNORE INTO image_manifests(image_id, digest)"
                    " SELECT id, manifest_digest FROM images"
                )
                db.execute(
                    "INSERT OR IGNORE INTO image_manifests(image_id, digest)"
                    " SELECT image_id, digest FROM refs WHERE digest IS NOT NULL"
                    " AND image_id IN (SELECT id FROM images)"
                )
            # version < 3: the new tables start empty. A layer pulled before
            # has no diffID yet; the next pull that uses it computes it from
            # the blob file (pull.py) and records it.
            db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: the write lock is taken up front, so two
        processes never both read-then-write and deadlock on upgrade.

        Nested uses join the outer transaction, so a caller can make several
        changes atomic (and pay for one durable commit instead of several).
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._db
                finally:
                    self._depth -= 1
                return
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._depth = 1
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    # SQLite may have rolled back already (it does on a full
                    # disk); a failed COMMIT may leave the transaction open.
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                finally:
                    self._depth = 0
            except sqlite3.DatabaseError as exc:
                raise self._error(exc) from None

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, args).fetchall())
            except sqlite3.DatabaseError as exc:
                raise self._error(exc) from None

    def _error(self, exc: sqlite3.DatabaseError, what: str = "store database") -> StoreError:
        # sqlite_errorcode: Python >= 3.11; older ones get the generic message.
        if getattr(exc, "sqlite_errorcode", None) in _DISK_FULL_CODES:
            return disk_full(self.path, "try again")
        return StoreError(f"{what} {self.path}: {exc}")

    # Blobs ---------------------------------------------------------------

    def record_blob(
        self, digest: str, size: int, media_type: str, registry: str, repository: str
    ) -> None:
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO blobs(digest, size, media_type, added_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(digest) DO NOTHING",
                (digest, size, media_type, now),
            )
            db.execute(
                "INSERT OR IGNORE INTO blob_sources(digest, registry, repository) VALUES (?, ?, ?)",
                (digest, registry, repository),
            )

    def record_layer(
        self,
        digest: str,
        diff_id: str,
        uncompressed_size: int | None,
        registry: str,
        repository: str,
    ) -> None:
        """Register layer blob `digest` as having `diff_id` (first writer wins:
        a diffID is a function of the bytes; a later size fills a NULL one)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO layer_diff_ids(digest, diff_id, uncompressed_size, registry,"
                " repository, added_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(digest) DO UPDATE"
                " SET uncompressed_size = coalesce(uncompressed_size, excluded.uncompressed_size)",
                (digest, diff_id, uncompressed_size, registry, repository, time.time()),
            )

    def layer_diff_id(self, digest: str) -> LayerDiffRecord | None:
        rows = self._query(
            "SELECT digest, diff_id, uncompressed_size, registry, repository"
            " FROM layer_diff_ids WHERE digest = ?",
            (digest,),
        )
        return LayerDiffRecord(*rows[0]) if rows else None  # type: ignore[arg-type]

    def set_image_rootfs(
        self, image_id: str, diff_ids: Sequence[str], chain_ids: Sequence[str]
    ) -> None:
        """Record an image's diffIDs and chain IDs (bottom layer first),
        checked against its layers: the image is verified."""
        rows = [
            (image_id, i, d, c) for i, (d, c) in enumerate(zip(diff_ids, chain_ids, strict=True))
        ]
        with self.transaction() as db:
            db.execute("DELETE FROM unverified_images WHERE image_id = ?", (image_id,))
            db.execute("DELETE FROM image_rootfs WHERE image_id = ?", (image_id,))
            db.executemany(
                "INSERT INTO image_rootfs(image_id, position, diff_id, chain_id)"
                " VALUES (?, ?, ?, ?)",
                rows,
            )

    def mark_unverified(self, image_id: str) -> None:
        """The image's layers were not checked against its config's diffIDs
        (a fetch-only pull): the first use that needs them checks them."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO unverified_images(image_id) VALUES (?)", (image_id,))

    def is_verified(self, image_id: str) -> bool:
        rows = self._query("SELECT 1 FROM unverified_images WHERE image_id = ?", (image_id,))
        return not rows

    def start_rootfs_job(self, job: RootfsJob) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO rootfs_jobs(id, path, reference, started_at, made, mode,"
                " uid, gid) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                dataclasses.astuple(job),
            )

    def rootfs_jobs(self, job_id: str | None = None) -> list[RootfsJob]:
        """The rootfs jobs that did not end (in progress, or killed); only
        the one of `job_id` if given."""
        sql = "SELECT id, path, reference, started_at, made, mode, uid, gid FROM rootfs_jobs"
        rows = self._query(sql + " WHERE id = ?", (job_id,)) if job_id else self._query(sql)
        # SQLite gives back the types stored; `made` is stored as 0/1.
        return [RootfsJob(*r[:4], bool(r[4]), *r[5:]) for r in rows]  # type: ignore[arg-type, call-arg]

    def end_rootfs_job(self, job_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM rootfs_jobs WHERE id = ?", (job_id,))

    def image_rootfs(self, image_id: str) -> list[tuple[str, str]]:
        """(diffID, chain ID) of each layer of an image, bottom first."""
        rows = self._query(
            "SELECT diff_id, chain_id FROM image_rootfs WHERE image_id = ? ORDER BY position",
            (image_id,),
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    def blob_sources(self, digest: str) -> list[tuple[str, str]]:
        rows = self._query(
            "SELECT registry, repository FROM blob_sources WHERE digest = ? ORDER BY 1, 2",
            (digest,),
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    # Images --------------------------------------------------------------

    def add_image(
        self,
        image: ImageRecord,
        layers: Sequence[LayerRecord],
        manifests: Sequence[str] = (),
    ) -> None:
        """Record an image, its layers and the manifests it came from
        (`image.manifest_digest` always; `manifests` adds e.g. a list's own)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO images(id, manifest_digest, media_type, os, architecture, variant,"
                " created, size, pulled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET manifest_digest = excluded.manifest_digest,"
                " media_type = excluded.media_type, pulled_at = excluded.pulled_at",
                (
                    image.id,
                    image.manifest_digest,
                    image.media_type,
                    image.os,
                    image.architecture,
                    image.variant,
                    image.created,
                    image.size,
                    image.pulled_at,
                ),
            )
            db.execute("DELETE FROM image_layers WHERE image_id = ?", (image.id,))
            db.executemany(
                "INSERT INTO image_layers(image_id, position, digest, size, media_type)"
                " VALUES (?, ?, ?, ?, ?)",
                [(image.id, i, lr.digest, lr.size, lr.media_type) for i, lr in enumerate(layers)],
            )
            self.add_image_manifests(image.id, [image.manifest_digest, *manifests])

    def add_image_manifests(self, image_id: str, digests: Iterable[str]) -> None:
        """Count manifests as the image's (they go when it goes): e.g. those
        of another pull of the same image, whose references name it."""
        with self.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO image_manifests(image_id, digest) VALUES (?, ?)",
                [(image_id, d) for d in dict.fromkeys(digests)],
            )

    def get_image(self, image_id: str) -> ImageRecord | None:
        rows = self._query(
            "SELECT id, manifest_digest, media_type, os, architecture, variant, created, size,"
            " pulled_at FROM images WHERE id = ?",
            (image_id,),
        )
        return ImageRecord(*rows[0]) if rows else None  # type: ignore[arg-type]

    def images(self) -> list[ImageRecord]:
        rows = self._query(
            "SELECT id, manifest_digest, media_type, os, architecture, variant, created, size,"
            " pulled_at FROM images ORDER BY id"
        )
        return [ImageRecord(*r) for r in rows]  # type: ignore[arg-type]

    def image_manifests(self, image_id: str) -> list[str]:
        rows = self._query(
            "SELECT digest FROM image_manifests WHERE image_id = ? ORDER BY digest", (image_id,)
        )
        return [str(r[0]) for r in rows]

    def delete_image(self, image_id: str) -> list[str]:
        """Forget an image that no reference names any more, and the rows of
        every blob (config, layers, manifests) no other image uses.

        Returns those blobs' digests: the caller deletes their files after
        the commit (see Store.delete_blob), so that a crash in between leaves
        only unreferenced files, which Store.gc() removes.
        """
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM refs WHERE image_id = ?", (image_id,)).fetchone():
                raise StoreError(f"image {image_id} still has references")
            candidates = [image_id]
            candidates += [
                str(r[0])
                for r in db.execute(
                    "SELECT digest FROM image_layers WHERE image_id = ?"
                    " UNION SELECT digest FROM image_manifests WHERE image_id = ?",
                    (image_id, image_id),
                )
            ]
            db.execute("DELETE FROM images WHERE id = ?", (image_id,))  # cascades
            unused = [d for d in dict.fromkeys(candidates) if not self.blob_in_use(d)]
            for d in unused:
                self.forget_blob(d)
            return unused

    # Blob use --------------------------------------------------------------

    def blob_in_use(self, digest: str) -> bool:
        """Whether some image uses `digest` as config, layer or manifest."""
        rows = self._query(
            "SELECT 1 FROM images WHERE id = ?1"
            " UNION ALL SELECT 1 FROM image_layers WHERE digest = ?1"
            " UNION ALL SELECT 1 FROM image_manifests WHERE digest = ?1"
            " UNION ALL SELECT 1 FROM blob_pins WHERE digest = ?1 AND created > ?2 LIMIT 1",
            (digest, time.time() - PIN_TTL),
        )
        return bool(rows)

    def used_blobs(self) -> set[str]:
        rows = self._query(
            "SELECT id FROM images UNION SELECT digest FROM image_layers"
            " UNION SELECT digest FROM image_manifests"
            " UNION SELECT digest FROM blob_pins WHERE created > ?",
            (time.time() - PIN_TTL,),
        )
        return {str(r[0]) for r in rows}

    def pin_blobs(self, owner: str, digests: Iterable[str]) -> None:
        """Count `digests` as used (by `owner`, e.g. a pull) until unpinned
        or PIN_TTL has passed."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO blob_pins(digest, owner, created) VALUES (?, ?, ?)",
                [(d, owner, now) for d in digests],
            )

    def unpin_blobs(self, owner: str) -> None:
        """Drop `owner`'s pins, and any pin past PIN_TTL."""
        with self.transaction() as db:
            db.execute(
                "DELETE FROM blob_pins WHERE owner = ? OR created <= ?",
                (owner, time.time() - PIN_TTL),
            )

    def recorded_blobs(self) -> set[str]:
        rows = self._query(
            "SELECT digest FROM blobs UNION SELECT digest FROM blob_sources"
            " UNION SELECT digest FROM layer_diff_ids"
        )
        return {str(r[0]) for r in rows}

    def forget_blob(self, digest: str) -> None:
        """Drop the rows of a blob (and its sources)."""
        with self.transaction() as db:
            db.execute("DELETE FROM blobs WHERE digest = ?", (digest,))
            db.execute("DELETE FROM blob_sources WHERE digest = ?", (digest,))
            db.execute("DELETE FROM layer_diff_ids WHERE digest = ?", (digest,))

    def image_layers(self, image_id: str) -> list[LayerRecord]:
        rows = self._query(
            "SELECT digest, size, media_type FROM image_layers WHERE image_id = ?"
            " ORDER BY position",
            (image_id,),
        )
        return [LayerRecord(*r) for r in rows]  # type: ignore[arg-type]

    # References ----------------------------------------------------------

    def set_reference(
        self, reference: str, name: str, tag: str | None, digest: str | None, image_id: str
    ) -> bool:
        """Point `reference` at `image_id`; True when that changed something."""
        with self.transaction() as db:
            row = db.execute("SELECT image_id FROM refs WHERE reference = ?", (reference,))
            current = row.fetchone()
            if current is not None and current[0] == image_id:
                return False
            db.execute(
                "INSERT INTO refs(reference, name, tag, digest, image_id, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(reference) DO UPDATE SET"
                " image_id = excluded.image_id, updated_at = excluded.updated_at",
                (reference, name, tag, digest, image_id, time.time()),
            )
            return True

    def point(self, ref: Reference, image_id: str) -> bool:
        """Point `ref` (by its key, Reference.key: by digest when it has one,
        else by tag) at `image_id`; True when that changed something."""
        tag = ref.tag if ref.digest is None else None
        return self.set_reference(ref.key, ref.name, tag, ref.digest, image_id)

    def delete_reference(self, reference: str) -> bool:
        """Remove `reference`; True when it existed."""
        with self.transaction() as db:
            return db.execute("DELETE FROM refs WHERE reference = ?", (reference,)).rowcount > 0

    def resolve(self, reference: str) -> str | None:
        rows = self._query("SELECT image_id FROM refs WHERE reference = ?", (reference,))
        return str(rows[0][0]) if rows else None

    def references(self, image_id: str | None = None) -> list[ReferenceRecord]:
        sql = "SELECT reference, name, tag, digest, image_id, updated_at FROM refs"
        args: tuple[object, ...] = ()
        if image_id is not None:
            sql += " WHERE image_id = ?"
            args = (image_id,)
        rows = self._query(sql + " ORDER BY name, tag, digest", args)
        return [ReferenceRecord(*r) for r in rows]  # type: ignore[arg-type]
