"""`imgpull bench`: pull into a fresh store N times and measure each pull
(of one image, or of several at once: one `imgpull pull REF...`, one scheduler).

Each pull runs as its own process so that its CPU time and peak RSS are its
own (os.wait4 gives both: measure(), which the benchmarks in benches/ use
too), and so that nothing is cached between runs but what the kernel caches.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from imgpull.errors import ImgpullError


@dataclass(frozen=True)
class RunResult:
    bytes: int  # compressed bytes stored (config, layers, manifests)
    wall_seconds: float
    cpu_seconds: float
    peak_rss_bytes: int

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.wall_seconds / 1e6 if self.wall_seconds > 0 else 0.0


@dataclass(frozen=True)
class Measured:
    """What a finished child process took."""

    exit_code: int
    wall_seconds: float
    cpu_seconds: float  # user + system, its waited-for children's included
    peak_rss_bytes: int


def measure(
    cmd: Sequence[str] | str,
    *,
    stdout: IO[bytes] | None = None,
    stderr: IO[bytes] | None = None,
    shell: bool = False,
) -> Measured:
    """Run `cmd` (its stdout dropped unless `stdout` is given, its stderr to
    `stderr`) and wait for it: its exit code, wall and CPU seconds and peak
    RSS (os.wait4). Interrupted (Ctrl-C), the command's whole process group
    is killed before the exception goes on, so that nothing it started
    outlives the measurement."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        shell=shell,
        stdout=stdout if stdout is not None else subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,  # a process group of its own, for the kill below
    )
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(
        exit_code=proc.returncode,
        wall_seconds=wall,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_bytes=usage.ru_maxrss * 1024,  # Linux reports KiB
    )


def _store_bytes(root: Path) -> int:
    blobs = root / "blobs" / "sha256"
    return sum(p.stat().st_size for p in blobs.iterdir()) if blobs.is_dir() else 0


def run_once(references: str | Sequence[str], pull_args: Sequence[str]) -> RunResult:
    """One pull of `references` (one or several) into a fresh store."""
    refs = [references] if isinstance(references, str) else list(references)
    root = Path(tempfile.mkdtemp(prefix="imgpull-bench-"))
    try:
        cmd = [sys.executable, "-m", "imgpull", "pull", *refs, "--root", str(root), "--quiet"]
        # A file, not a pipe: a chatty failure cannot block the child.
        with tempfile.TemporaryFile() as err:
            used = measure([*cmd, *pull_args], stderr=err)
            if used.exit_code != 0:
                err.seek(0)
                said = err.read().decode(errors="replace").strip()
                raise ImgpullError(f"bench pull failed (exit {used.exit_code}): {said}")
        return RunResult(
            bytes=_store_bytes(root),
            wall_seconds=used.wall_seconds,
            cpu_seconds=used.cpu_seconds,
            peak_rss_bytes=used.peak_rss_bytes,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(references: str | Sequence[str], runs: int, pull_args: Sequence[str]) -> list[RunResult]:
    results = []
    for _ in range(runs):
        # The writeback of the previous run's (deleted) store must not slow this one.
        os.sync()
        results.append(run_once(references, pull_args))
    return results


def median(results: Sequence[RunResult]) -> dict[str, float]:
    return {
        "bytes": statistics.median(r.bytes for r in results),
        "wall_seconds": statistics.median(r.wall_seconds for r in results),
        "mb_per_s": statistics.median(r.mb_per_s for r in results),
        "cpu_seconds": statistics.median(r.cpu_seconds for r in results),
        "peak_rss_bytes": statistics.median(r.peak_rss_bytes for r in results),
    }


def render(results: Sequence[RunResult], *, json_out: bool) -> str:
    if json_out:
        runs = [{**asdict(r), "mb_per_s": r.mb_per_s} for r in results]
        return json.dumps({"runs": runs, "median": median(results)}, indent=2)
    lines = [f"{'run':>6} {'bytes':>14} {'wall s':>8} {'MB/s':>9} {'cpu s':>7} {'peak RSS MB':>12}"]

    def row(name: str, b: float, wall: float, mbs: float, cpu: float, rss: float) -> str:
        return f"{name:>6} {int(b):>14} {wall:>8.3f} {mbs:>9.1f} {cpu:>7.2f} {rss / 1e6:>12.1f}"

    for i, r in enumerate(results, 1):
        lines.append(
            row(str(i), r.bytes, r.wall_seconds, r.mb_per_s, r.cpu_seconds, r.peak_rss_bytes)
        )
    m = median(results)
    lines.append(
        row(
            "median",
            m["bytes"],
            m["wall_seconds"],
            m["mb_per_s"],
            m["cpu_seconds"],
            m["peak_rss_bytes"],
        )
    )
    return "\n".join(lines)
