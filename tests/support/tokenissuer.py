"""A small Docker token server (the registry's `auth: token:` issuer) for the tests.

The real ``docker-registry`` verifies the JWTs this issuer signs: ES256 with a
key whose self-signed certificate is the registry's ``rootcertbundle`` (sent
in the token's ``x5c`` header). It speaks both flows a client uses
(distribution's token spec):

* ``GET /token?service=…&scope=…[&account=…][&offline_token=true]``, with
  Basic credentials or none (anonymous);
* ``POST /token`` (OAuth2 form): ``grant_type=password`` or
  ``grant_type=refresh_token`` (docker's identity token).

Access is granted per repository pattern and user; scopes a user may not have
are silently narrowed, as Docker Hub does, so the registry answers 401
``insufficient_scope``. Wrong credentials get a 401. Every request is one JSON
line in ``requests.jsonl`` (with the tokens issued, so tests can grep output
for them). The server runs in its own process (``python -m
support.tokenissuer CONFIG``) and rereads its config per request, so a test can change the token
lifetime of a running issuer.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import fnmatch
import json
import os
import secrets
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from .process import HelperProcess

if TYPE_CHECKING:
    from support.registry import TokenAuth

# distribution accepts a token up to this long after its `exp` (clock-skew
# leeway, registry/auth/token/token.go); the issuer subtracts it so a token
# really stops working `expires_in` seconds after it was issued.
REGISTRY_LEEWAY = 60

SERVICE = "imgpull-test-registry"
ISSUER = "imgpull-test-issuer"


@dataclass(frozen=True)
class IssuerRequest:
    """One request the issuer answered (a line of its log)."""

    method: str
    grant_type: str  # "basic" (GET with credentials), "anonymous", "password", "refresh_token"
    account: str | None
    scopes: list[str]
    status: int
    token: str | None  # the access token issued, if any
    refresh_token: str | None  # the refresh (identity) token issued, if any


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# ---------------------------------------------------------------------------
# The server process


class _State:
    def __init__(self, config_path: Path) -> None:
        from cryptography.hazmat.primitives import serialization

        self.config_path = config_path
        cfg = self.config()
        self.key = serialization.load_pem_private_key(Path(cfg["key"]).read_bytes(), None)
        cert = Path(cfg["cert"]).read_bytes()
        from cryptography import x509

        der = x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)
        self.x5c = base64.b64encode(der).decode("ascii")
        self.refresh_tokens: dict[str, str] = {}
        self.lock = threading.Lock()

    def config(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.config_path.read_text())
        return data

    def sign(self, claims: dict[str, Any]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        header = {"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]}
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        assert isinstance(self.key, ec.EllipticCurvePrivateKey)
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)  # JOSE wants r || s, not DER
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def granted(self, user: str, scopes: list[str]) -> list[dict[str, Any]]:
        grants: dict[str, list[str]] = self.config()["grants"].get(user, {})
        access = []
        for scope in scopes:
            parts = scope.split(":")
            if len(parts) < 3 or parts[0] != "repository":
                continue
            name, wanted = ":".join(parts[1:-1]), parts[-1].split(",")
            allowed = {a for pat, acts in grants.items() if fnmatch.fnmatchcase(name, pat)
                       for a in acts}  # fmt: skip
            actions = [a for a in wanted if a in allowed]
            if actions:
                access.append({"type": "repository", "name": name, "actions": actions})
        return access

    def issue(self, user: str, scopes: list[str], offline: bool) -> dict[str, Any]:
        cfg = self.config()
        now = int(time.time())
        expires_in = int(cfg["expires_in"])
        claims = {
            "iss": cfg["issuer"],
            "sub": user,
            "aud": cfg["service"],
            "exp": now + expires_in - REGISTRY_LEEWAY,
            "nbf": now,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": self.granted(user, scopes),
        }
        token = self.sign(claims)
        issued = datetime.datetime.fromtimestamp(now, datetime.UTC)
        out: dict[str, Any] = {
            "token": token,
            "access_token": token,
            "expires_in": expires_in,
            "issued_at": issued.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if offline and user != "anonymous":
            refresh = "rt-" + secrets.token_urlsafe(24)
            with self.lock:
                self.refresh_tokens[refresh] = user
            out["refresh_token"] = refresh
        return out

    def user_for_refresh(self, token: str) -> str | None:
        with self.lock:
            found = self.refresh_tokens.get(token)
        if found is not None:
            return found
        preset: dict[str, str] = self.config().get("identity_tokens", {})
        return preset.get(token)

    def check_password(self, user: str, password: str) -> bool:
        users: dict[str, str] = self.config()["users"]
        return user in users and secrets.compare_digest(users[user], password)

    def log(self, entry: dict[str, Any]) -> None:
        with self.lock, Path(self.config()["log"]).open("a") as f:
            f.write(json.dumps(entry) + "\n")


class _Handler(BaseHTTPRequestHandler):
    state: _State
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the JSON log is the record

    def _answer(self, status: int, body: dict[str, Any], entry: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        entry["status"] = status
        entry.setdefault("token", body.get("access_token"))
        entry.setdefault("refresh_token", body.get("refresh_token"))
        self.state.log(entry)

    def _denied(self, entry: dict[str, Any]) -> None:
        self._answer(401, {"details": "incorrect username or password"}, entry)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        scopes = [s for v in query.get("scope", []) for s in v.split(" ") if s]
        entry: dict[str, Any] = {"method": "GET", "scopes": scopes, "account": None}
        if url.path != "/token":
            self._answer(404, {"details": "not found"}, {**entry, "grant_type": "none"})
            return
        header = self.headers.get("Authorization", "")
        user = "anonymous"
        entry["grant_type"] = "anonymous"
        if header.startswith("Basic "):
            try:
                name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                name, password = "", ""
            entry.update(grant_type="basic", account=name)
            if not self.state.check_password(name, password):
                self._denied(entry)
                return
            user = name
        offline = query.get("offline_token", [""])[0] == "true"
        self._answer(200, self.state.issue(user, scopes, offline), entry)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        scopes = [s for s in form.get("scope", "").split(" ") if s]
        grant = form.get("grant_type", "")
        entry: dict[str, Any] = {"method": "POST", "scopes": scopes, "grant_type": grant,
                                 "account": form.get("username")}  # fmt: skip
        if urlsplit(self.path).path != "/token":
            self._answer(404, {"details": "not found"}, entry)
            return
        if grant == "password":
            user = form.get("username", "")
            if not self.state.check_password(user, form.get("password", "")):
                self._denied(entry)
                return
            offline = form.get("access_type") == "offline"
        elif grant == "refresh_token":
            found = self.state.user_for_refresh(form.get("refresh_token", ""))
            if found is None:
                self._denied(entry)
                return
            user, offline = found, False
            entry["account"] = user
        else:
            self._answer(400, {"error": "unsupported_grant_type"}, entry)
            return
        self._answer(200, self.state.issue(user, scopes, offline), entry)


def serve(config_path: Path) -> None:
    state = _State(config_path)
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


# ---------------------------------------------------------------------------
# The test side


def make_signing_cert(directory: Path) -> tuple[Path, Path]:
    """An EC P-256 key and its self-signed certificate (the rootcertbundle)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imgpull test token issuer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "issuer.key", directory / "issuer.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class TokenIssuer(HelperProcess):
    """The issuer process. ``users`` maps names to passwords; ``grants`` maps a
    user (``"anonymous"`` for requests without credentials) to repository
    patterns (fnmatch) and the actions allowed there::

        TokenIssuer(dir, users={"alice": "pw"}, grants={"alice": {"test/a": ["pull"]}})
    """

    def __init__(
        self,
        workdir: Path,
        *,
        users: dict[str, str],
        grants: dict[str, dict[str, list[str]]],
        expires_in: int = 300,
        identity_tokens: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.workdir = workdir
        self.users = dict(users)
        self.grants = grants
        self.expires_in = expires_in
        self.identity_tokens = dict(identity_tokens or {})
        self.config_path = workdir / "issuer.json"
        self.log_path = workdir / "requests.jsonl"
        self.key_path, self.cert_path = workdir / "issuer.key", workdir / "issuer.crt"

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def registry_auth(self, push_credentials: tuple[str, str] | None = None) -> TokenAuth:
        """The RegistryServer(token=...) settings that trust this issuer."""
        from support.registry import TokenAuth

        return TokenAuth(self.realm, SERVICE, ISSUER, self.cert_path, push_credentials)

    def _write_config(self) -> None:
        config = {
            "key": str(self.key_path),
            "cert": str(self.cert_path),
            "issuer": ISSUER,
            "service": SERVICE,
            "users": self.users,
            "grants": self.grants,
            "expires_in": self.expires_in,
            "identity_tokens": self.identity_tokens,
            "log": str(self.log_path),
        }
        # Atomic: the running issuer rereads it on every request.
        fd, tmp = tempfile.mkstemp(dir=self.workdir, suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(config, f)
        os.replace(tmp, self.config_path)

    def set_expires_in(self, seconds: int) -> None:
        """The lifetime of the tokens issued from now on (the running process too)."""
        self.expires_in = seconds
        self._write_config()

    def add_user(self, name: str, password: str, grants: dict[str, list[str]]) -> None:
        self.users[name] = password
        self.grants[name] = grants
        self._write_config()

    def start(self) -> TokenIssuer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        make_signing_cert(self.workdir)
        self._write_config()
        stderr = self.workdir / "issuer.stderr"
        try:
            with stderr.open("ab") as err:
                self._spawn(str(self.config_path), stderr=err)
        except RuntimeError as exc:
            text = stderr.read_text(errors="replace")
            raise RuntimeError(f"{exc}:\n{text}") from None
        return self

    def requests(self) -> list[IssuerRequest]:
        """Every request answered so far, oldest first."""
        if not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text().splitlines():
            d = json.loads(line)
            out.append(
                IssuerRequest(
                    method=d["method"],
                    grant_type=d.get("grant_type", ""),
                    account=d.get("account"),
                    scopes=d.get("scopes", []),
                    status=d["status"],
                    token=d.get("token"),
                    refresh_token=d.get("refresh_token"),
                )
            )
        return out

    def clear_log(self) -> None:
        with contextlib.suppress(FileNotFoundError), self.log_path.open("r+b") as f:
            f.truncate(0)

    def secrets_issued(self) -> set[str]:
        """Every access and refresh token issued so far."""
        return {s for r in self.requests() for s in (r.token, r.refresh_token) if s}


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
