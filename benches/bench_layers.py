#!/usr/bin/env python3
"""imgpull vs skopeo(+umoci) vs docker on compressible gzip layers, same run.

Starts Debian's docker-registry on loopback, builds an image of text-like
layers (many files of pseudo-random lines over a fixed vocabulary, gzip level
6, ~2.7x), pushes it with skopeo as Docker v2s2, then times, alternating the
tools (each goes first in turn) and with `os.sync()` before each run:

  registry -> rootfs, into RAM (a folder in a tmpfs, --ram-dir) and into a
  disk folder (--disk-dir): rows "<tool> [ram]" and "<tool> [disk]"
    - imgpull one-pass: `imgpull pull --rootfs DIR` (store and tree in one pass)
    - imgpull pull + imgpull export --format rootfs
    - skopeo copy docker://... oci:DIR:tag + umoci unpack --image DIR:tag BUNDLE
    - docker pull, through a dockerd of the bench's own per placement
      (overlay2, its data root there; started once, stopped at the end),
      `docker rmi` (untimed) after each pull; its CPU and peak RSS include
      dockerd's
  Every tree is checked (files and bytes; docker's: its layers' diff folders).
  imgpull runs use a fresh --root store each. A round runs the disk rows
  (docker last: its rmi frees many inodes, which slows ext4's next file
  creations for a minute), then the RAM rows, then the store rows; the bounds
  come after every round.

  registry -> store, no rootfs (into RAM by default, --store-placements)
    - imgpull fetch-only: `imgpull pull --fetch-only` (blob digests checked,
      no diffIDs)
    - imgpull pull   (checks each layer's digest and diffID while downloading)
    - skopeo copy docker://... oci:DIR:tag
    - bound of a fetch: per layer `curl | tee FILE | openssl sha256` (checked)
    - bound of a pull: per layer `curl | tee >(openssl sha256) | igzip -dc |
      openssl sha256` (both digests checked, no file)
    (bounds: as many layers at once as imgpull downloads, xargs -P)

MB/s is of compressed layer bytes. The report has a table per section, ratio
lines (one-pass vs each other rootfs tool per placement, fetch-only vs skopeo
copy, ...), and flags an imgpull row whose peak RSS is over 120 MB. Rows an
imgpull without --rootfs / --fetch-only cannot run are skipped (and said so),
so are the docker rows if dockerd cannot start (the reason is printed). Usage:

    python benches/bench_layers.py [--size-mb 300] [--layers 5] [--runs 3]
        [--sections rootfs,store] [--placements disk,ram] [--store-placements ram]
        [--no-docker] [--ram-dir /dev/shm] [--disk-dir /var/tmp] [--json]

Needs root (dockerd; umoci unpack keeps owners), skopeo, umoci, curl, openssl,
igzip (Debian isal; else gzip), docker.io. Disk space: on disk, the rootfs
trees are kept until the end (ext4, see EXT4_RECENT_S): runs x 3 trees of the
tar size; the RAM placement needs about 2x the tar size + the image at once.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import multiprocessing
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TypeVar

# _common puts tests/ on sys.path (for `support`), so it comes first.
from _common import (
    DockerDaemon,
    DockerUnavailable,
    Run,
    busy_cpu,
    medians,
    process_cpu,
    rss_floor,
    settle,
    skopeo_copy_cmd,
    table,
    timed,
    timed_steps,
)
from support.images import push
from support.registry import RegistryServer

REPO = "bench/text"
TAG = "latest"
LAYER_MEDIA = "application/vnd.oci.image.layer.v1.tar+gzip"
EPOCH = 1_700_000_000

# ---------------------------------------------------------------------------
# The image: text-like layers, written with tarfile + zlib in one pass
# ---------------------------------------------------------------------------

# Built once in the parent (seeded), shared with the layer workers by fork.
_BASE_TEXT = b""


def _base_text(size: int = 8_000_000, vocab: int = 2000, seed: int = 7) -> bytes:
    """Lines of words drawn from a fixed vocabulary: gzip -6 gets ~2.7x on it.

    Files are slices of this at random offsets: the text repeats only at
    distances far beyond deflate's 32 KiB window, so the ratio holds.
    """
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(vocab)]
    lines, n = [], 0
    while n < size:
        line = " ".join(rng.choices(words, k=rng.randint(3, 14)))
        lines.append(line)
        n += len(line) + 1
    return "\n".join(lines).encode()


class _GzipSink:
    """tarfile's output: hashes the tar (diffID), gzips it (level 6), hashes and writes that."""

    def __init__(self, out: Any, level: int) -> None:
        self.out = out
        self.tar_sha = hashlib.sha256()
        self.gz_sha = hashlib.sha256()
        self.zip = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: gzip wrapper
        self.tar_bytes = 0
        self.gz_bytes = 0

    def write(self, data: bytes) -> int:
        self.tar_sha.update(data)
        self.tar_bytes += len(data)
        self._emit(self.zip.compress(data))
        return len(data)

    def tell(self) -> int:
        return self.tar_bytes

    def _emit(self, chunk: bytes) -> None:
        if chunk:
            self.gz_sha.update(chunk)
            self.gz_bytes += len(chunk)
            self.out.write(chunk)

    def finish(self) -> None:
        self._emit(self.zip.flush())


