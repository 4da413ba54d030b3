"""Pulls through a fault-injecting proxy in front of the real registry.

Every fault of tests/support/faultproxy.py is injected into real pulls of the
small test image (a 2 MiB layer, so cuts land mid-body); each pull must end
with the right bytes in the store, or with the documented error and nothing
wrong stored. The proxy's log says what imgpull asked for (Range, how many
times, when), so retries, resumes and waits are checked at the wire.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.cli import run_cli
from support.faultmatrix import Row
from support.faultproxy import FaultProxy, LogEntry
from support.pushed import PushedImage
from support.registry import RegistryServer

import imgpull
from imgpull.errors import DigestMismatchError, FetchError, RegistryError
from imgpull.retry import RetryPolicy, StallPolicy

# Short waits, so that five attempts take well under a second.
FAST = RetryPolicy(first_delay=0.05, max_delay=0.2, max_retry_after=3.0)
# A stall is judged over 1 s here (16 KiB/s over 30 s by default).
QUICK_STALL = StallPolicy(min_rate=32 * 1024, window=1.0)
MIB = 1 << 20
# Waits are measured between two requests at the proxy; its clock and the
# one imgpull computes an HTTP-date against differ by float rounding only.
CLOCK_SLACK = 0.05


@pytest.fixture(scope="module")
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry.host) as p:
        yield p


@dataclass
class FaultRun:
    """One test's pulls through the proxy, and its row of the fault matrix."""

    proxy: FaultProxy
    image: PushedImage
    tmp: Path
    row: Row

    @property
    def big(self) -> str:
        """The 2 MiB layer: where body faults are aimed."""
        return self.image.layer_digests[0]

    def ref(self, fmt: str = "v2s2") -> str:
        return self.proxy.ref(f"{self.image.repo}:{self.image.tags[fmt]}")

    def client(self, root: Path, **options: Any) -> imgpull.Client:
        options.setdefault("retry", FAST)
        return imgpull.Client(root, **options)

    def pull(self, **options: Any) -> Path:
        """Pulls into a fresh store; checks every byte; returns the store root."""
        root = self.tmp / f"store{self.row.pulls}"
        self.row.pulls += 1
        with self.client(root, **options) as client:
            image = client.pull(self.ref())
            assert client.resolve(self.ref()) == image.id
        assert image.id == self.image.config_digest
        assert [d.digest for d in image.layers] == self.image.layer_digests
        stored = check_store(root)
        assert {image.id, *self.image.layer_digests} <= stored
        for digest in self.image.layer_digests:
            assert blob(root, digest).read_bytes() == self.image.image.blob(digest)
        assert not [p for p in (root / "ingest" / "sha256").iterdir() if p.suffix != ".lock"]
        self.row.right += 1
        return root

    def pull_fails(self, error: type[BaseException], match: str, **options: Any) -> Path:
        """A pull that must end with `error`: nothing wrong stored, no image."""
        root = self.tmp / f"store{self.row.pulls}"
        self.row.pulls += 1
        with self.client(root, **options) as client:
            with pytest.raises(error, match=match) as info:
                client.pull(self.ref())
            assert client.images() == []
        assert "\n" not in str(info.value)
        check_store(root)
        self.row.right += 1
        return root

    def big_requests(self) -> list[LogEntry]:
        return self.proxy.requests(f"/blobs/{self.big}")


@pytest.fixture
def faults(
    proxy: FaultProxy, pushed_image: PushedImage, tmp_path: Path, fault_row: Row
) -> Iterator[FaultRun]:
    proxy.reset()
    run = FaultRun(proxy, pushed_image, tmp_path, fault_row)
    yield run
    run.row.injected = {**proxy.stats(), **run.row.injected}


