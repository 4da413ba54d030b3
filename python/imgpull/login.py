"""`imgpull login` / `logout`: verify credentials against a registry and file
them in Docker's config file (or its credential helper), as docker does."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from imgpull import hosts
from imgpull.credentials import DockerConfig, registry_domain
from imgpull.errors import ImgpullError
from imgpull.registry import Credentials, RegistryClient, endpoint_for

__all__ = ["LoginResult", "login", "logout"]


@dataclass(frozen=True)
class LoginResult:
    registry: str  # as references name it: "docker.io", "127.0.0.1:5000"
    stored_in: str  # the config file, or "credential helper docker-credential-x"
    identity_token: bool  # the token server handed out one; it was stored, not the password


def login(
    server: str,
    username: str,
    password: str,
    *,
    plain_http: bool | None = None,
    insecure: bool = False,
    ca_file: str | None = None,
    config: str | os.PathLike[str] | None = None,
) -> LoginResult:
    """Check `username`/`password` against `server` (ping, then a token with no
    scope) and store them. A refresh token from the token server is stored in
    place of the password, as `docker login` does."""
    if not username:
        raise ImgpullError("login needs a username (--username)")
    if not password:
        raise ImgpullError("login needs a password (--password-stdin)")
    domain = registry_domain(server)
    endpoint = endpoint_for(domain, plain_http=plain_http, insecure=insecure)
    # The host's certs.d folder, as for a pull (its first CA when none is given).
    found = hosts.host_tls(endpoint.host, hosts.certs_dirs())
    endpoint = replace(
        endpoint,
        ca_file=ca_file or next(iter(found.ca_files), None),
        client_cert=found.client_cert,
        client_key=found.client_key,
    )
    with RegistryClient(endpoint, credentials=Credentials(username, password), login=True) as rc:
        identity = rc.check_login()
    creds = Credentials(username, password, identity_token=identity)
    file = DockerConfig.load(Path(config) if config is not None else None)
    where = file.store(domain, creds)
    return LoginResult(domain, where, identity is not None)


def logout(server: str, *, config: str | os.PathLike[str] | None = None) -> bool:
    """Forget a registry's credentials; whether there were any."""
    file = DockerConfig.load(Path(config) if config is not None else None)
    return file.erase(registry_domain(server))
