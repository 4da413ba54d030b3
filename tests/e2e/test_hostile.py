"""A hostile registry (support.hostile): credentials stay with their host,
every request but a blob body has an overall deadline, and what a server
says reaches the terminal escaped and without the credentials it echoes."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from support.cli import run_cli
from support.hostile import HostileRegistry, Kind, basic
from support.images import ImageInfo, LayoutCache, random_layer

from imgpull import Client
from imgpull.errors import AuthenticationError, FetchError, RegistryTimeoutError
from imgpull.registry import Credentials, RegistryClient, endpoint_for
from imgpull.retry import RetryPolicy, StallPolicy

USER = "hostile-user"
PASSWORD = "pw-Xq83-secret"
REPO = "test/a"


@pytest.fixture(scope="module")
def image(layout_cache: LayoutCache) -> ImageInfo:
    return layout_cache.get([random_layer(16 * 1024, seed=901)], ref="hostile")


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own DOCKER_CONFIG folder (empty until `login` writes it)."""
    folder = tmp_path / "docker-config"
    folder.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    monkeypatch.delenv("IMGPULL_DEBUG", raising=False)
    return folder


def login(folder: Path, host: str, password: str = PASSWORD, identity_token: str = "") -> None:
    """Credentials for `host` in config.json, as `docker login` stores them."""
    raw = f"{USER}:{'' if identity_token else password}"
    entry = {"auth": base64.b64encode(raw.encode()).decode()}
    if identity_token:
        entry["identitytoken"] = identity_token
    (folder / "config.json").write_text(json.dumps({"auths": {host: entry}}))


def hostile(image: ImageInfo, **options: object) -> HostileRegistry:
    reg = HostileRegistry(user=USER, password=PASSWORD, **options)  # type: ignore[arg-type]
    reg.start()
    reg.add_image(REPO, "v1", image)
    return reg


@pytest.fixture
def stack() -> Iterator[list[HostileRegistry]]:
    """Registries a test starts, all stopped when it ends."""
    started: list[HostileRegistry] = []
    yield started
    for reg in started:
        reg.stop()


def assert_nothing_leaked(reg: HostileRegistry, secrets: list[str]) -> None:
    """The evil host got no Authorization header and none of `secrets` (nor a
    token of the registry) in any request, its token realm included."""
    for seen in reg.evil.seen():
        assert seen.authorization is None, seen
        for secret in [*secrets, *reg.tokens]:
            assert not seen.mentions(secret), seen


def registry_secrets() -> list[str]:
    return [PASSWORD, basic(USER, PASSWORD).split(" ", 1)[1]]


E = TypeVar("E", bound=BaseException)


def failed_pull(
    reg: HostileRegistry, store: Path, error: type[E], *, all_tags: bool = False, **options: Any
) -> tuple[E, float]:
    """The error a pull of test/a:v1 (every tag of test/a) ends in, and how
    long it took; `options` go to Client (by default no retries)."""
    options.setdefault("retry", RetryPolicy(attempts=1))
    start = time.monotonic()
    with Client(store, **options) as client, pytest.raises(error) as caught:
        if all_tags:
            client.pull_all_tags(reg.ref(REPO))
        else:
            client.pull(reg.ref(f"{REPO}:v1"))
    return caught.value, time.monotonic() - start


# ---------------------------------------------------------------------------
# 1. Credentials stay with their host


