"""Running the `imgpull` command and reading the store it leaves."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def imgpull_argv(*args: str) -> list[str]:
    """The command line of `imgpull ARGS` (this Python, ``-m imgpull``): for
    the tests that must hold the process (Popen) to signal, kill or watch it;
    everything else goes through run_cli."""
    return [sys.executable, "-m", "imgpull", *args]


def cli_env(**extra: str) -> dict[str, str]:
    """run_cli's default environment: this one with certs.d turned off (never
    the machine's own TLS files), plus ``extra``."""
    return {**os.environ, "IMGPULL_CERTS_D": os.devnull, **extra}


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`imgpull ARGS` in a child process, output captured, ``input`` (if any)
    on its stdin. `env` is its whole environment; by default cli_env()."""
    if env is None:
        env = cli_env()
    return subprocess.run(
        imgpull_argv(*args),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env),
    )


def stored_blobs(root: Path) -> set[str]:
    """The digests of the store's blobs, each checked to hash to its name
    (none when the store has no blob folder yet)."""
    folder = root / "blobs" / "sha256"
    if not folder.is_dir():
        return set()
    found = set()
    for path in folder.iterdir():
        with path.open("rb") as f:
            got = hashlib.file_digest(f, "sha256").hexdigest()
        assert got == path.name, f"{path} does not hash to its name"
        found.add("sha256:" + path.name)
    return found
