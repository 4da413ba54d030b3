"""The fault matrix: per fault, how often the proxy injected it in this run,
how many pulls ran through it, and whether every pull ended with the right
bytes (or with the documented error, for pulls meant to fail).

Each fault test appends one JSON line (its proxy's injection counts and its
pulls' outcomes) to the file named by ``IMGPULL_FAULT_MATRIX``, by default
``fault-matrix.jsonl`` under pytest's base temporary folder; the terminal
summary (tests/conftest.py) prints the table.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

ENV = "IMGPULL_FAULT_MATRIX"
_PATH = pytest.StashKey[Path]()


@dataclass
class Row:
    test: str
    injected: dict[str, int] = field(default_factory=dict)
    pulls: int = 0
    # Pulls that ended as they should: right bytes, or the documented error.
    right: int = 0


def matrix_path(config: pytest.Config, basetemp: Path) -> Path:
    """The file of this session (emptied the first time it is asked for)."""
    path = config.stash.get(_PATH, None)
    if path is None:
        path = Path(os.environ.get(ENV) or basetemp / "fault-matrix.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        config.stash[_PATH] = path
    return path


def append(path: Path, row: Row) -> None:
    with path.open("a") as f:
        f.write(json.dumps(asdict(row)) + "\n")


def summary_lines(config: pytest.Config) -> list[str]:
    """The table, or nothing when no fault test ran."""
    path = config.stash.get(_PATH, None)
    if path is None or not path.exists():
        return []
    totals: dict[str, list[int]] = {}  # label -> [injections, pulls, right]
    for line in path.read_text().splitlines():
        row = Row(**json.loads(line))
        for label, n in row.injected.items():
            t = totals.setdefault(label, [0, 0, 0])
            t[0] += n
            t[1] += row.pulls
            t[2] += row.right
    if not totals:
        return []
    width = max(len(k) for k in totals)
    lines = [
        f"fault matrix ({path})",
        f"{'fault':<{width}}  injections  pulls  all bytes right",
    ]
    for label in sorted(totals):
        injected, pulls, right = totals[label]
        ok = "yes" if pulls and right == pulls else "NO"
        lines.append(f"{label:<{width}}  {injected:>10}  {pulls:>5}  {ok}")
    return lines
