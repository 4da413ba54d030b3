"""imgpull: a fast, verifying container-image puller for v2 registries.

The errors (all from imgpull.errors) and `__version__` are always loaded, so
`except imgpull.XError` costs nothing. Every other public name is loaded on
first use (PEP 562), so that `import imgpull` and the command's start-up stay
cheap (no httpx). Type checkers see all of them through the `TYPE_CHECKING` imports; the module
`__getattr__` is hidden from them, so a name not exported here is an error
for mypy as it is at run time.
"""

from imgpull._core import __version__
from imgpull.errors import (
    AuthenticationError,
    ConfigError,
    CorruptLayerError,
    CredentialsError,
    DamagedBlobError,
    DigestMismatchError,
    DiskFullError,
    ExportError,
    ExtractError,
    FetchError,
    ForeignLayerError,
    ImageConflictError,
    ImageNotFoundError,
    ImgpullError,
    InvalidPlatformError,
    InvalidReferenceError,
    LayerMismatchError,
    LimitExceededError,
    ManifestError,
    ManifestUnknownError,
    ManifestVerificationError,
    NameUnknownError,
    NoMatchingPlatformError,
    PullCancelledError,
    PullTimeoutError,
    RegistryError,
    RegistryRefusedError,
    RegistryTimeoutError,
    RegistryUnreachableError,
    RootfsError,
    SizeMismatchError,
    StoreError,
    TLSVerificationError,
    UnsupportedManifestError,
)

# typing.TYPE_CHECKING without importing typing (~5 ms of `imgpull
# --version`): type checkers take any TYPE_CHECKING as true. Deleted below.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from imgpull.aio import AsyncClient
    from imgpull.client import Client, ImageSummary, Removal
    from imgpull.hosts import Mirror
    from imgpull.platform import Platform, parse_platform
    from imgpull.progress import ProgressEvent
    from imgpull.pull import Image
    from imgpull.reference import Reference, parse_reference
    from imgpull.retry import RetryPolicy, StallPolicy
    from imgpull.transfer import CancelToken

# The lazily loaded names and their modules: keep in step with the imports above.
_LAZY = {
    "AsyncClient": "imgpull.aio",
    "CancelToken": "imgpull.transfer",
    "Client": "imgpull.client",
    "ImageSummary": "imgpull.client",
    "Removal": "imgpull.client",
    "Mirror": "imgpull.hosts",
    "Platform": "imgpull.platform",
    "parse_platform": "imgpull.platform",
    "ProgressEvent": "imgpull.progress",
    "Image": "imgpull.pull",
    "Reference": "imgpull.reference",
    "parse_reference": "imgpull.reference",
    "RetryPolicy": "imgpull.retry",
    "StallPolicy": "imgpull.retry",
}

# Not seen by type checkers: a module `__getattr__` would make every
# attribute of `imgpull` exist for mypy (typed as its return type).
if not TYPE_CHECKING:

    def __getattr__(name):
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'imgpull' has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value

    def __dir__():
        return sorted(set(globals()) | set(__all__))


del TYPE_CHECKING


__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "CancelToken",
    "Client",
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
    "Image",
    "ImageConflictError",
    "ImageNotFoundError",
    "ImageSummary",
    "ImgpullError",
    "InvalidPlatformError",
    "InvalidReferenceError",
    "LayerMismatchError",
    "LimitExceededError",
    "ManifestError",
    "ManifestUnknownError",
    "ManifestVerificationError",
    "Mirror",
    "NameUnknownError",
    "NoMatchingPlatformError",
    "Platform",
    "ProgressEvent",
    "PullCancelledError",
    "PullTimeoutError",
    "Reference",
    "RegistryError",
    "RegistryRefusedError",
    "RegistryTimeoutError",
    "RegistryUnreachableError",
    "Removal",
    "RetryPolicy",
    "RootfsError",
    "SizeMismatchError",
    "StallPolicy",
    "StoreError",
    "TLSVerificationError",
    "UnsupportedManifestError",
    "__version__",
    "parse_platform",
    "parse_reference",
]
