"""Text from servers made safe to show: control characters escaped, secrets
echoed back redacted. Used wherever such text meets a terminal or a log (the
CLI's error printer, the progress renderers, the --debug trace, one_line)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["REDACTED", "printable", "redact", "shown"]

REDACTED = "<redacted>"


def printable(text: str) -> str:
    """`text` with every character a terminal would act on escaped as Python
    writes it (ESC as `\\x1b`, BEL `\\x07`, CR `\\r`, C1 controls, bidi
    overrides `\\u202e`, ...): server text can then neither move the cursor,
    rewrite a line nor reorder it. Escaping twice changes nothing more."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with each secret (a password, a token) replaced by <redacted>:
    for server text that may echo back the credentials it was sent."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def shown(text: str, limit: int = 120) -> str:
    """`text` for a one-line message about input (a reference, a platform, a
    line of a file): escaped as Python writes it, and cut to `limit`
    characters, so that a huge or hostile input is never echoed whole."""
    escaped = repr(text)[1:-1]
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."
