"""Every request and every connection a pull makes earns its place (issue 17).

Pulls go through the WAN relay (support.wanrelay, RTT 0 here: only its
counters matter) in front of the real registry, which counts the requests
and connections the client opened. A fresh pull by tag is one manifest GET
(no ping, no HEAD) and each blob once; an up-to-date pull is one HEAD on one
connection; a bulk pull of 10 images requests each manifest and each
distinct blob once; a Client keeps its connections for its next pulls; a
loopback registry is not first tried over TLS; a refused port fails at once.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.bulkimages import push_small_images
from support.cli import run_cli
from support.registry import RegistryServer
from support.wanrelay import RelayStats, WanRelay

import imgpull
from imgpull.errors import RegistryRefusedError
from imgpull.retry import RetryPolicy

REPO = "trips/small"


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RegistryServer, WanRelay, list[str]]]:
    """11 small images sharing a base layer (each: base, its own layer, its
    config), and the relay in front of their registry; the references name
    the relay."""
    with RegistryServer(workdir=tmp_path_factory.mktemp("trips-registry")) as reg:
        refs = push_small_images(reg, tmp_path_factory.mktemp("trips-layouts"), 11, repo=REPO)
        with WanRelay(reg.host) as relay:
            yield reg, relay, [r.replace(reg.host, relay.host, 1) for r in refs]


def _manifests(stats: RelayStats) -> list[tuple[str, str]]:
    return [(m, t.rsplit("/", 1)[-1]) for _, m, t in stats.log if "/manifests/" in t]


def _blobs(stats: RelayStats) -> list[str]:
    return [t.rsplit("/", 1)[-1] for _, m, t in stats.log if m == "GET" and "/blobs/" in t]


def _image_blobs(reg: RegistryServer, tag: str) -> set[str]:
    """The config and layer digests of REPO:tag, as the registry serves them."""
    with reg.client() as http:
        manifest = http.get(
            f"{reg.url}/v2/{REPO}/manifests/{tag}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        ).json()
    return {manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}


def _pull(root: Path, *refs: str) -> None:
    proc = run_cli("pull", "-q", "--root", str(root), *refs, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_a_fresh_then_an_up_to_date_pull(
    fleet: tuple[RegistryServer, WanRelay, list[str]], tmp_path: Path
) -> None:
    """Fresh: GET by tag (before: a ping, a HEAD, then a GET by digest: 6
    requests), each blob once. Up to date: one HEAD, one connection (before:
    a ping and a HEAD)."""
    reg, relay, refs = fleet
    relay.reset()
    _pull(tmp_path, refs[0])
    fresh = relay.settled_stats()
    print(f"fresh: {fresh.requests} requests, {fresh.connections} connections")
    assert _manifests(fresh) == [("GET", "t0000")]
    blobs = _image_blobs(reg, "t0000")
    assert sorted(_blobs(fresh)) == sorted(blobs)
    assert fresh.requests == 1 + len(blobs) and fresh.opaque == 0
    # The manifest's connection, and one per blob fetched at once at most.
    assert fresh.connections <= 1 + len(blobs)

    relay.reset()
    _pull(tmp_path, refs[0])
    again = relay.settled_stats()
    print(f"up to date: {again.requests} requests, {again.connections} connections")
    assert [(m, t.rsplit("/", 1)[-1]) for _, m, t in again.log] == [("HEAD", "t0000")]
    assert again.connections == 1


def test_a_bulk_pull_requests_each_manifest_and_blob_once(
    fleet: tuple[RegistryServer, WanRelay, list[str]], tmp_path: Path
) -> None:
    """10 images of one repository in one process: 10 manifest GETs, each
    distinct blob once (the shared base once), no ping or HEAD; then the same
    10 up to date: 10 HEADs and nothing else."""
    reg, relay, refs = fleet
    ten = refs[1:]
    relay.reset()
    _pull(tmp_path, *ten)
    bulk = relay.settled_stats()
    print(f"bulk of 10: {bulk.requests} requests, {bulk.connections} connections")
    assert sorted(_manifests(bulk)) == [("GET", f"t{i:04d}") for i in range(1, 11)]
    wanted: set[str] = set()
    for i in range(1, 11):
        wanted |= _image_blobs(reg, f"t{i:04d}")
    fetched = _blobs(bulk)
    assert len(fetched) == len(set(fetched)) and set(fetched) == wanted
    assert bulk.requests == 10 + len(wanted) and bulk.opaque == 0
    assert bulk.connections <= bulk.requests

    relay.reset()
    _pull(tmp_path, *ten)
    again = relay.settled_stats()
    print(f"bulk of 10 up to date: {again.requests} requests, {again.connections} connections")
    assert sorted(_manifests(again)) == [("HEAD", f"t{i:04d}") for i in range(1, 11)]
    assert again.requests == 10


def test_a_client_keeps_its_connections_for_its_next_pulls(
    fleet: tuple[RegistryServer, WanRelay, list[str]], tmp_path: Path
) -> None:
    """The second pull of a Client opens no connection: manifests (httpx)
    and blobs (the native fetcher) go over those the first one left open."""
    _, relay, refs = fleet
    relay.reset()
    with imgpull.Client(tmp_path / "store") as client:
        client.pull(refs[0])
        first = relay.stats()
        client.pull(refs[1])
        second = relay.stats()
    print(f"connections: {first.connections} for the first pull, then {second.connections}")
    assert second.requests > first.requests
    assert second.connections == first.connections


def test_a_loopback_registry_is_not_first_tried_over_tls(
    fleet: tuple[RegistryServer, WanRelay, list[str]], tmp_path: Path
) -> None:
    """Scheme auto (the default) on loopback: plain http first, no TLS
    handshake sent (before: https first, its connection failing, then
    http); what it learnt holds for the Client's next pulls."""
    _, relay, refs = fleet
    relay.reset()
    with imgpull.Client(tmp_path / "store") as client:
        client.pull(refs[0])
        client.pull(refs[1])
    stats = relay.settled_stats()
    assert stats.opaque == 0, stats
    assert [m for m, _ in _manifests(stats)] == ["GET", "GET"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_refused_port_fails_at_once(tmp_path: Path) -> None:
    """Nothing to retry: one attempt, one line (before: 7.4 s of silent
    retries, both schemes tried)."""
    port = _closed_port()
    start = time.monotonic()
    with imgpull.Client(tmp_path / "store") as client, pytest.raises(RegistryRefusedError) as ei:
        client.pull(f"127.0.0.1:{port}/x/y:v1")
    took = time.monotonic() - start
    print(f"refused after {took:.2f} s")
    assert (
        str(ei.value)
        == f"cannot reach registry 127.0.0.1:{port}: connection refused — is it running?"
    )
    assert not RetryPolicy().retryable(ei.value)
    # No retry's backoff: the first is 0.5 s, the five attempts ~7 s.
    assert took < 3.0

    proc = run_cli("pull", "--root", str(tmp_path / "cli"), f"127.0.0.1:{port}/x/y:v1")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"Error: {ei.value}"]