def _build_layer(job: tuple[Path, int, int, int]) -> dict[str, Any]:
    blobs, index, target_gz, level = job
    rng = random.Random(1000 + index)
    base = _BASE_TEXT
    tmp = blobs / f".layer-{index}.tmp"
    files = payload = 0
    with tmp.open("wb") as out:
        sink = _GzipSink(out, level)
        with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]

            def add(name: str, kind: bytes, size: int = 0, data: bytes = b"") -> None:
                ti = tarfile.TarInfo(name)
                ti.type, ti.size, ti.mtime = kind, size, EPOCH
                ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
                ti.uname = ti.gname = "root"
                tar.addfile(ti, io.BytesIO(data) if data else None)

            top = f"layer{index}"
            add(top, tarfile.DIRTYPE)
            d = -1
            while sink.gz_bytes < target_gz:
                if files % 200 == 0:
                    d += 1
                    add(f"{top}/d{d:03d}", tarfile.DIRTYPE)
                # Log-uniform sizes, 1 KiB .. 512 KiB (mean ~80 KiB).
                size = int(math.exp(rng.uniform(math.log(1024), math.log(512 * 1024))))
                off = rng.randrange(0, len(base) - size)
                add(
                    f"{top}/d{d:03d}/f{files:05d}.txt",
                    tarfile.REGTYPE,
                    size,
                    base[off : off + size],
                )
                files += 1
                payload += size
        sink.finish()
    digest = "sha256:" + sink.gz_sha.hexdigest()
    tmp.rename(blobs / digest.removeprefix("sha256:"))
    return {
        "digest": digest,
        "diff_id": "sha256:" + sink.tar_sha.hexdigest(),
        "size": sink.gz_bytes,
        "tar_size": sink.tar_bytes,
        "files": files,
        "payload": payload,
    }


def _put_json(blobs: Path, obj: Any) -> tuple[str, int]:
    data = json.dumps(obj, separators=(",", ":")).encode()
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return "sha256:" + digest, len(data)


def build_text_image(layout: Path, size_mb: int, nlayers: int, level: int) -> list[dict[str, Any]]:
    """An OCI layout (ref name "bench") of `nlayers` text layers, ~size_mb MB compressed.

    Built in a child process: the text and the pool would raise this process's
    peak RSS, which every timed child then inherits as its ru_maxrss floor.
    """
    ctx = multiprocessing.get_context("fork")
    result: Any = ctx.Queue()
    proc = ctx.Process(target=_build_in_child, args=(result, layout, size_mb, nlayers, level))
    proc.start()
    layers = result.get()
    proc.join()
    if proc.exitcode != 0 or layers is None:
        raise SystemExit("building the image failed")
    return layers  # type: ignore[no-any-return]


def _build_in_child(result: Any, layout: Path, size_mb: int, nlayers: int, level: int) -> None:
    try:
        result.put(_build(layout, size_mb, nlayers, level))
    except BaseException:
        result.put(None)
        raise


