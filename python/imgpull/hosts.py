"""Per-host settings read from disk: TLS files (certs.d) and registry mirrors.

certs.d is Docker's layout (pull-semantics §2): `<dir>/<host[:port]>/` holds
`*.crt` files, extra CAs to trust for that host, and `*.cert` + `*.key` pairs
(same base name), its client certificates. The first directory of the search
path that has a folder for the host is used, as containers/image does.

Mirrors come from a TOML file in the format of containers-registries.conf(5),
of which imgpull reads the `[[registry]]` tables' `prefix`/`location` and
their `[[registry.mirror]]` `location`/`insecure` (everything else is left to
the tools that use it):

    [[registry]]
    prefix = "docker.io"
    [[registry.mirror]]
    location = "mirror.example.com:5000"
    [[registry.mirror]]
    location = "http://10.0.0.2:5000"   # plain HTTP
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from imgpull.errors import ConfigError

if TYPE_CHECKING:  # not at run time: the registry package loads httpx
    from imgpull.registry import Endpoint

__all__ = [
    "ConfigError",
    "HostTLS",
    "Mirror",
    "MirrorConfig",
    "certs_dirs",
    "config_path",
    "host_tls",
    "load_config",
    "parse_mirror",
    "registry_key",
]

# The certs.d search path (':'-separated), replacing the defaults of certs_dirs().
CERTS_D_ENV = "IMGPULL_CERTS_D"
# The mirror configuration file, instead of ~/.config/imgpull/config.toml.
CONFIG_ENV = "IMGPULL_CONFIG"


def certs_dirs(given: Sequence[str | os.PathLike[str]] | None = None) -> tuple[Path, ...]:
    """The certs.d search path: `given`, else $IMGPULL_CERTS_D, else the defaults."""
    if given is not None:
        return tuple(Path(d) for d in given)
    env = os.environ.get(CERTS_D_ENV)
    if env is not None:
        return tuple(Path(d) for d in env.split(os.pathsep) if d)
    return (
        Path.home() / ".config" / "imgpull" / "certs.d",
        Path("/etc/docker/certs.d"),
        Path("/etc/containers/certs.d"),
    )


@dataclass(frozen=True)
class HostTLS:
    """What a certs.d folder gives one host (all paths as strings)."""

    ca_files: tuple[str, ...] = ()
    client_cert: str | None = None
    client_key: str | None = None
    folder: str | None = None


def host_tls(host: str, dirs: Iterable[Path]) -> HostTLS:
    """The TLS files for `host` (host[:port]) from the first dir that has a folder for it."""
    for base in dirs:
        folder = base / host
        try:
            names = sorted(p.name for p in folder.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            raise ConfigError(f"cannot read certs.d folder {folder}: {e.strerror}") from None
        cas = tuple(str(folder / n) for n in names if n.endswith(".crt"))
        certs = {n[: -len(".cert")] for n in names if n.endswith(".cert")}
        keys = {n[: -len(".key")] for n in names if n.endswith(".key")}
        # Docker refuses a certificate without its key and a key without its certificate.
        for stem in sorted(certs ^ keys):
            if stem in certs:
                what = f"missing key {stem}.key for client certificate {folder / stem}.cert"
            else:
                what = f"missing client certificate {stem}.cert for key {folder / stem}.key"
            raise ConfigError(f"{what} (certs.d pairs NAME.cert with NAME.key)")
        if certs:
            first = folder / min(certs)
            return HostTLS(cas, f"{first}.cert", f"{first}.key", str(folder))
        return HostTLS(cas, folder=str(folder))
    return HostTLS()


class TLSFiles:
    """The TLS files of every endpoint a client talks to: the CA file and client
    certificate given (CLI or API) plus each host's certs.d folder.

    The native Fetcher reads one CA file, so when a host has several (a given
    one and certs.d's) they are joined into one bundle in a temporary folder
    that close() removes.
    """

    def __init__(
        self,
        *,
        ca_file: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        dirs: Sequence[str | os.PathLike[str]] | None = None,
    ) -> None:
        if client_key and not client_cert:
            raise ConfigError("a client key needs its client certificate (--client-cert)")
        self.ca_file = ca_file
        self.client_cert = client_cert
        self.client_key = client_key
        self.dirs = certs_dirs(dirs)
        self._bundle_dir: str | None = None
        self._lock = threading.Lock()

    def apply(self, endpoint: Endpoint) -> Endpoint:
        """`endpoint` with its CA bundle and client certificate filled in."""
        found = host_tls(endpoint.host, self.dirs)
        cas = [*([self.ca_file] if self.ca_file else []), *found.ca_files]
        cert, key = (
            (self.client_cert, self.client_key)
            if self.client_cert
            else (found.client_cert, found.client_key)
        )
        return replace(endpoint, ca_file=self._bundle(cas), client_cert=cert, client_key=key)

    def _bundle(self, files: Sequence[str]) -> str | None:
        """One PEM file holding every CA of `files` (None for none)."""
        # Imported here, as shutil, tomllib below: most runs use none of them.
        import hashlib
        import tempfile

        if len(files) < 2:
            return files[0] if files else None
        try:
            data = b"".join(Path(f).read_bytes().strip() + b"\n" for f in files)
        except OSError as e:
            raise ConfigError(f"cannot read CA file {e.filename}: {e.strerror}") from None
        with self._lock:
            if self._bundle_dir is None:
                self._bundle_dir = tempfile.mkdtemp(prefix="imgpull-ca-")
            path = Path(self._bundle_dir) / f"{hashlib.sha256(data).hexdigest()}.pem"
            if not path.exists():
                path.write_bytes(data)
        return str(path)

    def close(self) -> None:
        with self._lock:
            bundles, self._bundle_dir = self._bundle_dir, None
        if bundles:
            import shutil

            shutil.rmtree(bundles, ignore_errors=True)


def registry_key(name: str) -> str:
    """A registry as references name it: Docker Hub's aliases are `docker.io`."""
    name = name.strip().rstrip("/").lower()
    return "docker.io" if name in ("index.docker.io", "registry-1.docker.io") else name


@dataclass(frozen=True)
class Mirror:
    """One mirror endpoint. `scheme` None: as for the registry itself
    (HTTPS; plain HTTP allowed for loopback)."""

    host: str
    scheme: str | None = None
    insecure: bool = False

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}" if self.scheme else self.host


