#!/usr/bin/env python3
"""imgpull vs skopeo(+umoci) on compressible gzip layers, same run.

Starts Debian's docker-registry on loopback, builds an image of text-like
layers (many files of pseudo-random lines over a fixed vocabulary, gzip level
6, ~2.7x), pushes it with skopeo as Docker v2s2, then times, alternating the
tools and with `os.sync()` before each run:

  registry -> rootfs
    - imgpull pull + imgpull export --format rootfs   (fresh --root store)
    - skopeo copy docker://... oci:DIR:tag + umoci unpack --image DIR:tag BUNDLE
  registry -> verified store
    - imgpull pull   (checks each layer's digest and diffID while downloading)
    - skopeo copy docker://... oci:DIR:tag
    - bound: per layer `curl | tee >(openssl sha256) | igzip -dc | openssl sha256`
      (both digests checked, as many layers at once as imgpull downloads)

MB/s is of compressed layer bytes. Usage:

    python benches/bench_layers.py [--size-mb 300] [--layers 5] [--runs 3] [--json]
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
import statistics
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

# _common puts tests/ on sys.path (for `support`), so it comes first.
from _common import (
    Run,
    medians,
    process_cpu,
    rss_floor,
    settle,
    skopeo_copy_cmd,
    skopeo_run,
    table,
    timed,
    timed_steps,
)
from support.images import push
from support.registry import RegistryServer

from imgpull.bench import run_once

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


class Runner:
    def __init__(self, ref: str, parallel: int, expect: tuple[int, int], scratch: Path) -> None:
        self.ref = ref
        # Rootfs trees are kept until every run is done (all under `scratch`):
        # ext4 scans past inodes freed in the last minute when it allocates
        # new ones (recently_deleted(), ~40% of an export's time right after
        # an rm -rf of 10k files), which would tax whichever tool runs next.
        self.scratch = scratch
        self.parallel = parallel
        self.expect = expect  # (files, bytes) every rootfs must hold
        self.pull_args = ["--plain-http", "--max-concurrent-downloads", str(parallel)]

    def _check_tree(self, tool: str, root: Path) -> None:
        got = _tree_stats(root)
        if got != self.expect:
            raise SystemExit(f"{tool}: rootfs holds {got} (files, bytes), want {self.expect}")

    def imgpull_rootfs(self) -> Run:
        work = Path(tempfile.mkdtemp(prefix="bench-imgpull-", dir=self.scratch))
        store, dest = work / "store", work / "rootfs"
        py = [sys.executable, "-m", "imgpull"]
        try:
            pull = [*py, "pull", self.ref, "--root", str(store), "--quiet", *self.pull_args]
            export = [
                *py,
                "export",
                self.ref,
                str(dest),
                "--format",
                "rootfs",
                "--root",
                str(store),
            ]
            run = timed_steps("imgpull pull+export", [("pull", pull), ("export", export)])
            self._check_tree(run.tool, dest)
            return run
        finally:
            shutil.rmtree(store, ignore_errors=True)

    def skopeo_umoci(self) -> Run:
        work = Path(tempfile.mkdtemp(prefix="bench-umoci-", dir=self.scratch))
        layout, bundle = work / "layout", work / "bundle"
        try:
            copy = skopeo_copy_cmd(self.ref, layout, TAG)
            # As root, plain `umoci unpack` (no --rootless): owners and modes kept.
            unpack = ["umoci", "unpack", "--image", f"{layout}:{TAG}", str(bundle)]
            run = timed_steps("skopeo+umoci unpack", [("skopeo copy", copy), ("umoci", unpack)])
            self._check_tree(run.tool, bundle / "rootfs")
            return run
        finally:
            shutil.rmtree(layout, ignore_errors=True)

    def imgpull_pull(self) -> Run:
        r = run_once(self.ref, self.pull_args)
        return Run("imgpull pull", r.wall_seconds, r.cpu_seconds, r.peak_rss_bytes)

    def skopeo_copy(self) -> Run:
        return skopeo_run(self.ref)


def bound_run(
    url: str, layers: Sequence[dict[str, Any]], parallel: int, gunzip: str, name: str
) -> Run:
    """Per layer: download, sha256 of the gzip and of the tar; both checked."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-bound-"))
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
        return Run(name, *timed([script], shell=True))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=300, help="compressed MB (default 300)")
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=3, help="downloads at once (imgpull, bound)")
    ap.add_argument("--level", type=int, default=6, help="gzip level of the layers")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    gunzip = "igzip" if shutil.which("igzip") else "gzip"
    bound_name = f"curl|{gunzip}|sha256 x2"
    work = Path(tempfile.mkdtemp(prefix="imgpull-bench-layers-"))
    try:
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
            r = Runner(ref, args.parallel, expect, work)
            pairs: list[list[Callable[[], Run]]] = [
                [r.imgpull_rootfs, r.skopeo_umoci],
                [r.imgpull_pull, r.skopeo_copy],
            ]
            order: list[Callable[[], Run]] = []
            for i in range(args.runs):
                for pair in pairs:  # each tool goes first in turn
                    order += pair if i % 2 == 0 else pair[::-1]
            # The bound last: it keeps every core busy, and a run right after is slower.
            blob_url = f"{registry.url}/v2/{REPO}/blobs"
            bound = lambda: bound_run(blob_url, layers, args.parallel, gunzip, bound_name)  # noqa: E731
            order += [bound] * args.runs
            runs: list[Run] = []
            floor = rss_floor()
            for run in order:
                settle()
                before = process_cpu(registry.pid)
                done = run()
                runs.append(replace(done, server_cpu=process_cpu(registry.pid) - before))
        report(runs, args, built, gz, tar, files, gunzip, floor)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(
    runs: Sequence[Run],
    args: argparse.Namespace,
    built: float,
    gz: int,
    tar: int,
    files: int,
    gunzip: str,
    floor: int,
) -> None:
    rootfs = [r for r in runs if r.tool in ("imgpull pull+export", "skopeo+umoci unpack")]
    pull = [r for r in runs if r not in rootfs]
    med_rootfs = medians(rootfs, gz, "imgpull pull+export")
    med_pull = medians(pull, gz, "imgpull pull")
    # With every core busy, a pull cannot end before the CPU time it and the
    # registry (on the same cores) need, spread over all cores.
    cores = os.cpu_count() or 1
    pulls = [r for r in runs if r.tool == "imgpull pull"]
    floor_s = statistics.median((r.cpu + r.server_cpu) / cores for r in pulls)
    server = statistics.median(r.server_cpu for r in pulls)
    skopeo = med_pull["skopeo copy"]["wall_s"]
    if args.json:
        out = {
            "compressed_bytes": gz,
            "uncompressed_bytes": tar,
            "files": files,
            "build_s": round(built, 2),
            "decompressor": gunzip,
            "rss_floor_bytes": floor,
            "median": {"rootfs": med_rootfs, "pull": med_pull},
            "pull_cpu_floor_s": floor_s,
            "runs": [asdict(r) for r in runs],
        }
        print(json.dumps(out, indent=2))
        return
    print(
        f"image: {args.layers} layers, {files} files, {gz / 1e6:.0f} MB gzip -{args.level} "
        f"/ {tar / 1e6:.0f} MB tar ({tar / gz:.2f}x; built in {built:.1f} s); "
        f"{args.runs} runs each, medians; {os.cpu_count()} cores; MB/s of compressed bytes"
    )
    print(
        f"RSS: peak of the run's processes (max over its steps); none reads below "
        f"{floor / 1e6:.1f} MB, this script's own peak (Linux ru_maxrss)"
    )
    if gunzip != "igzip":
        print("note: igzip (Debian `isal`) not installed; the bound uses gzip -dc")
    print("\nregistry -> rootfs")
    print("\n".join(table(med_rootfs, 22)))
    print("\nregistry -> verified store (digests + diffIDs)")
    print("\n".join(table(med_pull, 22)))
    print(
        f"imgpull pull's floor on {cores} cores: (its CPU + the registry's {server:.2f} s) "
        f"/ {cores} = {floor_s:.2f} s = {floor_s / skopeo:.2f}x skopeo copy's wall"
    )
    for tool in ("imgpull pull+export", "skopeo+umoci unpack"):
        steps = [r.steps for r in runs if r.tool == tool]
        parts = ", ".join(
            f"{name} {sorted(s[i][1] for s in steps)[len(steps) // 2]:.2f} s"
            for i, (name, *_) in enumerate(steps[0])
        )
        print(f"{tool}: {parts} (median wall per step)")


if __name__ == "__main__":
    main()
