"""A Client's connections, each built once: per endpoint (registry or
mirror) a Transport, and for foreign layer URLs a plain Fetcher per proxy."""

from __future__ import annotations

import re
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

from imgpull._core import Fetcher
from imgpull.errors import ConfigError
from imgpull.registry import Credentials, Endpoint, RegistryClient, is_loopback
from imgpull.registry.errors import one_line
from imgpull.retry import StallPolicy
from imgpull.version import USER_AGENT


@dataclass(frozen=True)
class Transport:
    """One endpoint's two HTTP clients, from its TLS files and the proxy for
    its host: httpx (ping, tokens, manifests, tags) and the native Fetcher
    (blob bodies)."""

    registry: RegistryClient
    fetcher: Fetcher

    def close(self) -> None:
        # The Fetcher's pool goes with its last reference.
        self.registry.close()


class Transports:
    """A Client's transports: by endpoint, and for foreign URLs by proxy.
    `credentials(name)` gives an endpoint's credentials (or None)."""

    def __init__(
        self,
        credentials: Callable[[str], Credentials | None],
        *,
        request_timeout: float,
        stall: StallPolicy,
    ) -> None:
        self._credentials = credentials
        self._request_timeout = request_timeout
        # What every Fetcher of the Client has.
        self._fetcher = partial(
            Fetcher, user_agent=USER_AGENT, stall_rate=stall.min_rate, stall_window=stall.window
        )
        self._lock = threading.Lock()
        self._endpoints: dict[Endpoint, Transport] = {}
        self._foreign: dict[str | None, Fetcher] = {}

    def get(self, endpoint: Endpoint) -> Transport:
        """The endpoint's transport; ConfigError for TLS files or a proxy
        that cannot be used."""
        with self._lock:
            found = self._endpoints.get(endpoint)
        if found is not None:
            return found
        # Built outside the lock: the credential lookup may run a helper
        # (docker-credential-*) for a while, and other endpoints need not wait.
        creds = self._credentials(endpoint.name)
        proxy = _proxy_for(endpoint)
        try:
            registry = RegistryClient(
                endpoint, credentials=creds, request_timeout=self._request_timeout
            )
        except (ImportError, ValueError) as e:  # httpx, on the environment's proxies
            raise ConfigError(_proxy_problem(endpoint, proxy, e)) from None
        try:
            fetcher = self._fetcher(
                proxy=proxy,
                ca_file=endpoint.ca_file,
                client_cert=endpoint.client_cert,
                client_key=endpoint.client_key,
                insecure=endpoint.insecure,
            )
        except (OSError, ValueError) as e:
            registry.close()
            if proxy is not None:
                raise ConfigError(_proxy_problem(endpoint, proxy, e)) from None
            # The native side reads the TLS files itself, and may refuse one
            # Python's ssl module took.
            raise ConfigError(
                f"cannot use the TLS files for {endpoint.host} (CA {endpoint.ca_file}, "
                f"client certificate {endpoint.client_cert}): {one_line(str(e), 200)}"
            ) from None
        with self._lock:
            found = self._endpoints.setdefault(endpoint, Transport(registry, fetcher))
        if found.registry is not registry:  # another thread got there first
            registry.close()
        return found

    def foreign(self, url: str) -> Fetcher:
        """The Fetcher for a foreign layer URL: system roots, no client
        certificate, the proxy for that URL's host."""
        parts = urlsplit(url)
        proxy = _proxy_for_host(parts.scheme, parts.hostname or "")
        with self._lock:
            found = self._foreign.get(proxy)
            if found is None:
                found = self._foreign[proxy] = self._fetcher(proxy=proxy)
            return found

    def close(self) -> None:
        with self._lock:
            transports, self._endpoints = list(self._endpoints.values()), {}
        for transport in transports:
            transport.close()


def _proxy_for(endpoint: Endpoint) -> str | None:
    """The proxy httpx would use for this host (HTTPS_PROXY / NO_PROXY)."""
    return _proxy_for_host(endpoint.scheme, urlsplit(endpoint.base_url).hostname or "")


def _proxy_problem(endpoint: Endpoint, proxy: str | None, error: Exception) -> str:
    text = (
        f"cannot use the proxy {proxy or 'of the environment'} for {endpoint.host}: "
        f"{one_line(str(error), 160)} (HTTPS_PROXY, HTTP_PROXY and ALL_PROXY take "
        "http://host:port)"
    )
    # A proxy URL may carry a user and password: never shown.
    return _USERINFO.sub(r"\1", text)


_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")


def _proxy_for_host(scheme: str, host: str) -> str | None:
    proxies = urllib.request.getproxies()
    host = host.strip("[]")
    # Loopback is never proxied, as in Go (and RegistryClient's httpx side).
    if not host or is_loopback(host) or urllib.request.proxy_bypass(host):
        return None
    # As httpx reads them: ALL_PROXY as the fallback, "host:port" meaning http://.
    proxy = proxies.get(scheme) or proxies.get("all")
    if proxy and "://" not in proxy:
        proxy = f"http://{proxy}"
    return proxy


__all__ = ["Transport", "Transports"]
