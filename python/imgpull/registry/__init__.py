"""The registry side of a pull: endpoints, auth, manifests, tags, blob requests."""

from __future__ import annotations

from imgpull.registry.auth import Challenge, Credentials, CredentialStore, parse_challenges
from imgpull.registry.client import (
    DEFAULT_ACCEPT,
    MAX_MANIFEST_BYTES,
    Endpoint,
    ManifestHead,
    ManifestResponse,
    RegistryClient,
    endpoint_for,
    is_loopback,
)
from imgpull.registry.errors import error_from_response, parse_error_body, parse_retry_after

__all__ = [
    "DEFAULT_ACCEPT",
    "MAX_MANIFEST_BYTES",
    "Challenge",
    "CredentialStore",
    "Credentials",
    "Endpoint",
    "ManifestHead",
    "ManifestResponse",
    "RegistryClient",
    "endpoint_for",
    "error_from_response",
    "is_loopback",
    "parse_challenges",
    "parse_error_body",
    "parse_retry_after",
]
