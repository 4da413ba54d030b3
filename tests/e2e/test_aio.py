"""imgpull.AsyncClient (issue 10): pulls awaited on asyncio, progress on the
loop, cancellation by task.cancel(), asyncio.timeout() and wait_for().

Against the scheduler tests' images (support.scheduling) on a registry and
throttling relay of this module's own, and for the cancel tests a faster relay of this module's
own: what is asserted is seen outside imgpull, in the registry's access log
and the store's files.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from support.images import LayoutCache, push, random_layer
from support.registry import RegistryServer
from support.scheduling import TIMEOUT, Images, assert_resumes, partials, serve_images
from support.throttle import ThrottledRelay

import imgpull
from imgpull.progress import (
    DOWNLOAD_COMPLETE,
    DOWNLOADING,
    EXTRACTING,
    PULL_COMPLETE,
    PULLING_FS_LAYER,
    VERIFYING,
    WAITING,
    ProgressEvent,
)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, layout_cache: LayoutCache) -> Iterator[Images]:
    """The scheduler tests' images (support.scheduling), on a registry of this module's own."""
    with serve_images(tmp_path_factory.mktemp("sched-registry"), layout_cache) as images:
        yield images


@pytest.fixture
def log(images: Images) -> Images:
    """The module's images, with the registry's access log cleared."""
    return images.cleared()


def _pull_id(root: Path, ref: str) -> str:
    """A fresh Client's pull of `ref` into `root`: the image ID."""
    with imgpull.Client(root) as client:
        return client.pull(ref).id


# The image the cancel tests stop: ~2 s through its relay, which is fast
# enough that a transfer left running grows its partial file (written in
# 1 MiB steps) by more than a step in 0.5 s.
BIG = tuple(random_layer(6_000_000, seed=seed) for seed in (731, 732, 733))
BIG_RATE = 9_000_000
# When the timeout tests stop it: long after its first bytes, and at most
# half-way (the relay makes it last at least 2 s).
STOP_AFTER = 1.0


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory, layout_cache: LayoutCache) -> Iterator[Images]:
    """A registry of its own serving BIG as test/slow:v1 (so that the
    scheduler tests' helpers apply), behind a relay at BIG_RATE."""
    with (
        RegistryServer(workdir=tmp_path_factory.mktemp("aio-registry")) as registry,
        ThrottledRelay(registry.host, rate=BIG_RATE) as relay,
    ):
        image = layout_cache.get(BIG, ref="aio-big")
        push(image, registry, "test/slow:v1", "oci")
        yield Images(registry, relay, [], {}, image)


# Docker's statuses of one layer, in the order they come (Downloading repeats).
LAYER_ORDER = [
    PULLING_FS_LAYER,
    WAITING,
    DOWNLOADING,
    VERIFYING,
    DOWNLOAD_COMPLETE,
    EXTRACTING,
    PULL_COMPLETE,
]


def _run(main: Awaitable[object]) -> None:
    """asyncio.run, bounded so that a hung test fails."""

    async def bounded() -> None:
        await asyncio.wait_for(main, TIMEOUT)

    asyncio.run(bounded())


def _assert_docker_order(events: list[ProgressEvent], layers: list[str]) -> None:
    """Every layer went through docker's statuses in order, first to last."""
    labels = {d[7:19] for d in layers}
    for label in labels:
        statuses = [e.status for e in events if e.id == label]
        ranks = [LAYER_ORDER.index(s) for s in statuses]
        assert ranks == sorted(ranks), statuses
        assert statuses[0] == PULLING_FS_LAYER and statuses[-1] == PULL_COMPLETE, statuses
    assert events[-1].status.startswith("Status: Downloaded newer image for ")


