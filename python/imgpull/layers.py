"""Layer identities once a layer is registered (pull-semantics.md §8).

A layer blob's digest covers its compressed bytes; its diffID is the sha256
of the uncompressed tar (computed while downloading, by the native layer
writer); chain IDs identify a stack of layers, bottom first:
``chain(1) = diffID(1)``, ``chain(n) = sha256(chain(n-1) + " " + diffID(n))``.
"""

from __future__ import annotations

from collections.abc import Sequence

from imgpull._core import sha256_bytes
from imgpull.errors import LayerMismatchError

__all__ = ["LayerMismatchError", "chain_ids", "check_diff_ids"]


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The chain ID of each prefix of `diff_ids` (bottom layer first)."""
    chains: list[str] = []
    for diff_id in diff_ids:
        chains.append(sha256_bytes(f"{chains[-1]} {diff_id}".encode()) if chains else diff_id)
    return chains


def check_diff_ids(config_diff_ids: object, diff_ids: Sequence[str]) -> None:
    """Docker's check: the registered layers' diffIDs must equal the config's
    `rootfs.diff_ids`, in count and order."""
    if not isinstance(config_diff_ids, list) or list(config_diff_ids) != list(diff_ids):
        raise LayerMismatchError("layers from manifest don't match image configuration")
