"""Registry credentials from Docker's config file, read and written as docker does.

The file is `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`:

    {"auths": {"127.0.0.1:5000": {"auth": "<base64 user:pass>"},
               "https://index.docker.io/v1/": {"auth": "...", "identitytoken": "..."}},
     "credsStore": "desktop",
     "credHelpers": {"gcr.io": "gcloud"}}

A registry's credentials come from its `credHelpers` entry, else from
`credsStore`, else from `auths` (docker/cli's configfile). A helper is the
program `docker-credential-<name>`: `get` reads the server URL on stdin and
prints `{"ServerURL", "Username", "Secret"}`; Username `<token>` means the
secret is an identity token. Docker Hub's key is `https://index.docker.io/v1/`;
other keys are `host[:port]`, matched with or without a scheme or path.

Secrets never reach a message, a log line or a repr: Credentials hides them,
and errors name only the file, the registry and the helper.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgpull.errors import CredentialsError
from imgpull.registry.auth import Credentials
from imgpull.registry.errors import one_line

__all__ = [
    "DOCKER_HUB_KEY",
    "CredentialsError",
    "DockerConfig",
    "DockerCredentials",
    "config_path",
    "server_key",
]

log = logging.getLogger("imgpull.credentials")

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
# What docker-credential-helpers print (exit 1) when they hold nothing.
_NOT_FOUND = "credentials not found in native keychain"
# Username a helper stores with an identity token as its secret.
_TOKEN_USERNAME = "<token>"
_HELPER_TIMEOUT = 60.0


def config_path() -> Path:
    """`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`."""
    folder = os.environ.get("DOCKER_CONFIG")
    return (Path(folder) if folder else Path.home() / ".docker") / "config.json"


def hostname_of(server: str) -> str:
    """docker's ConvertToHostname: `https://host:port/v1/` → `host:port`."""
    s = server.strip()
    for prefix in ("http://", "https://"):
        if s.lower().startswith(prefix):
            s = s[len(prefix) :]
            break
    return s.split("/", 1)[0]


def server_key(registry: str) -> str:
    """The key docker files a registry's credentials under."""
    host = hostname_of(registry)
    return DOCKER_HUB_KEY if host.lower() in _HUB_HOSTS else host


def registry_domain(server: str) -> str:
    """The registry as references name it: `docker.io` or `host[:port]`."""
    key = server_key(server)
    return "docker.io" if key == DOCKER_HUB_KEY else key


def _same_registry(a: str, b: str) -> bool:
    return server_key(a).lower() == server_key(b).lower()


# ---------------------------------------------------------------------------
# Credential helpers


