"""The test support itself, where it needs no registry: layers built in
Python hold the files they describe and are deterministic; a missing
docker-registry is an error, never a skip. Its registries and skopeo round
trips: e2e/test_support_registry.py."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from support.images import (
    Dir,
    File,
    Hardlink,
    LayerSpec,
    OpaqueWhiteout,
    Symlink,
    Whiteout,
    build_oci_layout,
    files_layer,
    random_layer,
)
from support.registry import RegistryServer


def test_files_layer_holds_real_files(tmp_path: Path) -> None:
    img = build_oci_layout(
        tmp_path,
        [
            files_layer(
                {
                    "etc": Dir(),
                    "etc/hostname": b"box\n",
                    "etc/motd": "hi\n",
                    "etc/link": Symlink("/etc/hostname"),
                    "bin": Dir(mode=0o750),
                    "bin/tool": File(b"\x7fELF", mode=0o4755, uid=0, gid=0),
                    "bin/tool2": Hardlink("bin/tool"),
                    "etc/gone": Whiteout(),
                    "var": OpaqueWhiteout(),
                }
            )
        ],
    )
    (layer,) = img.layers
    with tarfile.open(fileobj=io.BytesIO(img.blob(layer.digest)), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("etc/hostname").read() == b"box\n"  # type: ignore[union-attr]
    assert members["etc/link"].issym() and members["etc/link"].linkname == "/etc/hostname"
    assert members["bin"].isdir() and members["bin"].mode == 0o750
    assert members["bin/tool"].mode == 0o4755
    assert members["bin/tool2"].islnk() and members["bin/tool2"].linkname == "bin/tool"
    assert "etc/.wh.gone" in members and "var/.wh..wh..opq" in members


def test_layers_are_deterministic(tmp_path: Path) -> None:
    specs: list[LayerSpec] = [random_layer(300_000, seed=7, files=2), files_layer({"a": b"x"})]
    a = build_oci_layout(tmp_path / "a", specs)
    b = build_oci_layout(tmp_path / "b", specs)
    c = build_oci_layout(tmp_path / "c", [random_layer(300_000, seed=8, files=2)])
    assert a.manifest_digest == b.manifest_digest
    assert a.layer_digests[0] != c.layer_digests[0]
    # Random data really is incompressible: the gzip is no smaller than the tar.
    assert a.layers[0].size >= a.layers[0].tar_size >= 300_000


def test_missing_registry_binary_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from support import registry as registry_mod

    monkeypatch.setattr(registry_mod, "REGISTRY_BINARY", "no-such-docker-registry")
    with pytest.raises(registry_mod.MissingToolError), RegistryServer():
        pass
