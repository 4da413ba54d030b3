"""One big blob over several connections (issue 17, "Many connections for
one big blob"), through the fault proxy in front of a real registry.

The proxy paces every blob body per connection (its `pace` fault: a CDN
edge or proxy capping each connection), so that one stream is slow and the
layer is split into Range requests; the split threshold is lowered to
4 MiB by the Client option so that layers of a few MiB split. Faults aimed
at the chunk requests only (`ranged=True`: a closed `bytes=A-B` Range) show
each fallback: a cut mid-chunk, Range ignored, a 200 instead of a 206, a
wrong Content-Range, one chunk's bytes flipped. The proxy's log (status,
Range, body bytes sent, when each request held its connection) and the
registry's access log show what went over the wire.
"""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.faultproxy import FaultProxy, LogEntry
from support.hostile import HostileRegistry
from support.images import ImageInfo, LayoutCache, push, random_layer
from support.registry import RegistryServer

import imgpull
import imgpull.transfer
from imgpull.retry import DEFAULT_CONNECTIONS_PER_LAYER, RetryPolicy, StallPolicy

REPO = "test/ranges"
MIB = 1 << 20
# Two layers above the lowered threshold: the big one is where faults aim.
LAYERS = (random_layer(12 * MIB, seed=1701), random_layer(6 * MIB, seed=1702))
# One connection's cap: one stream of the big layer takes ~3 s, four ~0.8 s.
PACE = 4_000_000
THRESHOLD = 4 * MIB
FAST = RetryPolicy(first_delay=0.05, max_delay=0.2)
CLOSED_RANGE = re.compile(r"bytes=(\d+)-(\d+)$")
# Bytes sent past the end of a stream the client stopped (in flight).
SLACK = 2 * MIB


@dataclass(frozen=True)
class Ranges:
    registry: RegistryServer
    proxy: FaultProxy
    image: ImageInfo

    @property
    def big(self) -> str:
        return self.image.layer_digests[0]

    @property
    def big_size(self) -> int:
        return self.image.blob_path(self.big).stat().st_size

    def ref(self, *, direct: bool = False) -> str:
        host = self.registry.host if direct else self.proxy.host
        return f"{host}/{REPO}:v1"

    def paced(self) -> None:
        """Every layer body at PACE bytes/s per connection."""
        for digest in self.image.layer_digests:
            self.proxy.add("pace", path=digest, rate=PACE, count=None)

    def client(self, root: Path, **options: Any) -> imgpull.Client:
        options.setdefault("retry", FAST)
        options.setdefault("split_threshold", THRESHOLD)
        options.setdefault("max_concurrent_downloads", 4)
        return imgpull.Client(root, **options)

    def pull(self, root: Path, **options: Any) -> imgpull.Client:
        """Pull (through the proxy), check every stored byte; returns the
        (closed) Client for its counters."""
        with self.client(root, **options) as client:
            image = client.pull(self.ref())
        assert image.id == self.image.config_digest
        check_store(root, self.image)
        return client

    def requests(self, digest: str) -> list[LogEntry]:
        return self.proxy.requests(f"/blobs/{digest}")


@pytest.fixture(scope="module")
def ranges_env(
    tmp_path_factory: pytest.TempPathFactory, layout_cache: LayoutCache
) -> Iterator[Ranges]:
    """The image on a registry of this module's own (its access log is
    ours), behind a fault proxy."""
    image = layout_cache.get(LAYERS, ref="ranges")
    with (
        RegistryServer(workdir=tmp_path_factory.mktemp("ranges-registry")) as registry,
        FaultProxy(registry.host) as proxy,
    ):
        push(image, registry, f"{REPO}:v1", "oci")
        yield Ranges(registry, proxy, image)


@pytest.fixture
def env(ranges_env: Ranges) -> Ranges:
    ranges_env.proxy.reset()
    ranges_env.registry.settled_request_log()
    ranges_env.registry.clear_request_log()
    return ranges_env


def check_store(root: Path, image: ImageInfo) -> None:
    """Every stored blob hashes to its name; the layers are the image's; no
    partial file or chunk record is left."""
    blobs = root / "blobs" / "sha256"
    for path in blobs.iterdir():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, path
    for digest in image.layer_digests:
        assert (blobs / digest.removeprefix("sha256:")).read_bytes() == image.blob(digest)
    assert [p.name for p in (root / "ingest" / "sha256").iterdir() if p.suffix != ".lock"] == []


def chunk_gets(entries: list[LogEntry]) -> list[LogEntry]:
    """The requests for one chunk (a closed Range)."""
    return [e for e in entries if e.range and CLOSED_RANGE.match(e.range)]


def span(entry: LogEntry) -> tuple[int, int]:
    """A chunk request's first and last byte."""
    m = CLOSED_RANGE.match(entry.range or "")
    assert m is not None, entry
    return int(m[1]), int(m[2])


