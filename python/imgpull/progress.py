"""Progress events and the three ways of showing them.

A pull emits ProgressEvent objects to one callback. The renderers here turn
them into docker's output: live per-layer bars on a terminal, plain lines
when piped, or one JSON object a line for machines.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TextIO

from imgpull.safetext import printable

# Layer statuses, as docker words them.
PULLING_FS_LAYER = "Pulling fs layer"
WAITING = "Waiting"
DOWNLOADING = "Downloading"
VERIFYING = "Verifying Checksum"
DOWNLOAD_COMPLETE = "Download complete"
EXTRACTING = "Extracting"
PULL_COMPLETE = "Pull complete"
ALREADY_EXISTS = "Already exists"


@dataclass(frozen=True)
class ProgressEvent:
    """One status change. `id` is a layer's short digest, or None for a
    message about the whole pull (e.g. "Digest: sha256:…")."""

    status: str
    id: str | None = None
    current: int | None = None
    total: int | None = None

    def to_json(self) -> str:
        obj: dict[str, object] = {"status": self.status}
        if self.id is not None:
            obj["id"] = self.id
        if self.current is not None:
            detail: dict[str, int] = {"current": self.current}
            if self.total is not None:
                detail["total"] = self.total
            obj["progressDetail"] = detail
        return json.dumps(obj)


ProgressCallback = Callable[[ProgressEvent], None]


def human_size(n: float) -> str:
    """Decimal units with four significant digits, like docker's HumanSize."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.4g}{unit}"
        n /= 1000
    raise AssertionError("unreachable")


def progress_bar(current: int, total: int | None, width: int = 50, *, bar: bool = True) -> str:
    """`[=====>      ]  12.3MB/45.6MB`, as docker draws it (`bar` False: the
    counts alone, as docker on a terminal of 110 columns or fewer)."""
    if not total:
        return f"{human_size(current):>8}"
    counts = f"{human_size(current):>8}/{human_size(total)}"
    if not bar:
        return counts
    done = min(width, width * current // total)
    return f"[{'=' * done}>{' ' * (width - done)}] {counts}"


# Docker draws the bar only on terminals wider than this (jsonmessage).
_BAR_MIN_COLUMNS = 111


class JsonRenderer:
    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            self._out.write(event.to_json() + "\n")
            self._out.flush()


class PlainRenderer:
    """Docker's lines when stdout is not a terminal: jsonmessage leaves out
    every event that carries a byte count (Downloading, Extracting) and
    prints the others as they come."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def __call__(self, event: ProgressEvent) -> None:
        if event.current is not None:
            return
        with self._lock:
            prefix = "" if event.id is None else f"{event.id}: "
            self._out.write(f"{prefix}{event.status}\n")
            self._out.flush()


class TtyRenderer:
    """Docker's live display: one line per layer, redrawn in place.

    Lines are kept in first-seen order; an update moves the cursor up to the
    line, rewrites it and comes back, as docker's jsonmessage does.
    """

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._order: list[str] = []
        self._text: dict[str, str] = {}

    def _columns(self) -> int:
        """The terminal's width now (it may be resized), 200 when unknown (docker's default)."""
        try:
            return os.get_terminal_size(self._out.fileno()).columns or 200
        except (OSError, ValueError, AttributeError):
            return 200

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            if event.id is None:
                self._out.write(event.status + "\n")
                # Messages end the layer block: later layer ids start afresh.
                self._order.clear()
                self._text.clear()
            else:
                columns = self._columns()
                line = f"{event.id}: {event.status}"
                if event.current is not None:
                    bar = columns >= _BAR_MIN_COLUMNS
                    line += " " + progress_bar(event.current, event.total, bar=bar)
                # A line that wraps would throw the cursor arithmetic off.
                line = line[: max(1, columns - 1)]
                if event.id not in self._text:
                    self._order.append(event.id)
                    self._text[event.id] = line
                    self._out.write(line + "\n")
                elif self._text[event.id] != line:
                    self._text[event.id] = line
                    up = len(self._order) - self._order.index(event.id)
                    self._out.write(f"\x1b[{up}A\r\x1b[2K{line}\r\x1b[{up}B")
            self._out.flush()


def renderer_for(out: TextIO, *, json_lines: bool = False) -> ProgressCallback:
    if json_lines:
        return JsonRenderer(out)  # json.dumps escapes control characters itself
    render: ProgressCallback = TtyRenderer(out) if out.isatty() else PlainRenderer(out)

    def escaped(event: ProgressEvent) -> None:
        # Statuses carry server text (a mirror's error): no raw ESC, BEL, CR
        # or bidi override reaches the terminal.
        if not (event.status.isprintable() and (event.id or "").isprintable()):
            event = replace(
                event,
                status=printable(event.status),
                id=None if event.id is None else printable(event.id),
            )
        render(event)

    return escaped
