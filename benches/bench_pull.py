#!/usr/bin/env python3
"""imgpull vs skopeo (and a curl + sha256 bound) on the same image, same run.

Starts Debian's docker-registry on loopback, builds an image of random
(incompressible) layers, pushes it with skopeo as Docker v2s2, then for each
round pulls it with:
  - imgpull  (`imgpull bench`'s run: a fresh store, one process a pull)
  - skopeo   (`skopeo copy docker://… oci:<fresh dir>`)
  - curl     (every blob `curl | openssl sha256`, as many at once as imgpull
              downloads: a bound for download + verify, writing nothing)
and prints medians and ratios. Usage:

    python benches/bench_pull.py [--size-mb 500] [--layers 5] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

# _common puts tests/ on sys.path (for `support`), so it comes first.
from _common import Run, medians, settle, skopeo_run, table, timed
from support.images import build_oci_layout, push, random_layer
from support.registry import RegistryServer

from imgpull.bench import run_once


def curl_run(registry: RegistryServer, repo: str, digests: Sequence[str], parallel: int) -> Run:
    # xargs -P runs the pipelines concurrently; each checks its own digest.
    script = (
        f"printf '%s\\n' {' '.join(digests)} | xargs -P {parallel} -I{{}} sh -c "
        f"'test \"sha256:$(curl -sf {registry.url}/v2/{repo}/blobs/{{}} | openssl sha256 -r | "
        'cut -d" " -f1)" = {} || exit 255\''
    )
    return Run("curl|openssl sha256", *timed([script], shell=True))


def imgpull_run(ref: str, parallel: int) -> Run:
    r = run_once(ref, ["--plain-http", "--max-concurrent-downloads", str(parallel)])
    return Run("imgpull pull", r.wall_seconds, r.cpu_seconds, r.peak_rss_bytes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=500)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="imgpull-bench-"))
    try:
        per_layer = args.size_mb * 1_000_000 // args.layers
        t0 = time.perf_counter()
        image = build_oci_layout(
            work / "layout",
            [random_layer(per_layer, seed=100 + i) for i in range(args.layers)],
            ref="bench",
        )
        built = time.perf_counter() - t0
        with RegistryServer(workdir=work / "registry") as registry:
            push(image, registry, "bench/image:latest", "v2s2")
            ref = registry.ref("bench/image:latest")
            blobs = [*image.layer_digests, image.config_digest]
            total = image.total_layer_size + len(json.dumps(image.config))
            runs: list[Run] = []
            pair = [lambda: imgpull_run(ref, args.parallel), lambda: skopeo_run(ref)]
            # imgpull and skopeo alternate, each going first in turn; the curl
            # bound runs after them: it keeps both cores at 100% for seconds,
            # and a run right after that is slower (the host's clock).
            order = [pair[r % 2] for r in range(2 * args.runs)]
            order += [lambda: curl_run(registry, "bench/image", blobs, args.parallel)] * args.runs
            for run in order:
                settle()
                runs.append(run())
        report(runs, total, args, built)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(runs: Sequence[Run], total: int, args: argparse.Namespace, built: float) -> None:
    med = medians(runs, total, "imgpull pull")
    if args.json:
        per_run = {t: [round(r.wall, 3) for r in runs if r.tool == t] for t in med}
        print(json.dumps({"bytes": total, "median": med, "wall_s_per_run": per_run}, indent=2))
        return
    print(
        f"image: {args.layers} layers, {total / 1e6:.0f} MB compressed "
        f"(built in {built:.1f} s); {args.runs} runs each, medians; "
        f"{os.cpu_count()} cores"
    )
    print("\n".join(table(med)))


if __name__ == "__main__":
    main()
