"""A terminal for the progress tests: a pty of a given size, and a check of
what was written to it as a screen of that size would show it."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import termios
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress


@contextmanager
def pty_of(columns: int, rows: int) -> Iterator[tuple[int, int]]:
    """(master, slave) of a pty `columns` x `rows`, output bytes as written
    (no \\n -> \\r\\n). Both are closed at the end unless already closed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.OPOST
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    try:
        yield master, slave
    finally:
        for fd in (master, slave):
            with suppress(OSError):
                os.close(fd)


def read_until(master: int, done: Callable[[], bool], timeout: float) -> bytes:
    """What arrives on `master` until the writers closed the pty, or `done()`
    with nothing more to read, or `timeout` seconds."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the pty
                break
            if not chunk:
                break
            data += chunk
        elif done():
            break
    return data


def check_screen(text: str, columns: int, rows: int) -> None:
    """Play `text` on a terminal `columns` x `rows` whose cursor starts on its
    last row (the worst case): no character may reach the last column (a
    wrap), and no cursor-up may go past the top of the screen (lines that
    scrolled away would be redrawn over others: garbage). Only the sequences
    the renderers use are allowed."""
    row, col = rows - 1, 0
    for m in re.finditer(r"\x1b\[(\d*)([A-Za-z])|(.)", text, re.S):
        if m.group(2) is not None:
            if m.group(2) == "A":
                up = int(m.group(1) or 1)
                assert up <= row, f"cursor up {up} from row {row} of {rows}"
                row -= up
            else:
                assert m.group(2) in "JK", repr(m.group(0))
        elif m.group(3) == "\n":
            row, col = min(row + 1, rows - 1), 0
        elif m.group(3) == "\r":
            col = 0
        else:
            assert m.group(3) != "\x1b", "an escape sequence the check does not know"
            col += 1
            assert col < columns, f"a line wider than {columns - 1} columns"