def max_concurrent(entries: list[LogEntry]) -> int:
    """The most requests holding a connection at once (arrival to last
    body byte sent)."""
    events = []
    for e in entries:
        events.append((e.t, 1))
        events.append((e.last if e.last is not None else e.t, -1))
    most = now = 0
    for _, step in sorted(events, key=lambda x: (x[0], x[1])):
        now += step
        most = max(most, now)
    return most


def blob_bytes_served(registry: RegistryServer, digest: str) -> tuple[int, list[int]]:
    """Body bytes of `digest` the registry sent (its access log), and the statuses."""
    gets = [
        e
        for e in registry.settled_request_log()
        if e.method == "GET" and e.path.endswith(f"/blobs/{digest}")
    ]
    return sum(e.size for e in gets), [e.status for e in gets]


# Splitting, and when not ----------------------------------------------------


def test_slow_connection_is_split_into_ranges(env: Ranges, tmp_path: Path) -> None:
    env.paced()
    started = time.monotonic()
    client = env.pull(tmp_path / "store")
    took = time.monotonic() - started
    gets = env.requests(env.big)
    chunks = chunk_gets(gets)
    assert len(chunks) >= 2, gets
    assert all(c.status == 206 for c in chunks)
    assert max(span(c)[1] for c in chunks) == env.big_size - 1
    # Each byte once, but what was in flight when the first stream was
    # stopped at the first chunk (it asked for the rest of the blob).
    assert env.big_size <= sum(c.sent for c in gets) < env.big_size + SLACK
    assert client._transfers.split >= 1
    # A chunk read to its end gives its connection back: the next chunk
    # goes on a kept-alive connection, not a new one (a round trip each).
    conns = [c.conn for c in chunks]
    print(f"{len(chunks)} chunk requests on connections {conns}")
    assert len(set(conns)) < len(chunks)
    # The registry served them as ranges too (its byte counts include what
    # the proxy buffered of the stopped first stream).
    _, statuses = blob_bytes_served(env.registry, env.big)
    assert statuses.count(206) >= 2
    print(f"split pull of two layers at {PACE / 1e6:g} MB/s per connection: {took:.2f} s")


def test_fast_link_is_not_split(
    tmp_path: Path, fresh_registry: RegistryServer, layout_cache: LayoutCache
) -> None:
    """Straight from the registry (loopback, no cap), one stream fills the
    link: the rate is judged and the layer is not split."""
    image = layout_cache.get((random_layer(64 * MIB, seed=1703),), ref="ranges-fast")
    push(image, fresh_registry, f"{REPO}:fast", "oci")
    with imgpull.Client(tmp_path / "store", split_threshold=THRESHOLD) as client:
        client.pull(fresh_registry.ref(f"{REPO}:fast"))
    judged = [(round(r / 1e6), round(w, 2)) for r, w in client._transfers.rates]
    # Judged, or done before its probe could judge it (a quiet machine
    # moves 64 MiB over loopback in less than the probe's 0.2 s).
    print(f"one stream from the registry (MB/s, share of time waiting): {judged}")
    assert client._transfers.split == 0
    gets = [e for e in fresh_registry.settled_request_log() if "/blobs/" in e.path]
    assert [e.status for e in gets if e.method == "GET"] == [200, 200]  # config, layer


def test_one_connection_per_layer_is_not_split(env: Ranges, tmp_path: Path) -> None:
    env.paced()
    client = env.pull(tmp_path / "store", max_connections_per_layer=1)
    assert client._transfers.split == 0
    assert chunk_gets(env.requests(env.big)) == []


@pytest.mark.parametrize(("slots", "per_layer", "room"), [(3, 4, 12), (5, 4, 16), (1, 2, 2)])
def test_per_host_limit_holds(
    env: Ranges, tmp_path: Path, slots: int, per_layer: int, room: int
) -> None:
    """Two big layers that both split when they may: never more layers at
    once than the download slots, nor more connections to the host than its
    room (the slots x the connections per layer, at most 16)."""
    env.paced()
    client = env.pull(
        tmp_path / "store", max_concurrent_downloads=slots, max_connections_per_layer=per_layer
    )
    layers = [e for d in env.image.layer_digests for e in env.requests(d)]
    assert client._transfers.connections_per_host == room
    assert client._transfers.split >= 1
    assert len(chunk_gets(layers)) >= 2
    print(f"{slots} slots x {per_layer}: {max_concurrent(layers)} connections at most")
    assert max_concurrent(layers) <= room
    assert client._transfers.peak <= slots


# Faults at the chunks ---------------------------------------------------------


