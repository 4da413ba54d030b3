"""A real CNCF distribution registry (Debian's ``docker-registry``) for the tests.

Every test that talks to a registry talks to this one: a real server on a free
loopback port, with its own temporary storage folder, optionally behind TLS
(a CA and server certificate made here with ``openssl``) and/or htpasswd basic
auth.  A missing binary raises :class:`MissingToolError`; the test suite turns
that into a failure, never a skip, because a suite that silently skips every
registry test proves nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from .process import Managed, terminate

REGISTRY_BINARY = "docker-registry"

# Servers still running; atexit stops them if a test run dies without
# unwinding its fixtures (KeyboardInterrupt in the wrong place, os._exit in a
# plugin...), so no registry outlives the test process.
_LIVE: set[RegistryServer] = set()
_LIVE_LOCK = threading.Lock()


@dataclass(frozen=True)
class TokenAuth:
    """The registry's `auth: token:` settings: it trusts JWTs from this issuer
    (see support.tokenissuer). `push_credentials` are what skopeo pushes with."""

    realm: str
    service: str
    issuer: str
    rootcertbundle: Path
    push_credentials: tuple[str, str] | None = None


class MissingToolError(RuntimeError):
    """A binary the test support needs is not installed."""


class RegistryStartError(RuntimeError):
    """The registry process did not come up (its log is in the message)."""


def require_tool(name: str) -> str:
    """Return the absolute path of ``name`` or raise :class:`MissingToolError`."""
    path = shutil.which(name)
    if path is None:
        raise MissingToolError(
            f"{name!r} is not on PATH; install it (scripts/test.sh installs "
            "docker-registry, skopeo and openssl from Debian's packages)"
        )
    return path


# What every test against a registry needs (the e2e fixtures check them first).
REQUIRED_TOOLS = ("docker-registry", "skopeo", "openssl")


def require_tools() -> None:
    """pytest.fail (never skip) when a tool the registry tests need is missing."""
    import pytest

    try:
        for tool in REQUIRED_TOOLS:
            require_tool(tool)
    except MissingToolError as exc:
        pytest.fail(str(exc), pytrace=False)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    There is a window between closing this socket and the registry binding the
    port; :meth:`RegistryServer.start` retries on a fresh port if it loses it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when the test process dies.

    atexit covers normal exits; this covers a SIGKILLed or crashed pytest, so
    no registry is left holding a port. Best effort: not Linux, no prctl.
    """
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and a server certificate signed by it."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path
    # A folder holding only ``ca.crt``: the layout skopeo's --*-cert-dir and
    # containers' certs.d expect (a *.cert/*.key pair there would be taken
    # for a client certificate).
    cert_dir: Path


def _openssl(*args: str) -> None:
    proc = subprocess.run(
        [require_tool("openssl"), *args], capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _sign(ca: tuple[Path, Path], name: str, usage: str, sans: str, out: Path) -> Path:
    """A key ``out.key`` and certificate ``out`` for ``name``, signed by ``ca``
    (its cert and key); ``usage`` is serverAuth or clientAuth."""
    ca_cert, ca_key = ca
    key, csr, ext = out.with_suffix(".key"), out.with_suffix(".csr"), out.with_suffix(".ext")
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\n" + (f"subjectAltName={sans}\n" if sans else "")
    )
    _openssl("req", "-new", *_EC, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(out), "-days", "30", "-extfile", str(ext),
    )  # fmt: skip
    return key


def make_client_cert(files: TlsFiles, directory: Path) -> tuple[Path, Path]:
    """A client certificate signed by ``files``' CA: ``(client.cert, client.key)``,
    named as Docker's certs.d pairs them."""
    directory.mkdir(parents=True, exist_ok=True)
    cert = directory / "client.cert"
    return cert, _sign((files.ca_cert, files.ca_key), "imgpull test client", "clientAuth", "", cert)


