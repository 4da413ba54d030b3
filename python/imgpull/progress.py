"""Progress events and the three ways of showing them.

A pull emits ProgressEvent objects to one callback. The renderers here turn
them into docker's output: live per-layer bars on a terminal, plain lines
when piped, or one JSON object a line for machines.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TextIO

from imgpull.manifest import Descriptor, short_id
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
    message about the whole pull (e.g. "Digest: sha256:…").

    `digest`: the layer's full digest (None for a message); `total`: the
    layer's size where known, on every layer event; `current`: the bytes done,
    on byte-count events only (Downloading, Extracting), as docker's.
    `refs`: the references (familiar form) the event serves: a layer several
    pulls wait on names them all."""

    status: str
    id: str | None = None
    current: int | None = None
    total: int | None = None
    digest: str | None = None
    refs: tuple[str, ...] = ()

    def to_json(self) -> str:
        obj: dict[str, object] = {"status": self.status}
        if self.id is not None:
            obj["id"] = self.id
        if self.current is not None:
            detail: dict[str, int] = {"current": self.current}
            if self.total is not None:
                detail["total"] = self.total
            obj["progressDetail"] = detail
        if self.digest is not None:
            obj["digest"] = self.digest
        if self.refs:
            obj["refs"] = list(self.refs)
        return json.dumps(obj)


ProgressCallback = Callable[[ProgressEvent], None]


def layer_event(
    status: str, layer: Descriptor, current: int | None = None, total: int | None = None
) -> ProgressEvent:
    """A layer's event: its short id and full digest, its size when known."""
    size = total if total is not None else (layer.size if layer.size >= 0 else None)
    return ProgressEvent(status, short_id(layer.digest), current, size, digest=layer.digest)


def with_refs(emit: ProgressCallback, refs: tuple[str, ...]) -> ProgressCallback:
    """`emit`, naming `refs` on the events that name none yet (a shared
    transfer's events come named after every pull waiting on it)."""

    def named(event: ProgressEvent) -> None:
        emit(event if event.refs else replace(event, refs=refs))

    return named


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
    return _escaping(TtyRenderer(out) if out.isatty() else PlainRenderer(out))


def _escaping(render: ProgressCallback) -> ProgressCallback:
    def escaped(event: ProgressEvent) -> None:
        # Statuses carry server text (a mirror's error): no raw ESC, BEL, CR
        # or bidi override reaches the terminal.
        texts = (event.status, event.id or "", *event.refs)
        if not all(t.isprintable() for t in texts):
            event = replace(
                event,
                status=printable(event.status),
                id=None if event.id is None else printable(event.id),
                refs=tuple(printable(r) for r in event.refs),
            )
        render(event)

    return escaped


def dumb_terminal() -> bool:
    """TERM says the terminal moves no cursor (dumb, unset or unknown):
    bulk progress then goes out as plain lines, as when piped."""
    return os.environ.get("TERM", "") in ("", "dumb", "unknown")


# Layer statuses after which the layer's bytes are all there.
_DOWNLOADED = frozenset({VERIFYING, DOWNLOAD_COMPLETE, EXTRACTING, PULL_COMPLETE})
# A layer line is dropped from the live block at these.
_SETTLED = frozenset({DOWNLOAD_COMPLETE, EXTRACTING, PULL_COMPLETE, ALREADY_EXISTS})


@dataclass
class _LayerState:
    refs: tuple[str, ...]
    id: str
    status: str
    current: int | None
    total: int | None


