"""One bad registry cannot hold up the others (issue 16).

A bulk pull (Client.pull_many, the CLI's `imgpull pull A B C`) lists
references to a bad host before three good ones, on the real registry: the
bad host stalls its manifests (headers, then silence), answers `429
Retry-After: 10` for ever, trickles its layers above the stall rate, or (the
hostile registry) names a good image's layer and trickles it. Each time the
good references must finish while the bad host is still at it, within a
couple of seconds of their time alone (printed, asserted with headroom).

Each run is bounded: the good ones are waited for at most GOOD_WITHIN s,
then the run is cancelled; the bad host's faults end by themselves too.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.bulkimages import push_http
from support.cli import cli_env, imgpull_argv
from support.faultproxy import FaultProxy
from support.hostile import HostileRegistry
from support.images import ImageInfo, LayoutCache, random_layer
from support.registry import RegistryServer
from support.scheduling import partials

import imgpull
from imgpull.progress import ProgressEvent
from imgpull.transfer import TransferService

# The good references take a second or two alone; before the fix they took
# 40 s (429) or never finished (stall, trickle, shared transfer).
GOOD_WITHIN = 12.0
# The target is 2 s over their time alone; headroom for a loaded machine.
SLACK = 5.0
# A bad host's stall ends by itself after this long (so nothing hangs).
STALL = 20.0
TRICKLE_RATE = 30 * 1024  # above the stall detector's 16 KiB/s


@dataclass(frozen=True)
class Images:
    registry: RegistryServer
    good: tuple[str, ...]  # repo:tag of the three good images
    shared: str  # the digest of good-0's layer, which the hostile image names too
    slow: ImageInfo  # three layers of 1 MB
    hostile: ImageInfo  # good-0's layer and one of its own
    near: str  # repo:tag of an image with slow's first layer and one of its own
    bad_configs: tuple[str, ...]  # the config digests of fair/bad:t0..t3


@pytest.fixture(scope="module")
def images(registry: RegistryServer, layout_cache: LayoutCache) -> Images:
    good = [
        layout_cache.get((random_layer(300_000, seed=1600 + i),), ref=f"fair-good-{i}")
        for i in range(3)
    ]
    # Four images of their own (four configs, four config transfers).
    bad = [
        layout_cache.get((random_layer(2_000, seed=1630 + t),), ref=f"fair-bad-{t}")
        for t in range(4)
    ]
    slow = layout_cache.get(
        tuple(random_layer(1_000_000, seed=1610 + i) for i in range(3)), ref="fair-slow"
    )
    hostile = layout_cache.get(
        (random_layer(300_000, seed=1600), random_layer(2_000, seed=1620)), ref="fair-hostile"
    )
    with registry.client() as client:
        for i, image in enumerate(good):
            push_http(client, image, f"fair/good-{i}:v1")
        for t, image in enumerate(bad):
            push_http(client, image, f"fair/bad:t{t}")
        push_http(client, slow, "fair/slow:v1")
        near = layout_cache.get(
            (random_layer(1_000_000, seed=1610), random_layer(2_000, seed=1621)), ref="fair-near"
        )
        push_http(client, near, "fair/near:v1")
    return Images(
        registry,
        tuple(f"fair/good-{i}:v1" for i in range(3)),
        good[0].layer_digests[0],
        slow,
        hostile,
        "fair/near:v1",
        tuple(image.config_digest for image in bad),
    )


@dataclass
class Run:
    """A bulk pull watched from outside: when each reference's Status came."""

    start: float = field(default_factory=time.monotonic)
    finished: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, event: ProgressEvent) -> None:
        if event.status.startswith("Status: ") and len(event.refs) == 1:
            with self.lock:
                self.finished.setdefault(event.refs[0], time.monotonic() - self.start)

    def took(self, refs: Sequence[str]) -> float:
        """When the last of `refs` finished (seconds from the start)."""
        with self.lock:
            return max(self.finished[r] for r in refs)

    def wait(self, refs: Sequence[str], within: float) -> bool:
        deadline = self.start + within
        while time.monotonic() < deadline:
            with self.lock:
                if all(r in self.finished for r in refs):
                    return True
            time.sleep(0.05)
        return False


@dataclass
class Bulk:
    run: Run
    still_running: bool  # when the good ones had finished (the bad host's pulls)
    transfers: TransferService  # its counters: slots taken back, copies raced


def _bulk(root: Path, refs: list[str], good: list[str]) -> Bulk:
    """pull_many(refs) in a thread: once the `good` ones finished (or
    GOOD_WITHIN s), whether the run was still going; then it is cancelled."""
    run = Run()
    token = imgpull.CancelToken()
    with imgpull.Client(root) as c:
        thread = threading.Thread(
            target=c.pull_many, args=(refs,), kwargs={"progress": run.event, "cancel": token}
        )
        thread.start()
        try:
            done = run.wait(good, GOOD_WITHIN)
            still_running = thread.is_alive()
            assert done, f"the good references were not pulled in {GOOD_WITHIN} s: {run.finished}"
        finally:
            token.cancel()
            thread.join(STALL + 15)
        assert not thread.is_alive()
    return Bulk(run, still_running, c._transfers)


