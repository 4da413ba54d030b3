"""imgpull: a fast, verifying container-image puller for v2 registries.

The public names are loaded on first use (PEP 562), so that `import imgpull`
and the command's start-up stay cheap; the errors are always loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from imgpull._core import __version__
from imgpull.errors import (
    AuthenticationError,
    DigestMismatchError,
    DiskFullError,
    FetchError,
    ForeignLayerError,
    ImgpullError,
    InvalidReferenceError,
    LimitExceededError,
    ManifestError,
    ManifestUnknownError,
    ManifestVerificationError,
    NameUnknownError,
    NoMatchingPlatformError,
    PullCancelledError,
    PullTimeoutError,
    RegistryError,
    RegistryTimeoutError,
    RegistryUnreachableError,
    SizeMismatchError,
    StoreError,
    TLSVerificationError,
    UnsupportedManifestError,
)

if TYPE_CHECKING:
    from imgpull.client import Client, ImageSummary
    from imgpull.platform import Platform, parse_platform
    from imgpull.progress import ProgressEvent
    from imgpull.pull import Image
    from imgpull.reference import Reference, parse_reference
    from imgpull.transfer import CancelToken

_LAZY = {
    "CancelToken": "imgpull.transfer",
    "Client": "imgpull.client",
    "ImageSummary": "imgpull.client",
    "Image": "imgpull.pull",
    "Platform": "imgpull.platform",
    "parse_platform": "imgpull.platform",
    "ProgressEvent": "imgpull.progress",
    "Reference": "imgpull.reference",
    "parse_reference": "imgpull.reference",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'imgpull' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AuthenticationError",
    "CancelToken",
    "Client",
    "DigestMismatchError",
    "DiskFullError",
    "FetchError",
    "ForeignLayerError",
    "Image",
    "ImageSummary",
    "ImgpullError",
    "InvalidReferenceError",
    "LimitExceededError",
    "ManifestError",
    "ManifestUnknownError",
    "ManifestVerificationError",
    "NameUnknownError",
    "NoMatchingPlatformError",
    "Platform",
    "ProgressEvent",
    "PullCancelledError",
    "PullTimeoutError",
    "Reference",
    "RegistryError",
    "RegistryTimeoutError",
    "RegistryUnreachableError",
    "SizeMismatchError",
    "StoreError",
    "TLSVerificationError",
    "UnsupportedManifestError",
    "__version__",
    "parse_platform",
    "parse_reference",
]