def _build(layout: Path, size_mb: int, nlayers: int, level: int) -> list[dict[str, Any]]:
    global _BASE_TEXT
    _BASE_TEXT = _base_text()
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    target = size_mb * 1_000_000 // nlayers
    jobs = [(blobs, i, target, level) for i in range(nlayers)]
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        layers = pool.map(_build_layer, jobs)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [la["diff_id"] for la in layers]},
    }
    cdigest, csize = _put_json(blobs, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": cdigest,
            "size": csize,
        },
        "layers": [
            {"mediaType": LAYER_MEDIA, "digest": la["digest"], "size": la["size"]} for la in layers
        ],
    }
    mdigest, msize = _put_json(blobs, manifest)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": mdigest,
                "size": msize,
                "annotations": {"org.opencontainers.image.ref.name": "bench"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return layers


# ---------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------

PY = [sys.executable, "-m", "imgpull"]
PLACEMENTS = ("disk", "ram")  # the order of each round: see Runner.wait_for_disk
# ext4 (without a journal, as here) skips inodes freed less than 60 s ago
# (recently_deleted()); creating files right after an rm -rf of many is
# several times slower. Disk runs wait this long after a big deletion.
EXT4_RECENT_S = 62.0

# Row names, "<tool> [<placement>]", in table order.
ONE_PASS = "imgpull one-pass"
PULL_EXPORT = "imgpull pull+export"
SKOPEO_UMOCI = "skopeo+umoci"
DOCKER = "docker pull"
FETCH_ONLY = "imgpull fetch-only"
PULL = "imgpull pull"
SKOPEO = "skopeo copy"
FETCH_BOUND = "curl|tee|sha256"
ROOTFS_TOOLS = (ONE_PASS, PULL_EXPORT, SKOPEO_UMOCI, DOCKER)


def row(tool: str, where: str) -> str:
    return f"{tool} [{where}]"


def _tree_stats(root: Path) -> tuple[int, int]:
    """(regular files, their bytes) under root."""
    n = total = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.islink(os.path.join(dirpath, name)):
                n += 1
                total += st.st_size
    return n, total


def _store_bytes(store: Path) -> int:
    blobs = store / "blobs" / "sha256"
    return sum(p.stat().st_size for p in blobs.iterdir()) if blobs.is_dir() else 0


def imgpull_pull_flags() -> set[str]:
    """Which of the newer `imgpull pull` flags this imgpull has."""
    done = subprocess.run([*PY, "pull", "--help"], capture_output=True, text=True)
    return {f for f in ("--rootfs", "--fetch-only") if f in done.stdout}


class Runner:
    """The timed runs; each takes its placement: "ram" or "disk" (a folder in `roots`)."""

    def __init__(
        self,
        ref: str,
        parallel: int,
        expect: tuple[int, int],
        layers: Sequence[dict[str, Any]],
        roots: dict[str, Path],
    ) -> None:
        self.ref = ref
        self.parallel = parallel
        self.expect = expect  # (files, bytes) every rootfs must hold
        self.layers = layers
        self.gz = sum(la["size"] for la in layers)
        # On disk, rootfs trees are kept until every run is done (all under
        # the placement's root): see EXT4_RECENT_S. In RAM (tmpfs) they go
        # at once, or 3 tools x runs x the tar size would fill it.
        self.roots = roots
        self.pull_args = ["--plain-http", "--max-concurrent-downloads", str(parallel)]
        self.dockers: dict[str, DockerDaemon] = {}
        self._disk_quiet_at = 0.0
        self.ext4_waited = 0.0

    def wait_for_disk(self, where: str) -> None:
        """Before a run on disk: no inodes freed less than EXT4_RECENT_S ago.

        Only `docker rmi` frees many during the runs; a round runs the disk
        placement first, docker last, then RAM, so that this seldom waits.
        """
        if where != "disk":
            return
        wait = self._disk_quiet_at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
            self.ext4_waited += wait

    def _work(self, where: str, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.roots[where]))

    def _logs(self, where: str, name: str) -> Path:
        """A folder for a tool's stderr files (overwritten by its next run)."""
        logs = self.roots[where] / "logs" / name
        logs.mkdir(parents=True, exist_ok=True)
        return logs

    def _drop(self, where: str, work: Path, keep: Path | None = None) -> None:
        """A run's files go, but for the rootfs tree `keep` on disk (see __init__)."""
        if where == "ram" or keep is None:
            shutil.rmtree(work, ignore_errors=True)
            return
        for p in work.iterdir():
            if p != keep:
                shutil.rmtree(p, ignore_errors=True)

    def _check_tree(self, tool: str, *roots: Path) -> None:
        stats = [_tree_stats(root) for root in roots]
        got = (sum(s[0] for s in stats), sum(s[1] for s in stats))
        if got != self.expect:
            raise SystemExit(f"{tool}: rootfs holds {got} (files, bytes), want {self.expect}")

    def _check_store(self, tool: str, store: Path) -> None:
        got = _store_bytes(store)
        if got < self.gz:
            raise SystemExit(f"{tool}: the store holds {got} bytes of blobs, want >= {self.gz}")

    # -- registry -> rootfs -------------------------------------------------

    def one_pass(self, where: str) -> Run:
        tool = row(ONE_PASS, where)
        work = self._work(where, "bench-onepass-")
        store, dest = work / "store", work / "rootfs"
        try:
            cmd = [*PY, "pull", self.ref, "--root", str(store), "--rootfs", str(dest)]
            cmd += ["--quiet", *self.pull_args]
            err = self._logs(where, "one-pass") / "pull.err"
            run = Run(tool, *timed(cmd, stderr=err, exact_rss=True))
            self._check_tree(tool, dest)
            return run
        finally:
            self._drop(where, work, keep=dest)

    def pull_export(self, where: str) -> Run:
        tool = row(PULL_EXPORT, where)
        work = self._work(where, "bench-imgpull-")
        store, dest = work / "store", work / "rootfs"
        try:
            pull = [*PY, "pull", self.ref, "--root", str(store), "--quiet", *self.pull_args]
            export = [*PY, "export", self.ref, str(dest), "--format", "rootfs"]
            export += ["--root", str(store)]
            logs = self._logs(where, "pull+export")
            run = timed_steps(tool, [("pull", pull), ("export", export)], logs)
            self._check_tree(tool, dest)
            return run
        finally:
            self._drop(where, work, keep=dest)

    def skopeo_umoci(self, where: str) -> Run:
        tool = row(SKOPEO_UMOCI, where)
        work = self._work(where, "bench-umoci-")
        layout, bundle = work / "layout", work / "bundle"
        try:
            copy = skopeo_copy_cmd(self.ref, layout, TAG)
            # As root, plain `umoci unpack` (no --rootless): owners and modes kept.
            unpack = ["umoci", "unpack", "--image", f"{layout}:{TAG}", str(bundle)]
            logs = self._logs(where, "skopeo+umoci")
            run = timed_steps(tool, [("skopeo copy", copy), ("umoci unpack", unpack)], logs)
            self._check_tree(tool, bundle / "rootfs")
            return run
        finally:
            self._drop(where, work, keep=bundle)

    def docker_pull(self, where: str) -> Run:
        """`docker pull` into the placement's dockerd; then, untimed, `docker rmi`."""
        tool = row(DOCKER, where)
        d = self.dockers[where]
        logs = self._logs(where, "docker")
        out = logs / "pull.out"
        d.reset_peak_rss()
        before = d.cpu()
        try:
            cmd = ["env", f"DOCKER_HOST={d.host}", "docker", "pull", self.ref]
            wall, cpu, rss = timed(cmd, stderr=logs / "pull.err", exact_rss=True, stdout=out)
            daemon_cpu, daemon_rss = d.cpu() - before, d.peak_rss()
            said = out.read_text(errors="replace")
            complete, exists = said.count("Pull complete"), said.count("Already exists")
            if exists or complete != len(self.layers):
                raise SystemExit(
                    f"{tool}: {complete} 'Pull complete', {exists} 'Already exists' for "
                    f"{len(self.layers)} layers: not a full download\n{said[-2000:]}"
                )
            # The layers' trees do not overlap: their union is their sum.
            self._check_tree(tool, *d.layer_dirs())
        finally:
            d.forget(self.ref)
            if where == "disk":
                self._disk_quiet_at = time.monotonic() + EXT4_RECENT_S
        steps = (("docker CLI", wall, cpu, rss), ("dockerd", wall, daemon_cpu, daemon_rss))
        return Run(tool, wall, cpu + daemon_cpu, max(rss, daemon_rss), steps)

    # -- registry -> store ----------------------------------------------------

    def _pull_store(self, where: str, tool: str, extra: Sequence[str]) -> Run:
        work = self._work(where, "bench-store-")
        try:
            cmd = [*PY, "pull", self.ref, "--root", str(work / "store"), *extra]
            cmd += ["--quiet", *self.pull_args]
            err = self._logs(where, tool.replace(" ", "-")) / "pull.err"
            run = Run(row(tool, where), *timed(cmd, stderr=err, exact_rss=True))
            self._check_store(run.tool, work / "store")
            return run
        finally:
            self._drop(where, work)

    def fetch_only(self, where: str) -> Run:
        return self._pull_store(where, FETCH_ONLY, ["--fetch-only"])

    def pull(self, where: str) -> Run:
        return self._pull_store(where, PULL, [])

    def skopeo_copy(self, where: str) -> Run:
        work = self._work(where, "bench-skopeo-")
        try:
            err = self._logs(where, "skopeo-copy") / "copy.err"
            cmd = skopeo_copy_cmd(self.ref, work / "layout", TAG)
            return Run(row(SKOPEO, where), *timed(cmd, stderr=err, exact_rss=True))
        finally:
            self._drop(where, work)


