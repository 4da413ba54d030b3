"""Push images through the registry's HTTP API, without skopeo.

skopeo takes about a second an image, too slow for a thousand of them, and
it gzips plain (uncompressed) layers on the way to a registry. These helpers
upload an :class:`~support.images.ImageInfo`'s blobs as they are (monolithic
uploads: ``POST /v2/<name>/blobs/uploads/`` then ``PUT <location>&digest=``)
and put its OCI manifest byte for byte, to a loopback RegistryServer.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from .images import (
    MT_OCI_MANIFEST,
    BlobStore,
    ImageInfo,
    build_oci_layout,
    files_layer,
    random_layer,
)
from .registry import RegistryServer

_CHUNK = 1 << 20


def _chunks(path: Path) -> Iterator[bytes]:
    # Streamed: a pusher that read whole blobs would raise the peak RSS that
    # a benchmark's children inherit (see benches/_common.rss_floor).
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def upload_blob(client: httpx.Client, repo: str, digest: str, path: Path) -> None:
    """One blob into `repo`, unless the registry has it there already."""
    if client.head(f"/v2/{repo}/blobs/{digest}").status_code == 200:
        return
    resp = client.post(f"/v2/{repo}/blobs/uploads/")
    if resp.status_code != 202:
        raise RuntimeError(f"upload of {digest} to {repo}: {resp.status_code} {resp.text}")
    location = resp.headers["Location"]
    sep = "&" if "?" in location else "?"
    resp = client.put(
        f"{location}{sep}digest={digest}",
        content=_chunks(path),
        headers={
            "Content-Length": str(path.stat().st_size),
            "Content-Type": "application/octet-stream",
        },
    )
    if resp.status_code != 201:
        raise RuntimeError(f"upload of {digest} to {repo}: {resp.status_code} {resp.text}")


def push_http(client: httpx.Client, image: ImageInfo, repo_tag: str) -> None:
    """``image`` (its layers as they are, config, OCI manifest) to ``repo:tag``."""
    repo, _, tag = repo_tag.rpartition(":")
    for digest in [*image.layer_digests, image.config_digest]:
        upload_blob(client, repo, digest, image.blob_path(digest))
    resp = client.put(
        f"/v2/{repo}/manifests/{tag}",
        content=image.blob(image.manifest_digest),
        headers={"Content-Type": MT_OCI_MANIFEST},
    )
    if resp.status_code != 201:
        raise RuntimeError(f"manifest {repo_tag}: {resp.status_code} {resp.text}")


def push_small_images(
    registry: RegistryServer,
    layout_dir: Path,
    count: int,
    *,
    repo: str = "bulk/small",
    base_bytes: int = 64 * 1024,
    threads: int = 4,
) -> list[str]:
    """``count`` distinct small images, tags t0000... of ``repo``: one shared
    random base layer and a layer of one file naming the image (so each has
    its own layer, config and image ID). Returns their full references."""
    store = BlobStore(layout_dir)
    base = random_layer(base_bytes, seed=4242, prefix="base")
    images = [
        build_oci_layout(
            layout_dir,
            [base, files_layer({"etc/image-id": f"small image {i}\n"})],
            ref=f"t{i:04d}",
            store=store,
        )
        for i in range(count)
    ]
    with registry.client() as client:
        # The base first, alone: the threads then find it there (HEAD) and
        # never upload it at the same time.
        push_http(client, images[0], f"{repo}:{images[0].ref}")
        with ThreadPoolExecutor(threads) as pool:
            done = pool.map(lambda im: push_http(client, im, f"{repo}:{im.ref}"), images[1:])
            list(done)  # raise the first error
    return [registry.ref(f"{repo}:{im.ref}") for im in images]