@pytest.mark.parametrize("auth", ["basic", "bearer"])
@pytest.mark.parametrize("evil_scheme", ["bearer", "basic"])
@pytest.mark.parametrize("what", ["manifest", "blob"])
def test_a_challenge_from_a_redirect_target_gets_no_credentials(
    image: ImageInfo,
    docker_config: Path,
    tmp_path: Path,
    stack: list[HostileRegistry],
    auth: str,
    evil_scheme: str,
    what: str,
) -> None:
    """The registry redirects a manifest (httpx) or a blob (native fetcher) to
    a host that answers 401 with its own challenge: nothing of the
    registry's (password, Basic header, token) reaches it or its realm, and
    the pull ends in one line naming it."""
    reg = hostile(image, auth=auth, evil_scheme=evil_scheme)
    stack.append(reg)
    login(docker_config, reg.host)
    if what == "manifest":
        for ref in ("v1", image.manifest_digest):
            reg.redirect_to_evil(f"/v2/{REPO}/manifests/{ref}")
    else:
        reg.redirect_to_evil(f"/v2/{REPO}/blobs/{image.config_digest}")
    error, _ = failed_pull(reg, tmp_path / "store", AuthenticationError)
    assert reg.evil.seen(), "the redirect was not followed"
    assert_nothing_leaked(reg, registry_secrets())
    assert not [s for s in reg.evil.seen() if s.target.startswith("/token")]
    message = str(error)
    assert "\n" not in message and reg.evil.host in message, message
    assert "redirected" in message and PASSWORD not in message
    if auth == "bearer":
        # The realm the registry itself named did get the credentials.
        assert any(s.authorization == basic(USER, PASSWORD) for s in reg.realm.seen())


def test_a_ping_redirected_to_a_challenging_host_stays_anonymous(
    image: ImageInfo, docker_config: Path, tmp_path: Path, stack: list[HostileRegistry]
) -> None:
    """/v2/ redirected to a host that challenges: a pull never asks /v2/ (its
    manifest request learns the registry's own challenge and gets the
    credentials); a ping (`imgpull login` makes one) does not take the other
    host's challenge as the registry's (docker keys challenges by host)."""
    reg = hostile(image, auth="basic", evil_scheme="bearer")
    stack.append(reg)
    login(docker_config, reg.host)
    reg.redirect_to_evil("/v2/")
    with Client(tmp_path / "store", retry=RetryPolicy(attempts=1)) as client:
        pulled = client.pull(reg.ref(f"{REPO}:v1"))
    assert pulled.digest == image.manifest_digest
    assert not reg.evil.seen()
    creds = Credentials(USER, PASSWORD)
    with RegistryClient(endpoint_for(reg.host, plain_http=None), credentials=creds) as rc:
        assert rc.ping() is None
    assert [s.target for s in reg.evil.seen()] == ["/storage/v2/"]
    assert_nothing_leaked(reg, registry_secrets())


@pytest.mark.parametrize("grant", ["password", "identity_token"])
def test_a_token_realm_redirecting_elsewhere_gets_no_credentials_there(
    image: ImageInfo,
    docker_config: Path,
    tmp_path: Path,
    stack: list[HostileRegistry],
    grant: str,
) -> None:
    """The realm redirects its token request to another host: a GET goes
    without its Basic header (the token got there is no good), and an OAuth
    POST, whose form holds the identity token, is not sent there at all."""
    reg = hostile(image, auth="bearer")
    stack.append(reg)
    identity = "idtok-Hh71-secret" if grant == "identity_token" else ""
    reg.identity_token = identity
    login(docker_config, reg.host, identity_token=identity)
    reg.realm_redirect = f"{reg.evil.url}/token"
    error, _ = failed_pull(reg, tmp_path / "store", AuthenticationError)
    assert "\n" not in str(error)
    assert_nothing_leaked(reg, [*registry_secrets(), *([identity] if identity else [])])
    if grant == "identity_token":
        assert reg.evil.host in str(error)
        assert not reg.evil.seen()


# ---------------------------------------------------------------------------
# 2. An overall deadline for every request but blob bodies

DEADLINE = 2.0
# Connection set-up, scheduling on a loaded 2-core machine; still far below
# the 20 s the hostile server trickles for when nothing cuts it short.
MARGIN = 8.0


@pytest.mark.parametrize(
    ("kind", "auth", "head"),
    [
        ("manifest", "none", False),
        ("manifest", "none", True),  # status line and headers a byte at a time too
        ("token", "bearer", False),
        ("token", "bearer", True),
    ],
)
def test_a_trickled_answer_ends_at_the_deadline(
    image: ImageInfo,
    docker_config: Path,
    tmp_path: Path,
    stack: list[HostileRegistry],
    kind: Kind,
    auth: str,
    head: bool,
) -> None:
    reg = hostile(image, auth=auth)
    stack.append(reg)
    reg.user = ""  # an anonymous token
    reg.trickle = {kind}
    reg.trickle_head = {kind} if head else set()
    reg.trickle_interval = 0.2  # far slower than any read timeout would notice
    error, took = failed_pull(
        reg, tmp_path / "store", RegistryTimeoutError, request_timeout=DEADLINE
    )
    assert DEADLINE <= took < DEADLINE + MARGIN, took
    message = str(error)
    assert "\n" not in message
    assert "within 2 s" in message and "--request-timeout" in message, message
    assert reg.host in message or reg.realm.host in message, message


