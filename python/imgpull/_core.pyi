"""Stubs of the native module (built from rust/py by maturin).

Only bytes, strings, paths and integers cross this boundary. Every call that
touches a file or the network releases the GIL for its whole duration.
"""

from collections.abc import Sequence
from typing import Self, final

__all__ = [
    "DEFAULT_MAX_RATIO",
    "DEFAULT_MAX_UNSIZED",
    "BlobWriter",
    "ChunkWriter",
    "CorruptLayerError",
    "DigestMismatchError",
    "ExtractError",
    "Extraction",
    "FetchError",
    "FetchResult",
    "Fetcher",
    "ImgpullError",
    "LimitExceededError",
    "Schema1Error",
    "SizeMismatchError",
    "Transfer",
    "__version__",
    "copy_sha256",
    "decompress_to",
    "diff_id_file",
    "fix_schema1_layers",
    "schema1_payload",
    "sha256_bytes",
    "sha256_file",
]

__version__: str

# Decompressed : compressed bytes of a layer allowed by default (pulls and
# rootfs exports), judged past the first 8 MiB; 0 turns the limit off.
DEFAULT_MAX_RATIO: int
# Bytes allowed by default for a blob whose descriptor gives no size (schema1
# layers): 10 GiB, above what registries of the schema1 era took for a layer.
DEFAULT_MAX_UNSIZED: int

class ImgpullError(Exception):
    """Base of every error imgpull raises (the Python side subclasses it too)."""

class DigestMismatchError(ImgpullError):
    """The bytes do not hash to the digest they were asked for."""

    expected: str
    actual: str

class SizeMismatchError(ImgpullError):
    """More or fewer bytes than the descriptor's size."""

    expected: int
    actual: int

class FetchError(ImgpullError):
    """The native fetcher could not complete a transfer.

    An HTTP status is never a FetchError: fetch_blob returns it. This is for
    what happens below HTTP or mid-body. (The class carries defaults
    kind="io", retryable=False for instances raised without them.)
    """

    # "connect" | "dns" | "tls" | "timeout" | "io" | "protocol" | "range"
    # | "redirect" | "cancelled" | "stalled"
    kind: str
    # Whether retrying (resuming from writer.offset) can help.
    retryable: bool

class LimitExceededError(ImgpullError):
    """A blob went past a limit on what a registry may send; the partial file
    is removed (those bytes can never be committed).

    `kind`: "ratio" (a layer decompressing to more than `limit` times its
    compressed size: a decompression bomb) or "unsized" (a blob whose
    descriptor gives no size sent more than `limit` bytes: an endless body).
    """

    kind: str
    limit: int

class CorruptLayerError(ImgpullError, ValueError):
    """A layer blob that does not decompress: an unknown compression, corrupt
    gzip/zstd data, an unreadable tar. Also a ValueError (what it was before
    it had a class)."""

def sha256_bytes(data: bytes) -> str:
    """'sha256:<hex>' of data."""

def sha256_file(path: str) -> str:
    """'sha256:<hex>' of a file's content, streamed (GIL released)."""

def copy_sha256(src: str, dest: str) -> str:
    """Copy the file `src` to `dest` (created or truncated; not fsynced),
    hashing the bytes as they are written; return their 'sha256:<hex>'
    (GIL released). OSError for file errors."""

class Schema1Error(ImgpullError):
    """A Docker schema1 manifest whose layer chain or signature block is invalid."""

def fix_schema1_layers(
    layers: Sequence[tuple[str, str]], *, allow_base_parent: bool = False
) -> list[int]:
    """Check a schema1 layer chain as docker's fixManifestLayers does.

    `layers`: each history entry's v1 (id, parent), top first ("" for no
    parent). Returns the indexes to keep, top first: of adjacent repeats of
    an id only the lowest entry stays. Raises Schema1Error (docker's wording)
    for an id that is not 64 lowercase hex, a base layer with a parent
    (unless allow_base_parent, docker's Windows rule), an id repeated
    non-adjacently, or a parent that is not the next layer's id.
    """

def schema1_payload(raw: bytes) -> bytes:
    """The canonical payload of a schema1 manifest: what its digest covers.

    Signed ("prettyjws"): raw[:formatLength] + formatTail from the
    signatures' protected headers, which must agree. Without a
    `signatures` key: raw itself. Raises Schema1Error.
    """

def diff_id_file(path: str, *, max_ratio: int = ...) -> str:
    """'sha256:<hex>' of a layer blob's uncompressed content (GIL released).

    gzip (multi-member), zstd or a plain tar, told by the magic bytes.
    CorruptLayerError for an unknown compression or corrupt data; OSError for
    file errors; LimitExceededError past `max_ratio` (default DEFAULT_MAX_RATIO).
    """

def decompress_to(src: str, dest: str) -> str:
    """Write the decompressed content of the layer blob `src` (gzip, zstd or
    plain, as diff_id_file tells it) to `dest` (created or truncated, then
    fsynced); return its 'sha256:<hex>', the diffID (GIL released).
    CorruptLayerError for an unknown compression or corrupt data; OSError for
    file errors."""

