"""The command's own surface: every command explains itself."""

from __future__ import annotations

import pytest
from support.cli import run_cli

COMMANDS = [
    "pull", "images", "inspect", "tag", "rmi", "export", "bench", "login", "logout", "version"
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command: str) -> None:
    proc = run_cli(command, "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: ")
    assert proc.stderr == ""


def test_top_level_help_lists_every_command() -> None:
    proc = run_cli("--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    for command in COMMANDS:
        assert command in proc.stdout