class BulkTtyRenderer:
    """Many pulls on a terminal: an aggregate line (images done of all,
    bytes done of those known, rate) and a line per active layer (`ref
    short-id: status counts`), redrawn in place. The block never has more
    lines than fit above the cursor's row and no line reaches the last
    column (a wrap or a scroll would throw the redraw's cursor arithmetic
    off). Messages (warnings, each image's Status) print above the block.

    `images`: how many pulls the run has; `finish()` clears the block.
    """

    def __init__(self, out: TextIO, images: int, *, interval: float = 0.1) -> None:
        self._out = out
        self._images = images
        self._interval = interval
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._done = 0
        self._layers: dict[str, _LayerState] = {}
        self._drawn = 0  # lines of the block on screen, the cursor below them
        self._last = 0.0

    def _size(self) -> tuple[int, int]:
        """(columns, rows) now (it may be resized); 80x24 when unknown."""
        try:
            size = os.get_terminal_size(self._out.fileno())
            return size.columns or 80, size.lines or 24
        except (OSError, ValueError, AttributeError):
            return 80, 24

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            if event.id is None:
                self._message(event)
                return
            key = event.digest or event.id
            old = self._layers.get(key)
            current = event.current
            if event.status in _DOWNLOADED:
                current = event.total if event.total is not None else current
            elif current is None and old is not None and not event.status.startswith("Retrying"):
                current = old.current  # Waiting and the like keep the count so far
            self._layers[key] = _LayerState(
                refs=event.refs or (old.refs if old else ()),
                id=event.id,
                status=event.status,
                current=current,
                total=event.total if event.total is not None else (old.total if old else None),
            )
            # Redrawn a few times a second at most: a run queues hundreds of
            # layers at once, and a redraw each would be quadratic output.
            now = time.monotonic()
            if now - self._last >= self._interval:
                self._draw(now)

    def _message(self, event: ProgressEvent) -> None:
        text = event.status
        if text.startswith("Status: "):
            self._done += 1
        elif text.startswith("Digest: ") or ": Pulling from " in text:
            return  # the block shows as much; a line each would flood the screen
        if event.refs and not text.startswith("Status: "):
            text = f"{event.refs[0]}: {text}"
        width = max(4, self._size()[0] - 1)
        if len(text) > width:  # the end names the image: keep it
            text = "..." + text[-(width - 3) :]
        self._out.write(self._up() + "\r\x1b[J" + text + "\n")
        self._drawn = 0
        self._draw(time.monotonic())

    def _up(self) -> str:
        return f"\x1b[{self._drawn}A" if self._drawn else ""

    def _lines(self, now: float, width: int) -> list[str]:
        layers = [s for s in self._layers.values() if s.status != ALREADY_EXISTS]
        total = sum(s.total or 0 for s in layers)
        done = sum(min(s.current or 0, s.total or 0) for s in layers)
        seconds = max(now - self._start, 1e-3)
        head = (
            f"Images {self._done}/{self._images}, layers {human_size(done)}/"
            f"{human_size(total)}, {human_size(done / seconds)}/s"
        )
        lines = [head]
        # Those moving bytes first, then the ones waiting.
        active = [s for s in layers if s.status not in _SETTLED]
        active.sort(key=lambda s: s.status != DOWNLOADING)
        for s in active:
            who = s.refs[0] if s.refs else ""
            if len(s.refs) > 1:
                who += f" (+{len(s.refs) - 1})"
            # A long reference keeps its end (the name and tag), so that the
            # layer and its status still fit a narrow terminal.
            room = max(12, width - 40)
            if len(who) > room:
                who = "..." + who[-(room - 3) :]
            line = f"{who} {s.id}: {s.status}".lstrip()
            if s.current is not None and s.status == DOWNLOADING:
                line += " " + progress_bar(s.current, s.total, bar=False).strip()
            lines.append(line)
        return lines

    def _draw(self, now: float) -> None:
        columns, rows = self._size()
        width = max(1, columns - 1)
        lines = self._lines(now, width)
        # The block and the cursor's row below it must fit the screen.
        room = max(1, rows - 1)
        if len(lines) > room:
            hidden = len(lines) - (room - 1)
            lines = lines[: room - 1] + ([f"... and {hidden} more"] if room > 1 else [])
            lines = lines[:room]
        text = "".join(f"\x1b[2K{line[:width]}\n" for line in lines)
        self._out.write(self._up() + "\r" + text + "\x1b[J")
        self._out.flush()
        self._drawn = len(lines)
        self._last = now

    def finish(self) -> None:
        """Clear the block: the run's own lines (results, summary) follow."""
        with self._lock:
            self._out.write(self._up() + "\r\x1b[J")
            self._out.flush()
            self._drawn = 0


class BulkPlainRenderer(PlainRenderer):
    """Plain lines for many pulls at once: each names its reference, since
    the pulls' lines interleave."""

    def __call__(self, event: ProgressEvent) -> None:
        if event.refs:
            who = ", ".join(event.refs)
            event = replace(event, id=who if event.id is None else f"{who} {event.id}")
        super().__call__(event)


def bulk_renderer_for(
    out: TextIO, images: int, *, json_lines: bool = False
) -> tuple[ProgressCallback, BulkTtyRenderer | None]:
    """The renderer of a bulk pull: JSON lines, the live block on a terminal
    that moves its cursor, else plain lines naming each reference. The live
    block is returned as well, for its finish()."""
    if json_lines:
        return JsonRenderer(out), None
    live = BulkTtyRenderer(out, images) if out.isatty() and not dumb_terminal() else None
    return _escaping(live or BulkPlainRenderer(out)), live
