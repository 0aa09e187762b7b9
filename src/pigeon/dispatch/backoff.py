"""Retry timing: exponential backoff with full jitter, never sooner than the provider asked."""

from __future__ import annotations

import random


def retry_delay(
    attempt: int, *, base: float = 1.0, cap: float = 300.0, retry_after: float | None = None
) -> float:
    """Seconds to wait before attempt number `attempt + 1` (attempt counts from 1)."""
    ceiling = min(cap, base * 2 ** max(attempt - 1, 0))
    delay = random.uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay
