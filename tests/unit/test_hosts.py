"""Per-host settings without a registry (imgpull.hosts): the mirrors
configuration file (registries.conf format, errors), the order and TLS
settings of the endpoints a pull tries, a missing configuration file as one
line from the CLI, and Docker's certs.d rules. Pulls through mirrors and TLS
registries: e2e/test_mirrors.py, e2e/test_tls.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import cli_env, run_cli

import imgpull
from imgpull.errors import RegistryError
from imgpull.hosts import ConfigError, Mirror, host_tls, load_config, parse_mirror, registry_key
from imgpull.registry import Endpoint
from imgpull.transport import Transport


def test_endpoint_order_and_settings(tmp_path: Path) -> None:
    """Mirrors first, in order, then the registry; each mirror's own scheme
    and TLS choice (an insecure one without a scheme may fall back to HTTP)."""
    mirrors = {
        "index.docker.io": [
            "https://a.example:5000",
            "http://b.example",
            Mirror("c.example", insecure=True),
        ]
    }
    with imgpull.Client(tmp_path, mirrors=mirrors, certs_dirs=[]) as client:
        tried: list[Endpoint] = []

        def attempt(transport: Transport, retry: object) -> None:
            tried.append(transport.registry.endpoint)
            raise RegistryError("unavailable", status=503)

        with pytest.raises(RegistryError):
            client._with_fallback("docker.io", lambda _: None, attempt)
        endpoints = tried
    assert [(e.base_url, e.insecure, e.http_fallback) for e in endpoints] == [
        ("https://a.example:5000", False, False),
        ("http://b.example", False, False),
        ("https://c.example", True, True),
        ("https://registry-1.docker.io", False, False),
    ]


def test_config_file_format(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        'unqualified-search-registries = ["docker.io"]\n'
        '[[registry]]\nprefix = "index.docker.io"\n'
        '[[registry.mirror]]\nlocation = "mirror.example:5000"\n'
        '[[registry.mirror]]\nlocation = "http://10.0.0.2:5000"\ninsecure = true\n'
        '[[registry]]\nlocation = "quay.io"\n'
    )
    loaded = load_config(config)
    assert loaded.for_registry("docker.io") == (
        Mirror("mirror.example:5000"),
        Mirror("10.0.0.2:5000", "http", insecure=True),
    )
    assert loaded.for_registry("quay.io") == ()
    assert registry_key("registry-1.docker.io") == "docker.io"
    bad = {
        "prefix = [": "is not valid TOML",
        '[[registry]]\nprefix = "docker.io/library"\n': "not a repository",
        "[[registry]]\nmirror = []\n": "needs a prefix",
        '[[registry]]\nprefix = "a"\n[[registry.mirror]]\nlocation = "m/x"\n': "without a path",
        '[[registry]]\nprefix = "a"\n[[registry.mirror]]\nlocation = "m"\ninsecure = 1\n': (
            "true or false"
        ),
        'registry = "a"\n': "array of tables",
    }
    for text, message in bad.items():
        config.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(config)
    with pytest.raises(ConfigError, match="scheme must be http or https"):
        parse_mirror("ftp://m")


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    env = cli_env(IMGPULL_CONFIG=str(tmp_path / "nope"))
    proc = run_cli("pull", "127.0.0.1:1/x:v1", "--root", str(tmp_path), env=env)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"Error: cannot read the configuration {tmp_path / 'nope'}: No such file or directory"
    ]


def test_certs_d_rules(tmp_path: Path) -> None:
    """Docker's rules: *.crt are CAs, NAME.cert goes with NAME.key; the first
    folder of the search path that has the host wins."""
    first, second = tmp_path / "a", tmp_path / "b"
    (second / "r:5000").mkdir(parents=True)
    (second / "r:5000" / "ca.crt").write_text("x")
    assert host_tls("r:5000", [first, second]).ca_files == (str(second / "r:5000" / "ca.crt"),)
    (first / "r:5000").mkdir(parents=True)
    assert host_tls("r:5000", [first, second]).ca_files == ()  # first folder wins, even empty
    assert host_tls("other:1", [first, second]).folder is None
    (first / "r:5000" / "me.cert").write_text("x")
    with pytest.raises(ConfigError, match=r"missing key me\.key for client certificate"):
        host_tls("r:5000", [first])
    (first / "r:5000" / "me.key").write_text("x")
    (first / "r:5000" / "stray.key").write_text("x")
    with pytest.raises(ConfigError, match=r"missing client certificate stray\.cert for key"):
        host_tls("r:5000", [first])
    (first / "r:5000" / "stray.key").unlink()
    found = host_tls("r:5000", [first])
    assert (found.client_cert, found.client_key) == (
        str(first / "r:5000" / "me.cert"),
        str(first / "r:5000" / "me.key"),
    )