def test_cut_mid_chunk_is_resumed(env: Ranges, tmp_path: Path) -> None:
    env.proxy.add("cut", path=env.big, ranged=True, bytes=300_000)
    env.paced()
    env.pull(tmp_path / "store")
    assert env.proxy.stats().get("cut") == 1
    chunks = chunk_gets(env.requests(env.big))
    cut = next(c for c in chunks if c.fault == "cut")
    a, b = span(cut)
    # The rest of the cut chunk was asked for again, from where its bytes ended.
    again = [c for c in chunks if c.t > cut.t and a < span(c)[0] <= a + 300_000]
    assert again and all(span(c)[1] <= b for c in again)


@pytest.mark.parametrize(
    ("fault", "status"),
    [("ignore_range", 200), ("as_200", 200), ("bad_range", 206)],
    ids=["range-ignored", "200-not-206", "wrong-content-range"],
)
def test_chunk_answered_wrong_falls_back_to_one_stream(
    env: Ranges, tmp_path: Path, fault: str, status: int
) -> None:
    env.proxy.add(fault, path=env.big, ranged=True, count=None)
    env.paced()
    env.pull(tmp_path / "store")
    gets = env.requests(env.big)
    wrong = [c for c in chunk_gets(gets) if c.fault == fault]
    # A chunk request the fallback cancelled before the proxy had its answer
    # was cut unanswered (no status, no byte); every answered one had the fault.
    answered = [c for c in wrong if c.status is not None]
    assert answered and all(c.status == status for c in answered)
    assert all(c.sent == 0 for c in wrong if c.status is None)
    # Nothing more was asked as chunks after the fallback than the other
    # connections had under way (one each at most, whatever the machine's
    # load): the rest came as one stream.
    first = min(c.t for c in wrong)
    others = DEFAULT_CONNECTIONS_PER_LAYER - 1
    assert len([c for c in chunk_gets(gets) if c.t > first]) <= others
    # A wrong answer was never written into the file: the blob is right
    # (checked by pull()) without a digest mismatch costing a second download.
    assert sum(c.sent for c in gets if c.fault is None) <= env.big_size


def test_flipped_chunk_fails_digest_and_is_fetched_again(env: Ranges, tmp_path: Path) -> None:
    env.proxy.add("flip", path=env.big, ranged=True, offsets=[1000], count=1)
    env.paced()
    env.pull(tmp_path / "store")
    gets = env.requests(env.big)
    assert env.proxy.stats().get("flip") == 1
    flipped = next(c for c in gets if c.fault == "flip")
    # The blob came again, from its start, as one stream.
    later = [c for c in gets if c.t > flipped.t and c.range is None]
    assert later and later[-1].status == 200 and later[-1].sent == env.big_size


# kill -9 --------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    import imgpull
    root, ref, threshold = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with imgpull.Client(root, split_threshold=threshold, max_concurrent_downloads=4) as c:
        c.pull(ref)
    """
)


def _record_chunks(record: Path) -> int:
    """Bytes of the finished chunks a record lists."""
    if not record.exists():
        return 0
    total = 0
    for line in record.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] != "prefix" and all(p.isdigit() for p in parts):
            total += int(parts[1]) - int(parts[0])
    return total


def test_kill9_mid_split_keeps_finished_chunks(env: Ranges, tmp_path: Path) -> None:
    root = tmp_path / "store"
    env.paced()
    record = root / "ingest" / "sha256" / (env.big.removeprefix("sha256:") + ".chunks")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(root), env.ref(), str(THRESHOLD)])
    try:
        deadline = time.monotonic() + 30
        # Killed once the first chunks are finished, in the middle of the
        # next ones (their bytes partly written: holes in the file).
        while _record_chunks(record) < MIB and child.poll() is None:
            assert time.monotonic() < deadline, "the layer was never split"
            time.sleep(0.02)
        time.sleep(0.15)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    kept = _record_chunks(record)
    assert kept >= MIB, "the pull ended before it could be killed"
    time.sleep(0.3)  # the proxy notices the dead connections
    env.registry.settled_request_log()
    env.registry.clear_request_log()
    env.proxy.reset()
    env.paced()
    # One connection: every request of the rerun is for bytes not yet there.
    env.pull(root, max_connections_per_layer=1)
    served, _ = blob_bytes_served(env.registry, env.big)
    print(f"kept {kept} bytes of finished chunks; the rerun fetched {served} of {env.big_size}")
    assert served <= env.big_size - kept
    assert all(e.range for e in env.requests(env.big))


# Slots, cancel, stalls ----------------------------------------------------------


def _one_layer_image(env: Ranges, layout_cache: LayoutCache, layer: Any, tag: str) -> str:
    """An image of `layer` alone pushed to the module's registry; its ref
    through the proxy."""
    image = layout_cache.get((layer,), ref=f"ranges-{tag}")
    push(image, env.registry, f"{REPO}-{tag}:v1", "oci")
    return f"{env.proxy.host}/{REPO}-{tag}:v1"


def _wait_split(client: imgpull.Client, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while client._transfers.split == 0:
        assert time.monotonic() < deadline, "never split"
        time.sleep(0.02)


def test_extra_connection_gives_its_slot_to_another_blob(
    env: Ranges, tmp_path: Path, layout_cache: LayoutCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two slots, room for two connections to the host: the big layer alone
    splits onto the second; another pull's layer then takes that room back
    at once (the chunk stops, its bytes kept) instead of waiting for the big
    layer to end."""
    monkeypatch.setattr(imgpull.transfer, "_CONNECTIONS_PER_HOST", 2)
    big = _one_layer_image(env, layout_cache, LAYERS[0], "one")
    small = _one_layer_image(env, layout_cache, random_layer(MIB, seed=1704), "small")
    env.proxy.add("pace", path=env.big, rate=PACE, count=None)
    ended: dict[str, float] = {}
    with env.client(tmp_path / "store", max_concurrent_downloads=2) as client:

        def pull(ref: str) -> None:
            client.pull(ref)
            ended[ref] = time.monotonic()

        first = threading.Thread(target=pull, args=(big,))
        first.start()
        _wait_split(client)
        pull(small)
        first.join(30)
        assert client._transfers.peak <= 2
    assert ended[small] < ended[big] - 0.5
    stored = tmp_path / "store" / "blobs" / "sha256" / env.big.removeprefix("sha256:")
    assert stored.read_bytes() == env.image.blob(env.big)
    layers = [e for e in env.proxy.log() if "/blobs/" in e.path and e.sent > 10_000]
    assert max_concurrent(layers) <= 2