def make_tls_files(directory: Path, names: tuple[str, ...] = ()) -> TlsFiles:
    """Make a self-signed CA and a server cert for 127.0.0.1/localhost (and
    ``names``) with openssl.

    EC P-256 keys: quick to generate and accepted by Go's TLS stack (the
    registry), rustls and Python's ssl alike.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    cert = directory / "server.crt"
    sans = ",".join(["IP:127.0.0.1", "DNS:localhost", *(f"DNS:{n}" for n in names)])
    _openssl(
        "req",
        "-x509",
        *_EC,
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_cert),
        "-days",
        "30",
        "-subj",
        "/CN=imgpull test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    key = _sign((ca_cert, ca_key), "localhost", "serverAuth", sans, cert)
    cert_dir = directory / "certs.d"
    cert_dir.mkdir(exist_ok=True)
    shutil.copyfile(ca_cert, cert_dir / "ca.crt")
    return TlsFiles(ca_cert=ca_cert, ca_key=ca_key, cert=cert, key=key, cert_dir=cert_dir)


def htpasswd_line(username: str, password: str) -> str:
    """One htpasswd entry with a bcrypt hash (the only kind distribution reads).

    Cost 4, the minimum: the registry checks the hash on every request, and
    the tests make many requests; the hash guards nothing real.
    """
    import bcrypt  # a test dependency; imported here so plain registries don't need it

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{username}:{hashed}\n"


@dataclass(frozen=True)
class RequestLogEntry:
    """One line of the registry's access log (Combined Log Format)."""

    method: str
    path: str
    status: int
    size: int
    user_agent: str


_ACCESS_RE = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" '
    r'(?P<status>\d{3}) (?P<size>\d+|-) "[^"]*" "(?P<ua>[^"]*)"'
)


