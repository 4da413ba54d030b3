"""Start-up of a pull (issue 17): a pull of an ordinary image loads the HTTP
stack and no other command's machinery (export, --rootfs, bench, login,
schema1); the local commands on a store holding that image load no HTTP.
tests/unit/test_startup.py has the commands that need no registry."""

from __future__ import annotations

from pathlib import Path

from support.cli import HTTP_MODULES, OCCASIONAL_MODULES, run_cli_imports
from support.pushed import PushedImage


def test_a_pull_loads_what_it_needs(pushed_image: PushedImage, tmp_path: Path) -> None:
    root = str(tmp_path / "store")
    ref = pushed_image.ref()
    for run in ("cold", "up to date"):
        proc, loaded = run_cli_imports("pull", "-q", "--root", root, ref)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"{ref}\n", ""), run
        assert {"httpx", "imgpull.pull"} <= loaded, run
        assert not loaded & OCCASIONAL_MODULES, run
    tagged = pushed_image.registry.ref("test/mine:1")
    for args in (["images"], ["inspect", ref], ["tag", ref, tagged], ["rmi", tagged]):
        proc, loaded = run_cli_imports(*args, "--root", root)
        assert (proc.returncode, proc.stderr) == (0, ""), args
        assert not loaded & (HTTP_MODULES | OCCASIONAL_MODULES), args
