"""What both halves of the suite share: the session's environment (an empty
Docker config, no DOCKER_DEFAULT_PLATFORM, SIGINT at its default), the
report header and the fault matrix in the terminal summary.

tests/ (this folder) is on sys.path for the ``support`` package; unit/ needs
nothing else, e2e/conftest.py holds the fixtures that start registries.

imgpull is NOT imported here: the package may be mid-change while these
fixtures are in use; tests import it themselves.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# A shell that starts a command in the background without job control has it
# ignore SIGINT, and every imgpull the tests start would inherit that (Python
# keeps an ignored SIGINT ignored): the Ctrl-C tests would then see a pull
# finish instead of stop. Our own handler is reset to the default at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

UNIT = Path(__file__).parent / "unit"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """The fault matrix of the fault-injection tests, when any ran."""
    from support.faultmatrix import summary_lines

    for line in summary_lines(config):
        terminalreporter.write_line(line)


def _unit_only(config: pytest.Config) -> bool:
    """Whether every path this run was given lies in tests/unit."""
    paths = [Path(arg.split("::", 1)[0]).resolve() for arg in config.args]
    return bool(paths) and all(p == UNIT or UNIT in p.parents for p in paths)


def pytest_report_header(config: pytest.Config) -> list[str]:
    if _unit_only(config):
        return ["unit tests only: no registry, skopeo or server"]
    lines = []
    for tool, flag in (("docker-registry", "--version"), ("skopeo", "--version")):
        path = shutil.which(tool)
        if path is None:
            lines.append(f"{tool}: MISSING (registry tests will fail)")
            continue
        out = subprocess.run([path, flag], capture_output=True, text=True, timeout=30).stdout
        lines.append(f"{tool}: {out.strip()}")
    return lines


@pytest.fixture(scope="session", autouse=True)
def _private_docker_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """imgpull reads credentials from Docker's config file by default: the
    tests (and the CLI processes they start) get an empty one, never the machine's.
    Nor the machine's DOCKER_DEFAULT_PLATFORM (the CLI's --platform default)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOCKER_CONFIG", str(tmp_path_factory.mktemp("docker-config")))
        mp.delenv("DOCKER_DEFAULT_PLATFORM", raising=False)
        yield
