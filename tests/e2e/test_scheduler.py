"""One transfer service per Client (issue 10): one download limit across all
pulls, each blob fetched once, pull_many, cancel, timeout and close.

Against a real registry of this module's own (its access log is ours to
read); a throttling relay or the fault proxy slows it where a pull must last
long enough to overlap another or to be stopped in the middle of a blob.
What is asserted is observed outside imgpull: the registry's access log, the
proxy's request log, the files of the store.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.faultproxy import FaultProxy
from support.images import LayoutCache
from support.scheduling import TIMEOUT, Images, assert_resumes, partials, serve_images

import imgpull
from imgpull.progress import DOWNLOAD_COMPLETE, DOWNLOADING, VERIFYING, ProgressEvent


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, layout_cache: LayoutCache) -> Iterator[Images]:
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


def _run(target: object, *args: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
    thread.start()
    return thread


@pytest.mark.parametrize(
    "limits",
    [
        {"max_concurrent_downloads": 1},
        {"max_concurrent_downloads": 3, "max_concurrent_per_host": 1},
    ],
    ids=["per-client", "per-host"],
)
def test_one_download_slot_across_concurrent_pulls(
    images: Images, tmp_path: Path, limits: dict[str, int]
) -> None:
    """Four pulls in threads of one Client with one download slot (for the
    Client, or for the one registry host): the registry (behind the proxy)
    never serves two layers at once."""
    layers = [image.layer_digests[0] for image in images.four]
    with FaultProxy(images.registry.host) as proxy:
        # ~0.4 s a layer: four pulls at once would overlap for sure.
        proxy.add("trickle", path="|".join(layers), count=None, rate=1_000_000)
        errors: list[BaseException] = []
        with imgpull.Client(tmp_path, **limits) as client:

            def pull(i: int) -> None:
                try:
                    client.pull(proxy.ref(f"test/sched-{i}:v1"))
                except BaseException as exc:  # reported by the test thread
                    errors.append(exc)

            threads = [_run(pull, i) for i in range(4)]
            for t in threads:
                t.join(TIMEOUT)
            assert errors == []
            assert client._transfers.peak == 1  # its own count agrees
        gets = [e for e in proxy.log() if e.method == "GET" and any(d in e.path for d in layers)]
    assert sorted(e.path.rsplit("/", 1)[1] for e in gets) == sorted(layers)
    assert all(e.status == 200 and e.last is not None for e in gets)
    # Each layer's first byte was asked for after the previous one's last
    # byte left the proxy (one clock: the proxy's).
    spans = sorted((e.t, e.last or 0.0) for e in gets)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end


def test_pull_many_fetches_shared_blobs_once_in_order(log: Images, tmp_path: Path) -> None:
    a, b = log.shared["a"], log.shared["b"]
    host = log.relay.host  # slowed, so that the two pulls overlap
    refs = [f"{host}/test/shared-a:v1", f"{host}/test/missing:v1", f"{host}/test/shared-b:v1"]
    events: list[ProgressEvent] = []
    with imgpull.Client(tmp_path) as client:
        results = client.pull_many(refs, progress=events.append)
    first, missing, second = results
    assert isinstance(first, imgpull.Image) and first.id == a.config_digest
    assert isinstance(second, imgpull.Image) and second.id == b.config_digest
    assert isinstance(missing, imgpull.RegistryError)
    assert str(first.reference) == refs[0] and str(second.reference) == refs[2]
    gets = log.blob_gets()
    for digest in a.blob_digests | b.blob_digests:
        assert [s for d, s in gets if d == digest] == [200], digest
    assert len(gets) == len(a.blob_digests | b.blob_digests)
    # One callback for the run: a base layer both pulls wait on is told
    # complete once, naming the pulls it served (not once a pull).
    for digest in a.blob_digests & b.blob_digests - {a.config_digest}:
        done = [e for e in events if e.digest == digest and e.status == DOWNLOAD_COMPLETE]
        assert len(done) == 1, done
    # Both images are whole in the store.
    with imgpull.Client(tmp_path) as client:
        assert {client.resolve(refs[0]), client.resolve(refs[2])} == {
            a.config_digest,
            b.config_digest,
        }


def _assert_stopped(root: Path) -> dict[str, int]:
    """The partials left by a stopped pull: some, and no longer growing."""
    kept = partials(root)
    assert kept
    time.sleep(0.3)
    assert partials(root) == kept
    return kept


def test_timeout_stops_the_pull_keeps_partials_and_the_rerun_resumes(
    log: Images, tmp_path: Path
) -> None:
    with imgpull.Client(tmp_path) as client:
        start = time.monotonic()
        with pytest.raises(imgpull.PullTimeoutError) as info:
            # A quarter of the ~6 s the pull takes: mid-blob even on a slow machine.
            client.pull(log.slow_ref(), timeout=1.5)
        elapsed = time.monotonic() - start
    assert isinstance(info.value, imgpull.PullCancelledError)
    assert "1.5 seconds" in str(info.value)
    # 1.5 s and a chunk; generous for a loaded machine.
    assert elapsed < 4.0
    assert_resumes(log, tmp_path, _assert_stopped(tmp_path), _pull_id)


def _once_bytes_arrive(log: Images, root: Path, action: Callable[[], None]) -> threading.Thread:
    """Run `action` on a thread of its own once a partial download of a layer
    of the slow image in `root` holds bytes: the pull is then surely in the
    middle of a layer. (Not any partial: the config's passes through ingest
    too, and on a loaded machine the cancel could land after its commit and
    before any layer's first bytes, leaving no partial to resume.)"""
    layers = {digest[7:] for digest in log.slow.layer_digests}

    def wait_then_act() -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if (root / "ingest" / "sha256").is_dir() and layers & set(partials(root)):
                break
            time.sleep(0.01)
        action()

    return _run(wait_then_act)


def test_cancel_token_from_another_thread(log: Images, tmp_path: Path) -> None:
    token = imgpull.CancelToken()
    timer = _once_bytes_arrive(log, tmp_path, token.cancel)
    with imgpull.Client(tmp_path) as client, pytest.raises(imgpull.PullCancelledError) as info:
        client.pull(log.slow_ref(), cancel=token)
    timer.join()
    assert not isinstance(info.value, imgpull.PullTimeoutError)
    assert_resumes(log, tmp_path, _assert_stopped(tmp_path), _pull_id)


def test_close_from_another_thread_cancels_the_pull(log: Images, tmp_path: Path) -> None:
    client = imgpull.Client(tmp_path)
    closer = _once_bytes_arrive(log, tmp_path, client.close)
    with pytest.raises(imgpull.PullCancelledError) as info:
        client.pull(log.slow_ref())
    assert "Client was closed" in str(info.value)
    closer.join(TIMEOUT)
    assert not closer.is_alive()  # close waited for the pull, then returned
    with pytest.raises(imgpull.PullCancelledError, match="closed"):
        client.pull(log.slow_ref())
    # The store is consistent: a fresh Client on it finishes the pull.
    assert_resumes(log, tmp_path, partials(tmp_path), _pull_id)


def _two_pulls(log: Images, root: Path, first: dict[str, Any], then: Callable[[], None]) -> Any:
    """Pull the slow image twice at once in one Client, the first pull with
    `first` (keyword arguments); `then()` once the second waits on every
    layer. Returns what the first pull raised; asserts the second succeeded
    and that each layer was fetched once, whole."""
    labels = {layer[7:19] for layer in log.slow.layer_digests}
    seen: set[str] = set()
    attached = threading.Event()

    def second_progress(event: ProgressEvent) -> None:
        # Its own progress lines for every layer: it waits on all three.
        if event.status == DOWNLOADING and event.id is not None:
            seen.add(event.id)
            if seen >= labels:
                attached.set()

    outcome: dict[str, object] = {}

    def pull(name: str, **kwargs: Any) -> None:
        try:
            outcome[name] = client.pull(log.slow_ref(), **kwargs)
        except Exception as exc:  # asserted by the test thread
            outcome[name] = exc

    with imgpull.Client(root) as client:
        threads = [_run(lambda: pull("first", **first))]
        threads.append(_run(lambda: pull("second", progress=second_progress)))
        assert attached.wait(TIMEOUT)
        then()
        for t in threads:
            t.join(TIMEOUT)
    image = outcome["second"]
    assert isinstance(image, imgpull.Image) and image.id == log.slow.config_digest
    gets = log.blob_gets()
    for digest in log.slow.layer_digests:
        assert [s for d, s in gets if d == digest] == [200], digest
    return outcome["first"]


def test_cancelled_pull_leaves_shared_transfers_to_the_other(log: Images, tmp_path: Path) -> None:
    """Two pulls of one image in one Client: cancelling one does not stop the
    transfers the other still waits for (each blob still fetched once)."""
    token = imgpull.CancelToken()
    error = _two_pulls(log, tmp_path, {"cancel": token}, token.cancel)
    assert isinstance(error, imgpull.PullCancelledError)


def test_failing_progress_callback_stops_only_its_own_pull(log: Images, tmp_path: Path) -> None:
    """A callback that raises on an event of a shared transfer (which runs on
    a transfer thread) ends its own pull with that error, not the other's."""

    def fussy(event: ProgressEvent) -> None:
        if event.status == VERIFYING:
            raise RuntimeError("callback failed")

    error = _two_pulls(log, tmp_path, {"progress": fussy}, lambda: None)
    assert isinstance(error, RuntimeError)
