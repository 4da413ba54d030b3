"""Servers the tests start and stop: one context-manager protocol, and the
parent side of the helper programs of tests/support run as processes of
their own (proxies, a relay, a token issuer).

A helper program is the module that defines its HelperProcess subclass, run
with ``python -m`` (so its package imports work in the child too); it prints
its port as its first line on stdout and ends when its stdin closes, when it
is terminated, or when the test process dies.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

_M = TypeVar("_M", bound="Managed")
# The folder holding the `support` package, for the children's imports.
_TESTS = str(Path(__file__).resolve().parent.parent)


class Managed:
    """``with server:`` starts it and always stops it, also when starting fails."""

    def start(self: _M) -> _M:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: _M) -> _M:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def terminate(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, and SIGKILL if the process has not ended 5 s later."""
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class HelperProcess(Managed):
    """The parent side of a helper program (see the module's docstring)."""

    what = "helper process"  # for the error when it does not start

    def __init__(self) -> None:
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def _spawn(self, *args: str, stderr: IO[Any] | None = None) -> None:
        """Runs ``python -m MODULE ARGS...`` (MODULE: this class's) and takes
        the port it prints."""
        from .registry import _die_with_parent

        path = os.pathsep.join(p for p in (_TESTS, os.environ.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", type(self).__module__, *args],
            env={**os.environ, "PYTHONPATH": path},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,  # a ^C sent to a test's pull is not for it
            preexec_fn=_die_with_parent,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the {self.what} did not start (said {line!r})")
        self.port = int(line)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        terminate(proc)
        if proc.stdout is not None:
            proc.stdout.close()