class RegistryServer(Managed):
    """A ``docker-registry serve`` process on 127.0.0.1 with its own storage.

    Use as a context manager (or call :meth:`start`/:meth:`stop`)::

        with RegistryServer(tls=True, auth=("alice", "s3cret")) as reg:
            httpx.get(f"{reg.url}/v2/", verify=reg.ssl_context(), auth=reg.credentials)
    """

    def __init__(
        self,
        *,
        tls: bool = False,
        auth: tuple[str, str] | None = None,
        token: TokenAuth | None = None,
        schema1: bool = False,
        foreign_urls: bool = False,
        client_auth: bool = False,
        tls_names: tuple[str, ...] = (),
        proxy_of: str | None = None,
        workdir: Path | None = None,
        startup_timeout: float = 10.0,
        log_level: str = "warn",
    ) -> None:
        self.tls = tls
        self.auth = auth
        self.token = token
        self.schema1 = schema1
        # Accept manifests whose layers list loopback http URLs (foreign layers).
        self.foreign_urls = foreign_urls
        # TLS that requires a client certificate signed by the registry's CA
        # (``client_cert``, made at start in ``cert_dir``); extra DNS names
        # for the server certificate.
        self.client_auth = client_auth
        self.tls_names = tls_names
        self.client_cert: tuple[Path, Path] | None = None
        # A pull-through cache of the registry at this URL (read-only).
        self.proxy_of = proxy_of
        self.startup_timeout = startup_timeout
        self.log_level = log_level
        self._own_workdir = workdir is None
        self.workdir = (
            Path(tempfile.mkdtemp(prefix="imgpull-registry-")) if workdir is None else workdir
        )
        self.storage_dir = self.workdir / "storage"
        self.config_path = self.workdir / "config.yml"
        self.log_path = self.workdir / "registry.log"  # the registry's own log (stderr)
        self.access_log_path = self.workdir / "access.log"  # one line per request (stdout)
        self.tls_files: TlsFiles | None = None
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses --------------------------------------------------------
    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry part of an image reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def pid(self) -> int:
        """The server process (benchmarks read its CPU time)."""
        if self._proc is None:
            raise RuntimeError("the registry is not running")
        return self._proc.pid

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:41234``."""
        return f"{self.scheme}://{self.host}"

    @property
    def ca_path(self) -> Path | None:
        """The CA certificate that signed the server certificate (TLS only)."""
        return self.tls_files.ca_cert if self.tls_files else None

    @property
    def cert_dir(self) -> Path | None:
        """A folder with only ``ca.crt``, for skopeo's ``--*-cert-dir`` (TLS only)."""
        return self.tls_files.cert_dir if self.tls_files else None

    @property
    def username(self) -> str | None:
        return self.auth[0] if self.auth else None

    @property
    def password(self) -> str | None:
        return self.auth[1] if self.auth else None

    @property
    def credentials(self) -> tuple[str, str] | None:
        """``(user, password)`` for httpx's ``auth=`` (with token auth: the
        issuer's user allowed to push), or None without auth."""
        return self.auth or (self.token.push_credentials if self.token else None)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this registry's CA (the system's without TLS)."""
        if self.ca_path is None:
            return ssl.create_default_context()
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        if self.client_cert:
            ctx.load_cert_chain(*self.client_cert)
        return ctx

    def ref(self, repo_tag: str) -> str:
        """``127.0.0.1:PORT/<repo_tag>``: a full image reference on this registry."""
        return f"{self.host}/{repo_tag}"

    def client(self, **kwargs: object) -> httpx.Client:
        """An httpx client that trusts this registry's CA and sends its credentials."""
        params: dict[str, object] = {
            "base_url": self.url,
            "verify": self.ssl_context(),
            "timeout": 30.0,
        }
        if self.auth:
            params["auth"] = self.auth
        params.update(kwargs)
        return httpx.Client(**params)  # type: ignore[arg-type]

    # -- storage layout ---------------------------------------------------
    @property
    def v2_root(self) -> Path:
        return self.storage_dir / "docker" / "registry" / "v2"

    def blob_path(self, digest: str) -> Path:
        """The data file of a blob in the filesystem driver's layout.

        Tests overwrite it to serve corrupted content. The registry keeps no
        blob cache here (no ``storage.cache`` in the config), so a changed
        file is what the next request gets.
        """
        algo, _, hexpart = digest.partition(":")
        if not hexpart or not re.fullmatch(r"[0-9a-f]{32,}", hexpart):
            raise ValueError(f"not a digest: {digest!r}")
        return self.v2_root / "blobs" / algo / hexpart[:2] / hexpart / "data"

    def repository_dir(self, repo: str) -> Path:
        """``.../v2/repositories/<repo>``: links for the repo's layers, manifests, tags."""
        return self.v2_root / "repositories" / repo

    # -- logs -------------------------------------------------------------
    def request_log(self) -> list[RequestLogEntry]:
        """Every request the registry answered so far, oldest first."""
        if not self.access_log_path.exists():
            return []
        entries = []
        for line in self.access_log_path.read_text(errors="replace").splitlines():
            m = _ACCESS_RE.match(line)
            if m:
                size = m["size"]
                entries.append(
                    RequestLogEntry(
                        method=m["method"],
                        path=m["path"],
                        status=int(m["status"]),
                        size=0 if size == "-" else int(size),
                        user_agent=m["ua"],
                    )
                )
        return entries

    def settled_request_log(self, quiet: float = 0.2, limit: float = 5.0) -> list[RequestLogEntry]:
        """request_log() once the access log stops growing (for `quiet` s, at
        most `limit` s): a request the client abandoned is logged when the
        registry notices, a moment later."""
        deadline = time.monotonic() + limit
        last = -1
        while time.monotonic() < deadline:
            size = self.access_log_path.stat().st_size if self.access_log_path.exists() else 0
            if size == last:
                break
            last = size
            time.sleep(quiet)
        return self.request_log()

    def blob_gets(self) -> list[str]:
        """The paths of the blob GETs answered so far (layers and configs)."""
        return [e.path for e in self.request_log() if e.method == "GET" and "/blobs/" in e.path]

    def clear_request_log(self) -> None:
        """Forget the requests so far (the registry appends to the same file)."""
        if self.access_log_path.exists():
            with self.access_log_path.open("r+b") as f:
                f.truncate(0)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- lifecycle --------------------------------------------------------
    def _write_config(self) -> None:
        lines = [
            "version: 0.1",
            "log:",
            f"  level: {self.log_level}",
            "  formatter: text",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.storage_dir}",
            "  delete:",
            "    enabled: true",
            # No storage.cache: corrupting a blob on disk must show at once.
            "http:",
            f"  addr: {self.host}",
            # A fixed secret silences the 'no HTTP secret' warning per start.
            f"  secret: {secrets.token_hex(16)}",
            "  headers:",
            "    X-Content-Type-Options: [nosniff]",
        ]
        if self.tls_files:
            lines += [
                "  tls:",
                f"    certificate: {self.tls_files.cert}",
                f"    key: {self.tls_files.key}",
            ]
            if self.client_auth:
                lines += ["    clientcas:", f"      - {self.tls_files.ca_cert}"]
        if self.auth:
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text(htpasswd_line(*self.auth))
            lines += ["auth:", "  htpasswd:", "    realm: imgpull-test", f"    path: {htpasswd}"]
        elif self.token:
            t = self.token
            lines += [
                "auth:",
                "  token:",
                f"    realm: {t.realm}",
                f"    service: {t.service}",
                f"    issuer: {t.issuer}",
                f"    rootcertbundle: {t.rootcertbundle}",
            ]
        if self.schema1:
            lines += ["compatibility:", "  schema1:", "    enabled: true"]
        if self.proxy_of:
            lines += ["proxy:", f"  remoteurl: {self.proxy_of}"]
        if self.foreign_urls:
            # distribution 2.8 refuses any layer URL unless an allow pattern matches.
            lines += [
                "validation:",
                "  manifests:",
                "    urls:",
                "      allow:",
                "        - '^http://127\\.0\\.0\\.1(:[0-9]+)?/'",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> RegistryServer:
        binary = require_tool(REGISTRY_BINARY)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        if self.tls and self.tls_files is None:
            self.tls_files = make_tls_files(self.workdir / "tls", self.tls_names)
            if self.client_auth:
                # Into the certs.d-style folder, where skopeo (pushing) and
                # imgpull (certs.d) find it next to ca.crt.
                self.client_cert = make_client_cert(self.tls_files, self.tls_files.cert_dir)
        last_error = ""
        # Retry on a new port: another process may grab the free port between
        # our probe and the registry's bind.
        for _attempt in range(3):
            self.port = free_port()
            self._write_config()
            with self.log_path.open("ab") as err, self.access_log_path.open("ab") as out:
                self._proc = subprocess.Popen(
                    [binary, "serve", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=self.workdir,
                    start_new_session=True,  # a ^C to pytest is ours to handle
                    preexec_fn=_die_with_parent,
                )
            with _LIVE_LOCK:
                _LIVE.add(self)
            try:
                self._wait_ready()
                return self
            except RegistryStartError as exc:
                last_error = str(exc)
                self._terminate()
                if "address already in use" not in last_error:
                    break
        raise RegistryStartError(last_error)

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(verify=self.ssl_context(), timeout=1.0) as client:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise RegistryStartError(
                        f"docker-registry exited with {code} during start-up; "
                        f"log:\n{self.log_text()}"
                    )
                try:
                    # 401 means up and guarding /v2/ with auth: that is ready too.
                    if client.get(f"{self.url}/v2/").status_code in (200, 401):
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RegistryStartError(
                        f"docker-registry did not answer {self.url}/v2/ within "
                        f"{self.startup_timeout}s; log:\n{self.log_text()}"
                    )
                time.sleep(0.05)

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        with _LIVE_LOCK:
            _LIVE.discard(self)
        if proc is None or proc.poll() is not None:
            return
        terminate(proc)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, *, remove: bool = True) -> None:
        """Stop the process; remove the temp folder if this object made it."""
        self._terminate()
        if remove and self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __repr__(self) -> str:
        kinds = (("tls", self.tls), ("auth", bool(self.auth)), ("token", bool(self.token)))
        flags = [f for f, on in kinds if on]
        return f"RegistryServer({self.url}{', ' + ','.join(flags) if flags else ''})"


@atexit.register
def _stop_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for server in live:
        with contextlib.suppress(Exception):
            server.stop()
