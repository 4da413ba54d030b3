"""Directory trees as comparable dicts: an exported rootfs against umoci's unpack."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Path -> (type, mode, owner, size, sha256 / link target, mtime) of a directory tree."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            owner = (st.st_uid, st.st_gid)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(p), owner)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode), owner)
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                out[rel] = ("f", stat.S_IMODE(st.st_mode), owner, st.st_size, digest, st.st_mtime)
            else:
                out[rel] = ("?", st.st_mode)
    return out
