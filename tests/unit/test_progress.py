"""Renderers of progress events."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import struct
import termios
from types import SimpleNamespace

import pytest
from support.terminal import check_screen, pty_of

from imgpull.manifest import Descriptor
from imgpull.progress import (
    BulkTtyRenderer,
    JsonRenderer,
    PlainRenderer,
    ProgressEvent,
    TtyRenderer,
    bulk_renderer_for,
    human_size,
    progress_bar,
)
from imgpull.transfer import CancelToken, PullTransfers, _Job


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


# -- many pulls ---------------------------------------------------------------


def _bulk_events(pulls: int, layers: int) -> list[ProgressEvent]:
    """Each pull's layers queued, half of them downloading, then all done."""
    events = []
    for p in range(pulls):
        ref = f"registry.example.com:5000/some/long/repository-{p}:tag-{p}"
        for i in range(layers):
            digest = f"sha256:{p:02d}{i:02d}" + "ab" * 30
            events.append(
                ProgressEvent("Pulling fs layer", digest[7:19], None, 1000, digest, (ref,))
            )
            if i % 2:
                events.append(ProgressEvent("Downloading", digest[7:19], 500, 1000, digest, (ref,)))
    for p in range(pulls):
        events.append(ProgressEvent(f"Status: Downloaded newer image for repository-{p}"))
    return events


def test_bulk_block_fits_the_terminal() -> None:
    """40 layers on a 60x30 terminal: the block is cut to the rows above the
    cursor's (with a line saying how many more), no line wraps."""

    class Terminal(io.StringIO):
        """Kept in memory (a pty's buffer would fill up), sized by a pty."""

        def fileno(self) -> int:
            return slave

    with pty_of(60, 30) as (_, slave):
        out = Terminal()
        r = BulkTtyRenderer(out, 4, interval=0)
        for event in _bulk_events(4, 10):
            r(event)
        r.finish()
        text = out.getvalue()
    check_screen(text, 60, 30)
    assert "... and 13 more" in text  # 1 + 40 lines, 29 shown: 28 and this one
    assert "Images 4/4, layers 10kB/40kB" in text
    # Downloading ones first, each with its reference and counts.
    first = text.split("Images 0/4")[-1].split("\n")[1]
    assert first == "\x1b[2K...pository-0:tag-0 0001abababab: Downloading 500B/1kB"


def test_bulk_renderer_on_a_dumb_terminal_is_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "dumb")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    render, live = bulk_renderer_for(out, 4)
    for event in _bulk_events(1, 2):
        render(event)
    assert live is None and "\x1b" not in out.getvalue()
    assert out.getvalue().splitlines()[0] == (
        "registry.example.com:5000/some/long/repository-0:tag-0 0000abababab: Pulling fs layer"
    )


def test_shared_transfer_events_name_every_waiting_pull() -> None:
    """A layer two pulls wait on: its events reach both, naming both, with
    the full digest and the size."""
    digest = "sha256:" + "cd" * 32
    desc = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", digest, 1234)
    # A source as far as a job reads it before it runs: its host.
    source = SimpleNamespace(transport=SimpleNamespace(registry=SimpleNamespace(base_url="h")))
    job = _Job(source, desc, layer=True, small=False, wake=lambda: None)  # type: ignore[arg-type]
    seen: dict[str, list[ProgressEvent]] = {"a": [], "b": []}
    for name in seen:
        pull = PullTransfers(None, CancelToken(), seen[name].append, (name,))  # type: ignore[arg-type]
        assert job.want(pull)
    job.emit(ProgressEvent("Verifying Checksum", digest[7:19]))
    expected = ProgressEvent("Verifying Checksum", digest[7:19], None, 1234, digest, ("a", "b"))
    assert seen == {"a": [expected], "b": [expected]}
    assert json.loads(expected.to_json()) == {
        "status": "Verifying Checksum",
        "id": digest[7:19],
        "digest": digest,
        "refs": ["a", "b"],
    }
