"""The images of the scheduler and AsyncClient tests (e2e/test_scheduler.py,
e2e/test_aio.py): a registry of their own (its access log is the test's to
read) behind a throttling relay, and what those tests observe outside
imgpull: that log and the partial downloads of a store.

    with serve_images(workdir, layout_cache) as images:
        ... images.slow_ref() ... images.blob_gets() ... partials(root) ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .images import ImageInfo, LayoutCache, push, random_layer
from .registry import RegistryServer
from .throttle import ThrottledRelay

# Four images of one layer each (pulled at once with one download slot).
FOUR = tuple((random_layer(400_000, seed=700 + i),) for i in range(4))
# Two images sharing their two base layers.
BASE = (random_layer(1_000_000, seed=711), random_layer(1_000_000, seed=712))
SHARED = {
    "a": (*BASE, random_layer(300_000, seed=713)),
    "b": (*BASE, random_layer(300_000, seed=714)),
}
# ~12 MB: at RATE through the relay, ~6 s to pull; stopped long before that
# (seconds of margin for a cancel that waits for the first bytes on a loaded machine).
SLOW = tuple(random_layer(4_000_000, seed=seed) for seed in (721, 722, 723))
RATE = 2_000_000
# No test should come near it; a bound so that a broken one fails, not hangs.
TIMEOUT = 30


@dataclass(frozen=True)
class Images:
    registry: RegistryServer
    relay: ThrottledRelay
    four: list[ImageInfo]
    shared: dict[str, ImageInfo]
    slow: ImageInfo

    def slow_ref(self, *, throttled: bool = True) -> str:
        host = self.relay.host if throttled else self.registry.host
        return f"{host}/test/slow:v1"

    def blob_gets(self) -> list[tuple[str, int]]:
        """(digest, status) of each blob GET the registry answered, settled."""
        return [
            (e.path.rsplit("/", 1)[1], e.status)
            for e in self.registry.settled_request_log()
            if e.method == "GET" and "/blobs/" in e.path
        ]

    def cleared(self) -> Images:
        """These images, with the registry's access log cleared (settled first)."""
        self.registry.settled_request_log()
        self.registry.clear_request_log()
        return self


@contextmanager
def serve_images(workdir: Path, layout_cache: LayoutCache) -> Iterator[Images]:
    """A registry in ``workdir`` holding test/sched-N:v1 (FOUR),
    test/shared-{a,b}:v1 (SHARED) and test/slow:v1 (SLOW), behind a relay at RATE."""
    with (
        RegistryServer(workdir=workdir) as registry,
        ThrottledRelay(registry.host, rate=RATE) as relay,
    ):
        four = [layout_cache.get(layers, ref=f"sched-{i}") for i, layers in enumerate(FOUR)]
        for i, image in enumerate(four):
            push(image, registry, f"test/sched-{i}:v1", "oci")
        shared = {k: layout_cache.get(layers, ref=f"shared-{k}") for k, layers in SHARED.items()}
        for k, image in shared.items():
            push(image, registry, f"test/shared-{k}:v1", "oci")
        slow = layout_cache.get(SLOW, ref="slow")
        push(slow, registry, "test/slow:v1", "oci")
        yield Images(registry, relay, four, shared, slow)


def partials(root: Path) -> dict[str, int]:
    """Hex digest -> size of the non-empty partial downloads in the ingest area."""
    ingest = root / "ingest" / "sha256"
    sizes: dict[str, int] = {}
    for p in ingest.iterdir():
        if p.name.endswith(".lock"):
            continue
        try:
            size = p.stat().st_size
        except FileNotFoundError:  # committed (moved into blobs/) meanwhile
            continue
        if size > 0:
            sizes[p.name] = size
    return sizes


def assert_resumes(
    images: Images, root: Path, kept: dict[str, int], pull: Callable[[Path, str], str]
) -> None:
    """A fresh pull of the slow image into `root` (``pull(root, ref)``: a
    fresh Client's pull, returning the image ID) completes it, asking for the
    rest of each kept partial (206), never again for its start."""
    images.cleared()
    assert pull(root, images.slow_ref(throttled=False)) == images.slow.config_digest
    gets = images.blob_gets()
    for hexpart in kept:
        assert (f"sha256:{hexpart}", 206) in gets
        assert (f"sha256:{hexpart}", 200) not in gets
    assert partials(root) == {}
