"""Turning registry answers and network failures into imgpull.errors classes.

A registry error body is `{"errors": [{"code", "message", "detail"}]}`
(distribution spec). The first code decides the class; the HTTP status is kept
on the error with the code and `Retry-After`, so the retry policy can classify
without parsing messages. Messages are one line and never carry secrets:
only hosts, repository names and digests, never URLs with their queries
(redirected blob URLs are often pre-signed).
"""

from __future__ import annotations

import email.utils
import errno
import json
import math
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

import httpx

from imgpull.errors import (
    AuthenticationError,
    ManifestUnknownError,
    NameUnknownError,
    RegistryError,
    RegistryRefusedError,
    RegistryUnreachableError,
    TLSVerificationError,
)
from imgpull.reference import familiar_name
from imgpull.safetext import printable, redact

__all__ = [
    "ErrorDetail",
    "error_from_response",
    "is_refused",
    "json_object",
    "parse_error_body",
    "parse_retry_after",
    "request_failure",
    "unreachable_error",
]

Kind = Literal["manifest", "blob", "tags", "ping"]

_MAX_MESSAGE = 300


def one_line(text: str, limit: int = _MAX_MESSAGE) -> str:
    """Whitespace collapsed, control characters escaped, cut to `limit` characters."""
    text = printable(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def header_values(headers: Iterable[tuple[str, str]], name: str) -> list[str]:
    name = name.lower()
    return [v for k, v in headers if k.lower() == name]


@dataclass(frozen=True)
class ErrorDetail:
    code: str
    message: str
    detail: object = None


def json_object(body: bytes) -> dict[str, Any] | None:
    """`body` as a JSON object; None for anything else: not JSON (bad UTF-8,
    integers past Python's digit limit, nesting deep enough for a
    RecursionError) or JSON that is not an object."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def parse_error_body(body: bytes) -> list[ErrorDetail]:
    """The registry errors in a response body; [] for anything else (HTML, …)."""
    data = json_object(body)
    if data is None:
        return []
    errs = data.get("errors")
    if not isinstance(errs, list):
        return []
    out: list[ErrorDetail] = []
    for e in errs:
        if isinstance(e, dict):
            code = e.get("code")
            msg = e.get("message")
            out.append(
                ErrorDetail(
                    code=str(code).upper() if code else "",
                    message=str(msg) if msg is not None else "",
                    detail=e.get("detail"),
                )
            )
    return out


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` value (delta-seconds or HTTP-date)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        secs = float(value)
    except ValueError:
        pass
    else:
        return max(secs, 0.0) if math.isfinite(secs) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None  # HTTP-dates are GMT; one without a zone is not one
    current = time.time() if now is None else now
    return max(when.timestamp() - current, 0.0)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _subject(kind: Kind, repo: str | None, reference: str | None) -> str:
    if kind == "manifest":
        sep = "@" if reference and ":" in reference else ":"
        return f"manifest for {repo}{sep}{reference}"
    if kind == "blob":
        return f"blob {reference} in {repo}"
    if kind == "tags":
        return f"tags of {repo}"
    return "/v2/"


@dataclass(frozen=True)
class _Answer:
    """A non-2xx answer, as the messages of _RULES need it."""

    status: int
    code: str | None  # the first registry error code, if any
    msg: str  # what the server said (one line, secrets redacted), or ""
    headers: Sequence[tuple[str, str]]
    registry: str
    kind: Kind
    repo: str | None
    reference: str | None
    authenticated: bool
    redirected_to: str | None
    retry_after: float | None

    @property
    def name(self) -> str:
        return self.repo or "?"

    @property
    def why(self) -> str:
        return f": {self.msg}" if self.msg else ""


def _name_unknown(a: _Answer) -> str:
    return f"repository {a.name} not found: does it exist and may you pull from it?"


def _manifest_unknown(a: _Answer) -> str:
    # The whole familiar reference, registry included, as docker names it.
    shown = familiar_name(a.registry, a.repo) if a.repo else a.name
    return f"{_subject('manifest', shown, a.reference)} not found: {a.msg or 'manifest unknown'}"


def _blob_unknown(a: _Answer) -> str:
    return f"blob {a.reference} not found in {a.name}: {a.msg or 'blob unknown to registry'}"


def _redirected_unauthorized(a: _Answer) -> str:
    # Credentials stay with the host they were stored for (docker's too).
    return (
        f"{a.registry} redirected the request for {_subject(a.kind, a.repo, a.reference)} to "
        f"{one_line(a.redirected_to or '', 100)}, which asks for credentials (401): imgpull "
        f"sends none of {a.registry}'s there; the registry's redirect (storage) is misconfigured"
    )


def _unauthorized(a: _Answer) -> str:
    # A Bearer 401 with error="insufficient_scope": the token was good, its
    # rights were not (docker: "pull access denied").
    denied = any(
        re.search(r'error="?insufficient_scope', v)
        for v in header_values(a.headers, "www-authenticate")
    )
    if a.authenticated and denied:
        return (
            f"pull access denied for {a.name}: the repository does not exist or your "
            f"account may not pull it; check your permissions (imgpull login {a.registry})"
        )
    if a.authenticated:
        return (
            f"authentication to {a.registry} failed for {a.name}{a.why}; "
            f"check your credentials (imgpull login {a.registry})"
        )
    return (
        f"pull access denied for {a.name}: the repository does not exist or needs "
        f"credentials (imgpull login {a.registry}){a.why}"
    )


def _denied(a: _Answer) -> str:
    return (
        f"access to {a.name} denied by {a.registry}{a.why}; "
        f"check your credentials and permissions (imgpull login {a.registry})"
    )


def _too_many_requests(a: _Answer) -> str:
    wait = f"; retry after {a.retry_after:.0f}s" if a.retry_after is not None else ""
    return f"too many requests to {a.registry}{a.why}{wait}"


@dataclass(frozen=True)
class _Rule:
    """An answer that is `code`, or has `status`: raised as `cls`, with
    `code` when the body gave none. `only_kind`: the status alone counts
    only for that kind of request, and only without a code (any 404 with a
    code is that code's). `redirected`: the status alone counts, and only
    when a redirect led off the registry."""

    code: str
    status: int
    cls: type[RegistryError]
    message: Callable[[_Answer], str]
    only_kind: Kind | None = None
    redirected: bool = False

    def matches(self, a: _Answer) -> bool:
        if self.redirected:
            return a.status == self.status and a.redirected_to is not None
        if a.code == self.code:
            return True
        if self.only_kind is not None:
            return a.code is None and a.status == self.status and a.kind == self.only_kind
        return a.status == self.status


# The first rule that matches decides (go-containerregistry's transport/error.go
# keeps its table of codes the same way); no match: a plain RegistryError
# naming the status and the code.
_RULES: tuple[_Rule, ...] = (
    _Rule("NAME_UNKNOWN", 404, NameUnknownError, _name_unknown, only_kind="tags"),
    _Rule("MANIFEST_UNKNOWN", 404, ManifestUnknownError, _manifest_unknown, only_kind="manifest"),
    _Rule("BLOB_UNKNOWN", 404, RegistryError, _blob_unknown, only_kind="blob"),
    _Rule("UNAUTHORIZED", 401, AuthenticationError, _redirected_unauthorized, redirected=True),
    _Rule("UNAUTHORIZED", 401, AuthenticationError, _unauthorized),
    _Rule("DENIED", 403, AuthenticationError, _denied),
    _Rule("TOOMANYREQUESTS", 429, RegistryError, _too_many_requests),
)


def error_from_response(
    status: int,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    *,
    registry: str,
    kind: Kind,
    repo: str | None = None,
    reference: str | None = None,
    authenticated: bool = False,
    secrets: Iterable[str] = (),
    redirected_to: str | None = None,
) -> RegistryError:
    """The error for a non-2xx answer: the class and message of the first of
    _RULES it matches.

    `registry` names the registry as the user wrote it (for `imgpull login`);
    `authenticated` says whether credentials were held, which decides between
    "check your credentials" and "log in". `secrets` (the credentials and
    tokens in use) are redacted from what the server said. `redirected_to`
    is the host that answered when a redirect led off the registry.
    """
    secrets = list(secrets)
    details = parse_error_body(body)
    first = details[0] if details else None
    code = first.code if first and first.code else None
    msg = one_line(redact(first.message, secrets)) if first and first.message else ""
    if not msg and not details:
        # A short plain-text body (proxies, CDNs) is worth showing; HTML is not.
        text = body[:512].decode("utf-8", "replace").strip()
        if text and "<" not in text and len(text) <= 200:
            msg = one_line(redact(text, secrets))
    retry_after = parse_retry_after(next(iter(header_values(headers, "retry-after")), None))
    answer = _Answer(
        status, code, msg, headers, registry, kind, repo, reference, authenticated,
        redirected_to, retry_after,
    )  # fmt: skip
    for rule in _RULES:
        if rule.matches(answer):
            message = rule.message(answer)
            return rule.cls(message, status=status, code=code or rule.code, retry_after=retry_after)
    reason = _reason(status)
    said = f": {one_line(redact(code.lower().replace('_', ' '), secrets), 80)}" if code else ""
    if msg and msg.lower() != (code or "").lower().replace("_", " "):
        said += f": {msg}"
    return RegistryError(
        f"registry {registry} answered {status}{' ' + reason if reason else ''} "
        f"for {_subject(kind, repo, reference)}{said}",
        status=status,
        code=code,
        retry_after=retry_after,
    )


# ---------------------------------------------------------------------------
# Network failures


def _causes(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


_SSL_TAG = re.compile(r"^\[SSL: [A-Z_]+\]\s*")
_SSL_TAIL = re.compile(r"\s*\(_ssl\.c:\d+\)$")


def _ssl_text(text: str) -> str:
    return _SSL_TAIL.sub("", _SSL_TAG.sub("", text.strip()))


# TLS alerts a server sends when it wants a client certificate it did not get
# (or does not accept the one it got).
_CLIENT_CERT_ALERTS = ("ALERT_BAD_CERTIFICATE", "ALERT_CERTIFICATE_REQUIRED",
                       "ALERT_UNKNOWN_CA", "ALERT_CERTIFICATE_UNKNOWN")  # fmt: skip
_TRUST_HINT = (
    "trust the registry's CA (--ca-cert FILE, or certs.d/<host:port>/ca.crt) or, "
    "at your own risk, use --insecure"
)


def _client_cert_refused(exc: BaseException) -> str | None:
    """The alert, when the server refused the TLS client certificate (or its absence)."""
    for c in _causes(exc):
        text = str(c)
        if any(a in text for a in _CLIENT_CERT_ALERTS):
            return _ssl_text(text)
    return None


def is_tls_verify_failure(exc: BaseException) -> bool:
    """Whether a certificate was refused, the server's or ours (not a protocol
    mismatch): waiting will not help, nor will plain HTTP."""
    for c in _causes(exc):
        if isinstance(c, ssl.SSLCertVerificationError):
            return True
        if "CERTIFICATE_VERIFY_FAILED" in str(c):
            return True
    return _client_cert_refused(exc) is not None


def network_reason(exc: BaseException) -> str:
    """A short human reason for a transport failure."""
    for c in _causes(exc):
        if isinstance(c, ssl.SSLCertVerificationError):
            detail = c.verify_message or _ssl_text(str(c))
            return f"TLS certificate verification failed ({detail}): {_TRUST_HINT}"
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            f"TLS certificate verification failed ({_ssl_text(text).split(': ', 1)[-1]}): "
            f"{_TRUST_HINT}"
        )
    alert = _client_cert_refused(exc)
    if alert is not None:
        return (
            f"the registry refused the TLS client certificate ({alert}): it wants one its "
            "CA signed; give it with --client-cert/--client-key or "
            "certs.d/<host:port>/client.cert and client.key"
        )
    for c in _causes(exc):
        if isinstance(c, ssl.SSLError) or "[SSL:" in str(c):
            s = str(c)
            hint = ""
            if "WRONG_VERSION_NUMBER" in s or "record layer failure" in s.lower():
                hint = " — does it serve plain HTTP? then use plain_http"
            return f"TLS handshake failed ({_ssl_text(s)}){hint}"
    if isinstance(exc, httpx.ConnectTimeout):
        return "timed out while connecting"
    if isinstance(exc, httpx.PoolTimeout):
        return "timed out waiting for a free connection"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out waiting for the registry's answer"
    if isinstance(exc, httpx.ProxyError):
        return f"proxy error ({one_line(text, 120)})"
    refused = _refused(exc)
    if refused is not None:
        return refused
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"the connection broke ({one_line(text, 120) or 'server disconnected'})"
    return one_line(text, 160) or type(exc).__name__


def _refused(exc: BaseException) -> str | None:
    """The reason when nothing listens at the address or the name does not
    resolve (no later attempt can do better), else None."""
    for c in _causes(exc):
        if isinstance(c, ConnectionRefusedError) or getattr(c, "errno", None) == errno.ECONNREFUSED:
            return "connection refused — is it running?"
        if isinstance(c, socket.gaierror):
            return "unknown host (DNS lookup failed)"
    low = str(exc).lower()
    if "connection refused" in low:
        return "connection refused — is it running?"
    if "name or service not known" in low or "nodename nor servname" in low:
        return "unknown host (DNS lookup failed)"
    return None


def is_refused(exc: BaseException) -> bool:
    return not isinstance(exc, httpx.ProxyError) and _refused(exc) is not None


def unreachable_error(host: str, exc: BaseException, *, what: str = "registry") -> RegistryError:
    """ "cannot reach registry 127.0.0.1:1: connection refused — is it running?" """
    message = f"cannot reach {what} {host}: {network_reason(exc)}"
    # An untrusted certificate, a refused connection or an unknown name is
    # final (no retry); another network failure may pass.
    if is_tls_verify_failure(exc):
        return TLSVerificationError(message)
    if is_refused(exc):
        return RegistryRefusedError(message)
    return RegistryUnreachableError(message)


def request_failure(host: str, exc: httpx.RequestError, *, what: str = "registry") -> RegistryError:
    """Any httpx request failure: the network's, or a broken answer's."""
    if isinstance(exc, httpx.TransportError):
        return unreachable_error(host, exc, what=what)
    if isinstance(exc, httpx.TooManyRedirects):
        return RegistryError(f"{what} {host} redirected too many times")
    if isinstance(exc, httpx.DecodingError):
        return RegistryError(f"{what} {host} sent a body that cannot be decoded")
    return RegistryError(f"request to {what} {host} failed: {one_line(str(exc), 160)}")
