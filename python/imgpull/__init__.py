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
    "Image",
    "ImageSummary",
    "Platform",
    "ProgressEvent",
    "Reference",
    "parse_platform",
    "parse_reference",
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
