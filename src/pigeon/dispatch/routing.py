"""A channel's route: its providers in order, failing over at once on transient failures.

A batch goes to the first provider whose circuit allows it. The messages that provider did
not take now (a timeout, a broken connection, 429, 5xx: for the whole request or for some of
its messages) go to the next provider at once, without a backoff; a permanent refusal is
final and never fails over. When no provider is left, what the last one answered stands and
the dispatcher backs those messages off as for a single provider. A route of one provider has
no circuit: it always tries that provider.

A failover after a timeout can send a message twice (the first provider may have taken it
and the answer been lost): the same at-least-once guarantee as a retry, across providers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from pigeon import metrics
from pigeon.dispatch.circuit import Circuit, Circuits
from pigeon.messages import status
from pigeon.providers.base import (
    Outbound,
    PermanentError,
    Provider,
    ProviderError,
    SendOutcome,
    TransientError,
    normalised_error,
    provider_error,
)

log = structlog.get_logger("pigeon.routing")


@dataclass(frozen=True, slots=True)
class Leg:
    """What one provider had the last word on: its outcomes, to record as they are."""

    provider: str
    outcomes: list[SendOutcome]


@dataclass(slots=True)
class Routed:
    """A batch's fate: the legs to record, and the transient answers the route moved past
    (recorded as attempts only: their messages went on to the next provider)."""

    legs: list[Leg] = field(default_factory=list)
    passed: list[tuple[str, SendOutcome]] = field(default_factory=list)


def outcomes_for_error(
    provider: str, batch: Sequence[Outbound], exc: ProviderError
) -> list[SendOutcome]:
    """A whole-request failure, as one outcome per message."""
    error = normalised_error(provider, exc.error) or provider_error(
        provider,
        id="PROVIDER_ERROR",
        name="PROVIDER_ERROR",
        description=exc.reason,
        permanent=isinstance(exc, PermanentError),
    )
    if isinstance(exc, TransientError):
        return [
            SendOutcome(
                m.message_id,
                status.ACCEPTED,
                error=error,
                call=exc.call,
                transient=True,
                retry_after=exc.retry_after,
            )
            for m in batch
        ]
    return [SendOutcome(m.message_id, status.REJECTED, error=error, call=exc.call) for m in batch]


def _circuits_open(provider: str, batch: Sequence[Outbound], wait: float) -> list[SendOutcome]:
    """Every provider of the route is resting: back off until the first may be probed."""
    error = provider_error(
        provider,
        id="CIRCUIT_OPEN",
        name="CIRCUIT_OPEN",
        description="every provider of this channel failed repeatedly and is resting",
        permanent=False,
    )
    return [
        SendOutcome(m.message_id, status.ACCEPTED, error=error, transient=True, retry_after=wait)
        for m in batch
    ]


def _normalised(provider: str, outcomes: list[SendOutcome]) -> list[SendOutcome]:
    """The provider's outcomes with every error in the one shape."""
    fixed = []
    for outcome in outcomes:
        error = normalised_error(provider, outcome.error)
        if error is outcome.error or error == outcome.error:
            fixed.append(outcome)
            continue
        fixed.append(
            SendOutcome(
                outcome.message_id,
                outcome.status,
                outcome.provider_message_id,
                error,
                outcome.raw,
                outcome.call,
                outcome.transient,
                outcome.retry_after,
            )
        )
    return fixed


class Route:
    """One channel's providers, in order, each behind its circuit (when there are several)."""

    def __init__(
        self, channel: str, providers: Sequence[Provider], circuits: Circuits | None
    ) -> None:
        self.channel = channel
        self.providers = list(providers)
        self._circuits = circuits if len(self.providers) > 1 else None

    @property
    def names(self) -> list[str]:
        """The providers' names, in order."""
        return [p.name for p in self.providers]

    def _circuit(self, provider: Provider) -> Circuit | None:
        return self._circuits.get(provider.name, self.channel) if self._circuits else None

    async def send(self, batch: Sequence[Outbound]) -> Routed:
        """Send the batch along the route; every message ends in exactly one leg."""
        routed = Routed()
        pending = list(batch)
        last: tuple[str, list[SendOutcome]] | None = None
        for provider in self.providers:
            if not pending:
                break
            circuit = self._circuit(provider)
            if circuit is not None and not circuit.allow():
                continue
            if last is not None:
                routed.passed.extend((last[0], o) for o in last[1])
                log.warning(
                    "failing over",
                    channel=self.channel,
                    source=last[0],
                    target=provider.name,
                    count=len(last[1]),
                )
            outcomes = await self._attempt(provider, pending, circuit)
            done = [o for o in outcomes if not o.transient]
            transient = [o for o in outcomes if o.transient]
            if done:
                routed.legs.append(Leg(provider.name, done))
            last = (provider.name, transient) if transient else None
            again = {o.message_id for o in transient}
            pending = [m for m in pending if m.message_id in again]
        if last is not None:
            routed.legs.append(Leg(last[0], last[1]))
        elif pending:
            first = self.providers[0].name
            routed.legs.append(Leg(first, _circuits_open(first, pending, self._reopens_in())))
        return routed

    def _reopens_in(self) -> float:
        """Seconds until the first of the route's open circuits lets a probe through."""
        circuits = [c for c in map(self._circuit, self.providers) if c is not None]
        return min((c.reopens_in() for c in circuits), default=0.0)

    async def _attempt(
        self, provider: Provider, batch: list[Outbound], circuit: Circuit | None
    ) -> list[SendOutcome]:
        """One provider's answer for the batch; its circuit learns whether it worked."""
        ok = False
        try:
            try:
                with metrics.provider_request(provider.name, self.channel):
                    outcomes = await provider.send(batch)
            except ProviderError as exc:
                log.warning(
                    "provider refused a batch",
                    provider=provider.name,
                    channel=self.channel,
                    count=len(batch),
                    reason=exc.reason,
                    transient=isinstance(exc, TransientError),
                )
                outcomes = outcomes_for_error(provider.name, batch, exc)
            answered = {o.message_id for o in outcomes}
            missing = [m for m in batch if m.message_id not in answered]
            if missing:
                # A provider that forgets a message must not lose it: not taken, try again.
                outcomes += outcomes_for_error(
                    provider.name, missing, TransientError("the provider did not answer for it")
                )
            ok = any(not o.transient for o in outcomes)
            return _normalised(provider.name, outcomes)
        finally:
            if circuit is not None and ok:
                circuit.succeeded()
            elif circuit is not None:
                circuit.failed()
