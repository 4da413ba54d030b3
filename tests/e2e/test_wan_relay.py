"""The WAN relay of the test support (support.wanrelay) in front of the real
registry: its round-trip time, its per-connection cap, and its counters of
connections and requests, which the request-count tests and
benches/bench_wan.py rely on. Bounds are loose (a shared machine); the
figures are printed."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import httpx
import pytest
from support.bulkimages import upload_blob
from support.registry import RegistryServer
from support.wanrelay import CHUNK, WanRelay

REPO = "wanrelay/blob"
BLOB_SIZE = 4_000_000


@pytest.fixture(scope="module")
def blob(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 4 MB blob in REPO; its digest."""
    path = tmp_path_factory.mktemp("wanrelay") / "blob"
    data = os.urandom(BLOB_SIZE)
    path.write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with registry.client() as client:
        upload_blob(client, REPO, digest, path)
    return digest


def test_each_round_trip_and_each_connect_cost_the_rtt(registry: RegistryServer) -> None:
    with WanRelay(registry.host, rtt=0.1) as relay, httpx.Client() as client:
        t0 = time.monotonic()
        assert client.get(f"http://{relay.host}/v2/").status_code == 200
        first = time.monotonic() - t0
        t1 = time.monotonic()
        assert client.get(f"http://{relay.host}/v2/").status_code == 200
        second = time.monotonic() - t1
        stats = relay.stats()
    print(f"RTT 100 ms: new connection + request {first:.3f} s, kept connection {second:.3f} s")
    assert (stats.connections, stats.requests) == (1, 2)
    # Connect (1 RTT) + request (1 RTT); then the request alone.
    assert 0.2 <= first < 2.0
    assert 0.1 <= second < 1.0


def test_counts_connections_and_requests(registry: RegistryServer, blob: str) -> None:
    with WanRelay(registry.host) as relay:
        with httpx.Client(base_url=f"http://{relay.host}") as client:
            assert client.get("/v2/").status_code == 200
            assert client.head(f"/v2/{REPO}/blobs/{blob}").status_code == 200
            assert len(client.get(f"/v2/{REPO}/blobs/{blob}").content) == BLOB_SIZE
        stats = relay.settled_stats()
        print(stats)
        assert (stats.connections, stats.requests, stats.opaque, stats.open) == (1, 3, 0, 0)
        assert stats.log == [
            (1, "GET", "/v2/"),
            (1, "HEAD", f"/v2/{REPO}/blobs/{blob}"),
            (1, "GET", f"/v2/{REPO}/blobs/{blob}"),
        ]
        assert stats.down_bytes > BLOB_SIZE

        # A body (Content-Length) is skipped, not read as a request head;
        # reset zeroes the counters and cuts the kept connection.
        with httpx.Client(base_url=f"http://{relay.host}") as client:
            client.post("/v2/token", content=b"GET /v2/ HTTP/1.1\r\n\r\n" * 3)
            client.get("/v2/")
            relay.reset()
            assert relay.stats().connections == 0
            client.get("/v2/")
        stats = relay.settled_stats()
        assert (stats.connections, stats.requests) == (1, 1), stats
        assert stats.methods() == {"GET": 1}


def test_tls_connection_is_counted_but_opaque(registry: RegistryServer) -> None:
    with WanRelay(registry.host) as relay:
        with pytest.raises(httpx.HTTPError), httpx.Client(verify=False) as client:
            client.get(f"https://{relay.host}/v2/", timeout=5)
        stats = relay.settled_stats()
    assert (stats.connections, stats.requests, stats.opaque) == (1, 0, 1)


def test_rate_cap_is_per_connection(registry: RegistryServer, blob: str) -> None:
    rate = 4_000_000  # bytes/s: the blob takes ~1 s on one connection
    url = f"/v2/{REPO}/blobs/{blob}"
    with WanRelay(registry.host, rate=rate) as relay:

        def fetch(walls: list[float]) -> None:
            with httpx.Client(base_url=f"http://{relay.host}") as client:
                t0 = time.monotonic()
                assert len(client.get(url).content) == BLOB_SIZE
                walls.append(time.monotonic() - t0)

        alone: list[float] = []
        fetch(alone)
        both: list[float] = []
        threads = [threading.Thread(target=fetch, args=(both,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        stats = relay.settled_stats()
    ideal = BLOB_SIZE / rate
    print(f"cap {rate / 1e6} MB/s: one connection {alone[0]:.2f} s, two at once {both}")
    assert stats.connections == 3
    assert 0.9 * ideal <= alone[0] < 3 * ideal
    # Each of two connections gets about the cap: not half of it.
    assert len(both) == 2
    assert all(0.9 * ideal <= w < 1.7 * ideal for w in both), both


def test_in_flight_bytes_are_bounded(registry: RegistryServer, blob: str) -> None:
    """A client that does not read: the relay holds at most its window of the
    response (rate x RTT + 2 chunks), the rest stays in the registry's socket."""
    rate, rtt = 200_000, 0.1
    with WanRelay(registry.host, rtt=rtt, rate=rate) as relay:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        try:
            s.connect(("127.0.0.1", relay.port))
            s.sendall(f"GET /v2/{REPO}/blobs/{blob} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            t0 = time.monotonic()
            time.sleep(1.5)
            read_by_relay = relay.stats().down_bytes
            elapsed = time.monotonic() - t0
        finally:
            s.close()
    print(f"not reading: the relay read {read_by_relay} of {BLOB_SIZE} bytes")
    # What the pacer let through (into the client's socket buffers) and the
    # window it holds, with two chunks of slack.
    window = rate * rtt + 2 * CHUNK
    assert read_by_relay < rate * elapsed + window + 2 * CHUNK < BLOB_SIZE / 2