def test_cancel_stops_every_chunk_connection(env: Ranges, tmp_path: Path) -> None:
    env.paced()
    token = imgpull.CancelToken()
    with env.client(tmp_path / "store") as client:
        done: list[BaseException] = []

        def pull() -> None:
            try:
                client.pull(env.ref(), cancel=token)
            except BaseException as exc:
                done.append(exc)

        thread = threading.Thread(target=pull)
        thread.start()
        _wait_split(client)
        time.sleep(0.2)
        cancelled = time.monotonic()
        token.cancel()
        thread.join(10)
        took = time.monotonic() - cancelled
    assert done and isinstance(done[0], imgpull.PullCancelledError)
    assert took < 2.0, took
    # No body byte went out after the cancel (give the proxy its moment).
    time.sleep(0.3)
    gets = env.requests(env.big)
    assert chunk_gets(gets)
    assert all(c.last is None or c.last < cancelled + 0.5 for c in gets)


def test_stalled_chunk_is_given_up_and_its_rest_fetched(env: Ranges, tmp_path: Path) -> None:
    """A chunk connection that goes silent is judged by the stall rule as
    any other, and the rest of its chunk comes on another connection."""
    env.proxy.add("stall", path=env.big, ranged=True, after=200_000)
    env.paced()
    env.pull(tmp_path / "store", stall=StallPolicy(min_rate=32 * 1024, window=1.0))
    assert env.proxy.stats().get("stall") == 1
    chunks = chunk_gets(env.requests(env.big))
    stalled = next(c for c in chunks if c.fault == "stall")
    a, b = span(stalled)
    assert any(c.t > stalled.t and a < span(c)[0] and span(c)[1] <= b for c in chunks)


def test_redirect_target_ignoring_range_gets_one_stream(env: Ranges, tmp_path: Path) -> None:
    """The registry redirects the blob (307) to a storage host, which paces
    each connection and ignores a chunk's Range: the chunks follow the
    redirect as the first stream did, and the 200 they get there makes the
    rest one stream."""
    registry = HostileRegistry()
    registry.start()
    try:
        registry.add_image(REPO, "v1", env.image)
        path = f"/v2/{REPO}/blobs/{env.big}"
        registry.redirects[path] = f"http://{env.proxy.host}{path}"
        env.proxy.add("ignore_range", path=env.big, ranged=True, count=None)
        env.paced()
        with env.client(tmp_path / "store") as client:
            client.pull(registry.ref(f"{REPO}:v1"))
        stored = tmp_path / "store" / "blobs" / "sha256" / env.big.removeprefix("sha256:")
        assert stored.read_bytes() == env.image.blob(env.big)
        asked = [s for s in registry.registry.seen() if s.target.startswith(path)]
    finally:
        registry.stop()
    at_storage = env.requests(env.big)
    ignored = [c for c in chunk_gets(at_storage) if c.fault == "ignore_range"]
    assert client._transfers.split >= 1
    assert ignored and all(c.status == 200 for c in ignored)
    # Every request for the blob was redirected, chunks included.
    assert len(asked) == len(at_storage) >= 2
