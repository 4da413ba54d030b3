"""Renderers of progress events."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import struct
import termios

import pytest

from imgpull.progress import (
    JsonRenderer,
    PlainRenderer,
    ProgressEvent,
    TtyRenderer,
    human_size,
    progress_bar,
)


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0B"), (999, "999B"), (1000, "1kB"), (12_345_678, "12.35MB"), (2.5e9, "2.5GB")],
)
def test_human_size(n: float, text: str) -> None:
    assert human_size(n) == text


def test_bar() -> None:
    bar = progress_bar(50, 100, width=10)
    assert bar.startswith("[=====>     ]")
    assert bar.endswith("50B/100B")
    assert progress_bar(100, 100, width=10).startswith("[==========>]")


def test_plain_leaves_out_events_with_byte_counts() -> None:
    """docker's jsonmessage off a terminal: no Downloading/Extracting lines
    (they carry a byte count), every other status as it comes."""
    out = io.StringIO()
    r = PlainRenderer(out)
    r(ProgressEvent("Pulling fs layer", "abc"))
    r(ProgressEvent("Downloading", "abc", 1, 10))
    r(ProgressEvent("Downloading", "abc", 5, 10))
    r(ProgressEvent("Retrying in 2 seconds", "abc"))
    r(ProgressEvent("Retrying in 1 second", "abc"))
    r(ProgressEvent("Verifying Checksum", "abc"))
    r(ProgressEvent("Download complete", "abc"))
    r(ProgressEvent("Extracting", "abc", 10, 10))
    r(ProgressEvent("Pull complete", "abc"))
    r(ProgressEvent("Digest: sha256:x"))
    assert out.getvalue().splitlines() == [
        "abc: Pulling fs layer",
        "abc: Retrying in 2 seconds",
        "abc: Retrying in 1 second",
        "abc: Verifying Checksum",
        "abc: Download complete",
        "abc: Pull complete",
        "Digest: sha256:x",
    ]


def test_json_lines() -> None:
    out = io.StringIO()
    r = JsonRenderer(out)
    r(ProgressEvent("Downloading", "abc", 5, 10))
    assert json.loads(out.getvalue()) == {
        "status": "Downloading",
        "id": "abc",
        "progressDetail": {"current": 5, "total": 10},
    }


def test_tty_rewrites_line_in_place() -> None:
    out = io.StringIO()
    r = TtyRenderer(out)
    r(ProgressEvent("Pulling fs layer", "aaa"))
    r(ProgressEvent("Pulling fs layer", "bbb"))
    r(ProgressEvent("Download complete", "aaa"))
    text = out.getvalue()
    # aaa is two lines up from the cursor: move up 2, rewrite, move back.
    assert "\x1b[2A\r\x1b[2Kaaa: Download complete\r\x1b[2B" in text


def _tty_lines(columns: int, events: list[ProgressEvent]) -> list[str]:
    """What TtyRenderer writes to a real terminal (a pty) `columns` wide."""
    master, slave = pty.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        attrs = termios.tcgetattr(slave)
        attrs[1] &= ~termios.OPOST  # no \n -> \r\n translation
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        with os.fdopen(os.dup(slave), "w") as out:
            r = TtyRenderer(out)
            for event in events:
                r(event)
        data = b""
        while True:
            chunk = os.read(master, 65536)
            data += chunk
            if len(chunk) < 65536:
                break
    finally:
        os.close(master)
        os.close(slave)
    return [line for line in data.decode().split("\n") if line]


def test_tty_bar_only_on_wide_terminals_and_no_line_wraps() -> None:
    """As docker's jsonmessage: the bar only above 110 columns, the counts
    alone below; and no line as wide as the terminal (a wrap would break the
    cursor arithmetic that redraws lines in place)."""
    events = [ProgressEvent("Downloading", "0123456789ab", 1_500_000, 3_000_000)]
    (wide,) = _tty_lines(160, events)
    assert wide == "0123456789ab: Downloading " + progress_bar(1_500_000, 3_000_000)
    (narrow,) = _tty_lines(80, events)
    assert narrow == "0123456789ab: Downloading    1.5MB/3MB"
    (tiny,) = _tty_lines(20, events)
    assert tiny == "0123456789ab: Downl"