def test_pull_returns_the_image_and_calls_back_on_the_loop(log: Images, tmp_path: Path) -> None:
    image = log.shared["a"]
    ref = f"{log.registry.host}/test/shared-a:v1"
    seen: list[tuple[int, ProgressEvent]] = []

    async def main() -> None:
        loop_thread = threading.get_ident()
        async with imgpull.AsyncClient(tmp_path) as client:
            pulled = await client.pull(
                ref, progress=lambda e: seen.append((threading.get_ident(), e))
            )
            assert pulled.id == image.config_digest
            assert await client.resolve(ref) == image.config_digest
            [row] = await client.images()
            assert row.image_id == image.config_digest
            # The other local queries, in a thread as well.
            await client.tag(ref, "local/copy:1")
            assert (await client.inspect("local/copy:1"))["Id"] == image.config_digest
            removed = await client.remove("local/copy:1")
            assert [str(r) for r in removed] == ["Untagged: local/copy:1"]
        assert {thread for thread, _ in seen} == {loop_thread}

    _run(main())
    _assert_docker_order([e for _, e in seen], image.layer_digests)


def test_failing_callback_stops_the_pull_with_its_error(log: Images, tmp_path: Path) -> None:
    def fussy(event: ProgressEvent) -> None:
        raise RuntimeError("callback failed")

    async def main() -> None:
        async with imgpull.AsyncClient(tmp_path) as client:
            with pytest.raises(RuntimeError, match="callback failed"):
                await client.pull(f"{log.registry.host}/test/shared-a:v1", progress=fussy)

    _run(main())


def test_stream_pull_yields_docker_statuses_then_the_image(log: Images, tmp_path: Path) -> None:
    image = log.shared["b"]
    events: list[ProgressEvent] = []

    async def main() -> None:
        # Through the relay: ~1 s of transfers, so byte counts are reported.
        async with (
            imgpull.AsyncClient(tmp_path) as client,
            client.stream_pull(f"{log.relay.host}/test/shared-b:v1") as stream,
        ):
            events.extend([event async for event in stream])
            assert stream.image.id == image.config_digest

    _run(main())
    _assert_docker_order(events, image.layer_digests)
    assert any(e.status == DOWNLOADING for e in events)


def test_stream_pull_coalesces_byte_counts_for_a_slow_reader(log: Images, tmp_path: Path) -> None:
    """Events not read yet keep every status, but one byte count a layer."""
    image = log.shared["a"]
    events: list[ProgressEvent] = []

    async def main() -> None:
        async with (
            imgpull.AsyncClient(tmp_path) as client,
            client.stream_pull(f"{log.relay.host}/test/shared-a:v1") as stream,
        ):
            while not stream.done:  # read nothing until the pull has ended
                await asyncio.sleep(0.05)
            events.extend([event async for event in stream])
            assert stream.image.id == image.config_digest

    _run(main())
    _assert_docker_order(events, image.layer_digests)
    for label in {e.id for e in events if e.id is not None}:
        assert [e.status for e in events if e.id == label].count(DOWNLOADING) <= 1


def test_stream_pull_raises_the_pull_error(log: Images, tmp_path: Path) -> None:
    async def main() -> None:
        async with imgpull.AsyncClient(tmp_path) as client:
            stream = client.stream_pull(f"{log.registry.host}/test/missing:v1")
            with pytest.raises(imgpull.ManifestUnknownError):
                async with stream:
                    async for _ in stream:
                        pass
            with pytest.raises(imgpull.ImgpullError, match="not finished"):
                stream.image  # noqa: B018

    _run(main())


async def _cancel_task(client: imgpull.AsyncClient, ref: str) -> float:
    """task.cancel() once bytes flow. Each interrupt returns the seconds from
    the cancel to the coroutine's end."""
    flowing = asyncio.Event()

    def progress(event: ProgressEvent) -> None:
        if event.status == DOWNLOADING and event.current:
            flowing.set()

    task = asyncio.create_task(client.pull(ref, progress=progress))
    await flowing.wait()
    start = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return time.monotonic() - start


