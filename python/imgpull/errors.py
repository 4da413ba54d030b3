"""The error hierarchy: every error imgpull raises, defined or re-exported here.

Every message says what went wrong and what to do. `except ImgpullError`
catches all of them::

    Exception
    └── ImgpullError ·························· native: the base of them all
        ├── DigestMismatchError ················ native: bytes ≠ their digest
        ├── SizeMismatchError ·················· native: more/fewer bytes than the size
        ├── FetchError ························· native: a transfer failed below HTTP
        ├── LimitExceededError ················· native: a decompression bomb, an endless body
        ├── CorruptLayerError (+ ValueError) ··· native: a layer that does not decompress
        ├── ExtractError ······················· native: a layer not applied to a rootfs
        ├── Schema1Error ······················· native, internal: turned into a ManifestError
        ├── InvalidReferenceError (+ ValueError)
        ├── InvalidPlatformError (+ ValueError)
        ├── RegistryError ······················ the registry answered with an error
        │   ├── AuthenticationError
        │   ├── NameUnknownError
        │   ├── ManifestUnknownError
        │   ├── ForeignLayerError
        │   ├── TLSVerificationError
        │   └── RegistryUnreachableError
        │       ├── RegistryRefusedError
        │       └── RegistryTimeoutError
        ├── ManifestError ······················ a manifest that cannot be used
        │   ├── UnsupportedManifestError
        │   ├── ManifestVerificationError
        │   └── LayerMismatchError
        ├── NoMatchingPlatformError
        ├── PullCancelledError
        │   └── PullTimeoutError
        ├── StoreError
        │   ├── DiskFullError
        │   └── DamagedBlobError ··············· a stored blob ≠ its digest
        ├── ImageNotFoundError
        ├── ImageConflictError
        ├── RootfsError
        ├── ExportError
        ├── ConfigError
        └── CredentialsError

The "native" classes are created by the extension module (rust/py/src/errors.rs
maps each core failure to one of them, in one place) and imported from it here;
the rest are defined here. Besides these, the native module raises ValueError
for a bad argument (a malformed digest, an invalid setting) or I/O on a closed
BlobWriter, and OSError (FileNotFoundError, ...) for a file error.
"""

from __future__ import annotations

from imgpull._core import (
    CorruptLayerError,
    DigestMismatchError,
    ExtractError,
    FetchError,
    ImgpullError,
    LimitExceededError,
    Schema1Error,
    SizeMismatchError,
)

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "CorruptLayerError",
    "CredentialsError",
    "DamagedBlobError",
    "DigestMismatchError",
    "DiskFullError",
    "ExportError",
    "ExtractError",
    "FetchError",
    "ForeignLayerError",
    "ImageConflictError",
    "ImageNotFoundError",
    "ImgpullError",
    "InvalidPlatformError",
    "InvalidReferenceError",
    "LayerMismatchError",
    "LimitExceededError",
    "ManifestError",
    "ManifestUnknownError",
    "ManifestVerificationError",
    "NameUnknownError",
    "NoMatchingPlatformError",
    "PullCancelledError",
    "PullTimeoutError",
    "RegistryError",
    "RegistryRefusedError",
    "RegistryTimeoutError",
    "RegistryUnreachableError",
    "RootfsError",
    "Schema1Error",
    "SizeMismatchError",
    "StoreError",
    "TLSVerificationError",
    "UnsupportedManifestError",
]


class InvalidReferenceError(ImgpullError, ValueError):
    """A reference string that is not valid docker reference syntax."""


class InvalidPlatformError(ImgpullError, ValueError):
    """A platform string or manifest platform object that cannot be used."""


class RegistryError(ImgpullError):
    """The registry answered with an error.

    `status` is the HTTP status; `code` the first registry error code
    (e.g. MANIFEST_UNKNOWN) when the body carried one; `retry_after` the
    seconds the registry asked to wait (`Retry-After`), when it said.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after


class AuthenticationError(RegistryError):
    """Credentials missing, wrong, or refused for this repository."""


class NameUnknownError(RegistryError):
    """The repository does not exist (or is not visible to you)."""


class ManifestUnknownError(RegistryError):
    """The tag or digest does not exist in the repository."""


class ForeignLayerError(RegistryError):
    """A foreign (non-distributable) layer could not be fetched from its
    URLs, or foreign layers are refused (`allow_foreign=False`)."""


class TLSVerificationError(RegistryError):
    """The registry's certificate is not trusted: waiting will not fix it."""


class RegistryUnreachableError(RegistryError):
    """No connection could be made to the registry."""


class RegistryRefusedError(RegistryUnreachableError):
    """Nothing listens at the registry's address, or its name does not
    resolve: no retry (docker fails at once too); waiting would only delay
    the one line that says so."""


class RegistryTimeoutError(RegistryUnreachableError):
    """A request (manifest, tag page, ping, token) did not complete within
    its overall deadline: retried like any network failure."""


class ManifestError(ImgpullError):
    """A manifest that cannot be used."""


class UnsupportedManifestError(ManifestError):
    """A manifest kind imgpull does not pull."""


class ManifestVerificationError(ManifestError):
    """A manifest whose bytes do not match the digest asked for."""


class LayerMismatchError(ManifestError):
    """The layers' diffIDs are not the config's rootfs.diff_ids."""


class NoMatchingPlatformError(ImgpullError):
    """A manifest list / index without an entry for the wanted platform."""


class PullCancelledError(ImgpullError):
    """The pull was stopped (Ctrl-C, its CancelToken, Client.close(), or
    another blob's failure). Partial downloads are kept for the next pull."""


class PullTimeoutError(PullCancelledError):
    """The pull did not finish within its `timeout` (Client.pull)."""


class StoreError(ImgpullError):
    """The local store is unusable (corrupt database, unwritable root, ...)."""


class DiskFullError(StoreError):
    """The disk (or quota) holding the store is full. Nothing half-written is
    kept in the store; partial downloads stay for the next pull to resume."""


class DamagedBlobError(StoreError):
    """A blob of the store is missing or its bytes are not its digest's (a
    file truncated or replaced behind imgpull's back). `digest` names it;
    `imgpull verify --repair` (Client.verify(repair=True)) fetches it again."""

    def __init__(self, message: str, digest: str) -> None:
        super().__init__(message)
        self.digest = digest


class ImageNotFoundError(ImgpullError):
    """No local image has that reference or ID ("No such image: ...")."""


class ImageConflictError(ImgpullError):
    """A change docker refuses as a conflict: a removal without --force, a
    digest reference moved to another image."""


class RootfsError(ImgpullError):
    """A directory cannot take a root filesystem (`pull --rootfs DIR`): not a
    directory, not empty, being written by another process."""


class ExportError(ImgpullError):
    """An export that cannot be made: a bad destination, a missing blob, a
    layer whose content does not match the config's diffID."""


class ConfigError(ImgpullError):
    """A certs.d folder or the mirror configuration cannot be used."""


class CredentialsError(ImgpullError):
    """The Docker config file or a credential helper cannot be used."""
