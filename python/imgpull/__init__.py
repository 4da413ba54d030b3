"""imgpull: a fast, verifying container-image puller for v2 registries."""

from __future__ import annotations

from imgpull._core import __version__
from imgpull.client import Client, ImageSummary
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
from imgpull.platform import Platform, parse_platform
from imgpull.progress import ProgressEvent
from imgpull.pull import Image
from imgpull.reference import Reference, parse_reference

__all__ = [
    "AuthenticationError",
    "Client",
    "DigestMismatchError",
    "FetchError",
    "Image",
    "ImageSummary",
    "ImgpullError",
    "InvalidReferenceError",
    "ManifestError",
    "ManifestUnknownError",
    "ManifestVerificationError",
    "NameUnknownError",
    "NoMatchingPlatformError",
    "Platform",
    "ProgressEvent",
    "Reference",
    "RegistryError",
    "RegistryUnreachableError",
    "SizeMismatchError",
    "StoreError",
    "UnsupportedManifestError",
    "__version__",
    "parse_platform",
    "parse_reference",
]