def _run_helper(helper: str, action: str, stdin: str) -> str:
    """Run `docker-credential-<helper> <action>`; its stdout.

    Raises _HelperNotFound for docker's "credentials not found" answer and
    CredentialsError for anything else that goes wrong.
    """
    program = f"docker-credential-{helper}"
    log.debug("running %s %s", program, action)
    try:
        proc = subprocess.run(
            [program, action],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=_HELPER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise CredentialsError(
            f"credential helper {program} is not on PATH (named in {config_path()}): "
            "install it or remove it from the file"
        ) from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CredentialsError(f"credential helper {program} failed: {type(e).__name__}") from None
    if proc.returncode != 0:
        said = one_line(proc.stdout.strip() or proc.stderr.strip(), 160)
        if said == _NOT_FOUND:
            raise _HelperNotFound
        raise CredentialsError(
            f"credential helper {program} {action} failed (exit {proc.returncode})"
            f"{': ' + said if said else ''}"
        )
    return proc.stdout


class _HelperNotFound(Exception):
    """The helper holds no credentials for that server."""


def _helper_get(helper: str, key: str) -> Credentials | None:
    try:
        out = _run_helper(helper, "get", key)
    except _HelperNotFound:
        return None
    try:
        data = json.loads(out)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise CredentialsError(f"credential helper docker-credential-{helper} sent no JSON object")
    user, secret = data.get("Username"), data.get("Secret")
    if not isinstance(user, str) or not isinstance(secret, str):
        raise CredentialsError(
            f"credential helper docker-credential-{helper} sent no Username/Secret strings"
        )
    if not secret:
        return None
    if user == _TOKEN_USERNAME:
        return Credentials(identity_token=secret)
    return Credentials(user, secret)


# ---------------------------------------------------------------------------
# The config file


@dataclass
class DockerConfig:
    """The parsed file: every key kept, so writing it back loses nothing."""

    path: Path
    data: dict[str, Any] = field(repr=False)  # holds auths and identity tokens

    @classmethod
    def load(cls, path: Path | None = None) -> DockerConfig:
        path = path or config_path()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path, {})
        except (OSError, UnicodeDecodeError) as e:
            raise CredentialsError(f"cannot read {path}: {type(e).__name__}") from None
        if not text.strip():
            return cls(path, {})
        try:
            data = json.loads(text)
        except ValueError as e:
            # json's message gives a position only, never the content.
            raise CredentialsError(f"{path} is not valid JSON ({e}): fix or remove it") from None
        if not isinstance(data, dict):
            raise CredentialsError(f"{path} is not a JSON object: fix or remove it")
        for name in ("auths", "credHelpers"):
            if not isinstance(data.get(name, {}), dict):
                raise CredentialsError(f"{path}: {name!r} is not an object: fix or remove it")
        if not isinstance(data.get("credsStore", ""), str):
            raise CredentialsError(f"{path}: 'credsStore' is not a string: fix or remove it")
        return cls(path, data)

    @property
    def auths(self) -> dict[str, Any]:
        auths: dict[str, Any] = self.data.setdefault("auths", {})
        return auths

    def helper_for(self, registry: str) -> str | None:
        """The credential helper for a registry: credHelpers, else credsStore."""
        helpers: dict[str, Any] = self.data.get("credHelpers") or {}
        for k, v in helpers.items():
            if isinstance(v, str) and v and _same_registry(k, registry):
                return v
        store = self.data.get("credsStore")
        return store or None

    def _entry_key(self, registry: str) -> str | None:
        key = server_key(registry)
        if key in self.auths:
            return key
        return next((k for k in self.auths if _same_registry(k, registry)), None)

    def lookup(self, registry: str) -> Credentials | None:
        """The credentials for `registry` ("docker.io", "host:port"), or None."""
        key = server_key(registry)
        helper = self.helper_for(registry)
        if helper:
            creds = _helper_get(helper, key)
            source = f"docker-credential-{helper}" if creds else "none (helper has none)"
            log.debug("credentials for %s: %s", registry, source)
            return creds
        found = self._entry_key(registry)
        creds = self._from_entry(found) if found is not None else None
        log.debug("credentials for %s: %s", registry, self.path if creds else "none (anonymous)")
        return creds

    def _from_entry(self, key: str) -> Credentials | None:
        entry = self.auths[key]
        if not isinstance(entry, dict):
            raise CredentialsError(f"{self.path}: the entry for {key} is not an object")
        username, password = entry.get("username"), entry.get("password")
        encoded = entry.get("auth")
        if encoded:
            try:
                raw = base64.b64decode(str(encoded), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raw = ""
            if ":" not in raw:
                raise CredentialsError(
                    f"{self.path}: the 'auth' of {key} is not base64 of user:password; "
                    f"run imgpull login {registry_domain(key)} again"
                )
            username, password = raw.split(":", 1)
        token = entry.get("identitytoken")
        if not isinstance(token, str) or not token:
            token = None
        user = username if isinstance(username, str) and username else None
        secret = password if isinstance(password, str) and password else None
        if token is None and (user is None or secret is None):
            return None
        return Credentials(user, None if token else secret, identity_token=token)

    # -- writing ------------------------------------------------------------

    def save(self) -> None:
        """Write atomically (temp file, fsync, rename), mode 0600, tab-indented
        as docker writes it. A symlinked file is replaced at its target."""
        target = Path(os.path.realpath(self.path))
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".config.json.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                os.fchmod(f.fileno(), 0o600)
                json.dump(self.data, f, indent="\t")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def store(self, registry: str, creds: Credentials) -> str:
        """File the credentials as `docker login` does; where they went."""
        key = server_key(registry)
        for old in [k for k in self.auths if k != key and _same_registry(k, key)]:
            del self.auths[old]
        helper = self.helper_for(registry)
        if helper:
            if creds.identity_token:
                user, secret = _TOKEN_USERNAME, creds.identity_token
            else:
                user, secret = creds.username or "", creds.password or ""
            payload = json.dumps({"ServerURL": key, "Username": user, "Secret": secret})
            _run_helper(helper, "store", payload)
            self.auths[key] = {}  # docker keeps an empty entry: the file lists the login
            self.save()
            return f"credential helper docker-credential-{helper}"
        entry: dict[str, Any] = {}
        # With an identity token, docker keeps "user:" and drops the password.
        password = "" if creds.identity_token else (creds.password or "")
        raw = f"{creds.username or ''}:{password}"
        entry["auth"] = base64.b64encode(raw.encode()).decode("ascii")
        if creds.identity_token:
            entry["identitytoken"] = creds.identity_token
        self.auths[key] = entry
        self.save()
        return str(self.path)

    def erase(self, registry: str) -> bool:
        """Remove a registry's credentials (`docker logout`); whether any were held."""
        key = server_key(registry)
        helper = self.helper_for(registry)
        removed = False
        if helper:
            try:
                _run_helper(helper, "erase", key)
                removed = True
            except _HelperNotFound:
                pass
        keys = [k for k in self.auths if _same_registry(k, key)]
        for k in keys:
            del self.auths[k]
        if keys:
            self.save()
        return removed or bool(keys)


class DockerCredentials:
    """The default credential source: `Client(credentials=DockerCredentials())`.

    Reads the file at each lookup (`DOCKER_CONFIG` as it is then). A Client
    looks a registry up once, when it first talks to it, and keeps those
    credentials: a `login` made later counts for new Clients.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._path = Path(path) if path is not None else None

    def __call__(self, registry: str) -> Credentials | None:
        return DockerConfig.load(self._path).lookup(registry)

    def __repr__(self) -> str:
        return f"DockerCredentials({str(self._path or config_path())!r})"