def _alone(root: Path, good: list[str]) -> float:
    """The good references' time alone (a bulk pull of them, a fresh store)."""
    return _bulk(root, good, good).run.took(good)


def _report(case: str, alone: float, mixed: float) -> None:
    print(f"{case}: good references alone {alone:.2f} s, beside the bad host {mixed:.2f} s")
    assert mixed < alone + SLACK, (alone, mixed)


@contextmanager
def _delayed(images: Images) -> Iterator[FaultProxy]:
    """The real registry behind a proxy holding each manifest body 1 s: the
    bad host's pulls are under way (their slots and transfers taken) when
    the good ones need theirs."""
    with FaultProxy(images.registry.host) as proxy:
        proxy.add("stall", path="/manifests/", after=0, seconds=1.0, count=None)
        yield proxy


@pytest.mark.parametrize("stalled", ["manifests", "configs"])
def test_a_stalling_host_holds_its_share_of_the_pull_workers(
    images: Images, tmp_path: Path, stalled: str
) -> None:
    """4 references to a host whose manifests, or configs, stall (headers,
    then silence) listed before 3 good ones: the good ones are pulled while
    those stall (neither the pull workers nor the config threads are all
    the bad host's)."""
    good = [images.registry.ref(r) for r in images.good]
    alone = _alone(tmp_path / "alone", good)
    configs = "|".join(images.bad_configs)
    path = "/fair/bad/manifests/" if stalled == "manifests" else configs
    with FaultProxy(images.registry.host) as bad:
        bad.add("stall", path=path, after=0, seconds=STALL, count=None)
        refs = [bad.ref(f"fair/bad:t{t}") for t in range(4)] + good
        bulk = _bulk(tmp_path / "mixed", refs, good)
        assert bulk.still_running  # the bad host's pulls were still stalled
        assert bad.stats().get("stall", 0) >= 2
    _report(f"stalled {stalled}", alone, bulk.run.took(good))


def test_a_host_answering_429_for_ever_holds_its_share_of_the_pull_workers(
    images: Images, tmp_path: Path
) -> None:
    """4 references answered `429 Retry-After: 10` for ever: their pulls
    sleep holding their host's share of the workers only."""
    good = [images.registry.ref(r) for r in images.good]
    alone = _alone(tmp_path / "alone", good)
    with FaultProxy(images.registry.host) as bad:
        bad.add("status", path="/fair/bad/", method=None, status=429, retry_after=10, count=None)
        refs = [bad.ref(f"fair/bad:t{t}") for t in range(4)] + good
        bulk = _bulk(tmp_path / "mixed", refs, good)
        assert bulk.still_running
        assert bad.stats().get("status 429 retry-after seconds", 0) >= 4
    _report("429", alone, bulk.run.took(good))


def test_a_trickling_host_holds_its_share_of_the_download_slots(
    images: Images, tmp_path: Path
) -> None:
    """A host trickling its 3 layers at 30 KiB/s (above the stall rate)
    took all 3 download slots first: a good host's layers get a slot back."""
    with _delayed(images) as proxy:
        good = [proxy.ref(r) for r in images.good]
        alone = _alone(tmp_path / "alone", good)
        with FaultProxy(images.registry.host) as bad:
            layers = "|".join(images.slow.layer_digests)
            bad.add("trickle", path=layers, rate=TRICKLE_RATE, count=None)
            refs = [bad.ref("fair/slow:v1"), *good]
            bulk = _bulk(tmp_path / "mixed", refs, good)
            assert bulk.still_running
            # The slow host had its 3 layers on the way (it held every slot)
            # and gave one back.
            assert len(bad.requests("/blobs/sha256:")) >= 3
            assert bulk.transfers.preempted >= 1
    _report("trickle", alone, bulk.run.took(good))


def test_a_hostile_host_trickling_a_shared_layer_cannot_hold_up_its_owner(
    images: Images, tmp_path: Path
) -> None:
    """A hostile registry names good-0's layer (and trickles every blob),
    listed first, so good-0 joins its transfer of that layer: after a grace
    good-0 fetches it from its own registry, which is stored, and the
    hostile transfer is stopped and its partial removed."""
    with _delayed(images) as proxy:
        good = [proxy.ref(r) for r in images.good]
        alone = _alone(tmp_path / "alone", good)
        proxy.reset()
        proxy.add("stall", path="/manifests/", after=0, seconds=1.0, count=None)
        with HostileRegistry() as hostile:
            hostile.add_image("fair/hostile", "v1", images.hostile)
            hostile.trickle = {"blob"}
            hostile.trickle_interval = 0.05
            hostile.registry.trickle_limit = STALL
            refs = [hostile.ref("fair/hostile:v1"), *good]
            root = tmp_path / "mixed"
            bulk = _bulk(root, refs, good)
            assert bulk.still_running
            assert bulk.transfers.raced >= 1
            shared = images.shared
            # The hostile host was asked for the shared layer first...
            assert any(s.target.endswith(shared) for s in hostile.registry.seen())
        # ...and good-0's own registry served it.
        own = [e for e in proxy.requests(shared) if e.status in (200, 206)]
        assert own, proxy.log()
    hexpart = shared.removeprefix("sha256:")
    with imgpull.Client(root) as client:
        assert client.store.content.exists(shared)
    # No partial of the shared layer is left, from either copy.
    assert not [name for name in partials(root) if name.startswith(hexpart)]
    _report("shared transfer", alone, bulk.run.took(good))


