"""Helpers shared by the benchmarks in this folder (not a benchmark itself)."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from imgpull.bench import measure

HERE = Path(__file__).resolve().parent
# tests/support (RegistryServer, image builders, push) is importable as `support`.
sys.path.insert(0, str(HERE.parent / "tests"))


@dataclass(frozen=True)
class Run:
    tool: str
    wall: float
    cpu: float
    rss: int
    # For runs of several commands: (step name, wall s, cpu s, peak RSS bytes).
    steps: tuple[tuple[str, float, float, int], ...] = field(default=())
    # CPU seconds the registry spent serving the run.
    server_cpu: float = 0.0
    # CPU seconds the rest of the machine spent meanwhile (busy_cpu() delta
    # less cpu and server_cpu): kernel threads (writeback), or another job.
    other_cpu: float = 0.0


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime: fields 14 and 15 of stat(5), counted from after "(comm)".
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_cpu() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat; not idle, iowait)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    # guest time is already counted in user and nice.
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def timed(
    cmd: Sequence[str],
    *,
    shell: bool = False,
    stderr: Path | None = None,
    exact_rss: bool = False,
    stdout: Path | None = None,
) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and peak RSS of a command and its children.

    `stderr`: a file for the command's stderr (warnings of many runs would
    bury the report), shown if the command fails. `stdout`: a file for its
    stdout (dropped otherwise). `exact_rss`: the peak RSS
    as GNU time (a small process) sees its child's, not floored by this
    process's own peak (rss_floor); needs /usr/bin/time, a `stderr` file, no shell.
    """
    rss_file = stderr.with_suffix(".rss") if exact_rss and stderr and not shell else None
    if rss_file is not None:
        cmd = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *cmd]
    # stdout dropped unless asked for: only the report goes to ours (`--json`
    # must stay parseable).
    with contextlib.ExitStack() as stack:
        err = stack.enter_context(stderr.open("wb")) if stderr else None
        out = stack.enter_context(stdout.open("wb")) if stdout else None
        used = measure(cmd if not shell else cmd[0], stdout=out, stderr=err, shell=shell)
    if used.exit_code != 0:
        tail = stderr.read_text(errors="replace")[-2000:] if stderr else ""
        raise SystemExit(f"command failed: {cmd}\n{tail}")
    rss = int(rss_file.read_text().split()[-1]) * 1024 if rss_file else used.peak_rss_bytes
    return used.wall_seconds, used.cpu_seconds, rss


def timed_steps(
    tool: str, steps: Sequence[tuple[str, Sequence[str]]], logs: Path | None = None
) -> Run:
    """Run commands one after the other: walls and CPU add up, peak RSS is the max.

    `logs`: a folder for each step's stderr (<step>.err), and then each
    step's peak RSS is exact (timed's exact_rss).
    """
    done = [
        (
            name,
            *timed(
                cmd,
                stderr=logs / f"{name.replace(' ', '-')}.err" if logs else None,
                exact_rss=logs is not None,
            ),
        )
        for name, cmd in steps
    ]
    return Run(
        tool,
        sum(s[1] for s in done),
        sum(s[2] for s in done),
        max(s[3] for s in done),
        tuple(done),
    )


def rss_floor() -> int:
    """This process's peak RSS: a child's ru_maxrss is never below it.

    Linux carries the pre-exec hiwater RSS (of this process's memory, under
    fork or vfork) into the child's ru_maxrss, so keep the parent small.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def settle() -> None:
    """Each run starts with no dirty pages left by the one before."""
    os.sync()
    time.sleep(1.0)


def skopeo_copy_cmd(ref: str, dest: Path, tag: str = "latest") -> list[str]:
    return [
        "skopeo",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        f"docker://{ref}",
        f"oci:{dest}:{tag}",
    ]


def skopeo_run(ref: str) -> Run:
    dest = Path(tempfile.mkdtemp(prefix="bench-skopeo-"))
    try:
        return Run("skopeo copy", *timed(skopeo_copy_cmd(ref, dest)))
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def medians(runs: Sequence[Run], total: int, base_tool: str) -> dict[str, dict[str, float]]:
    """Per tool (in first-run order): median wall, CPU, RSS; MB/s of `total`; x base_tool."""
    tools = list(dict.fromkeys(r.tool for r in runs))
    med = {
        t: {
            "wall_s": statistics.median(r.wall for r in runs if r.tool == t),
            "cpu_s": statistics.median(r.cpu for r in runs if r.tool == t),
            "peak_rss_mb": statistics.median(r.rss for r in runs if r.tool == t) / 1e6,
        }
        for t in tools
    }
    for m in med.values():
        m["mb_per_s"] = total / m["wall_s"] / 1e6
    base = med[base_tool]
    for m in med.values():
        m["time_vs_imgpull"] = m["wall_s"] / base["wall_s"]
        m["cpu_vs_imgpull"] = m["cpu_s"] / base["cpu_s"]
    return med


def table(med: dict[str, dict[str, float]], width: int = 20) -> list[str]:
    lines = [
        f"{'tool':<{width}} {'wall s':>8} {'MB/s':>8} {'cpu s':>7} {'RSS MB':>7} "
        f"{'x imgpull':>10} {'cpu x':>6}"
    ]
    for t, m in med.items():
        lines.append(
            f"{t:<{width}} {m['wall_s']:>8.3f} {m['mb_per_s']:>8.0f} {m['cpu_s']:>7.2f} "
            f"{m['peak_rss_mb']:>7.1f} {m['time_vs_imgpull']:>10.2f} {m['cpu_vs_imgpull']:>6.2f}"
        )
    return lines


_T = TypeVar("_T")


def in_child(fn: Callable[..., _T], *args: Any) -> _T:
    """fn(*args) in a forked child, its result sent back (picklable).

    For set-up work (building and pushing images): its memory never raises
    this process's peak RSS, the floor of every timed child's (rss_floor).
    """
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    queue: Any = ctx.Queue()

    def run() -> None:
        try:
            queue.put((True, fn(*args)))
        except BaseException as exc:
            queue.put((False, repr(exc)))
            raise

    proc = ctx.Process(target=run)
    proc.start()
    ok, result = queue.get()
    proc.join()
    if not ok or proc.exitcode != 0:
        raise SystemExit(f"{getattr(fn, '__name__', fn)} failed in its child: {result}")
    return result  # type: ignore[no-any-return]


def blob_get_counts(entries: Sequence[Any]) -> Counter[str]:
    """Successful blob GETs per digest, from RegistryServer.request_log() entries."""
    return Counter(
        e.path.rsplit("/", 1)[1]
        for e in entries
        if e.method == "GET" and "/blobs/" in e.path and e.status in (200, 206)
    )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
