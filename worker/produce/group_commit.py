"""Group commit for threads: calls that arrive while one batch is being written are written together next.

A caller that finds no batch under way writes its own item at once (no added latency); callers that arrive
meanwhile wait, and the first of them to wake writes all that gathered in one go. A durable write per batch
instead of per call (one transaction, one fsync, one broker confirm) is what lets several producer threads
share one ledger and one broker without each paying every round trip alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

Item = TypeVar("Item")
R = TypeVar("R")


@dataclass
class _Entry(Generic[Item, R]):
    item: Item
    done: bool = False
    result: R | None = None
    error: Exception | None = None


class GroupCommit(Generic[Item, R]):
    """Runs `write(items) -> results` (one result per item, in order) for batches of concurrent `submit` calls.

    Items never see each other's failures: if a batch's write raises, each of its items is written again alone
    and gets its own result or exception."""

    def __init__(self, write: Callable[[Sequence[Item]], Sequence[R]]) -> None:
        self._write = write
        self._ready = threading.Condition()
        self._pending: list[_Entry[Item, R]] = []
        self._writing = False

    def submit(self, item: Item) -> R:
        entry: _Entry[Item, R] = _Entry(item)
        with self._ready:
            self._pending.append(entry)
            while self._writing and not entry.done:
                self._ready.wait()
            if not entry.done:
                self._writing = True
                # All that gathered (one item per waiting thread), this caller's own among them.
                batch, self._pending = self._pending, []
        if not entry.done:
            try:
                self._run(batch)
            finally:
                with self._ready:
                    for interrupted in (other for other in batch if not other.done):
                        interrupted.error, interrupted.done = RuntimeError("the batch's writer was interrupted"), True
                    self._writing = False
                    self._ready.notify_all()
        if entry.error is not None:
            raise entry.error
        return cast(R, entry.result)

    def _run(self, batch: list[_Entry[Item, R]]) -> None:
        try:
            results = self._write([entry.item for entry in batch])
        except Exception as error:
            if len(batch) > 1:
                for entry in batch:
                    self._run([entry])
                return
            batch[0].error, batch[0].done = error, True
            return
        for entry, result in zip(batch, results, strict=True):
            entry.result = result
            entry.done = True
