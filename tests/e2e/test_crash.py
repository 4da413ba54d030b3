"""Crash safety across processes (issue 5): kill -9 at random points and resume,
two processes on one store, a full disk, Ctrl-C.

The CLI runs as real subprocesses against a real registry. A throttling relay
process (support.throttle) sits in between where a pull must last long enough
to be interrupted in the middle of a blob.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.cli import imgpull_argv, run_cli, stored_blobs
from support.faultmatrix import Row
from support.images import ImageInfo, LayoutCache, push, random_layer
from support.pushed import PushedImage
from support.registry import RegistryServer
from support.throttle import ThrottledRelay

REPO = "test/crash"
# ~60 MB of incompressible layers: at RATE a full pull moves bytes for ~1.2 s.
LAYERS = tuple(random_layer(20_000_000, seed=seed) for seed in (501, 502, 503))
RATE = 50_000_000
TIMEOUT = 60


@dataclass(frozen=True)
class CrashImage:
    registry: RegistryServer
    relay: ThrottledRelay
    image: ImageInfo
    manifest_digest: str

    def ref(self, *, throttled: bool = True) -> str:
        host = self.relay.host if throttled else self.registry.host
        return f"{host}/{REPO}:v1"

    @property
    def blobs(self) -> dict[str, int]:
        """Digest -> size of what a pull downloads: the config and the layers."""
        digests = [self.image.config_digest, *self.image.layer_digests]
        return {d: self.image.blob_path(d).stat().st_size for d in digests}

    @property
    def size(self) -> int:
        return sum(self.blobs.values())


@pytest.fixture(scope="module")
def crash(
    tmp_path_factory: pytest.TempPathFactory, layout_cache: LayoutCache
) -> Iterator[CrashImage]:
    """The image on a registry of this module's own (its access log is ours
    to clear), and a relay that throttles it."""
    image = layout_cache.get(LAYERS, ref="crash")
    with (
        RegistryServer(workdir=tmp_path_factory.mktemp("crash-registry")) as registry,
        ThrottledRelay(registry.host, rate=RATE) as relay,
    ):
        digest = push(image, registry, f"{REPO}:v1", "oci")
        yield CrashImage(registry, relay, image, digest)


@dataclass(frozen=True)
class BlobGet:
    digest: str
    status: int
    size: int  # body bytes the registry wrote


def _settled_log(registry: RegistryServer) -> list[BlobGet]:
    """The blob GETs once the access log stops growing (a request the client
    abandoned is logged when the registry notices, a moment later)."""
    prefix = f"/v2/{REPO}/blobs/"
    return [
        BlobGet(e.path[len(prefix) :], e.status, e.size)
        for e in registry.settled_request_log()
        if e.method == "GET" and e.path.startswith(prefix)
    ]


def _clear_log(registry: RegistryServer) -> None:
    """Forget the requests so far, including those of a pull just stopped."""
    _settled_log(registry)
    registry.clear_request_log()


def _pull(ref: str, root: Path, *extra: str) -> list[str]:
    """The command line of `imgpull pull REF --root ROOT EXTRA...` (to Popen)."""
    return imgpull_argv("pull", ref, "--root", str(root), *extra)


def _run_pull(ref: str, root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("pull", ref, "--root", str(root), *extra, timeout=TIMEOUT)


def _partials(root: Path) -> dict[str, int]:
    """Hex digest -> size of the partial downloads in the ingest area."""
    ingest = root / "ingest" / "sha256"
    if not ingest.is_dir():
        return {}
    return {p.name: p.stat().st_size for p in ingest.iterdir() if not p.name.endswith(".lock")}


def _assert_complete(root: Path, crash: CrashImage) -> None:
    """The store holds exactly the image, once, and nothing else."""
    want = {crash.manifest_digest, *crash.blobs}
    assert stored_blobs(root) == want
    with closing(sqlite3.connect(root / "imgpull.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    listed = run_cli("images", "--json", "--root", str(root), timeout=TIMEOUT)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["repository"].split("/", 1)[1], r["tag"], r["image_id"]) for r in rows] == [
        (REPO, "v1", crash.image.config_digest)
    ]
    # Looked at after a command that ended cleanly (SQLite removes its WAL
    # files when the last connection closes).
    leftovers = [
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.parent != root / "blobs" / "sha256" and p.name != "imgpull.db"
    ]
    assert leftovers == []


def _left(root: Path, crash: CrashImage) -> float:
    """The fraction of the image's bytes not yet on disk."""
    blobs = root / "blobs" / "sha256"
    partials = _partials(root)
    have = sum(
        size if (blobs / d[7:]).is_file() else partials.get(d[7:], 0)
        for d, size in crash.blobs.items()
    )
    return 1 - have / crash.size


