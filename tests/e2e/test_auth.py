"""Authentication against real registries: a token-auth registry trusting the
tests' token issuer (support.tokenissuer), and an htpasswd (Basic) one;
credentials from Docker's config file and credential helpers; `imgpull
login`/`logout`; and no secret in any output, log, error or --debug trace."""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.cli import run_cli
from support.images import ImageInfo, LayoutCache, push, random_layer
from support.registry import RegistryServer, require_tools
from support.tokenissuer import IssuerRequest, TokenIssuer

from imgpull import Client
from imgpull.credentials import (
    CredentialsError,
    DockerCredentials,
)
from imgpull.errors import AuthenticationError
from imgpull.progress import ProgressEvent
from imgpull.registry import Credentials

ADMIN = ("admin", "admin-pw-Qx81")
ALICE = ("alice", "alice-secret-Zr4wT9")
WRONG = "wrong-password-Kp2y"
GRANTS = {
    "admin": {"*": ["pull", "push"]},
    "alice": {"test/a": ["pull"], "public/*": ["pull"]},
    "anonymous": {"public/*": ["pull"]},
}
HELPER = "testhelper"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def jwt_access(token: str) -> list[dict[str, Any]]:
    """The `access` claim of a JWT (not verified: the registry did that)."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    access: list[dict[str, Any]] = claims["access"]
    return access


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def tiny(layout_cache: LayoutCache) -> ImageInfo:
    """Two small layers: pushes and pulls in a blink."""
    layers = (random_layer(96 * 1024, seed=501), random_layer(64 * 1024, seed=502))
    return layout_cache.get(layers, ref="auth-tiny")


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenIssuer]:
    users = dict([ADMIN, ALICE])
    grants = {k: dict(v) for k, v in GRANTS.items()}
    with TokenIssuer(tmp_path_factory.mktemp("issuer"), users=users, grants=grants) as iss:
        yield iss


@pytest.fixture(scope="module")
def token_registry(
    issuer: TokenIssuer, tiny: ImageInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryServer]:
    """A registry with `auth: token` trusting `issuer`; test/a, test/b and
    public/p hold the tiny image as :v1."""
    require_tools()
    workdir = tmp_path_factory.mktemp("token-registry")
    with RegistryServer(token=issuer.registry_auth(ADMIN), workdir=workdir) as reg:
        for repo in ("test/a", "test/b", "public/p"):
            push(tiny, reg, f"{repo}:v1")
        yield reg


@pytest.fixture(scope="module")
def basic_registry(auth_registry: RegistryServer, tiny: ImageInfo) -> RegistryServer:
    push(tiny, auth_registry, "test/basic:v1")
    return auth_registry


@pytest.fixture
def tok(token_registry: RegistryServer, issuer: TokenIssuer) -> Iterator[TokenEnv]:
    """Fresh logs, the default token lifetime, this test's own config dir."""
    issuer.clear_log()
    token_registry.clear_request_log()
    issuer.set_expires_in(300)
    yield TokenEnv(token_registry, issuer)
    issuer.set_expires_in(300)


@dataclass
class TokenEnv:
    reg: RegistryServer
    issuer: TokenIssuer

    def ref(self, repo: str) -> str:
        return self.reg.ref(f"{repo}:v1")

    def requests(self, **match: Any) -> list[IssuerRequest]:
        return [
            r for r in self.issuer.requests() if all(getattr(r, k) == v for k, v in match.items())
        ]


@pytest.fixture(autouse=True)
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty DOCKER_CONFIG: never the machine's."""
    folder = tmp_path / "docker-config"
    folder.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    monkeypatch.delenv("IMGPULL_DEBUG", raising=False)
    return folder / "config.json"


def write_config(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data))


def fixed(user: str, password: str) -> Any:
    return lambda _host: Credentials(user, password)


