#!/usr/bin/env python3
"""Bulk pulls: one imgpull process for 15 references vs one process per reference.

Starts Debian's docker-registry on loopback (schema1 enabled) and pushes 15
references sharing base layers (~--size-mb of distinct compressed blobs):
Docker v2s2 with gzip layers (random, and one text-like gzip -6 layer), OCI,
OCI with zstd layers, Docker schema1, an OCI index (amd64 + arm64), and OCI
with uncompressed layers (pushed through the registry API: skopeo would gzip
them). Then, alternating and each going first in turn:

  - imgpull bulk        `imgpull pull --root R REF1 ... REF15`: one process,
                        one scheduler, each shared blob fetched once
  - xargs -P4 imgpull   `xargs -P4 imgpull pull --root R`: a process per
                        reference, four at a time, into one store
  - xargs -P4 skopeo    `xargs -P4 skopeo copy docker://REF oci:DIR_i:latest`:
                        one OCI layout per reference (a shared one would race
                        on its index.json), four at a time

The registry's access log gives each row's blob GETs. MB/s is of the distinct
blobs the 15 pulls need (host platform), the same bytes for every row; peak
RSS is the largest single process (GNU time's %M: ru_maxrss over a process
tree, measured from a small parent).

`--many N` (default 1000) then pushes N small distinct images through the
registry API and pulls them all in one imgpull process: its peak RSS is the
memory bound of issue 10 (150 MB for 1000).

    python benches/bench_bulk.py [--size-mb 1000] [--runs 3] [--many 1000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# _common puts tests/ on sys.path (for `support`), so it comes first.
from _common import (
    Run,
    blob_get_counts,
    in_child,
    markdown_table,
    settle,
    skopeo_copy_cmd,
    timed,
)
from support.bulkimages import push_http, push_small_images
from support.images import (
    FIXED_EPOCH,
    BlobStore,
    ImageInfo,
    LayerSpec,
    PlatformSpec,
    StreamLayer,
    build_oci_index_layout,
    build_oci_layout,
    push,
    random_layer,
)
from support.registry import RegistryServer

PY = [sys.executable, "-m", "imgpull"]
BULK, XARGS_IMGPULL, XARGS_SKOPEO = "imgpull bulk", "xargs -P4 imgpull", "xargs -P4 skopeo"
# pull_many from Python, while `imgpull pull` takes one reference.
PULL_MANY = (
    "import sys, imgpull\n"
    "with imgpull.Client(sys.argv[1], plain_http=True) as c:\n"
    "    bad = [r for r in c.pull_many(sys.argv[2:]) if isinstance(r, Exception)]\n"
    "sys.exit(f'{len(bad)} pulls failed, first: {bad[0]}' if bad else 0)\n"
)


def _text_tar(size: int, seed: int) -> Iterator[bytes]:
    """A tar of 1 MiB files of hex text (gzip -6 halves it), written by hand:
    a FilesLayer would hold it all in memory (and in its key)."""
    rng = random.Random(seed)
    per = 1 << 20
    for i in range(max(1, size // per)):
        ti = tarfile.TarInfo(f"usr/share/text/{i:04d}.txt")
        ti.size, ti.mtime, ti.mode = per, FIXED_EPOCH, 0o644
        yield ti.tobuf(tarfile.PAX_FORMAT)
        yield rng.randbytes(per // 2).hex().encode()  # per is a multiple of 512: no padding
    yield b"\0" * 1024


@dataclass(frozen=True)
class Ref:
    repo_tag: str
    how: str  # v2s2, oci, v2s1, index (oci, all platforms), http (registry API, as is)
    layers: tuple[LayerSpec, ...]
    arm64: tuple[LayerSpec, ...] = ()  # the index's other platform


def bulk_set(size: int) -> list[Ref]:
    """15 references over 5 shared layers; fractions of `size` in distinct bytes."""

    def mb(frac: float) -> int:
        return int(size * frac)

    def own(i: int, frac: float, **kw: object) -> LayerSpec:
        return random_layer(mb(frac), seed=100 + i, prefix=f"app{i}", **kw)  # type: ignore[arg-type]

    base_a = random_layer(mb(0.22), seed=1, prefix="base-a", files=4)
    base_b = random_layer(mb(0.10), seed=2, prefix="base-b", files=4)
    text_size = mb(0.10)
    text = StreamLayer(f"text-{text_size}", lambda: _text_tar(text_size, 3), compresslevel=6)
    zbase = random_layer(mb(0.08), seed=4, prefix="zbase", compression="zstd", compresslevel=1)
    refs = [Ref(f"bulk/app:{i}", "v2s2", (base_a, base_b, text, own(i, 0.03))) for i in range(5)]
    refs += [Ref(f"bulk/oci:{i}", "oci", (base_a, own(10 + i, 0.03))) for i in range(3)]
    refs += [
        Ref(f"bulk/zstd:{i}", "oci", (zbase, own(20 + i, 0.02, compression="zstd")))
        for i in range(2)
    ]
    refs += [Ref(f"bulk/s1:{i}", "v2s1", (base_a, base_b, own(30 + i, 0.02))) for i in range(2)]
    refs.append(Ref("bulk/multi:latest", "index", (base_a, own(40, 0.03)), (base_a, own(41, 0.03))))
    refs += [
        Ref(f"bulk/plain:{i}", "http", (base_b, own(50 + i, 0.05, compression="none")))
        for i in range(2)
    ]
    return refs


def build_and_push(registry: RegistryServer, layout: Path, size: int) -> dict[str, int]:
    """Push the set; -> {digest: size} of the blobs pulling it needs (amd64)."""
    store = BlobStore(layout)
    needed: dict[str, int] = {}

    def need(image: ImageInfo, config: bool = True) -> None:
        digests = image.layer_digests + ([image.config_digest] if config else [])
        needed.update({d: image.blob_path(d).stat().st_size for d in digests})

    with registry.client() as client:
        for ref in bulk_set(size):
            name = ref.repo_tag.replace("/", "-").replace(":", "-")
            if ref.how == "index":
                platforms = [PlatformSpec(ref.layers), PlatformSpec(ref.arm64, "arm64")]
                index = build_oci_index_layout(layout, platforms, ref=name, store=store)
                push(index, registry, ref.repo_tag, "oci", all_images=True)
                need(index.images[0])
                continue
            image = build_oci_layout(layout, ref.layers, ref=name, store=store)
            if ref.how == "http":
                push_http(client, image, ref.repo_tag)
            else:
                push(image, registry, ref.repo_tag, ref.how)  # type: ignore[arg-type]
            need(image, config=ref.how != "v2s1")  # schema1 has no config blob
    return needed


def cli_takes_many() -> bool:
    """Whether `imgpull pull` takes several references (its usage ends in `...`)."""
    out = subprocess.run([*PY, "pull", "--help"], capture_output=True, text=True).stdout
    usage = next((line for line in out.splitlines() if line.startswith("Usage:")), "")
    return usage.rstrip().endswith("...")


class Runner:
    def __init__(self, registry: RegistryServer, refs: Sequence[str], scratch: Path) -> None:
        self.registry = registry
        self.refs = refs
        self.scratch = scratch
        self.many_cli = cli_takes_many()
        self.gets: dict[str, list[dict[str, int]]] = {}

    def bulk_cmd(self, root: Path, refs: Sequence[str]) -> list[str]:
        if self.many_cli:
            return [*PY, "pull", "--root", str(root), "--quiet", "--plain-http", *refs]
        return [sys.executable, "-c", PULL_MANY, str(root), *refs]

    def _timed(self, tool: str, make: Callable[[Path], list[str]]) -> Run:
        work = Path(tempfile.mkdtemp(prefix="bulk-", dir=self.scratch))
        try:
            (work / "refs").write_text("".join(f"{r}\n" for r in self.refs))
            self.registry.clear_request_log()
            run = Run(tool, *timed(make(work), stderr=work / "stderr", exact_rss=True))
            self.gets.setdefault(tool, []).append(
                dict(blob_get_counts(self.registry.settled_request_log()))
            )
            return run
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def bulk(self) -> Run:
        return self._timed(BULK, lambda w: self.bulk_cmd(w / "store", self.refs))

    def xargs_imgpull(self) -> Run:
        return self._timed(
            XARGS_IMGPULL,
            lambda w: [
                *("xargs", "-P4", "-n1", "-a", str(w / "refs")),
                *(*PY, "pull", "--root", str(w / "store"), "--quiet", "--plain-http"),
            ],
        )

    def xargs_skopeo(self) -> Run:
        def cmd(w: Path) -> list[str]:
            # skopeo_copy_cmd's arguments, the two ends one line per reference.
            *flags, _src, _dest = skopeo_copy_cmd("REF", w / "oci")
            lines = [f"docker://{r} oci:{w}/oci-{i}:latest\n" for i, r in enumerate(self.refs)]
            (w / "pairs").write_text("".join(lines))
            return ["xargs", "-P4", "-L1", "-a", str(w / "pairs"), *flags]

        return self._timed(XARGS_SKOPEO, cmd)


@dataclass(frozen=True)
class ManyResult:
    images: int
    wall: float
    cpu: float
    rss: int
    gets: int
    push_s: float


def many_row(registry: RegistryServer, runner: Runner, scratch: Path, count: int) -> ManyResult:
    t0 = time.perf_counter()
    refs = in_child(push_small_images, registry, scratch / "small-layout", count)
    push_s = time.perf_counter() - t0
    shutil.rmtree(scratch / "small-layout", ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="many-", dir=scratch))
    try:
        settle()
        registry.clear_request_log()
        cmd = runner.bulk_cmd(work / "store", refs)
        wall, cpu, rss = timed(cmd, stderr=work / "stderr", exact_rss=True)
        gets = sum(blob_get_counts(registry.settled_request_log()).values())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ManyResult(count, wall, cpu, rss, gets, push_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=None, help="distinct MB (default 1000)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--many", type=int, default=None, help="small images (default 1000, 0: none)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 100 MB, 1 run, 100 small")
    args = ap.parse_args()
    size_mb = args.size_mb or (100 if args.quick else 1000)
    runs = 1 if args.quick and args.runs == 3 else args.runs
    many = args.many if args.many is not None else (100 if args.quick else 1000)

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="imgpull-bench-bulk-"))
    try:
        with RegistryServer(workdir=work / "registry", schema1=True) as registry:
            refs = [registry.ref(r.repo_tag) for r in bulk_set(size_mb * 1_000_000)]
            t0 = time.perf_counter()
            needed = in_child(build_and_push, registry, work / "layout", size_mb * 1_000_000)
            built = time.perf_counter() - t0
            shutil.rmtree(work / "layout")
            runner = Runner(registry, refs, work)
            tools = [runner.bulk, runner.xargs_imgpull, runner.xargs_skopeo]
            results: list[Run] = []
            for i in range(runs):
                for run in tools[i % 3 :] + tools[: i % 3]:  # each goes first in turn
                    settle()
                    results.append(run())
            result_many = many_row(registry, runner, work, many) if many else None
        load_after = os.getloadavg()
        report(results, runner, needed, result_many, runs, built)
        print(
            f"\nload average (1, 5, 15 min): before {load_before[0]:.2f} {load_before[1]:.2f} "
            f"{load_before[2]:.2f}, after {load_after[0]:.2f} {load_after[1]:.2f} "
            f"{load_after[2]:.2f}; {os.cpu_count()} cores"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(
    results: Sequence[Run],
    runner: Runner,
    needed: dict[str, int],
    many: ManyResult | None,
    runs: int,
    built: float,
) -> None:
    total = sum(needed.values())
    form = "imgpull pull REF..." if runner.many_cli else "python -c Client.pull_many (no CLI form)"
    print(
        f"{len(runner.refs)} references, {len(needed)} distinct blobs, {total / 1e6:.0f} MB "
        f"(set built and pushed in {built:.0f} s); {runs} runs each, alternating, medians; "
        f"imgpull bulk = {form}\n"
    )
    med = {
        tool: [
            statistics.median(getattr(r, k) for r in results if r.tool == tool)
            for k in ("wall", "cpu", "rss")
        ]
        for tool in (BULK, XARGS_IMGPULL, XARGS_SKOPEO)
    }
    skopeo_wall = med[XARGS_SKOPEO][0]
    rows = []
    for tool, (wall, cpu, rss) in med.items():
        last = runner.gets[tool][-1]
        rows.append(
            [
                tool,
                f"{wall:.2f}",
                f"{total / wall / 1e6:.0f}",
                f"{cpu:.2f}",
                f"{rss / 1e6:.0f}",
                f"{skopeo_wall / wall:.2f}x",
                f"{sum(last.values())} ({len(last)} distinct)",
            ]
        )
    header = ["tool", "wall s", "MB/s", "CPU s", "peak RSS MB", "vs skopeo", "blob GETs (last run)"]
    print("\n".join(markdown_table(header, rows)))
    walls = "; ".join(
        f"{tool} " + " ".join(f"{r.wall:.2f}" for r in results if r.tool == tool) for tool in med
    )
    print(f"\nwall s per run, in run order: {walls}")
    once = all(set(g) == set(needed) and max(g.values()) == 1 for g in runner.gets[BULK])
    print(
        f"\nimgpull bulk, every shared blob fetched once (each of the {len(needed)} needed "
        f"blobs one GET, nothing else, in all {runs} runs): {'yes' if once else 'no'}"
    )
    if not once:
        extra = {d: n for g in runner.gets[BULK] for d, n in g.items() if n > 1 or d not in needed}
        missing = set(needed) - set(runner.gets[BULK][-1])
        print(f"  more than once or unexpected: {extra}; never fetched: {sorted(missing)}")
    if many:
        print(
            f"\n{many.images} small images (pushed through the registry API in "
            f"{many.push_s:.0f} s), one imgpull process: {many.wall:.1f} s, "
            f"{many.images / many.wall:.0f} images/s, CPU {many.cpu:.1f} s, "
            f"peak RSS {many.rss / 1e6:.0f} MB, {many.gets} blob GETs"
        )


if __name__ == "__main__":
    main()
