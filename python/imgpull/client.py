"""The public library API: a Client owns a store and the registry connections.

    with imgpull.Client(root="/var/lib/imgpull") as client:
        image = client.pull("alpine:3.20", platform="linux/arm64")

The CLI is a thin layer over this class.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from imgpull._core import Fetcher
from imgpull.errors import ImgpullError
from imgpull.platform import Platform, host_platform, parse_platform
from imgpull.progress import ProgressCallback, ProgressEvent
from imgpull.pull import Image, Puller, PullOptions
from imgpull.reference import Reference, parse_reference
from imgpull.registry import Credentials, Endpoint, RegistryClient, endpoint_for
from imgpull.retry import RetryPolicy
from imgpull.store import Store
from imgpull.version import USER_AGENT

CredentialLookup = Callable[[str], "Credentials | None"]


@dataclass(frozen=True)
class ImageSummary:
    """One row of `imgpull images`: a reference and the image it names."""

    repository: str
    tag: str | None
    digest: str | None
    image_id: str
    created: str | None
    size: int


def _ignore(_: ProgressEvent) -> None:
    pass


class Client:
    """Pulls images into a local store.

    `plain_http`: True forces http, False forces https, None (the default)
    uses https except for loopback registries, as docker treats 127.0.0.0/8.
    `credentials` maps a registry host to credentials (or None).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        plain_http: bool | None = None,
        insecure: bool = False,
        ca_file: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        credentials: CredentialLookup | None = None,
        max_concurrent_downloads: int = 3,
        retry: RetryPolicy | None = None,
    ) -> None:
        if max_concurrent_downloads < 1:
            raise ImgpullError("max concurrent downloads must be at least 1")
        self.store = Store(root)
        self._insecure = insecure
        self._ca_file = ca_file
        self._client_cert = client_cert
        self._client_key = client_key
        self._plain_http = plain_http
        self._credentials = credentials
        self._max_concurrent = max_concurrent_downloads
        self._retry = retry or RetryPolicy()
        self._lock = threading.Lock()
        self._registries: dict[str, tuple[RegistryClient, Fetcher]] = {}

    # Lifecycle --------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            for registry, _ in self._registries.values():
                registry.close()
            self._registries.clear()
        self.store.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # Pull -------------------------------------------------------------------

    def pull(
        self,
        reference: str | Reference,
        *,
        platform: str | Platform | None = None,
        progress: ProgressCallback | None = None,
    ) -> Image:
        ref = parse_reference(reference) if isinstance(reference, str) else reference
        want = parse_platform(platform) if isinstance(platform, str) else platform
        registry, fetcher = self._registry(ref.domain)
        options = PullOptions(
            platform=want or host_platform(),
            max_concurrent_downloads=self._max_concurrent,
            retry=self._retry,
        )
        puller = Puller(self.store, registry, fetcher, options, progress or _ignore, ref)
        return puller.pull()

    def _registry(self, domain: str) -> tuple[RegistryClient, Fetcher]:
        with self._lock:
            found = self._registries.get(domain)
            if found is None:
                endpoint = endpoint_for(
                    domain,
                    plain_http=self._plain_http,
                    insecure=self._insecure,
                    ca_file=self._ca_file,
                    client_cert=self._client_cert,
                    client_key=self._client_key,
                )
                creds = self._credentials(endpoint.name) if self._credentials else None
                registry = RegistryClient(endpoint, credentials=creds)
                fetcher = Fetcher(
                    user_agent=USER_AGENT,
                    ca_file=endpoint.ca_file,
                    client_cert=endpoint.client_cert,
                    client_key=endpoint.client_key,
                    insecure=endpoint.insecure,
                    proxy=_proxy_for(endpoint),
                )
                found = self._registries[domain] = (registry, fetcher)
            return found

    # Local queries ----------------------------------------------------------

    def images(self) -> list[ImageSummary]:
        meta = self.store.meta
        rows: list[ImageSummary] = []
        for r in meta.references():
            image = meta.get_image(r.image_id)
            if image is None:
                continue
            rows.append(
                ImageSummary(
                    repository=parse_reference(r.name, default_tag=None).familiar_name,
                    tag=r.tag,
                    digest=r.digest,
                    image_id=image.id,
                    created=image.created,
                    size=image.size,
                )
            )
        return rows

    def resolve(self, reference: str) -> str:
        """The image ID a local reference (or an image ID / its prefix) names."""
        meta = self.store.meta
        try:
            ref = parse_reference(reference)
        except ImgpullError:
            ref = None
        if ref is not None:
            key = f"{ref.name}@{ref.digest}" if ref.digest else f"{ref.name}:{ref.tag}"
            found = meta.resolve(key)
            if found is not None:
                return found
        wanted = reference.removeprefix("sha256:")
        matches = {r.image_id for r in meta.references() if r.image_id[7:].startswith(wanted)}
        if len(wanted) >= 4 and len(matches) == 1:
            return matches.pop()
        raise ImgpullError(f"no such image: {reference} (pull it first, or see `imgpull images`)")

    def inspect(self, reference: str) -> dict[str, Any]:
        """What docker's `image inspect` shows that a puller knows."""
        image_id = self.resolve(reference)
        meta, content = self.store.meta, self.store.content
        image = meta.get_image(image_id)
        assert image is not None
        refs = meta.references(image_id)
        config = json.loads(content.read(image_id))
        return {
            "Id": image.id,
            "RepoTags": [f"{_familiar(r.name)}:{r.tag}" for r in refs if r.tag],
            "RepoDigests": [f"{_familiar(r.name)}@{r.digest}" for r in refs if r.digest],
            "ManifestDigest": image.manifest_digest,
            "ManifestMediaType": image.media_type,
            "Created": image.created,
            "Os": image.os,
            "Architecture": image.architecture,
            "Variant": image.variant,
            "Size": image.size,
            "Layers": [
                {"Digest": lr.digest, "Size": lr.size, "MediaType": lr.media_type}
                for lr in meta.image_layers(image_id)
            ],
            "Config": config.get("config"),
            "RootFS": config.get("rootfs"),
            "History": config.get("history"),
        }


def _familiar(name: str) -> str:
    return parse_reference(name, default_tag=None).familiar_name


def _proxy_for(endpoint: Endpoint) -> str | None:
    """The proxy httpx would use for this host (HTTPS_PROXY / NO_PROXY)."""
    import urllib.request

    proxies = urllib.request.getproxies()
    host = endpoint.host.rsplit(":", 1)[0] if endpoint.host.count(":") == 1 else endpoint.host
    if urllib.request.proxy_bypass(host) or host in ("localhost", "127.0.0.1", "::1"):
        return None
    return proxies.get(endpoint.scheme)


__all__ = ["Client", "Image", "ImageSummary", "Platform"]
