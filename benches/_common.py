"""Helpers shared by the benchmarks in this folder (not a benchmark itself)."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
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

from support.registry import _die_with_parent  # noqa: E402


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


# ---------------------------------------------------------------------------
# docker pull, through a dockerd of the bench's own
# ---------------------------------------------------------------------------


def start_daemon(cmd: Sequence[str], log: Path, *, append: bool) -> subprocess.Popen[bytes]:
    """A daemon of the bench's own (dockerd, containerd), its output in `log`:
    in a session of its own (a ^C is for the bench, which stops it), killed
    with the bench should the bench die first."""
    with log.open("ab" if append else "wb") as out:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


class DockerUnavailable(Exception):
    """dockerd did not start, or not as the bench needs it (the message says why)."""


def _cpu_with_children(pid: int) -> float:
    """User + system CPU seconds of a process and of the children it has reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime: fields 14-17 of stat(5), counted from after "(comm)".
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def mount_points_under(root: Path) -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(root) or point.startswith(f"{root}/"):
            points.append(point)
    return points


class DockerDaemon:
    """A dockerd whose data root, exec root, socket and config are all in `home`.

    One per placement, started once per bench run (its data root is the
    placement's: overlay2 on tmpfs or on the disk), stopped by stop()
    (SIGTERM, SIGKILL after 60 s), which then removes `home`. A pull runs in
    the daemon, not in the timed `docker` CLI: the daemon's CPU (with the
    children it reaps, e.g. its layer-applying re-exec) and its peak RSS
    (VmHWM, reset before each pull) are read from /proc around each pull.
    """

    def __init__(self, home: Path, registry: str, parallel: int) -> None:
        self.home = home
        self.data = home / "data"
        self.exec_root = home / "exec"
        self.sock = home / "docker.sock"
        self.host = f"unix://{self.sock}"
        self.log = home / "dockerd.log"
        self.registry = registry  # 127.0.0.1:PORT, plain HTTP: listed as insecure
        self.parallel = parallel
        self.proc: subprocess.Popen[bytes] | None = None
        self.about = ""

    def docker(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run(
            ["docker", *args],
            env={**os.environ, "DOCKER_HOST": self.host},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise DockerUnavailable(
                f"`docker {' '.join(args)}` failed: {done.stderr.strip()[-800:]}"
            )
        return done.stdout

    def _log_tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        errors = [ln for ln in text.splitlines() if "level=error" in ln or "level=fatal" in ln]
        return "\n".join(errors[-3:] or text.splitlines()[-3:])

    def start(self) -> None:
        dockerd = shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/usr/bin")
        if dockerd is None or shutil.which("docker") is None:
            raise DockerUnavailable(
                "dockerd or the docker CLI is missing (apt-get install docker.io)"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.home / "daemon.json"
        config.write_text("{}\n")  # not /etc/docker/daemon.json
        cmd = [
            dockerd,
            "--config-file", str(config),
            "--data-root", str(self.data),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.home / "dockerd.pid"),
            "--host", self.host,
            "--iptables=false",
            "--bridge=none",
            "--storage-driver", "overlay2",
            "--insecure-registry", self.registry,
            "--max-concurrent-downloads", str(self.parallel),
        ]  # fmt: skip
        self.proc = start_daemon(cmd, self.log, append=False)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise DockerUnavailable(
                    f"dockerd exited ({self.proc.returncode}) at start: {self._log_tail()}"
                )
            if self.sock.exists():
                try:
                    info = json.loads(self.docker("info", "--format", "{{json .}}", timeout=20))
                    break
                except (DockerUnavailable, subprocess.TimeoutExpired, json.JSONDecodeError):
                    pass
            if time.monotonic() > deadline:
                raise DockerUnavailable(f"dockerd did not answer in 60 s: {self._log_tail()}")
            time.sleep(0.25)
        if info.get("Driver") != "overlay2":
            raise DockerUnavailable(f"dockerd runs storage driver {info.get('Driver')!r}")
        status = dict(info.get("DriverStatus") or [])
        index = (info.get("RegistryConfig") or {}).get("IndexConfigs") or {}
        if (index.get(self.registry) or {}).get("Secure", True):
            raise DockerUnavailable(f"dockerd did not take --insecure-registry {self.registry}")
        self.about = (
            f"dockerd {info.get('ServerVersion')}, overlay2 on "
            f"{status.get('Backing Filesystem', '?')} (d_type {status.get('Supports d_type', '?')}"
            f", native diff {status.get('Native Overlay Diff', '?')}), {self.registry} insecure"
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        return _cpu_with_children(self.pid)

    def reset_peak_rss(self) -> None:
        # 5: reset the peak RSS (VmHWM) to the current RSS (proc(5), Linux >= 4.0).
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def peak_rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def layer_dirs(self) -> list[Path]:
        overlay = self.data / "overlay2"
        return [p / "diff" for p in overlay.iterdir() if (p / "diff").is_dir()]

    def forget(self, *refs: str) -> None:
        """Remove the images and their layers: the next pull downloads all of them again."""
        self.docker("rmi", "--force", *refs)
        self.docker("image", "prune", "--all", "--force")
        deadline = time.monotonic() + 30
        while self.layer_dirs():
            if time.monotonic() > deadline:
                raise SystemExit(f"docker rmi left layers: {self.layer_dirs()}")
            time.sleep(0.1)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        # The containerd dockerd started ends with it, unless dockerd was killed.
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.exec_root / "containerd" / "containerd.pid").read_text())
            if str(self.exec_root).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGTERM)
                for _ in range(100):
                    if not Path(f"/proc/{pid}").exists():
                        break
                    time.sleep(0.1)
                else:
                    os.kill(pid, signal.SIGKILL)
        # dockerd bind-mounts its data root on itself while it runs; a killed
        # one leaves that mount behind.
        for point in reversed(mount_points_under(self.home)):
            subprocess.run(["umount", "-l", point], check=False)
        shutil.rmtree(self.home, ignore_errors=True)
