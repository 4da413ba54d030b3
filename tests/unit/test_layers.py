"""Layers without a registry: chain IDs, the diffID check against the config,
and the native writer computing a layer's diffID as its bytes arrive. The
same fused into pulls: e2e/test_pull_layers.py."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest
from support.fakeregistry import sha256_digest
from support.tarstreams import MiB, zeros_tar

from imgpull._core import BlobWriter, diff_id_file, sha256_bytes
from imgpull.errors import LimitExceededError, ManifestError
from imgpull.layers import chain_ids, check_diff_ids


def _sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def test_chain_ids() -> None:
    a, b, c = _sha("a"), _sha("b"), _sha("c")
    assert chain_ids([]) == []
    assert chain_ids([a]) == [a]
    ab = _sha(f"{a} {b}")
    assert chain_ids([a, b]) == [a, ab]
    assert chain_ids([a, b, c]) == [a, ab, _sha(f"{ab} {c}")]
    # The same layer twice still chains.
    assert chain_ids([a, a])[1] == _sha(f"{a} {a}")


def test_check_diff_ids() -> None:
    a, b = _sha("a"), _sha("b")
    check_diff_ids([a, b], [a, b])
    for config in ([b, a], [a], [a, b, b], "nope", None):
        with pytest.raises(ManifestError, match="layers from manifest don't match image"):
            check_diff_ids(config, [a, b])


def test_layer_writer_in_python(tmp_path: Path) -> None:
    tar = bytearray(4096)
    tar[257:262] = b"ustar"
    members = gzip.compress(bytes(tar[:1000])) + gzip.compress(bytes(tar[1000:]))
    w = BlobWriter(str(tmp_path / "p"), sha256_bytes(members), len(members), layer=True)
    assert w.layer and w.diff_id is None
    for i in range(0, len(members), 100):
        w.write(members[i : i + 100])
    w.commit(str(tmp_path / "b"))
    assert w.diff_id == sha256_bytes(bytes(tar))
    assert w.uncompressed_size == len(tar)

    junk = b"definitely not a layer" * 50
    w = BlobWriter(str(tmp_path / "q"), sha256_bytes(junk), layer=True)
    w.write(junk)
    with pytest.raises(ValueError, match="unknown layer compression"):
        w.commit(str(tmp_path / "c"))
    assert not (tmp_path / "c").exists() and not (tmp_path / "q").exists()


def test_diff_id_file_ratio(tmp_path: Path) -> None:
    """The diffID of a layer already on disk (schema1, an older store) is bounded too."""
    tar = b"".join(zeros_tar(32 * MiB))
    path = tmp_path / "bomb"
    path.write_bytes(gzip.compress(tar, 9))
    with pytest.raises(LimitExceededError, match="--max-ratio 200") as info:
        diff_id_file(str(path))
    assert info.value.kind == "ratio"
    assert diff_id_file(str(path), max_ratio=0) == sha256_digest(tar)