def blob(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest.removeprefix("sha256:")


def check_store(root: Path) -> set[str]:
    """Every stored blob hashes to its name; returns the names."""
    names = set()
    for path in (root / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, path
        names.add("sha256:" + path.name)
    return names


def range_start(entry: LogEntry) -> int | None:
    if entry.range is None:
        return None
    assert entry.range.startswith("bytes=") and entry.range.endswith("-"), entry.range
    return int(entry.range[len("bytes=") : -1])


def gap_after(log: list[LogEntry], first: LogEntry) -> float:
    """Seconds from `first` to the next request for the same path."""
    later = [e for e in log if e.path == first.path and e.t > first.t]
    return later[0].t - first.t


# Cuts, short bodies, Range ----------------------------------------------------


def test_cut_connection_resumes_with_range(faults: FaultRun) -> None:
    faults.proxy.add("cut", path=faults.big, bytes=MIB)
    faults.pull()
    first, second = faults.big_requests()
    assert first.range is None
    start = range_start(second)
    # The RST may drop bytes that were in flight: resumed where they ended.
    assert start is not None and 0 < start <= MIB
    assert second.status == 206


def test_short_body_resumes_at_its_exact_end(faults: FaultRun) -> None:
    faults.proxy.add("short_body", path=faults.big, bytes=777_777)
    faults.pull()
    first, second = faults.big_requests()
    assert (first.sent, range_start(second), second.status) == (777_777, 777_777, 206)


def test_ignored_range_starts_over_from_zero(faults: FaultRun) -> None:
    faults.proxy.add("short_body", path=faults.big, bytes=MIB)
    faults.proxy.add("ignore_range", path=faults.big, skip=1)
    faults.pull()
    first, second = faults.big_requests()
    assert first.sent == MIB
    # imgpull asked to resume; the server sent 200 and the whole blob.
    assert range_start(second) == MIB
    assert second.status == 200
    assert second.sent == len(faults.image.image.blob(faults.big))


def test_short_manifest_body_is_retried(faults: FaultRun) -> None:
    """The httpx side: a manifest cut short under its Content-Length."""
    faults.proxy.add("short_body", path="/manifests/", bytes=100)
    faults.pull()
    first, second = faults.proxy.requests("/manifests/")
    assert (first.sent, second.range, second.status) == (100, None, 200)


def test_bad_rules_are_refused(proxy: FaultProxy) -> None:
    with pytest.raises(httpx.HTTPStatusError, match="400"):
        proxy.add("melt", path="x")
    with pytest.raises(httpx.HTTPStatusError, match="400"):
        proxy.add("cut", path="(unclosed")


def test_over_long_partial_starts_over(faults: FaultRun) -> None:
    """A partial file longer than the blob can never verify: dropped, the
    download starts at 0 (no Range)."""
    size = len(faults.image.image.blob(faults.big))
    root = faults.tmp / f"store{faults.row.pulls}"
    ingest = root / "ingest" / "sha256"
    ingest.mkdir(parents=True)
    (ingest / faults.big.removeprefix("sha256:")).write_bytes(b"x" * (size + 100))
    faults.row.injected["over-long partial (local)"] = 1
    faults.pull()
    [only] = faults.big_requests()
    assert only.range is None


# Digest mismatches -------------------------------------------------------------


def test_flipped_byte_on_a_fresh_download_is_a_hard_error(faults: FaultRun) -> None:
    faults.proxy.add("flip", path=faults.big, offsets=[1000])
    root = faults.pull_fails(DigestMismatchError, faults.big)
    assert len(faults.big_requests()) == 1  # not retried
    assert not blob(root, faults.big).exists()


def test_flipped_byte_after_a_resume_starts_over_once(faults: FaultRun) -> None:
    faults.proxy.add("short_body", path=faults.big, bytes=MIB)
    faults.proxy.add("flip", path=faults.big, offsets=[10], skip=1)
    faults.pull()
    assert [range_start(e) for e in faults.big_requests()] == [None, MIB, None]


def test_flipped_bytes_after_resume_and_restart_give_up(faults: FaultRun) -> None:
    faults.proxy.add("short_body", path=faults.big, bytes=MIB)
    faults.proxy.add("flip", path=faults.big, offsets=[10], skip=1, count=2)
    faults.pull_fails(DigestMismatchError, faults.big)
    assert [range_start(e) for e in faults.big_requests()] == [None, MIB, None]


# Stalls and trickles --------------------------------------------------------------


def test_stall_is_detected_and_resumed(faults: FaultRun) -> None:
    faults.proxy.add("stall", path=faults.big, after=512 * 1024)
    faults.pull(stall=QUICK_STALL)
    first, second = faults.big_requests()
    assert range_start(second) == 512 * 1024
    # Without detection the proxy would hold the body for 300 s.
    assert gap_after(faults.proxy.log(), first) < 20


def test_trickle_is_detected_and_resumed(faults: FaultRun) -> None:
    # 4 KB/s is under the 32 KiB/s floor, yet no read ever waits long.
    faults.proxy.add("trickle", path=faults.big, after=256 * 1024, rate=4000)
    faults.pull(stall=QUICK_STALL)
    first, second = faults.big_requests()
    start = range_start(second)
    assert start is not None and start >= 256 * 1024
    assert gap_after(faults.proxy.log(), first) < 20


def test_endless_stall_fails_with_a_clear_error(faults: FaultRun) -> None:
    faults.proxy.add("stall", path=faults.big, after=512 * 1024, count=None)
    root = faults.pull_fails(
        FetchError,
        rf"download of {faults.big} stalled: under 32 KiB/s for 1 s",
        stall=QUICK_STALL,
        retry=RetryPolicy(attempts=2, first_delay=0.05),
    )
    assert [range_start(e) for e in faults.big_requests()] == [None, 512 * 1024]
    # Each answer stalls 512 KiB into its body; all the bytes received are
    # kept for the next pull to resume.
    partial = root / "ingest" / "sha256" / faults.big.removeprefix("sha256:")
    assert partial.stat().st_size == 2 * 512 * 1024


def test_short_pause_is_not_a_stall(faults: FaultRun) -> None:
    faults.proxy.add("stall", path=faults.big, after=512 * 1024, seconds=0.3)
    faults.pull(stall=StallPolicy(min_rate=32 * 1024, window=2.0))
    assert len(faults.big_requests()) == 1


# Statuses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "target"),
    [(500, "blob"), (502, "blob"), (503, "blob"), (502, "manifest"), (500, "manifest")],
)
def test_server_errors_are_retried(faults: FaultRun, status: int, target: str) -> None:
    # A pull makes no ping: its first request, the manifest's, stands for it.
    path = {"blob": faults.big, "manifest": "/manifests/"}[target]
    faults.proxy.add("status", path=path, status=status, count=2)
    faults.pull()
    hits = [e for e in faults.proxy.log() if e.method == "GET" and re.search(path, e.path)]
    assert [e.status for e in hits] == [status, status, 200]


def test_permanent_500_gives_up_after_five_attempts(faults: FaultRun) -> None:
    faults.proxy.add("status", path=faults.big, status=500, count=None)
    faults.pull_fails(RegistryError, r"answered 500 Internal Server Error for blob")
    assert len(faults.big_requests()) == FAST.attempts  # no retry storm


def test_cli_permanent_503_exits_1(faults: FaultRun) -> None:
    faults.proxy.add("status", path=faults.big, status=503, retry_after=0, count=None)
    root = faults.tmp / "cli"
    faults.row.pulls += 1
    proc = run_cli("pull", faults.ref(), "--root", str(root), timeout=120)
    assert proc.returncode == 1, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert "503" in line and faults.big in line, line
    assert len(faults.big_requests()) == RetryPolicy().attempts
    check_store(root)
    faults.row.right += 1


def test_429_retry_after_seconds_is_honoured(faults: FaultRun) -> None:
    faults.proxy.add("status", path=faults.big, status=429, retry_after=2)
    faults.pull()
    first, second = faults.big_requests()
    assert (first.status, second.status) == (429, 200)
    assert gap_after(faults.proxy.log(), first) >= 2 - CLOCK_SLACK


def test_429_retry_after_http_date_is_honoured(faults: FaultRun) -> None:
    # On the manifest: the httpx side of imgpull parses the date.
    faults.proxy.add("status", path="/manifests/", status=429, retry_after=2, date=True)
    faults.pull()
    first, second = faults.proxy.requests("/manifests/")
    assert (first.status, second.status) == (429, 200)
    assert gap_after(faults.proxy.log(), first) >= 2 - CLOCK_SLACK


def test_retry_after_is_capped(faults: FaultRun) -> None:
    faults.proxy.add("status", path=faults.big, status=503, retry_after=3600)
    faults.pull(retry=RetryPolicy(first_delay=0.05, max_retry_after=0.5))
    first, _ = faults.big_requests()
    assert gap_after(faults.proxy.log(), first) >= 0.5 - CLOCK_SLACK


# Connections closed before an answer ------------------------------------------------


@pytest.mark.parametrize("target", ["blob", "manifest"])
def test_close_before_headers_is_retried(faults: FaultRun, target: str) -> None:
    path = faults.big if target == "blob" else "/manifests/"
    faults.proxy.add("close_before_headers", path=path, count=2)
    faults.pull()
    hits = [e for e in faults.proxy.log() if path in e.path and e.method == "GET"]
    assert [e.status for e in hits] == [None, None, 200]
