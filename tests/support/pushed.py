"""The suite's small test image, and an image pushed to a registry in both
formats (``PushedImage``: what the ``pushed_image`` fixture gives)."""

from __future__ import annotations

from dataclasses import dataclass

from .images import (
    Dir,
    File,
    ImageInfo,
    PushFormat,
    Symlink,
    files_layer,
    push,
    random_layer,
)
from .registry import RegistryServer

# The small test image: three layers, ~3.5 MB, one of them real files.
SMALL_IMAGE_LAYERS = (
    random_layer(2 * 1024 * 1024, seed=1),
    files_layer(
        {
            "etc": Dir(),
            "etc/hostname": b"imgpull-test\n",
            "etc/os-release": b'ID=imgpull\nPRETTY_NAME="imgpull test image"\n',
            "usr": Dir(),
            "usr/bin": Dir(),
            "usr/bin/hello": File(b"#!/bin/sh\necho hello\n", mode=0o755),
            "usr/bin/hi": Symlink("hello"),
            "srv": Dir(mode=0o700),
            "srv/secret": File(b"s3cret\n", mode=0o600, uid=1000, gid=1000),
        }
    ),
    random_layer(1536 * 1024, seed=2, files=3, prefix="opt/blobs"),
)


@dataclass(frozen=True)
class PushedImage:
    """An image pushed to ``registry`` as Docker v2s2 and as OCI."""

    registry: RegistryServer
    image: ImageInfo  # the local OCI layout it was pushed from
    repo: str  # "test/small"
    tags: dict[str, str]  # format -> tag: {"v2s2": "v2s2", "oci": "oci"}
    digests: dict[str, str]  # format -> manifest digest as pushed

    def ref(self, fmt: PushFormat = "v2s2") -> str:
        """``127.0.0.1:PORT/test/small:v2s2``."""
        return self.registry.ref(f"{self.repo}:{self.tags[fmt]}")

    def digest_ref(self, fmt: PushFormat = "v2s2") -> str:
        """``127.0.0.1:PORT/test/small@sha256:...``."""
        return self.registry.ref(f"{self.repo}@{self.digests[fmt]}")

    @property
    def refs(self) -> dict[str, str]:
        return {fmt: self.ref(fmt) for fmt in self.tags}  # type: ignore[arg-type]

    @property
    def layer_digests(self) -> list[str]:
        return self.image.layer_digests

    @property
    def config_digest(self) -> str:
        return self.image.config_digest


def push_both(registry: RegistryServer, image: ImageInfo, repo: str) -> PushedImage:
    """Push ``image`` to ``registry`` as ``<repo>:v2s2`` and ``<repo>:oci``."""
    tags: dict[str, str] = {"v2s2": "v2s2", "oci": "oci"}
    digests = {
        fmt: push(image, registry, f"{repo}:{tag}", fmt)  # type: ignore[arg-type]
        for fmt, tag in tags.items()
    }
    return PushedImage(registry, image, repo, tags, digests)