@pytest.mark.parametrize("head", [False, True])
def test_a_trickled_ping_ends_at_the_deadline(
    image: ImageInfo, stack: list[HostileRegistry], head: bool
) -> None:
    """A pull makes no ping; `imgpull login` does, bounded as every request."""
    reg = hostile(image)
    stack.append(reg)
    reg.trickle = {"ping"}
    reg.trickle_head = {"ping"} if head else set()
    reg.trickle_interval = 0.2
    endpoint = endpoint_for(reg.host, plain_http=None)
    start = time.monotonic()
    with (
        RegistryClient(endpoint, request_timeout=DEADLINE) as rc,
        pytest.raises(RegistryTimeoutError) as ei,
    ):
        rc.ping()
    took = time.monotonic() - start
    assert DEADLINE <= took < DEADLINE + MARGIN, took
    assert "within 2 s" in str(ei.value) and reg.host in str(ei.value)


def test_a_trickled_tag_list_ends_at_the_deadline(
    image: ImageInfo, tmp_path: Path, stack: list[HostileRegistry]
) -> None:
    reg = hostile(image)
    stack.append(reg)
    reg.trickle = {"tags"}
    reg.trickle_interval = 0.2
    error, took = failed_pull(
        reg, tmp_path / "store", RegistryTimeoutError, all_tags=True, request_timeout=DEADLINE
    )
    assert f"tag list of {REPO}" in str(error)
    assert took < DEADLINE + MARGIN


def test_a_trickled_error_body_ends_at_the_deadline(
    image: ImageInfo, tmp_path: Path, stack: list[HostileRegistry]
) -> None:
    """The status is the answer: the pull ends with it when its body crawls."""
    reg = hostile(image)
    stack.append(reg)
    reg.error_status = 403
    reg.trickle = {"error"}
    reg.trickle_interval = 0.2
    error, took = failed_pull(
        reg, tmp_path / "store", AuthenticationError, request_timeout=DEADLINE
    )
    assert "denied" in str(error)
    assert took < DEADLINE + MARGIN


def test_a_timed_out_request_is_retried_within_a_bounded_total(
    image: ImageInfo, tmp_path: Path, stack: list[HostileRegistry]
) -> None:
    """As a network failure: retried by the retry policy, each try bounded."""
    reg = hostile(image)
    stack.append(reg)
    reg.trickle = {"manifest"}
    reg.trickle_interval = 0.2
    retry = RetryPolicy(attempts=3, first_delay=0.1, jitter=0)
    _, took = failed_pull(
        reg, tmp_path / "store", RegistryTimeoutError, request_timeout=1.0, retry=retry
    )
    gets = [s for s in reg.registry.seen() if s.method == "GET" and "/manifests/" in s.target]
    assert len(gets) == 3
    assert 3.0 <= took < 3.3 + MARGIN, took


def test_trickled_blob_headers_end_within_the_stall_window(
    image: ImageInfo, tmp_path: Path, stack: list[HostileRegistry]
) -> None:
    """A blob body is watched for stalls; its status line and headers, in all,
    may take no longer than one read may wait (the stall window here)."""
    reg = hostile(image)
    stack.append(reg)
    reg.trickle_head = {"blob"}
    reg.trickle_interval = 0.2
    stall = StallPolicy(min_rate=1024, window=DEADLINE)
    error, took = failed_pull(reg, tmp_path / "store", FetchError, stall=stall)
    assert error.kind == "timeout", error
    assert took < DEADLINE + MARGIN