def test_a_shared_transfer_about_to_end_is_not_raced(images: Images, tmp_path: Path) -> None:
    """Another host's transfer of a shared layer of 1 MB, at 64 KiB every
    0.1 s (the proxy's pace), ~1.5 s: the pull joining it (~1 s in) waits
    for it, as it ends within the grace (or within another at its rate),
    rather than fetch a second copy."""
    shared = images.slow.layer_digests[0]
    with _delayed(images) as own, FaultProxy(images.registry.host) as other:
        other.add("trickle", path=shared, rate=65_536 * 10, count=None)
        refs = [other.ref("fair/slow:v1"), own.ref(images.near)]
        with imgpull.Client(tmp_path) as client:
            results = client.pull_many(refs, timeout=STALL)
            assert client._transfers.raced == 0
        assert all(isinstance(r, imgpull.Image) for r in results), results
        assert [e.status for e in other.requests(shared)] == [200]
        assert own.requests(shared) == []


def test_a_raced_copy_that_loses_is_stopped_and_removed(images: Images, tmp_path: Path) -> None:
    """Another host's transfer of a shared layer is silent for 3 s, then
    fast; the pull joined to it races it from its own registry, which
    trickles: the other copy is stored first, the raced one is stopped
    (its GET cut short) and its ingest file removed."""
    shared = images.slow.layer_digests[0]
    with _delayed(images) as own, FaultProxy(images.registry.host) as other:
        other.add("stall", path=shared, after=0, seconds=3.0, count=None)
        own.add("trickle", path=shared, rate=TRICKLE_RATE, count=None)
        refs = [other.ref("fair/slow:v1"), own.ref(images.near)]
        with imgpull.Client(tmp_path) as client:
            results = client.pull_many(refs, timeout=STALL)
            assert client._transfers.raced == 1
        assert all(isinstance(r, imgpull.Image) for r in results), results
        (raced,) = own.requests(shared)
        size = images.slow.blob_path(shared).stat().st_size
        assert raced.sent < size
        assert [(e.status, e.sent) for e in other.requests(shared)] == [(200, size)]
    assert list((tmp_path / "ingest" / "sha256").glob("*.side")) == []
    assert not [n for n in partials(tmp_path) if n.startswith(shared.removeprefix("sha256:"))]


def test_a_host_alone_uses_every_download_slot(images: Images, tmp_path: Path) -> None:
    """The common case keeps its speed: one registry's layers (~1 s each
    through the proxy) download 3 at once, no slot taken back."""
    with FaultProxy(images.registry.host) as proxy:
        layers = images.slow.layer_digests
        proxy.add("trickle", path="|".join(layers), rate=1_000_000, count=None)
        with imgpull.Client(tmp_path) as client:
            assert client.pull(proxy.ref("fair/slow:v1")).id == images.slow.config_digest
            assert client._transfers.peak == 3
            assert client._transfers.preempted == 0
        gets = [e for e in proxy.log() if e.method == "GET" and any(d in e.path for d in layers)]
    assert len(gets) == 3
    # Each layer's first byte was asked for before any layer's last one left.
    assert max(e.t for e in gets) < min(e.last or 0.0 for e in gets)


def test_the_cli_bulk_pull_goes_on_past_a_host_answering_429(
    images: Images, tmp_path: Path
) -> None:
    """`imgpull pull BAD... GOOD...`: the good ones are reported pulled while
    the bad host's are still waiting out its 429s; Ctrl-C then stops it."""
    good = [images.registry.ref(r) for r in images.good]
    with FaultProxy(images.registry.host) as bad:
        bad.add("status", path="/fair/bad/", method=None, status=429, retry_after=10, count=None)
        refs = [bad.ref(f"fair/bad:t{t}") for t in range(4)] + good
        proc = subprocess.Popen(
            imgpull_argv("pull", "--root", str(tmp_path), *refs),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        lines: list[str] = []
        stdout = proc.stdout
        assert stdout is not None
        reader = threading.Thread(target=lambda: lines.extend(x.rstrip("\n") for x in stdout))
        reader.start()
        try:
            deadline = time.monotonic() + GOOD_WITHIN
            wanted = {f"{r}: Status: Downloaded newer image for {r}" for r in good}
            while time.monotonic() < deadline and not wanted <= set(lines):
                time.sleep(0.1)
            assert wanted <= set(lines), lines
            assert proc.poll() is None  # the bad host's pulls still wait
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            reader.join(10)
            assert proc.stderr is not None
            proc.stderr.close()
