"""Identifiers: message ids are unique, 22 digits, and sort in the order they were made."""

from __future__ import annotations

import time

from pigeon.ids import new_message_id


def test_message_ids_made_in_a_burst_are_unique_and_sort_in_creation_order() -> None:
    before = time.time_ns() // 1000
    ids = [new_message_id() for _ in range(100_000)]  # several per microsecond
    after = time.time_ns() // 1000

    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # listings and dispatch order by id
    assert all(len(i) == 22 and i.isdigit() for i in ids)
    assert before <= int(ids[0][:16]) <= int(ids[-1][:16]) <= after