def fetch_bound_run(
    url: str, layers: Sequence[dict[str, Any]], parallel: int, where: str, dest: Path
) -> Run:
    """Per layer, `parallel` at once: download, write (in `dest`), sha256 of the gzip, checked."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-fetch-bound-", dir=dest))
    try:
        per_layer = (
            "set -o pipefail; "
            f'd=$(curl -sf {url}/"$1" | tee {tmp}/"$1" | openssl sha256 -r | cut -c1-64) '
            '|| exit 255; test "sha256:$d" = "$1" || exit 255'
        )
        digests = " ".join(la["digest"] for la in layers)
        script = f"printf '%s\\n' {digests} | xargs -P {parallel} -L 1 bash -c '{per_layer}' _"
        err = tmp / "bound.err"
        return Run(
            row(FETCH_BOUND, where), *timed(["bash", "-c", script], stderr=err, exact_rss=True)
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bound_run(
    url: str,
    layers: Sequence[dict[str, Any]],
    parallel: int,
    gunzip: str,
    name: str,
    where: str,
    dest: Path,
) -> Run:
    """Per layer: download, sha256 of the gzip and of the tar; both checked."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-bound-", dir=dest))
    try:
        # $1 digest, $2 diffID. `wait $!` waits for the >(…) compressed-digest hasher.
        per_layer = (
            "set -o pipefail; "
            f'u=$(curl -sf {url}/"$1" | tee >(openssl sha256 -r | cut -c1-64 > {tmp}/"$1") '
            f"| {gunzip} -dc | openssl sha256 -r | cut -c1-64; wait $!) || exit 255; "
            f'test "sha256:$u" = "$2" && test "sha256:$(cat {tmp}/"$1")" = "$1" || exit 255'
        )
        pairs = " ".join(f"{la['digest']} {la['diff_id']}" for la in layers)
        script = f"printf '%s %s\\n' {pairs} | xargs -P {parallel} -L 1 bash -c '{per_layer}' _"
        err = tmp / "bound.err"
        return Run(row(name, where), *timed(["bash", "-c", script], stderr=err, exact_rss=True))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------
