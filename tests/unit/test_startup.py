"""Start-up (issue 17): a command loads what it needs, and no more.

The checks are structural (which modules a run imports, what the store and
the TLS contexts do before a request), not timings: the figures are in the
issue's closing note. `imgpull --version` answers before the CLI (typer)
loads; the local commands (images, inspect, tag, rmi) and the help load no
HTTP stack; a store at the current schema is opened without a write; a TLS
context loads the system's roots at its first handshake, not before."""

from __future__ import annotations

import os
import socket
import ssl
import tomllib
from pathlib import Path

import pytest
from support.cli import HTTP_MODULES, OCCASIONAL_MODULES, run_cli_imports, run_python_imports

import imgpull
from imgpull.registry.client import Endpoint, _shared_ssl_context
from imgpull.store import Store

REPO = Path(__file__).resolve().parents[2]
VERSION_LINE = f"imgpull {imgpull.__version__}\n"


def test_the_console_script_is_the_fast_entry_point() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"imgpull": "imgpull.__main__:main"}


@pytest.mark.parametrize(
    "argv",
    [
        ["-m", "imgpull", "--version"],
        ["-m", "imgpull", "version"],
        # As the console script calls it.
        ["-c", "import sys; from imgpull.__main__ import main; sys.exit(main())", "--version"],
    ],
)
def test_version_answers_before_the_cli_loads(argv: list[str]) -> None:
    proc, loaded = run_python_imports(*argv)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, VERSION_LINE, "")
    assert not loaded & {"typer", "click", "imgpull.cli", "imgpull.client", *HTTP_MODULES}


def test_version_among_other_options_goes_through_the_cli() -> None:
    proc, loaded = run_cli_imports("--debug", "--version")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, VERSION_LINE, "")
    assert "typer" in loaded
    assert not loaded & HTTP_MODULES


def test_the_cli_module_loads_no_command_s_machinery() -> None:
    proc, loaded = run_python_imports("-c", "import imgpull.cli")
    assert proc.returncode == 0, proc.stderr
    assert not loaded & (HTTP_MODULES | OCCASIONAL_MODULES | {"imgpull.client"})


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--help"], ""),
        (["images"], ""),
        (["inspect", "alpine"], "Error: No such image: alpine:latest\n"),
        (["tag", "alpine", "mine"], "Error: No such image: alpine:latest\n"),
        (["rmi", "alpine"], "Error: No such image: alpine:latest\n"),
    ],
)
def test_local_commands_load_no_http(tmp_path: Path, args: list[str], error: str) -> None:
    root = [] if args == ["--help"] else ["--root", str(tmp_path)]
    proc, loaded = run_cli_imports(*args, *root)
    assert proc.stderr == error
    assert proc.returncode == (1 if error else 0)
    assert "imgpull.cli" in loaded
    assert not loaded & (HTTP_MODULES | OCCASIONAL_MODULES)


def test_a_store_at_the_current_schema_opens_without_a_write(tmp_path: Path) -> None:
    Store(tmp_path).close()  # creates it
    db = tmp_path / "imgpull.db"
    os.utime(db, ns=(1_000_000_000, 1_000_000_000))
    before = db.read_bytes()
    store = Store(tmp_path)
    assert store.meta.images() == []
    store.close()
    # A commit would have gone through the WAL into the file at close.
    assert db.stat().st_mtime_ns == 1_000_000_000
    assert db.read_bytes() == before


def _ca_certs(ctx: ssl.SSLContext) -> int:
    return int(ctx.cert_store_stats()["x509_ca"])


def _wrap(ctx: ssl.SSLContext) -> None:
    """What httpx does on a TLS connection, up to the handshake."""
    left, right = socket.socketpair()
    with left, right:
        ctx.wrap_socket(left, server_hostname="registry.test", do_handshake_on_connect=False)


def test_tls_roots_load_at_the_first_handshake() -> None:
    if _ca_certs(ssl.create_default_context()) == 0:
        pytest.skip("this system has no CA certificates")
    _shared_ssl_context.cache_clear()
    for scheme in ("http", "https"):
        endpoint = Endpoint("registry.test:5000", scheme=scheme)
        ctx = endpoint.ssl_context()
        assert ctx is Endpoint("registry.test:5000", scheme=scheme).ssl_context()  # built once
        assert (ctx.verify_mode, ctx.check_hostname) == (ssl.CERT_REQUIRED, True)
        # A plain-http registry's client never needs them (unless a
        # redirect or its token realm leads to https).
        assert _ca_certs(ctx) == 0
    _wrap(ctx)
    assert _ca_certs(ctx) == _ca_certs(ssl.create_default_context())


def test_an_insecure_context_loads_no_roots() -> None:
    _shared_ssl_context.cache_clear()
    ctx = Endpoint("registry.test:5000", insecure=True).ssl_context()
    assert (ctx.verify_mode, ctx.check_hostname) == (ssl.CERT_NONE, False)
    _wrap(ctx)
    assert _ca_certs(ctx) == 0
