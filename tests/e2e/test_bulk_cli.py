"""`imgpull pull REF REF...` and `--from-file`: many images in one process,
one scheduler; a failed reference reported on its own line while the others
go on; a summary; `--json` objects; the live block on a terminal.

`-a` going on past a failing tag is tested in test_pull_reference_forms.py
(test_all_tags_goes_on_past_a_failing_tag), where its fake registry lives.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.cli import imgpull_argv, run_cli
from support.images import LayoutCache, push, random_layer
from support.registry import RegistryServer
from support.terminal import check_screen, pty_of, read_until

import imgpull

# Each test's pulls are a few small images on loopback: seconds at most.
TIMEOUT = 25


@dataclass(frozen=True)
class Bulk:
    good: tuple[str, ...]  # references that pull
    missing: str  # a tag the registry does not have

    def root_refs(self, root: Path) -> list[str]:
        with imgpull.Client(root) as client:
            return sorted(f"{r.repository}:{r.tag}" for r in client.images() if r.tag)


@pytest.fixture(scope="module")
def bulk(registry: RegistryServer, layout_cache: LayoutCache) -> Bulk:
    """Three images of twelve small layers each, the first shared by all
    (so that a bulk pull fetches it once for several pulls)."""
    shared = random_layer(3_000, seed=7100)
    good = []
    for n, name in enumerate("abc"):
        layers = [shared, *(random_layer(2_000, seed=7101 + 20 * n + i) for i in range(11))]
        image = layout_cache.get(layers, ref=f"bulk-{name}")
        push(image, registry, f"bulk/{name}:v1")
        good.append(registry.ref(f"bulk/{name}:v1"))
    return Bulk(tuple(good), registry.ref("bulk/a:missing"))


def _summary(stdout: str) -> str:
    (line,) = [x for x in stdout.splitlines() if x.startswith("Pulled ")]
    return line


def test_a_failed_reference_is_reported_and_the_others_pulled(bulk: Bulk, tmp_path: Path) -> None:
    a, _b, c = bulk.good
    proc = run_cli("pull", "--root", str(tmp_path), a, bulk.missing, c, timeout=TIMEOUT)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"Error: {bulk.missing}: manifest for {bulk.missing} not found: manifest unknown"
    ]
    assert bulk.root_refs(tmp_path) == [a, c]
    summary = _summary(proc.stdout)
    assert re.fullmatch(
        r"Pulled 2, up to date 0, failed 1: [0-9.]+ [kMG]?B in [0-9.]+ s \([0-9.]+ MB/s\)",
        summary,
    ), summary
    assert proc.stdout.splitlines()[-1] == summary  # the run's last word
    # Piped, each line of the interleaved pulls names its reference.
    lines = proc.stdout.splitlines()
    assert f"{a}: Status: Downloaded newer image for {a}" in lines
    # A blob both pulls wait on is told once, naming both, not once a pull.
    assert len(lines) == len(set(lines)), lines

    again = run_cli("pull", "-q", "--root", str(tmp_path), a, c, timeout=TIMEOUT)
    assert (again.returncode, again.stderr) == (0, "")
    assert again.stdout.splitlines() == [a, c]  # -q: the references alone


def test_from_file_on_stdin(bulk: Bulk, tmp_path: Path) -> None:
    a, b, _ = bulk.good
    listing = f"# images for the bulk test\n\n{a}\n   \n{b}  # the second\n"
    proc = run_cli(
        "pull", "--root", str(tmp_path), "--from-file", "-", input=listing, timeout=TIMEOUT
    )
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stdout
    assert _summary(proc.stdout).startswith("Pulled 2, up to date 0, failed 0: ")
    assert bulk.root_refs(tmp_path) == [a, b]


def test_json_objects(bulk: Bulk, tmp_path: Path) -> None:
    a, b, c = bulk.good
    refs = [a, bulk.missing, b, c]
    proc = run_cli("pull", "--json", "--root", str(tmp_path), *refs, timeout=TIMEOUT)
    assert proc.returncode == 1
    objects = [json.loads(line) for line in proc.stdout.splitlines()]
    errors = [o for o in objects if "error" in o]
    message = f"manifest for {bulk.missing} not found: manifest unknown"
    assert errors == [{"errorDetail": {"message": message}, "error": message, "ref": bulk.missing}]
    results = [o["result"] for o in objects if "result" in o]
    assert [r["reference"] for r in results] == [a, b, c]
    with imgpull.Client(tmp_path) as client:
        for r in results:
            assert client.resolve(r["reference"]) == r["id"]
            assert r["digest"].startswith("sha256:")
            assert r["downloaded_bytes"] > 0 and r["seconds"] >= 0
    assert objects[-1]["summary"]["pulled"] == 3
    assert objects[-1]["summary"]["failed"] == 1
    assert objects[-1]["summary"]["downloaded_bytes"] == sum(r["downloaded_bytes"] for r in results)
    layer_events = [o for o in objects if "id" in o]
    assert layer_events
    for event in layer_events:
        assert event["digest"].startswith("sha256:") and event["digest"][7:19] == event["id"]
        assert event["refs"] and set(event["refs"]) <= {a, b, c}
    # Each pull's own messages name it.
    statuses = [o for o in objects if o.get("status", "").startswith("Status: ")]
    assert sorted(tuple(o["refs"]) for o in statuses) == [(a,), (b,), (c,)]


def test_json_result_of_one_reference(bulk: Bulk, tmp_path: Path) -> None:
    """One reference: its events, then the same result object (no summary)."""
    a = bulk.good[0]
    proc = run_cli("pull", "--json", "--root", str(tmp_path), a, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    *events, last = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events and all("status" in o for o in events)
    result = last["result"]
    assert list(result) == ["reference", "id", "digest", "downloaded_bytes", "seconds"]
    assert result["reference"] == a and result["digest"].startswith("sha256:")
    assert result["downloaded_bytes"] > 0 and result["seconds"] >= 0
    with imgpull.Client(tmp_path) as client:
        assert client.resolve(a) == result["id"]


def _run_in_pty(
    args: list[str], columns: int, rows: int, env: Mapping[str, str]
) -> tuple[int, bytes]:
    """`imgpull ARGS` with stdout on a pty of that size: exit code, output."""
    with pty_of(columns, rows) as (master, slave):
        proc = subprocess.Popen(
            imgpull_argv(*args),
            stdout=slave,
            stderr=subprocess.DEVNULL,
            env={**env, "IMGPULL_CERTS_D": os.devnull},
        )
        os.close(slave)  # so that the read ends when the child is gone
        data = read_until(master, lambda: proc.poll() is not None, TIMEOUT)
        return proc.wait(timeout=5), data


def test_live_block_fits_a_small_terminal(bulk: Bulk, tmp_path: Path) -> None:
    env = {**os.environ, "TERM": "xterm-256color"}
    args = ["pull", "--root", str(tmp_path), *bulk.good]
    code, data = _run_in_pty(args, 60, 30, env)
    text = data.decode()
    assert code == 0, text
    # The live part, up to the block's last clearing; then come the plain
    # lines of the results, which may wrap as any output does.
    live, _, after = text.rpartition("\r\x1b[J")
    assert "\x1b[" in live and "\x1b" not in after
    check_screen(live, 60, 30)
    assert "Images 3/3" in live
    assert _summary(after).startswith("Pulled 3, up to date 0, failed 0")


def test_dumb_terminal_gets_plain_lines(bulk: Bulk, tmp_path: Path) -> None:
    env = {**os.environ, "TERM": "dumb"}
    code, data = _run_in_pty(["pull", "--root", str(tmp_path), *bulk.good[:2]], 60, 30, env)
    assert code == 0, data
    assert b"\x1b" not in data
    assert _summary(data.decode()).startswith("Pulled 2, up to date 0, failed 0")


def test_bench_of_many_references(bulk: Bulk, tmp_path: Path) -> None:
    """`imgpull bench REF REF`: each run one bulk pull of both into a fresh
    store, measured as a pull of one is."""
    a, b, _ = bulk.good
    proc = run_cli("bench", "--runs", "1", "--json", a, b, timeout=TIMEOUT)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stdout
    (run,) = json.loads(proc.stdout)["runs"]
    pulled = run_cli("pull", "-q", "--root", str(tmp_path), a, b, timeout=TIMEOUT)
    assert pulled.returncode == 0, pulled.stderr
    stored = sum(p.stat().st_size for p in (tmp_path / "blobs" / "sha256").iterdir())
    assert run["bytes"] == stored
    assert run["wall_seconds"] > 0 and run["cpu_seconds"] > 0
