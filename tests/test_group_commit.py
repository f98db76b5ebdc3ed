"""Group commit: concurrent calls share one write, and never each other's failures."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from worker.produce.group_commit import GroupCommit


def test_a_lone_call_is_written_at_once() -> None:
    batches: list[list[int]] = []

    def write(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        return [item * 2 for item in items]

    group = GroupCommit(write)
    assert group.submit(3) == 6
    assert batches == [[3]]


def test_calls_arriving_during_a_write_share_the_next_one() -> None:
    first_started, release = threading.Event(), threading.Event()
    batches: list[list[int]] = []

    def write(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        if len(batches) == 1:
            first_started.set()
            release.wait(10)
        return [item + 100 for item in items]

    group = GroupCommit(write)
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(group.submit, 0)
        assert first_started.wait(10)
        others = [pool.submit(group.submit, item) for item in range(1, 6)]
        while len(group._pending) < 5:  # all five wait behind the first write
            threading.Event().wait(0.01)
        release.set()
        assert first.result(10) == 100
        assert [future.result(10) for future in others] == [101, 102, 103, 104, 105]
    assert batches == [[0], [1, 2, 3, 4, 5]]


def test_a_failing_item_fails_alone() -> None:
    def write(items: Sequence[int]) -> list[int]:
        if 13 in items:
            raise ValueError("unlucky")
        return list(items)

    group = GroupCommit(write)
    gate = threading.Barrier(4)

    def submit(item: int) -> int:
        gate.wait(10)
        return group.submit(item)

    with ThreadPoolExecutor(4) as pool:
        futures = {item: pool.submit(submit, item) for item in (1, 13, 2, 3)}
        with pytest.raises(ValueError, match="unlucky"):
            futures[13].result(10)
        assert [futures[item].result(10) for item in (1, 2, 3)] == [1, 2, 3]
