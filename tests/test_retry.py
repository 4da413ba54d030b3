"""The retry policy, alone."""

from __future__ import annotations

import pytest

from imgpull.errors import (
    AuthenticationError,
    DigestMismatchError,
    ManifestUnknownError,
    RegistryError,
    RegistryUnreachableError,
    TLSVerificationError,
)
from imgpull.retry import RetryPolicy

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