def parse_mirror(text: str, *, insecure: bool = False) -> Mirror:
    """`host[:port]`, `https://host[:port]` or `http://host[:port]`."""
    raw = text.strip()
    if "://" in raw:
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https"):
            raise ConfigError(f"mirror {text!r}: the scheme must be http or https")
        scheme: str | None = parts.scheme
        host, path, extra = parts.netloc, parts.path, parts.query or parts.fragment
    else:
        scheme = None
        host, _, path = raw.partition("/")
        extra = ""
    if path.strip("/") or extra:
        raise ConfigError(
            f"mirror {text!r}: give the mirror as [http[s]://]host[:port], without a path"
        )
    if not host or "@" in host or any(c.isspace() for c in host):
        raise ConfigError(f"mirror {text!r}: not a host[:port]")
    return Mirror(host=host.lower(), scheme=scheme, insecure=insecure)


@dataclass(frozen=True)
class MirrorConfig:
    """Mirrors by registry (`docker.io`, `host:port`), each list in the order tried."""

    mirrors: Mapping[str, tuple[Mirror, ...]] = field(default_factory=dict)
    path: str | None = None

    def for_registry(self, domain: str) -> tuple[Mirror, ...]:
        return tuple(self.mirrors.get(registry_key(domain), ()))


def config_path() -> Path | None:
    """$IMGPULL_CONFIG (which then must exist), else ~/.config/imgpull/config.toml if present."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    default = Path.home() / ".config" / "imgpull" / "config.toml"
    return default if default.exists() else None


def load_config(path: str | os.PathLike[str] | None = None) -> MirrorConfig:
    """The mirror configuration from `path` (default: config_path()); empty if none."""
    where = Path(path) if path is not None else config_path()
    if where is None:
        return MirrorConfig()
    import tomllib

    try:
        data = tomllib.loads(where.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read the configuration {where}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"configuration {where} is not valid TOML: {e}") from None
    return MirrorConfig(_mirrors(data, where), str(where))


def _mirrors(data: dict[str, Any], where: Path) -> dict[str, tuple[Mirror, ...]]:
    tables = data.get("registry", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{where}: `registry` must be an array of tables ([[registry]])")
    out: dict[str, tuple[Mirror, ...]] = {}
    for i, table in enumerate(tables):
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: registry #{i + 1} is not a table")
        name = table.get("prefix") or table.get("location")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}: registry #{i + 1} needs a prefix (or location)")
        if "/" in name.strip().rstrip("/"):
            raise ConfigError(
                f"{where}: registry prefix {name!r}: mirrors are configured for a whole "
                "registry (host[:port]), not a repository"
            )
        entries = table.get("mirror", [])
        if not isinstance(entries, list) or not all(isinstance(m, dict) for m in entries):
            raise ConfigError(f"{where}: mirrors of {name} must be [[registry.mirror]] tables")
        mirrors = []
        for m in entries:
            location, insecure = m.get("location"), m.get("insecure", False)
            if not isinstance(location, str) or not isinstance(insecure, bool):
                raise ConfigError(
                    f'{where}: a mirror of {name} needs location = "host[:port]" '
                    "(and insecure, if given, true or false)"
                )
            try:
                mirrors.append(parse_mirror(location, insecure=insecure))
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
        out[registry_key(name)] = tuple(mirrors)
    return out
