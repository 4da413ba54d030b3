"""`--debug` traces: every registry and token-server request and answer,
with secrets redacted, through the `logging` module (logger `imgpull`).

Redacted: the values of Authorization-like headers (the scheme is kept:
"Bearer <redacted>"), cookies, and every URL query value but a few known
harmless ones (redirected blob URLs are often pre-signed). Bodies are never
logged: token responses and OAuth forms carry the secrets.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Sequence

import httpx

from imgpull.safetext import REDACTED, printable

__all__ = ["enable", "install", "log_exchange", "redact_headers", "redact_url"]

log = logging.getLogger("imgpull.http")
_SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-registry-auth",
        "x-registry-token",
        "x-amz-security-token",
    }
)
# Query parameters that name things rather than prove anything.
_SAFE_PARAMS = frozenset({"service", "scope", "account", "client_id", "offline_token", "n", "last"})


# Headers holding a URL: a redirect to pre-signed storage carries its signature.
_URL_HEADERS = frozenset({"location", "content-location"})


def redact_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    out = []
    for k, v in headers:
        if k.lower() in _URL_HEADERS:
            v = redact_url(v)
        elif k.lower() in _SECRET_HEADERS:
            scheme = v.split(" ", 1)[0] if " " in v and k.lower().endswith("authorization") else ""
            v = f"{scheme} {REDACTED}" if scheme else REDACTED
        out.append((k, v))
    return out


def redact_url(url: str | httpx.URL) -> str:
    """`url` without its user info and with every query value but harmless ones hidden."""
    try:
        u = httpx.URL(url) if isinstance(url, str) else url
    except httpx.InvalidURL:
        return REDACTED
    if u.userinfo:
        u = u.copy_with(username=None, password=None)
    if not u.query:
        return str(u)
    params = [(k, v if k in _SAFE_PARAMS else REDACTED) for k, v in u.params.multi_items()]
    return str(u.copy_with(params=params))


def _headers_text(headers: Sequence[tuple[str, str]]) -> str:
    return "; ".join(f"{k}: {v}" for k, v in redact_headers(headers))


def log_exchange(
    method: str,
    url: str | httpx.URL,
    request_headers: Sequence[tuple[str, str]],
    status: int | None = None,
    response_headers: Sequence[tuple[str, str]] = (),
) -> None:
    """One line for a request (status None) or for its answer."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    if status is None:
        log.debug("> %s %s [%s]", method, redact_url(url), _headers_text(request_headers))
    else:
        log.debug(
            "< %s %s %d [%s]", method, redact_url(url), status, _headers_text(response_headers)
        )


def _on_request(request: httpx.Request) -> None:
    log_exchange(request.method, request.url, request.headers.multi_items())


def _on_response(response: httpx.Response) -> None:
    request = response.request
    log_exchange(
        request.method,
        request.url,
        (),
        response.status_code,
        response.headers.multi_items(),
    )


def install(http: httpx.Client) -> None:
    """Trace every request of an httpx client (cheap when debug is off)."""
    http.event_hooks["request"].append(_on_request)
    http.event_hooks["response"].append(_on_response)


class _PrintableFormatter(logging.Formatter):
    """Traces quote headers and URLs servers sent: escaped for the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def enable() -> None:
    """Send imgpull's debug log to stderr (`imgpull --debug`, IMGPULL_DEBUG=1)."""
    root = logging.getLogger("imgpull")
    if any(getattr(h, "_imgpull_debug", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter("DEBUG %(name)s: %(message)s"))
    handler._imgpull_debug = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
