"""Running the `imgpull` command and reading the store it leaves."""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

NOBODY = 65534  # uid and gid of the user `nobody`


def imgpull_argv(*args: str) -> list[str]:
    """The command line of `imgpull ARGS` (this Python, ``-m imgpull``): for
    the tests that must hold the process (Popen) to signal, kill or watch it;
    everything else goes through run_cli."""
    return [sys.executable, "-m", "imgpull", *args]


def with_mounts(mounts: Sequence[Sequence[str]], argv: Sequence[str]) -> list[str]:
    """The command line of `argv` run in a mount namespace of its own, after
    the `mount` commands `mounts` (each an argv): nothing they mount is seen
    outside it or outlives it (needs root)."""
    script = " && ".join(shlex.join(m) for m in mounts) + ' && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]


def nobody_imgpull_argv(python_mount: Path, *args: str) -> list[str]:
    """The command line of `imgpull ARGS` run as user nobody (no
    capabilities, no groups), needing root to start. This Python's
    installation may lie in root's home (mode 0700): it is bind-mounted at
    `python_mount`, an empty directory nobody can reach, in a mount namespace
    of the command's own. Give it `nobody_env(python_mount)`."""
    prefix = os.path.realpath(sys.base_prefix)
    python = Path(os.path.realpath(sys.executable)).relative_to(prefix)
    setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return with_mounts(
        [["mount", "--bind", prefix, str(python_mount)]],
        [*setpriv, str(python_mount / python), "-m", "imgpull", *args],
    )


def nobody_env(python_mount: Path, home: Path) -> dict[str, str]:
    """cli_env() for nobody_imgpull_argv: HOME `home` (and Docker's config
    there: the suite's is root's), and the Python's shared library found in
    its mount (its rpath names root's home)."""
    return cli_env(
        HOME=str(home),
        DOCKER_CONFIG=str(home / ".docker"),
        LD_LIBRARY_PATH=str(python_mount / "lib"),
    )


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
    return run_argv(imgpull_argv(*args), env=env, timeout=timeout, input=input)


def run_argv(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """A command line (imgpull's, e.g. as nobody_imgpull_argv gives it) run
    as run_cli runs it."""
    return subprocess.run(
        list(argv),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(cli_env() if env is None else env),
    )


def run_python_imports(*argv: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """`python -X importtime ARGV` (this Python, a fresh interpreter, cli_env()):
    its result, the import lines taken out of its stderr, and the names of
    the modules it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
    )
    lines = proc.stderr.splitlines()
    timed = [line for line in lines if line.startswith("import time:")]
    loaded = {line.rsplit("|", 1)[1].strip() for line in timed[1:]}  # [0]: the header
    proc.stderr = "".join(f"{line}\n" for line in lines if not line.startswith("import time:"))
    return proc, loaded


def run_cli_imports(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """`imgpull ARGS` as run_python_imports runs it: what it imported too."""
    return run_python_imports("-m", "imgpull", *args)


# What a pull needs: a command that sends no request loads none of it.
HTTP_MODULES = frozenset(
    {
        "httpx",
        "httpcore",
        "h11",
        "imgpull.registry",
        "imgpull.credentials",
        "imgpull.transport",
        "imgpull.transfer",
        "imgpull.pull",
    }
)
# What only some commands or images need: export, --rootfs, bench, login, schema1.
OCCASIONAL_MODULES = frozenset(
    {"imgpull.export", "imgpull.rootfs", "imgpull.bench", "imgpull.login", "imgpull.schema1"}
)


# Runs ARGV, then writes "EXIT_CODE MAXRSS_KIB" of it to the file named first.
_MEASURE = """\
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def run_cli_measured(*args: str, timeout: float = 60) -> tuple[int, str, str, int]:
    """`imgpull ARGS` (environment: cli_env()) in a child: its exit code,
    stdout, stderr and its own peak RSS in KiB.

    The child is started by a small launcher process, which waits for it
    with os.wait4 (that child's usage alone): a process's ru_maxrss counts
    the resident memory of the process that forked it, as it was at the
    fork, and pytest's own can be hundreds of MB after the tests before."""
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result")
        with (
            open(os.path.join(tmp, "out"), "w+b") as out,
            open(os.path.join(tmp, "err"), "w+b") as err,
        ):
            launcher = subprocess.Popen(
                [sys.executable, "-c", _MEASURE, result, *imgpull_argv(*args)],
                stdout=out,
                stderr=err,
                env=cli_env(),
                start_new_session=True,  # the launcher and imgpull: one group to kill
            )
            try:
                launcher.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait()
                raise AssertionError(
                    f"imgpull {' '.join(args)} still ran after {timeout} s"
                ) from None
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(), err.read().decode()
        assert launcher.returncode == 0, f"the launcher failed: {stderr}"
        with open(result) as f:
            code, rss_kib = (int(word) for word in f.read().split())
    return code, stdout, stderr, rss_kib


def kill_rootfs_pull(ref: str, root: Path, dest: Path, timeout: float) -> None:
    """`imgpull pull -q REF --root ROOT --rootfs DEST` killed (-9) once its
    bottom layer is being written (DEST/usr/share there): a partial tree for
    a rerun to recognise. REF should come through a slow relay, so that the
    pull is still running then."""
    proc = subprocess.Popen(
        imgpull_argv("pull", ref, "-q", "--root", str(root), "--rootfs", str(dest)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while not (dest / "usr" / "share").is_dir():
            assert proc.poll() is None, "the pull ended before it was killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


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
