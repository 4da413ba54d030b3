"""When to try a failed request again, and after how long.

One object decides for every request a pull makes, so the rules live in one
place and are tested alone. Docker's rules (pull-semantics §7): up to five
attempts with growing waits; never retry what cannot get better by waiting
(not found, unauthorised even after re-authenticating, a refused connection
or an unknown host, a digest mismatch on a fresh download, local disk
errors). 429/503 say when to come back (Retry-After, seconds or an
HTTP-date), and we listen, capped; other 5xx and network failures back off
exponentially, with jitter.

A digest mismatch after a *resumed* download is not this object's call: the
puller starts that blob over once (the joined bytes may be at fault).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from imgpull.errors import (
    AuthenticationError,
    FetchError,
    ImgpullError,
    RegistryError,
    RegistryRefusedError,
    RegistryUnreachableError,
)

# Seconds for one whole request (manifest, tag page, ping, token) by default
# (registry.deadline bounds them); here, so that the CLI's options and the
# Client's signature have it without loading the HTTP stack.
DEFAULT_REQUEST_TIMEOUT = 60.0
# A blob of this many bytes or more, on a connection that does not fill the
# link, is fetched on up to N connections at once (transfer._Split).
DEFAULT_SPLIT_THRESHOLD = 32 << 20
DEFAULT_CONNECTIONS_PER_LAYER = 4
MAX_CONNECTIONS_PER_LAYER = 16


def check_connections_per_layer(n: int) -> int:
    if not 1 <= n <= MAX_CONNECTIONS_PER_LAYER:
        raise ImgpullError(
            f"max connections per layer must be 1 to {MAX_CONNECTIONS_PER_LAYER}, not {n}"
        )
    return n


_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# Statuses whose Retry-After is a promise worth waiting for (RFC 9110 §10.2.3);
# on a 500 or 502 it is more likely a stray header than a schedule.
_RETRY_AFTER_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    first_delay: float = 0.5
    factor: float = 2.0
    max_delay: float = 10.0
    max_retry_after: float = 60.0
    # Spread of the wait, so that many clients cut off together do not come
    # back together: the delay is scaled by a factor in [1 - jitter, 1].
    jitter: float = 0.2

    def retryable(self, error: BaseException) -> bool:
        if isinstance(error, FetchError):
            return bool(error.retryable)
        if isinstance(error, AuthenticationError):
            return False
        if isinstance(error, RegistryRefusedError):
            return False  # nothing listens there, or no such host
        if isinstance(error, RegistryUnreachableError):
            return True
        if isinstance(error, RegistryError):
            return error.status in _RETRY_STATUSES
        return False

    def delay(self, attempt: int, error: BaseException) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to give up.

        `attempt` counts from 1 (the attempt that just failed).
        """
        if attempt >= self.attempts or not self.retryable(error):
            return None
        retry_after = getattr(error, "retry_after", None)
        if (
            getattr(error, "status", None) in _RETRY_AFTER_STATUSES
            and isinstance(retry_after, (int, float))
            and retry_after >= 0
        ):
            return float(min(retry_after, self.max_retry_after))
        base = min(self.first_delay * self.factor ** (attempt - 1), self.max_delay)
        return base * (1.0 - self.jitter * random.random())


@dataclass(frozen=True)
class StallPolicy:
    """A blob download under `min_rate` bytes/s for `window` seconds (a
    trickle counts, not only silence) is stalled: the native fetcher gives it
    up with a retryable FetchError(kind="stalled") and the retry resumes
    from the bytes received. `min_rate=0` turns detection off."""

    min_rate: int = 16 * 1024
    window: float = 30.0

    def __post_init__(self) -> None:
        if self.min_rate < 0 or not self.window > 0:
            raise ValueError("stall detection needs min_rate >= 0 and window > 0 seconds")
