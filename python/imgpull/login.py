"""`imgpull login` / `logout`: verify credentials against a registry and file
them in Docker's config file (or its credential helper), as docker does."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
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
    client_cert: str | None = None,
    client_key: str | None = None,
    certs_dirs: Sequence[str | os.PathLike[str]] | None = None,
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
    # The TLS files a pull would use: the given CA, the host's certs.d folder.
    tls = hosts.TLSFiles(
        ca_file=ca_file, client_cert=client_cert, client_key=client_key, dirs=certs_dirs
    )
    try:
        endpoint = tls.apply(endpoint_for(domain, plain_http=plain_http, insecure=insecure))
        creds = Credentials(username, password)
        with RegistryClient(endpoint, credentials=creds, login=True) as rc:
            identity = rc.check_login()
    finally:
        tls.close()
    creds = Credentials(username, password, identity_token=identity)
    file = DockerConfig.load(Path(config) if config is not None else None)
    where = file.store(domain, creds)
    return LoginResult(domain, where, identity is not None)


def logout(server: str, *, config: str | os.PathLike[str] | None = None) -> bool:
    """Forget a registry's credentials; whether there were any."""
    file = DockerConfig.load(Path(config) if config is not None else None)
    return file.erase(registry_domain(server))