def test_a_trickled_blob_error_body_ends_within_the_stall_window(
    image: ImageInfo, tmp_path: Path, stack: list[HostileRegistry]
) -> None:
    reg = hostile(image)
    stack.append(reg)
    reg.error_status = 403
    reg.error_on = {"blob"}
    reg.trickle = {"error"}
    reg.trickle_interval = 0.2
    stall = StallPolicy(min_rate=1024, window=DEADLINE)
    error, took = failed_pull(reg, tmp_path / "store", AuthenticationError, stall=stall)
    assert "denied" in str(error)
    assert took < DEADLINE + MARGIN


# ---------------------------------------------------------------------------
# 3. Server text on a terminal: escaped, and without echoed credentials

NASTY = "bad \x1b[31mred\x1b[0m \x07bell \x9b2J \u202eevil\u202c \rover"


def assert_clean(output: str) -> None:
    for raw in ("\x1b", "\x07", "\x9b", "\u202e", "\r"):
        assert raw not in output, repr(output)


def test_control_characters_from_the_server_are_escaped(
    image: ImageInfo, docker_config: Path, tmp_path: Path, stack: list[HostileRegistry]
) -> None:
    """An error message with ESC, BEL, a C1 CSI, a bidi override and a CR,
    and a header with a C1 byte in the --debug trace: all shown escaped."""
    reg = hostile(image)
    stack.append(reg)
    reg.error_status = 403
    reg.error_message = NASTY
    reg.error_headers = [("X-Nasty", "a\x9bb")]
    proc = run_cli("--debug", "pull", reg.ref(f"{REPO}:v1"), "--root", str(tmp_path / "s"))
    assert proc.returncode == 1
    assert_clean(proc.stdout + proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "\\x1b[31mred" in errors[0] and "\\u202eevil" in errors[0]
    assert "a\\x9bb" in proc.stderr  # the trace's header, escaped


def test_control_characters_in_listed_tags_are_escaped(
    image: ImageInfo, docker_config: Path, tmp_path: Path, stack: list[HostileRegistry]
) -> None:
    reg = hostile(image)
    stack.append(reg)
    reg.tags[REPO] = ["x\x1b]0;owned\x07", "v1"]
    proc = run_cli("pull", "--all-tags", reg.ref(REPO), "--root", str(tmp_path / "s"))
    assert proc.returncode == 1
    assert_clean(proc.stdout + proc.stderr)
    assert "\\x1b]0;owned\\x07" in proc.stderr


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_credentials_echoed_by_the_registry_are_not_printed(
    image: ImageInfo,
    docker_config: Path,
    tmp_path: Path,
    stack: list[HostileRegistry],
    auth: str,
) -> None:
    reg = hostile(image, auth=auth)
    stack.append(reg)
    login(docker_config, reg.host)
    reg.error_status = 403
    reg.error_echo = True
    proc = run_cli("pull", reg.ref(f"{REPO}:v1"), "--root", str(tmp_path / "s"))
    assert proc.returncode == 1
    output = proc.stdout + proc.stderr
    assert "<redacted>" in output, output
    for secret in [*registry_secrets(), *reg.tokens]:
        assert secret not in output, output
    assert "(you sent Basic <redacted>, that is hostile-user:<redacted>)" in output or (
        "(you sent Bearer <redacted>)" in output
    )


@pytest.mark.parametrize("grant", ["password", "identity_token"])
def test_credentials_echoed_by_the_token_server_are_not_printed(
    image: ImageInfo,
    docker_config: Path,
    tmp_path: Path,
    stack: list[HostileRegistry],
    grant: str,
) -> None:
    """Wrong credentials, and a token server quoting them in its refusal."""
    reg = hostile(image, auth="bearer")
    stack.append(reg)
    wrong = "wrong-pw-Tz55" if grant == "password" else ""
    identity = "idtok-unknown-Lp02" if grant == "identity_token" else ""
    login(docker_config, reg.host, password=wrong, identity_token=identity)
    reg.error_echo = True
    proc = run_cli("pull", reg.ref(f"{REPO}:v1"), "--root", str(tmp_path / "s"))
    assert proc.returncode == 1
    output = proc.stdout + proc.stderr
    assert "wrong credentials (you sent" in output and "<redacted>" in output, output
    for secret in (wrong or identity, base64.b64encode(f"{USER}:{wrong}".encode()).decode()):
        assert secret not in output, output
