#!/usr/bin/env python3
"""imgpull vs skopeo, containerd and docker through a WAN-like relay: wall
time, requests, connections, and how far each is from the link's floor.

Starts Debian's docker-registry on loopback and, in front of it, the relay of
the test support (tests/support/wanrelay.py: each direction delayed by RTT/2,
a new connection's handshake one RTT, optionally a cap per connection on the
server -> client bytes; it counts the connections and HTTP requests it
relays). Every tool pulls through the relay. Scenarios:

  small  one small image (1 layer)
  fleet  --fleet images (default 40) sharing a base layer, each with a layer
         and config of its own: imgpull in one process (`imgpull pull REF...`),
         the others 4 at a time (xargs -P4, one reference per process)
  big    the text-like image of bench_layers.py (--big-mb, default 1000 MB of
         gzip -6, 8 layers), with a cap of --cap-mbit (default 200 Mbit/s) per
         connection

Rows, each from a cold store (and the relay's connections cut before it):

  imgpull pull          `imgpull pull --root FRESH --plain-http REF`
  imgpull --fetch-only  the same with --fetch-only
  imgpull --rootfs      the same with --rootfs DIR (not for the fleet)
  skopeo copy           `skopeo copy docker://REF oci:DIR:latest`
  ctr image pull        containerd 1.6's own pull and unpack (overlayfs), through a
                        containerd of the bench's own (root, state, config and
                        socket in the work folder; restarted on a fresh root
                        before each run): `ctr -a SOCK -n bench image pull --plain-http`
  ctr content fetch     the same daemon, `ctr content fetch --plain-http` (no unpack)
  docker pull           through a dockerd of the bench's own (overlay2, the relay
                        as an insecure registry; `docker rmi` + prune after each
                        run), when one starts

for each RTT of --rtts (default 0,20,50,100 ms). Each tool runs with its
defaults (imgpull 3 downloads at once, docker 3, ctr no limit, skopeo 6);
each goes first in turn. A table per RTT: median wall of --runs runs (one
run for the big rows: --big-runs), the wall over imgpull pull's and over
imgpull --rootfs's (above 1: slower than imgpull), the requests and new
connections the relay saw (medians; a connection whose bytes are not HTTP,
docker's TLS probe, counts as a connection only), the megabytes it relayed
to the client, and the round-trip floor with the wall over it (x floor).

The round-trip floor: the time an ideal client needs on this link. It opens
--floor-connections connections (default 16) at once (1 RTT), then sends one
request at a time on each (HTTP/1.1): every manifest first (by tag, one GET,
no ping: the registry has no auth), each blob (config and layers, each
distinct blob once) once its manifest is in. A request costs 1 RTT plus its
body over the connection's rate: the cap, or without one the relay's window
over RTT/2 (wanrelay.WINDOW), and nothing at RTT 0. Requests go to the
connection free first, the biggest ready blob first (list scheduling). So one
image costs 3 RTT + its biggest blob's transfer; 40 images 9 RTT at 16
connections. No Range split of a blob across connections: a tool that splits
one can go below the floor. At RTT 0 without a cap the floor is 0 (loopback:
the CPU decides) and x floor is left out.

The relay is Python threads (about 2 ms of CPU per MB relayed): the big rows
at 200 Mbit/s x 8 connections cost it most of a core of the machine's, taken
from the tools; its largest CPU share during a run is printed at the end.

    PYTHONPATH=python python3 benches/bench_wan.py [--rtts 0,20,50,100] [--runs 3]
        [--big-runs 1] [--scenarios small,fleet,big] [--fleet 40] [--big-mb 1000]
        [--cap-mbit 200] [--no-docker] [--no-containerd] [--work-dir /dev/shm] [--quick]

`--quick`: a smoke run (RTT 0 and 50, 1 run, a fleet of 10, a big image of
80 MB). Needs root (dockerd, containerd), skopeo, containerd (ctr), docker.io;
--work-dir holds the registry, the daemons and every pull: about 4x the big
image (default a tmpfs, /dev/shm).
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# _common puts tests/ on sys.path (for `support`), so it comes first.
from _common import (
    DockerDaemon,
    DockerUnavailable,
    markdown_table,
    mount_points_under,
    process_cpu,
    skopeo_copy_cmd,
    start_daemon,
    timed,
)
from bench_layers import build_text_image
from support.bulkimages import push_small_images
from support.images import MT_DOCKER_MANIFEST, MT_OCI_MANIFEST, build_oci_layout, push, random_layer
from support.registry import RegistryServer
from support.wanrelay import WINDOW, WanRelay

# The installed console script, not a shim in front of it (pyenv's costs 0.1 s
# of bash a run); `python -m imgpull` if there is none.
_SCRIPT = Path(sys.executable).with_name("imgpull")
IMGPULL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "imgpull"]
NAMESPACE = "bench"
PARALLEL = 4  # processes at once for a fleet, for the tools without a bulk pull

PULL = "imgpull pull"
FETCH_ONLY = "imgpull --fetch-only"
ROOTFS = "imgpull --rootfs"
SKOPEO = "skopeo copy"
CTR_PULL = "ctr image pull"
CTR_FETCH = "ctr content fetch"
DOCKER = "docker pull"
TOOLS = (PULL, FETCH_ONLY, ROOTFS, SKOPEO, CTR_PULL, CTR_FETCH, DOCKER)
SCENARIOS = ("small", "fleet", "big")


# ---------------------------------------------------------------------------
# containerd, a daemon of the bench's own
# ---------------------------------------------------------------------------


class ContainerdUnavailable(Exception):
    """containerd did not start (the message says why)."""


class Containerd:
    """A containerd whose root, state, config and sockets are all in `home`
    (none of the system's, nor dockerd's own containerd's). fresh() restarts
    it on an empty root: a cold content store and no snapshots."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.sock = home / "containerd.sock"
        self.log = home / "containerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.about = ""

    def ctr(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run(
            ["ctr", "-a", str(self.sock), "-n", NAMESPACE, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise ContainerdUnavailable(f"`ctr {' '.join(args)}` failed: {done.stderr.strip()}")
        return done.stdout

    def _config(self) -> Path:
        h = self.home
        config = h / "config.toml"
        # Only what a pull needs: no CRI (it would want its own CNI and
        # streaming ports), no snapshotters but overlayfs and native.
        disabled = [
            "io.containerd.grpc.v1.cri",
            "io.containerd.snapshotter.v1.aufs",
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.devmapper",
            "io.containerd.snapshotter.v1.zfs",
            "io.containerd.tracing.processor.v1.otlp",
            "io.containerd.internal.v1.tracing",
        ]
        config.write_text(
            "version = 2\n"
            f'root = "{h / "root"}"\n'
            f'state = "{h / "state"}"\n'
            f"disabled_plugins = {json.dumps(disabled)}\n"
            f'[grpc]\n  address = "{self.sock}"\n'
            f'[ttrpc]\n  address = "{self.sock}.ttrpc"\n'
            '[debug]\n  address = ""\n'
            '[metrics]\n  address = ""\n'
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{h / "opt"}"\n'
        )
        return config

    def start(self) -> None:
        if shutil.which("containerd") is None or shutil.which("ctr") is None:
            raise ContainerdUnavailable("containerd or ctr is missing (apt-get install containerd)")
        self.home.mkdir(parents=True, exist_ok=True)
        config = self._config()
        self.proc = start_daemon(["containerd", "--config", str(config)], self.log, append=True)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace").splitlines()[-3:]
                raise ContainerdUnavailable(f"containerd exited at start: {tail}")
            with contextlib.suppress(ContainerdUnavailable, subprocess.TimeoutExpired):
                version = self.ctr("version", timeout=5)
                break
            if time.monotonic() > deadline:
                raise ContainerdUnavailable("containerd did not answer `ctr version` in 30 s")
            time.sleep(0.05)
        server = version.split("Server:", 1)[-1].split()
        self.about = f"containerd {server[1] if len(server) > 1 else '?'}, overlayfs snapshotter"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for point in reversed(mount_points_under(self.home)):
            subprocess.run(["umount", "-l", point], check=False)

    def fresh(self) -> None:
        """Restarted on an empty root and state."""
        self.stop()
        for d in ("root", "state", "opt"):
            shutil.rmtree(self.home / d, ignore_errors=True)
        self.start()

    def images(self) -> int:
        return len(self.ctr("images", "ls", "-q").split())


# ---------------------------------------------------------------------------
# The images and their floors
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """What pulling one image from a cold store fetches: its manifest's size,
    and (digest, size) of its config and layers."""

    manifest: int
    blobs: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Scenario:
    name: str
    refs: tuple[str, ...]  # repo:tag, without a host
    shapes: tuple[Shape, ...]
    rate: float  # bytes/s per connection, 0: none
    runs: int

    def distinct_bytes(self) -> int:
        blobs = {d: s for shape in self.shapes for d, s in shape.blobs}
        return sum(blobs.values()) + sum(s.manifest for s in self.shapes)


def shape_of(registry: RegistryServer, repo_tag: str) -> Shape:
    repo, _, tag = repo_tag.rpartition(":")
    with registry.client() as client:
        resp = client.get(
            f"/v2/{repo}/manifests/{tag}",
            headers={"Accept": f"{MT_OCI_MANIFEST}, {MT_DOCKER_MANIFEST}"},
        )
    resp.raise_for_status()
    m = resp.json()
    blobs = [(m["config"]["digest"], m["config"]["size"])]
    blobs += [(la["digest"], la["size"]) for la in m["layers"]]
    return Shape(len(resp.content), tuple(blobs))


def floor_seconds(shapes: Sequence[Shape], rtt: float, rate: float, connections: int) -> float:
    """The round-trip floor of pulling `shapes` (see the module's docstring)."""
    per_conn = rate or (WINDOW / (rtt / 2) if rtt else 0.0)

    def cost(size: int) -> float:
        return rtt + (size / per_conn if per_conn else 0.0)

    free = [rtt] * connections  # all connected after one round trip
    heapq.heapify(free)
    manifests = list(shapes)
    sizes = {d: s for shape in shapes for d, s in shape.blobs}
    ready: dict[str, float] = {}  # distinct blob -> when its first manifest is in
    end = 0.0
    while manifests or ready:
        t = heapq.heappop(free)
        if manifests:
            shape = manifests.pop(0)
            done = t + cost(shape.manifest)
            for digest, _ in shape.blobs:
                ready[digest] = min(ready.get(digest, done), done)
        else:
            now = [d for d, at in ready.items() if at <= t]
            if now:
                digest, start = max(now, key=lambda d: sizes[d]), t
            else:
                digest = min(ready, key=lambda d: (ready[d], -sizes[d]))
                start = ready[digest]
            del ready[digest]
            done = start + cost(sizes[digest])
        end = max(end, done)
        heapq.heappush(free, done)
    return end


def build_small(registry: RegistryServer, work: Path) -> list[str]:
    image = build_oci_layout(work / "small", [random_layer(1_000_000, seed=17)], ref="small")
    push(image, registry, "wan/small:latest", "v2s2")
    return ["wan/small:latest"]


def build_fleet(registry: RegistryServer, work: Path, count: int) -> list[str]:
    refs = push_small_images(registry, work / "fleet", count, repo="wan/fleet", base_bytes=1 << 20)
    return [r.split("/", 1)[1] for r in refs]


def build_big(registry: RegistryServer, work: Path, size_mb: int) -> list[str]:
    build_text_image(work / "big", size_mb, 8, 6)
    push(work / "big", registry, "wan/big:latest", "v2s2", ref="bench")
    return ["wan/big:latest"]


# ---------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    rtt: float
    scenario: str
    tool: str
    wall: float
    requests: int
    connections: int
    opaque: int
    down_bytes: int
    relay_cpu: float  # CPU seconds the relay spent during the run


class Runner:
    def __init__(self, relay: WanRelay, work: Path, quick: bool) -> None:
        self.relay = relay
        self.work = work
        self.quick = quick
        self.containerd: Containerd | None = None
        self.docker: DockerDaemon | None = None
        self.logs = work / "logs"
        self.logs.mkdir()

    def refs(self, scenario: Scenario) -> list[str]:
        return [f"{self.relay.host}/{r}" for r in scenario.refs]

    def tools(self, scenario: Scenario) -> list[str]:
        tools = [PULL, FETCH_ONLY, SKOPEO]
        if len(scenario.refs) == 1:
            tools.insert(2, ROOTFS)
        if self.containerd is not None:
            tools += [CTR_PULL, CTR_FETCH]
        if self.docker is not None:
            tools.append(DOCKER)
        return tools

    def _xargs(self, refs: Sequence[str], *cmd: str) -> list[str]:
        """cmd REF, PARALLEL at once, for a fleet; cmd REF itself for one."""
        if len(refs) == 1:
            return [*cmd, refs[0]]
        listing = self.logs / "refs"
        listing.write_text("".join(f"{r}\n" for r in refs))
        return ["xargs", f"-P{PARALLEL}", "-n1", "-a", str(listing), *cmd]

    def command(self, tool: str, refs: Sequence[str], scratch: Path) -> list[str]:
        pull = [*IMGPULL, "pull", "--root", str(scratch / "store"), "--quiet", "--plain-http"]
        if tool == PULL:
            return [*pull, *refs]
        if tool == FETCH_ONLY:
            return [*pull, "--fetch-only", *refs]
        if tool == ROOTFS:
            return [*pull, "--rootfs", str(scratch / "rootfs"), *refs]
        if tool == SKOPEO:
            if len(refs) == 1:
                return skopeo_copy_cmd(refs[0], scratch / "oci")
            # One layout per reference (a shared one would race on its index.json).
            *flags, _src, _dest = skopeo_copy_cmd("REF", scratch / "oci")
            lines = [f"docker://{r} oci:{scratch}/oci-{i}:latest\n" for i, r in enumerate(refs)]
            (scratch / "pairs").write_text("".join(lines))
            return ["xargs", f"-P{PARALLEL}", "-L1", "-a", str(scratch / "pairs"), *flags]
        if tool in (CTR_PULL, CTR_FETCH):
            assert self.containerd is not None
            what = ["image", "pull"] if tool == CTR_PULL else ["content", "fetch"]
            ctr = ["ctr", "-a", str(self.containerd.sock), "-n", NAMESPACE, *what, "--plain-http"]
            return self._xargs(refs, *ctr)
        if tool == DOCKER:
            assert self.docker is not None
            return self._xargs(refs, "env", f"DOCKER_HOST={self.docker.host}", "docker", "pull")
        raise ValueError(tool)

    def run(self, rtt: float, scenario: Scenario, tool: str) -> Result:
        refs = self.refs(scenario)
        scratch = Path(tempfile.mkdtemp(prefix="run-", dir=self.work))
        try:
            if tool in (CTR_PULL, CTR_FETCH):
                assert self.containerd is not None
                self.containerd.fresh()
            cmd = self.command(tool, refs, scratch)
            os.sync()
            time.sleep(0.2 if self.quick else 1.0)
            self.relay.reset()  # no connection kept from before: a cold start
            err = self.logs / f"{tool.replace(' ', '_')}.err"
            cpu = process_cpu(self.relay.pid)
            wall = timed(cmd, stderr=err)[0]
            relay_cpu = process_cpu(self.relay.pid) - cpu
            stats = self.relay.settled_stats(limit=1.0)  # daemons keep theirs open
            self._check(tool, refs, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            if tool == DOCKER and self.docker is not None:
                self.docker.forget(*refs)
        return Result(
            rtt,
            scenario.name,
            tool,
            wall,
            stats.requests,
            stats.connections,
            stats.opaque,
            stats.down_bytes,
            relay_cpu,
        )

    def _check(self, tool: str, refs: Sequence[str], scratch: Path) -> None:
        """The run did pull: a failed command already stopped the bench (timed)."""
        held = self.containerd.images() if tool == CTR_PULL and self.containerd else len(refs)
        if held != len(refs):
            raise SystemExit(f"{tool}: containerd holds {held} images, not {len(refs)}")
        if tool == ROOTFS and not any((scratch / "rootfs").iterdir()):
            raise SystemExit(f"{tool}: an empty rootfs")


# ---------------------------------------------------------------------------
# The bench
# ---------------------------------------------------------------------------


def _csv(choices: Sequence[str] | None = None) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items or (choices and any(t not in choices for t in items)):
            raise argparse.ArgumentTypeError(f"a comma-separated list of {choices or 'values'}")
        return items

    return parse


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    # As for ^C: the `finally`s stop the daemons and remove the work folder.
    raise SystemExit(128 + signum)


def _versions() -> list[str]:
    out = []
    for cmd in ([*IMGPULL, "version"], ["skopeo", "--version"]):
        with contextlib.suppress(OSError):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            out.append(done.stdout.strip() or done.stderr.strip())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rtts", type=_csv(), default=None, help="ms (default 0,20,50,100)")
    ap.add_argument("--runs", type=int, default=None, help="runs of a small/fleet row (3)")
    ap.add_argument("--big-runs", type=int, default=1, help="runs of a big row (1)")
    ap.add_argument("--scenarios", type=_csv(SCENARIOS), default=list(SCENARIOS))
    ap.add_argument("--fleet", type=int, default=None, help="images of the fleet (40)")
    ap.add_argument("--big-mb", type=int, default=None, help="the big image's MB (1000)")
    ap.add_argument("--cap-mbit", type=float, default=200.0, help="big: cap per connection")
    ap.add_argument("--floor-connections", type=int, default=16)
    ap.add_argument("--no-docker", action="store_true")
    ap.add_argument("--no-containerd", action="store_true")
    ap.add_argument("--work-dir", type=Path, default=Path("/dev/shm"))
    ap.add_argument("--quick", action="store_true", help="RTT 0,50; 1 run; 10 images; 80 MB")
    args = ap.parse_args()
    rtts = [
        float(r) / 1000
        for r in (args.rtts or (["0", "50"] if args.quick else ["0", "20", "50", "100"]))
    ]
    runs = args.runs or (1 if args.quick else 3)
    fleet = args.fleet or (10 if args.quick else 40)
    big_mb = args.big_mb or (80 if args.quick else 1000)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="imgpull-bench-wan-", dir=args.work_dir))
    notes: list[str] = [*_versions(), f"imgpull: {' '.join(IMGPULL)}"]
    results: list[Result] = []
    runner: Runner | None = None
    try:
        with (
            RegistryServer(workdir=work / "registry") as registry,
            WanRelay(registry.host) as relay,
        ):
            t0 = time.perf_counter()
            build = work / "build"
            scenarios: list[Scenario] = []
            for name in args.scenarios:
                if name == "small":
                    refs, rate, n = build_small(registry, build), 0.0, runs
                elif name == "fleet":
                    refs, rate, n = build_fleet(registry, build, fleet), 0.0, runs
                else:
                    rate = args.cap_mbit * 1e6 / 8
                    refs, n = build_big(registry, build, big_mb), args.big_runs
                shapes = tuple(shape_of(registry, r) for r in refs)
                scenarios.append(Scenario(name, tuple(refs), shapes, rate, n))
            shutil.rmtree(build)
            notes.append(f"images built and pushed in {time.perf_counter() - t0:.0f} s")

            runner = Runner(relay, work, args.quick)
            if not args.no_containerd:
                runner.containerd = Containerd(work / "containerd")
                try:
                    runner.containerd.start()
                    notes.append(runner.containerd.about)
                except ContainerdUnavailable as exc:
                    runner.containerd.stop()
                    runner.containerd = None
                    notes.append(f"ctr rows skipped: {exc}")
            if not args.no_docker:
                runner.docker = DockerDaemon(work / "docker", relay.host, 3)  # dockerd's default
                try:
                    runner.docker.start()
                    notes.append(runner.docker.about)
                except DockerUnavailable as exc:
                    runner.docker.stop()
                    runner.docker = None
                    notes.append(f"docker rows skipped: {exc}")

            order = [
                (rtt, s, tool)
                for rtt in rtts
                for s in scenarios
                for i in range(s.runs)
                for tool in rotate(runner.tools(s), i)
            ]
            for k, (rtt, s, tool) in enumerate(order, 1):
                relay.set_link(rtt=rtt, rate=s.rate)
                r = runner.run(rtt, s, tool)
                results.append(r)
                print(
                    f"[{k}/{len(order)}] RTT {rtt * 1000:.0f} ms, {s.name}, {tool}: "
                    f"{r.wall:.2f} s, {r.requests} requests, {r.connections} connections, "
                    f"relay CPU {r.relay_cpu:.2f} s",
                    file=sys.stderr,
                )
        load_after = os.getloadavg()
        report(results, scenarios, rtts, args, notes)
        print(
            f"\nload average (1, 5, 15 min): before {load_before[0]:.2f} {load_before[1]:.2f} "
            f"{load_before[2]:.2f}, after {load_after[0]:.2f} {load_after[1]:.2f} "
            f"{load_after[2]:.2f}; {os.cpu_count()} cores"
        )
    finally:
        if runner is not None:
            if runner.containerd is not None:
                runner.containerd.stop()
            if runner.docker is not None:
                runner.docker.stop()
        shutil.rmtree(work, ignore_errors=True)


def rotate(items: Sequence[str], i: int) -> list[str]:
    """Round i: each item goes first in turn."""
    k = i % len(items) if items else 0
    return [*items[k:], *items[:k]]


def report(
    results: Sequence[Result],
    scenarios: Sequence[Scenario],
    rtts: Sequence[float],
    args: argparse.Namespace,
    notes: Sequence[str],
) -> None:
    for line in notes:
        print(line)
    print()
    for s in scenarios:
        layers = max(len(shape.blobs) - 1 for shape in s.shapes)
        cap = f", cap {s.rate * 8 / 1e6:.0f} Mbit/s per connection" if s.rate else ""
        print(
            f"- {s.name}: {len(s.refs)} image(s), {layers} layer(s) each, "
            f"{s.distinct_bytes() / 1e6:.1f} MB distinct{cap}; {s.runs} run(s), medians"
        )
    header = [
        "scenario",
        "tool",
        "wall s",
        "vs imgpull pull",
        "vs imgpull --rootfs",
        "requests",
        "connections",
        "MB down",
        "floor s",
        "x floor",
    ]
    for rtt in rtts:
        rows: list[list[object]] = []
        for s in scenarios:
            these = [r for r in results if r.rtt == rtt and r.scenario == s.name]
            tools = list(dict.fromkeys(r.tool for r in these))
            wall = {t: statistics.median(r.wall for r in these if r.tool == t) for t in tools}
            floor = floor_seconds(s.shapes, rtt, s.rate, args.floor_connections)
            for t in tools:
                mine = [r for r in these if r.tool == t]

                def med(field: str, mine: list[Result] = mine) -> int:
                    return int(statistics.median_low(getattr(r, field) for r in mine))

                conns = f"{med('connections')}" + (
                    f" ({med('opaque')} not HTTP)" if med("opaque") else ""
                )
                rows.append(
                    [
                        s.name,
                        t,
                        f"{wall[t]:.2f}",
                        _ratio(wall[t], wall.get(PULL)),
                        _ratio(wall[t], wall.get(ROOTFS)),
                        med("requests"),
                        conns,
                        f"{med('down_bytes') / 1e6:.1f}",
                        f"{floor:.2f}" if floor else "-",
                        f"{wall[t] / floor:.1f}" if floor else "-",
                    ]
                )
        print(f"\nRTT {rtt * 1000:.0f} ms\n")
        print("\n".join(markdown_table(header, rows)))
    busiest = max(results, key=lambda r: r.relay_cpu / r.wall, default=None)
    if busiest is not None:
        print(
            f"\nthe relay's CPU during a run: at most {busiest.relay_cpu / busiest.wall:.0%} of "
            f"a core ({busiest.scenario}, {busiest.tool}, RTT {busiest.rtt * 1000:.0f} ms)"
        )


def _ratio(wall: float, base: float | None) -> str:
    return f"{wall / base:.2f}" if base else "-"


if __name__ == "__main__":
    main()