# The bench
# ---------------------------------------------------------------------------

RSS_LIMIT_MB = 120.0
# A run whose wall others used more than this share of all cores for is flagged.
SHARED_FRACTION = 0.15
_T = TypeVar("_T")


def rotate(items: Sequence[_T], i: int) -> list[_T]:
    """Round i: each item goes first in turn."""
    k = i % len(items) if items else 0
    return [*items[k:], *items[:k]]


def _csv(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items or any(t not in choices for t in items):
            raise argparse.ArgumentTypeError(f"a comma-separated list of {', '.join(choices)}")
        return items

    return parse


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    # As for ^C: the `finally`s stop the dockerds and remove the work folders.
    raise SystemExit(128 + signum)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=300, help="compressed MB (default 300)")
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--parallel", type=int, default=3, help="downloads at once (imgpull, dockerd, bounds)"
    )
    ap.add_argument("--level", type=int, default=6, help="gzip level of the layers")
    ap.add_argument(
        "--sections",
        type=_csv(("rootfs", "store")),
        default=["rootfs", "store"],
        help="registry -> rootfs, registry -> store (default: both)",
    )
    ap.add_argument(
        "--placements",
        type=_csv(PLACEMENTS),
        default=list(PLACEMENTS),
        help="where the rootfs section writes: ram (--ram-dir), disk (--disk-dir); default both",
    )
    ap.add_argument(
        "--store-placements",
        type=_csv(PLACEMENTS),
        default=["ram"],
        help="where the store section writes (default ram)",
    )
    ap.add_argument("--no-docker", action="store_true", help="no `docker pull` rows")
    ap.add_argument("--ram-dir", type=Path, default=Path("/dev/shm"), help="a tmpfs folder")
    ap.add_argument(
        "--disk-dir",
        type=Path,
        default=Path("/var/tmp"),
        help="a disk folder (also holds the registry; default /var/tmp)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    gunzip = "igzip" if shutil.which("igzip") else "gzip"
    bound_name = f"curl|{gunzip}|sha256 x2"
    rootfs_where = [p for p in PLACEMENTS if p in args.placements and "rootfs" in args.sections]
    store_where = [p for p in PLACEMENTS if p in args.store_placements and "store" in args.sections]
    flags = imgpull_pull_flags()
    notes: dict[str, Any] = {"skipped": [], "docker": {}}
    if rootfs_where and "--rootfs" not in flags:
        notes["skipped"].append(f"{ONE_PASS}: this imgpull's `pull` has no --rootfs")
    if store_where and "--fetch-only" not in flags:
        notes["skipped"].append(f"{FETCH_ONLY}: this imgpull's `pull` has no --fetch-only")
    roots: dict[str, Path] = {}
    daemons: list[DockerDaemon] = []
    try:
        # The image's build, the registry and the disk runs; the RAM runs in a tmpfs.
        roots["disk"] = Path(tempfile.mkdtemp(prefix="imgpull-bench-layers-", dir=args.disk_dir))
        if "ram" in rootfs_where + store_where:
            roots["ram"] = Path(tempfile.mkdtemp(prefix="imgpull-bench-layers-", dir=args.ram_dir))
        work = roots["disk"]
        t0 = time.perf_counter()
        layers = build_text_image(work / "layout", args.size_mb, args.layers, args.level)
        built = time.perf_counter() - t0
        gz = sum(la["size"] for la in layers)
        tar = sum(la["tar_size"] for la in layers)
        files = sum(la["files"] for la in layers)
        with RegistryServer(workdir=work / "registry") as registry:
            push(work / "layout", registry, f"{REPO}:{TAG}", "v2s2", ref="bench")
            shutil.rmtree(work / "layout")
            ref = registry.ref(f"{REPO}:{TAG}")
            # The file contents' bytes every rootfs must hold (dirs aside).
            expect = (files, sum(la["payload"] for la in layers))
            r = Runner(ref, args.parallel, expect, layers, roots)
            for where in rootfs_where if not args.no_docker else []:
                home = Path(tempfile.mkdtemp(prefix="dockerd-", dir=roots[where]))
                d = DockerDaemon(home, registry.host, args.parallel)
                daemons.append(d)
                try:
                    d.start()
                except DockerUnavailable as exc:
                    d.stop()
                    notes["docker"][where] = f"skipped: {exc}"
                    print(f"{row(DOCKER, where)}: skipped: {exc}", file=sys.stderr)
                else:
                    r.dockers[where] = d
                    notes["docker"][where] = d.about
            available = {PULL_EXPORT, SKOPEO_UMOCI, PULL, SKOPEO}
            available |= {ONE_PASS} if "--rootfs" in flags else set()
            available |= {FETCH_ONLY} if "--fetch-only" in flags else set()
            rootfs_tools = [
                fn
                for name, fn in (
                    (ONE_PASS, r.one_pass),
                    (PULL_EXPORT, r.pull_export),
                    (SKOPEO_UMOCI, r.skopeo_umoci),
                )
                if name in available
            ]
            store_tools = [
                fn
                for name, fn in (
                    (FETCH_ONLY, r.fetch_only),
                    (PULL, r.pull),
                    (SKOPEO, r.skopeo_copy),
                )
                if name in available
            ]
            order: list[tuple[str, Callable[[str], Run]]] = []
            for i in range(args.runs):
                # Disk first, docker last (see Runner.wait_for_disk), then RAM.
                for where in rootfs_where:
                    docker = [r.docker_pull] if where in r.dockers else []
                    order += [(where, fn) for fn in rotate(rootfs_tools, i) + docker]
                for where in store_where:
                    order += [(where, fn) for fn in rotate(store_tools, i)]
            # The bounds last: they keep every core busy, and a run right after is slower.
            url = f"{registry.url}/v2/{REPO}/blobs"

            def fetch_bound(where: str) -> Run:
                return fetch_bound_run(url, layers, args.parallel, where, roots[where])

            def bound(where: str) -> Run:
                return bound_run(
                    url, layers, args.parallel, gunzip, bound_name, where, roots[where]
                )

            for where in store_where:
                order += [(where, fetch_bound)] * args.runs + [(where, bound)] * args.runs
            runs: list[Run] = []
            floor = rss_floor()
            for n, (where, run) in enumerate(order, 1):
                r.wait_for_disk(where)
                settle()
                before, busy = process_cpu(registry.pid), busy_cpu()
                done = run(where)
                server = process_cpu(registry.pid) - before
                other = busy_cpu() - busy - done.cpu - server
                runs.append(replace(done, server_cpu=server, other_cpu=other))
                print(f"[{n}/{len(order)}] {done.tool}: {done.wall:.2f} s", file=sys.stderr)
            notes["ext4_wait_s"] = r.ext4_waited
        sections: dict[str, tuple[list[str], Sequence[str], Sequence[str]]] = {
            "rootfs": (rootfs_where, ROOTFS_TOOLS, (ONE_PASS, PULL_EXPORT)),
            "store": (
                store_where,
                (FETCH_ONLY, PULL, SKOPEO, FETCH_BOUND, bound_name),
                (FETCH_ONLY, PULL),
            ),
        }
        report(runs, args, built, gz, tar, files, gunzip, bound_name, floor, sections, notes)
    finally:
        for d in daemons:
            d.stop()
        for root in roots.values():
            shutil.rmtree(root, ignore_errors=True)


def section_medians(
    runs: Sequence[Run],
    places: Sequence[str],
    tools: Sequence[str],
    bases: Sequence[str],
    gz: int,
) -> dict[str, dict[str, float]]:
    """Medians of a section's rows, in `tools` order; "x imgpull" is against the
    first of `bases` that ran in the same placement."""
    med: dict[str, dict[str, float]] = {}
    for where in places:
        names = [row(t, where) for t in tools]
        these = [r for r in runs if r.tool in names]
        ran = {r.tool for r in these}
        base = next((row(b, where) for b in bases if row(b, where) in ran), None)
        if base is None:
            continue
        m = medians(these, gz, base)
        med.update({n: m[n] for n in names if n in m})
    return med


def faster(med: dict[str, dict[str, float]], a: str, b: str) -> str | None:
    """'A is 2.5x faster than B' (median walls), or None if either did not run."""
    if a not in med or b not in med:
        return None
    wa, wb = med[a]["wall_s"], med[b]["wall_s"]
    word = "faster" if wb >= wa else "slower"
    return f"{a} is {max(wb / wa, wa / wb):.1f}\u00d7 {word} than {b} ({wa:.2f} s vs {wb:.2f} s)"


def report(
    runs: Sequence[Run],
    args: argparse.Namespace,
    built: float,
    gz: int,
    tar: int,
    files: int,
    gunzip: str,
    bound_name: str,
    floor: int,
    sections: dict[str, tuple[list[str], Sequence[str], Sequence[str]]],
    notes: dict[str, Any],
) -> None:
    cores = os.cpu_count() or 1
    med = {
        name: section_medians(runs, places, tools, bases, gz)
        for name, (places, tools, bases) in sections.items()
    }
    ratios: dict[str, list[str]] = {"rootfs": [], "store": []}
    for where in sections["rootfs"][0]:
        m = med["rootfs"]
        base = next((row(t, where) for t in (ONE_PASS, PULL_EXPORT) if row(t, where) in m), "")
        for other in (SKOPEO_UMOCI, PULL_EXPORT, DOCKER):
            if row(other, where) != base:
                ratios["rootfs"].append(faster(m, base, row(other, where)) or "")
    for where in sections["store"][0]:
        m = med["store"]
        for a, b in (
            (FETCH_ONLY, SKOPEO),
            (FETCH_ONLY, FETCH_BOUND),
            (FETCH_ONLY, PULL),
            (PULL, SKOPEO),
            (PULL, bound_name),
        ):
            ratios["store"].append(faster(m, row(a, where), row(b, where)) or "")
    ratios = {k: [line for line in v if line] for k, v in ratios.items()}
    # A pull cannot end before the CPU time it and the registry (on the same
    # cores) need, spread over all cores.
    cpu_floors: dict[str, dict[str, float]] = {}
    for where in sections["store"][0]:
        skopeo = med["store"].get(row(SKOPEO, where), {}).get("wall_s", math.nan)
        for tool in (FETCH_ONLY, PULL):
            these = [r for r in runs if r.tool == row(tool, where)]
            if these:
                floor_s = statistics.median((r.cpu + r.server_cpu) / cores for r in these)
                cpu_floors[row(tool, where)] = {
                    "floor_s": floor_s,
                    "registry_cpu_s": statistics.median(r.server_cpu for r in these),
                    "vs_skopeo_wall": floor_s / skopeo,
                }
    over = {
        t: m["peak_rss_mb"]
        for section in med.values()
        for t, m in section.items()
        if t.startswith("imgpull") and m["peak_rss_mb"] > RSS_LIMIT_MB
    }
    if args.json:
        out = {
            "compressed_bytes": gz,
            "uncompressed_bytes": tar,
            "files": files,
            "build_s": round(built, 2),
            "decompressor": gunzip,
            "rss_floor_bytes": floor,
            "median": med,
            "ratios": ratios,
            "cpu_floor_s": cpu_floors,
            "imgpull_rss_over_limit_mb": over,
            "notes": notes,
            "runs": [asdict(r) for r in runs],
        }
        print(json.dumps(out, indent=2))
        return
    print(
        f"image: {args.layers} layers, {files} files, {gz / 1e6:.0f} MB gzip -{args.level} "
        f"/ {tar / 1e6:.0f} MB tar ({tar / gz:.2f}x; built in {built:.1f} s); "
        f"{args.runs} runs each, medians; {cores} cores; MB/s of compressed bytes"
    )
    print(
        "placements: [ram] a tmpfs folder (--ram-dir), [disk] a disk folder (--disk-dir); "
        "the registry serves from disk (page-cached)"
    )
    print("RSS: peak of a run's processes (GNU time's; the max over its steps)")
    print(
        "docker pull: CPU = the docker CLI's + dockerd's (and its reaped children's: the "
        "layer re-exec), from /proc; RSS = dockerd's peak (VmHWM, reset before each pull)"
    )
    for where, about in notes["docker"].items():
        print(f"{row(DOCKER, where)}: {about}")
    if sections["rootfs"][0] and args.no_docker:
        print(f"{DOCKER}: not run (--no-docker)")
    for line in notes["skipped"]:
        print(f"skipped: {line}")
    if gunzip != "igzip":
        print("note: igzip (Debian `isal`) not installed; the bound uses gzip -dc")
    if sections["rootfs"][0]:
        print(
            f"\nregistry -> rootfs ({files} files, {tar / 1e6:.0f} MB of tar; each tree "
            f"checked; x imgpull: vs the placement's {ONE_PASS} or else {PULL_EXPORT})"
        )
        print("\n".join(table(med["rootfs"], 28)))
        print("\n".join(ratios["rootfs"]))
        for tool in med["rootfs"]:
            steps = [r.steps for r in runs if r.tool == tool and r.steps]
            if steps:
                parts = ", ".join(
                    f"{name} {statistics.median(s[i][1] for s in steps):.2f} s"
                    f" / cpu {statistics.median(s[i][2] for s in steps):.2f} s"
                    for i, (name, *_) in enumerate(steps[0])
                )
                print(f"{tool}: {parts} (median wall / CPU per step)")
    if sections["store"][0]:
        print(
            "\nregistry -> store, no rootfs (fetch-only: digests; pull: digests + diffIDs; "
            f"{FETCH_BOUND}: per layer curl | tee FILE | openssl sha256; {bound_name}: "
            "both digests, no file)"
        )
        print("\n".join(table(med["store"], 28)))
        print("\n".join(ratios["store"]))
        for tool, f in cpu_floors.items():
            print(
                f"{tool}'s floor on {cores} cores: (its CPU + the registry's "
                f"{f['registry_cpu_s']:.2f} s) / {cores} = {f['floor_s']:.2f} s "
                f"= {f['vs_skopeo_wall']:.2f}x skopeo copy's wall"
            )
    print()
    if over:
        for tool, mb in over.items():
            print(f"! {tool}: peak RSS {mb:.0f} MB, over {RSS_LIMIT_MB:.0f} MB")
    else:
        imgpull = [
            (m["peak_rss_mb"], t) for s in med.values() for t, m in s.items() if "imgpull" in t
        ]
        if imgpull:
            mb, tool = max(imgpull)
            print(f"imgpull peak RSS: every row <= {RSS_LIMIT_MB:.0f} MB (max {mb:.0f} MB: {tool})")
    # Others' CPU: kernel threads (writeback, freeing pages) and, if any, other jobs.
    shared = [r for r in runs if r.other_cpu > SHARED_FRACTION * r.wall * cores]
    others = [r.other_cpu for r in runs]
    print(
        f"other processes' CPU during a run: median {statistics.median(others):.2f} s, "
        f"max {max(others):.2f} s (kernel threads included)"
    )
    if shared:
        print(
            f"! {len(shared)} of {len(runs)} runs shared the machine (others' CPU over "
            f"{SHARED_FRACTION:.0%} of the cores for the run's wall): "
            + ", ".join(f"{r.tool} {r.other_cpu:.1f} s / {r.wall:.1f} s" for r in shared[:8])
            + (" ..." if len(shared) > 8 else "")
        )
    if notes.get("ext4_wait_s"):
        print(
            f"disk runs waited {notes['ext4_wait_s']:.0f} s in all for ext4 to stop skipping "
            "the inodes `docker rmi` freed (see EXT4_RECENT_S)"
        )


if __name__ == "__main__":
    main()
