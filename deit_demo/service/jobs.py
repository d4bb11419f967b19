"""The one door every heavy job enters, whichever route asks for it (a tab, the API, the page's "make this format").

Convert and Benchmark waited in Gradio's heavy queue, one at a time, but the Your device tab's prepare route did
not: one client asked for `web_int8` of all 13 models at once, all 13 were made side by side (the server and its
children peaked at 7.6-8.3 GiB), and another visitor's classification was refused meanwhile. Here a job waits its turn
in one first-come queue with one concurrency limit, a visitor may have only so many jobs queued or running, and the
queue itself has a length: beyond it a job is refused at once, with a sentence, rather than held.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator

from deit_demo.core.errors import Busy, Cancelled, DeitDemoError


class JobDoor:
    """First come, first served: `concurrency` jobs at a time, at most `per_visitor` queued or running per visitor
    and `max_waiting` waiting in all; a job that waited `max_wait_s` gives up with a "busy" message."""

    def __init__(self, concurrency: int = 1, per_visitor: int = 2, max_waiting: int = 16,
                 max_wait_s: float | None = None):
        for name, value in (("concurrency", concurrency), ("per_visitor", per_visitor), ("max_waiting", max_waiting)):
            if value < 1:
                raise DeitDemoError(f"The job queue's {name} must be at least 1 (got {value}).")
        self.concurrency, self.per_visitor, self.max_waiting, self.max_wait_s = (concurrency, per_visitor,
                                                                                 max_waiting, max_wait_s)
        self._cond = threading.Condition()
        self._waiting: deque[object] = deque()
        self._running = 0
        self._mine: dict[str, int] = {}  # visitor -> jobs queued or running

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return self._running

    @contextlib.contextmanager
    def enter(self, visitor: str | None, what: str, cancel: threading.Event | None = None) -> Iterator[None]:
        """Hold one of the slots for the block, after the jobs ahead of it. Refused at once (a `DeitDemoError`)
        when the visitor has their share queued or the queue is full; `Cancelled` if the visitor stops it first."""
        visitor, ticket = visitor or "local", object()
        with self._cond:
            mine = self._mine.get(visitor, 0)
            if mine >= self.per_visitor:
                raise Busy(f"You already have {mine} job{'s' if mine > 1 else ''} queued or running on this "
                                    f"server (at most {self.per_visitor} each): wait for {'them' if mine > 1 else 'it'}"
                                    f" to finish, or press Stop, before asking for {what}.")
            if len(self._waiting) >= self.max_waiting:
                raise Busy(f"The server's job queue is full ({len(self._waiting)} jobs waiting): please ask "
                                    f"for {what} again in a few minutes.")
            self._waiting.append(ticket)
            self._mine[visitor] = mine + 1
        try:
            self._wait_turn(ticket, what, cancel)
            try:
                yield
            finally:
                with self._cond:
                    self._running -= 1
                    self._cond.notify_all()
        finally:
            with self._cond:
                if ticket in self._waiting:
                    self._waiting.remove(ticket)
                self._mine[visitor] -= 1
                if not self._mine[visitor]:
                    del self._mine[visitor]
                self._cond.notify_all()

    def _wait_turn(self, ticket: object, what: str, cancel: threading.Event | None) -> None:
        deadline = None if self.max_wait_s is None else time.monotonic() + self.max_wait_s
        with self._cond:
            while not (self._waiting[0] is ticket and self._running < self.concurrency):
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"{what} was stopped before it started")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise Busy(f"The server is busy with other visitors' jobs ({self._running} running, "
                                        f"{len(self._waiting) - 1} waiting before or beside yours): please ask for "
                                        f"{what} again in a few minutes.")
                # Woken by every job that ends or leaves; the timeout only lets a Stop be seen
                self._cond.wait(timeout=0.5 if left is None else min(0.5, left))
            self._waiting.popleft()
            self._running += 1
            self._cond.notify_all()
