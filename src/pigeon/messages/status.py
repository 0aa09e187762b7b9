"""Infobip's status catalogue, our vocabulary, and the rule that status only moves forward."""

from __future__ import annotations

from enum import IntEnum

import msgspec


class Group(IntEnum):
    PENDING = 1
    UNDELIVERABLE = 2
    DELIVERED = 3
    EXPIRED = 4
    REJECTED = 5


class Status(msgspec.Struct, frozen=True):
    """One entry of Infobip's status catalogue, in its wire shape."""

    groupId: int
    groupName: str
    id: int
    name: str
    description: str

    @property
    def group(self) -> Group:
        return Group(self.groupId)

    @property
    def is_final(self) -> bool:
        # A plain int: the worker asks this several times per message, and comparing with
        # the enum member looked it up on the enum class each time.
        return self.groupId != _PENDING


_PENDING = int(Group.PENDING)


def _status(group: Group, status_id: int, name: str, description: str) -> Status:
    return Status(group.value, group.name, status_id, name, description)


CATALOGUE: dict[int, Status] = {
    s.id: s
    for s in (
        _status(Group.PENDING, 26, "PENDING_ACCEPTED", "Message sent to next instance"),
        _status(Group.PENDING, 7, "PENDING_ENROUTE", "Message sent to next instance"),
        _status(
            Group.PENDING,
            3,
            "PENDING_WAITING_DELIVERY",
            "Message sent, waiting for delivery report",
        ),
        _status(
            Group.UNDELIVERABLE,
            4,
            "UNDELIVERABLE_REJECTED_OPERATOR",
            "Message rejected by operator",
        ),
        _status(
            Group.UNDELIVERABLE, 9, "UNDELIVERABLE_NOT_DELIVERED", "Message sent not delivered"
        ),
        _status(Group.DELIVERED, 2, "DELIVERED_TO_OPERATOR", "Message delivered to operator"),
        _status(Group.DELIVERED, 5, "DELIVERED_TO_HANDSET", "Message delivered to handset"),
        _status(Group.EXPIRED, 15, "EXPIRED_EXPIRED", "Message expired"),
        _status(
            Group.EXPIRED, 29, "EXPIRED_DLR_UNKNOWN", "Message expired, delivery report unknown"
        ),
        _status(Group.REJECTED, 6, "REJECTED_NETWORK", "Network is forbidden"),
        _status(Group.REJECTED, 8, "REJECTED_PREFIX_MISSING", "Number prefix missing"),
        _status(Group.REJECTED, 10, "REJECTED_DND", "Destination on DND list"),
        _status(Group.REJECTED, 12, "REJECTED_NOT_ENOUGH_CREDITS", "Not enough credits"),
        _status(Group.REJECTED, 14, "REJECTED_DESTINATION", "Destination rejected"),
        _status(
            Group.REJECTED,
            18,
            "REJECTED_INVALID_DESTINATION_ADDRESS",
            "Invalid destination address",
        ),
        _status(Group.REJECTED, 51, "REJECTED_SOURCE", "Invalid sender"),
    )
}

BY_NAME: dict[str, Status] = {s.name: s for s in CATALOGUE.values()}

ACCEPTED = CATALOGUE[26]
ENROUTE = CATALOGUE[7]
DELIVERED = CATALOGUE[5]
UNDELIVERABLE = CATALOGUE[9]
EXPIRED = CATALOGUE[15]
REJECTED = CATALOGUE[14]
REJECTED_SOURCE = CATALOGUE[51]


def status_for(status_id: int, group_id: int | None = None) -> Status:
    """The catalogue entry for an id; an id we do not know keeps its group under a generic name."""
    known = CATALOGUE.get(status_id)
    if known is not None:
        return known
    group = Group(group_id) if group_id in {g.value for g in Group} else Group.PENDING
    return _status(group, status_id, f"{group.name}_{status_id}", "Status reported by the provider")


_PENDING_ORDER = {26: 0, 7: 1, 3: 2}


def can_move(current: Status, new: Status) -> bool:
    """Status only moves forward: out of PENDING, never out of a final group."""
    if current.is_final:
        return False
    if new.is_final:
        return True
    # Within PENDING: accepted (26) may become en route (7) or waiting (3), never back.
    return _PENDING_ORDER.get(new.id, 1) > _PENDING_ORDER.get(current.id, 1)


def group_ids_for(name: str) -> tuple[list[int], list[int]] | None:
    """Resolve a filter name to (group ids, status ids); None when it names nothing."""
    upper = name.upper()
    if upper in Group.__members__:
        return [Group[upper].value], []
    if upper in BY_NAME:
        return [], [BY_NAME[upper].id]
    return None
