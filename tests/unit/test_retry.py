"""The retry policy, alone."""

from __future__ import annotations

import email.utils
import errno
import time

import pytest

from imgpull.errors import (
    AuthenticationError,
    DigestMismatchError,
    DiskFullError,
    FetchError,
    ManifestUnknownError,
    RegistryError,
    RegistryUnreachableError,
    TLSVerificationError,
)
from imgpull.registry.errors import error_from_response
from imgpull.retry import RetryPolicy, StallPolicy


def fetch_error(kind: str, retryable: bool) -> FetchError:
    """As the native fetcher raises them."""
    err = FetchError(f"fetch failed ({kind}): x")
    err.kind, err.retryable = kind, retryable
    return err


P = RetryPolicy(attempts=5, first_delay=1.0, factor=2.0, max_delay=5.0, jitter=0.0)


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (RegistryError("x", status=500), True),
        (RegistryError("x", status=502), True),
        (RegistryError("x", status=503), True),
        (RegistryError("x", status=429), True),
        (RegistryError("x", status=400), False),
        (ManifestUnknownError("x", status=404), False),
        (AuthenticationError("x", status=401), False),
        (RegistryUnreachableError("x"), True),
        (TLSVerificationError("x"), False),
        (DigestMismatchError("x"), False),
        (OSError(28, "No space left on device"), False),
        (RegistryError("x", status=404), False),
        (RegistryError("x", status=504), True),
        (DiskFullError("x"), False),
        (fetch_error("stalled", True), True),
        (fetch_error("io", True), True),
        (fetch_error("timeout", True), True),
        (fetch_error("tls", False), False),
        *((OSError(e, "local"), False) for e in (errno.EROFS, errno.EDQUOT, errno.EACCES)),
    ],
)
def test_classification(error: BaseException, retry: bool) -> None:
    assert P.retryable(error) is retry
    assert (P.delay(1, error) is not None) is retry


def test_backoff_grows_and_caps() -> None:
    err = RegistryError("x", status=500)
    assert [P.delay(n, err) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, None]


def test_retry_after_is_honoured_and_capped() -> None:
    err = RegistryError("x", status=429)
    err.retry_after = 7.0  # type: ignore[attr-defined]
    assert P.delay(1, err) == 7.0
    err.retry_after = 3600.0  # type: ignore[attr-defined]
    assert P.delay(1, err) == P.max_retry_after


def test_jitter_stays_within_bounds() -> None:
    policy = RetryPolicy(first_delay=1.0, jitter=0.5)
    delays = [policy.delay(1, RegistryError("x", status=503)) for _ in range(50)]
    assert all(d is not None and 0.5 <= d <= 1.0 for d in delays)


def test_401_after_reauthentication_is_final() -> None:
    """What the registry client raises once its one re-auth got a 401 again."""
    err = error_from_response(
        401, [("www-authenticate", 'Basic realm="r"')], b"", registry="r", kind="blob",
        repo="a/b", authenticated=True,
    )  # fmt: skip
    assert isinstance(err, AuthenticationError)
    assert P.delay(1, err) is None


def test_retry_after_as_http_date() -> None:
    # Whole seconds: the date may say up to 1 s less than asked.
    header = email.utils.formatdate(time.time() + 5, usegmt=True)
    err = error_from_response(429, [("retry-after", header)], b"", registry="r", kind="blob")
    assert err.retry_after is not None and 3.0 < err.retry_after <= 5.0
    assert P.delay(1, err) == err.retry_after
    far = email.utils.formatdate(time.time() + 7200, usegmt=True)
    err = error_from_response(503, [("retry-after", far)], b"", registry="r", kind="blob")
    assert P.delay(1, err) == P.max_retry_after


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_counts_on_429_and_503(status: int) -> None:
    err = error_from_response(status, [("retry-after", "3")], b"", registry="r", kind="blob")
    assert err.retry_after == 3.0
    assert [P.delay(n, err) for n in range(1, 6)] == [3.0, 3.0, 3.0, 3.0, None]


@pytest.mark.parametrize("status", [500, 502, 504])
def test_retry_after_on_other_statuses_is_ignored(status: int) -> None:
    """A 500's Retry-After is not a schedule: the usual backoff applies."""
    err = error_from_response(status, [("retry-after", "30")], b"", registry="r", kind="blob")
    assert err.retry_after == 30.0
    assert [P.delay(n, err) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, None]


def test_retry_after_zero_means_at_once() -> None:
    err = RegistryError("x", status=503, retry_after=0.0)
    assert P.delay(1, err) == 0.0


def test_network_errors_back_off_with_jitter() -> None:
    policy = RetryPolicy(first_delay=1.0, factor=2.0, max_delay=10.0, jitter=0.5)
    for attempt, base in ((1, 1.0), (2, 2.0), (3, 4.0)):
        delays = {policy.delay(attempt, fetch_error("io", True)) for _ in range(30)}
        assert all(d is not None and base * 0.5 <= d <= base for d in delays)
        assert len(delays) > 1  # spread, not one fixed wait


def test_stall_policy_defaults_and_validation() -> None:
    assert (StallPolicy().min_rate, StallPolicy().window) == (16 * 1024, 30.0)
    assert StallPolicy(min_rate=0).min_rate == 0  # off
    for bad in ({"min_rate": -1}, {"window": 0.0}, {"window": float("nan")}):
        with pytest.raises(ValueError, match="stall detection"):
            StallPolicy(**bad)  # type: ignore[arg-type]


def test_stall_defaults_are_the_native_fetchers() -> None:
    """StallPolicy's defaults and those of imgpull._core.Fetcher are one choice."""
    from imgpull._core import Fetcher

    signature = Fetcher.__text_signature__ or ""
    policy = StallPolicy()
    assert f"stall_rate={policy.min_rate}," in signature
    assert f"stall_window={policy.window})" in signature