@pytest.fixture
def helper_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH folder with docker-credential-testhelper: a store in a JSON file
    and every call (action, stdin) recorded in calls.jsonl."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / f"docker-credential-{HELPER}"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, pathlib, sys\n"
        "here = pathlib.Path(__file__).parent\n"
        "store, calls = here / 'store.json', here / 'calls.jsonl'\n"
        "action, data = sys.argv[1], sys.stdin.read()\n"
        "with calls.open('a') as f:\n"
        "    f.write(json.dumps({'action': action, 'stdin': data}) + '\\n')\n"
        "creds = json.loads(store.read_text()) if store.exists() else {}\n"
        "if action == 'store':\n"
        "    entry = json.loads(data)\n"
        "    creds[entry['ServerURL']] = entry\n"
        "    store.write_text(json.dumps(creds))\n"
        "    sys.exit(0)\n"
        "key = data.strip()\n"
        "if key not in creds:\n"
        "    print('credentials not found in native keychain')\n"
        "    sys.exit(1)\n"
        "if action == 'get':\n"
        "    print(json.dumps(creds[key]))\n"
        "elif action == 'erase':\n"
        "    del creds[key]\n"
        "    store.write_text(json.dumps(creds))\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder


def helper_calls(folder: Path) -> list[dict[str, str]]:
    path = folder / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def cli(*args: str, tmp_path: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`imgpull ARGS` with this test's environment (DOCKER_CONFIG, PATH)."""
    env = {**os.environ, "IMGPULL_ROOT": str(tmp_path / "cli-store")}
    return run_cli(*args, env=env, timeout=120, input=stdin)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single `Error: …` line a failed command must print."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


# ---------------------------------------------------------------------------
# Token auth


def test_token_scope_per_repository(tok: TokenEnv, tmp_path: Path) -> None:
    with Client(tmp_path / "store", credentials=fixed(*ALICE)) as client:
        client.pull(tok.ref("test/a"), platform="linux/amd64")
        client.pull(tok.ref("public/p"), platform="linux/amd64")
        issued = tok.requests(status=200)
        # One token per repository, asked with that repository's scope only,
        # granting that repository only: the token for A is never B's.
        assert [r.scopes for r in issued] == [
            ["repository:test/a:pull"],
            ["repository:public/p:pull"],
        ]
        assert {r.grant_type for r in issued} == {"basic"}
        assert [[a["name"] for a in jwt_access(r.token or "")] for r in issued] == [
            ["test/a"],
            ["public/p"],
        ]
        tok.issuer.clear_log()
        tok.reg.clear_request_log()
        with pytest.raises(AuthenticationError) as ei:
            client.pull(tok.ref("test/b"), platform="linux/amd64")
    msg = str(ei.value)
    assert "pull access denied for test/b" in msg and "\n" not in msg
    assert f"imgpull login {tok.reg.host}" in msg
    # No retry storm: one token (the issuer narrows the scope; a second one
    # would carry the same rights), and the registry asked a bounded number of times.
    assert len(tok.requests()) == 1
    assert len(tok.reg.request_log()) <= 3


def test_a_client_answers_the_challenge_up_front_and_keeps_each_token(
    tok: TokenEnv, tmp_path: Path
) -> None:
    """Issue 17: the first request of a Client learns the challenge (a 401,
    no ping before it); every later request, of any pull, carries a token
    up front: one token per repository scope, reused until it expires, and
    no other 401."""
    with Client(tmp_path / "store", credentials=fixed(*ADMIN)) as client:
        client.pull(tok.ref("test/a"), platform="linux/amd64")
        client.pull(tok.ref("public/p"), platform="linux/amd64")
        client.pull(tok.ref("test/a"), platform="linux/amd64")  # up to date: one HEAD
        client.pull_many([tok.ref("test/b"), tok.ref("public/p")], platform="linux/amd64")
    assert [r.scopes for r in tok.requests(status=200)] == [
        ["repository:test/a:pull"],
        ["repository:public/p:pull"],
        ["repository:test/b:pull"],
    ]
    log = tok.reg.request_log()
    assert [(e.method, e.path, e.status) for e in log if e.status == 401] == [
        ("GET", "/v2/test/a/manifests/v1", 401)
    ]
    assert not [e for e in log if e.path == "/v2/"]


def test_token_anonymous(tok: TokenEnv, tmp_path: Path) -> None:
    with Client(tmp_path / "store", credentials=lambda _h: None) as client:
        image = client.pull(tok.ref("public/p"), platform="linux/amd64")
        assert image.reference is not None
        assert [r.grant_type for r in tok.requests()] == ["anonymous"]
        with pytest.raises(AuthenticationError, match="needs credentials") as ei:
            client.pull(tok.ref("test/a"), platform="linux/amd64")
    assert f"imgpull login {tok.reg.host}" in str(ei.value)


def test_token_expiry_between_pulls(tok: TokenEnv, tmp_path: Path) -> None:
    # The registry stops taking a token 2-3 s after issue (exp is in whole
    # seconds): time for a pull of the tiny image, not for a pull and a sleep.
    tok.issuer.set_expires_in(3)
    with Client(tmp_path / "store", credentials=fixed(*ALICE)) as client:
        client.pull(tok.ref("test/a"), platform="linux/amd64")
        assert len(tok.requests(status=200)) == 1
        time.sleep(4)
        client.pull(tok.ref("test/a"), platform="linux/amd64")
    # The cached token was refused (401), a new one fetched, the pull went on.
    assert len(tok.requests(status=200)) == 2
    assert any(e.status == 401 and "/manifests/" in e.path for e in tok.reg.request_log())


def test_token_expiry_mid_pull(tok: TokenEnv, tmp_path: Path) -> None:
    """The token lapses between the manifest and the blobs: every blob request
    of the pool gets a 401 with the old token, and one new token serves all."""
    tok.issuer.set_expires_in(3)
    slept: list[bool] = []

    def progress(event: ProgressEvent) -> None:
        if event.status == "Pulling fs layer" and not slept:
            slept.append(True)
            time.sleep(4)

    with Client(tmp_path / "store", credentials=fixed(*ALICE)) as client:
        image = client.pull(tok.ref("test/a"), platform="linux/amd64", progress=progress)
    assert slept and image.reference is not None
    assert len(tok.requests(status=200)) == 2
    assert any(e.status == 401 and "/blobs/" in e.path for e in tok.reg.request_log())


def test_token_wrong_password_no_retry_storm(tok: TokenEnv, tmp_path: Path) -> None:
    with (
        Client(tmp_path / "store", credentials=fixed(ALICE[0], WRONG)) as client,
        pytest.raises(AuthenticationError) as ei,
    ):
        client.pull(tok.ref("test/a"), platform="linux/amd64")
    msg = str(ei.value)
    assert "check your credentials" in msg and "incorrect username or password" in msg
    assert WRONG not in msg and WRONG not in repr(ei.value)
    assert [(r.grant_type, r.status) for r in tok.requests()] == [("basic", 401)]
    # The manifest request learnt the challenge (no ping), nothing after the refusal.
    assert [e.path for e in tok.reg.request_log()] == ["/v2/test/a/manifests/v1"]


def test_token_credentials_from_docker_config(
    tok: TokenEnv, tmp_path: Path, docker_config: Path
) -> None:
    # Keyed with a scheme and path: docker matches on the host name alone.
    write_config(
        docker_config, {"auths": {f"http://{tok.reg.host}/v2/": {"auth": b64(":".join(ALICE))}}}
    )
    with Client(tmp_path / "store") as client:  # the default source: DOCKER_CONFIG
        client.pull(tok.ref("test/a"), platform="linux/amd64")
    assert [(r.grant_type, r.account) for r in tok.requests()] == [("basic", "alice")]


# ---------------------------------------------------------------------------
# htpasswd (Basic)


def test_basic_auth_from_docker_config(
    basic_registry: RegistryServer, tmp_path: Path, docker_config: Path
) -> None:
    ref = basic_registry.ref("test/basic:v1")
    user, password = basic_registry.username or "", basic_registry.password or ""
    write_config(
        docker_config, {"auths": {basic_registry.host: {"username": user, "password": password}}}
    )
    with Client(tmp_path / "a") as client:
        client.pull(ref, platform="linux/amd64")
    write_config(docker_config, {"auths": {basic_registry.host: {"auth": b64(f"{user}:{WRONG}")}}})
    basic_registry.clear_request_log()
    with Client(tmp_path / "b") as client, pytest.raises(AuthenticationError) as ei:
        client.pull(ref, platform="linux/amd64")
    assert "check your credentials" in str(ei.value) and WRONG not in str(ei.value)
    # The ping, then the manifest with the wrong Basic header: no retries.
    assert len(basic_registry.request_log()) <= 3


# ---------------------------------------------------------------------------
# Docker config file: keys, entries, errors (no registry)


# ---------------------------------------------------------------------------
# Credential helpers


def test_creds_store_helper_login_pull_logout(
    tok: TokenEnv, tmp_path: Path, docker_config: Path, helper_dir: Path
) -> None:
    write_config(docker_config, {"credsStore": HELPER, "currentContext": "default"})
    host = tok.reg.host
    proc = cli("login", "-u", ALICE[0], "--password-stdin", host, tmp_path=tmp_path,
               stdin=ALICE[1] + "\n")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "Login Succeeded"
    # The token server handed out a refresh token: the helper holds it as
    # docker's "<token>" user; the file only lists the registry.
    stored = [json.loads(c["stdin"]) for c in helper_calls(helper_dir) if c["action"] == "store"]
    assert [(s["ServerURL"], s["Username"]) for s in stored] == [(host, "<token>")]
    assert stored[0]["Secret"].startswith("rt-")
    data = json.loads(docker_config.read_text())
    assert data == {"credsStore": HELPER, "currentContext": "default", "auths": {host: {}}}

    tok.issuer.clear_log()
    with Client(tmp_path / "store") as client:
        client.pull(tok.ref("test/a"), platform="linux/amd64")
    assert {"action": "get", "stdin": host} in helper_calls(helper_dir)
    assert [(r.method, r.grant_type, r.account) for r in tok.requests()] == [
        ("POST", "refresh_token", "alice")
    ]

    proc = cli("logout", host, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"Removing login credentials for {host}"
    assert helper_calls(helper_dir)[-1] == {"action": "erase", "stdin": host}
    assert json.loads(docker_config.read_text())["auths"] == {}
    assert cli("logout", host, tmp_path=tmp_path).stdout.strip() == f"Not logged in to {host}"


def test_cred_helpers_per_registry(
    tok: TokenEnv, tmp_path: Path, docker_config: Path, helper_dir: Path
) -> None:
    host = tok.reg.host
    # credHelpers wins over credsStore (not installed) and over auths.
    write_config(
        docker_config,
        {
            "credsStore": "not-installed",
            "credHelpers": {host: HELPER},
            "auths": {host: {"auth": b64(f"alice:{WRONG}")}},
        },
    )
    (helper_dir / "store.json").write_text(
        json.dumps({host: {"ServerURL": host, "Username": ALICE[0], "Secret": ALICE[1]}})
    )
    with Client(tmp_path / "a") as client:
        client.pull(tok.ref("test/a"), platform="linux/amd64")
    assert [(r.grant_type, r.account, r.status) for r in tok.requests()] == [
        ("basic", "alice", 200)
    ]
    # The helper has nothing for this registry: anonymous, as docker.
    (helper_dir / "store.json").write_text("{}")
    tok.issuer.clear_log()
    with Client(tmp_path / "b") as client:
        client.pull(tok.ref("public/p"), platform="linux/amd64")
        with pytest.raises(AuthenticationError, match="needs credentials"):
            client.pull(tok.ref("test/a"), platform="linux/amd64")
    assert {r.grant_type for r in tok.requests()} == {"anonymous"}
    # A registry without a credHelpers entry goes to credsStore, which is missing.
    with pytest.raises(CredentialsError, match="docker-credential-not-installed is not on PATH"):
        DockerCredentials()("other.example")


# ---------------------------------------------------------------------------
# login / logout


def test_login_token_stores_identity_token(
    tok: TokenEnv, tmp_path: Path, docker_config: Path
) -> None:
    host = tok.reg.host
    write_config(docker_config, {"auths": {"other.example": {"auth": b64("o:p")}}, "x": 1})
    proc = cli("login", "--username", ALICE[0], "--password-stdin", f"http://{host}",
               tmp_path=tmp_path, stdin=ALICE[1])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Login Succeeded" in proc.stdout
    assert "identity token is stored unencrypted" in proc.stderr
    data = json.loads(docker_config.read_text())
    assert data["x"] == 1 and "other.example" in data["auths"]
    entry = data["auths"][host]
    # docker's shape: "user:" in auth, the refresh token beside it, no password.
    assert entry["auth"] == b64(f"{ALICE[0]}:")
    assert entry["identitytoken"] in tok.issuer.secrets_issued()
    assert ALICE[1] not in docker_config.read_text()
    assert stat.S_IMODE(docker_config.stat().st_mode) == 0o600
    login_req = tok.requests()[0]
    assert (login_req.method, login_req.grant_type, login_req.scopes) == ("GET", "basic", [])

    tok.issuer.clear_log()
    proc = cli("pull", "-q", tok.ref("test/a"), "--platform", "linux/amd64", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [(r.method, r.grant_type) for r in tok.requests()] == [("POST", "refresh_token")]


def test_login_wrong_password_token(tok: TokenEnv, tmp_path: Path, docker_config: Path) -> None:
    write_config(docker_config, {"auths": {}})
    before = docker_config.read_text()
    proc = cli("login", "-u", ALICE[0], "--password-stdin", tok.reg.host, tmp_path=tmp_path,
               stdin=WRONG)  # fmt: skip
    line = one_error_line(proc)
    assert "check your credentials" in line and WRONG not in proc.stderr + proc.stdout
    assert docker_config.read_text() == before
    assert [(r.grant_type, r.status) for r in tok.requests()] == [("basic", 401)]


def test_login_basic(basic_registry: RegistryServer, tmp_path: Path, docker_config: Path) -> None:
    user, password = basic_registry.username or "", basic_registry.password or ""
    host = basic_registry.host
    proc = cli("login", "-u", user, "--password-stdin", host, tmp_path=tmp_path,
               stdin=password + "\n")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(docker_config.read_text())["auths"][host] == {
        "auth": b64(f"{user}:{password}")
    }
    bad = cli("login", "-u", user, "--password-stdin", host, tmp_path=tmp_path, stdin=WRONG)
    assert "login to" in one_error_line(bad) and WRONG not in bad.stderr
    # The good login is still there.
    assert json.loads(docker_config.read_text())["auths"][host] == {
        "auth": b64(f"{user}:{password}")
    }
    usage = cli("login", "--password-stdin", host, tmp_path=tmp_path, stdin="x")
    assert "--username" in one_error_line(usage)


def test_login_trusts_the_hosts_certs_d(
    tls_auth_registry: RegistryServer, tmp_path: Path, docker_config: Path
) -> None:
    """login reads the TLS files a pull would: the host's certs.d folder."""
    reg = tls_auth_registry
    assert reg.ca_path is not None
    user, password = reg.username or "", reg.password or ""
    certs = tmp_path / "certs.d"
    (certs / reg.host).mkdir(parents=True)
    shutil.copyfile(reg.ca_path, certs / reg.host / "ca.crt")
    args = ("login", "-u", user, "--password-stdin", "--https")
    empty = tmp_path / "no-certs.d"
    untrusted = cli(*args, "--certs-dir", str(empty), reg.host, tmp_path=tmp_path,
                    stdin=password + "\n")  # fmt: skip
    assert "certs.d" in one_error_line(untrusted)
    ok = cli(*args, "--certs-dir", str(certs), reg.host, tmp_path=tmp_path,
             stdin=password + "\n")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(docker_config.read_text())["auths"][reg.host] == {
        "auth": b64(f"{user}:{password}")
    }


# ---------------------------------------------------------------------------
# No secret anywhere


def test_no_secret_in_output_logs_or_errors(
    tok: TokenEnv,
    basic_registry: RegistryServer,
    tmp_path: Path,
    docker_config: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = tok.reg.host
    basic_user, basic_pw = basic_registry.username or "", basic_registry.password or ""
    good = {
        host: {"auth": b64(":".join(ALICE))},
        basic_registry.host: {"auth": b64(f"{basic_user}:{basic_pw}")},
    }
    outputs: list[str] = []

    def run(*args: str, ok: bool, stdin: str | None = None) -> str:
        proc = cli(*args, tmp_path=tmp_path, stdin=stdin)
        assert (proc.returncode == 0) == ok, (args, proc.stderr)
        if not ok:
            one_error_line(proc)
        outputs.append(proc.stdout + proc.stderr)
        return proc.stderr

    plat = ("--platform", "linux/amd64")
    write_config(docker_config, {"auths": good})
    trace = run("--debug", "pull", "--json", tok.ref("test/a"), *plat, ok=True)
    # The trace is there (or this test proves nothing), its secrets redacted.
    assert "Authorization: Bearer <redacted>" in trace and "/token?" in trace
    denied = run("--debug", "pull", tok.ref("test/b"), *plat, ok=False)
    assert "Error: pull access denied for test/b" in denied
    trace = run("--debug", "pull", "--json", basic_registry.ref("test/basic:v1"), *plat, ok=True)
    assert "authorization: basic <redacted>" in trace.lower()
    write_config(docker_config, {"auths": {host: {"auth": b64(f"alice:{WRONG}")}}})
    run("--debug", "pull", tok.ref("test/a"), *plat, ok=False)
    run("--debug", "login", "-u", "alice", "--password-stdin", host, stdin=WRONG, ok=False)
    run("--debug", "login", "-u", "alice", "--password-stdin", host, stdin=ALICE[1], ok=True)
    run("--debug", "pull", "--json", tok.ref("public/p"), *plat, ok=True)  # identity token
    run("--debug", "logout", host, ok=True)

    # The library: its log records, exceptions and reprs.
    caplog.set_level(logging.DEBUG, logger="imgpull")
    creds = Credentials("alice", WRONG, identity_token="idtok-secret-77")
    with Client(tmp_path / "lib", credentials=lambda _h: creds) as client:
        with pytest.raises(AuthenticationError) as ei:
            client.pull(tok.ref("test/a"), platform="linux/amd64")
        outputs += [str(ei.value), repr(ei.value), repr(creds), str(creds), repr(client)]
    with Client(tmp_path / "lib2", credentials=fixed(*ALICE)) as client:
        client.pull(tok.ref("test/a"), platform="linux/amd64")
    outputs.append(caplog.text)
    assert "<redacted>" in caplog.text

    secrets = {
        ALICE[1],
        WRONG,
        basic_pw,
        "idtok-secret-77",
        b64(":".join(ALICE)),
        b64(f"alice:{WRONG}"),
        b64(f"{basic_user}:{basic_pw}"),
        *tok.issuer.secrets_issued(),
    }
    assert len(secrets) > 8  # tokens were issued, and are among what is looked for
    for text in outputs:
        for secret in secrets:
            assert secret not in text, f"a secret leaked into: {text[:200]}"