async def _asyncio_timeout(client: imgpull.AsyncClient, ref: str) -> float:
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(STOP_AFTER):
            await client.pull(ref)
    return time.monotonic() - start - STOP_AFTER


async def _wait_for_pull_many(client: imgpull.AsyncClient, ref: str) -> float:
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.pull_many([ref]), STOP_AFTER)
    return time.monotonic() - start - STOP_AFTER


async def _leave_stream_early(client: imgpull.AsyncClient, ref: str) -> float:
    # As leaving httpx's `async with client.stream(...)`: the pull is cancelled.
    async with client.stream_pull(ref) as events:
        async for event in events:
            if event.status == DOWNLOADING and event.current:
                break
        start = time.monotonic()
    return time.monotonic() - start


@pytest.mark.parametrize(
    "interrupt",
    [_cancel_task, _asyncio_timeout, _wait_for_pull_many, _leave_stream_early],
    ids=["task-cancel", "asyncio-timeout", "wait-for-pull-many", "stream-left-early"],
)
def test_cancel_stops_the_transfers_and_the_next_pull_resumes(
    big: Images,
    tmp_path: Path,
    interrupt: Callable[[imgpull.AsyncClient, str], Awaitable[float]],
) -> None:
    """The slowed pull (~2 s) is stopped: the coroutine ends within a
    second or so, nothing more is written, and a fresh pull resumes the
    partial downloads (206)."""
    big.registry.settled_request_log()
    big.registry.clear_request_log()

    async def main() -> dict[str, int]:
        async with imgpull.AsyncClient(tmp_path) as client:
            # ~1 s expected; generous for a loaded machine.
            assert await interrupt(client, big.slow_ref()) < 3.0
            # Stopped by the cancel itself, not by the Client's close.
            kept = partials(tmp_path)
            assert kept
            await asyncio.sleep(0.5)
            assert partials(tmp_path) == kept
            return kept

    kept = asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    assert_resumes(big, tmp_path, kept, _pull_id)


def test_pull_many_returns_results_in_order_with_errors_in_place(
    log: Images, tmp_path: Path
) -> None:
    host = log.registry.host
    refs = [f"{host}/test/shared-a:v1", f"{host}/test/missing:v1", f"{host}/test/shared-b:v1"]

    async def main() -> None:
        async with imgpull.AsyncClient(tmp_path) as client:
            first, missing, second = await client.pull_many(refs)
        assert isinstance(first, imgpull.Image) and first.id == log.shared["a"].config_digest
        assert isinstance(missing, imgpull.ManifestUnknownError)
        assert isinstance(second, imgpull.Image) and second.id == log.shared["b"].config_digest

    _run(main())


def test_concurrent_pulls_fetch_shared_blobs_once(log: Images, tmp_path: Path) -> None:
    a, b = log.shared["a"], log.shared["b"]
    host = log.relay.host  # slowed, so that the two pulls overlap

    async def main() -> None:
        async with imgpull.AsyncClient(tmp_path) as client:
            first, second = await asyncio.gather(
                client.pull(f"{host}/test/shared-a:v1"), client.pull(f"{host}/test/shared-b:v1")
            )
        assert (first.id, second.id) == (a.config_digest, b.config_digest)

    _run(main())
    gets = log.blob_gets()
    for digest in a.blob_digests | b.blob_digests:
        assert [s for d, s in gets if d == digest] == [200], digest


def test_aclose_cancels_the_pulls_in_progress(log: Images, tmp_path: Path) -> None:
    async def main() -> None:
        client = imgpull.AsyncClient(tmp_path)
        task = asyncio.create_task(client.pull(log.slow_ref()))
        await asyncio.sleep(0.5)
        await client.aclose()
        with pytest.raises(imgpull.PullCancelledError, match="closed"):
            await task

    _run(main())
    assert_resumes(log, tmp_path, partials(tmp_path), _pull_id)
