"""A circuit breaker per provider and channel: stop calling a provider that keeps failing.

Closed, every batch may go. After `threshold` consecutive transient failures the circuit
opens: the provider is skipped for `cooldown` seconds. Then it is half-open: one batch goes
through as a probe (the others still skip it); the probe's success closes the circuit, its
failure opens it for another cooldown. Circuits live in the worker process (each process
learns about an outage by itself, within `threshold` batches).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Circuit:
    """One provider's circuit on one channel."""

    threshold: int
    cooldown: float
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    opened_at: float | None = None
    probing: bool = field(default=False)

    @property
    def state(self) -> str:
        """ "closed", "open" or "half-open" (cooldown over, a probe may go)."""
        if self.opened_at is None:
            return "closed"
        if self.probing or self.clock() - self.opened_at < self.cooldown:
            return "open"
        return "half-open"

    def allow(self) -> bool:
        """Whether a batch may go now; a half-open circuit lets one probe through."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open":
            self.probing = True
            return True
        return False

    def reopens_in(self) -> float:
        """Seconds until a probe may go (0 when closed or half-open)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown - (self.clock() - self.opened_at))

    def succeeded(self) -> None:
        """The provider took (or refused for good) what it was given: close the circuit."""
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def failed(self) -> None:
        """A transient failure: count it; open at the threshold, or again after a probe."""
        self.failures += 1
        if self.probing or self.failures >= self.threshold:
            self.opened_at = self.clock()
        self.probing = False


class Circuits:
    """The circuits of one worker process, made on first use."""

    def __init__(self, *, threshold: int, cooldown: float) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._circuits: dict[tuple[str, str], Circuit] = {}

    def get(self, provider: str, channel: str) -> Circuit:
        """The circuit of a provider on a channel."""
        key = (provider, channel)
        circuit = self._circuits.get(key)
        if circuit is None:
            circuit = self._circuits[key] = Circuit(self.threshold, self.cooldown)
        return circuit
