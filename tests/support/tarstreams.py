"""Tar streams written block by block, for layers no tar library would write
(huge names and PAX records, files of zeros of any size) without holding
them in memory: each builder yields the stream's bytes a MiB at a time."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import Literal

from .images import FIXED_EPOCH

MiB = 1 << 20


def tar_header(
    name: str, kind: bytes, size: int, fmt: Literal[0, 1, 2] = tarfile.GNU_FORMAT
) -> bytes:
    """One tar header block, as written (no payload)."""
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime = kind, size, FIXED_EPOCH
    return info.tobuf(fmt)


def tar_file(name: str, data: bytes) -> bytes:
    """A whole regular-file member: header, data, padding."""
    padded = data + bytes(-len(data) % 512)
    return tar_header(name, tarfile.REGTYPE, len(data)) + padded


def letters(size: int, letter: bytes = b"a") -> Iterator[bytes]:
    """`size` bytes of `letter`, a MiB at a time."""
    chunk = letter * MiB
    for _ in range(size // MiB):
        yield chunk
    yield letter * (size % MiB)


def member_stream(head: bytes, size: int, letter: bytes = b"a") -> Iterator[bytes]:
    """`head`, then `size` bytes of `letter`, padded to a block."""
    yield head
    yield from letters(size, letter)
    yield bytes(-size % 512)


def zeros_tar(size: int) -> Iterator[bytes]:
    """A tar of one file of `size` zero bytes (a multiple of 512)."""
    yield from member_stream(tar_header("zeros", tarfile.REGTYPE, size), size, b"\0")
    yield bytes(1024)