class ExtractError(ImgpullError):
    """A layer could not be applied to a root filesystem.

    `kind`: "unsafe" (an entry that would land outside the root: `..`, an
    absolute path, a symbolic link on its way, a hard link out), "ratio"
    (decompressed/compressed above max_ratio: a bomb), "size" (above
    max_bytes), "header" (a path or link target over PATH_MAX, 4096 bytes; a
    GNU long name/link entry over that, or PAX extended header records or a
    GNU sparse map over 1 MiB, refused before they are read), "io" (creating
    an entry failed), "diffid" (a layer's tar is not the diffID asked for),
    "cancelled" (Extraction.cancel()).
    Names in the message are cut at 200 characters and
    escaped."""

    kind: str

@final
class Extraction:
    """A root filesystem being written into the existing directory `root`,
    layer by layer and in order: whiteouts, opaque directories, hard and
    symbolic links, modes, mtimes, xattrs where possible; owners and device
    nodes only as root. `max_ratio` (default 200) bounds each layer's
    decompressed:compressed bytes past 8 MiB (0: none); `max_bytes` the
    decompressed bytes of all layers applied by this object."""

    def __new__(cls, root: str, *, max_ratio: int = ..., max_bytes: int | None = None) -> Self: ...
    def apply(self, layers: Sequence[tuple[str, str | None]]) -> list[tuple[str, int]]:
        """Apply (blob path, diffID or None) pairs in order (GIL released);
        return each layer's (diffID, decompressed size). A layer whose tar
        hashes to another diffID than the one given raises ExtractError kind
        "diffid" once it is applied. ExtractError as above; CorruptLayerError/
        OSError for a corrupt or unreadable blob. What was written before an error
        stays."""

    def cancel(self) -> None:
        """Stop a running apply() at its next entry (ExtractError kind
        "cancelled"); any thread."""

@final
class BlobWriter:
    """Appends to a partial file in the ingest area while hashing.

    Opening an existing partial file continues from its end (its prefix is
    re-hashed). `digest` is 'sha256:<hex>'; `size` is the expected size or
    None when unknown. Writing beyond a known size raises SizeMismatchError at
    once (a lying server cannot fill the disk). A partial file already longer
    than a known size can never verify: it is started over (offset 0).
    Without a size, `max_unsized` bytes (default DEFAULT_MAX_UNSIZED; 0: no
    limit) are the most it takes: past them a write raises
    LimitExceededError(kind="unsized"), the writer closed and the partial
    file removed; a partial already longer is started over.

    Errors: ValueError for a malformed digest or a closed writer; OSError
    (FileNotFoundError, PermissionError, ...) for file errors. After commit(),
    successful or not, the writer is closed.

    `layer=True`: the blob is a layer. Every byte written is also pushed
    through a streaming decompressor (gzip incl. multi-member, zstd, or a
    plain tar: told by the magic bytes) into a SHA-256, so commit() yields
    the diffID without reading the file again. Reopening a partial file
    replays its prefix through the decompressor as well (in the same read
    that re-hashes it). Past `max_ratio` (default DEFAULT_MAX_RATIO; 0: no
    limit) decompressed bytes per compressed byte, the decompressor stops and
    a write, the replay of a reopened partial file, or commit() raises
    LimitExceededError(kind="ratio"), the partial file removed.

    `trusted`: only the first `trusted` bytes of a partial file are replayed
    (the writer continues there); the bytes past them stay in the file (the
    chunks of a blob fetched as ranges, see ChunkWriter and absorb()).
    The writer writes at its offset, not at the file's end.
    """

    def __new__(
        cls,
        path: str,
        digest: str,
        size: int | None = None,
        *,
        layer: bool = False,
        max_ratio: int = ...,
        max_unsized: int = ...,
        trusted: int | None = None,
    ) -> Self: ...
    @property
    def offset(self) -> int:
        """Bytes in the partial file (the next Range start)."""
    @property
    def path(self) -> str: ...
    @property
    def digest(self) -> str: ...
    @property
    def size(self) -> int | None: ...
    @property
    def layer(self) -> bool: ...
    @property
    def diff_id(self) -> str | None:
        """A layer writer's diffID ('sha256:<hex>' of the uncompressed
        stream), once commit() succeeded; else None."""
    @property
    def uncompressed_size(self) -> int | None:
        """A layer writer's uncompressed size, once commit() succeeded."""
    @property
    def generation(self) -> int:
        """Bumped by each truncate() (also the fetcher's, when a server
        ignores a Range): for stop_at()."""
    def stop_at(self, at: int, generation: int) -> int | None:
        """Make a fetch into this writer (running now, on another thread, or
        later) end before byte `at`, or right after the bytes it already
        took if those go further: returns that stop, exact; None when the
        writer was truncated since `generation`. No lock is waited for."""
    def absorb(self, to: int) -> None:
        """Take in the bytes already in the file from the offset up to `to`
        (chunks written there by ChunkWriter fetches): hashed (and
        inflated) in order as if written here; the offset becomes `to`
        (GIL released). OSError if the file is shorter."""
    def write(self, data: bytes) -> None:
        """Write at the offset and hash (GIL released)."""
    def truncate(self) -> None:
        """Drop what was written: start over at offset 0."""
    def commit(self, dest: str) -> None:
        """Check size and digest, fsync, rename atomically to dest.

        On a mismatch the partial file is removed and DigestMismatchError /
        SizeMismatchError is raised; nothing appears at dest. The parent of
        dest must exist. If dest already exists with this content the partial
        file is just removed. A layer writer whose verified bytes do not
        decompress (unknown compression, corrupt data) raises CorruptLayerError
        ("layer sha256:…: …"), the partial file removed, nothing at dest.
        """
    def close(self) -> None:
        """Flush and close, keeping the partial file for a later resume."""

