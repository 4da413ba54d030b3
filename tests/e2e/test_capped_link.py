"""A link that caps each connection (issue 17): `pull --rootfs` does not
leave it idle while its lowest layer downloads alone.

The one-pass rule (the lowest missing layer first, alone, so that applying
can start early) was tuned on loopback, where one connection fills the link.
Through the WAN relay with a cap per connection, the other layers must start
beside the lowest once it shows it does not fill the link; on loopback
(no cap) the lowest still downloads alone. Told by the progress events: does
a higher layer start downloading before the lowest is complete?
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.images import ImageInfo, LayoutCache, push, random_layer
from support.registry import RegistryServer
from support.wanrelay import WanRelay

import imgpull
from imgpull.progress import DOWNLOAD_COMPLETE, DOWNLOADING, ProgressEvent

# 2 MB/s a connection: the 3 MB lowest layer takes 1.5 s alone, three times
# the half second the rule looks before it starts the others.
CAP = 2_000_000


@pytest.fixture(scope="module")
def image(layout_cache: LayoutCache) -> ImageInfo:
    layers = (
        random_layer(3_000_000, seed=1701),
        random_layer(400_000, seed=1702),
        random_layer(400_000, seed=1703),
    )
    return layout_cache.get(layers, ref="capped")


@pytest.fixture(scope="module")
def served(
    image: ImageInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RegistryServer, WanRelay]]:
    with RegistryServer(workdir=tmp_path_factory.mktemp("capped-registry")) as reg:
        push(image, reg, "capped/img:v1")
        with WanRelay(reg.host) as relay:
            yield reg, relay


def _higher_started_before_lowest_done(events: list[ProgressEvent], image: ImageInfo) -> bool:
    lowest = image.layer_digests[0]
    done = next(
        i for i, e in enumerate(events) if e.digest == lowest and e.status == DOWNLOAD_COMPLETE
    )
    return any(
        e.status == DOWNLOADING and e.digest in image.layer_digests[1:] for e in events[:done]
    )


def _pull(ref: str, root: Path) -> list[ProgressEvent]:
    events: list[ProgressEvent] = []
    with imgpull.Client(root / "store") as client:
        client.pull(ref, rootfs=root / "rootfs", progress=events.append)
    assert (root / "rootfs").is_dir()
    return events


def test_a_capped_link_starts_the_other_layers_beside_the_lowest(
    served: tuple[RegistryServer, WanRelay], image: ImageInfo, tmp_path: Path
) -> None:
    _, relay = served
    relay.set_link(rtt=0.0, rate=CAP)
    try:
        relay.reset()
        events = _pull(f"{relay.host}/capped/img:v1", tmp_path)
    finally:
        relay.set_link(rtt=0.0, rate=0)
    assert _higher_started_before_lowest_done(events, image)


def test_on_loopback_the_lowest_layer_downloads_alone(
    served: tuple[RegistryServer, WanRelay], image: ImageInfo, tmp_path: Path
) -> None:
    reg, _ = served
    events = _pull(reg.ref("capped/img:v1"), tmp_path)
    assert not _higher_started_before_lowest_done(events, image)
