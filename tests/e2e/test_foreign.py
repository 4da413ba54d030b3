"""End to end: foreign / non-distributable layers (descriptors with `urls`).

The registry (distribution 2.8, told to accept loopback layer URLs) holds the
config and an ordinary layer; the manifest, PUT raw, adds a layer whose bytes
only a loopback HTTP server of this test serves. imgpull must fetch that layer
from the URL, verify it like any other blob, and never send the registry's
credentials there (pull-semantics.md §6, last bullet).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support.cli import run_cli
from support.registry import RegistryServer

MT_V2S2 = "application/vnd.docker.distribution.manifest.v2+json"
MT_V2S2_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_V2S2_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_V2S2_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
MT_OCI = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_FOREIGN = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"

USER, PASSWORD = "foreign-tester", "not for other hosts"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(name: str, content: bytes) -> tuple[bytes, str]:
    """A gzipped tar holding one file: (blob, diffID)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0), _digest(raw)


class _Handler(BaseHTTPRequestHandler):
    server: _UrlServer

    def do_GET(self) -> None:
        self.server.log.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        body = self.server.blobs.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _UrlServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.blobs: dict[str, bytes] = {}
        self.log: list[tuple[str, dict[str, str]]] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def url_server() -> Iterator[_UrlServer]:
    server = _UrlServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass(frozen=True)
class ForeignImage:
    registry: RegistryServer
    ref: str
    foreign_digest: str
    foreign_blob: bytes
    path: str  # where the URL server serves it


def _upload(registry: RegistryServer, repo: str, blob: bytes) -> str:
    digest = _digest(blob)
    with registry.client() as c:
        resp = c.post(f"/v2/{repo}/blobs/uploads/")
        assert resp.status_code == 202, resp.text
        location = resp.headers["Location"]
        sep = "&" if "?" in location else "?"
        resp = c.put(f"{location}{sep}digest={digest}", content=blob)
        assert resp.status_code == 201, resp.text
    return digest


def _push_foreign(
    registry: RegistryServer,
    url_server: _UrlServer,
    fmt: str,
    *,
    urls: Callable[[str], list[str]] | None = None,
    served: bytes | None = None,
) -> ForeignImage:
    repo = f"test/foreign-{fmt}"
    base, base_diff = _layer("base.txt", b"the distributable layer\n")
    foreign, foreign_diff = _layer("foreign.txt", b"the non-distributable layer\n" * 50)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [base_diff, foreign_diff]},
        }
    ).encode()
    oci = fmt == "oci"
    path = f"/blobs/{_digest(foreign)}"
    url = url_server.base + path
    url_server.blobs[path] = foreign if served is None else served
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_OCI if oci else MT_V2S2,
        "config": {
            "mediaType": MT_OCI_CONFIG if oci else MT_V2S2_CONFIG,
            "digest": _upload(registry, repo, config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": MT_OCI_LAYER if oci else MT_V2S2_LAYER,
                "digest": _upload(registry, repo, base),
                "size": len(base),
            },
            {
                "mediaType": MT_OCI_FOREIGN if oci else MT_V2S2_FOREIGN,
                "digest": _digest(foreign),
                "size": len(foreign),
                "urls": urls(url) if urls else [url],
            },
        ],
    }
    with registry.client() as c:
        resp = c.put(
            f"/v2/{repo}/manifests/v1",
            content=json.dumps(manifest).encode(),
            headers={"Content-Type": manifest["mediaType"]},
        )
    assert resp.status_code == 201, resp.text
    return ForeignImage(registry, registry.ref(f"{repo}:v1"), _digest(foreign), foreign, path)


def _blob_requests(registry: RegistryServer, digest: str) -> list[str]:
    return [f"{e.method} {e.path}" for e in registry.request_log() if digest in e.path]


@pytest.mark.parametrize("fmt", ["v2s2", "oci"])
def test_foreign_layer_comes_from_its_url_without_credentials(
    make_registry: Callable[..., RegistryServer],
    url_server: _UrlServer,
    tmp_path: Path,
    fmt: str,
) -> None:
    import imgpull
    from imgpull.registry.auth import Credentials

    registry = make_registry(auth=(USER, PASSWORD), foreign_urls=True)
    image = _push_foreign(registry, url_server, fmt)
    registry.clear_request_log()
    creds = Credentials(username=USER, password=PASSWORD)
    with imgpull.Client(tmp_path, credentials=lambda _: creds) as client:
        pulled = client.pull(image.ref, platform="linux/amd64")
        assert client.store.content.exists(image.foreign_digest)
        assert client.store.content.path(image.foreign_digest).read_bytes() == image.foreign_blob
    assert pulled.layers[1].urls == (url_server.base + image.path,)
    assert [p for p, _ in url_server.log] == [image.path]
    headers = url_server.log[0][1]
    assert "authorization" not in headers
    assert "cookie" not in headers
    assert headers["user-agent"].startswith("imgpull")
    assert headers["accept-encoding"] == "identity"
    # The registry was never asked for the foreign blob (by GET or otherwise).
    assert _blob_requests(registry, image.foreign_digest) == []


def test_urls_are_tried_in_order(
    make_registry: Callable[..., RegistryServer], url_server: _UrlServer, tmp_path: Path
) -> None:
    import imgpull

    registry = make_registry(foreign_urls=True)
    image = _push_foreign(
        registry,
        url_server,
        "v2s2",
        urls=lambda url: [url.replace("/blobs/", "/missing/"), url],
    )
    with imgpull.Client(tmp_path) as client:
        client.pull(image.ref, platform="linux/amd64")
        assert client.store.content.exists(image.foreign_digest)
    assert [p.split("/")[1] for p, _ in url_server.log] == ["missing", "blobs"]
    assert _blob_requests(registry, image.foreign_digest) == []


def test_no_foreign_layers_refuses_in_one_line(
    make_registry: Callable[..., RegistryServer], url_server: _UrlServer, tmp_path: Path
) -> None:
    registry = make_registry(foreign_urls=True)
    image = _push_foreign(registry, url_server, "v2s2")
    args = ["pull", "--no-foreign-layers", "--root", str(tmp_path), "--platform", "linux/amd64"]
    proc = run_cli(*args, image.ref, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"Error: layer {image.foreign_digest} ")
    assert "--no-foreign-layers" in lines[0]
    assert url_server.log == []


def test_corrupted_foreign_blob_is_a_digest_mismatch(
    make_registry: Callable[..., RegistryServer], url_server: _UrlServer, tmp_path: Path
) -> None:
    import imgpull

    registry = make_registry(foreign_urls=True)
    good, _ = _layer("foreign.txt", b"the non-distributable layer\n" * 50)
    # Other bytes of the same length (the gzip header's mtime): a digest
    # mismatch, not a size one.
    bad = good[:4] + b"\x01" + good[5:]
    assert len(bad) == len(good) and bad != good
    image = _push_foreign(registry, url_server, "v2s2", served=bad)
    with imgpull.Client(tmp_path) as client:
        with pytest.raises(imgpull.DigestMismatchError) as info:
            client.pull(image.ref, platform="linux/amd64")
        assert image.foreign_digest in str(info.value)
        assert not client.store.content.exists(image.foreign_digest)
        assert client.images() == []
    assert url_server.log  # it did come from the URL
    assert _blob_requests(registry, image.foreign_digest) == []
