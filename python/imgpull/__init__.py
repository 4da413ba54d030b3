"""imgpull: a fast, verifying container-image puller for v2 registries."""

from __future__ import annotations

from imgpull._core import __version__
from imgpull.errors import (
    AuthenticationError,
    DigestMismatchError,
    FetchError,
    ImgpullError,
    InvalidReferenceError,
    ManifestError,
    ManifestUnknownError,
    ManifestVerificationError,
    NameUnknownError,
    NoMatchingPlatformError,
    RegistryError,
    RegistryUnreachableError,
    SizeMismatchError,
    StoreError,
    UnsupportedManifestError,
)

__all__ = [
    "AuthenticationError",
    "DigestMismatchError",
    "FetchError",
    "ImgpullError",
    "InvalidReferenceError",
    "ManifestError",
    "ManifestUnknownError",
    "ManifestVerificationError",
    "NameUnknownError",
    "NoMatchingPlatformError",
    "RegistryError",
    "RegistryUnreachableError",
    "SizeMismatchError",
    "StoreError",
    "UnsupportedManifestError",
    "__version__",
]