def _assert_rerun_resumes(crash: CrashImage, ref: str, root: Path, kept: dict[str, int]) -> None:
    """A rerun of the pull of `ref` into `root` completes the image, asking
    for each kept partial (hex digest -> bytes) from where it ended: one 206
    for the rest, nothing fetched again."""
    _clear_log(crash.registry)
    again = _run_pull(ref, root)
    assert again.returncode == 0, again.stderr
    _assert_complete(root, crash)
    gets = _settled_log(crash.registry)
    for hexpart, size in kept.items():
        assert [(g.status, g.size) for g in gets if g.digest[7:] == hexpart] == [
            (206, crash.blobs["sha256:" + hexpart] - size)
        ]


def test_kill_9_at_random_points_then_resume(
    crash: CrashImage, tmp_path: Path, fault_row: Row
) -> None:
    ref = crash.ref()
    # Scale the kill delays to this machine: one whole pull, elsewhere, and
    # the start-up of a command that does next to nothing.
    started = time.monotonic()
    whole = _run_pull(ref, tmp_path / "scratch", "-q")
    full = time.monotonic() - started
    assert whole.returncode == 0, whole.stderr
    started = time.monotonic()
    assert run_cli("images", "--root", str(tmp_path / "scratch"), timeout=TIMEOUT).returncode == 0
    startup = time.monotonic() - started
    _clear_log(crash.registry)

    root = tmp_path / "root"
    # Another seed (CRASH_SEED=n) explores other kill points.
    rng = random.Random(int(os.environ.get("CRASH_SEED", "20261128")))
    kills = 0
    for _ in range(12):
        # After start-up, anywhere in the first 70% of what is left to fetch:
        # resolving, re-hashing partials, downloading, committing, recording.
        # (Up to the end would let one early run finish the whole image.)
        left = _left(root, crash) * max(full - startup, 0.5)
        delay = startup + rng.uniform(0.0, 0.7) * left
        proc = subprocess.Popen(
            _pull(ref, root, "-q"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            _, err = proc.communicate(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=TIMEOUT)
            kills += 1
            continue
        # It finished first: nothing left to interrupt.
        assert proc.returncode == 0, err
        break
    assert kills >= 8, f"only {kills} kills landed mid-pull"

    interrupted = _settled_log(crash.registry)
    blobs = root / "blobs" / "sha256"
    done = {p.name for p in blobs.iterdir()} if blobs.is_dir() else set()
    kept = {d: n for d, n in _partials(root).items() if n > 0 and d not in done}
    _clear_log(crash.registry)
    final = _run_pull(ref, root, "-q")
    assert final.returncode == 0, final.stderr
    _assert_complete(root, crash)
    fault_row.injected["kill -9 mid-pull (process)"] = kills
    fault_row.pulls = fault_row.right = 1  # the rerun that finishes the job

    # The last run asked for exactly what was missing: a partial from where
    # it ends (nothing at all for a complete one), the rest whole.
    gets = _settled_log(crash.registry)
    for digest, size in crash.blobs.items():
        asked = [(g.status, g.size) for g in gets if g.digest == digest]
        want: list[tuple[int, int]]
        if digest[7:] in done:
            want = []
        elif digest[7:] in kept:
            n = kept[digest[7:]]
            want = [] if n == size else [(206, size - n)]
        else:
            want = [(200, size)]
        assert asked == want, digest

    # Over all the runs, partials were resumed, not fetched again each time.
    gets += interrupted
    served = sum(g.size for g in gets if g.status in (200, 206))
    print(f"kills={kills} served={served} image={crash.size} full={full:.2f}s kept={kept}")
    assert served < (kills + 1) * crash.size / 2
    assert any(g.status == 206 for g in gets), "no Range request was answered with 206"


def test_two_processes_pull_one_image_into_one_root(
    crash: CrashImage, tmp_path: Path, fault_row: Row
) -> None:
    _clear_log(crash.registry)
    # A relay of this test's own, slow enough (6 s for the image) that the
    # second process, started once the first downloads, finds the blobs
    # still missing however slowly it starts on a loaded machine.
    with ThrottledRelay(crash.registry.host, rate=RATE // 5) as slow:
        cmd = _pull(f"{slow.host}/{REPO}:v1", tmp_path, "--json")
        first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert first.stdout is not None
        head = []
        for line in first.stdout:  # ends with the process at the latest
            head.append(line)
            if '"Downloading"' in line:
                break
        second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs = [first, second]
        outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
    outputs[0] = ("".join(head) + outputs[0][0], outputs[0][1])
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    # Both started before the blobs were there (so both wanted them).
    for out, _ in outputs:
        objects = [json.loads(line) for line in out.splitlines()]
        # The events, then the pull's result object (which has no status).
        assert "result" in objects[-1]
        assert "Pulling fs layer" in [o["status"] for o in objects[:-1]]
    _assert_one_download_each(crash)
    _assert_complete(tmp_path, crash)
    fault_row.injected["two processes, one root (process)"] = 1
    fault_row.pulls = fault_row.right = 2


def test_two_clients_in_threads_share_one_root(crash: CrashImage, tmp_path: Path) -> None:
    import imgpull

    _clear_log(crash.registry)
    received: list[int] = []
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            with imgpull.Client(tmp_path) as client:
                received.append(client.pull(crash.ref()).downloaded_bytes)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=pull) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert errors == []
    # Between them, every byte came once.
    assert sum(received) == crash.size
    _assert_one_download_each(crash)
    _assert_complete(tmp_path, crash)


def _assert_one_download_each(crash: CrashImage) -> None:
    gets = _settled_log(crash.registry)
    for digest, size in crash.blobs.items():
        served = [(g.status, g.size) for g in gets if g.digest == digest]
        assert served == [(200, size)], digest


# What a crash can leave as a partial file of blob `data`, and how many bytes
# of that blob the next pull then downloads. Resuming re-hashes the partial
# (no saved hash state: see store/content.py), so none of these can slip by.
PARTIALS = {
    # Stopped between the last byte and the commit: only verified, no request.
    "complete": (lambda data: data, lambda n: 0),
    # The same length, wrong bytes: fails the digest, started over once.
    "complete-corrupt": (lambda data: bytes(len(data)), lambda n: n),
    # Longer than the blob can be: started over when opened.
    "longer": (lambda data: data + b"\0" * 100, lambda n: n),
    # A power cut after the size reached the disk but not the data: zeros
    # at the end. Resumed, fails the digest, started over once.
    "zero-tail": (
        lambda data: data[: len(data) // 2] + bytes(len(data) // 4),
        lambda n: n - (n // 2 + n // 4) + n,
    ),
}


@pytest.mark.parametrize("kind", sorted(PARTIALS))
def test_partial_left_by_a_crash_is_resumed_or_started_over(
    kind: str, pushed_image: PushedImage, tmp_path: Path
) -> None:
    import imgpull

    layer = pushed_image.layer_digests[0]
    data = pushed_image.image.blob(layer)
    make, downloads = PARTIALS[kind]
    ingest = tmp_path / "ingest" / "sha256"
    ingest.mkdir(parents=True)
    (ingest / layer[7:]).write_bytes(make(data))
    with imgpull.Client(tmp_path) as client:
        image = client.pull(pushed_image.ref("oci"))
    assert layer in stored_blobs(tmp_path)
    assert image.downloaded_bytes == image.size - len(data) + downloads(len(data))
    assert _partials(tmp_path) == {}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 30 MB tmpfs (half the image), unmounted whatever happens."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _fill(disk: Path, leave: int) -> Path:
    """Fill `disk` up to `leave` free bytes with a file; returns it."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        chunk = bytes(1 << 20)
        while chunk:
            try:
                f.write(chunk)
            except OSError:
                chunk = chunk[: len(chunk) // 2]
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def test_full_disk_fails_once_clearly_then_resumes(
    crash: CrashImage, small_disk: Path, fault_row: Row
) -> None:
    root = small_disk / "store"
    ref = crash.ref(throttled=False)
    _clear_log(crash.registry)
    failed = _run_pull(ref, root)
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1, failed.stderr
    assert lines[0].startswith(f"Error: no space left on device writing {root}/"), lines[0]
    assert lines[0].endswith(
        ": free some space, then run the pull again (what was downloaded is kept)"
    )
    # Not retried: no blob asked for twice.
    digests = [g.digest for g in _settled_log(crash.registry)]
    assert len(digests) == len(set(digests))
    # Nothing unverified in blobs/, nothing recorded.
    assert stored_blobs(root) <= {crash.manifest_digest, *crash.blobs}
    kept = {d: n for d, n in _partials(root).items() if n > 0}
    assert kept

    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)
    listed = run_cli("images", "--json", "--root", str(root), timeout=TIMEOUT)
    assert (listed.returncode, listed.stdout.strip()) == (0, "[]"), listed.stderr
    _assert_rerun_resumes(crash, ref, root, kept)
    # The failed pull (one clear error, nothing wrong kept) and its rerun.
    fault_row.injected["disk full, blobs (tmpfs)"] = 1
    fault_row.pulls = fault_row.right = 2

    # A full disk while only the database is written (the pull finds every
    # blob present): one clear error at worst, and the database stays sound.
    db_errors = 0
    for leave in (0, 20_000, 40_000, 100_000):
        filler = _fill(small_disk, leave)
        try:
            result = _run_pull(ref, root)
        finally:
            filler.unlink()
        if result.returncode != 0:
            db_errors += 1
            assert result.returncode == 1
            assert result.stderr.strip() == (
                f"Error: no space left on device writing {root}/imgpull.db: "
                "free some space, then try again"
            )
        _assert_complete(root, crash)
        fault_row.pulls += 1
        fault_row.right += 1
    assert db_errors > 0, "the database never met a full disk"
    fault_row.injected["disk full, database (tmpfs)"] = db_errors


def test_ctrl_c_keeps_partials_and_the_rerun_resumes_them(
    crash: CrashImage, tmp_path: Path, fault_row: Row
) -> None:
    ref = crash.ref()
    _clear_log(crash.registry)
    proc = subprocess.Popen(
        _pull(ref, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        if any(n > 2_000_000 for n in _partials(tmp_path).values()):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, err
    assert err.strip() == "Interrupted: partial downloads are kept; run again to resume."
    kept = {d: n for d, n in _partials(tmp_path).items() if n > 0}
    assert kept
    assert not any((tmp_path / "blobs" / "sha256" / d).exists() for d in kept)

    _assert_rerun_resumes(crash, ref, tmp_path, kept)
    fault_row.injected["SIGINT mid-pull (process)"] = 1
    fault_row.pulls = fault_row.right = 2  # exit 130 with partials kept; the rerun


def test_ctrl_c_while_another_process_writes_the_blobs(crash: CrashImage, tmp_path: Path) -> None:
    """A pull waiting for the blobs another pull is downloading stops at once
    on Ctrl-C (the other pull goes on), not once they are done."""
    # ~2 min for the whole image: far longer than this test waits.
    with ThrottledRelay(crash.registry.host, rate=500_000) as slow:
        ref = f"{slow.host}/{REPO}:v1"
        procs: list[subprocess.Popen[str]] = []
        try:
            first = subprocess.Popen(
                _pull(ref, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            procs.append(first)
            # Its writers are open (and locked) once their partial files exist.
            deadline = time.monotonic() + TIMEOUT
            while len(_partials(tmp_path)) < len(LAYERS) and time.monotonic() < deadline:
                assert first.poll() is None, first.communicate()[1]
                time.sleep(0.01)
            second = subprocess.Popen(
                _pull(ref, tmp_path, "--json"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            procs.append(second)
            assert second.stdout is not None
            # Once it has asked for the layers, it waits for the first pull.
            waiting = 0
            for line in second.stdout:
                waiting += json.loads(line).get("status") == "Pulling fs layer"
                if waiting == len(LAYERS):
                    break
            time.sleep(0.2)
            second.send_signal(signal.SIGINT)
            _, err = second.communicate(timeout=TIMEOUT)
            assert second.returncode == 130, err
            assert err.strip() == "Interrupted: partial downloads are kept; run again to resume."
            assert first.poll() is None, first.communicate()[1]
            first.send_signal(signal.SIGINT)
            _, err = first.communicate(timeout=TIMEOUT)
            assert first.returncode == 130, err
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
    assert _partials(tmp_path)