@final
class ChunkWriter:
    """The bytes [start, end) of a blob, fetched on a connection of their
    own (Fetcher.fetch_blob with `Range: bytes=start-(end-1)`) and written
    in place into the blob's existing partial file at `path` (pwrite),
    unhashed: the blob's BlobWriter takes them in with absorb(), and its
    commit() verifies the whole. A 200 answer or a Content-Range other
    than the one asked is FetchError(kind="range"), nothing written.
    OSError if `path` does not exist."""

    def __new__(cls, path: str, digest: str, start: int, end: int) -> Self: ...
    @property
    def offset(self) -> int:
        """The next byte to write: the bytes from `start` up to it are in
        the file (readable while a fetch runs)."""
    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...

@final
class Transfer:
    """A handle shared between a running fetch and Python: progress + cancel.

    Python reads `received` from any thread while the fetch runs with the GIL
    released; `cancel()` makes the fetch stop at its next chunk with
    FetchError(kind="cancelled"), the partial file kept.
    """

    def __new__(cls) -> Self: ...
    @property
    def received(self) -> int:
        """Body bytes received by the fetches using this handle."""
    @property
    def waited(self) -> float:
        """Seconds those fetches spent waiting for body bytes (the rest went
        to writing and hashing them): most of the time when the connection
        limits the rate."""
    @property
    def cancelled(self) -> bool: ...
    def cancel(self) -> None: ...

@final
class FetchResult:
    status: int
    # Response headers of the final response, names lower-cased.
    headers: list[tuple[str, str]]
    # Final URL after redirects.
    url: str
    # Body bytes written to the writer by this call.
    written: int
    # For a non-2xx status: the start of the body (at most 64 KiB), else b"".
    body: bytes

@final
class Fetcher:
    """A pooled HTTP/1.1 client (rustls) for blob bodies.

    Built with the same TLS and proxy settings as the httpx client.
    `ca_file`: PEM bundle of extra trusted roots (the system roots are kept).
    `client_cert`/`client_key`: PEM files for mutual TLS.
    `insecure`: skip certificate verification (explicit user choice only).
    `proxy`: 'http://host:port' or None.
    `read_timeout`: seconds without a byte before FetchError(kind="timeout").
    `stall_rate`/`stall_window`: a body under `stall_rate` bytes/s for
    `stall_window` seconds (a trickle, or silence) is given up with
    FetchError(kind="stalled", retryable=True), the bytes so far kept;
    `stall_rate=0` turns this off.
    Construction reads the PEM files (OSError if one is missing, ValueError
    if it holds no usable certificate/key or a setting is invalid), and with
    them the system roots; without them, the system roots are read at the
    first https URL (a plain-http registry's blobs never need them). No proxy
    is taken from the environment: pass the one to use.
    """

    def __new__(
        cls,
        *,
        user_agent: str,
        ca_file: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        insecure: bool = False,
        proxy: str | None = None,
        connect_timeout: float = 30.0,
        read_timeout: float = 60.0,
        stall_rate: int = 16384,
        stall_window: float = 30.0,
    ) -> Self: ...
    def fetch_blob(
        self,
        url: str,
        headers: Sequence[tuple[str, str]],
        writer: BlobWriter | ChunkWriter,
        transfer: Transfer | None = None,
    ) -> FetchResult:
        """GET url and stream a 2xx body into writer (GIL released throughout).

        Python sets every header, including `Range: bytes=<writer.offset>-`
        when resuming. Redirects (301/302/303/307/308) are followed up to 10
        times; Authorization is dropped when the host or scheme changes.
        The rules of a resume are applied here, before any body byte is
        written: 206 must have a Content-Range starting at writer.offset
        (else FetchError kind="range"); 200 while writer.offset > 0 means the
        range was ignored, so the writer is truncated and the full body
        written. A non-2xx status returns with `body` set and nothing written.
        The body is not verified here: call writer.commit().
        """
