"""The error hierarchy. Every message says what went wrong and what to do.

The native module defines the base and the byte-level errors; everything else
is defined here as a subclass of the same base, so `except ImgpullError`
catches all of them.
"""

from __future__ import annotations

from imgpull._core import (
    DigestMismatchError,
    FetchError,
    ImgpullError,
    LimitExceededError,
    SizeMismatchError,
)

__all__ = [
    "AuthenticationError",
    "DigestMismatchError",
    "DiskFullError",
    "FetchError",
    "ForeignLayerError",
    "ImageConflictError",
    "ImageNotFoundError",
    "ImgpullError",
    "InvalidReferenceError",
    "LimitExceededError",
    "ManifestError",
    "ManifestUnknownError",
    "ManifestVerificationError",
    "NameUnknownError",
    "NoMatchingPlatformError",
    "PullCancelledError",
    "PullTimeoutError",
    "RegistryError",
    "RegistryTimeoutError",
    "RegistryUnreachableError",
    "SizeMismatchError",
    "StoreError",
    "TLSVerificationError",
    "UnsupportedManifestError",
]


class InvalidReferenceError(ImgpullError, ValueError):
    """A reference string that is not valid docker reference syntax."""


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


class ForeignLayerError(RegistryError):
    """A foreign (non-distributable) layer could not be fetched from its
    URLs, or foreign layers are refused (`allow_foreign=False`)."""


class AuthenticationError(RegistryError):
    """Credentials missing, wrong, or refused for this repository."""


class NameUnknownError(RegistryError):
    """The repository does not exist (or is not visible to you)."""


class ManifestUnknownError(RegistryError):
    """The tag or digest does not exist in the repository."""


class RegistryUnreachableError(RegistryError):
    """No connection could be made to the registry."""


class RegistryTimeoutError(RegistryUnreachableError):
    """A request (manifest, tag page, ping, token) did not complete within
    its overall deadline: retried like any network failure."""


class TLSVerificationError(RegistryError):
    """The registry's certificate is not trusted: waiting will not fix it."""


class ManifestError(ImgpullError):
    """A manifest that cannot be used."""


class UnsupportedManifestError(ManifestError):
    """A manifest kind imgpull does not pull."""


class ManifestVerificationError(ManifestError):
    """A manifest whose bytes do not match the digest asked for."""


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


class ImageNotFoundError(ImgpullError):
    """No local image has that reference or ID ("No such image: ...")."""


class ImageConflictError(ImgpullError):
    """A change docker refuses as a conflict: a removal without --force, a
    digest reference moved to another image."""


class RootfsError(ImgpullError):
    """A directory cannot take a root filesystem (`pull --rootfs DIR`): not a
    directory, not empty, being written by another process."""
