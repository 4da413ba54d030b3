"""Credentials and secrets without a registry: Docker's config file (its
keys as docker normalises them, bad files, store and erase keeping the other
keys) and secrets kept out of reprs, --debug traces and what a server's
words are printed with (redact, printable). Against real and hostile
registries: e2e/test_auth.py, e2e/test_hostile.py."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from imgpull import debuglog
from imgpull.credentials import (
    DOCKER_HUB_KEY,
    CredentialsError,
    DockerConfig,
    DockerCredentials,
    server_key,
)
from imgpull.registry import Credentials
from imgpull.safetext import printable, redact


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_config(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data))


@pytest.fixture(autouse=True)
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty DOCKER_CONFIG: never the machine's."""
    folder = tmp_path / "docker-config"
    folder.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    monkeypatch.delenv("IMGPULL_DEBUG", raising=False)
    return folder / "config.json"


def test_docker_config_key_normalisation(docker_config: Path) -> None:
    write_config(
        docker_config,
        {
            "auths": {
                DOCKER_HUB_KEY: {"auth": b64("hub:hubpw")},
                "https://127.0.0.1:5000": {"auth": b64("u1:p1")},
                "registry.example:443/v2/": {"username": "u2", "password": "p2"},
                "tokens.example": {"auth": b64("u3:"), "identitytoken": "idtok-1"},
                "empty.example": {},
            }
        },
    )
    creds = DockerCredentials()
    assert creds("docker.io") == Credentials("hub", "hubpw")
    assert creds("index.docker.io") == Credentials("hub", "hubpw")
    assert creds("127.0.0.1:5000") == Credentials("u1", "p1")
    assert creds("registry.example:443") == Credentials("u2", "p2")
    assert creds("tokens.example") == Credentials("u3", None, identity_token="idtok-1")
    assert creds("empty.example") is None
    assert creds("127.0.0.1:5001") is None
    assert server_key("docker.io") == server_key("registry-1.docker.io") == DOCKER_HUB_KEY
    assert server_key("https://127.0.0.1:5000/v2/") == "127.0.0.1:5000"
    # Secrets stay out of reprs.
    text = repr(creds("127.0.0.1:5000")) + repr(creds("tokens.example"))
    assert "p1" not in text and "idtok-1" not in text


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        ("{not json", "is not valid JSON"),
        ("[]", "is not a JSON object"),
        ('{"auths": []}', "'auths' is not an object"),
        ('{"auths": {"h.example": {"auth": "%%%%"}}}', "not base64 of user:password"),
    ],
)
def test_docker_config_bad_file(docker_config: Path, content: str, expect: str) -> None:
    docker_config.write_text(content)
    with pytest.raises(CredentialsError) as ei:
        DockerCredentials()("h.example")
    assert expect in str(ei.value) and str(docker_config) in str(ei.value)
    assert "\n" not in str(ei.value)


def test_docker_config_store_erase_keeps_other_keys(docker_config: Path) -> None:
    other = {"auths": {"other.example": {"auth": b64("o:p")}}, "proxies": {"default": {}}}
    write_config(docker_config, other)
    file = DockerConfig.load()
    file.store("http://127.0.0.1:5000/", Credentials("u", "pw"))
    data = json.loads(docker_config.read_text())
    assert data["proxies"] == {"default": {}}
    assert data["auths"]["other.example"] == other["auths"]["other.example"]
    assert data["auths"]["127.0.0.1:5000"] == {"auth": b64("u:pw")}
    assert stat.S_IMODE(docker_config.stat().st_mode) == 0o600
    assert "\n\t" in docker_config.read_text()  # tab-indented, as docker writes it
    assert DockerConfig.load().erase("127.0.0.1:5000")
    assert not DockerConfig.load().erase("127.0.0.1:5000")
    assert json.loads(docker_config.read_text()) == other
    assert not list(docker_config.parent.glob(".config.json.*"))  # no temp file left


def test_debug_redaction() -> None:
    from imgpull.debuglog import redact_headers, redact_url

    url = "https://u:pw@cdn.example/blob?X-Amz-Signature=sig123&service=reg&scope=repo:a:pull"
    assert redact_url(url) == (
        "https://cdn.example/blob?X-Amz-Signature=%3Credacted%3E&service=reg&scope=repo%3Aa%3Apull"
    )
    assert redact_headers(
        [("Authorization", "Bearer abc"), ("set-cookie", "s=1"), ("Accept", "x")]
    ) == [("Authorization", "Bearer <redacted>"), ("set-cookie", "<redacted>"), ("Accept", "x")]


def test_no_secret_in_reprs_or_redirect_traces(tmp_path: Path) -> None:
    """What the end-to-end grep above cannot reach: a loaded config file's
    repr, and a redirect to pre-signed storage in a --debug trace."""
    secret = b64("user:Sekr1t-pw")
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {"h:5000": {"auth": secret, "identitytoken": "idt-9"}}}))
    shown = repr(DockerConfig.load(path))
    assert secret not in shown and "idt-9" not in shown
    location = "https://store.example/b?X-Amz-Signature=sig-777&X-Amz-Credential=cred-888"
    traced = debuglog.redact_headers([("Location", location), ("Content-Type", "x")])
    assert "sig-777" not in str(traced) and "cred-888" not in str(traced)
    assert traced[0][1].startswith("https://store.example/b?")
    assert traced[1] == ("Content-Type", "x")


def test_printable_and_redact() -> None:
    assert printable("a\x1b[1mb\x07\x00\x7f\x85\u200f\u2066\u2028 ok é 日本") == (
        "a\\x1b[1mb\\x07\\x00\\x7f\\x85\\u200f\\u2066\\u2028 ok é 日本"
    )
    assert printable(printable("\x1b")) == "\\x1b"
    assert redact("pw abc pwd", ["pwd", "pw", ""]) == "<redacted> abc <redacted>"
